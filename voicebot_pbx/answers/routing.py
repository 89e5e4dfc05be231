"""Who answers a caller's question (pure): the dialogue's intent, a knowledge-base passage
read out as written, or the LLM composing from passages.

A caller's FAQ question ("do you charge to switch suppliers?") often lands on the nearest
intent with middling confidence, and the caller hears the opening hours. ``route`` weighs
the intent's confidence against retrieval evidence (:class:`KnowledgeHit`: the relevance
score, hybrid or BM25, how much of the question the passage covers, how far ahead of the
runner-up it is):

- a strong hit answers **as written**: the passage's own sentences (grounded by
  construction; each sentence is a separate reply, so each is TTS-cached once);
- the dialogue's conversation intents (greetings, yes/no, transfer to an agent, DTMF) are
  never taken over; any other intent keeps the turn when the hit is on its own topic
  (``intent_topics``: the booking flow for an appointments passage) unless, with a hybrid
  knowledge base and the intent's training examples embedded, the question is as close to
  the passage as to the intent's nearest example (``intent_similarity``); else a strong
  hit wins;
- an information intent (opening hours, address, billing) that is unsure and has no strong
  hit behind it, and what the dialogue did not understand, go to the LLM, which refuses
  (the honest "shall I put you through") without passages scoring ``llm.min_score``; an
  intent of a known topic whose nearest training example is far from the caller's words
  (``intent_min_similarity``, :func:`far_from_examples`) counts as not understood, but when
  the dialogue was sure of it (``confirm_intent_min_confidence``) the caller is asked
  whether they want it ("Just to check, do you want to report a power cut?",
  ``confirm_intents``): a phone line garbles a request's words more often than a caller
  asks about nothing the bot knows;
- unless the hit, not strong, is still *likely* (hybrid: ``confirm_min_score`` and
  ``confirm_min_lead``): then the caller is asked back ("Just to check, are you asking:
  <the passage's heading>"), and a yes reads the passage out. With the packaged LLM
  composing from such passages almost never answers (1 of 98 knowledge questions), while
  the question back costs one short turn and is grounded by construction.

What the caller's words ask for (:mod:`voicebot_pbx.answers.question_form`) refines this: a
question for a fact about a task reads a strong hit on the task's own topic
(``question_form_intents``) and overrules a sure intent of another known topic; a request
keeps its own topic's intent; an unsure task intent's question without a strong hit gets the
honest offer. A passage that does not state the kind of answer asked for ("how much ...": an
amount) is neither strong nor likely (``KnowledgeHit.fits``). Two passages both strong but
for their lead are a *tie* (:func:`is_tied`): both are read (:func:`tied_answer`). A hit
whose question names something the passage does not cover (``KnowledgeHit.uncovered``: "could
you send my bills in welsh" and the large-print passage) is asked back instead of read out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from voicebot_pbx.answers.dialogue import Understanding
from voicebot_pbx.answers.knowledge import KnowledgeBase, Passage, passage_terms, search_terms
from voicebot_pbx.answers.question_form import QuestionForm, asks_for, states
from voicebot_pbx.config import KnowledgeConfig
from voicebot_pbx.speech.tts import split_sentences

Route = Literal["intent", "passage", "compose", "compose_alone", "confirm", "confirm_intent"]
"""``compose``: the dialogue answers, the LLM (or its honest offer) when the dialogue did not
understand; ``compose_alone``: the LLM answers and the dialogue is not told (an intent far
from its own examples, which it would act on: :func:`far_from_examples`);
``confirm_intent``: such an intent the dialogue was sure of is asked back
(:func:`intent_task`)."""


@dataclass(frozen=True, slots=True)
class KnowledgeHit:
    passage: Passage
    score: float  # relevance: hybrid (similarity + weighted BM25) or BM25
    coverage: float  # share of the question's search terms the passage uses
    runner_up: float  # the second passage's score (0: none)
    hybrid: bool
    similarity: float = 0.0  # hybrid: the question's cosine similarity to the passage
    # hybrid: its similarity to each of the passage's sentences (split_sentences)
    sentence_similarities: tuple[float, ...] = ()
    # The passage states the kind of answer the question asks for, when it names one
    # ("how much is ...": an amount; question_form.asks_for). A passage that cannot answer
    # is never read out or asked back, however close it is.
    fits: bool = True
    # hybrid: the runner-up passage, the question's similarity to each of its sentences,
    # and whether it states the kind of answer asked for (a tie reads both: is_tied).
    second: Passage | None = None
    second_similarities: tuple[float, ...] = ()
    second_fits: bool = True
    # hybrid, with KnowledgeConfig.check_uncovered: the words the question asks about that
    # the passage does not cover (KnowledgeBase.uncovered_words; looked for only when the
    # hit would be read out: strong or tied). Such a hit is never read out unasked, or as
    # half of a tie.
    uncovered: tuple[str, ...] = ()
    # ... and the question's words that no word of the deployment has
    # (KnowledgeBase.unknown_words; with KnowledgeConfig.uncovered_unknown_words): such a hit
    # is not read out either, but an intent on its topic still answers.
    unknown: tuple[str, ...] = ()

    @property
    def margin(self) -> float:
        """score / the runner-up's score (inf: no runner-up): BM25's lead."""
        return self.score / self.runner_up if self.runner_up > 0 else float("inf")

    @property
    def lead(self) -> float:
        """score - the runner-up's score: the hybrid score's lead."""
        return self.score - self.runner_up


def knowledge_hit(
    kb: KnowledgeBase, question: str, config: KnowledgeConfig | None = None
) -> KnowledgeHit | None:
    """The best passage for ``question`` and the evidence for it (None: nothing relevant).
    With ``config`` (``check_uncovered``), a hit that would be read out (strong or tied)
    also says which of the question's words the passage does not cover. Blocking (a hybrid
    knowledge base embeds the question): run it off the event loop."""
    scored = kb.scores(question)
    if not scored:
        return None
    passage, score = scored[0]
    terms = search_terms(question)
    used = kb.terms_of(passage)
    coverage = sum(term in used for term in terms) / len(terms) if terms else 0.0
    runner_up = scored[1][1] if len(scored) > 1 else 0.0
    similarity = kb.similarity(passage, question)
    sentences = kb.sentence_similarities(passage, question)
    kind = asks_for(question)
    fits = kind is None or states(kind, passage.text)
    second = scored[1][0] if len(scored) > 1 and kb.hybrid else None
    hit = KnowledgeHit(
        passage,
        score,
        coverage,
        runner_up,
        kb.hybrid,
        similarity,
        sentences,
        fits,
        second,
        kb.sentence_similarities(second, question) if second is not None else (),
        second is None or kind is None or states(kind, second.text),
    )
    if (
        config is None
        or not config.check_uncovered
        or not config.direct
        or not (is_strong(hit, config) or is_tied(hit, config))
    ):
        return hit
    # Only a hit that would be read out: one embedding per candidate word.
    uncovered = kb.uncovered_words(
        passage, question, config.uncovered_min_weight, config.uncovered_max_gain
    )
    unknown = kb.unknown_words(passage, question) if config.uncovered_unknown_words else ()
    return dataclasses.replace(hit, uncovered=uncovered, unknown=unknown)


def is_strong(hit: KnowledgeHit | None, config: KnowledgeConfig) -> bool:
    if hit is None or not hit.fits or hit.uncovered or hit.unknown:
        return False
    if hit.hybrid:
        return hit.score >= config.hybrid_direct_min_score and (
            hit.lead >= config.hybrid_direct_min_lead
        )
    return (
        hit.score >= config.direct_min_score
        and hit.coverage >= config.direct_min_coverage
        and hit.margin >= config.direct_min_margin
    )


def is_tied(hit: KnowledgeHit | None, config: KnowledgeConfig) -> bool:
    """Two passages (hybrid) both scoring a strong hit's floor, too close to choose between
    (``hybrid_direct_min_lead``), both stating the kind of answer asked for: with
    ``read_ties`` both are read (:func:`tied_answer`), the sentence of each that is closest
    to the question. "can I report a power cut on Christmas day" is answered by the power
    cut passage and by the one about calling outside opening hours alike; asking the LLM to
    choose almost always ended in "I'm not sure"."""
    if hit is None or not hit.hybrid or not config.read_ties or hit.second is None:
        return False
    floor = config.hybrid_direct_min_score
    return (
        hit.fits
        and not hit.uncovered
        and not hit.unknown
        and hit.second_fits
        and hit.score >= floor
        and hit.runner_up >= floor
        and hit.lead < config.hybrid_direct_min_lead
    )


def is_likely(hit: KnowledgeHit | None, config: KnowledgeConfig) -> bool:
    """Worth asking the caller about (hybrid retrieval only; BM25 scores have no scale)."""
    if hit is None or not hit.hybrid or not config.confirm or not hit.fits:
        return False
    return hit.score >= config.confirm_min_score and hit.lead >= config.confirm_min_lead


def confirm_question(passage: Passage, config: KnowledgeConfig) -> str:
    """The question back for a likely hit: ``config.confirm_question`` with its heading."""
    return config.confirm_question.replace("{question}", passage.question)


def confirm_questions(kb: KnowledgeBase, config: KnowledgeConfig) -> list[str]:
    """Every question back the router can ask (to warm the TTS cache): a passage's, an
    intent's."""
    passages = [confirm_question(p, config) for p in kb.passages] if config.confirm else []
    tasks = _pairs(config.confirm_intents).values()
    return passages + [confirm_intent_question(task.strip(), config) for task in tasks]


