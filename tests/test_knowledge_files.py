"""A knowledge folder an admin got wrong: check-config and serve name the file and line, and
a knowledge base that cannot load leaves intents and rules answering, reported on /ready."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from voicebot_pbx.answers.knowledge import knowledge_problems
from voicebot_pbx.cli import main
from voicebot_pbx.config import LlmConfig, load_config
from voicebot_pbx.ops.health import readiness_report
from voicebot_pbx.ops.service import load_llm_or_none

ROOT = Path(__file__).resolve().parents[1]


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_the_projects_knowledge_files_have_no_problems() -> None:
    assert knowledge_problems(ROOT / "knowledge") == []


def test_each_problem_names_its_file_and_line(tmp_path: Path) -> None:
    kb = tmp_path / "kb"
    good = write(kb, "billing.md", "# Billing\n\n## How do I pay?\nBy card.\nKeywords: pay\n")
    stray = write(kb, "stray.md", "# Stray\nSome text with no question.\n\n## Why?\nBecause.\n")
    empty_q = write(kb, "empty.md", "# Empty\n## Is it free?\nKeywords: free\n## Other?\nYes.\n")
    dup = write(kb, "dup.md", "# Dup\n## How do I pay?\nBy post.\n")
    none = write(kb, "none.md", "# Nothing here\n\nJust a paragraph.\n")
    (kb / "latin1.md").write_bytes("## Caf\xe9?\nOui.\n".encode("latin-1"))
    write(kb, "README.md", "not a knowledge file\n")
    problems = knowledge_problems(kb)
    assert f"{stray}:2: text before the first '## question'" in problems
    assert f"{empty_q}:2: '## Is it free?' has no answer" in problems
    assert f"{dup}:2: '## How do I pay?' repeats billing.md:3" in problems
    assert f"{none}:3: text before the first '## question'" in problems
    assert f"{none}: no '## question' entries" in problems
    assert any(p.startswith(f"{kb / 'latin1.md'}: cannot be read as UTF-8") for p in problems)
    assert not [p for p in problems if str(good) in p or "README" in p]
    assert len(problems) == 6
    assert knowledge_problems(tmp_path / "missing") == [
        f"knowledge folder {tmp_path / 'missing'}: does not exist"
    ]


def test_check_config_reports_the_knowledge_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kb = tmp_path / "kb"
    bad = write(kb, "a.md", "## Is it free?\n")
    config = write(
        tmp_path, "v.toml", f'[llm]\nknowledge_dir = "{kb}"\n[turn]\ndetector = "silence"\n'
    )
    # The default greeting and rules say {{company}}, {{phone_hours}}, {{address}}: a
    # knowledge folder without those facts is a config error naming the setting and file.
    assert main(["check-config", "--config", str(config)]) == 2
    assert (
        f"dialogue.greeting: unknown fact {{{{company}}}} (not in {kb / 'facts.toml'}: no facts)"
        in capsys.readouterr().err
    )
    shutil.copy(ROOT / "knowledge" / "facts.toml", kb / "facts.toml")
    assert main(["check-config", "--config", str(config)]) == 1
    assert f"problem: {bad}:1: '## Is it free?' has no answer" in capsys.readouterr().err


def test_a_knowledge_base_that_cannot_load_leaves_the_dialogue_and_degrades_ready(
    tmp_path: Path,
) -> None:
    saved = structlog.get_config()
    config = load_config()
    config = dataclasses.replace(
        config, llm=dataclasses.replace(config.llm, knowledge_dir=str(tmp_path / "missing"))
    )
    try:
        with capture_logs() as logs:
            llm = asyncio.run(load_llm_or_none(config))
    finally:
        structlog.configure(**saved)
    assert llm is None  # the service goes on with intents and rules only
    events = [(e["event"], e.get("problem", e.get("error", ""))) for e in logs]
    assert ("knowledge_problem", f"knowledge folder {tmp_path / 'missing'}: does not exist") in (
        events
    )
    assert any(event == "llm_unavailable" for event, _ in events)
    report = readiness_report(models_loaded=True, knowledge="unavailable")
    assert report["ready"] is True and report["status"] == "degraded"
    assert report["knowledge"] == "unavailable"
    assert readiness_report(models_loaded=True, knowledge="ok")["status"] == "ok"
    assert LlmConfig().knowledge_dir == "knowledge"
