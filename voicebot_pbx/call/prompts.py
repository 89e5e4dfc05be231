"""What the bot says without waiting for synthesis: a TTS cache and pre-recorded clips.

``TtsCache`` keys audio by voice + settings + rate + text, keeps it in memory (LRU, bounded
by bytes) and on disk (so a restart does not re-synthesize), and is warmed at start-up
with every static reply, so a cached reply starts playing within one frame.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import wave
from collections import OrderedDict
from pathlib import Path

import structlog

from voicebot_pbx.audio import read_wav, resample

log = structlog.get_logger("voicebot_pbx.call.prompts")


def normalize_text(text: str) -> str:
    return " ".join(text.split())


class TtsCache:
    def __init__(self, voice_id: str, cache_dir: Path | None, max_memory_bytes: int = 64 << 20):
        self.voice_id = voice_id
        self.cache_dir = cache_dir
        self.max_memory_bytes = max_memory_bytes
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._memory_bytes = 0
        self.hits = 0
        self.misses = 0
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)

    def key(self, text: str, rate_hz: int) -> str:
        material = f"{self.voice_id}\n{rate_hz}\n{normalize_text(text)}".encode()
        return hashlib.sha256(material).hexdigest()

    def get(self, text: str, rate_hz: int) -> bytes | None:
        key = self.key(text, rate_hz)
        pcm = self._memory.get(key)
        if pcm is not None:
            self._memory.move_to_end(key)
            self.hits += 1
            return pcm
        if self.cache_dir is not None:
            file = self.cache_dir / f"{key}.pcm"
            try:
                pcm = file.read_bytes()
            except OSError:
                pcm = None
            if pcm:
                self._remember(key, pcm)
                self.hits += 1
                return pcm
        self.misses += 1
        return None

    def put(self, text: str, rate_hz: int, pcm: bytes, *, persist: bool = True) -> None:
        """Keep ``pcm`` for ``text``. ``persist=False``: in memory only, for replies said
        during calls, which may hold a caller's data (an account number, a balance) that
        must not outlive the process on disk; the static texts warmed at start-up persist."""
        if not pcm:
            return
        key = self.key(text, rate_hz)
        self._remember(key, pcm)
        if persist and self.cache_dir is not None:
            self._write_atomic(self.cache_dir / f"{key}.pcm", pcm)

    def _remember(self, key: str, pcm: bytes) -> None:
        old = self._memory.pop(key, None)
        if old is not None:
            self._memory_bytes -= len(old)
        self._memory[key] = pcm
        self._memory_bytes += len(pcm)
        while self._memory_bytes > self.max_memory_bytes and len(self._memory) > 1:
            _key, dropped = self._memory.popitem(last=False)
            self._memory_bytes -= len(dropped)

    @staticmethod
    def _write_atomic(path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("tts_cache_write_failed", path=str(path), error=str(exc))
            Path(tmp).unlink(missing_ok=True)


def clip_paths(directory: str, entries: tuple[str, ...]) -> dict[str, Path]:
    """Clip name -> WAV path from a prompts folder and "name=path" entries."""
    base = Path(directory) if directory else Path.cwd()
    paths: dict[str, Path] = {}
    if directory and base.is_dir():
        paths.update({wav.stem: wav for wav in sorted(base.glob("*.wav"))})
    for entry in entries:
        name, _sep, path = entry.partition("=")
        candidate = Path(path.strip())
        paths[name.strip()] = candidate if candidate.is_absolute() else base / candidate
    return paths


class ClipLibrary:
    """Pre-recorded WAV clips (any rate) by name, converted once per call rate.

    Unreadable or missing files are collected in ``problems`` (``check-config`` prints
    them) instead of failing the service."""

    def __init__(self, clips: dict[str, Path]) -> None:
        self._sources: dict[str, tuple[bytes, int]] = {}
        self._converted: dict[tuple[str, int], bytes] = {}
        self.problems: list[str] = []
        for name, path in clips.items():
            try:
                self._sources[name] = read_wav(path)
            except (OSError, ValueError, EOFError, wave.Error) as exc:
                self.problems.append(f"clip {name!r}: {path}: {exc}")

    def names(self) -> list[str]:
        return sorted(self._sources)

    def get(self, name: str, rate_hz: int) -> bytes | None:
        key = (name, rate_hz)
        pcm = self._converted.get(key)
        if pcm is None:
            source = self._sources.get(name)
            if source is None:
                return None
            pcm = resample(source[0], source[1], rate_hz)
            self._converted[key] = pcm
        return pcm
