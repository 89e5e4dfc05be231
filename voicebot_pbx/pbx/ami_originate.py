"""Outbound calls over AMI: an async ``Originate`` and its ``OriginateResponse``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import structlog

from voicebot_pbx.config import AmiConfig as AmiConfig
from voicebot_pbx.pbx.ami import AmiClient
from voicebot_pbx.pbx.ami_codec import (
    AmiError,
    AmiNotConnected,
    OriginateResponseEvent,
    parse_event,
)

log = structlog.get_logger("voicebot_pbx.ami")


# ---------------------------------------------------------------------------------------------
# Outbound calls

OriginateOutcome = Literal["answered", "no_answer", "busy", "failed"]


def originate_outcome(reason: int) -> OriginateOutcome:
    """Map OriginateResponse ``Reason`` to an outcome.

    The reason is an ``enum ast_control_frame_type`` value (include/asterisk/frame.h:
    HANGUP=1, RINGING=3, ANSWER=4, BUSY=5, CONGESTION=8) chosen by ``pbx_dial_reason()`` in
    main/pbx.c: ANSWER when answered; HANGUP when the dial was hung up; BUSY for cause
    USER_BUSY; CONGESTION for rejected/out-of-order/congestion causes; RINGING for
    NO_ANSWER/ANSWERED_ELSEWHERE ("remote end was ringing but isn't anymore"); 0 for any
    other failure (e.g. unallocated number, no such endpoint).
    """
    if reason == 4:
        return "answered"
    if reason == 3:
        return "no_answer"
    if reason == 5:
        return "busy"
    return "failed"  # 0 failure, 1 hangup, 8 congestion, anything unexpected


@dataclass(frozen=True, slots=True)
class OriginateResult:
    outcome: OriginateOutcome
    reason: int | None  # OriginateResponse Reason; None when no response came
    channel: str  # the dialled channel as Asterisk named it (or as requested)
    uniqueid: str  # of the new channel; "" or "<null>" when none was created
    message: str = ""  # Asterisk's error message or ours

    @property
    def answered(self) -> bool:
        return self.outcome == "answered"


async def originate(
    ami: AmiClient,
    channel: str,
    *,
    context: str,
    exten: str,
    caller_id: str = "",
    variables: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
    priority: int = 1,
    channel_id: str = "",
) -> OriginateResult:
    """Place an outbound call: dial ``channel`` (e.g. ``PJSIP/1001``) for up to ``timeout_s``
    and, once answered, run the dialplan at context,exten,priority on it.

    Uses ``Async: true`` (manager.c ``action_originate`` -> ``fast_originate`` thread): the
    action is acked at once with "Originate successfully queued" and the outcome arrives as
    an ``OriginateResponse`` event carrying the same ActionID. ``channel_id`` sets the new
    channel's Uniqueid (``ChannelId``). Never raises for AMI trouble: the outcome is
    ``failed`` with a message.
    """
    action: dict[str, str | list[str]] = {
        "Action": "Originate",
        "Channel": channel,
        "Context": context,
        "Exten": exten,
        "Priority": str(priority),
        "Timeout": str(max(1, round(timeout_s * 1000))),
        "Async": "true",
    }
    if caller_id:
        action["CallerID"] = caller_id
    if channel_id:
        action["ChannelId"] = channel_id
    if variables:
        action["Variable"] = [f"{name}={value}" for name, value in variables.items()]
    # The OriginateResponse comes when the callee answers or the dial gives up, i.e. up to
    # the dial timeout after the ack.
    wait_s = timeout_s + ami.action_timeout_s + 5.0
    try:
        result = await ami.send_action(action, timeout_s=wait_s)
    except (AmiError, ValueError) as exc:
        error = str(exc)
        if isinstance(exc, AmiNotConnected) and ami.last_error:
            error = f"{error} ({ami.last_error})"  # e.g. the refused login, not just "down"
        log.warning("ami_originate_failed", channel=channel, error=error)
        return OriginateResult("failed", None, channel, "", error)
    messages = result if isinstance(result, list) else [result]
    first = messages[0]
    if not first.success:
        log.warning("ami_originate_refused", channel=channel, message=first.message)
        return OriginateResult("failed", None, channel, "", first.message or "refused")
    response = next((m for m in messages if m.event.lower() == "originateresponse"), None)
    if response is None:
        return OriginateResult("failed", None, channel, "", "no OriginateResponse")
    event = parse_event(response)
    assert isinstance(event, OriginateResponseEvent)
    outcome = originate_outcome(event.reason)
    log.info(
        "ami_originate",
        channel=event.channel or channel,
        outcome=outcome,
        reason=event.reason,
        uniqueid=event.uniqueid,
    )
    return OriginateResult(outcome, event.reason, event.channel or channel, event.uniqueid)
