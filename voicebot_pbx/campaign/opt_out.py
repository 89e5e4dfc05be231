""" "Stop calling me" on a campaign call (issue #23 item 3): the number goes on the
do-not-call list, the caller hears it confirmed, the call ends.

``is_opt_out`` (pure) recognises the request in a transcript. ``opt_out`` (the shell) finds
which campaign contact the call is through the channel variables the campaign set on it
(``VOICEBOT_CAMPAIGN``, ``VOICEBOT_CONTACT``, read over AMI / ESL) and adds that contact's
number to the campaign store's list. A call that is not a campaign call is left to the
dialogue (an inbound caller has no contact to remove)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import structlog

from voicebot_pbx.campaign.policy import retry_after_s
from voicebot_pbx.campaign.state import CampaignStore, store_path
from voicebot_pbx.config import Config
from voicebot_pbx.pbx.media import CallControl

_OPT_OUT = re.compile(
    r"\b("
    r"stop (calling|ringing|phoning|contacting)( me| us)?"
    r"|(do not|don'?t|never) (call|ring|phone|contact) (me|us|this number)"
    r"|(remove|take) (me|us|my number|this number) (off|from)"
    r"|(remove|delete) my (number|details)"
    r"|(put|add) me (on|to) (the|your) do not call"
    r"|unsubscribe|opt( me)? out"
    r")\b"
)

log = structlog.get_logger(__name__)

T = TypeVar("T")
OptOutOutcome = Literal["listed", "already_listed", "not_campaign", "failed"]

# The store's SQLite write runs off the event loop (tests on virtual time run it inline).
run_blocking: Callable[..., Awaitable[Any]] = asyncio.to_thread


def is_opt_out(text: str) -> bool:
    """The caller asks not to be called again ("stop calling me", "take me off your list")."""
    return _OPT_OUT.search(text.lower().replace("’", "'")) is not None


def _in_store(path: Path, work: Callable[[CampaignStore], T]) -> T | None:
    """``work`` on the campaign store at ``path``; None when there is none (no campaign
    ever ran on this machine)."""
    if not path.exists():
        return None
    store = CampaignStore(path)
    try:
        return work(store)
    finally:
        store.close()


def _list_contact(path: Path, campaign: str, seq: int) -> OptOutOutcome:
    def put_on_list(store: CampaignStore) -> OptOutOutcome:
        number = store.contact_number(campaign, seq)
        if number is None:
            return "failed"
        added = store.add_dnc(number, source=f"opt_out:{campaign}", now=time.time())
        return "listed" if added else "already_listed"

    return _in_store(path, put_on_list) or "failed"


async def opt_out(
    config: Config, control: CallControl | None, call_id: str, timeout_s: float = 1.0
) -> OptOutOutcome:
    """Put the campaign contact of ``call_id`` on the do-not-call list."""
    if control is None:
        return "not_campaign"
    try:
        async with asyncio.timeout(timeout_s):
            campaign = await control.get_var(call_id, "VOICEBOT_CAMPAIGN")
            contact = await control.get_var(call_id, "VOICEBOT_CONTACT")
            if not campaign:
                return "not_campaign"
            if not contact or not contact.isdigit():
                return "failed"
            outcome: OptOutOutcome = await run_blocking(
                _list_contact, store_path(config), campaign, int(contact)
            )
            return outcome
    except Exception:
        return "failed"


def _mark(path: Path, config: Config, campaign: str, call_id: str, machine: bool) -> bool:
    now = time.time()
    if not machine:
        return bool(_in_store(path, lambda store: store.unmark_machine(campaign, call_id, now=now)))
    marked = _in_store(
        path,
        lambda store: store.mark_machine(
            campaign,
            call_id,
            now=now,
            retry_after=lambda attempt: retry_after_s("machine", attempt, config.campaign),
        ),
    )
    return bool(marked)


async def note_machine(
    config: Config, control: CallControl | None, call_id: str, timeout_s: float = 1.0
) -> bool:
    """An answering machine took this call: tell its campaign, which retries the contact by
    its machine rule (False: not a campaign call, or the store could not be updated)."""
    return await _note_verdict(config, control, call_id, timeout_s, machine=True)


async def note_person(
    config: Config, control: CallControl | None, call_id: str, timeout_s: float = 1.0
) -> bool:
    """Takes :func:`note_machine` back: a person talked over the voicemail message. The
    attempt is ``answered`` again and its contact done (``CampaignStore.unmark_machine``)."""
    return await _note_verdict(config, control, call_id, timeout_s, machine=False)


async def _note_verdict(
    config: Config,
    control: CallControl | None,
    call_id: str,
    timeout_s: float,
    *,
    machine: bool,
) -> bool:
    if control is None:
        return False
    try:
        async with asyncio.timeout(timeout_s):
            campaign = await control.get_var(call_id, "VOICEBOT_CAMPAIGN")
            if not campaign:
                return False
            marked: bool = await run_blocking(
                _mark, store_path(config), config, campaign, call_id, machine
            )
    except Exception as exc:
        log.warning("campaign_machine_not_noted", error=f"{type(exc).__name__}: {exc}"[:200])
        return False
    if not marked:
        log.warning(
            "campaign_machine_not_noted",
            campaign=campaign,
            machine=machine,
            error=f"no {'answered' if machine else 'machine'} attempt {call_id} in "
            f"{store_path(config)}",
        )
    return marked
