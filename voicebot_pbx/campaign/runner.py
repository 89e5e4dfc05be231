"""Dialling a campaign (the async shell around ``policy`` and ``state``).

Every ``poll_s`` the runner takes the contacts that are due, and for each: outside its
calling window it is postponed to the window's next opening; on the do-not-call list (read
again right before the dial, so a number added mid-campaign is never called) it is skipped;
else, within ``max_concurrent`` and ``calls_per_s``, the attempt is written and the call
placed (``Dialer``: AMI ``Originate`` into the bot's outbound context). Its outcome
schedules the next attempt (``policy.retry_after_s``) or finishes the contact. The runner
is its own process (``voicebot-pbx campaign run``): the SQLite calls are sub-millisecond
and made inline.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from zoneinfo import ZoneInfo

import structlog

from voicebot_pbx.campaign.contacts import Contact, campaign_variables
from voicebot_pbx.campaign.policy import Outcome, RateGate, Window, retry_after_s
from voicebot_pbx.campaign.state import CampaignStore
from voicebot_pbx.config import Config

log = structlog.get_logger("voicebot_pbx.campaign")


@dataclass(frozen=True, slots=True)
class DialResult:
    outcome: Outcome
    detail: str = ""


class DialerUnavailable(Exception):
    """The PBX link is down: nothing was dialled (the campaign pauses, no attempt spent)."""


class Dialer(Protocol):
    async def dial(self, contact: Contact, call_id: str, campaign: str) -> DialResult: ...


@dataclass
class RunStats:
    dialled: int = 0
    postponed: int = 0
    skipped_dnc: int = 0
    interrupted: int = 0
    max_in_flight: int = 0
    paused: int = 0  # dials put back because the PBX link was down


async def run_campaign(
    store: CampaignStore,
    name: str,
    config: Config,
    dialer: Dialer,
    *,
    clock: Callable[[], float] = time.time,
    until_done: bool = True,
    dial_guard_s: float | None = None,
) -> RunStats:
    """Dial ``name`` until no contact is pending (``until_done``), or until nothing is due
    now and no call is in flight. ``clock`` is wall time (epoch s); the loop's sleeps follow
    it. ``dial_guard_s`` bounds one dial (default: the AMI dial timeout plus 30 s)."""
    cfg = config.campaign
    window = Window.from_config(cfg)
    default_tz = ZoneInfo(cfg.timezone)
    gate = RateGate(cfg.calls_per_s)
    guard_s = dial_guard_s if dial_guard_s is not None else config.ami.outbound_timeout_s + 30.0
    stats = RunStats()
    stats.interrupted = store.recover(name, clock())
    if stats.interrupted:
        log.warning("campaign_interrupted_calls", campaign=name, calls=stats.interrupted)
    in_flight: set[asyncio.Task[None]] = set()
    paused_until = 0.0  # loop time before which nothing is dialled (the PBX link is down)

    async def place(contact: Contact, call_id: str, attempt: int) -> None:
        nonlocal paused_until
        try:
            async with asyncio.timeout(guard_s):
                result = await dialer.dial(contact, call_id, name)
        except DialerUnavailable as exc:
            store.cancel_attempt(name, contact.seq, attempt, clock())
            stats.dialled -= 1
            stats.paused += 1
            paused_until = asyncio.get_running_loop().time() + cfg.poll_s * 5
            log.warning("campaign_paused", campaign=name, reason=str(exc))
            return
        except TimeoutError:
            result = DialResult("failed", f"no outcome within {guard_s:.0f} s")
        except Exception as exc:  # a dialer bug fails this attempt, not the campaign
            log.exception("campaign_dial_error", campaign=name, contact=contact.seq)
            result = DialResult("failed", f"{type(exc).__name__}: {exc}")
        now = clock()
        after_s = retry_after_s(result.outcome, attempt, cfg)
        store.finish_attempt(
            name,
            contact.seq,
            attempt,
            outcome=result.outcome,
            detail=result.detail,
            now=now,
            retry_at=None if after_s is None else now + after_s,
        )
        log.info(
            "campaign_outcome",
            campaign=name,
            contact=contact.seq,
            attempt=attempt,
            outcome=result.outcome,
            retry_in_s=after_s,
        )

    async with asyncio.TaskGroup() as group:
        while True:
            now = clock()
            free = cfg.max_concurrent - len(in_flight)
            if asyncio.get_running_loop().time() < paused_until:
                free = 0
            for due in store.due(name, now, max(0, free)) if free > 0 else []:
                contact = due.contact
                tz = ZoneInfo(contact.timezone) if contact.timezone else default_tz
                at = dt.datetime.fromtimestamp(now, dt.UTC)
                if not window.open_at(at, tz):
                    store.postpone(name, contact.seq, window.next_open(at, tz).timestamp(), now)
                    stats.postponed += 1
                    continue
                wait_s = gate.wait_s(clock())
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                if store.is_dnc(contact.number):  # read right before the dial
                    store.skip_dnc(name, contact.seq, clock())
                    stats.skipped_dnc += 1
                    log.info("campaign_skip_dnc", campaign=name, contact=contact.seq)
                    continue
                gate.started(clock())
                # Written before the dial: a runner that dies now leaves it "interrupted".
                call_id = str(uuid.uuid4())
                attempt = store.start_attempt(name, contact.seq, call_id, clock())
                stats.dialled += 1
                log.info("campaign_dial", campaign=name, contact=contact.seq, attempt=attempt)
                task = group.create_task(place(contact, call_id, attempt))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                stats.max_in_flight = max(stats.max_in_flight, len(in_flight))
            next_at = store.next_due_at(name)
            if not in_flight and (next_at is None or (not until_done and next_at > clock())):
                break
            pause_s = cfg.poll_s
            if next_at is not None:
                pause_s = min(pause_s, max(0.0, next_at - clock()))
            await asyncio.sleep(max(pause_s, 0.05))
    return stats


class AmiDialer:
    """Originate over AMI into ``[ami] outbound_context`` with the call's UUID, profile and
    the campaign's variables (VOICEBOT_CAMPAIGN, VOICEBOT_CONTACT, VOICEBOT_VAR_*)."""

    def __init__(self, config: Config) -> None:
        from voicebot_pbx.pbx.ami import AmiClient

        self.config = config
        self.ami = AmiClient(config.ami)

    async def start(self) -> None:
        await self.ami.start()
        await self.ami.wait_connected(self.config.ami.action_timeout_s)

    async def close(self) -> None:
        await self.ami.close()

    async def dial(self, contact: Contact, call_id: str, campaign: str) -> DialResult:
        from voicebot_pbx.pbx.ami_originate import originate

        if not self.ami.connected and not await self.ami.wait_connected(
            self.config.ami.action_timeout_s
        ):
            raise DialerUnavailable(f"AMI is not connected ({self.ami.last_error or 'down'})")

        variables = {"VOICEBOT_UUID": call_id, **campaign_variables(contact, campaign)}
        cfg = self.config
        result = await originate(
            self.ami,
            cfg.campaign.channel.replace("{number}", contact.number),
            context=cfg.ami.outbound_context,
            exten=cfg.ami.outbound_exten,
            caller_id=cfg.campaign.caller_id,
            variables=variables,
            timeout_s=cfg.ami.outbound_timeout_s,
        )
        return DialResult(result.outcome, result.message)
