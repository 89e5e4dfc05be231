"""Fallback brains: when the primary dialogue (Rasa) is down or slow, the call goes on
with the rule dialogue (``FallbackDialogue``); what the dialogue could not understand the
grounded LLM composes (``ComposingDialogue``). No dead air: every failure turns into an
answer."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from voicebot_pbx.answers.dialogue import (
    WORDS_NOT_TAKEN,
    BotReply,
    CallInfo,
    ComposedReply,
    Composer,
    Dialogue,
    DialogueTurn,
    Rejected,
    Sentence,
    Understanding,
)
from voicebot_pbx.answers.knowledge import KnowledgeBase
from voicebot_pbx.answers.question_form import asks_for, question_form
from voicebot_pbx.answers.rasa import FALLBACK_INTENTS, DialogueUnavailable
from voicebot_pbx.answers.routing import (
    KnowledgeHit,
    Route,
    confirm_intent_question,
    confirm_question,
    intent_task,
    is_strong,
    is_tied,
    knowledge_hit,
    offers_transfer,
    route,
    spoken_answer,
    tied_answer,
    yes_or_no,
)
from voicebot_pbx.config import KnowledgeConfig
from voicebot_pbx.speech.expect import only_expected_words, parse_expected

log = structlog.get_logger("voicebot_pbx.answers.fallbacks")


class FallbackDialogue:
    """``primary`` under a timeout; on ``DialogueUnavailable`` or timeout, ``backup``.

    After a failure the primary is skipped for ``rest_s`` (every call goes straight to the
    backup): a hung Rasa costs one timeout, not one per request (a turn asks twice:
    ``understand``, then ``respond``). ``fallbacks_total`` counts the turns the backup
    answered (exported as a metric)."""

    def __init__(
        self, primary: Dialogue, backup: Dialogue, *, timeout_s: float, rest_s: float = 5.0
    ) -> None:
        self.primary = primary
        self.backup = backup
        self.timeout_s = timeout_s
        self.rest_s = rest_s
        self.name = primary.name
        self.fallbacks_total = 0
        self._resting_until = float("-inf")

    def _resting(self) -> bool:
        return asyncio.get_running_loop().time() < self._resting_until

    def _failed(self) -> None:
        self._resting_until = asyncio.get_running_loop().time() + self.rest_s

    async def _try(
        self,
        what: str,
        primary: Callable[[], Awaitable[DialogueTurn]],
        backup: Callable[[], Awaitable[DialogueTurn]],
    ) -> DialogueTurn:
        try:
            if self._resting():
                raise DialogueUnavailable("resting after a failure", retryable=True)
            async with asyncio.timeout(self.timeout_s):
                return await primary()
        except (DialogueUnavailable, TimeoutError) as exc:
            reason = "timeout" if isinstance(exc, TimeoutError) else str(exc)
            if not self._resting():
                self._failed()
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
                expect=turn.expect,
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

    async def understand(self, call: CallInfo, text: str) -> Understanding:
        try:
            if self._resting():
                raise DialogueUnavailable("resting after a failure", retryable=True)
            async with asyncio.timeout(self.timeout_s):
                return await self.primary.understand(call, text)
        except (DialogueUnavailable, TimeoutError):
            if not self._resting():
                self._failed()
            return await self.backup.understand(call, text)

    async def prepare(self, call: CallInfo, text: str) -> None:
        """Nothing: each brain takes the turn when it is over."""

    async def respond(
        self, call: CallInfo, text: str, alternatives: Sequence[str] = ()
    ) -> DialogueTurn:
        return await self._try(
            "respond",
            lambda: self.primary.respond(call, text, alternatives),
            lambda: self.backup.respond(call, text, alternatives),
        )

    async def dtmf(self, call: CallInfo, digits: str) -> DialogueTurn:
        return await self._try(
            "dtmf", lambda: self.primary.dtmf(call, digits), lambda: self.backup.dtmf(call, digits)
        )

    async def retract(self, call: CallInfo, text: str) -> None:
        await self._tell_both(lambda brain: brain.retract(call, text))

    async def end(self, call: CallInfo) -> None:
        await self._tell_both(lambda brain: brain.end(call))

    async def _tell_both(self, act: Callable[[Dialogue], Awaitable[None]]) -> None:
        """``act`` on each brain in turn, best effort (an unavailable or slow one is
        skipped)."""
        for brain in (self.primary, self.backup):
            try:
                async with asyncio.timeout(self.timeout_s):
                    await act(brain)
            except (DialogueUnavailable, TimeoutError):
                pass


@dataclass(frozen=True, slots=True)
class _Offered:
    """The bot's last words offered a transfer (the composer's fallback reply)."""


@dataclass(frozen=True, slots=True)
class _Confirming:
    """The bot asked whether the caller means ``hit``'s passage, asked as ``question``."""

    hit: KnowledgeHit
    question: str


