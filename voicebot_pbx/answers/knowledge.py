"""The knowledge base the LLM answers from: markdown FAQ passages indexed with BM25, and
with sentence embeddings when an :class:`Embedder` is given (built once at start-up,
searched per question).

Relevance is BM25 alone, or *hybrid*: the cosine similarity of the question's embedding to
the passage's (heading, answer and keywords) plus ``bm25_weight`` x BM25. Callers phrase
questions in their own words ("what kinds of plans do you sell" for "What tariffs do
you offer?"): on the answers evaluation set's dev split, the right passage came first for
23/33 questions by BM25, 28/33 by the embedding, 29/33 hybrid (test: 50, 56, 59 of 65).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from threading import Lock
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt
import structlog

from voicebot_pbx.config import (
    DEFAULT_FALLBACK_REPLY as DEFAULT_FALLBACK_REPLY,
)
from voicebot_pbx.config import (
    DEFAULT_REFUSAL_REPLY as DEFAULT_REFUSAL_REPLY,
)
from voicebot_pbx.config import LlmConfig as LlmConfig
from voicebot_pbx.config import LlmEndpointConfig as LlmEndpointConfig
from voicebot_pbx.facts import FactsError, load_facts, render, text_problems
from voicebot_pbx.speech.tts import split_sentences

log = structlog.get_logger(__name__)


# --- knowledge base (BM25) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Passage:
    """One FAQ entry: a ``## question`` section of a knowledge file."""

    id: str  # "<file stem>#<n>"
    title: str  # the file's "# Title"
    question: str  # the "## ..." heading
    text: str  # the answer, as given to the model
    keywords: str = ""  # retrieval-only synonyms (never shown to the model)

    @property
    def prompt_text(self) -> str:
        return f"{self.question} {self.text}"

    @property
    def embedding_text(self) -> str:
        return f"{self.question} {self.text} {self.keywords}".strip()


class Embedder(Protocol):
    """Text -> an L2-normalised vector (``voicebot_pbx.answers.embedder.SentenceEmbedder``);
    thread-safe."""

    def embed(self, text: str) -> npt.NDArray[np.float32]: ...


_EMBEDDING_CACHE_SIZE = 256  # recent questions: the router and the LLM ask for the same one


_STOPWORDS = frozenset(
    """a about above after again all am an and any are as at be been before being below
    between both but by can could did do does doing don down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is
    it its itself just me might more most must my myself no nor not now of off on once only or
    other our ours ourselves out over own please same she should so some such than that the
    their theirs them themselves then there these they this those through to too under until
    up very was we were what when where which while who whom why will with would you your
    yours yourself yourselves hi hello hey thanks thank okay ok yes yeah like want wanted need
    know tell let get got im ive id ill youre dont cant wont isnt arent doesnt didnt
    s t d ll m re ve also still just really much many""".split()
)
_WORD_RE = re.compile(r"[a-z0-9]+")
_LETTERS_RE = re.compile(r"[^a-z]")
# Words that name no subject of their own ("is there some kind of list ..."): never taken
# for what a question asks about (KnowledgeBase.uncovered_words).
_VAGUE_WORDS = frozenset(
    """anyone anything someone something somebody kind sort way thing things go going come
    ever whats hows wheres theres""".split()
)


# Letters a word shares with one of the deployment's words to count as known (its stem
# missed by _stem): KnowledgeBase._know.
_KNOWN_PREFIX = 4


def _stem(word: str) -> str:
    """A crude suffix stripper: the same on both sides is all BM25 needs."""
    for suffix, replacement, min_len in (
        ("ies", "y", 5),
        ("ing", "", 6),
        ("ed", "", 5),
        ("es", "", 5),
        ("s", "", 4),
        ("e", "", 5),
    ):
        if word.endswith(suffix) and len(word) >= min_len and not word.endswith("ss"):
            return word[: len(word) - len(suffix)] + replacement
    return word


_QUESTION_WORD_RE = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def question_words(text: str) -> str:
    """The caller's words as retrieval embeds them: lower case, punctuation dropped
    (apostrophes kept). A transcript's capitals and marks are the recogniser's, not the
    caller's: "Can I get a refund on my late payment fee?" and the same words without them
    embedded apart enough to be read out in one case and asked back in the other."""
    return " ".join(_QUESTION_WORD_RE.findall(text.lower().replace("’", "'")))


