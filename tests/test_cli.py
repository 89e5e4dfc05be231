"""The command line: check-config reports config and clip problems."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.realpbx import free_port
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


def test_version_and_a_busy_port_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    import structlog

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("voicebot-pbx 0.")
    # Another process holds the health port: serve says so in one line and exits 2.
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    config = tmp_path / "v.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n[health]\nport = {port}\n')
    saved = structlog.get_config()
    try:
        assert main(["serve", "--config", str(config)]) == 2
    finally:
        structlog.configure(**saved)
        holder.close()
    err = capsys.readouterr().err
    assert "listen_failed" in err and str(port) in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "listen_failed" in line]) == 1


def test_a_config_needing_a_missing_extra_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """A production install has no extras (issue #22): a config that needs one gets one
    line naming the package and the extra, from check-config and from serve."""
    import importlib.util

    from voicebot_pbx import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "psycopg" else real(name, *a)
    )
    config = tmp_path / "voicebot.toml"
    config.write_text('[analytics]\nbackend = "postgres"\n')
    problems = cli.extras_problems(cli.load_config(config))
    assert problems == [
        "[analytics] backend = postgres needs the 'psycopg' package: "
        "pip install 'voicebot-pbx[postgres]'"
    ]
    import structlog

    saved = structlog.get_config()  # serve configures logging for the process
    try:
        assert cli.main(["serve", "--config", str(config)]) == 2
    finally:
        structlog.configure(**saved)
    captured = capfd.readouterr()
    out = captured.out + captured.err
    assert "package_missing" in out and "voicebot-pbx[postgres]" in out
    assert cli.extras_problems(cli.load_config(None)) == []  # the defaults need none


def test_call_without_a_bot_or_with_a_bad_wav_says_so_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``voicebot-pbx call`` is a newcomer's first try: no bot listening, a port that is not
    the bot's, or a WAV it cannot read each give one line on stderr and a non-zero exit."""
    import socket
    import threading

    import structlog

    wav = tmp_path / "q.wav"
    write_wav(wav, bytes(1600), 8000)
    saved = structlog.get_config()
    port_nobody_on = free_port()
    # Something listens but is not the bot: it accepts and closes at once.
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen()

    def accept_and_close() -> None:
        conn, _ = other.accept()
        conn.close()

    closer = threading.Thread(target=accept_and_close, daemon=True)
    closer.start()
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a wav file")
    try:
        refused = main(
            ["call", "--port", str(port_nobody_on), "--wav", str(wav), "--no-transcribe"]
        )
        err_refused = capsys.readouterr().err
        silent = main(
            ["call", "--port", str(other.getsockname()[1]), "--wav", str(wav), "--no-transcribe"]
        )
        err_silent = capsys.readouterr().err
        unreadable = main(["call", "--port", str(port_nobody_on), "--wav", str(bad)])
        err_unreadable = capsys.readouterr().err
    finally:
        structlog.configure(**saved)
        closer.join(timeout=5)
    other_port = other.getsockname()[1]
    other.close()
    assert refused == 1 and "connection refused" in err_refused
    assert str(port_nobody_on) in err_refused
    # Closed at once: the caller's frames meet a reset ("connection lost"), or, when it
    # closes before the first write, "sent no audio (closed the connection)".
    assert silent == 1 and str(other_port) in err_silent
    assert "connection lost" in err_silent or "closed the connection" in err_silent
    assert unreadable == 2 and f"cannot read {bad}" in err_unreadable
    for err in (err_refused, err_silent, err_unreadable):
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_originate_without_a_secret_or_an_asterisk_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import structlog

    port_nobody_on = free_port()
    config = tmp_path / "v.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        f"[ami]\nport = {port_nobody_on}\naction_timeout_s = 0.5\n",
        encoding="utf-8",
    )
    argv = ["originate", "--config", str(config), "--to", "Local/100@callers"]
    saved = structlog.get_config()
    try:
        monkeypatch.delenv("VOICEBOT_AMI_SECRET", raising=False)
        no_secret = main(argv)
        err_no_secret = capsys.readouterr().err
        monkeypatch.setenv("VOICEBOT_AMI_SECRET", "s3cret")
        no_asterisk = main(argv)
        err_no_asterisk = capsys.readouterr().err
        bad_var = main([*argv, "--var", "NOEQUALS"])
        err_bad_var = capsys.readouterr().err
    finally:
        structlog.configure(**saved)
    assert no_secret == 1 and "AMI secret is empty" in err_no_secret
    assert no_asterisk == 1 and f"no AMI login at 127.0.0.1:{port_nobody_on}" in err_no_asterisk
    assert "ConnectionRefusedError" in err_no_asterisk  # the last connect error, not a guess
    assert bad_var == 2 and "'NOEQUALS' is not NAME=VALUE" in err_bad_var
    for err in (err_no_secret, err_no_asterisk, err_bad_var):
        assert "Traceback" not in err
        assert len([line for line in err.splitlines() if "voicebot-pbx originate" in line]) == 1
    assert not (tmp_path / "state" / "outbound.jsonl").exists()
