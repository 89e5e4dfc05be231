"""AudioSocket transport benchmark: N concurrent simulated calls against the real server.

The callers (``SimulatedCaller``: UUID first, 20 ms real-time frames, EOF hang-up, as
Asterisk does) run in a **separate process** from the server, so the figures include real
socket scheduling between two processes. Measured at the caller side of each socket:
outbound frame gaps (p50/p99/max per call and overall), bursts (3 frames within 3 ms) and
frames received against elapsed / 20 ms. Measured in the server process: CPU (% of one core,
``time.process_time`` over the calls' wall time) and RSS (``/proc``).

    python bench/bench_transport.py                       # 16 calls, 20 s, echo responder
    python bench/bench_transport.py --calls 32 --seconds 30 --responder silence
    python bench/bench_transport.py --connect 127.0.0.1:9092 --server-pid 1234
                                                          # an already running server

Writes JSON to ``bench/results/transport.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from voicebot_pbx.config import ServerConfig
from voicebot_pbx.pbx.audiosocket import AudioSocketCall, AudioSocketServer
from voicebot_pbx.pbx.caller import Pause, Say, SimulatedCaller
from voicebot_pbx.pbx.media import AudioIn, CallEnded, CallMedia

FRAME_S = 0.02
SCRIPT = Path(__file__).resolve()
DEFAULT_OUT = SCRIPT.parent / "results" / "transport.json"


# --- statistics ---------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100.0 * (len(sorted_values) - 1))))
    return sorted_values[index]


def bursts(times: list[float], run_frames: int = 3, within_s: float = 0.003) -> int:
    """Runs of ``run_frames`` consecutive frames that arrived within ``within_s``."""
    return sum(
        1
        for i in range(len(times) - run_frames + 1)
        if times[i + run_frames - 1] - times[i] < within_s
    )


def gap_summary(gaps_ms: list[float]) -> dict[str, float]:
    ordered = sorted(gaps_ms)
    return {
        "p50_ms": round(statistics.median(ordered), 3) if ordered else float("nan"),
        "p99_ms": round(percentile(ordered, 99), 3),
        "max_ms": round(ordered[-1], 3) if ordered else float("nan"),
        "gaps": len(ordered),
    }


# --- the server side ----------------------------------------------------------------------------


@dataclass
class ServerStats:
    stalls: list[int] = field(default_factory=list)
    frames_out: list[int] = field(default_factory=list)
    end_reasons: list[str] = field(default_factory=list)


def trace_server_writes(trace: dict[str, list[float]]) -> None:
    """Record when the server's pacer hands each frame to the socket (in-process only), to
    tell the pacer's own timing apart from socket and caller-process scheduling."""
    original = AudioSocketCall.write_frame

    async def write_frame(self: AudioSocketCall, pcm: bytes, is_silence: bool) -> None:
        if not self.closed:
            trace.setdefault(self.call_id, []).append(time.monotonic())
        await original(self, pcm, is_silence)

    AudioSocketCall.write_frame = write_frame  # type: ignore[method-assign]


def make_responder(kind: str, stats: ServerStats) -> Any:
    async def respond(call: CallMedia) -> None:
        while True:
            event = await call.inbound.get()
            if isinstance(event, CallEnded):
                stats.end_reasons.append(event.reason)
                break
            if kind == "echo" and isinstance(event, AudioIn):
                call.speaker.enqueue(event.pcm, call.speaker.generation)
        stats.stalls.append(call.speaker.stalls)
        stats.frames_out.append(call.speaker.frames_written)

    return respond


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def proc_rss_mb(pid: int | str = "self") -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024.0
    return values.get("VmRSS", float("nan")), values.get("VmHWM", float("nan"))


# --- the caller side (a separate process) -------------------------------------------------------