def offers_transfer(reply: str) -> bool:
    """Whether a fallback or refusal reply offers the caller a transfer: it asks ("... shall
    I put you through to an agent?"); one written as a statement offers nothing."""
    return reply.rstrip().endswith("?")


_YES_WORDS = frozenset(
    "yes yeah yep yup sure correct right exactly please absolutely definitely ok okay".split()
)
_NO_WORDS = frozenset("no nope nah not wrong neither".split())


def yes_or_no(intent: str | None, text: str, config: KnowledgeConfig) -> bool | None:
    """The caller's answer to a yes/no question the router asked: the dialogue's intent
    when it is one of ``affirm_intents`` / ``deny_intents``, else the words themselves
    (a dialogue without those intents: the rule dialogue); None: neither."""
    if intent in config.affirm_intents:
        return True
    if intent in config.deny_intents:
        return False
    words = [w.strip(".,!?;:") for w in text.lower().replace("'", " ").split()]
    words = [w for w in words if w]
    if not words or len(words) > 6:
        return None
    if any(w in _NO_WORDS for w in words):
        return False
    if words[0] in _YES_WORDS or (len(words) > 1 and words[:2] == ["that", "s"]):
        return True
    return None


def _topic(passage: Passage) -> str:
    return passage.id.split("#", 1)[0]


