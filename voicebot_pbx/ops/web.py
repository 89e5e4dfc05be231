"""The calls web pages on the admin port (``HealthServer(pages=CallsWeb(config).page)``).

* ``GET /calls`` -- the stored calls, newest first, a page at a time (``?page=N``, 50 a page
  or ``?per_page=`` up to 200), filtered by ``since``/``until`` (ISO date or date-time, local
  time unless an offset is given; a date alone as ``until`` means the end of that day),
  ``outcome`` (end class or raw end reason), ``intent`` (any turn's), ``transfer`` (target),
  ``fallback`` (any turn's fallback contains), ``profile``; the live calls above when
  ``active_calls`` is given. The store filters, sorts, counts and pages in SQL
  (``Store.calls_page``): a request reads one page of calls, however many are stored.
* ``GET /calls.json`` -- the same page as JSON.
* ``GET /calls/<id>`` -- one call: facts, the transcript as a timeline, stage latency bars,
  the recording player.
* ``GET /calls/<id>/recording.wav`` -- the call's WAV, only from inside the recordings
  folder.

Access: when the environment variable ``token_env`` is set, every page needs
``Authorization: Bearer <token>`` or ``?token=<token>`` (401 otherwise; a variable set but
empty refuses everything). Unset, the pages are open: the admin port's allowlist (loopback
by default) is then the only guard.

Store reads are blocking: they run in a worker thread, one at a time, on one connection
opened on first use (``close`` closes it).
"""

from __future__ import annotations

import asyncio
import hmac
import html
import importlib.util
import json
import math
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote

import structlog

from voicebot_pbx.config import Config
from voicebot_pbx.ops.analytics_open import open_store, recordings_dir, sqlite_path
from voicebot_pbx.ops.analytics_store import AnalyticsError, CallPage, CallQuery, Store
from voicebot_pbx.ops.health import Page, Request
from voicebot_pbx.ops.outcomes import end_class
from voicebot_pbx.ops.records import CallRecord
from voicebot_pbx.ops.web_html import (
    FILTER_FIELDS,
    CallRow,
    Links,
    ListView,
    document,
    render_call,
    render_error,
    render_list,
)

log = structlog.get_logger("voicebot_pbx.ops.web")

T = TypeVar("T")

PER_PAGE = 50  # the list's default page size
MAX_PER_PAGE = 200  # ?per_page= above this is served as this
HTML = "text/html; charset=utf-8"
JSON = "application/json"
WAV = "audio/wav"
# Call ids: UUIDs (AudioSocket, FreeSWITCH), Asterisk unique ids (``1700000000.42``).
CALL_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._:-]{0,127}")
_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")
_MAX_FILTER_CHARS = 200
_MAX_PAGE_DIGITS = 12
_FAR_PAGE = 10**12  # a longer page number: far past the end (an empty page)

ActiveCallsFn = Callable[[], Sequence[Mapping[str, object]]]


class BadRequest(ValueError):
    """A malformed query value (400, with this message)."""


@dataclass(frozen=True, slots=True)
class CallFilters:
    since: float | None = None
    until: float | None = None
    outcome: str = ""
    intent: str = ""
    transfer: str = ""
    fallback: str = ""
    profile: str = ""

    def matches(self, call: CallRecord) -> bool:
        if self.outcome and self.outcome not in (call.end_reason, end_class(call.end_reason)):
            return False
        if self.profile and call.profile.casefold() != self.profile:
            return False
        if self.transfer and (call.transfer_target or "").casefold() != self.transfer:
            return False
        if self.intent and not any(
            t.intent and t.intent.casefold() == self.intent for t in call.turns
        ):
            return False
        return not self.fallback or any(
            self.fallback in f.casefold() for t in call.turns for f in t.fallbacks
        )

    def query(self) -> CallQuery:
        """The same filters for the store (``Store.calls_page``): what ``matches`` accepts."""
        outcome, profile, transfer = self.outcome, self.profile, self.transfer
        intent, fallback = self.intent, self.fallback
        return CallQuery(
            since=self.since,
            until=self.until,
            end_reason=(lambda r: outcome in (r, end_class(r))) if outcome else None,
            profile=(lambda p: p.casefold() == profile) if profile else None,
            transfer_target=(lambda t: t.casefold() == transfer) if transfer else None,
            intent=(lambda i: i.casefold() == intent) if intent else None,
            fallback=(lambda f: fallback in f.casefold()) if fallback else None,
        )


