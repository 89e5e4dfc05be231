"""How a call ended and where a fallback came from: the bounded labels that metrics and
reports share (``end_class`` of a raw end reason, ``fallback_name`` / ``fallback_stage`` of a
session fallback). Pure functions over strings."""

from __future__ import annotations

END_CLASSES = ("caller_hangup", "bot_hangup", "transferred", "drained", "error")


def end_class(reason: str) -> str:
    """The issue's end reasons from the transport's/session's raw reason; "" is in progress."""
    if not reason:
        return "in_progress"
    if reason in ("caller_hangup", "peer_hangup"):
        return "caller_hangup"
    if reason in ("bot_hangup", "transferred"):
        return reason
    if reason == "voicemail":  # a machine answered: the bot left its message and hung up
        return "bot_hangup"
    if reason in ("shutdown", "drained", "drain"):
        return "drained"
    return "error"


_FALLBACK_STAGES = {
    "backchannel_ignored": "turn_taking",
    "false_interruption": "turn_taking",
    # The bot paused at a sound over its reply that stopped short, and went on (a click, a
    # cough, line echo past the echo gate): many on one line point at echo.
    "paused_for_noise": "turn_taking",
    # The caller went on with their sentence over the reply to its first part (the turn
    # had ended inside it): many point at turns that end too soon.
    "went_on_over_reply": "turn_taking",
    "not_understood": "dialogue",
    "max_duration": "call",
    "error": "call",
    "clip_missing": "tts",
}
_STAGE_PREFIXES = ("stt", "vad", "nlu", "dialogue", "llm", "tts", "no_input")


def fallback_name(fallback: str) -> str:
    """``clip_missing:hours`` -> ``clip_missing`` (bounded label values)."""
    return fallback.split(":", 1)[0]


def fallback_stage(fallback: str) -> str:
    name = fallback_name(fallback)
    if name in _FALLBACK_STAGES:
        return _FALLBACK_STAGES[name]
    for prefix in _STAGE_PREFIXES:
        if name == prefix or name.startswith(prefix + "_"):
            return prefix
    return "other"
