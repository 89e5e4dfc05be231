"""Fallback brains: when the primary dialogue (Rasa) is down or slow, the call goes on
with the rule dialogue (``FallbackDialogue``); what the dialogue could not understand the
grounded LLM composes (``ComposingDialogue``). No dead air: every failure turns into an
answer."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable

import structlog

from voicebot_pbx.answers.dialogue import (
    CallInfo,
    ComposedReply,
    Composer,
    Dialogue,
    DialogueTurn,
)
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


class ComposingDialogue:
    """``inner``, and for a spoken turn it could not understand (``needs_fallback``) a reply
    composed by ``composer`` (the grounded LLM) from the caller's words. Start, DTMF and the
    end of the call are ``inner``'s alone."""

    def __init__(self, inner: Dialogue, composer: Composer) -> None:
        self.inner = inner
        self.composer = composer
        self.name = inner.name

    async def start(self, call: CallInfo) -> DialogueTurn:
        return await self.inner.start(call)

    async def respond(self, call: CallInfo, text: str) -> DialogueTurn:
        turn = await self.inner.respond(call, text)
        if not turn.needs_fallback or not text.strip():
            return turn
        return dataclasses.replace(turn, composed=ComposedReply(text, self.composer))

    async def dtmf(self, call: CallInfo, digits: str) -> DialogueTurn:
        return await self.inner.dtmf(call, digits)

    async def end(self, call: CallInfo) -> None:
        await self.inner.end(call)
