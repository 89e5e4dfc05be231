"""The ``[campaign]`` section: outbound calls through AMI, and its checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class CampaignConfig:
    """Outbound campaigns (``voicebot-pbx campaign``, voicebot_pbx.campaign): calls go out
    through AMI ``Originate`` into ``[ami] outbound_context``. Times are local to each
    contact (``timezone`` column, else ``timezone`` here); each ``*_retries_s`` list is the
    back-off before each further attempt after that outcome (its length: how many)."""

    db_path: str = ""  # empty: <state_dir>/campaigns.sqlite
    # Which PBX places the calls: "asterisk" (AMI Originate into [ami] outbound_context) or
    # "freeswitch" (ESL originate straight into this bot's [freeswitch] socket listener).
    pbx: Literal["asterisk", "freeswitch"] = "asterisk"
    # What is dialled for a contact: {number} is the contact's number as written (FreeSWITCH:
    # a dial string, e.g. "sofia/gateway/trunk/{number}").
    channel: str = "PJSIP/{number}"
    caller_id: str = ""  # e.g. "Example Energy <8005550100>"
    max_concurrent: int = 4
    calls_per_s: float = 1.0
    window: str = "09:00-20:00"
    days: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat")
    timezone: str = "Europe/London"
    busy_retries_s: tuple[float, ...] = (900.0, 1800.0)
    no_answer_retries_s: tuple[float, ...] = (3600.0, 14400.0)
    failed_retries_s: tuple[float, ...] = (1800.0,)
    machine_retries_s: tuple[float, ...] = (7200.0,)
    poll_s: float = 1.0  # how often the runner looks for due contacts
    # A campaign call whose callee asks not to be called again: the number goes on the
    # do-not-call list, this is said, the call ends.
    opt_out_reply: str = (
        "I've taken your number off our call list. Sorry to have troubled you. Goodbye."
    )
    # ... when the list could not be updated (the request is in the call record).
    opt_out_failed_reply: str = (
        "I'm sorry, I couldn't update our call list just now. I've noted your request. Goodbye."
    )


def campaign_problems(campaign: CampaignConfig) -> list[str]:
    import datetime as dt
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    problems: list[str] = []
    if "{number}" not in campaign.channel:
        problems.append(f"campaign.channel {campaign.channel!r} must contain " + '"{number}"')
    if campaign.max_concurrent < 1 or campaign.calls_per_s <= 0 or campaign.poll_s <= 0:
        problems.append("campaign: max_concurrent >= 1, calls_per_s and poll_s > 0")
    start, sep, end = campaign.window.partition("-")
    try:
        if not sep or dt.time.fromisoformat(start.strip()) >= dt.time.fromisoformat(end.strip()):
            raise ValueError
    except ValueError:
        problems.append(f'campaign.window {campaign.window!r} must be "HH:MM-HH:MM", start first')
    days = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
    if not campaign.days or any(day not in days for day in campaign.days):
        problems.append(f"campaign.days must be some of {', '.join(days)}")
    try:
        ZoneInfo(campaign.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(f"campaign.timezone {campaign.timezone!r} is not an IANA time zone")
    steps = (
        campaign.busy_retries_s
        + campaign.no_answer_retries_s
        + campaign.failed_retries_s
        + campaign.machine_retries_s
    )
    if any(step <= 0 for step in steps):
        problems.append("campaign: every *_retries_s step must be > 0")
    return problems
