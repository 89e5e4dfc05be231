"""The sections for answers beyond the dialogue: the LLM and its endpoints, the knowledge
base and its routing."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

DEFAULT_FALLBACK_REPLY = (
    "I'm not sure about that. Would you like me to put you through to an agent?"
)
DEFAULT_REFUSAL_REPLY = (
    "Sorry, I can't help with that on this line. I can help with your balance, your bill, "
    "power cuts, passwords and appointments. Shall I put you through to an agent?"
)


def safe_url(url: str) -> str:
    """The URL without user info or query (safe to log)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass(frozen=True, slots=True)
class LlmEndpointConfig:
    """One OpenAI-compatible endpoint (``[[llm.endpoints]]`` in the TOML).

    ``url`` is the API base (``http://127.0.0.1:8080/v1``: ``/chat/completions`` is appended).
    ``key_env`` names the API keys (never the keys): each name is looked up in the environment,
    then in ``llm.keys_file``; several keys rotate, and a key that gets HTTP 429 rests while the
    others carry on. Empty: a keyless endpoint (e.g. a local ``llama_cpp.server``).
    """

    url: str = ""
    key_env: tuple[str, ...] = ()
    max_concurrency: int = 2
    model: str = ""  # the request's "model" field (empty: "default")

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"llm endpoint url {safe_url(self.url)!r} is not an http(s) URL")
        if parts.username or parts.password or parts.query:
            raise ValueError(
                "llm endpoint url must not carry credentials or a query: put the key in the "
                "environment and name it in key_env"
            )
        if self.max_concurrency < 1:
            raise ValueError("llm endpoint max_concurrency must be at least 1")
        for name in self.key_env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                # (no part of the value is shown: it may be a key pasted in by mistake)
                raise ValueError("llm endpoint key_env entries must be variable names")