def search_terms(text: str) -> list[str]:
    """Lower-cased, stop-word-free, stemmed terms (apostrophes dropped: "don't" -> "dont")."""
    text = text.lower().replace("'", "").replace("’", "")
    return [_stem(w) for w in _WORD_RE.findall(text) if w not in _STOPWORDS]


def passage_terms(passage: Passage) -> frozenset[str]:
    """The search terms ``passage`` is indexed under (title, question, keywords, text)."""
    return frozenset(
        search_terms(f"{passage.title} {passage.question} {passage.keywords} {passage.text}")
    )


class KnowledgeBase:
    """Passages from markdown FAQ files, searchable with Okapi BM25 (pure Python)."""

    def __init__(
        self,
        passages: Sequence[Passage],
        *,
        k1: float = 1.5,
        b: float = 0.75,
        embedder: Embedder | None = None,
        bm25_weight: float = 0.02,
    ) -> None:
        self.passages: tuple[Passage, ...] = tuple(passages)
        self._k1 = k1
        self._b = b
        self._embedder = embedder
        self._bm25_weight = bm25_weight
        self._vectors: npt.NDArray[np.float32] | None = None
        # Each passage's sentences (split_sentences of its text), for answers trimmed to
        # the sentence that answers a question (voicebot_pbx.answers.routing.answering).
        self._sentence_vectors: dict[str, npt.NDArray[np.float32]] = {}
        if embedder is not None and self.passages:
            self._vectors = np.stack([embedder.embed(p.embedding_text) for p in self.passages])
            for p in self.passages:
                self._sentence_vectors[p.id] = np.stack(
                    [embedder.embed(s) for s in split_sentences(p.text)]
                )
        self._recent: dict[str, npt.NDArray[np.float32]] = {}
        self._recent_lock = Lock()
        self._intent_vectors: dict[str, npt.NDArray[np.float32]] = {}
        self._intent_requests: dict[str, str] = {}  # intent -> its first example
        # The heading and keywords count twice: they say what the passage is about.
        self._docs: list[Counter[str]] = [
            Counter(
                search_terms(f"{p.title} {p.question} {p.question} {p.keywords} {p.keywords}")
                + search_terms(p.text)
            )
            for p in self.passages
        ]
        self._lengths = [sum(doc.values()) for doc in self._docs]
        self._avg_length = (sum(self._lengths) / len(self._lengths)) if self._lengths else 1.0
        df: Counter[str] = Counter()
        for doc in self._docs:
            df.update(doc.keys())
        n = len(self._docs)
        self._idf = {term: math.log(1.0 + (n - f + 0.5) / (f + 0.5)) for term, f in df.items()}
        self.vocabulary: frozenset[str] = frozenset(df)
        """Every search term the knowledge base uses (titles, questions, answers, keywords)."""
        self._terms_by_id = {p.id: passage_terms(p) for p in self.passages}
        # The search terms of the deployment's own words: the passages', then the dialogue's
        # intent examples' (add_known_words). A word outside them is one nothing here was
        # written about, or the recogniser's mishearing (unknown_words).
        self._known_terms: set[str] = set()
        self._know(self.vocabulary)

    def add_known_words(self, texts: Iterable[str]) -> None:
        """Words the deployment's callers use (the dialogue's training examples, any
        intent's): a question's word found here is not unknown (:meth:`unknown_words`)."""
        for text in texts:
            self._know(search_terms(text))

    def _know(self, terms: Iterable[str]) -> None:
        """Add ``terms`` to the deployment's words, with their first ``_KNOWN_PREFIX``
        letters: the crude stemmer leaves "writing" as "writ" and "write" as it is."""
        for term in terms:
            self._known_terms.add(term)
            self._known_terms.add(term[:_KNOWN_PREFIX])

    def _known(self, word: str) -> bool:
        """Whether ``word`` (a content word) is one of the deployment's (``_know``)."""
        return _stem(word) in self._known_terms or word[:_KNOWN_PREFIX] in self._known_terms

    def terms_of(self, passage: Passage) -> frozenset[str]:
        """The search terms ``passage`` is indexed under (title, question, keywords, text)."""
        return self._terms_by_id[passage.id]

    @property
    def embedder(self) -> Embedder | None:
        return self._embedder

    @property
    def bm25_weight(self) -> float:
        return self._bm25_weight

    @property
    def hybrid(self) -> bool:
        """Whether :meth:`scores` is hybrid (embedding + BM25) rather than BM25 alone."""
        return self._vectors is not None

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        embedder: Embedder | None = None,
        bm25_weight: float = 0.02,
    ) -> KnowledgeBase:
        """Every ``*.md`` file in ``directory`` except ``README.md`` (sorted by name)."""
        folder = Path(directory)
        if not folder.is_dir():
            raise FileNotFoundError(f"knowledge folder {folder} does not exist")
        facts = load_facts(folder)
        passages: list[Passage] = []
        for file in sorted(folder.glob("*.md")):
            if file.name.lower() == "readme.md":
                continue
            text = render(file.read_text(encoding="utf-8"), facts, where=str(file))
            passages.extend(parse_knowledge_markdown(text, file.stem))
        if not passages:
            raise ValueError(f"knowledge folder {folder} has no '## question' passages")
        kb = cls(passages, embedder=embedder, bm25_weight=bm25_weight)
        log.info(
            "knowledge_loaded",
            folder=str(folder),
            passages=len(passages),
            retrieval="hybrid" if kb.hybrid else "bm25",
        )
        return kb

    def scores(self, question: str) -> list[tuple[Passage, float]]:
        """Every passage with a positive relevance, best first: BM25, or hybrid (the
        embedding's cosine similarity + ``bm25_weight`` x BM25) when the knowledge base has
        an embedder. Hybrid scoring embeds the question (~10 ms): call it off the event
        loop; a question asked again within the last few hundred is not embedded again."""
        bm25 = self._bm25(question)
        if self._vectors is None:
            return bm25
        similarity = self._vectors @ self._question_vector(question)
        by_id = {passage.id: score for passage, score in bm25}
        scored = [
            (passage, float(sim) + self._bm25_weight * by_id.get(passage.id, 0.0))
            for passage, sim in zip(self.passages, similarity, strict=True)
        ]
        scored = [item for item in scored if item[1] > 0.0]
        scored.sort(key=lambda item: -item[1])
        return scored

    def add_intent_examples(self, examples: Mapping[str, Sequence[str]]) -> int:
        """Embed the dialogue's intent examples (hybrid only; blocking, ~10 ms each: at
        start-up), for :meth:`intent_similarity`. Returns how many were embedded."""
        if self._embedder is None:
            return 0
        count = 0
        for intent, texts in examples.items():
            if texts:
                self._intent_vectors[intent] = np.stack([self._embedder.embed(t) for t in texts])
                self._intent_requests[intent] = texts[0]
                count += len(texts)
        return count

    def intent_request(self, intent: str) -> str | None:
        """``intent``'s first training example (:meth:`add_intent_examples`): the words
        that ask the dialogue for it, once the caller said yes to it asked back."""
        return self._intent_requests.get(intent)

    def intent_similarity(self, intent: str | None, question: str) -> float | None:
        """How close ``question`` is to ``intent``'s nearest training example (cosine;
        None: no examples for it, or not hybrid). Blocking only when the question was not
        embedded yet (``scores`` embeds it)."""
        vectors = self._intent_vectors.get(intent or "")
        if vectors is None:
            return None
        return float((vectors @ self._question_vector(question)).max())

    def similarity(self, passage: Passage, question: str) -> float:
        """Cosine similarity of ``question`` to ``passage`` (0.0 when not hybrid)."""
        if self._vectors is None:
            return 0.0
        index = self.passages.index(passage)
        return float(self._vectors[index] @ self._question_vector(question))

    def sentence_similarities(self, passage: Passage, question: str) -> tuple[float, ...]:
        """Cosine similarity of ``question`` to each sentence of ``passage`` (its text split
        by ``split_sentences``); empty when not hybrid. Blocking like :meth:`scores`."""
        vectors = self._sentence_vectors.get(passage.id)
        if vectors is None:
            return ()
        return tuple(float(x) for x in vectors @ self._question_vector(question))

    def unknown_words(self, passage: Passage, question: str) -> tuple[str, ...]:
        """The content words of ``question`` that neither ``passage`` nor any of the
        deployment's words has (no passage, no intent example of the dialogue's:
        :meth:`add_known_words`): nothing here was written about them, or the recogniser
        misheard them ("I want to know the merrence of my account" is no question about the
        online account, however near its embedding is). A paraphrase in words the
        deployment never used is then asked back rather than read out; the words of a
        larger knowledge base or dialogue make that rarer."""
        tokens = question_words(question).split()
        return tuple(
            word for _, word in self._words_beside(passage, tokens) if not self._known(word)
        )

    def _words_beside(self, passage: Passage, tokens: Sequence[str]) -> Iterator[tuple[int, str]]:
        """The content words among ``tokens`` (a question's words) that ``passage`` does not
        use (stemmed; stop words and vague words never count), with their index."""
        for index, token in enumerate(tokens):
            word = _LETTERS_RE.sub("", token.lower())
            if not word or word in _STOPWORDS or word in _VAGUE_WORDS:
                continue
            if _stem(word) in self._terms_by_id[passage.id]:
                continue  # the passage says it (or a word with its stem)
            yield index, word

    def uncovered_words(
        self, passage: Passage, question: str, min_weight: float, max_gain: float
    ) -> tuple[str, ...]:
        """The words of ``question`` that carry its meaning but not its closeness to
        ``passage``: not a word of the passage (stemmed, its heading and keywords too) and,
        left out, the question's embedding moves by at least ``min_weight``
        (1 - cosine) while its similarity to the passage falls by no more than ``max_gain``
        (a negative ``max_gain``: it rises). "could you send my bills in welsh" is close to the
        passage about bills in large print and braille, and closer still without "welsh":
        the passage does not say what the caller asks about. Empty when not hybrid.
        Blocking (one embedding per content word, ~5 ms each): off the event loop."""
        if self._vectors is None or self._embedder is None:
            return ()
        tokens = question_words(question).split()
        vector = self._question_vector(question)
        passage_vector = self._vectors[self.passages.index(passage)]
        base = float(passage_vector @ vector)
        words: list[str] = []
        variants: list[str] = []
        for index, word in self._words_beside(passage, tokens):
            words.append(word)
            variants.append(" ".join(tokens[:index] + tokens[index + 1 :]))
        if not variants:
            return ()
        without = np.stack([self._embedder.embed(text) for text in variants])
        weights = 1.0 - without @ vector
        gains = base - without @ passage_vector
        return tuple(
            word
            for word, weight, gain in zip(words, weights, gains, strict=True)
            if weight >= min_weight and gain <= max_gain
        )

    def _question_vector(self, question: str) -> npt.NDArray[np.float32]:
        assert self._embedder is not None
        question = question_words(question)
        with self._recent_lock:
            found = self._recent.get(question)
        if found is not None:
            return found
        vector = self._embedder.embed(question)
        with self._recent_lock:
            if len(self._recent) >= _EMBEDDING_CACHE_SIZE:
                self._recent.pop(next(iter(self._recent)))  # the oldest
            self._recent[question] = vector
        return vector

    def _bm25(self, question: str) -> list[tuple[Passage, float]]:
        """Every passage with a positive BM25 score, best first."""
        terms = search_terms(question)
        scored: list[tuple[Passage, float]] = []
        for passage, doc, length in zip(self.passages, self._docs, self._lengths, strict=True):
            score = 0.0
            norm = self._k1 * (1.0 - self._b + self._b * length / self._avg_length)
            for term in terms:
                tf = doc.get(term, 0)
                if tf:
                    score += self._idf[term] * tf * (self._k1 + 1.0) / (tf + norm)
            if score > 0.0:
                scored.append((passage, score))
        scored.sort(key=lambda item: -item[1])
        return scored

    def search(
        self,
        question: str,
        k: int = 3,
        *,
        min_score: float = 0.0,
        relative_score: float = 0.0,
    ) -> list[Passage]:
        """The top ``k`` passages; none when the best scores below ``min_score`` (out of
        scope); passages below ``relative_score`` x the best score are left out."""
        scored = self.scores(question)
        if not scored or scored[0][1] < min_score:
            return []
        floor = scored[0][1] * relative_score
        return [passage for passage, score in scored[:k] if score >= floor]


