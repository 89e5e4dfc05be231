"""Turn-latency benchmark: N concurrent simulated Asterisk calls against a real bot process.

For each concurrency level the callers (this process) talk to ``voicebot-pbx serve`` (a
separate process) over real sockets, in real time. Per turn it measures, on the PBX side of
the socket, end of caller speech -> first non-silent bot frame; per barge-in, caller onset
-> bot silent and stale frames; outbound frame gaps; the server's CPU and RSS.

    .venv/bin/python bench/bench_turns.py --levels 1 4 8 16 --turns 3
Writes bench/results/turns.json and bench/results/turns.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.speech import espeak_pcm, silence  # noqa: E402
from voicebot_pbx.config import SttConfig  # noqa: E402
from voicebot_pbx.pbx.caller import CallResult, Say, SimulatedCaller, Step  # noqa: E402

QUESTIONS = ["what are your opening hours", "where are you located", "what time do you open"]
LONG_QUESTION = "tell me about your energy plans"
LONG_REPLY = (
    "Our energy plans are explained on your annual statement. The standard plan has a daily "
    "standing charge and a unit rate for every kilowatt hour. The fixed plan keeps the unit "
    "rate the same for two years."
)

CONFIG = """
state_dir = "{state}"
[server]
port = {port}
max_calls = 64
[log]
format = "json"
[dialogue]
engine = "rules"
[[dialogue.rules]]
keywords = ["opening hours", "open", "opening", "hours"]
reply = "We are open Monday to Friday from eight am to six pm."
[[dialogue.rules]]
keywords = ["address", "located", "location", "where are you"]
reply = "You can find us at 12 Harbour Street, in the city centre."
[[dialogue.rules]]
keywords = ["energy", "plan", "plans"]
reply = "{long}"
"""


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def proc_stats(pid: int) -> tuple[float, float]:
    """(cpu seconds, rss MB) of a process from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu_s = (int(fields[11]) + int(fields[12])) / ticks
    rss_mb = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_mb = int(line.split()[1]) / 1024
    return cpu_s, rss_mb


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    workdir: Path, stt_settings: list[str], turn_settings: list[str] | None = None
) -> tuple[subprocess.Popen[bytes], int, Path]:
    """``stt_settings`` / ``turn_settings``: TOML lines for the server's [stt] / [turn]
    tables (else its defaults)."""
    port = free_port()
    config = workdir / "bench.toml"
    text = CONFIG.format(state=workdir / "state", port=port, long=LONG_REPLY)
    if stt_settings:
        text += "[stt]\n" + "".join(f"{line}\n" for line in stt_settings)
    if turn_settings:
        text += "[turn]\n" + "".join(f"{line}\n" for line in turn_settings)
    config.write_text(text)
    log_path = workdir / "server.log"
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/voicebot-pbx"), "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=log_path.open("wb"),
        env={**os.environ, "ORT_DISABLE_TELEMETRY": "1", "OMP_WAIT_POLICY": "PASSIVE"},
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if b"audiosocket_listening" in log_path.read_bytes():
            return proc, port, log_path
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


async def one_call(port: int, turns: int, index: int, barge: bool) -> CallResult:
    steps: list[Step] = []
    for turn in range(turns):
        text = QUESTIONS[(index + turn) % len(QUESTIONS)]
        steps.append(Say(silence(300) + espeak_pcm(text, 8000) + silence(100)))
    if barge:
        steps.append(Say(silence(200) + espeak_pcm(LONG_QUESTION, 8000)))
        steps.append(Say(espeak_pcm(QUESTIONS[0], 8000) + silence(100), barge_in_after_s=1.2))
    caller = SimulatedCaller("127.0.0.1", port, reply_gap_s=0.7, reply_timeout_s=20.0)
    # Stagger call starts so turns do not all end in the same frame.
    await asyncio.sleep(index * 0.37)
    return await caller.run(steps, hangup_after_s=0.3)


async def run_level(port: int, calls: int, turns: int) -> list[CallResult]:
    return list(await asyncio.gather(*(one_call(port, turns, i, barge=True) for i in range(calls))))


def server_side(lines: list[str]) -> dict[str, Any]:
    """From the server's JSON log: pacer stalls (late by more than a frame, re-anchored)
    and the bot's own per-turn latency figures (end of speech as the VAD saw it)."""
    stalls = 0
    stt_ms: list[float] = []
    barge: dict[str, list[float]] = {"onset_to_decision_ms": [], "lag_ms": []}
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "call_closed":
            stalls += int(event.get("stalls") or 0)
        if event.get("event") == "transcript" and event.get("stt_ms") is not None:
            stt_ms.append(float(event["stt_ms"]))
        if event.get("event") == "barge_in":
            for key, values in barge.items():
                if event.get(key) is not None:
                    values.append(float(event[key]))
    return {
        "server_pacer_stalls": stalls,
        "server_end_of_speech_to_transcript_ms_p50": percentile(stt_ms, 0.5),
        "server_end_of_speech_to_transcript_ms_p95": percentile(stt_ms, 0.95),
        # Where a barge-in's time goes inside the bot: caller audio from the VAD's onset
        # to the decision (stream time), and the event loop's delay in handling that frame.
        **{
            f"server_barge_in_{key}_p{q}": percentile(values, q / 100)
            for key, values in barge.items()
            for q in (50, 95)
        },
    }


