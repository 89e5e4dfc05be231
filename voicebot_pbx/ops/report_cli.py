"""``voicebot-pbx report`` and ``voicebot-pbx calls show``: parsing the time window, opening
the store (the config's, or ``--db``), quiet logging while writing to stdout, and choosing
the renderer; ``register_cli`` adds both commands to the CLI."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from voicebot_pbx.config import AnalyticsConfig, load_config
from voicebot_pbx.ops.analytics_open import open_store
from voicebot_pbx.ops.analytics_schema import SCHEMA_VERSION
from voicebot_pbx.ops.analytics_sqlite import SqliteStore
from voicebot_pbx.ops.analytics_store import AnalyticsError, Store
from voicebot_pbx.ops.logs import configure_logging
from voicebot_pbx.ops.report import build_report
from voicebot_pbx.ops.report_html import render_html
from voicebot_pbx.ops.report_text import render_call, render_json, render_text

# --- command line ------------------------------------------------------------------------

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(value: str, now: float | None = None) -> float:
    """``now``, ``24h``/``7d``/``30m`` ago, ``2025-01-31``, ``2025-01-31T08:00[+01:00]``
    (local time unless an offset is given), or unix seconds."""
    now = time.time() if now is None else now
    text = value.strip()
    if text == "now":
        return now
    if match := _RELATIVE.match(text):
        return now - float(match.group(1)) * _UNITS_S[match.group(2)]
    if re.fullmatch(r"\d{9,}(?:\.\d+)?", text):
        return float(text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"not a time: {value!r} (use 24h, 7d, 2025-01-31 or 2025-01-31T08:00)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()  # naive: local time
    return parsed.timestamp()


def _analytics_config(args: argparse.Namespace) -> tuple[AnalyticsConfig, str]:
    config = load_config(getattr(args, "config", None))
    analytics = getattr(config, "analytics", None)
    if not isinstance(analytics, AnalyticsConfig):
        analytics = AnalyticsConfig()
    return analytics, config.state_dir


def _store(args: argparse.Namespace) -> Store:
    db = getattr(args, "db", None)
    if db:
        store: Store = SqliteStore.open(db, create=False)
        if store.schema_version() < SCHEMA_VERSION:
            store.migrate()
        return store
    analytics, state_dir = _analytics_config(args)
    return open_store(analytics, state_dir)


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Warnings only, to stderr, while a command writes its output to stdout; the previous
    logging set-up is restored after."""
    previous = structlog.get_config()
    configure_logging("console", "warning")
    try:
        yield
    finally:
        structlog.configure(**previous)


def report_main(args: argparse.Namespace) -> int:
    """``voicebot-pbx report [--since --until --format text|json|html] [-o FILE]``."""
    with _quiet_logs():
        return _report(args)


def _report(args: argparse.Namespace) -> int:
    try:
        now = time.time()
        since = parse_time(args.since, now)
        until = parse_time(args.until, now)
    except ValueError as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 2
    try:
        store = _store(args)
    except AnalyticsError as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 1
    try:
        calls = store.calls(since, until)
    finally:
        store.close()
    report = build_report(calls, since=since, until=until)
    renderers = {"text": render_text, "json": render_json, "html": render_html}
    output = renderers[args.format](report)
    if args.output:
        Path(args.output).write_text(output, encoding="utf-8")
        print(f"wrote {args.output} ({len(calls)} calls)", file=sys.stderr)
    else:
        sys.stdout.write(output)
    return 0


def calls_show_main(args: argparse.Namespace) -> int:
    """``voicebot-pbx calls show CALL_ID [--json]`` (a unique prefix of the id will do)."""
    with _quiet_logs():
        return _calls_show(args)


def _calls_show(args: argparse.Namespace) -> int:
    try:
        store = _store(args)
    except AnalyticsError as exc:
        print(f"calls show: {exc}", file=sys.stderr)
        return 1
    try:
        call = store.call(args.call_id)
    finally:
        store.close()
    if call is None:
        print(f"calls show: no call (or no unique call) matches {args.call_id!r}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(json.dumps(call.to_json(), indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(render_call(call))
    return 0


def _store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML config (its [analytics] table)")
    parser.add_argument("--db", type=Path, help="read this SQLite file instead of the config's")


def register_cli(sub: Any) -> None:
    """Add ``report`` and ``calls show`` to the CLI's subparsers (``add_subparsers()``)."""
    report = sub.add_parser("report", help="call analytics for a time window")
    _store_arguments(report)
    report.add_argument("--since", default="7d", help="start: 24h, 7d, 2025-01-31 ... (7d)")
    report.add_argument("--until", default="now", help="end (now)")
    report.add_argument("--format", choices=("text", "json", "html"), default="text")
    report.add_argument("-o", "--output", type=Path, help="write to this file, not stdout")
    report.set_defaults(func=report_main)

    calls = sub.add_parser("calls", help="look at call records")
    calls_sub = calls.add_subparsers(dest="calls_command", required=True)
    show = calls_sub.add_parser("show", help="one call's transcript with timings")
    _store_arguments(show)
    show.add_argument("call_id", help="the call id (or a unique prefix)")
    show.add_argument("--json", action="store_true", help="the whole record as JSON")
    show.set_defaults(func=calls_show_main)