LineKind = Literal["question", "title", "keywords", "text", "blank"]


def _classify(raw: str) -> tuple[LineKind, str]:
    """One line of a knowledge file and its content: "## question", "# title",
    "Keywords: ...", answer text or a blank line (the loader and the checker read alike)."""
    line = raw.strip()
    if line.startswith("## "):
        return "question", line[3:].strip()
    if line.startswith("# "):
        return "title", line[2:].strip()
    if line.lower().startswith("keywords:"):
        return "keywords", line.split(":", 1)[1].strip()
    return ("text", line) if line else ("blank", "")


def parse_knowledge_markdown(text: str, stem: str) -> list[Passage]:
    title = stem.replace("-", " ").capitalize()
    passages: list[Passage] = []
    question: str | None = None
    body: list[str] = []
    keywords: list[str] = []

    def flush() -> None:
        if question is not None:
            answer = " ".join(" ".join(body).split())
            if answer:
                passages.append(
                    Passage(
                        id=f"{stem}#{len(passages) + 1}",
                        title=title,
                        question=question,
                        text=answer,
                        keywords=" ".join(keywords),
                    )
                )

    for raw in text.splitlines():
        kind, value = _classify(raw)
        if kind == "question":
            flush()
            question, body, keywords = value, [], []
        elif kind == "title":
            title = value
        elif kind == "keywords":
            keywords.append(value)
        elif kind == "text" and question is not None:
            body.append(value)
    flush()
    return passages


