"""Running the bot: composition, observation and records.

Owns the composition root (``service``: loads the engines, builds the dialogue and profile
kits, starts the transports, health and metrics, drains on SIGTERM), ``health``
(/health, /ready, /metrics), ``metrics`` (Prometheus), ``sdnotify`` (systemd),
``records`` (the call/turn records), analytics (``analytics``: the recorder thread;
``analytics_schema``: rows and migrations, pure; ``analytics_store`` with its
``analytics_sqlite`` / ``analytics_postgres`` backends; ``analytics_open``; ``redaction``),
reports (``report``: the figures; ``report_text``, ``report_html``, ``report_cli``;
``outcomes``: labels shared with metrics), ``recording`` (call WAVs), ``logs`` (structlog)
and ``profiles``.

May import everything; nothing but ``call`` (for ``records``) and ``cli`` imports ``ops``.
"""