def _pairs(entries: Sequence[str]) -> dict[str, str]:
    """``"intent=value"`` entries of the config (``intent_topics``, ``confirm_intents``;
    their shape is checked when the config loads) as intent -> value."""
    return dict(entry.split("=", 1) for entry in entries)


def _intent_topic(intent: str | None, config: KnowledgeConfig) -> str | None:
    """The knowledge file ``intent`` answers for (``intent_topics``; None: none)."""
    return _pairs(config.intent_topics).get(intent or "")


def far_from_examples(
    intent: str | None, intent_similarity: float | None, config: KnowledgeConfig
) -> bool:
    """Whether the caller's words are too far from every training example of ``intent``
    (an intent of a known topic) for its fixed reply to be the answer: a classifier's
    confidence is spread over the intents it knows, so a question about none of them still
    lands on one, often with confidence ("will I need to pay a security deposit":
    billing_question 0.87; its nearest example only 0.38 similar). Such an intent counts as
    not understood."""
    return (
        intent_similarity is not None
        and intent_similarity < config.intent_min_similarity
        and _intent_topic(intent, config) is not None
    )


def intent_task(intent: str | None, config: KnowledgeConfig) -> str | None:
    """What the caller would want to do with ``intent``, as the question back words it
    (``confirm_intents``; None: not asked back)."""
    task = _pairs(config.confirm_intents).get(intent or "")
    return task.strip() if task else None


def confirm_intent_question(task: str, config: KnowledgeConfig) -> str:
    """ "Just to check, do you want to <task>?" (``confirm_intent_question``)."""
    return config.confirm_intent_question.replace("{task}", task)


