"""Call records: one per call, written even when the call ends badly.

A turn's latencies are measured on the bot's clock from the end of the caller's speech
(VAD end minus the configured silence). Records go to a JSON-lines file in the state
folder, written off the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(slots=True)
class TurnRecord:
    turn_id: int
    seq: int = 0  # position in the call (unique per call; turn_id repeats for DTMF turns)
    kind: str = "speech"  # speech | dtmf | greeting | backchannel | no_input | wrap_up
    transcript: str = ""
    stt_confidence: float | None = None
    intent: str | None = None
    confidence: float | None = None
    dialogue: str = ""
    reply_text: str = ""
    reply_source: str = ""  # cache | tts | clip | mixed
    fallbacks: list[str] = field(default_factory=list)
    barged_in: bool = False
    played_ms: float | None = None
    end_of_speech_to_stt_ms: float | None = None
    stt_to_dialogue_ms: float | None = None
    tts_first_audio_ms: float | None = None
    end_of_speech_to_first_frame_ms: float | None = None
    # Parts of stt_to_dialogue_ms, when the brain reports them (Rasa NLU; an LLM's first
    # complete sentence).
    nlu_ms: float | None = None
    llm_first_sentence_ms: float | None = None
    # Length of the whole reply's audio, so played_ms / reply_audio_ms is how much was heard.
    reply_audio_ms: float | None = None
    # Unix time the turn completed (the analytics recorder stamps it when the session doesn't).
    finished_at: float | None = None


@dataclass(slots=True)
class CallRecord:
    call_id: str
    pbx: str
    peer: str
    caller_id: str | None = None
    profile: str = "default"
    started_at: float = field(default_factory=time.time)
    # When the call was answered (AudioSocket: the dialplan answered before connecting, so
    # None means "at started_at").
    answered_at: float | None = None
    ended_at: float | None = None
    end_reason: str = ""
    transfer_target: str | None = None
    rate_hz: int = 8000
    turns: list[TurnRecord] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    recording_path: str | None = None  # the call's WAV (analytics.record_audio)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Recorder(Protocol):
    """Where call records go. ``turn_finished`` is called as each turn completes (so a crash
    loses at most the turn in progress); ``call_ended`` once at the end with the whole
    record (every turn again, final values win). Implementations do their I/O off the
    event loop and never raise into the call."""

    async def call_started(self, call: CallRecord) -> None: ...

    async def turn_finished(self, call: CallRecord, turn: TurnRecord) -> None: ...

    async def call_ended(self, call: CallRecord) -> None: ...


class JsonlRecorder:
    """One JSON line per finished call (``read_all``), plus ``kind: turn`` lines written as
    turns complete; thread-safe, writes via ``asyncio.to_thread``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def _write(self, line: str) -> None:
        with self._lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()

    async def call_started(self, call: CallRecord) -> None:
        return None

    async def turn_finished(self, call: CallRecord, turn: TurnRecord) -> None:
        line = {"kind": "turn", "call_id": call.call_id, **dataclasses.asdict(turn)}
        await asyncio.to_thread(self._write, json.dumps(line, ensure_ascii=False))

    async def call_ended(self, call: CallRecord) -> None:
        line = {"kind": "call", **call.to_json()}
        await asyncio.to_thread(self._write, json.dumps(line, ensure_ascii=False))

    def read_all(self) -> list[dict[str, Any]]:
        """The finished calls (``kind: call`` lines)."""
        if not self.path.exists():
            return []
        with self.path.open(encoding="utf-8") as handle:
            lines = [json.loads(line) for line in handle if line.strip()]
        return [line for line in lines if line.get("kind") == "call"]
