"""Pure wire codecs (no I/O)."""