def parse_when(value: str, *, end_of_day: bool = False) -> float:
    """ISO date or date-time (local time unless an offset is given) -> unix s; with
    ``end_of_day`` a date alone is the next midnight (``until=2025-01-31``: that whole day)."""
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(
            f"not a date: {value!r} (use 2025-01-31, 2025-01-31T08:00 or 2025-01-31T08:00+01:00)"
        ) from None
    if end_of_day and _DATE_ONLY.fullmatch(text):
        parsed += timedelta(days=1)
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()  # naive: local time
    return parsed.timestamp()


def parse_filters(query: Mapping[str, str]) -> tuple[CallFilters, dict[str, str]]:
    """The filters of a query string, and the values as given (for the form and links)."""
    raw = {name: query.get(name, "").strip() for name in FILTER_FIELDS}
    for name, value in raw.items():
        if len(value) > _MAX_FILTER_CHARS:
            raise BadRequest(f"{name}: longer than {_MAX_FILTER_CHARS} characters")
    since = parse_when(raw["since"]) if raw["since"] else None
    until = parse_when(raw["until"], end_of_day=True) if raw["until"] else None
    if since is not None and until is not None and until <= since:
        raise BadRequest("until must be after since")
    filters = CallFilters(
        since=since,
        until=until,
        outcome=raw["outcome"],
        intent=raw["intent"].casefold(),
        transfer=raw["transfer"].casefold(),
        fallback=raw["fallback"].casefold(),
        profile=raw["profile"].casefold(),
    )
    return filters, {k: v for k, v in raw.items() if v}


def parse_page(value: str | None) -> int:
    """``page``: a positive integer; absurdly large is simply past the end."""
    if value is None or value == "":
        return 1
    text = value.strip()
    if not text.isascii() or not text.isdigit():
        raise BadRequest(f"page: not a page number: {value!r}")
    if len(text) > _MAX_PAGE_DIGITS:
        return _FAR_PAGE
    page = int(text)
    if page < 1:
        raise BadRequest("page: pages start at 1")
    return page


def parse_per_page(value: str | None) -> int:
    """``per_page``: 1 to ``MAX_PER_PAGE`` calls a page (more is served as the most)."""
    if value is None or value == "":
        return PER_PAGE
    text = value.strip()
    if not text.isascii() or not text.isdigit():
        raise BadRequest(f"per_page: not a number: {value!r}")
    if len(text) > _MAX_PAGE_DIGITS:
        return MAX_PER_PAGE
    size = int(text)
    if size < 1:
        raise BadRequest("per_page: at least 1")
    return min(size, MAX_PER_PAGE)


def valid_call_id(text: str) -> bool:
    return CALL_ID.fullmatch(text) is not None and ".." not in text


