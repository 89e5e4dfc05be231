"""Composition root: load models once, build the shared pieces, serve calls, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import structlog

from voicebot_pbx.config import Config
from voicebot_pbx.dialogue import Dialogue, RuleDialogue
from voicebot_pbx.engines import Engines, load_engines
from voicebot_pbx.prompts import ClipLibrary, TtsCache, clip_paths
from voicebot_pbx.records import JsonlRecorder
from voicebot_pbx.session import Shared, make_handler
from voicebot_pbx.transport.audiosocket import AudioSocketServer

if TYPE_CHECKING:
    from voicebot_pbx.nlu import RasaDialogue
    from voicebot_pbx.rasa_server import RasaServer

log = structlog.get_logger("voicebot_pbx.service")

WARM_RATES_HZ = (8000, 16000)


def build_dialogue(config: Config) -> tuple[Dialogue, list[str]]:
    """The configured brain and the fixed texts it can say (to warm the TTS cache)."""
    rules = RuleDialogue.from_config(config.dialogue)
    return rules, rules.static_texts() + fallback_texts(config)


def fallback_texts(config: Config) -> list[str]:
    """What the fallback paths say: cached at start-up so they play even if TTS fails."""
    f = config.fallbacks
    texts = [f.still_there, f.no_input_goodbye, f.clarify, f.apology, f.wrap_up]
    texts.append(f.give_up_transfer if f.give_up_target else f.give_up_goodbye)
    return [t for t in texts if t]


def warm_tts_cache(engines: Engines, cache: TtsCache, texts: list[str]) -> int:
    """Synthesize every static text at every call rate not yet cached. Blocking."""
    made = 0
    for text in dict.fromkeys(texts):
        for rate_hz in WARM_RATES_HZ:
            if cache.get(text, rate_hz) is None:
                cache.put(text, rate_hz, engines.tts.synthesize_all(text, rate_hz))
                made += 1
    return made


def warm_stt(engines: Engines) -> None:
    """One decode so the first caller does not pay for lazy initialisation."""
    stream = engines.stt.new_stream(8000)
    stream.accept(bytes(16000))
    stream.finish()
    stream.close()


async def build_shared(config: Config) -> Shared:
    started = time.perf_counter()
    engines = await asyncio.to_thread(load_engines, config)
    dialogue, texts = build_dialogue(config)
    state_dir = Path(config.state_dir)
    cache_dir = Path(config.tts.cache_dir) if config.tts.cache_dir else state_dir / "tts-cache"
    cache = TtsCache(engines.tts.voice_id, cache_dir)
    clips = ClipLibrary(clip_paths(config.prompts.dir, config.prompts.clips))
    for problem in clips.problems:
        log.warning("clip_unusable", problem=problem)
    made = await asyncio.to_thread(warm_tts_cache, engines, cache, texts)
    await asyncio.to_thread(warm_stt, engines)
    log.info(
        "ready_to_serve",
        startup_s=round(time.perf_counter() - started, 2),
        tts_cache_new=made,
        tts_cache_texts=len(texts),
    )
    return Shared(
        config=config,
        engines=engines,
        dialogue=dialogue,
        tts_cache=cache,
        clips=clips,
        recorder=JsonlRecorder(state_dir / "calls.jsonl"),
    )


def rasa_server_for(config: Config) -> RasaServer:
    """The managed Rasa server described by the config (not started)."""
    from voicebot_pbx.rasa_server import RasaServer, default_rasa_venv

    url = urlsplit(config.rasa.url)
    venv = Path(config.rasa.venv_dir) if config.rasa.venv_dir else default_rasa_venv()
    cache = Path(os.environ.get("VOICEBOT_CACHE") or Path(config.state_dir).parent)
    redis_url = os.environ.get(config.rasa.redis_url_env) or None
    return RasaServer(
        Path(config.rasa.project_dir),
        venv,
        host=url.hostname or "127.0.0.1",
        port=url.port or 5005,
        models_dir=cache / "rasa-models",
        redis_url=redis_url,
    )


async def start_rasa(shared: Shared, server: RasaServer | None, rasa: RasaDialogue) -> None:
    """Train/start the managed Rasa server (if any), then pre-synthesize its static
    responses. Calls are served by the rule dialogue until Rasa answers."""
    started = time.perf_counter()
    if server is not None:
        await asyncio.to_thread(server.ensure_trained)
        await server.start()
    texts = await rasa.static_responses()
    made = await asyncio.to_thread(warm_tts_cache, shared.engines, shared.tts_cache, texts)
    log.info(
        "rasa_ready",
        ready_s=round(time.perf_counter() - started, 2),
        responses=len(texts),
        tts_cache_new=made,
    )


async def _start_rasa_logged(shared: Shared, server: RasaServer | None, rasa: RasaDialogue) -> None:
    try:
        await start_rasa(shared, server, rasa)
    except Exception as exc:  # the bot keeps serving on the rule dialogue
        log.error("rasa_unavailable", error=f"{type(exc).__name__}: {exc}")


async def serve(
    config: Config, *, on_ready: Callable[[AudioSocketServer], None] | None = None
) -> None:
    shared = await build_shared(config)
    async with contextlib.AsyncExitStack() as stack:
        rasa: RasaDialogue | None = None
        rasa_server: RasaServer | None = None
        if config.dialogue.engine == "rasa":
            from voicebot_pbx.fallbacks import FallbackDialogue
            from voicebot_pbx.nlu import RasaDialogue

            rasa = RasaDialogue(config.rasa.url, timeout_s=config.rasa.timeout_s)
            stack.push_async_callback(rasa.aclose)
            shared.dialogue = FallbackDialogue(
                rasa, shared.dialogue, timeout_s=config.rasa.timeout_s
            )
            if config.rasa.manage:
                rasa_server = rasa_server_for(config)
                stack.push_async_callback(rasa_server.stop)
        server = AudioSocketServer(config.server, make_handler(shared))
        await server.start()
        stack.callback(shared.engines.close)
        stack.push_async_callback(server.close)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop.set)
        if on_ready is not None:
            on_ready(server)
        async with asyncio.TaskGroup() as group:
            rasa_task = (
                group.create_task(_start_rasa_logged(shared, rasa_server, rasa))
                if rasa is not None
                else None
            )
            await stop.wait()
            log.info("stopping", active_calls=len(server.calls))
            if rasa_task is not None:
                rasa_task.cancel()
