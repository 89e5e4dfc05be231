"""The real-PBX test bed's start-up rule (no PBX needed): a PBX that exits at start fails the
test with its logs; one killed by SIGILL (a build for CPU instructions this machine lacks)
skips it, naming the reason."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.realpbx import PbxUnavailable, wait_ready


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
