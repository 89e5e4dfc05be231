"""The command line: check-config reports config and clip problems."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicebot_pbx.audio import write_wav
from voicebot_pbx.cli import main


def test_check_config_prints_the_effective_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert '"port": 9092' in out and '"engine": "whisper"' in out


def test_check_config_names_an_unknown_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[server]\nprot = 1\n")
    assert main(["check-config", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "server.prot" in err and str(config) in err


def test_check_config_reports_missing_and_unreadable_clips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    write_wav(prompts / "hold.wav", bytes(3200), 16000)
    (prompts / "greeting.wav").write_bytes(b"not a wav file")
    config = tmp_path / "voicebot.toml"
    config.write_text(f'[prompts]\ndir = "{prompts}"\nclips = ["goodbye=missing.wav"]\n')
    assert main(["check-config", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "greeting" in err and "goodbye" in err and "hold" not in err