@dataclass(frozen=True, slots=True)
class _ConfirmingIntent:
    """The bot asked whether the caller wants ``intent`` (words far from its examples that
    the dialogue was sure of); a yes gives the dialogue ``request`` (its first example)."""

    intent: str
    request: str


class _OfferWatch:
    """``composer``, noting (``offered()``) when its answer ends in the honest offer: a
    ``Rejected`` whose reply asks (ends in "?": the fallback reply, "... shall I put you
    through to an agent?", and the refusal as shipped), or an answer closed before its first
    item (the session then says the fallback reply: the model was too slow)."""

    def __init__(self, composer: Composer, offered: Callable[[], None]) -> None:
        self.composer = composer
        self.config = composer.config
        self._offered = offered

    @property
    def kb(self) -> KnowledgeBase | None:
        return self.composer.kb

    async def answer(self, question: str) -> AsyncGenerator[Sentence | Rejected, None]:
        items = 0
        try:
            async with contextlib.aclosing(self.composer.answer(question)) as stream:
                async for item in stream:
                    items += 1
                    if isinstance(item, Rejected) and offers_transfer(item.reply):
                        self._offered()
                    yield item
        except (GeneratorExit, asyncio.CancelledError):
            if items == 0:
                self._offered()
            raise


def _question_left_out(turn: DialogueTurn) -> bool:
    """Whether the dialogue's ``turn`` to an awaited answer is its fallback without the
    question (Rasa's "say it another way" after its form rejected the words): the words not
    taken (``WORDS_NOT_TAKEN``; a form that took them, even words its classifier did not
    place, answers on), and nothing asked, ended, handed over or expected."""
    return (
        WORDS_NOT_TAKEN in turn.fallbacks
        and not turn.expect
        and turn.end is None
        and turn.transfer_target is None
        and turn.collect_dtmf_digits is None
    )


def _answer_not_understood(turn: DialogueTurn) -> bool:
    """Whether the dialogue's ``turn`` to an awaited answer is its reply to words it could
    not place (``out_of_scope``, ``nlu_fallback``) and did not take, with its form's question
    asked again: the answer heard wrong, not a question off the topic. Rasa says its own
    reply first ("Sorry, I can't help with that on this line ... Shall I put you through to an
    agent?" and then the question: two questions in one turn), so the question is asked
    again as after words its form rejected (:meth:`ComposingDialogue._ask_question_again`)."""
    return (
        turn.intent in FALLBACK_INTENTS
        and not turn.taken
        and turn.end is None
        and turn.transfer_target is None
        and (bool(turn.expect) or turn.collect_dtmf_digits is not None or turn.awaits_answer)
    )


# A thank-you the question began with when first asked ("Thanks. That's account number
# ..."): said again after "Sorry, I didn't catch that." it would thank the caller for words
# that were not taken.
_THANKS_FIRST = re.compile(r"^\s*(?:thanks|thank you|great|lovely)[.!,]\s*", re.IGNORECASE)