def knowledge_problems(directory: str | Path) -> list[str]:
    """What an admin must fix in a knowledge folder, each naming the file and line: no
    folder or no entries, a broken facts.toml or a ``{{fact}}`` it does not define, a file
    that is not UTF-8 or has no ``## question``, text outside any question, a question with
    no answer, the same question twice. Empty: all good. Reads the files; never raises."""
    folder = Path(directory)
    if not folder.is_dir():
        return [f"knowledge folder {folder}: does not exist"]
    problems: list[str] = []
    try:
        facts = load_facts(folder)
    except FactsError as exc:
        problems.append(str(exc))
        facts = {}
    seen: dict[str, str] = {}  # normalised question -> "file:line"
    entries = 0
    for file in sorted(folder.glob("*.md")):
        if file.name.lower() == "readme.md":
            continue
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{file}: cannot be read as UTF-8 text ({type(exc).__name__})")
            continue
        problems += text_problems(text, facts, file=str(file))
        found, count = _file_problems(file, text.splitlines(), seen)
        problems += found
        entries += count
    if entries == 0 and not problems:
        problems.append(f"knowledge folder {folder}: no '## question' entries in any *.md")
    return problems


def _file_problems(file: Path, lines: list[str], seen: dict[str, str]) -> tuple[list[str], int]:
    """One knowledge file's problems and its number of entries (``seen`` collects the
    questions of every file, for duplicates)."""
    problems: list[str] = []
    open_question: tuple[int, str] | None = None  # the latest question not yet answered

    def unanswered() -> None:
        if open_question is not None:
            where, text = open_question
            problems.append(f"{file}:{where}: '## {text}' has no answer")

    entries = 0
    for number, raw in enumerate(lines, start=1):
        kind, value = _classify(raw)
        if kind == "question":
            unanswered()
            open_question = (number, value)
            entries += 1
            key = " ".join(search_terms(value)) or value.lower()
            if key in seen:
                problems.append(f"{file}:{number}: '## {value}' repeats {seen[key]}")
            else:
                seen[key] = f"{file.name}:{number}"
        elif kind in ("text", "keywords") and entries == 0:
            problems.append(f"{file}:{number}: text before the first '## question'")
        elif kind == "text":
            open_question = None  # answered
    unanswered()
    if entries == 0:
        problems.append(f"{file}: no '## question' entries")
    return problems, entries