def caller_steps(responder: str, seconds: float, rate_hz: int) -> list[Any]:
    if responder == "silence":
        return [Pause(seconds)]
    # Echo: 1 s of a 440 Hz tone, 1 s of silence, repeated (so the bot has audio to send).
    t = np.arange(rate_hz) / rate_hz
    tone = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2").tobytes()
    pattern = tone + bytes(len(tone))
    repeats = max(1, int(seconds // 2))
    rest = seconds - 2 * repeats
    return [Say(pattern * repeats), Pause(max(0.0, rest))]


async def run_callers(args: argparse.Namespace) -> dict[str, Any]:
    host, port = args.connect.rsplit(":", 1)
    host = host.strip("[]")
    rng = random.Random(args.seed)
    steps = caller_steps(args.responder, args.seconds, args.rate)

    async def one(index: int) -> dict[str, Any]:
        await asyncio.sleep(rng.uniform(0.0, args.ramp_s))  # random phases, as real calls
        caller = SimulatedCaller(
            host,
            int(port),
            rate_hz=args.rate,
            greeting_timeout_s=0.0,
            reply_timeout_s=0.5,
            reply_gap_s=0.3,
        )
        started = time.monotonic()
        result = await caller.run(steps)
        times = [t for t, _ in result.frames]
        gaps_ms = [(b - a) * 1000.0 for a, b in zip(times, times[1:], strict=False)]
        span_s = times[-1] - times[0] if len(times) > 1 else 0.0
        worst = max(range(len(gaps_ms)), key=gaps_ms.__getitem__) if gaps_ms else 0
        return {
            "call_id": result.call_id,
            "max_gap_at_s": round(times[worst], 3) if gaps_ms else None,
            "index": index,
            "duration_s": round(time.monotonic() - started, 3),
            "frames": len(times),
            "expected_frames": round(span_s / FRAME_S + 1, 1),
            "voiced_frames": sum(1 for _, voiced in result.frames if voiced),
            "bursts": bursts(times),
            "bad_frames": result.bad_frames,
            "closed_by_bot": result.closed_by_bot,
            **gap_summary(gaps_ms),
            "_gaps_ms": gaps_ms,
        }

    cpu0, wall0 = time.process_time(), time.monotonic()
    calls = await asyncio.gather(*(one(i) for i in range(args.calls)))
    cpu_s, wall_s = time.process_time() - cpu0, time.monotonic() - wall0
    return {
        "calls": calls,
        "cpu_percent": round(100.0 * cpu_s / wall_s, 1),
        "rss_mb": round(proc_rss_mb()[0], 1),
    }


# --- orchestration ------------------------------------------------------------------------------


async def spawn_callers(args: argparse.Namespace, connect: str) -> dict[str, Any]:
    command = [
        sys.executable,
        str(SCRIPT),
        "--role",
        "callers",
        "--connect",
        connect,
        "--calls",
        str(args.calls),
        "--seconds",
        str(args.seconds),
        "--responder",
        args.responder,
        "--rate",
        str(args.rate),
        "--ramp-s",
        str(args.ramp_s),
        "--seed",
        str(args.seed),
    ]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"caller process failed ({process.returncode}):\n{stderr.decode()}")
    result: dict[str, Any] = json.loads(stdout)
    return result


async def sample_rss(pid: int | str, peak: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], proc_rss_mb(pid)[0])
        try:
            async with asyncio.timeout(0.5):
                await stop.wait()
        except TimeoutError:
            pass


