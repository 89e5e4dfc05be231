"""The questions the bot asks itself, answered on the caller's next turn
(voicebot_pbx.answers.fallbacks.ComposingDialogue): "Just to check, are you asking: ...?"
for a likely knowledge hit, and the honest offer ("shall I put you through to an agent?"),
which a yes now takes up with a transfer."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import re
from collections.abc import AsyncGenerator

import numpy as np
import numpy.typing as npt

from tests.routes import routed
from tests.test_routing import UnsureNlu
from voicebot_pbx.answers.dialogue import (
    WORDS_NOT_TAKEN,
    BotReply,
    CallInfo,
    DialogueTurn,
    Rejected,
    Sentence,
    Understanding,
)
from voicebot_pbx.answers.fallbacks import ComposingDialogue, question_said_again
from voicebot_pbx.answers.knowledge import KnowledgeBase, Passage
from voicebot_pbx.answers.routing import (
    KnowledgeHit,
    confirm_question,
    confirm_questions,
    knowledge_hit,
    spoken_answer,
    yes_or_no,
)
from voicebot_pbx.config import KnowledgeConfig, LlmConfig
from voicebot_pbx.testing import ScriptedLlm, run_virtual

CONFIG = KnowledgeConfig()
PRINT = Passage(
    "access#1", "Access", "Can I get my bill in large print?", "Yes. We send bills in large print."
)
CUTS = Passage(
    "cuts#1", "Cuts", "How do I report a power cut?", "Call 105 from any phone, free, day or night."
)


class WordsEmbedder:
    """A bag of words hashed into 64 dimensions: similarity is shared words, so a test can
    put a question in the likely band (not strong) on purpose."""

    def embed(self, text: str) -> npt.NDArray[np.float32]:
        vector = np.zeros(64, dtype=np.float32)
        for word in re.findall(r"[a-z]+", text.lower()):
            vector[int(hashlib.sha256(word.encode()).hexdigest(), 16) % 64] += 1.0
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm else vector


def hybrid_kb() -> KnowledgeBase:
    return KnowledgeBase([PRINT, CUTS], embedder=WordsEmbedder(), bm25_weight=0.0)


LIKELY = "is there a number for a power cut at night"  # cuts#1, likely, not strong
STRONG = "large print bill"  # access#1, strong
NOTHING = "do you sell heat pumps"  # no likely hit


def test_the_test_questions_fall_where_they_are_meant_to() -> None:
    kb = hybrid_kb()
    likely, strong, nothing = (knowledge_hit(kb, q) for q in (LIKELY, STRONG, NOTHING))
    assert likely is not None and likely.passage is CUTS
    assert CONFIG.confirm_min_score <= likely.score < CONFIG.hybrid_direct_min_score
    assert likely.lead >= CONFIG.confirm_min_lead
    assert strong is not None and strong.score >= CONFIG.hybrid_direct_min_score
    assert nothing is not None and nothing.score < CONFIG.confirm_min_score


def _hybrid(score: float, runner_up: float) -> KnowledgeHit:
    return KnowledgeHit(CUTS, score, 1.0, runner_up, hybrid=True, similarity=score)


def test_a_likely_hit_that_would_go_to_the_llm_is_asked_back_instead() -> None:
    likely = _hybrid(0.42, 0.25)
    assert routed(None, None, likely, CONFIG, fallback=True) == "confirm"
    assert routed("opening_hours", 0.55, likely, CONFIG) == "confirm"  # unsure info
    assert routed("opening_hours", 0.95, likely, CONFIG) == "intent"  # sure: its reply
    assert routed("check_balance", 0.55, likely, CONFIG) == "intent"  # an action
    assert routed(None, None, _hybrid(0.42, 0.38), CONFIG, fallback=True) == "compose"  # no lead
    assert routed(None, None, _hybrid(0.30, 0.0), CONFIG, fallback=True) == "compose"  # too weak
    assert routed(None, None, _hybrid(0.8, 0.3), CONFIG, fallback=True) == "passage"  # strong
    assert routed(None, None, likely, KnowledgeConfig(confirm=False), fallback=True) == "compose"
    assert routed(None, None, likely, KnowledgeConfig(direct=False), fallback=True) == "compose"
    bm25 = KnowledgeHit(CUTS, 5.0, 0.2, 1.0, hybrid=False)  # BM25 scores have no scale
    assert routed(None, None, bm25, CONFIG, fallback=True) == "compose"


def test_yes_and_no_come_from_the_intent_or_else_the_words() -> None:
    assert yes_or_no("affirm", "whatever they said", CONFIG) is True
    assert yes_or_no("deny", "yes", CONFIG) is False
    for text in ("yes please", "Yeah.", "that's right", "correct", "sure, go on"):
        assert yes_or_no(None, text, CONFIG) is True, text
    for text in ("no thanks", "No.", "nope", "that's not it", "no, something else"):
        assert yes_or_no(None, text, CONFIG) is False, text
    for text in ("", "what time do you open", "yes I'd like to ask about my bill please now"):
        assert yes_or_no(None, text, CONFIG) is None, text


def test_every_question_back_is_listed_for_the_cache() -> None:
    kb = hybrid_kb()
    questions = confirm_questions(kb, CONFIG)
    assert questions[:2] == [
        "Just to check, are you asking: Can I get my bill in large print?",
        "Just to check, are you asking: How do I report a power cut?",
    ]
    assert questions[2:] == [
        f"Just to check, do you want to {pair.split('=', 1)[1]}?" for pair in CONFIG.confirm_intents
    ]
    assert "Just to check, do you want to report a power cut?" in questions
    assert confirm_questions(kb, KnowledgeConfig(confirm=False, confirm_intents=())) == []
    mine = KnowledgeConfig(confirm_question="Is it this: {question}")
    assert confirm_question(CUTS, mine) == "Is it this: How do I report a power cut?"


class YesNoNlu(UnsureNlu):
    """A dialogue like Rasa for these tests (``UnsureNlu``'s plumbing): yes/no words are
    affirm/deny, "agent" transfers, anything else is not understood (nlu_fallback)."""

    def _turn(self, text: str) -> DialogueTurn:
        words = text.lower().split()
        if words[:1] == ["yes"]:
            return DialogueTurn(replies=(BotReply(text="Okay."),), intent="affirm")
        if words[:1] == ["no"]:
            return DialogueTurn(replies=(BotReply(text="What can I help with?"),), intent="deny")
        if "agent" in words:
            return DialogueTurn(
                replies=(BotReply(text="Putting you through."),), end="transfer", intent="x"
            )
        return DialogueTurn(
            replies=(BotReply(text="Sorry?"),), intent="nlu_fallback", needs_fallback=True
        )


async def _hear(turn: DialogueTurn) -> list[str]:
    """What the caller hears of ``turn``, consuming a composed answer as the session does."""
    if turn.composed is None:
        return [r.text for r in turn.replies]
    heard: list[str] = []
    async with contextlib.aclosing(turn.composed.composer.answer(turn.composed.question)) as s:
        async for item in s:
            heard.append(item.reply if isinstance(item, Rejected) else item.text)
    return heard


def _brain(script: list[tuple[float, str | tuple[str, str]]] | None = None) -> ComposingDialogue:
    llm = ScriptedLlm(script if script is not None else [(0.0, ("reject", "no_answer"))])
    llm.kb = hybrid_kb()
    return ComposingDialogue(YesNoNlu(), llm, CONFIG)


def test_a_yes_to_the_question_back_reads_the_passage_out() -> None:
    brain = _brain()
    call = CallInfo(call_id="c")

    async def talk() -> tuple[DialogueTurn, DialogueTurn]:
        return await brain.respond(call, LIKELY), await brain.respond(call, "yes please")

    asked, answered = run_virtual(talk())
    assert asked.source == "knowledge_confirm" and asked.sources == ("cuts#1",)
    assert [r.text for r in asked.replies] == [confirm_question(CUTS, CONFIG)]
    assert asked.composed is None and asked.end is None
    assert answered.source == "knowledge" and answered.sources == ("cuts#1",)
    assert [r.text for r in answered.replies] == spoken_answer(CUTS, CONFIG.max_words)
    assert isinstance(brain.inner, YesNoNlu) and brain.inner.acted == []  # no dialogue state


def test_a_no_gets_the_honest_offer_and_a_yes_to_that_transfers() -> None:
    brain = _brain()
    call = CallInfo(call_id="c")

    async def talk() -> list[DialogueTurn]:
        return [
            await brain.respond(call, LIKELY),
            await brain.respond(call, "no"),
            await brain.respond(call, "yes"),
        ]

    asked, offer, taken = run_virtual(talk())
    assert asked.source == "knowledge_confirm"
    assert [r.text for r in offer.replies] == [LlmConfig().fallback_reply]
    assert taken.end == "transfer" and taken.transfer_target == CONFIG.offer_target
    assert [r.text for r in taken.replies] == [CONFIG.offer_accepted_reply]


def test_something_else_after_a_question_back_is_a_new_turn() -> None:
    brain = _brain()
    call = CallInfo(call_id="c")

    async def talk() -> list[DialogueTurn]:
        return [
            await brain.respond(call, LIKELY),
            await brain.respond(call, STRONG),
            await brain.respond(call, "yes"),  # nothing asked any more
        ]

    _, other, later = run_virtual(talk())
    assert other.source == "knowledge" and other.sources == ("access#1",)
    assert later.replies[0].text == "Okay." and later.end is None  # the dialogue's own yes


def test_the_composers_honest_offer_is_taken_up_by_a_yes() -> None:
    brain = _brain()
    call = CallInfo(call_id="c")

    async def talk() -> tuple[list[str], DialogueTurn]:
        heard = await _hear(await brain.respond(call, NOTHING))
        return heard, await brain.respond(call, "yes")

    heard, taken = run_virtual(talk())
    assert heard == [LlmConfig().fallback_reply]
    assert taken.end == "transfer" and taken.transfer_target == "agents"


def test_a_no_to_the_offer_and_an_answer_that_offered_nothing_stay_with_the_dialogue() -> None:
    call = CallInfo(call_id="c")
    declined = _brain()
    answered = _brain([(0.0, "We do not sell heat pumps.")])

    async def talk() -> tuple[DialogueTurn, DialogueTurn]:
        await _hear(await declined.respond(call, NOTHING))
        no = await declined.respond(call, "no")
        await _hear(await answered.respond(call, NOTHING))
        return no, await answered.respond(call, "yes")

    no, yes = run_virtual(talk())
    assert no.replies[0].text == "What can I help with?" and no.end is None
    assert yes.replies[0].text == "Okay." and yes.end is None


class RefusingComposer:
    """Refuses as the LLM answerer does out of scope, with ``config``'s refusal."""

    def __init__(self, kb: KnowledgeBase, config: LlmConfig) -> None:
        self.config = config
        self._kb = kb

    @property
    def kb(self) -> KnowledgeBase | None:
        return self._kb

    async def answer(self, question: str) -> AsyncGenerator[Sentence | Rejected, None]:
        yield Rejected("out_of_scope", self.config.refusal_reply)


def test_the_refusal_offers_a_transfer_too_unless_an_admin_made_it_a_statement() -> None:
    shipped = LlmConfig()
    statement = LlmConfig(refusal_reply="Sorry, I can only help with your energy account.")
    assert shipped.refusal_reply.endswith("Shall I put you through to an agent?")
    call = CallInfo(call_id="c")

    async def yes_after_refusal(config: LlmConfig) -> DialogueTurn:
        brain = ComposingDialogue(YesNoNlu(), RefusingComposer(hybrid_kb(), config), CONFIG)
        await _hear(await brain.respond(call, NOTHING))
        return await brain.respond(call, "yes")

    assert run_virtual(yes_after_refusal(shipped)).end == "transfer"
    assert run_virtual(yes_after_refusal(statement)).end is None


def test_a_model_too_slow_to_answer_leaves_the_offer_the_session_says() -> None:
    """The session gives up on a late first sentence, cancels the answer and says the
    fallback reply (the offer) itself: a yes to it transfers too."""
    brain = _brain([(30.0, "Too late.")])
    call = CallInfo(call_id="c")

    async def talk() -> DialogueTurn:
        turn = await brain.respond(call, NOTHING)
        assert turn.composed is not None
        stream = turn.composed.composer.answer(turn.composed.question)
        pending = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(1.0)
        pending.cancel()
        await asyncio.wait({pending})
        return await brain.respond(call, "yes")

    assert run_virtual(talk()).end == "transfer"


def test_the_end_of_the_call_or_a_key_forgets_the_question() -> None:
    brain = _brain()
    first, second = CallInfo(call_id="a"), CallInfo(call_id="b")

    async def talk() -> tuple[DialogueTurn, DialogueTurn]:
        await brain.respond(first, LIKELY)
        await brain.end(first)
        await brain.respond(second, LIKELY)
        await brain.dtmf(second, "1")
        return await brain.respond(first, "yes"), await brain.respond(second, "yes")

    after_end, after_key = run_virtual(talk())
    assert after_end.source != "knowledge" and after_key.source != "knowledge"


GARBLED = "the lecture city went off in my house"  # a power cut as a phone line garbles it


class SureNlu(YesNoNlu):
    """``YesNoNlu``, sure the garbled words are report_outage (0.95), as Rasa was; its
    first training example starts the outage form."""

    def _turn(self, text: str) -> DialogueTurn:
        if text == GARBLED:
            return DialogueTurn(
                replies=(BotReply(text="Outage?"),), intent="report_outage", confidence=0.95
            )
        if text == "my power is out":
            return DialogueTurn(
                replies=(BotReply(text="Sorry to hear that. What's your postcode?"),),
                intent="report_outage",
                confidence=1.0,
            )
        return super()._turn(text)


def form_took(reply: str) -> DialogueTurn:
    """A form's ``reply`` to words it took though the classifier did not place them, as
    ``RasaDialogue`` makes it (nlu_fallback, but taken: not a fallback)."""
    return DialogueTurn(
        replies=(BotReply(text=reply),), intent="nlu_fallback", confidence=0.5, taken=True
    )


class OutageFormNlu(SureNlu):
    """``SureNlu`` whose outage form asks for the postcode without saying what kind of
    answer it expects, and takes a spelled postcode its classifier does not place (Rasa:
    nlu_fallback to the parse, the form's slot filled when it acts)."""

    async def understand(self, call: CallInfo, text: str) -> Understanding:
        if text == "n w 9 4 r q":
            return Understanding("nlu_fallback", 0.5, True)
        return await super().understand(call, text)

    def _turn(self, text: str) -> DialogueTurn:
        if text == "n w 9 4 r q":
            return form_took("Thanks. I've logged your power cut.")
        return super()._turn(text)


def test_an_answer_a_form_took_is_its_reply_though_the_words_were_not_placed() -> None:
    """An answer a form took to a question that says no kind of answer (so nothing is
    awaited; the outage form's postcode question did before it said ``expect``) though the
    classifier did not place the words: the form's reply is spoken,
    not the LLM's (the routing sent the unplaced words to compose); the same words with no
    form to take them still go to the LLM."""
    llm = ScriptedLlm([(0.0, ("reject", "no_answer"))])
    llm.kb = hybrid_kb()
    inner = OutageFormNlu()
    brain = ComposingDialogue(inner, llm, CONFIG)
    call = CallInfo(call_id="c")

    async def talk() -> DialogueTurn:
        await brain.respond(call, "my power is out")
        return await brain.respond(call, "n w 9 4 r q")

    turn = run_virtual(talk())
    assert turn.composed is None and not turn.needs_fallback
    assert [r.text for r in turn.replies] == ["Thanks. I've logged your power cut."]
    assert inner.acted == ["my power is out", "n w 9 4 r q"]
    untaken = ComposingDialogue(SureNlu(), llm, CONFIG)
    assert run_virtual(untaken.respond(CallInfo(call_id="d"), "n w 9 4 r q")).composed is not None


def _sure_brain() -> tuple[ComposingDialogue, SureNlu]:
    llm = ScriptedLlm([(0.0, ("reject", "no_answer"))])
    kb = hybrid_kb()
    kb.add_intent_examples({"report_outage": ["my power is out", "i have no electricity"]})
    llm.kb = kb
    inner = SureNlu()
    return ComposingDialogue(inner, llm, CONFIG), inner


def test_words_far_from_a_sure_intent_are_asked_back_and_a_yes_starts_it() -> None:
    """Rasa sure of report_outage for words a phone line garbled, far from its examples
    and from every passage: "Just to check, do you want to report a power cut?"; a yes gives
    the dialogue the intent's first example, and its flow starts; the garbled words never
    reached it."""
    brain, inner = _sure_brain()
    kb = brain.composer.kb
    assert kb is not None
    closeness = kb.intent_similarity("report_outage", GARBLED)
    assert closeness is not None and closeness < CONFIG.intent_min_similarity
    hit = knowledge_hit(kb, GARBLED)
    assert hit is None or hit.score < CONFIG.confirm_min_score
    call = CallInfo(call_id="c")

    async def talk() -> tuple[DialogueTurn, DialogueTurn]:
        return await brain.respond(call, GARBLED), await brain.respond(call, "yes")

    asked, started = run_virtual(talk())
    assert asked.source == "intent_confirm" and asked.intent == "report_outage"
    assert [r.text for r in asked.replies] == ["Just to check, do you want to report a power cut?"]
    assert [r.text for r in started.replies] == ["Sorry to hear that. What's your postcode?"]
    assert inner.acted == ["my power is out"]


def test_a_no_to_the_intent_asked_back_gets_the_honest_offer() -> None:
    brain, inner = _sure_brain()
    call = CallInfo(call_id="c")

    async def talk() -> list[DialogueTurn]:
        return [
            await brain.respond(call, GARBLED),
            await brain.respond(call, "no"),
            await brain.respond(call, "yes"),
        ]

    asked, offer, taken = run_virtual(talk())
    assert asked.source == "intent_confirm"
    assert [r.text for r in offer.replies] == [LlmConfig().fallback_reply]
    assert taken.end == "transfer" and inner.acted == []
    # Not asked back without a wording for the intent: the LLM / the honest offer at once.
    quiet = ComposingDialogue(
        SureNlu(), brain.composer, dataclasses.replace(CONFIG, confirm_intents=())
    )
    turn = run_virtual(quiet.respond(CallInfo(call_id="d"), GARBLED))
    assert turn.source != "intent_confirm" and turn.composed is not None


class FormNlu(SureNlu):
    """A balance form: the request asks for the account number (keys or digits); while it
    waits, digits are the answer, and words it cannot read get its own "say it another
    way" with the question again (Rasa's nlu_fallback inside a form); an answer of another
    kind (a postcode) gets "say it another way" alone (Rasa's core fallback after its form
    rejected the words: the words taken back, the form still waiting)."""

    async def retract(self, call: CallInfo, text: str) -> None:
        self.acted.remove(text)

    def _turn(self, text: str) -> DialogueTurn:
        if text == "what's my balance":
            return DialogueTurn(
                replies=(BotReply(text="Please say your account number."),),
                collect_dtmf_digits=8,
                expect=("digits",),
                intent="check_balance",
                confidence=1.0,
            )
        if text == "menu":
            return DialogueTurn(
                replies=(BotReply(text="Press 1 for your balance."),), collect_dtmf_digits=1
            )
        if text.replace(" ", "").isdigit():
            return DialogueTurn(replies=(BotReply(text="Thanks."),), intent="inform")
        if text in ("bellow bellow", "goodbye"):  # the first a date of birth misheard
            sure = text == "goodbye"
            return DialogueTurn(
                replies=(BotReply(text="Goodbye."),),
                end="hangup",
                intent="goodbye",
                confidence=0.98 if sure else 0.6,
            )
        if text == "oh one one two":  # digits a classifier put on a task, surely
            return DialogueTurn(
                replies=(BotReply(text="Thanks."),), intent="report_outage", confidence=0.95
            )
        if text == "n w 1 4 e n":
            return DialogueTurn(
                replies=(BotReply(text="Sorry, could you say that another way?"),),
                intent="inform",
                confidence=0.95,
                needs_fallback=True,
                fallbacks=(WORDS_NOT_TAKEN,),
            )
        if text == "n w 9 4 r q":  # taken by the form, though not placed by the classifier
            return form_took("Your balance is 12 pounds.")
        if text == "mumble":
            return DialogueTurn(
                replies=(BotReply(text="Say it another way? Please say your account number."),),
                collect_dtmf_digits=8,
                expect=("digits",),
                intent="nlu_fallback",
                needs_fallback=True,
            )
        return super()._turn(text)


def _form_brain() -> tuple[ComposingDialogue, FormNlu]:
    brain, _ = _sure_brain()
    inner = FormNlu()
    return ComposingDialogue(inner, brain.composer, CONFIG), inner


def test_while_an_answer_is_awaited_words_for_another_task_ask_the_question_again() -> None:
    """Garbled words of an account number that the dialogue would take for another task
    (an intent far from its examples): not asked back as that task, not the LLM, and the
    dialogue never sees them; the question is asked again with what it expects, and the
    number said next is its answer."""
    brain, inner = _form_brain()
    call = CallInfo(call_id="c")

    async def talk() -> list[DialogueTurn]:
        return [
            await brain.respond(call, "what's my balance"),
            await brain.respond(call, GARBLED),
            await brain.respond(call, "1 2 3 4 5 6 7 8"),
        ]

    asked, again, answered = run_virtual(talk())
    assert asked.collect_dtmf_digits == 8
    assert [r.text for r in again.replies] == [CONFIG.answer_reprompt]
    assert again.source == "answer_reprompt" and again.needs_fallback and again.composed is None
    assert (again.collect_dtmf_digits, again.expect) == (8, ("digits",))
    assert [r.text for r in answered.replies] == ["Thanks."]
    assert inner.acted == ["what's my balance", "1 2 3 4 5 6 7 8"]


def test_while_an_answer_is_awaited_words_made_of_the_answers_words_reach_the_dialogue() -> None:
    """Words made only of what the awaited answer is made of (digit words for an account
    number), which the classifier put on another task far from its examples, are asked
    again once; said again, the dialogue's form reads them as the answer (a spelled
    postcode heard as odd letters is checked, and the form then asks for the other answer)
    rather than "say it again" for as long as the line garbles them."""
    brain, inner = _form_brain()
    call = CallInfo(call_id="c")
    kb = brain.composer.kb
    assert kb is not None
    closeness = kb.intent_similarity("report_outage", "oh one one two")
    assert closeness is not None and closeness < CONFIG.intent_min_similarity  # the premise

    async def talk() -> tuple[DialogueTurn, DialogueTurn]:
        await brain.respond(call, "what's my balance")
        return await brain.respond(call, "oh one one two"), await brain.respond(
            call, "oh one one two"
        )

    again, turn = run_virtual(talk())
    assert again.source == "answer_reprompt" and again.expect == ("digits",)
    assert [r.text for r in turn.replies] == ["Thanks."]
    assert turn.source != "answer_reprompt" and turn.composed is None
    assert inner.acted == ["what's my balance", "oh one one two"]
    # With no answer awaited, the same words are asked back as the task, as before.
    fresh = CallInfo(call_id="d")
    assert run_virtual(brain.respond(fresh, "oh one one two")).source == "intent_confirm"


def test_while_an_answer_is_awaited_the_dialogues_own_reply_is_spoken_not_the_llms() -> None:
    """Words the dialogue's form could not read, which its classifier put on a fallback
    intent, get its question again (``answer_reask`` and the question, as the form asks
    it: not its own "say it another way" before it, nor the refusal Rasa says for
    ``out_of_scope``), not the LLM's honest offer (the session would have spoken that
    instead of the form's)."""
    brain, inner = _form_brain()
    call = CallInfo(call_id="c")

    async def talk() -> list[DialogueTurn]:
        await brain.respond(call, "what's my balance")
        return [await brain.respond(call, "mumble"), await brain.respond(call, "mumble")]

    first, second = run_virtual(talk())
    for turn in (first, second):  # still waiting after the form asked again
        assert turn.composed is None and turn.needs_fallback
        assert [r.text for r in turn.replies] == [
            CONFIG.answer_reask,
            "Please say your account number.",
        ]
        assert (turn.collect_dtmf_digits, turn.expect) == (8, ("digits",))
        assert "answer_question_again" in turn.fallbacks
    assert inner.acted == ["what's my balance", "mumble", "mumble"]
    # With no question open, the same words go to the LLM, as before.
    fresh = CallInfo(call_id="d")
    assert run_virtual(brain.respond(fresh, "mumble")).composed is not None


def test_an_answer_the_form_cannot_take_gets_its_question_again_with_what_it_expects() -> None:
    """A postcode said when the form asked for the account number: the dialogue's own
    fallback says only "say it another way" and expects nothing, so the caller would not
    hear what is asked, the keypad entry would close and the recogniser would no longer be
    held to digits. The caller hears answer_reask and the form's question again, with what
    it expects; it counts as not understood; the number said next is the answer."""
    brain, inner = _form_brain()
    call = CallInfo(call_id="c")

    async def talk() -> list[DialogueTurn]:
        return [
            await brain.respond(call, "what's my balance"),
            await brain.respond(call, "n w 1 4 e n"),
            await brain.respond(call, "1 2 3 4 5 6 7 8"),
        ]

    asked, again, answered = run_virtual(talk())
    assert [r.text for r in again.replies] == [
        CONFIG.answer_reask,
        "Please say your account number.",
    ]
    assert (again.collect_dtmf_digits, again.expect) == (8, ("digits",))
    assert again.needs_fallback and again.composed is None and again.end is None
    assert "answer_question_again" in again.fallbacks
    assert [r.text for r in answered.replies] == ["Thanks."]
    assert inner.acted == ["what's my balance", "n w 1 4 e n", "1 2 3 4 5 6 7 8"]
    # With no question open, the dialogue's fallback goes to the LLM, as before.
    fresh = CallInfo(call_id="d")
    assert run_virtual(brain.respond(fresh, "n w 1 4 e n")).composed is not None
    # An answer the form took is its own reply, whatever the classifier made of the words.
    took = CallInfo(call_id="e")

    async def answered_at_once() -> DialogueTurn:
        await brain.respond(took, "what's my balance")
        return await brain.respond(took, "n w 9 4 r q")

    assert [r.text for r in run_virtual(answered_at_once()).replies] == [
        "Your balance is 12 pounds."
    ]


def test_the_question_is_asked_again_twice_then_a_transfer_is_offered() -> None:
    """A line that garbles every try (a spelled postcode no form takes): the question
    again question_again_max times in a row, then answer_give_up, a transfer offer a yes
    takes up; an answer said instead still reaches the form, and a new question starts the
    count afresh."""
    brain, inner = _form_brain()
    call = CallInfo(call_id="c")

    async def talk(*said: str) -> list[DialogueTurn]:
        return [await brain.respond(call, text) for text in said]

    asked, first, second, offer, taken = run_virtual(
        talk("what's my balance", *["n w 1 4 e n"] * 3, "yes")
    )
    for again in (first, second):
        assert [r.text for r in again.replies] == [
            CONFIG.answer_reask,
            "Please say your account number.",
        ]
    assert [r.text for r in offer.replies] == [CONFIG.answer_give_up]
    assert "answer_given_up" in offer.fallbacks and offer.expect == () and offer.end is None
    assert (taken.end, taken.transfer_target) == ("transfer", CONFIG.offer_target)
    # An answer said instead of a yes or a no is the form's; the count starts afresh.
    call = CallInfo(call_id="d")
    again = ("what's my balance", "n w 1 4 e n")
    turns = run_virtual(talk(*again, "n w 1 4 e n", "n w 1 4 e n", "1 2 3 4 5 6 7 8", *again))
    assert [r.text for r in turns[-3].replies] == ["Thanks."]
    assert turns[-1].replies[0].text == CONFIG.answer_reask
    # At 0 the offer comes at the first such words.
    at_once = ComposingDialogue(
        FormNlu(), brain.composer, dataclasses.replace(CONFIG, question_again_max=0)
    )
    call = CallInfo(call_id="e")

    async def once() -> DialogueTurn:
        await at_once.respond(call, "what's my balance")
        return await at_once.respond(call, "n w 1 4 e n")

    assert [r.text for r in run_virtual(once()).replies] == [CONFIG.answer_give_up]


class ReadBackForm(FormNlu):
    """The balance form whose identity question begins with thanks and the number read
    back, as the action server's does after a spoken account number."""

    def _turn(self, text: str) -> DialogueTurn:
        if text == "my account is 1 2 3 4 5 6 7 8":
            return DialogueTurn(
                replies=(
                    BotReply(text="Thanks. That's account number 1 2 3 4, 5 6 7 8. Postcode?"),
                ),
                expect=("postcode",),
                intent="inform",
                confidence=0.9,
            )
        return super()._turn(text)


def test_the_question_asked_again_does_not_thank_the_caller_again() -> None:
    """Words the identity question's form could not take: the caller hears "Sorry, I
    didn't catch that." and the question again with the number read back, not a "Thanks."
    for the words that were not taken."""
    brain, _ = _sure_brain()
    inner = ReadBackForm()
    dialogue = ComposingDialogue(inner, brain.composer, CONFIG)
    call = CallInfo(call_id="c")

    async def talk() -> DialogueTurn:
        await dialogue.respond(call, "my account is 1 2 3 4 5 6 7 8")
        return await dialogue.respond(call, "n w 1 4 e n")

    again = run_virtual(talk())
    assert "answer_question_again" in again.fallbacks
    assert [r.text for r in again.replies] == [
        CONFIG.answer_reask,
        "That's account number 1 2 3 4, 5 6 7 8. Postcode?",
    ]
    assert again.expect == ("postcode",)


def test_question_said_again_drops_only_a_thank_you_sentence_before_it() -> None:
    def said(text: str) -> str:
        return question_said_again(BotReply(text=text)).text

    assert said("Thank you, what's the postcode?") == "What's the postcode?"
    assert said("great! Your date of birth?") == "Your date of birth?"
    assert said("Thank you for calling. What's the postcode?") == (
        "Thank you for calling. What's the postcode?"
    )
    assert said("Thanks.") == "Thanks."  # nothing else to say
    assert said("Please say your account number.") == "Please say your account number."
    clip = BotReply(text="Thanks. Your postcode?", clip="beep")
    assert question_said_again(clip) == BotReply(text="Your postcode?", clip="beep")


def test_while_an_answer_is_awaited_an_unsure_goodbye_asks_the_question_again() -> None:
    """An answer misheard as a goodbye the dialogue is not sure of (end_min_confidence)
    does not hang up on a caller in the middle of their task: the question is asked again
    and the dialogue never sees the words. A clear goodbye still ends the call, and so does
    an unsure one when no answer is awaited (or with the rule off)."""
    brain, inner = _form_brain()
    call = CallInfo(call_id="c")

    async def talk(last: str, target: ComposingDialogue = brain) -> DialogueTurn:
        await target.respond(call, "what's my balance")
        return await target.respond(call, last)

    again = run_virtual(talk("bellow bellow"))
    assert again.source == "answer_reprompt" and again.end is None
    assert [r.text for r in again.replies] == [CONFIG.answer_reprompt]
    assert (again.collect_dtmf_digits, again.expect) == (8, ("digits",))
    assert inner.acted == ["what's my balance"]
    assert run_virtual(talk("goodbye")).end == "hangup"
    assert run_virtual(brain.respond(CallInfo(call_id="d"), "bellow bellow")).end == "hangup"
    off = ComposingDialogue(
        inner, brain.composer, dataclasses.replace(CONFIG, end_min_confidence=0)
    )
    assert run_virtual(talk("bellow bellow", off)).end == "hangup"


def test_an_answer_taken_back_leaves_the_question_waiting_again() -> None:
    """The caller went on after their answer: the dialogue takes it back and waits for the
    answer again, and so does the guard."""
    brain, _ = _form_brain()
    call = CallInfo(call_id="c")

    async def talk() -> DialogueTurn:
        await brain.respond(call, "what's my balance")
        await brain.respond(call, "1 2 3 4 5 6 7 8")  # answered: nothing waits
        await brain.retract(call, "1 2 3 4 5 6 7 8")
        return await brain.respond(call, GARBLED)

    assert run_virtual(talk()).source == "answer_reprompt"
    # Without the take-back, nothing waits: the garbled words are asked back as a task.
    other = CallInfo(call_id="e")

    async def answered() -> DialogueTurn:
        await brain.respond(other, "what's my balance")
        await brain.respond(other, "1 2 3 4 5 6 7 8")
        return await brain.respond(other, GARBLED)

    assert run_virtual(answered()).source == "intent_confirm"


def test_a_keypad_menu_waits_for_no_answer_of_a_kind() -> None:
    """A menu that collects a key but expects no kind of words (no ``expect``) leaves the
    next turn to the router as any other: garbled words for a task are asked back."""
    brain, _ = _form_brain()
    call = CallInfo(call_id="c")

    async def talk() -> DialogueTurn:
        await brain.respond(call, "menu")
        return await brain.respond(call, GARBLED)

    assert run_virtual(talk()).source == "intent_confirm"
