"""The real-PBX test bed's start-up rule (no PBX needed): a PBX that exits at start fails the
test with its logs; one killed by SIGILL (a build for CPU instructions this machine lacks)
skips it, naming the reason; the shared Asterisk's resampler is loaded only on a CPU that
runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.realpbx import PbxUnavailable, wait_ready
from tests.realpbx.asterisk import CONF_DIR, resampler


def _exits(code: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", code])
    proc.wait(timeout=30)
    return proc


def test_a_pbx_that_exits_at_start_fails_with_its_logs() -> None:
    proc = _exits("raise SystemExit(3)")
    with pytest.raises(PbxUnavailable, match="asterisk exited at start: --- console.log"):
        wait_ready(proc, "asterisk", lambda: False, 5.0, lambda: "--- console.log\nboom")


def test_a_pbx_killed_by_an_illegal_instruction_skips_naming_the_cpu() -> None:
    proc = _exits("import os, signal; os.kill(os.getpid(), signal.SIGILL)")
    with pytest.raises(pytest.skip.Exception, match="died of SIGILL .* AVX-512 flags"):
        wait_ready(proc, "asterisk", lambda: False, 5.0, lambda: "")


def test_the_8_16_khz_translation_is_loaded_only_where_the_cpu_runs_it() -> None:
    """The shared build's codec_resample.so uses AVX-VNNI (VEX) instructions: without the
    flag Asterisk translates 8 <-> 16 kHz through G.722 instead of dying mid-call."""
    assert resampler(frozenset({"avx2", "avx512_vnni", "avx_vnni"})) == "codec_resample.so"
    assert resampler(frozenset({"avx2", "avx512f", "avx512_vnni"})) == "codec_g722.so"
    assert "load = @RESAMPLER@" in (CONF_DIR / "modules.conf").read_text()
