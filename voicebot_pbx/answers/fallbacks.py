"""Fallback brains: when the primary dialogue (Rasa) is down or slow, the call goes on
with the rule dialogue. No dead air: every failure turns into an answer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from voicebot_pbx.answers.dialogue import CallInfo, Dialogue, DialogueTurn
from voicebot_pbx.answers.rasa import DialogueUnavailable

log = structlog.get_logger("voicebot_pbx.answers.fallbacks")


class FallbackDialogue:
    """``primary`` under a timeout; on ``DialogueUnavailable`` or timeout, ``backup``.

    ``fallbacks_total`` counts the turns the backup answered (exported as a metric)."""

    def __init__(self, primary: Dialogue, backup: Dialogue, *, timeout_s: float) -> None:
        self.primary = primary
        self.backup = backup
        self.timeout_s = timeout_s
        self.name = primary.name
        self.fallbacks_total = 0

    async def _try(
        self,
        what: str,
        primary: Callable[[], Awaitable[DialogueTurn]],
        backup: Callable[[], Awaitable[DialogueTurn]],
    ) -> DialogueTurn:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await primary()
        except (DialogueUnavailable, TimeoutError) as exc:
            reason = "timeout" if isinstance(exc, TimeoutError) else str(exc)
            self.fallbacks_total += 1
            log.warning(
                "dialogue_fallback",
                primary=self.primary.name,
                backup=self.backup.name,
                what=what,
                reason=reason,
                fallbacks_total=self.fallbacks_total,
            )
            turn = await backup()
            return DialogueTurn(
                replies=turn.replies,
                end=turn.end,
                transfer_target=turn.transfer_target,
                collect_dtmf_digits=turn.collect_dtmf_digits,
                intent=turn.intent,
                confidence=turn.confidence,
                source=turn.source,
                needs_fallback=turn.needs_fallback,
                entities=turn.entities,
                fallbacks=(*turn.fallbacks, f"nlu_unavailable:{self.primary.name}"),
            )

    async def start(self, call: CallInfo) -> DialogueTurn:
        return await self._try(
            "start", lambda: self.primary.start(call), lambda: self.backup.start(call)
        )

    async def respond(self, call: CallInfo, text: str) -> DialogueTurn:
        return await self._try(
            "respond",
            lambda: self.primary.respond(call, text),
            lambda: self.backup.respond(call, text),
        )

    async def dtmf(self, call: CallInfo, digits: str) -> DialogueTurn:
        return await self._try(
            "dtmf", lambda: self.primary.dtmf(call, digits), lambda: self.backup.dtmf(call, digits)
        )

    async def end(self, call: CallInfo) -> None:
        for brain in (self.primary, self.backup):
            try:
                async with asyncio.timeout(self.timeout_s):
                    await brain.end(call)
            except (DialogueUnavailable, TimeoutError):
                pass