def summarise(results: list[CallResult], turns: int) -> dict[str, Any]:
    latencies: list[float] = []
    barge_ms: list[float] = []
    stale = 0
    missing = 0
    gaps: list[float] = []
    for result in results:
        gaps.extend(result.gaps_ms())
        for timing in result.turns:
            if timing.step < turns:
                if timing.latency_ms is None:
                    missing += 1
                else:
                    latencies.append(timing.latency_ms)
            elif timing.step == turns + 1:
                if timing.barge_in_ms is not None:
                    barge_ms.append(timing.barge_in_ms)
                stale += timing.stale_frames
    return {
        "turns_measured": len(latencies),
        "turns_without_reply": missing,
        "latency_ms_p50": percentile(latencies, 0.5),
        "latency_ms_p95": percentile(latencies, 0.95),
        "latency_ms_mean": statistics.fmean(latencies) if latencies else None,
        "barge_in_ms_p50": percentile(barge_ms, 0.5),
        "barge_in_ms_p95": percentile(barge_ms, 0.95),
        "barge_ins_measured": len(barge_ms),
        "stale_frames": stale,
        "frame_gap_ms_p50": percentile(gaps, 0.5),
        "frame_gap_ms_p99": percentile(gaps, 0.99),
        "frame_gap_ms_max": max(gaps) if gaps else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/turns.json")
    parser.add_argument(
        "--stt-threads", type=int, help="the server's [stt] cpu_threads (default: its default)"
    )
    parser.add_argument(
        "--stt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an [stt] setting for the server, TOML syntax (e.g. max_batch=4); repeatable",
    )
    parser.add_argument(
        "--turn",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a [turn] setting for the server, TOML syntax (e.g. unfinished_max_silence_ms=0)",
    )
    parser.add_argument("--server-log", type=Path, help="keep a copy of the server's JSON log here")
    args = parser.parse_args()
    if args.stt_threads is not None:  # else the service's default
        args.stt.append(f"cpu_threads = {args.stt_threads}")
    with tempfile.TemporaryDirectory() as tmp:
        proc, port, _log = start_server(Path(tmp), args.stt, args.turn)
        try:
            time.sleep(1.0)
            _cpu0, idle_rss_mb = proc_stats(proc.pid)
            rows: list[dict[str, Any]] = []
            for calls in args.levels:
                cpu_before, _ = proc_stats(proc.pid)
                wall_before = time.monotonic()
                peak_rss = 0.0

                async def level(calls: int = calls) -> list[CallResult]:
                    task = asyncio.create_task(run_level(port, calls, args.turns))
                    nonlocal peak_rss
                    while not task.done():
                        peak_rss = max(peak_rss, proc_stats(proc.pid)[1])
                        await asyncio.sleep(0.5)
                    return await task

                log_size = _log.stat().st_size
                results = asyncio.run(level())
                time.sleep(0.5)
                server_lines = _log.read_bytes()[log_size:].decode(errors="replace").splitlines()
                cpu_after, _ = proc_stats(proc.pid)
                wall_s = time.monotonic() - wall_before
                row = {
                    "calls": calls,
                    **summarise(results, args.turns),
                    "server_cpu_percent": round(100 * (cpu_after - cpu_before) / wall_s, 1),
                    "server_cpu_s_per_call": round((cpu_after - cpu_before) / calls, 2),
                    "server_rss_idle_mb": round(idle_rss_mb, 1),
                    "server_rss_peak_mb": round(peak_rss, 1),
                    "rss_mb_per_added_call": round((peak_rss - idle_rss_mb) / calls, 1),
                    **server_side(server_lines),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
                time.sleep(1.0)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            if args.server_log is not None:
                shutil.copyfile(_log, args.server_log)
    stt_threads = args.stt_threads or SttConfig().cpu_threads
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "turns_per_call": args.turns,
                "stt_threads": stt_threads,
                "stt_settings": args.stt,
                "levels": rows,
            },
            indent=2,
        )
    )
    lines = [
        "| calls | turn p50 ms | turn p95 ms | no reply | barge-in p50 ms | stale | gap p99 ms "
        "| gap max ms | CPU % | CPU-s/call | RSS/added call MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(value: object) -> str:
        return f"{value:.0f}" if isinstance(value, float) else str(value)

    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                fmt(r[k])
                for k in (
                    "calls",
                    "latency_ms_p50",
                    "latency_ms_p95",
                    "turns_without_reply",
                    "barge_in_ms_p50",
                    "stale_frames",
                    "frame_gap_ms_p99",
                    "frame_gap_ms_max",
                    "server_cpu_percent",
                    "server_cpu_s_per_call",
                    "rss_mb_per_added_call",
                )
            )
            + " |"
        )
    table = "\n".join(lines)
    args.out.with_suffix(".md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