async def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    stats = ServerStats()
    sent: dict[str, list[float]] = {}
    server: AudioSocketServer | None = None
    if args.connect:
        connect = args.connect
        pid: int | str | None = args.server_pid
    else:
        trace_server_writes(sent)
        config = ServerConfig(host="127.0.0.1", port=0, max_calls=max(args.calls, 1))
        server = AudioSocketServer(config, make_responder(args.responder, stats))
        await server.start()
        connect = f"127.0.0.1:{server.port}"
        pid = "self"

    rss_peak = [0.0]
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(pid, rss_peak, stop)) if pid else None
    rss_before = proc_rss_mb(pid)[0] if pid else float("nan")
    cpu0 = (time.process_time() if pid == "self" else proc_cpu_s(int(pid))) if pid else 0.0
    wall0 = time.monotonic()
    try:
        callers = await spawn_callers(args, connect)
    finally:
        wall_s = time.monotonic() - wall0
        cpu_s = (
            (time.process_time() if pid == "self" else proc_cpu_s(int(pid))) - cpu0 if pid else 0.0
        )
        stop.set()
        if sampler is not None:
            await sampler
        if server is not None:
            await server.close()

    all_gaps: list[float] = []
    per_call = []
    for call in sorted(callers["calls"], key=lambda c: c["index"]):
        all_gaps += call.pop("_gaps_ms")
        per_call.append(call)
    overall = {
        **gap_summary(all_gaps),
        "bursts": sum(c["bursts"] for c in per_call),
        "frames": sum(c["frames"] for c in per_call),
        "expected_frames": round(sum(c["expected_frames"] for c in per_call), 1),
        "bad_frames": sum(c["bad_frames"] for c in per_call),
        "worst_call_p99_ms": max(c["p99_ms"] for c in per_call),
        "worst_call_max_ms": max(c["max_ms"] for c in per_call),
    }
    server_info: dict[str, Any] = {
        "where": "external" if args.connect else "in-process (callers in a separate process)",
        "cpu_percent_of_one_core": round(100.0 * cpu_s / wall_s, 1) if pid else None,
        "rss_mb_before": round(rss_before, 1) if pid else None,
        "rss_mb_peak": round(rss_peak[0], 1) if pid else None,
    }
    if server is not None:
        sent_gaps: list[float] = []
        for call in per_call:
            times = sent.get(call["call_id"], [])
            gaps = [(b - a) * 1000.0 for a, b in zip(times, times[1:], strict=False)]
            call["sent"] = {**gap_summary(gaps), "bursts": bursts(times)}
            sent_gaps += gaps
        server_info |= {
            "sent": {
                **gap_summary(sent_gaps),
                "bursts": sum(c["sent"]["bursts"] for c in per_call),
                "note": "when the pacer wrote each frame to the socket (server clock)",
            },
            "pacer_stalls_total": sum(stats.stalls),
            "frames_written_total": sum(stats.frames_out),
            "end_reasons": sorted(set(stats.end_reasons)),
        }
    return {
        "benchmark": "audiosocket_transport",
        "settings": {
            "calls": args.calls,
            "seconds": args.seconds,
            "responder": args.responder,
            "rate_hz": args.rate,
            "ramp_s": args.ramp_s,
        },
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "platform": platform.platform(),
        },
        "wall_s": round(wall_s, 2),
        "overall": overall,
        "server": server_info,
        "callers_process": {
            "cpu_percent_of_one_core": callers["cpu_percent"],
            "rss_mb": callers["rss_mb"],
        },
        "calls": per_call,
    }


def print_report(report: dict[str, Any]) -> None:
    s = report["settings"]
    srv = report["server"]
    print(
        f"AudioSocket transport: {s['calls']} calls x {s['seconds']} s, "
        f"responder={s['responder']}, {s['rate_hz']} Hz ({srv['where']})"
    )
    print("received = frame arrival at the caller process; sent = pacer write (server clock)")
    head = f"{'call':>4} {'frames':>7} {'expect':>7} | received p50/p99/max ms  burst"
    print(head + (" | sent p50/p99/max ms  burst" if "sent" in srv else ""))

    def row(label: str, c: dict[str, Any], sent: dict[str, Any] | None) -> str:
        text = (
            f"{label:>4} {c['frames']:>7} {c['expected_frames']:>7.0f} | "
            f"{c['p50_ms']:>7.2f} {c['p99_ms']:>7.2f} {c['max_ms']:>7.2f} {c['bursts']:>5}"
        )
        if sent is not None:
            text += (
                f" | {sent['p50_ms']:>7.2f} {sent['p99_ms']:>7.2f} {sent['max_ms']:>7.2f}"
                f" {sent['bursts']:>5}"
            )
        return text

    for c in report["calls"]:
        print(row(str(c["index"]), c, c.get("sent")))
    print(row("all", report["overall"], srv.get("sent")))
    print(
        f"server: CPU {srv['cpu_percent_of_one_core']}% of one core, RSS {srv['rss_mb_peak']} MiB "
        f"peak ({srv['rss_mb_before']} MiB before); pacer stalls {srv.get('pacer_stalls_total')}"
    )
    cp = report["callers_process"]
    print(f"callers process: CPU {cp['cpu_percent_of_one_core']}%, RSS {cp['rss_mb']} MiB")
    print(f"load average after: {report['machine']['loadavg_after']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--responder", choices=("echo", "silence"), default="echo")
    parser.add_argument("--rate", type=int, choices=(8000, 16000), default=8000)
    parser.add_argument("--ramp-s", type=float, default=1.0, help="spread call starts over this")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--connect", default="", help="HOST:PORT of a running server")
    parser.add_argument("--server-pid", type=int, default=None, help="its pid, for CPU/RSS")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--role", choices=("main", "callers"), default="main", help=argparse.SUPPRESS
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "callers":
        json.dump(asyncio.run(run_callers(args)), sys.stdout)
        return 0
    # Per-call info lines would only add load; warnings (bad input, stalls) still show.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    report = asyncio.run(orchestrate(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print_report(report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