@dataclass(frozen=True, slots=True)
class LlmConfig:
    enabled: bool = True
    engine: Literal["llama_cpp", "openai"] = "llama_cpp"
    # llama_cpp engine. Empty model_path: the packaged SmolLM2-135M (models manifest).
    model_path: str = ""
    n_ctx: int = 2048
    n_threads: int = 1
    n_threads_batch: int = 0  # prompt evaluation threads (0: n_threads)
    n_batch: int = 256
    max_tokens: int = 80
    # 0: greedy, the model's likeliest words (bench/README.md, "Answers from the knowledge
    # base": fewer answers the post-check stops); above 0 sampling starts from the engine's
    # seed at every answer, so a question still gets the same answer every time.
    temperature: float = 0.0
    # openai engine: endpoints, and a file of NAME=key lines for names not in the environment.
    endpoints: tuple[LlmEndpointConfig, ...] = ()
    keys_file: str = ""
    endpoint_timeout_s: float = 2.0  # connect + response headers, per endpoint try
    stream_timeout_s: float = 3.0  # longest gap between two streamed chunks
    backoff_s: float = 30.0  # an endpoint (or key) that failed rests this long
    # Both engines: at most queue_max requests wait for the model / a free endpoint slot,
    # each for at most queue_timeout_s; beyond that LlmBusy (the fallback reply) at once.
    queue_max: int = 8
    queue_timeout_s: float = 1.0
    # Session timing (the session plays hold_reply after first_sentence_timeout_s, and the
    # fallback after hard_timeout_s). The answerer gives up on its own when no next sentence
    # arrives within hard_timeout_s.
    first_sentence_timeout_s: float = 1.2
    hard_timeout_s: float = 6.0
    hold_reply: str = "One moment, please."
    # Retrieval: top_k passages; a best score below min_score (BM25) or hybrid_min_score
    # ([knowledge] retrieval = "hybrid") means out of scope; passages scoring below
    # relative_score x the best are dropped.
    knowledge_dir: str = "knowledge"
    top_k: int = 3
    min_score: float = 2.0
    hybrid_min_score: float = 0.45
    relative_score: float = 0.5
    # Answer shape (spoken): at most max_sentences sentences of max_sentence_words words.
    max_sentences: int = 2
    max_sentence_words: int = 35
    # Share of an answer's content words that must occur in the passages or the question
    # (catches invented offers with no number or name in them); 0 turns it off.
    min_support: float = 0.6
    company: str = "{{company}}"
    fallback_reply: str = DEFAULT_FALLBACK_REPLY
    refusal_reply: str = DEFAULT_REFUSAL_REPLY

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.engine == "openai" and self.enabled and not self.endpoints:
            problems.append('engine "openai" needs at least one [[llm.endpoints]]')
        for name in ("n_ctx", "n_threads", "n_batch", "max_tokens", "top_k", "max_sentences"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if self.n_threads_batch < 0:
            problems.append("n_threads_batch must be >= 0")
        if self.queue_max < 0:
            problems.append("queue_max must be >= 0")
        for name in (
            "endpoint_timeout_s",
            "stream_timeout_s",
            "queue_timeout_s",
            "first_sentence_timeout_s",
            "hard_timeout_s",
        ):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0")
        if self.first_sentence_timeout_s > self.hard_timeout_s:
            problems.append("first_sentence_timeout_s must be <= hard_timeout_s")
        if not 0.0 <= self.temperature <= 2.0:
            problems.append("temperature must be between 0 and 2")
        if not 0.0 <= self.relative_score <= 1.0:
            problems.append("relative_score must be between 0 and 1")
        if not 0.0 <= self.min_support <= 1.0:
            problems.append("min_support must be between 0 and 1")
        if not self.fallback_reply.strip() or not self.refusal_reply.strip():
            problems.append("fallback_reply and refusal_reply must not be empty")
        if problems:
            raise ValueError("llm: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class KnowledgeConfig:
    """Knowledge-base questions answered from the knowledge base (voicebot_pbx.answers.routing).

    A retrieval hit is *strong* when its BM25 score, the share of the question's terms the
    passage uses and its lead over the runner-up passage reach these floors; a strong hit
    is read out as written (its sentences up to ``max_words``). An intent of the dialogue
    keeps the turn when it is in ``keep_intents``, when the hit is on its own topic
    (``intent_topics``: "intent=knowledge file stem"), or when its confidence is at least
    ``override_below_confidence``. An ``info_intents`` intent below ``info_min_confidence``
    with no strong hit goes to the LLM / the honest offer. Thresholds: bench/eval_answers.py
    (dev split)."""

    direct: bool = True
    # Retrieval: "hybrid" (sentence embeddings + BM25, voicebot_pbx.answers.knowledge) or
    # "bm25" alone. embedding_model: the all-MiniLM-L6-v2 zip or folder (empty: packaged).
    retrieval: Literal["hybrid", "bm25"] = "hybrid"
    embedding_model: str = ""
    bm25_weight: float = 0.02
    # A strong hit, hybrid: score (similarity + weighted BM25) and lead over the runner-up.
    hybrid_direct_min_score: float = 0.5
    hybrid_direct_min_lead: float = 0.04
    # Two passages both at hybrid_direct_min_score but closer than the lead: read the
    # sentence of each that is closest to the question (routing.is_tied) instead of asking
    # the LLM to choose.
    read_ties: bool = True
    # With the dialogue's intent examples embedded (Rasa's data/*.yml): a strong hit answers
    # instead of an intent when its similarity is at least the intent's nearest example's
    # + hybrid_intent_lead (0: the closer of the two; not tuned).
    hybrid_intent_lead: float = 0.0
    # With the intent examples embedded: an intent of a known topic (intent_topics) whose
    # nearest training example is less similar (cosine) to the caller's words than this is
    # taken as not understood ("will I need to pay a security deposit": billing_question
    # 0.87, nearest example 0.38): the knowledge base, the question back or the honest
    # offer answer, not the intent's fixed reply. 0: off. Chosen on the dev split.
    intent_min_similarity: float = 0.5
    # Such an intent (far from its examples, no passage to read or ask back) that the
    # dialogue was still sure of (at least confirm_intent_min_confidence) is asked back when
    # it has a wording here ("intent=what the caller wants to do"): "Just to check, do you
    # want to report a power cut?" (confirm_intent_question). A yes gives the dialogue the
    # intent's first training example (its own request: the flow starts as for it); a no,
    # the honest offer. Words a phone line garbled ("my lecturers did not just cut out":
    # report_outage 0.95) are the usual case. Empty: off (the honest offer at once).
    confirm_intents: tuple[str, ...] = (
        "report_outage=report a power cut",
        "check_balance=check your balance",
        "book_appointment=book an appointment",
        "reset_password=reset your password",
        "billing_question=ask about your bill",
        "opening_hours=hear our opening hours",
        "address=hear our address",
    )
    confirm_intent_min_confidence: float = 0.8
    confirm_intent_question: str = "Just to check, do you want to {task}?"
    # While the dialogue waits for an answer it asked for (an account number, a postcode:
    # Rasa's expect), words it would not understand are that answer heard wrong:
    # the dialogue's form reads them, and an intent far from its examples (another task
    # started in the middle) gets this, the question still open (answers.fallbacks).
    answer_reprompt: str = "Sorry, I didn't catch that. Could you say it again?"
    # ... and words the dialogue's form could not take at all (a postcode when it asked
    # for the account number: Rasa's own "say it another way", the question left out): this,
    # then the form's question again, what it expects kept (the keypad open, the recogniser
    # held to the answer).
    answer_reask: str = "Sorry, I didn't catch that."
    # ... at most question_again_max times in a row for one question; the next time the
    # caller hears answer_give_up instead, a transfer offer a yes takes up (offer_target):
    # a line that garbles every try of a spelled postcode does not keep the caller in a
    # loop. 0: the offer at the first such words.
    question_again_max: int = 2
    answer_give_up: str = (
        "Sorry, I'm still not catching that. Shall I put you through to someone who can help?"
    )
    # ... and an intent that ends the call (end_intents) heard with less confidence than
    # end_min_confidence, while such an answer is awaited, is that answer heard wrong too:
    # answer_reprompt, not a hang-up on a caller in the middle of their task (a date of
    # birth heard as "below, below": goodbye 0.58). A clear goodbye (0.9 and more) still
    # ends the call. 0: off.
    end_intents: tuple[str, ...] = ("goodbye",)
    end_min_confidence: float = 0.8
    # A strong hit, BM25 alone: score, coverage of the question's terms, score / runner-up.
    direct_min_score: float = 6.0
    direct_min_coverage: float = 0.25
    direct_min_margin: float = 1.0
    max_words: int = 45
    # A hit whose question names something the passage does not cover (hybrid: a word
    # that, left out, moves the question's embedding by at least uncovered_min_weight
    # while the passage's similarity falls by no more than uncovered_max_gain, i.e. rises
    # with it gone: "could you send my bills in welsh" and the large-print passage) is not read
    # out as strong: the caller is asked back when it is likely, else the LLM / honest
    # offer (KnowledgeBase.uncovered_words). Thresholds: bench/eval_answers.py, dev split.
    check_uncovered: bool = True
    uncovered_min_weight: float = 0.05
    uncovered_max_gain: float = -0.03
    # ... and a word of the question that none of the deployment's words has (no passage,
    # no intent example of the dialogue's) is such a word whatever its embedding: nothing
    # here was written about it, or the recogniser misheard it.
    uncovered_unknown_words: bool = True
    # A passage read instead of an intent is trimmed to the sentence that answers the
    # question (hybrid): a later sentence at least this much closer to the question (cosine)
    # than the first is read alone. Above 1: never trimmed.
    answer_sentence_lead: float = 0.15
    override_below_confidence: float = 0.99
    keep_intents: tuple[str, ...] = (
        "greet",
        "goodbye",
        "affirm",
        "deny",
        "thank_you",
        "inform",
        "dtmf",
        "speak_to_agent",
    )
    intent_topics: tuple[str, ...] = (
        "opening_hours=opening-hours",
        "address=address",
        "billing_question=billing",
        "check_balance=billing",
        "book_appointment=appointments",
        "report_outage=power-cuts",
        "reset_password=online-account",
    )
    # Task intents (trained on requests) that yield a strong hit on their own topic to a
    # caller's question for information about the task ("how long will the fitter be at
    # my house?": voicebot_pbx.answers.question_form), whatever the closeness says.
    question_form_intents: tuple[str, ...] = ("book_appointment", "report_outage")
    info_intents: tuple[str, ...] = ("opening_hours", "address", "billing_question")
    info_min_confidence: float = 0.8
    # A likely hit (hybrid: score and lead over the runner-up at least these) that is not
    # strong, on a turn that would otherwise go to the LLM, is asked back first:
    # confirm_question with the passage's heading ("{question}"); a yes (affirm_intents)
    # reads the passage out, a no (deny_intents) gets the honest offer (llm.fallback_reply).
    confirm: bool = True
    confirm_min_score: float = 0.35
    confirm_min_lead: float = 0.1
    confirm_question: str = "Just to check, are you asking: {question}"
    affirm_intents: tuple[str, ...] = ("affirm",)
    deny_intents: tuple[str, ...] = ("deny",)
    # The honest offer ("... shall I put you through to an agent?") taken up with a yes:
    # this reply, then a transfer to offer_target.
    offer_accepted_reply: str = "Sure, I'll put you through to an agent now."
    offer_target: str = "agents"

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.direct_min_score < 0 or self.direct_min_margin < 1.0:
            problems.append("direct_min_score must be >= 0 and direct_min_margin >= 1")
        if self.retrieval not in ("hybrid", "bm25"):
            problems.append('retrieval must be "hybrid" or "bm25"')
        if self.bm25_weight < 0 or self.hybrid_direct_min_lead < 0:
            problems.append("bm25_weight and hybrid_direct_min_lead must be >= 0")
        for name in (
            "direct_min_coverage",
            "override_below_confidence",
            "info_min_confidence",
            "intent_min_similarity",
            "confirm_intent_min_confidence",
            "end_min_confidence",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be between 0 and 1")
        if self.max_words < 1:
            problems.append("max_words must be at least 1")
        if self.answer_sentence_lead < 0:
            problems.append("answer_sentence_lead must be >= 0")
        if self.confirm_question.count("{question}") != 1:
            problems.append("confirm_question must hold {question} once")
        if self.confirm_intent_question.count("{task}") != 1:
            problems.append("confirm_intent_question must hold {task} once")
        if not self.answer_reprompt.strip() or not self.answer_reask.strip():
            problems.append("answer_reprompt and answer_reask must not be empty")
        if self.question_again_max < 0:
            problems.append("question_again_max must be >= 0")
        if not self.answer_give_up.rstrip().endswith("?"):
            problems.append("answer_give_up must ask the caller (end in '?'): a yes transfers")
        if not self.offer_accepted_reply.strip() or not self.offer_target.strip():
            problems.append("offer_accepted_reply and offer_target must not be empty")
        bad = [pair for pair in self.intent_topics if pair.count("=") != 1]
        if bad:
            problems.append(f"intent_topics entries must read intent=file-stem: {bad}")
        bad = [
            pair
            for pair in self.confirm_intents
            if pair.count("=") != 1 or not all(part.strip() for part in pair.split("="))
        ]
        if bad:
            problems.append(f"confirm_intents entries must read intent=task: {bad}")
        if problems:
            raise ValueError("knowledge: " + "; ".join(problems))