def question_said_again(reply: BotReply) -> BotReply:
    """``reply`` (a question the dialogue asked) to say again after the words given to it
    were not taken: without the thank-you it began with, unless nothing else is left."""
    rest = _THANKS_FIRST.sub("", reply.text, count=1)
    if not rest.strip() or rest == reply.text:
        return reply
    return dataclasses.replace(reply, text=rest[:1].upper() + rest[1:])


# The bot's own question, answered on the caller's next turn.
_Asked = _Offered | _Confirming | _ConfirmingIntent
# What the knowledge routing needs of a question: its best passage and the dialogue's reading.
_Found = tuple[KnowledgeHit | None, Understanding]
_PREPARED_PER_CALL = 2


class ComposingDialogue:
    """``inner``, with knowledge-base questions routed to the knowledge base
    (:func:`voicebot_pbx.answers.routing.route`): a strong retrieval hit is read out as the
    passage's own sentences, a likely one is asked back first ("Just to check, are you
    asking: ...?"), and a spoken turn ``inner`` could not understand (``needs_fallback``) is
    composed by ``composer`` (the grounded LLM). The questions the bot asks itself are
    answered here on the caller's next turn: a yes to the question back reads the passage
    out, a no gets the honest offer; a yes to the honest offer ("shall I put you through?")
    transfers (``offer_accepted_reply``, ``offer_target``). Anything else goes on as a new
    turn. Start, DTMF and the end of the call are ``inner``'s alone."""

    def __init__(
        self, inner: Dialogue, composer: Composer, knowledge: KnowledgeConfig | None = None
    ) -> None:
        self.inner = inner
        self.composer = composer
        self.knowledge = knowledge if knowledge is not None else KnowledgeConfig()
        self.name = inner.name
        # call id -> the question the bot's last turn asked (dropped at the call's end).
        self._asked: dict[str, _Asked] = {}
        # (call id, text) -> the knowledge hit and understanding of a decode at a pause
        # (``prepare``), taken by ``respond`` when the turn ends with that text
        self._prepared: dict[tuple[str, str], asyncio.Future[_Found]] = {}
        # call id -> the dialogue's last question that asked for an answer of a kind
        # (``expect``: an account number, a postcode; not a keypad menu), while it waits
        # for it; and what waited before the last turn (a turn taken back restores it)
        self._waiting: dict[str, DialogueTurn] = {}
        self._waiting_before: dict[str, DialogueTurn | None] = {}
        # call id -> the waiting question already asked again for words made of its
        # answer's words (the next such words go to the dialogue: no endless "say it again")
        self._asked_again: dict[str, DialogueTurn] = {}
        # The question asked again after words its form could not take, and how many
        # times in a row (question_again_max).
        self._questions_again: dict[str, tuple[DialogueTurn, int]] = {}

    async def start(self, call: CallInfo) -> DialogueTurn:
        return self._from_dialogue(call, await self.inner.start(call))

    async def understand(self, call: CallInfo, text: str) -> Understanding:
        return await self.inner.understand(call, text)

    def _from_dialogue(self, call: CallInfo, turn: DialogueTurn) -> DialogueTurn:
        """``turn``, the dialogue's own: whether it now waits for an answer (a turn the
        dialogue never saw, a passage read out, leaves that as it was)."""
        if turn.expect or turn.awaits_answer:
            self._waiting[call.call_id] = turn
        else:
            self._waiting.pop(call.call_id, None)
        return turn

    async def respond(
        self, call: CallInfo, text: str, alternatives: Sequence[str] = ()
    ) -> DialogueTurn:
        waiting = self._waiting.get(call.call_id)
        self._waiting_before[call.call_id] = waiting
        return await self._respond(call, text, alternatives, waiting)

    async def _respond(
        self, call: CallInfo, text: str, alternatives: Sequence[str], waiting: DialogueTurn | None
    ) -> DialogueTurn:
        """:meth:`respond`; ``waiting``: the dialogue's question still waiting for an
        answer (an account number, a postcode). Words the router would take from the
        dialogue as not understood are then its answer heard wrong, not a question: the
        dialogue gets them (its form re-asks or checks them) and its own reply is spoken,
        not the LLM's; and an intent far from its examples, which would start another task
        in the middle (a garbled account number heard as a booking), gets the question
        again (``answer_reprompt``), the dialogue left waiting; so does a goodbye the
        dialogue was not sure of (:meth:`_unsure_end`), which would hang up. Words made
        only of the answer's words get the question again once, then go to the dialogue
        (its form checks them and moves on)."""
        if not text.strip():
            return self._from_dialogue(call, await self.inner.respond(call, text, alternatives))
        asked = self._asked.pop(call.call_id, None)
        if asked is not None:
            settled = await self._settle(call, text, asked)
            if settled is not None:
                return settled
        kb = self.composer.kb
        where: Route = "intent"
        if kb is not None and self.knowledge.direct:
            # Route before the dialogue acts: a knowledge answer must not leave Rasa inside
            # a form it started for the nearest intent.
            if kb.hybrid:
                hit, heard = await self._prepared_or_found(call, kb, text)
            else:
                hit = knowledge_hit(kb, text, self.knowledge)
                heard = await self.inner.understand(call, text)
            # The question is embedded by now (knowledge_hit): no model runs here.
            closeness = kb.intent_similarity(heard.intent, text)
            form = question_form(text)
            if hit is not None and not hit.fits:
                log.info("knowledge_hit_cannot_answer", passage=hit.passage.id, asks=asks_for(text))
            if hit is not None and (hit.uncovered or hit.unknown):
                # How many, not which: the caller's words (a name) stay out of the log.
                log.info(
                    "knowledge_hit_uncovered",
                    passage=hit.passage.id,
                    words=len(hit.uncovered),
                    unknown_words=len(hit.unknown),
                )
            where = route(heard, hit, self.knowledge, intent_similarity=closeness, form=form)
            if where == "passage" and hit is not None:
                return self._read_out(hit, heard, text)
            if waiting is not None and (
                where in ("confirm_intent", "compose_alone") or self._unsure_end(heard)
            ):
                again = self._not_the_answer(call, text, heard, waiting)
                if again is not None:
                    return again
                where = "intent"  # the dialogue's form checks it
            if where == "confirm" and hit is not None and waiting is None:
                return self._ask_back(call, hit, heard, text)
            if where == "confirm_intent":
                asking = self._ask_intent_back(call, kb, heard)
                if asking is not None:
                    return asking
                where = "compose_alone"
            if where == "compose_alone":
                log.info("intent_far_from_examples", intent=heard.intent)
                return DialogueTurn(
                    intent=heard.intent,
                    confidence=heard.confidence,
                    source=self.inner.name,
                    needs_fallback=True,
                    composed=self._composed(call, text),
                )
        turn = self._from_dialogue(call, await self.inner.respond(call, text, alternatives))
        if waiting is not None and turn.replies:
            if _question_left_out(turn) or _answer_not_understood(turn):
                self._waiting[call.call_id] = waiting  # its form still waits: asked again
                return self._ask_question_again(call, turn, waiting)
            return turn  # its form's own reply to the answer, checked or asked again
        if turn.taken:
            # Its form took the words (an answer to a question that says no kind of answer
            # expected): its reply, not the LLM's, though the words were not placed.
            return turn
        ends = turn.end is not None or turn.collect_dtmf_digits is not None
        if turn.needs_fallback or (where == "compose" and not ends):
            return dataclasses.replace(turn, composed=self._composed(call, text))
        return turn

    def _not_the_answer(
        self, call: CallInfo, text: str, heard: Understanding, waiting: DialogueTurn
    ) -> DialogueTurn | None:
        """Words the router would take away from the dialogue ``waiting`` for an answer:
        the question asked again (:meth:`_ask_again`), or None when they go to the dialogue
        after all. Words made only of the answer's words (a spelled postcode heard as odd
        letters) are asked again once, as they may be heard right; then the dialogue's form
        checks them, whatever intent they were given (no match: it asks for the other
        answer), rather than "say it again" for as long as the line garbles them."""
        # The dialogue's reader kept known kinds only (as for call.policy.expected_answer).
        if not only_expected_words(text, parse_expected(waiting.expect)):
            return self._ask_again(heard, waiting)
        if self._asked_again.get(call.call_id) is not waiting:
            self._asked_again[call.call_id] = waiting
            return self._ask_again(heard, waiting)
        log.info("answer_words_to_dialogue", intent=heard.intent)
        return None

    def _unsure_end(self, heard: Understanding) -> bool:
        """Whether ``heard`` would end the call (``end_intents``) but the dialogue was not
        sure of it (``end_min_confidence``): while an answer is awaited, that answer heard
        wrong rather than a goodbye."""
        return (
            heard.intent in self.knowledge.end_intents
            and heard.confidence is not None
            and heard.confidence < self.knowledge.end_min_confidence
        )

    def _ask_again(self, heard: Understanding, waiting: DialogueTurn) -> DialogueTurn:
        """The dialogue's question ``waiting`` asked again (``answer_reprompt``), with what
        it expects: the words were not its answer, nor anything else understood."""
        log.info("answer_not_understood", intent=heard.intent, intent_confidence=heard.confidence)
        return DialogueTurn(
            replies=(BotReply(text=self.knowledge.answer_reprompt),),
            collect_dtmf_digits=waiting.collect_dtmf_digits,
            expect=waiting.expect,
            known=waiting.known,
            intent=heard.intent,
            confidence=heard.confidence,
            source="answer_reprompt",
            awaits_answer=waiting.awaits_answer,
            needs_fallback=True,
        )

    def _ask_question_again(
        self, call: CallInfo, turn: DialogueTurn, waiting: DialogueTurn
    ) -> DialogueTurn:
        """The dialogue's own fallback ``turn`` to words its form could not take ("Sorry,
        ... say it another way": Rasa took the words back and its form still waits) as
        ``answer_reask`` and the question ``waiting`` asked again, with what it expects;
        after ``question_again_max`` times in a row, ``answer_give_up`` (a transfer offer;
        the form still waits for an answer said instead of a yes or a no)."""
        last, times = self._questions_again.get(call.call_id, (None, 0))
        times = times + 1 if last is waiting else 1
        self._questions_again[call.call_id] = (waiting, times)
        if times > self.knowledge.question_again_max:
            log.info("answer_given_up", intent=turn.intent, asked_again=times - 1)
            self._note(call, _Offered())
            return dataclasses.replace(
                turn,
                replies=(BotReply(text=self.knowledge.answer_give_up),),
                fallbacks=(*turn.fallbacks, "answer_given_up"),
            )
        log.info("answer_question_again", intent=turn.intent)
        question = tuple(question_said_again(reply) for reply in waiting.replies[-1:])
        return dataclasses.replace(
            turn,
            replies=(BotReply(text=self.knowledge.answer_reask), *question),
            collect_dtmf_digits=waiting.collect_dtmf_digits,
            expect=waiting.expect,
            known=waiting.known,
            fallbacks=(*turn.fallbacks, "answer_question_again"),
        )

    def _composed(self, call: CallInfo, text: str) -> ComposedReply:
        """The composer's answer to ``text``, noting an honest offer it ends in (a yes to
        it then transfers)."""
        watched = _OfferWatch(self.composer, lambda: self._note(call, _Offered()))
        return ComposedReply(text, watched)

    async def prepare(self, call: CallInfo, text: str) -> None:
        """The knowledge hit and the dialogue's understanding of ``text`` (both without side
        effects), kept for ``respond`` if the turn ends with it: the embeddings (~5-25 ms)
        and the parse are then done while the caller's silence is still being waited out.
        At most ``_PREPARED_PER_CALL`` texts a call are kept."""
        kb = self.composer.kb
        key = (call.call_id, text)
        if kb is None or not kb.hybrid or not self.knowledge.direct or key in self._prepared:
            return
        if not text.strip():
            return
        mine = [k for k in self._prepared if k[0] == call.call_id]
        for old in mine[: max(0, len(mine) - _PREPARED_PER_CALL + 1)]:
            self._prepared.pop(old).cancel()
        future: asyncio.Future[_Found] = asyncio.get_running_loop().create_future()
        self._prepared[key] = future
        try:
            found = await self._find(call, kb, text)
        except BaseException:
            future.cancel()  # respond works it out itself
            raise
        if not future.done():
            future.set_result(found)

    async def _prepared_or_found(self, call: CallInfo, kb: KnowledgeBase, text: str) -> _Found:
        """What ``prepare`` found for ``text`` (waiting for it if it is under way), else
        found now."""
        prepared = self._prepared.pop((call.call_id, text), None)
        if prepared is not None:
            await asyncio.wait({prepared})
            if not prepared.cancelled():
                log.debug("dialogue_prepared_used")
                return prepared.result()
        return await self._find(call, kb, text)

    async def _find(self, call: CallInfo, kb: KnowledgeBase, text: str) -> _Found:
        """The knowledge hit for ``text`` and the dialogue's understanding of it: embedding
        the question (~10 ms) runs beside the dialogue's parse. The dialogue's own error
        (DialogueUnavailable, ...) is raised as itself, as without the embedding, not
        wrapped in an ExceptionGroup."""
        try:
            async with asyncio.TaskGroup() as group:
                finding = group.create_task(
                    asyncio.to_thread(knowledge_hit, kb, text, self.knowledge)
                )
                hearing = group.create_task(self.inner.understand(call, text))
        except ExceptionGroup as errors:
            raise errors.exceptions[0] from None
        return finding.result(), hearing.result()

    def _note(self, call: CallInfo, asked: _Asked) -> None:
        self._asked[call.call_id] = asked

    async def _settle(self, call: CallInfo, text: str, asked: _Asked) -> DialogueTurn | None:
        """The caller's answer to the bot's own question (None: not a yes or a no)."""
        heard = await self.inner.understand(call, text)
        answer = yes_or_no(heard.intent, text, self.knowledge)
        kinds = {_Offered: "offer", _Confirming: "confirm", _ConfirmingIntent: "confirm_intent"}
        log.info(
            "knowledge_question_answered",
            asked=kinds[type(asked)],
            answer={True: "yes", False: "no", None: "other"}[answer],
            intent=heard.intent,
        )
        if answer is None:
            return None
        if isinstance(asked, _Offered):
            if not answer:
                return None  # the dialogue's own "no" ("Okay. What can I help you with?")
            return DialogueTurn(
                replies=(BotReply(text=self.knowledge.offer_accepted_reply),),
                end="transfer",
                transfer_target=self.knowledge.offer_target,
                intent=heard.intent,
                confidence=heard.confidence,
                source="knowledge",
            )
        if answer:
            if isinstance(asked, _Confirming):
                return self._read_out(asked.hit, heard, asked.question, confirmed=True)
            return self._from_dialogue(call, await self.inner.respond(call, asked.request))
        # No to a question back (a passage's or an intent's): the honest offer.
        self._note(call, _Offered())
        return DialogueTurn(
            replies=(BotReply(text=self.composer.config.fallback_reply),),
            intent=heard.intent,
            confidence=heard.confidence,
            source="knowledge",
        )

    def _ask_back(
        self, call: CallInfo, hit: KnowledgeHit, heard: Understanding, question: str
    ) -> DialogueTurn:
        """ "Just to check, are you asking: <heading>?" for a likely, not strong, hit."""
        log.info(
            "knowledge_confirm",
            passage=hit.passage.id,
            score=round(hit.score, 3),
            runner_up=round(hit.runner_up, 3),
            instead_of=heard.intent,
            intent_confidence=heard.confidence,
        )
        self._note(call, _Confirming(hit, question))
        return DialogueTurn(
            replies=(BotReply(text=confirm_question(hit.passage, self.knowledge)),),
            intent=heard.intent,
            confidence=heard.confidence,
            source="knowledge_confirm",
            sources=(hit.passage.id,),
        )

    def _ask_intent_back(
        self, call: CallInfo, kb: KnowledgeBase, heard: Understanding
    ) -> DialogueTurn | None:
        """ "Just to check, do you want to <task>?" for an intent the dialogue was sure of
        in words far from its examples (None: no wording or no example to ask it with)."""
        intent = heard.intent or ""
        task = intent_task(intent, self.knowledge)
        request = kb.intent_request(intent)
        if task is None or request is None:
            return None
        log.info("intent_confirm", intent=intent, intent_confidence=heard.confidence)
        self._note(call, _ConfirmingIntent(intent, request))
        return DialogueTurn(
            replies=(BotReply(text=confirm_intent_question(task, self.knowledge)),),
            intent=intent,
            confidence=heard.confidence,
            source="intent_confirm",
        )

    def _read_out(
        self,
        hit: KnowledgeHit,
        heard: Understanding,
        question: str = "",
        *,
        confirmed: bool = False,
    ) -> DialogueTurn:
        """The passage's own sentences, instead of the intent ``heard``: those that answer
        ``question``. ``confirmed``: the caller said yes to the passage's heading, so all of
        them, but for a bare "Yes." / "No." opening that ``question`` (what the caller first
        asked) would hear as the opposite of the passage (``routing.answering``): "can my
        direct debit come out on the thirtieth", yes to "Can I change my direct debit
        date?", hears the 1st to the 28th without "Yes." first."""
        tied = (
            not confirmed
            and bool(question)
            and is_tied(hit, self.knowledge)
            and not is_strong(hit, self.knowledge)
        )
        sentences = (
            tied_answer(hit)
            if tied
            else spoken_answer(
                hit.passage,
                self.knowledge.max_words,
                question,
                () if confirmed else hit.sentence_similarities,
                self.knowledge.answer_sentence_lead,
            )
        )
        log.info(
            "knowledge_answer",
            passage=hit.passage.id,
            score=round(hit.score, 3),
            coverage=round(hit.coverage, 2),
            runner_up=round(hit.runner_up, 3),
            similarity=round(hit.similarity, 3),
            instead_of=heard.intent,
            intent_confidence=heard.confidence,
            # trimmed to the question: fewer sentences than read in full
            sentences=len(sentences),
            tied_with=hit.second.id if tied and hit.second is not None else None,
            trimmed=sentences != spoken_answer(hit.passage, self.knowledge.max_words),
        )
        return DialogueTurn(
            replies=tuple(BotReply(text=s) for s in sentences),
            intent=heard.intent,
            confidence=heard.confidence,
            source="knowledge",
            sources=(hit.passage.id, hit.second.id) if tied and hit.second else (hit.passage.id,),
        )

    async def dtmf(self, call: CallInfo, digits: str) -> DialogueTurn:
        self._asked.pop(call.call_id, None)
        return self._from_dialogue(call, await self.inner.dtmf(call, digits))

    async def retract(self, call: CallInfo, text: str) -> None:
        """The unfinished turn's question asked back or transfer offered is forgotten too,
        and what the dialogue waited for before it waits again."""
        self._asked.pop(call.call_id, None)
        before = self._waiting_before.pop(call.call_id, None)
        if before is not None:
            self._waiting[call.call_id] = before
        else:
            self._waiting.pop(call.call_id, None)
        await self.inner.retract(call, text)

    async def end(self, call: CallInfo) -> None:
        self._asked.pop(call.call_id, None)
        self._waiting.pop(call.call_id, None)
        self._asked_again.pop(call.call_id, None)
        self._questions_again.pop(call.call_id, None)
        self._waiting_before.pop(call.call_id, None)
        for key in [k for k in self._prepared if k[0] == call.call_id]:
            self._prepared.pop(key).cancel()
        await self.inner.end(call)
