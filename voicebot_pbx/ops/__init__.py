"""Running the bot: composition, observation and records.

Owns the composition root (``service``: loads the engines, builds the dialogue and profile
kits, starts the transports, health and metrics, drains on SIGTERM), ``health``
(/health, /ready, /metrics), ``metrics`` (Prometheus), ``sdnotify`` (systemd),
``records`` (the call/turn records), ``analytics`` (SQLite / PostgreSQL, redaction,
retention), ``report``, ``recording`` (call WAVs), ``logs`` (structlog) and ``profiles``.

May import everything; nothing but ``call`` (for ``records``) and ``cli`` imports ``ops``.
"""
