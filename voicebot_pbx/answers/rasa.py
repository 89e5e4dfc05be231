"""``RasaDialogue``: the ``Dialogue`` brain backed by a Rasa server over loopback HTTP.

One turn = ``POST /webhooks/rest/webhook`` (Rasa runs NLU, policies and the responses) and then
``GET /conversations/{id}/tracker`` to read what Rasa acted on: the intent of the last user
event and whether Rasa fell back. (The tracker's ``latest_message`` field is not usable for
this: it can show an older message, e.g. after ``action_default_fallback`` reverted the turn.)

Rasa's reply messages map onto ``DialogueTurn``:

* ``{"text": ...}`` -> ``BotReply(text=...)``
* ``{"custom": {"action": "play_clip", "clip": NAME}}`` -> ``BotReply(clip=NAME)``
* ``{"custom": {"action": "transfer", "target": NAME}}`` -> ``end="transfer"``
* ``{"custom": {"action": "hangup"}}`` -> ``end="hangup"``
* ``{"custom": {"action": "collect_dtmf", "max_digits": N}}`` -> ``collect_dtmf_digits=N``;
  with ``"expect": ["digits"]`` (or ``postcode``, ``date``) -> ``expect``: a spoken answer is
  also decoded held to those words (``speech/expect.py``); with ``"verify": {"postcode":
  "NW9 4RQ", "date": "1987-06-23"}`` (the action server, which knows them) -> ``known``: the
  engine is asked whether the caller says one of them (``speech/verify.py``)
* ``{"custom": {"action": "expect", "expect": ["postcode"]}}`` -> ``expect`` alone: a spoken
  answer of that kind, no keypad entry (the outage form's postcode question)
* ``{"custom": {"action": "note", "entities": {...}, "fallback": REASON}}`` (the custom
  actions, rasa_project/actions) -> ``entities`` for the call, ``fallbacks`` for its record

Every request runs under ``timeout_s``; every failure becomes ``DialogueUnavailable`` so the
session can fall back to the rule dialogue.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import structlog

from voicebot_pbx.answers.dialogue import (
    WORDS_NOT_TAKEN,
    BotReply,
    CallInfo,
    DialogueTurn,
    EndAction,
    Understanding,
)
from voicebot_pbx.answers.normalize import normalize
from voicebot_pbx.speech.expect import Expectation

__all__ = [
    "FALLBACK_INTENTS",
    "BotMessages",
    "DialogueUnavailable",
    "RasaDialogue",
    "parse_bot_messages",
]

log = structlog.get_logger(__name__)

# Turns with these intents are handed to the LLM fallback (needs_fallback=True).
FALLBACK_INTENTS = frozenset({"nlu_fallback", "out_of_scope"})
# Rasa's core fallback: the policies had no answer for an understood intent.
_CORE_FALLBACK_ACTIONS = frozenset({"action_default_fallback", "action_two_stage_fallback"})
_DTMF_RE = re.compile(r"[0-9*#A-D]{1,32}")


class DialogueUnavailable(Exception):
    """Rasa could not produce a turn. ``retryable``: worth trying again shortly (timeout,
    connection refused while restarting, 5xx); False for errors a retry will not fix."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class _ActedOn:
    intent: str | None
    confidence: float | None
    entities: dict[str, str]
    core_fallback: bool
    # An action after the message set a slot (a form took the words as its answer: the
    # outage form a postcode its classifier calls nlu_fallback).
    took: bool = False


@dataclass(frozen=True, slots=True)
class BotMessages:
    """Rasa's reply messages, read: what to say and do, and the actions' notes."""

    replies: tuple[BotReply, ...] = ()
    end: EndAction | None = None
    transfer_target: str | None = None
    collect_dtmf_digits: int | None = None
    expect: tuple[str, ...] = ()
    known: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    # From the actions' ``{"action": "note"}`` payloads: facts for the call (identity
    # verified, a booking reference) and fallbacks taken (a back end that failed).
    entities: dict[str, str] = field(default_factory=dict)
    fallbacks: tuple[str, ...] = ()


def _note(custom: Mapping[str, Any], entities: dict[str, str], fallbacks: list[str]) -> None:
    noted = custom.get("entities")
    if isinstance(noted, Mapping):
        entities.update({str(k): str(v) for k, v in noted.items() if v is not None})
    fallback = custom.get("fallback")
    if isinstance(fallback, str) and fallback:
        fallbacks.append(fallback[:80])