class CallsWeb:
    """The calls pages for ``HealthServer(pages=...)``: ``page`` answers a request."""

    def __init__(
        self,
        config: Config,
        *,
        token_env: str = "VOICEBOT_WEB_TOKEN",
        active_calls: ActiveCallsFn | None = None,
    ) -> None:
        self._config = config
        self._token: str | None = os.environ.get(token_env)
        if self._token is not None and not self._token:
            log.warning("web_token_empty", env=token_env, note="every calls page answers 401")
        self._active_calls = active_calls
        self._recordings = recordings_dir(config.analytics, config.state_dir)
        self._store: Store | None = None
        self._lock = threading.Lock()

    # --- the store (worker thread) ------------------------------------------------------

    def _with_store(self, use: Callable[[Store], T]) -> T:
        with self._lock:
            if self._store is None:
                self._store = open_store(self._config.analytics, self._config.state_dir)
            try:
                return use(self._store)
            except Exception:
                # A broken connection is reopened on the next request.
                store, self._store = self._store, None
                try:
                    store.close()
                except Exception as exc:
                    log.debug("web_store_close_failed", error=str(exc))
                raise

    def close(self) -> None:
        with self._lock:
            store, self._store = self._store, None
        if store is not None:
            store.close()

    async def _read(self, use: Callable[[Store], T]) -> T:
        return await asyncio.to_thread(self._with_store, use)

    # --- requests -----------------------------------------------------------------------

    def _authorized(self, request: Request) -> tuple[bool, str | None]:
        """(allowed, the token to carry in links: given by ``?token=``)."""
        if self._token is None:
            return True, None
        expected = self._token.encode("utf-8")
        if not expected:
            return False, None
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode("utf-8"), expected
        ):
            return True, None
        query_token = request.query.get("token", "")
        if query_token and hmac.compare_digest(query_token.encode("utf-8"), expected):
            return True, query_token
        return False, None

    async def page(self, request: Request) -> Page | None:
        path = request.path
        if path not in ("/calls", "/calls/", "/calls.json", "/report") and not path.startswith(
            "/calls/"
        ):
            return None
        as_json = path == "/calls.json"
        allowed, token = self._authorized(request)
        links = Links(token)
        if not allowed:
            message = "a token is required (Authorization: Bearer <token> or ?token=)"
            return self._error(401, message, links, as_json)
        try:
            if path == "/report":
                return await self._report(request, links)
            if path in ("/calls", "/calls/", "/calls.json"):
                return await self._list(request, links, as_json=as_json)
            parts = path[len("/calls/") :].split("/")
            call_id = unquote(parts[0])
            if not valid_call_id(call_id) or len(parts) > 2:
                return self._error(404, "no such call", links)
            if len(parts) == 1:
                return await self._call_page(call_id, links)
            if parts[1] == "recording.wav":
                return await self._recording(call_id, links)
            return self._error(404, "no such page", links)
        except BadRequest as exc:
            return self._error(400, str(exc), links, as_json)
        except AnalyticsError as exc:
            return self._error(503, f"call records unavailable: {exc}", links, as_json)

    async def _report(self, request: Request, links: Links) -> Page:
        """``report --format html`` for ``since``/``until`` (default the last 7 days), the
        charts drawn off the event loop; without the ``reports`` extra (matplotlib) the text
        report."""
        from voicebot_pbx.ops.report import build_report
        from voicebot_pbx.ops.report_cli import parse_time
        from voicebot_pbx.ops.report_text import render_text

        try:
            since = parse_time(request.query.get("since", "7d"))
            until = parse_time(request.query.get("until", "now"))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        if until <= since:
            raise BadRequest("until must be after since")
        calls = await self._read(lambda store: store.calls(since=since, until=until))
        report = build_report(calls, since=since, until=until)
        if importlib.util.find_spec("matplotlib") is None:
            back = f"<p><a href='{html.escape(links.calls())}'>calls</a></p>"
            text = html.escape(render_text(report))
            body = document("Report", f"{back}<h1>Report</h1><pre>{text}</pre>")
            return Page(200, HTML, body)
        from voicebot_pbx.ops.report_html import render_html

        return Page(200, HTML, (await asyncio.to_thread(render_html, report)).encode("utf-8"))

    def _error(self, status: int, message: str, links: Links, as_json: bool = False) -> Page:
        if as_json:
            body = json.dumps({"error": message}, ensure_ascii=False) + "\n"
            return Page(status, JSON, body.encode("utf-8"))
        return Page(status, HTML, render_error(status, message, links))

    # --- the list -----------------------------------------------------------------------

    async def _list(self, request: Request, links: Links, *, as_json: bool) -> Page:
        query = request.query
        filters, raw = parse_filters(query)
        page = parse_page(query.get("page"))
        per_page = parse_per_page(query.get("per_page"))
        if per_page != PER_PAGE:
            raw["per_page"] = str(per_page)  # carried by the pager's links
        wanted, offset = filters.query(), (page - 1) * per_page
        notice = ""
        try:
            found = await self._read(
                lambda store: store.calls_page(wanted, limit=per_page, offset=offset)
            )
        except AnalyticsError as exc:
            if not self._sqlite_missing():
                raise
            found, notice = CallPage(), f"No call records yet ({exc})."
        total = found.total
        pages = math.ceil(total / per_page)
        rows = [CallRow.of(c) for c in found.calls]
        if as_json:
            filters_given = {k: v for k, v in raw.items() if k != "per_page"}
            payload = {
                "page": page,
                "per_page": per_page,
                "pages": pages,
                "total": total,
                "filters": filters_given,
                "next": links.calls_json({**raw, "page": str(page + 1)}) if page < pages else None,
                "previous": links.calls_json({**raw, "page": str(min(page - 1, max(1, pages)))})
                if page > 1
                else None,
                "calls": [dict(r.to_json(), url=links.call(r.call_id)) for r in rows],
            }
            body = json.dumps(payload, ensure_ascii=False, indent=1) + "\n"
            return Page(200, JSON, body.encode("utf-8"))
        active = self._live_calls() if self._active_calls is not None else None
        view = ListView(
            rows=rows,
            filters=raw,
            page=page,
            pages=pages,
            total=total,
            per_page=per_page,
            links=links,
            active=active,
            notice=notice,
        )
        return Page(200, HTML, render_list(view))

    def _live_calls(self) -> list[Mapping[str, object]]:
        assert self._active_calls is not None
        try:
            return list(self._active_calls())
        except Exception as exc:  # the list still shows the stored calls
            log.warning("web_active_calls_failed", error=f"{type(exc).__name__}: {exc}")
            return []

    def _sqlite_missing(self) -> bool:
        analytics = self._config.analytics
        return (
            analytics.backend == "sqlite"
            and not sqlite_path(analytics, self._config.state_dir).exists()
        )

    # --- one call -----------------------------------------------------------------------

    async def _find(self, call_id: str) -> CallRecord | None:
        try:
            return await self._read(lambda store: store.call(call_id))
        except AnalyticsError:
            if self._sqlite_missing():
                return None
            raise

    def _recording_file(self, call: CallRecord) -> Path | None:
        """The call's WAV if it is a file inside the recordings folder (worker thread)."""
        if not call.recording_path:
            return None
        try:
            root = self._recordings.resolve()
            path = Path(call.recording_path).resolve()
        except (OSError, RuntimeError, ValueError):
            return None
        if path.suffix.lower() != ".wav" or not path.is_relative_to(root):
            return None
        return path if path.is_file() else None

    async def _call_page(self, call_id: str, links: Links) -> Page:
        call = await self._find(call_id)
        if call is None:
            return self._error(404, f"no call (or no unique call) matches {call_id!r}", links)
        has_recording = await asyncio.to_thread(self._recording_file, call) is not None
        return Page(200, HTML, render_call(call, links, has_recording=has_recording))

    async def _recording(self, call_id: str, links: Links) -> Page:
        call = await self._find(call_id)
        if call is None:
            return self._error(404, f"no call (or no unique call) matches {call_id!r}", links)

        def read() -> bytes | None:
            path = self._recording_file(call)
            if path is None:
                return None
            try:
                return path.read_bytes()
            except OSError:
                return None

        data = await asyncio.to_thread(read)
        if data is None:
            return self._error(404, "this call has no recording", links)
        return Page(200, WAV, data)
