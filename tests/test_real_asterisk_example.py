"""The example dialplan an admin copies (``dialplans/asterisk/extensions.conf``) loads whole
in the real Asterisk 22: every context it writes exists, with every extension and priority
it writes (``pbx_config`` drops a line it cannot parse with only a warning, so a typo would
otherwise go unseen until a call takes that path)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from tests.realpbx import ROOT, free_port
from tests.realpbx.asterisk import Asterisk

pytestmark = [pytest.mark.realpbx, pytest.mark.slow]

EXAMPLE = ROOT / "dialplans" / "asterisk" / "extensions.conf"
_SUMMARY = re.compile(r"-= (\d+) extensions? \((\d+) priorit(?:y|ies)\) in 1 context\. =-")


def written(text: str) -> dict[str, tuple[int, int]]:
    """Per context of the file: (extensions, priorities) as written (``exten =>`` and
    ``same =>`` lines; hints are not priorities)."""
    extensions: dict[str, set[str]] = {}
    priorities: Counter[str] = Counter()
    context = ""
    for raw in text.splitlines():
        line = raw.split(";", 1)[0].strip()
        if match := re.fullmatch(r"\[([^\]]+)\]", line):
            context = match.group(1)
            if context not in ("general", "globals"):
                extensions.setdefault(context, set())
        elif line.startswith("exten =>"):
            extensions[context].add(line.split("=>", 1)[1].split(",", 1)[0].strip())
            priorities[context] += 1
        elif line.startswith("same =>"):
            priorities[context] += 1
    return {name: (len(exts), priorities[name]) for name, exts in extensions.items()}


def test_the_example_dialplan_loads_whole(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    expected = written(text)
    assert {"voicebot", "voicebot-transfer", "voicebot-outbound-amd"} <= set(expected)
    asterisk = Asterisk(tmp_path / "asterisk", bot_port=free_port(), extensions=text)
    asterisk.start()
    try:
        loaded = {}
        for context in expected:
            out = asterisk.cli(f"dialplan show {context}")
            summary = _SUMMARY.search(out)
            assert summary is not None, f"[{context}] is not in the dialplan:\n{out}"
            loaded[context] = (int(summary.group(1)), int(summary.group(2)))
        wrong = {c: (loaded[c], expected[c]) for c in expected if loaded[c] != expected[c]}
        assert not wrong, f"(extensions, priorities) loaded vs written: {wrong}"
    finally:
        asterisk.cleanup()
