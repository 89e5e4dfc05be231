"""Pure wire codecs (no I/O)."""


class WireError(Exception):
    """The peer sent something the protocol does not allow. ``reason`` is a short slug a
    log line can carry, ``detail`` the specifics. Each codec raises its own subclass."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
