"""The sections that decide what the bot says: rules, fallbacks, Rasa, the action
server and its back ends, recorded prompts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class RuleConfig:
    keywords: tuple[str, ...] = ()
    reply: str = ""
    then: Literal["", "hangup", "transfer"] = ""
    target: str = ""


def _default_rules() -> tuple[RuleConfig, ...]:
    return (
        RuleConfig(
            keywords=("opening hours", "open", "opening", "hours", "hour", "close", "closing"),
            reply="We are open {{phone_hours}}.",
        ),
        RuleConfig(
            keywords=("address", "where are you", "located", "location", "find you"),
            reply="You can find us at {{address}}, in the city centre.",
        ),
        RuleConfig(
            keywords=("agent", "human", "person", "operator", "representative"),
            reply="Please hold while I transfer you to an agent.",
            then="transfer",
            target="agents",
        ),
        RuleConfig(
            keywords=("goodbye", "bye", "that's all", "that is all", "nothing else", "hang up"),
            reply="Thank you for calling. Goodbye!",
            then="hangup",
        ),
    )


@dataclass(frozen=True, slots=True)
class DialogueConfig:
    engine: Literal["rules", "rasa"] = "rasa"
    greeting: str = "Hello, thanks for calling {{company}}. How can I help you today?"
    reprompt: str = "Sorry, I didn't catch that. Could you say it again?"
    rules: tuple[RuleConfig, ...] = field(default_factory=_default_rules)
    timeout_s: float = 3.0
    # A reply still being worked out after this (a back-end lookup): the "hold" clip, or
    # hold_reply, plays meanwhile. 0: never.
    hold_after_s: float = 0.7
    hold_reply: str = "One moment, please."
    # The longest silence the caller hears while the bot waits for something late (after
    # the hold line: a dialogue answer, the LLM's first or next sentence, a voice's next
    # sentence): past it the bot gives up on that and says its fallback. 0: each stage's
    # own timeout only.
    max_dead_air_s: float = 1.2


_BACKCHANNELS = (
    "uh-huh", "uh huh", "mm-hmm", "mhm", "mm", "hmm", "yeah", "yep", "yes", "okay", "ok",
    "right", "sure", "alright", "all right", "i see", "got it",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class FallbackConfig:
    # No input: after the bot finishes, this much caller silence -> still_there; after
    # no_input_max of those in a row -> no_input_goodbye and hang up.
    no_input_s: float = 8.0
    no_input_max: int = 2
    still_there: str = "Are you still there?"
    no_input_goodbye: str = "I haven't heard anything, so I'll end the call now. Goodbye."
    # Not understood (empty transcript, low STT confidence, or no dialogue match) this many
    # times in a row -> give up: transfer to give_up_target, or say give_up_goodbye and hang up.
    not_understood_max: int = 3
    min_stt_confidence: float = 0.0
    clarify: str = "Sorry, I didn't catch that. Could you say it again?"
    give_up_target: str = "agents"
    give_up_transfer: str = "Let me put you through to someone who can help."
    give_up_goodbye: str = "I'm sorry I couldn't help today. Please call again later. Goodbye."
    # Anything unexpected inside a call: apologise, then give up as above.
    apology: str = "I'm sorry, something went wrong on my side."
    # Before server.max_call_duration_s ends the call: say this, then give up as above.
    wrap_up_before_s: float = 20.0
    wrap_up: str = "We're nearly out of time for this call."
    # Said while the bot talks, these do not interrupt it (the bot pauses, then goes on).
    backchannels: tuple[str, ...] = _BACKCHANNELS


@dataclass(frozen=True, slots=True)
class RasaConfig:
    url: str = "http://127.0.0.1:5005"
    timeout_s: float = 2.0
    manage: bool = True  # start, train and supervise the Rasa server ourselves
    project_dir: str = "rasa_project"
    venv_dir: str = ""  # empty: <cache>/rasa-venv
    redis_url_env: str = "VOICEBOT_RASA_REDIS_URL"  # name of the env var holding the URL


@dataclass(frozen=True, slots=True)
class ActionsConfig:
    """The Rasa action server (``rasa_project/actions``: identity check, balance, bookings,
    outages) and the back ends it reads. With ``[rasa] manage`` the bot starts and supervises
    it beside the Rasa server (``voicebot_pbx.answers.action_server``).

    Back ends: ``backend`` "sql" (``dsn``: a SQLite path or ``postgresql://``; empty: the demo
    company's SQLite in the state dir, seeded on start) or "http" (``http_url``, the JSON API
    of rasa_project/actions/HTTP_API.md). ``billing``/``outages``/``bookings`` override it for
    one system as "sql:DSN" or "http:URL". A DSN with a password: ``dsn_env``."""

    enabled: bool = True
    url: str = "http://127.0.0.1:5055"
    # Each action's whole back-end work (lookups, retries) stays within this.
    budget_s: float = 1.5
    identity_attempts: int = 3
    # A spoken account number that is no account: how many of the recogniser's other
    # readings of it (SttResult.alternatives) are looked up, the first one found taken and
    # read back to the caller. 0: none (the number heard is taken as it is). 6: what the
    # recogniser's two listens hand on together at most (speech/digit_beam.merge_readings).
    # The action server's own default (rasa_project/actions/runtime.py) is the same.
    account_alternatives: int = 6
    backend: Literal["sql", "http"] = "sql"
    dsn: str = ""
    dsn_env: str = "VOICEBOT_BACKEND_DSN"
    http_url: str = ""
    http_timeout_s: float = 1.5
    http_retries: int = 2
    billing: str = ""
    outages: str = ""
    bookings: str = ""


@dataclass(frozen=True, slots=True)
class PromptsConfig:
    """Pre-recorded clips (WAV, any rate; converted once at load). Every ``*.wav`` in
    ``dir`` is a clip named by its file stem (``hold.wav`` -> "hold"); ``clips`` adds or
    overrides entries as "name=path" (relative paths are relative to ``dir``)."""

    dir: str = ""
    clips: tuple[str, ...] = ()


def actions_problems(actions: ActionsConfig) -> list[str]:
    problems: list[str] = []
    if actions.budget_s <= 0 or actions.identity_attempts < 1 or actions.http_timeout_s <= 0:
        problems.append("actions: budget_s and http_timeout_s > 0, identity_attempts >= 1")
    if actions.account_alternatives < 0:
        problems.append("actions.account_alternatives must be >= 0")
    url = urlsplit(actions.url)
    if url.scheme != "http" or not url.hostname or url.port is None:
        problems.append(f"actions.url {actions.url!r} must be http://HOST:PORT")
    if actions.backend == "http" and not actions.http_url:
        problems.append('actions.backend is "http" but actions.http_url is empty')
    for name in ("billing", "outages", "bookings"):
        value: str = getattr(actions, name)
        kind, _, target = value.partition(":")
        if value and (kind not in ("sql", "http") or (kind == "http" and not target)):
            problems.append(f'actions.{name} = {value!r} must be "sql:DSN" or "http:URL"')
    return problems