def parse_bot_messages(messages: Sequence[Mapping[str, Any]]) -> BotMessages:
    """Rasa REST channel messages -> what the bot says and does (module docstring)."""
    replies: list[BotReply] = []
    end: EndAction | None = None
    target: str | None = None
    dtmf_digits: int | None = None
    expect: tuple[str, ...] = ()
    known: tuple[tuple[str, str], ...] = ()
    entities: dict[str, str] = {}
    fallbacks: list[str] = []
    for msg in messages:
        text = msg.get("text")
        if isinstance(text, str) and text.strip():
            replies.append(BotReply(text=text.strip()))
        custom = msg.get("custom")
        if not isinstance(custom, Mapping):
            continue
        action = custom.get("action")
        if action == "play_clip" and isinstance(custom.get("clip"), str):
            replies.append(BotReply(clip=str(custom["clip"])))
        elif action == "transfer":
            end = "transfer"
            target = str(custom.get("target") or "agents")
        elif action == "hangup":
            end = "hangup"
            target = None
        elif action == "collect_dtmf":
            try:
                dtmf_digits = max(1, int(custom.get("max_digits", 1)))
            except (TypeError, ValueError):
                log.warning("rasa.bad_collect_dtmf", payload=dict(custom))
            expect = _expect(custom) or expect
            known = _known(custom) or known
        elif action == "expect":
            expect = _expect(custom) or expect
        elif action == "note":
            _note(custom, entities, fallbacks)
        else:
            log.warning("rasa.unknown_custom_payload", payload=dict(custom))
    return BotMessages(
        tuple(replies), end, target, dtmf_digits, expect, known, entities, tuple(fallbacks)
    )


