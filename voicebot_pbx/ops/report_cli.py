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
from voicebot_pbx.ops.outcomes import END_CLASSES, end_class
from voicebot_pbx.ops.records import CallRecord
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
    return config.analytics, config.state_dir


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


def _calls_in_window(
    args: argparse.Namespace, command: str
) -> tuple[float, float, list[CallRecord]] | int:
    """The calls of ``--since``/``--until`` from the store; an exit code (one line on
    stderr, prefixed with ``command``) for a bad time (2) or no store (1)."""
    try:
        now = time.time()
        since = parse_time(args.since, now)
        until = parse_time(args.until, now)
    except ValueError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 2
    try:
        store = _store(args)
    except AnalyticsError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 1
    try:
        return since, until, store.calls(since, until)
    finally:
        store.close()


def _report(args: argparse.Namespace) -> int:
    window = _calls_in_window(args, "report")
    if isinstance(window, int):
        return window
    since, until, calls = window
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


def calls_list_main(args: argparse.Namespace) -> int:
    """``voicebot-pbx calls list [--since 24h] [--until now] [--outcome O] [--limit N]
    [--json]``: the calls in a window, newest first, one line each."""
    with _quiet_logs():
        return _calls_list(args)


def _calls_list(args: argparse.Namespace) -> int:
    window = _calls_in_window(args, "calls list")
    if isinstance(window, int):
        return window
    calls = window[2]
    if args.outcome:
        calls = [c for c in calls if end_class(c.end_reason) == args.outcome]
    shown = sorted(calls, key=lambda c: c.started_at, reverse=True)[: args.limit]
    if args.json:
        rows = [_list_row(c) for c in shown]
        sys.stdout.write(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
        return 0
    sys.stdout.write(
        f"{'started':19}  {'call id':36}  {'dur s':>6}  {'outcome':13}  {'turns':>5}  "
        "profile / intent / transfer\n"
    )
    for call in shown:
        row = _list_row(call)
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(call.started_at))
        extra = " / ".join(
            str(v) for v in (row["profile"], row["intent"], row["transfer_target"]) if v
        )
        duration = "-" if row["duration_s"] is None else f"{row['duration_s']:.1f}"
        sys.stdout.write(
            f"{started:19}  {call.call_id[:36]:36}  {duration:>6}  {row['outcome']:13}  "
            f"{row['turns']:>5}  {extra}\n"
        )
    more = len(calls) - len(shown)
    print(f"{len(shown)} calls" + (f" ({more} older not shown: --limit)" if more > 0 else ""),
          file=sys.stderr)  # fmt: skip
    return 0


def _list_row(call: CallRecord) -> dict[str, Any]:
    intents = [t.intent for t in call.turns if t.intent and t.kind in ("speech", "dtmf")]
    ended = call.ended_at
    return {
        "call_id": call.call_id,
        "started_at": call.started_at,
        "duration_s": None if ended is None else round(ended - call.started_at, 1),
        "outcome": end_class(call.end_reason),
        "end_reason": call.end_reason,
        "profile": call.profile,
        "intent": intents[0] if intents else "",
        "transfer_target": call.transfer_target or "",
        "turns": sum(1 for t in call.turns if t.kind in ("speech", "dtmf")),
    }


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
    listing = calls_sub.add_parser("list", help="the calls in a time window, newest first")
    _store_arguments(listing)
    listing.add_argument("--since", default="24h", help="start: 1h, 24h, 7d, 2025-01-31 (24h)")
    listing.add_argument("--until", default="now", help="end (now)")
    listing.add_argument("--outcome", choices=END_CLASSES, help="only calls that ended so")
    listing.add_argument("--limit", type=int, default=50, help="newest N (50)")
    listing.add_argument("--json", action="store_true", help="one JSON object per call")
    listing.set_defaults(func=calls_list_main)
