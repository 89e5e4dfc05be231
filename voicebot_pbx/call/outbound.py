"""An outbound call's opening when its profile has ``amd`` (issue #23): what the call does
with the answering-machine verdict.

``call/answering.py``'s :class:`AmdGate` tells who answered; :class:`OutboundOpening`
acts on it for one call, through the narrow :class:`OpeningHost` the session gives it:

- a person (or a silent line) hears the opening; one Asterisk's ``AMD()`` already heard
  hears it at once, and a short greeting's pause that makes a person likely starts it
  before the verdict (cut if the verdict comes out machine);
- a machine gets the profile's voicemail message after its beep, then the bot hangs up; a
  late beep after a short greeting turns the call into a voicemail drop too;
- a callee who talks over the message left on what seemed a recording is a person after all
  (``AmdGate.talked_back``): the message stops and the opening plays;
- each verdict goes to the call's campaign, if it is one's (``campaign/opt_out.py``).

The callee's turns that began before the verdict are the detector's, not the dialogue's
(:meth:`OutboundOpening.utterance_started` / :meth:`owns`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Literal, Protocol

import structlog

from voicebot_pbx.answers.dialogue import BotReply, DialogueTurn
from voicebot_pbx.call.amd import AmdResult
from voicebot_pbx.call.answering import AmdGate
from voicebot_pbx.campaign.opt_out import note_machine, note_person
from voicebot_pbx.config import Config, ProfileConfig
from voicebot_pbx.ops.records import TurnRecord
from voicebot_pbx.pbx.media import CallControl

log = structlog.get_logger("voicebot_pbx.call.outbound")


class OpeningHost(Protocol):
    """What the opening needs of its call (``call/session.py``)."""

    @property
    def turn_id(self) -> int:
        """The call's current turn id (a reply started now belongs to it)."""
        ...

    def start_reply(self, turn: TurnRecord, make_turn: Awaitable[DialogueTurn], now: float) -> None:
        """Play the reply ``make_turn`` gives, as ``turn``."""
        ...

    def interrupt(self) -> None:
        """Stop the reply playing now (its frames are dropped)."""
        ...

    def opening(self) -> Awaitable[DialogueTurn]:
        """The opening a person hears (the profile's greeting, or the dialogue's start)."""
        ...

    def drop_paused_reply(self) -> None:
        """The reply the callee's sound paused is over: recorded as barged in."""
        ...

    def spawn(self, job: Coroutine[Any, Any, None]) -> None:
        """Run ``job`` as a task of the call's group."""
        ...