def _route(
    heard: Understanding,
    hit: KnowledgeHit | None,
    config: KnowledgeConfig,
    intent_similarity: float | None,
    form: QuestionForm,
) -> Route:
    """:func:`route` for a hit taken as covering the question."""
    intent, confidence = heard.intent, heard.confidence
    strong = config.direct and (is_strong(hit, config) or is_tied(hit, config))
    unsure: Route = "confirm" if config.direct and is_likely(hit, config) else "compose"
    if heard.needs_fallback or intent is None:
        return "passage" if strong else unsure
    if far_from_examples(intent, intent_similarity, config):
        # Not understood either, but the dialogue would act on it (start the balance form
        # for "can my carer talk to you about my account"): it is not told. Unless it was
        # sure: words a phone line garbled are asked back ("do you want to report a power
        # cut?"), as a passage likely meant is.
        if strong:
            return "passage"
        if unsure == "confirm":
            return "confirm"
        sure = confidence is not None and confidence >= config.confirm_intent_min_confidence
        return "confirm_intent" if sure and intent_task(intent, config) else "compose_alone"
    if intent in config.keep_intents:
        return "intent"
    if strong and hit is not None:
        if _intent_topic(intent, config) == _topic(hit.passage):
            if form == "information" and intent in config.question_form_intents:
                # A question about the task ("how long will the fitter be?"), not the
                # task: its training examples are requests, so closeness cannot tell.
                return "passage"
            if form == "request":
                # The caller asks for what the intent does ("I need to make an appointment
                # with an engineer"), however close the passage about it is.
                return "intent"
            # The intent's own reply covers this passage's topic, unless (hybrid, the
            # intent's training examples embedded) the question is at least as close to
            # the passage as to the intent's nearest example: "does a smart meter cost
            # anything to fit" asks about appointments, "book me an engineer" is the intent.
            if (
                intent_similarity is not None
                and hit.similarity >= intent_similarity + config.hybrid_intent_lead
            ):
                return "passage"
            return "intent"
        if confidence is None or confidence < config.override_below_confidence:
            return "passage"
        # A sure intent on another known topic keeps a request, not a question for a fact
        # the passage holds ("if I switch supplier before my fixed deal ends how much will I
        # be charged": billing_question 1.00, the tariffs' exit fees). An intent without a
        # topic (an admin's rule: "rule0") is its own answer to whatever it matched.
        other_topic = _intent_topic(intent, config) is not None
        return "passage" if form == "information" and other_topic else "intent"
    asks_about_task = form == "information" and intent in config.question_form_intents
    if (
        (intent in config.info_intents or asks_about_task)
        and confidence is not None
        and confidence < config.info_min_confidence
    ):
        # An unsure information reply ("our opening hours are ...") to a question the
        # knowledge base cannot answer either: better the honest offer than a wrong fact.
        # So is an unsure task reply to a question for a fact ("how much is a kilowatt
        # hour on your cheapest plan?": report_outage 0.68).
        return unsure
    return "intent"


def route(
    heard: Understanding,
    hit: KnowledgeHit | None,
    config: KnowledgeConfig,
    *,
    intent_similarity: float | None = None,
    form: QuestionForm = "unclear",
) -> Route:
    """Where the turn's answer comes from (see the module docstring): ``heard``, what the
    dialogue makes of the caller's words; ``hit``, the knowledge base's best passage;
    ``intent_similarity``, how close the words are to the intent's nearest training example
    (None: not known); ``form``, what the words ask for
    (:func:`voicebot_pbx.answers.question_form.question_form`).

    A hit that would be read out but for words of the question the passage does not cover
    (``KnowledgeHit.uncovered``) is asked back instead (``confirm``; the LLM when asking
    back is off): "could you send my bills in welsh" hears "Just to check, are you asking: Can I
    get my bill in another format?", not the large-print passage. So is such a hit on the
    topic of the intent that would keep the turn, when the caller asks for information:
    "can I park at your customer centre" is no better answered by the address
    intent's reply than by the visiting passage. Words no word of the deployment has
    (``KnowledgeHit.unknown``) stop a passage being read out the same way, but leave an
    intent's own answer alone: "what hours are your phones staffed" is the opening
    hours."""
    if hit is None or not (hit.uncovered or hit.unknown):
        return _route(heard, hit, config, intent_similarity, form)
    covered = dataclasses.replace(hit, uncovered=(), unknown=())
    where = _route(heard, covered, config, intent_similarity, form)
    ask_back: Route = "confirm" if config.confirm else "compose"
    if where == "passage":
        return ask_back
    if (
        where == "intent"
        and hit.uncovered
        and form == "information"
        and is_strong(covered, config)
        and _intent_topic(heard.intent, config) == _topic(hit.passage)
    ):
        return ask_back
    return where


