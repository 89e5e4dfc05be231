"""Shared fixtures: real engines loaded once per test session, a live bot on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from voicebot_pbx.call.session import Shared
from voicebot_pbx.config import Config
from voicebot_pbx.pbx.audiosocket import AudioSocketServer
from voicebot_pbx.speech.engines import Engines

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RASA_TELEMETRY_ENABLED", "false")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Real-PBX tests (marker ``realpbx``) run whenever VOICEBOT_TEST_PBX is set (a broken
    PBX then fails them); without it they are skipped, all with the one reason."""
    from tests.realpbx import SKIP_REASON, pbx_folder

    if pbx_folder() is not None:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if "realpbx" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def engines() -> Iterator[Engines]:
    """The real models (silero, Whisper tiny.en, Piper joe), loaded once."""
    from voicebot_pbx.config import load_config
    from voicebot_pbx.ops.service import warm_stt
    from voicebot_pbx.speech.engines import load_engines

    loaded = load_engines(load_config())
    warm_stt(loaded)
    yield loaded
    loaded.close()


@pytest.fixture(scope="session")
def tts_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tts-cache")


@contextlib.asynccontextmanager
async def running_bot(
    engines: Engines,
    config: Config,
    cache_dir: Path,
    state_dir: Path,
) -> AsyncIterator[tuple[AudioSocketServer, Shared]]:
    """Start the AudioSocket server with a real session on a free port; yield (server, shared)."""
    from voicebot_pbx.call.prompts import ClipLibrary, TtsCache
    from voicebot_pbx.call.session import make_handler
    from voicebot_pbx.ops.records import JsonlRecorder
    from voicebot_pbx.ops.service import build_dialogue, warm_tts_cache

    dialogue, texts = build_dialogue(config)
    cache = TtsCache(engines.tts.voice_id, cache_dir)
    await asyncio.to_thread(warm_tts_cache, engines.tts, cache, texts)
    shared = Shared(
        config=config,
        engines=engines,
        dialogue=dialogue,
        tts_cache=cache,
        clips=ClipLibrary({}),
        recorder=JsonlRecorder(state_dir / "calls.jsonl"),
    )
    server = AudioSocketServer(config.server, make_handler(shared))
    await server.start()
    try:
        yield server, shared
    finally:
        await server.close()
