"""The knowledge base the LLM answers from: markdown FAQ passages indexed with BM25
(pure: built once at start-up, searched per question)."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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


def search_terms(text: str) -> list[str]:
    """Lower-cased, stop-word-free, stemmed terms (apostrophes dropped: "don't" -> "dont")."""
    text = text.lower().replace("'", "").replace("’", "")
    return [_stem(w) for w in _WORD_RE.findall(text) if w not in _STOPWORDS]


class KnowledgeBase:
    """Passages from markdown FAQ files, searchable with Okapi BM25 (pure Python)."""

    def __init__(self, passages: Sequence[Passage], *, k1: float = 1.5, b: float = 0.75) -> None:
        self.passages: tuple[Passage, ...] = tuple(passages)
        self._k1 = k1
        self._b = b
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
        self._terms_by_id = {
            p.id: frozenset(doc) for p, doc in zip(self.passages, self._docs, strict=True)
        }

    def terms_of(self, passage: Passage) -> frozenset[str]:
        """The search terms ``passage`` is indexed under (title, question, keywords, text)."""
        return self._terms_by_id[passage.id]

    @classmethod
    def load(cls, directory: str | Path) -> KnowledgeBase:
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
        log.info("knowledge_loaded", folder=str(folder), passages=len(passages))
        return cls(passages)

    def scores(self, question: str) -> list[tuple[Passage, float]]:
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