def _known(custom: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """``verify: {postcode: ..., date: ...}`` beside ``collect_dtmf``: the answers the
    action server knows (kind, value), of the kinds ``speech/verify.py`` checks; anything
    else is dropped with one line that does not show the values."""
    raw = custom.get("verify")
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        log.warning("rasa.bad_verify", shape=type(raw).__name__)
        return ()
    kept = tuple(
        (str(kind), str(value))
        for kind, value in raw.items()
        if kind in ("postcode", "date") and isinstance(value, str) and value
    )
    if len(kept) < len(raw):
        log.warning("rasa.bad_verify", kinds=sorted(str(k) for k in raw))
    return kept


def _expect(custom: Mapping[str, Any]) -> tuple[str, ...]:
    """``expect: [digits]`` (or one word) beside ``collect_dtmf`` (what the caller may say
    instead of typing) or in an ``expect`` payload (what they will say):
    speech/expect.py's kinds; an unknown kind is dropped with one line."""
    raw = custom.get("expect")
    if raw is None:
        return ()
    values = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else [raw]
    known = {e.value for e in Expectation}
    kept = tuple(str(v) for v in values if str(v) in known)
    if len(kept) < len(values):
        log.warning("rasa.bad_expect", payload=dict(custom), known=sorted(known))
    return kept


def _acted_on(tracker: Mapping[str, Any]) -> _ActedOn:
    """The last user event of the tracker, whether a core fallback followed it, and whether
    an action after it set a slot (not the form's ``requested_slot``; slots the classifier
    filled from entities come before any action and do not count)."""
    events = tracker.get("events") or []
    core_fallback = False
    slot_set = False  # walking backwards: a slot set since the action before it
    took = False
    for event in reversed(events):
        kind = event.get("event")
        if kind == "slot":
            slot_set = slot_set or (
                event.get("name") != "requested_slot" and event.get("value") is not None
            )
        elif kind == "action":
            name = str(event.get("name") or "")
            core_fallback = core_fallback or name in _CORE_FALLBACK_ACTIONS
            took = took or (slot_set and _acts(name))
            slot_set = False  # the slots after an action are its own
        elif kind == "user":
            parse = event.get("parse_data") or {}
            intent = parse.get("intent") or {}
            entities: dict[str, str] = {}
            for ent in parse.get("entities") or []:
                if ent.get("entity") and ent.get("value") is not None:
                    entities[str(ent["entity"])] = str(ent["value"])
            confidence = intent.get("confidence")
            return _ActedOn(
                intent=intent.get("name"),
                confidence=float(confidence) if confidence is not None else None,
                entities=entities,
                core_fallback=core_fallback,
                took=took and not core_fallback,
            )
    return _ActedOn(None, None, {}, core_fallback)


def _acts(action: str) -> bool:
    """Whether ``action`` acts on the caller's words (a form, its validation, a custom
    action), not only speaks, asks (a form's ``action_ask_<slot>``, whose own slots say
    what it asked) or listens."""
    return action != "action_listen" and not action.startswith(("utter_", "action_ask_"))


class RasaDialogue:
    """``Dialogue`` implementation over the Rasa REST channel (one Rasa sender per call)."""

    name = "rasa"

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:5005",
        *,
        timeout_s: float = 2.0,
        auth_token: str | None = None,
        forget_on_end: bool = True,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        """``forget_on_end``: empty the call's tracker when the call ends (the in-memory
        tracker store never evicts; with Redis, ``record_exp`` expires trackers anyway)."""
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.forget_on_end = forget_on_end
        self._params = {"token": auth_token} if auth_token else {}
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_keepalive_connections=8),
            trust_env=False,  # loopback only: never through an HTTP proxy
        )

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    async def __aenter__(self) -> RasaDialogue:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- HTTP ------------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        url = f"{self.base_url}{path}"
        query = {**self._params, **(params or {})}
        try:
            async with asyncio.timeout(self.timeout_s):
                resp = await self._client.request(
                    method,
                    url,
                    json=json_body,
                    params=query,
                    headers={"Accept": "application/json"},
                )
        except TimeoutError as exc:
            raise DialogueUnavailable(
                f"{method} {path}: timeout after {self.timeout_s} s", retryable=True
            ) from exc
        except httpx.TimeoutException as exc:
            raise DialogueUnavailable(f"{method} {path}: {exc!r}", retryable=True) from exc
        except httpx.TransportError as exc:
            raise DialogueUnavailable(f"{method} {path}: {exc!r}", retryable=True) from exc
        except httpx.HTTPError as exc:
            raise DialogueUnavailable(f"{method} {path}: {exc!r}", retryable=False) from exc
        if resp.status_code >= 400:
            raise DialogueUnavailable(
                f"{method} {path}: HTTP {resp.status_code}: {resp.text[:200]}",
                retryable=resp.status_code >= 500 or resp.status_code == 429,
            )
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError as exc:
            raise DialogueUnavailable(f"{method} {path}: invalid JSON", retryable=False) from exc

    async def _turn(
        self, call: CallInfo, message: str, alternatives: Sequence[str] = ()
    ) -> DialogueTurn:
        metadata: dict[str, object] = {
            "call_id": call.call_id,
            "caller_id": call.caller_id,
            "pbx": call.pbx,
            "profile": call.profile,
        }
        if alternatives:
            metadata["alternatives"] = list(alternatives)
        body = {"sender": call.call_id, "message": message, "metadata": metadata}
        messages = await self._request("POST", "/webhooks/rest/webhook", json_body=body)
        if not isinstance(messages, list):
            raise DialogueUnavailable("webhook did not return a list", retryable=False)
        tracker = await self._request(
            "GET",
            f"/conversations/{quote(call.call_id, safe='')}/tracker",
            params={"include_events": "AFTER_RESTART"},
        )
        if not isinstance(tracker, Mapping):
            raise DialogueUnavailable("tracker is not an object", retryable=False)
        acted = _acted_on(tracker)
        said = parse_bot_messages(messages)
        # A form still active after Rasa said something (not a goodbye): it asked a question.
        form = tracker.get("active_loop")
        awaits = isinstance(form, Mapping) and bool(form.get("name"))
        awaits = awaits and said.end is None and bool(said.replies)
        needs_fallback = acted.core_fallback or (
            acted.intent in FALLBACK_INTENTS and not acted.took
        )
        log.debug(
            "rasa.turn",
            call_id=call.call_id,
            intent=acted.intent,
            confidence=acted.confidence,
            core_fallback=acted.core_fallback,
            n_replies=len(said.replies),
            end=said.end,
            fallbacks=said.fallbacks,
        )
        return DialogueTurn(
            replies=said.replies,
            end=said.end,
            transfer_target=said.transfer_target,
            collect_dtmf_digits=said.collect_dtmf_digits,
            expect=said.expect,
            known=said.known,
            intent=acted.intent,
            confidence=acted.confidence,
            source="rasa",
            needs_fallback=needs_fallback,
            taken=acted.took,
            awaits_answer=awaits,
            entities={**acted.entities, **said.entities},
            fallbacks=(*said.fallbacks, WORDS_NOT_TAKEN) if acted.core_fallback else said.fallbacks,
        )

    # -- Dialogue protocol -----------------------------------------------------------------

    async def start(self, call: CallInfo) -> DialogueTurn:
        """Call start: the greeting and the keypad menu."""
        return await self._turn(call, "/greet")

    async def understand(self, call: CallInfo, text: str) -> Understanding:
        """Rasa's NLU on the utterance (``/model/parse``: the conversation is not touched)."""
        normalized = normalize(text)
        if not normalized:
            return Understanding(None, None, True)
        parsed = await self._request("POST", "/model/parse", json_body={"text": normalized})
        if not isinstance(parsed, Mapping):
            raise DialogueUnavailable("parse did not return an object", retryable=False)
        intent = parsed.get("intent") or {}
        name = intent.get("name")
        confidence = intent.get("confidence")
        return Understanding(
            intent=str(name) if name else None,
            confidence=float(confidence) if confidence is not None else None,
            needs_fallback=not name or name in FALLBACK_INTENTS,
        )

    async def prepare(self, call: CallInfo, text: str) -> None:
        """Nothing: the conversation takes the message only when the turn is over (the
        knowledge routing around it prepares the parse, ``ComposingDialogue.prepare``)."""

    async def respond(
        self, call: CallInfo, text: str, alternatives: Sequence[str] = ()
    ) -> DialogueTurn:
        """One recognised caller utterance (normalised here; never Rasa's /intent syntax).
        ``alternatives`` (digits only) go with it as the message's metadata: the action
        server may look them up (``actions.account_alternatives``)."""
        normalized = normalize(text)
        if not normalized:
            # nothing Rasa could classify: let the caller's session decide (LLM / reprompt)
            return DialogueTurn(source="rasa", needs_fallback=True)
        readings = [a for a in alternatives if a.isdigit()]
        return await self._turn(call, normalized, readings)

    async def dtmf(self, call: CallInfo, digits: str) -> DialogueTurn:
        """Keypad digits: ``/dtmf{"digits":"..."}`` (menu choice or an account number)."""
        if not _DTMF_RE.fullmatch(digits):
            raise ValueError(f"not DTMF digits: {digits!r}")
        return await self._turn(call, "/dtmf" + json.dumps({"digits": digits}))

    async def retract(self, call: CallInfo, text: str) -> None:
        """Undo the caller's last message when it is ``text`` (Rasa's ``rewind`` event,
        ``UserUtteranceReverted``: the message and what the bot did after it are gone, slots
        and form included). The tracker is read first: a turn answered from the knowledge
        base never reached the conversation, and an older message must not be undone. Best
        effort: a failure is logged, the next message goes on as it would have."""
        path = f"/conversations/{quote(call.call_id, safe='')}/tracker"
        try:
            tracker = await self._request("GET", path, params={"include_events": "NONE"})
            latest = tracker.get("latest_message") if isinstance(tracker, Mapping) else None
            if not isinstance(latest, Mapping) or latest.get("text") != text:
                return
            # The rewind also drops the action_listen the message followed: without it
            # again, the next message's policies predict listening at once (no reply).
            events = [{"event": "rewind"}, {"event": "action", "name": "action_listen"}]
            await self._request("POST", f"{path}/events", json_body=events)
            log.info("rasa.retracted", call_id=call.call_id)
        except DialogueUnavailable as exc:
            log.warning("rasa.retract_failed", call_id=call.call_id, error=str(exc))

    async def end(self, call: CallInfo) -> None:
        """Forget the call's conversation (best effort: the call is over either way)."""
        if not self.forget_on_end:
            return
        try:
            await self._request(
                "PUT",
                f"/conversations/{quote(call.call_id, safe='')}/tracker/events",
                json_body=[],
            )
        except DialogueUnavailable as exc:
            log.warning("rasa.forget_failed", call_id=call.call_id, error=str(exc))

    # -- extras ----------------------------------------------------------------------------

    async def ping(self) -> str:
        """The loaded model file name; DialogueUnavailable when the server is not ready."""
        status = await self._request("GET", "/status")
        model = status.get("model_file") if isinstance(status, Mapping) else None
        if not model:
            raise DialogueUnavailable("Rasa has no model loaded", retryable=True)
        return str(model)

    async def static_responses(self) -> list[str]:
        """Every response text of the domain without ``{slot}`` placeholders, in domain
        order, once each: what the TTS cache can synthesise at startup."""
        domain = await self._request("GET", "/domain")
        if not isinstance(domain, Mapping):
            raise DialogueUnavailable("domain is not an object", retryable=False)
        texts: list[str] = []
        seen: set[str] = set()
        responses = domain.get("responses") or {}
        for variations in responses.values():
            for variation in variations or []:
                text = variation.get("text") if isinstance(variation, Mapping) else None
                if not isinstance(text, str) or not text.strip() or "{" in text:
                    continue
                text = text.strip()
                if text not in seen:
                    seen.add(text)
                    texts.append(text)
        return texts