class OutboundOpening:
    """One outbound call's answering-machine detection and what it does with the verdict."""

    def __init__(
        self,
        config: Config,
        rate_hz: int,
        profile: ProfileConfig,
        control: CallControl | None,
        call_id: str,
        host: OpeningHost,
        transcribe_clip: Callable[[bytes], Awaitable[str | None]],
    ) -> None:
        self.config = config
        self.profile = profile
        self.control = control
        self.call_id = call_id
        self.host = host
        self.transcribe_clip = transcribe_clip
        self.gate = AmdGate(config.amd, rate_hz, self._revised)
        self._turns: set[int] = set()  # callee turns that began before the verdict
        # ... of them, those that began over a voicemail message left on a recording that may
        # be a person after all (AmdGate.message_to_a_recording)
        self._talk_back_turns: set[int] = set()

    # --- the callee's turns --------------------------------------------------------------

    def utterance_started(self, turn_id: int) -> bool:
        """Whether the callee's utterance ``turn_id`` is the detector's ("hello?" before the
        verdict), not the dialogue's."""
        if not self.gate.listening:
            return False
        self._turns.add(turn_id)
        if self.gate.message_to_a_recording:
            self._talk_back_turns.add(turn_id)
        return True

    def owns(self, turn_id: int) -> bool:
        """The turn began before the verdict: its transcript is not the dialogue's."""
        return turn_id in self._turns

    @property
    def hears_callee(self) -> bool:
        """The callee's sounds are the detector's: no barge-in (a machine's beep or greeting
        does not interrupt its message). Not while the message goes to what seemed a
        recording: a callee talking over it pauses it (a person, maybe)."""
        return self.gate.listening and not self.gate.message_to_a_recording

    def talked_back(self, turn_id: int, text: str, now: float) -> bool:
        """The callee talked over the voicemail message left on what seemed a recording
        (``AmdGate.talked_back``): a person after all. The message stops, the opening plays,
        the campaign counts the call as answered again. False: not such a turn, or its
        words are a machine's."""
        if turn_id not in self._talk_back_turns:
            return False
        self._talk_back_turns.discard(turn_id)
        result = self.gate.talked_back(text, self.profile.voicemail_message)
        if result is None:
            return False
        log.info("amd_verdict", verdict=result.verdict, reason=result.reason, revises="machine")
        self.host.drop_paused_reply()
        self.host.interrupt()
        turn = TurnRecord(turn_id=turn_id, kind="greeting", transcript=text)
        turn.fallbacks.append(f"amd_human:{result.reason}")
        self._tell_campaign("person")
        self.host.start_reply(turn, self.host.opening(), now)
        return True

    # --- the opening ---------------------------------------------------------------------

    async def greeting(self, turn: TurnRecord) -> DialogueTurn:
        """Wait for the verdict: a person (or silence) gets the opening, a machine the
        voicemail message after its beep. A person Asterisk's ``AMD()`` heard before the
        call reached the bot gets it at once. A short greeting's pause that makes a person
        likely before the verdict (``LikelyHuman``) starts the opening at once;
        :meth:`_confirm_likely` cuts it if the verdict comes out machine."""
        early = await self.gate.asterisk_person(self.control, self.call_id)
        if early is not None:
            self._note_verdict(turn, early)
            return await self.host.opening()
        if await self.gate.likely_first():
            likely = self.gate.likely.result()
            turn.fallbacks.append("amd_likely_human")
            log.info("amd_likely_human", at_s=round(likely.at_s, 2))
            self.host.spawn(self._confirm_likely(turn))
            return await self.host.opening()
        result = await self._settled_verdict(turn)
        if result.verdict != "machine":
            return await self.host.opening()
        self._tell_campaign("machine")
        return await self._voicemail()

    async def _settled_verdict(self, turn: TurnRecord) -> AmdResult:
        """The verdict the call acts on (``AmdGate.settle``), noted on ``turn`` and logged."""
        result = await self.gate.settle(self.control, self.call_id, self.transcribe_clip)
        self._note_verdict(turn, result)
        return result

    @staticmethod
    def _note_verdict(turn: TurnRecord, result: AmdResult) -> None:
        turn.fallbacks.append(f"amd_{result.verdict}:{result.reason}")
        log.info(
            "amd_verdict",
            verdict=result.verdict,
            reason=result.reason,
            decided_at_s=round(result.decided_at_s, 2),
        )

    async def _confirm_likely(self, opening: TurnRecord) -> None:
        """After an opening started on a likely person: the verdict. A machine (the
        greeting went on) cuts the opening at once, before its beep, and gets the voicemail
        message; a greeting the length rule called a machine's but whose words are a
        person's (the words check) hears the opening again from its start."""
        first = await self.gate.first_verdict()
        cut = first.verdict == "machine"
        if cut:
            log.info("amd_opening_cut", reason=first.reason)
            opening.fallbacks.append("amd_opening_cut")
            self.host.interrupt()
        result = await self._settled_verdict(opening)
        now = asyncio.get_running_loop().time()
        if result.verdict == "machine":
            if not cut:
                self.host.interrupt()
            self._tell_campaign("machine")
            turn = TurnRecord(turn_id=self.host.turn_id, kind="voicemail")
            self.host.start_reply(turn, self._voicemail(), now)
        elif cut:
            turn = TurnRecord(turn_id=self.host.turn_id, kind="greeting")
            self.host.start_reply(turn, self.host.opening(), now)

    async def _voicemail(self) -> DialogueTurn:
        """After a machine's beep (or its silence): the profile's message, then hang up."""
        await self.gate.wait_drop()
        message = self.profile.voicemail_message
        replies = (BotReply(text=message),) if message else ()
        return DialogueTurn(replies=replies, end="hangup", intent="voicemail", source="amd")

    def _revised(self, result: AmdResult) -> None:
        """A beep after all (a short "leave a message" greeting): stop, leave the message."""
        log.info(
            "amd_verdict", verdict=result.verdict, reason=result.reason, revises=result.revises
        )
        turn = TurnRecord(turn_id=self.host.turn_id, kind="voicemail")
        turn.fallbacks.append(f"amd_machine:{result.reason}")
        self._tell_campaign("machine")
        self.host.interrupt()
        self.host.start_reply(turn, self._voicemail(), asyncio.get_running_loop().time())

    def _tell_campaign(self, verdict: Literal["machine", "person"]) -> None:
        """The verdict to the call's campaign (if it is one's): a machine, or a person after
        all (one who talked over the voicemail message)."""
        note = note_machine if verdict == "machine" else note_person

        async def tell() -> None:
            if await note(self.config, self.control, self.call_id):
                log.info("campaign_verdict_noted", verdict=verdict)

        self.host.spawn(tell())