def spoken_answer(
    passage: Passage,
    max_words: int,
    question: str = "",
    similarities: Sequence[float] = (),
    min_lead: float = 0.15,
) -> list[str]:
    """The passage's sentences as the caller hears them: in order, stopping before the
    sentence that would pass ``max_words`` (the first sentence always).

    Given the caller's ``question`` (a passage read instead of an intent, not after the
    caller said yes to its heading), trimmed to what answers it (:func:`answering`)."""
    sentences = (
        answering(passage, question, similarities, min_lead)
        if question
        else split_sentences(passage.text)
    )
    chosen: list[str] = []
    words = 0
    for sentence in sentences:
        count = len(sentence.split())
        if chosen and words + count > max_words:
            break
        chosen.append(sentence)
        words += count
    return chosen


_BARE_ANSWERS = frozenset({"yes", "no"})
_REFERS_BACK = frozenset({"it", "its", "this", "that", "they", "these", "those"})


def answering(
    passage: Passage, question: str, similarities: Sequence[float], min_lead: float
) -> list[str]:
    """The sentences of ``passage`` that answer the caller's ``question`` (pure):

    - a bare "Yes." / "No." opening answers the passage's heading; it is dropped when the
      question names something the passage never mentions ("can my direct debit come out on
      the thirtieth" against "any date between the 1st and the 28th": a "Yes." would say
      the opposite of the passage);
    - with ``similarities`` (the question's similarity to each sentence, hybrid retrieval),
      a later sentence at least ``min_lead`` closer to the question than the first is the
      answer alone ("will I be charged for leaving Green Saver" hears "There is no exit fee
      on ... Green Saver", not first the Fixed 12 fee), with the sentence before it when it
      starts by referring back ("It is free ...")."""
    sentences = split_sentences(passage.text)
    closeness = list(similarities) if len(similarities) == len(sentences) else []
    terms = set(search_terms(question))
    if len(sentences) > 1 and sentences[0].strip(" .!,").lower() in _BARE_ANSWERS:
        if not terms <= passage_terms(passage):
            sentences, closeness = sentences[1:], closeness[1:]
    if len(closeness) < 2:
        return sentences
    best = max(range(len(sentences)), key=lambda i: (closeness[i], -i))
    if best == 0 or closeness[best] < closeness[0] + min_lead:
        return sentences
    first_word = sentences[best].split(maxsplit=1)[0].lower().strip(",'")
    start = best - 1 if first_word in _REFERS_BACK else best
    return sentences[start : best + 1]


def tied_answer(hit: KnowledgeHit) -> list[str]:
    """What a tie (:func:`is_tied`) reads: of each of the two passages, the sentence closest
    to the question (with the one before it when it refers back, "It is free ..."), best
    first. A bare "Yes." / "No." opening it is dropped: it answers its own heading, not
    necessarily this question. Both are read whatever ``max_words`` says: which of the two
    answers is what the tie does not know."""
    picked: list[tuple[float, list[str]]] = []
    for passage, closeness in (
        (hit.passage, hit.sentence_similarities),
        (hit.second, hit.second_similarities),
    ):
        if passage is None:
            continue
        sentences = split_sentences(passage.text)
        if len(closeness) != len(sentences):
            closeness = tuple(0.0 for _ in sentences)
        best = max(range(len(sentences)), key=lambda i: (closeness[i], -i))
        first_word = sentences[best].split(maxsplit=1)[0].lower().strip(",'")
        start = best - 1 if best > 0 and first_word in _REFERS_BACK else best
        picked.append(
            (closeness[best], [_without_bare_answer(t) for t in sentences[start : best + 1]])
        )
    picked.sort(key=lambda item: -item[0])
    chosen: list[str] = []
    for _, sentences in picked:
        chosen.extend(t for t in sentences if t and t not in chosen)
    return chosen


def _without_bare_answer(sentence: str) -> str:
    """``sentence`` without a leading "Yes." / "No." (the sentence splitter keeps a short
    one with what follows)."""
    head, _, rest = sentence.partition(" ")
    if head.strip(".!,").lower() in _BARE_ANSWERS and head[-1:] in ".!,":
        return rest.strip()
    return sentence


def spoken_sentences(kb: KnowledgeBase, max_words: int) -> list[str]:
    """Every sentence a direct answer can say (to warm the TTS cache): each passage read in
    full up to ``max_words``, and each of its sentences alone (:func:`answering`), also
    without a bare "Yes." / "No." opening it (:func:`tied_answer`)."""
    texts: dict[str, None] = {}
    for passage in kb.passages:
        texts.update(dict.fromkeys(spoken_answer(passage, max_words)))
        for sentence in split_sentences(passage.text):
            texts.update(dict.fromkeys((sentence, _without_bare_answer(sentence))))
    return [text for text in texts if text]
