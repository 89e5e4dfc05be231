"""The one owner of a call's outgoing audio.

Producers ``enqueue`` PCM tagged with the generation they were started under; the pacer
(``run``) writes exactly one frame per tick against an absolute monotonic deadline, a
silence frame when nothing is queued. ``interrupt()`` is synchronous: it bumps the
generation and empties the queue, so no frame of an older reply can be written after it
returns (late producers are rejected at ``enqueue``).

The first audio queued while the line is silent starts 10 ms before its first audible
sample: a voice's own lead-in silence would only delay what the caller hears.

Markers let the session learn when a point of the queue reaches the wire (first frame of a
reply, end of a reply) without polling.

A transport whose PBX queues and re-times what it is sent (chan_websocket) sets
``send_ahead_s``: while there is audio to say, the pacer keeps that much of it sent beyond
the frame being played, so a late tick of a busy event loop is absorbed by the PBX's queue
instead of being heard as a gap. The queue's depth is reckoned on the pacer's clock (each
frame plays for one frame time from the later of now and the end of the previous one);
after a stall the missing depth is sent at once. ``pause()`` takes the frames sent but not
yet played back into the queue (the transport's flush drops them at the PBX), so a reply
resumed after a caller's cough goes on where the caller stopped hearing it.

Markers reached while audio before them is still sent ahead fire when it has been played.
When the PBX can say so (``mark_writer``: chan_websocket's ``MARK_MEDIA``, reported back as
``MEDIA_MARK_PROCESSED``), the speaker sends a mark in the stream at that point and the
marker fires when the PBX reports it (``mark_played``): a reply's end, its first audio and
what an interrupted reply got to are then what the caller heard by the PBX's own clock. A
mark not reported ``mark_grace_s`` after the pacer's clock says it was played fires on that
clock (counted in ``marks_unconfirmed``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from voicebot_pbx.audio import FRAME_MS, Reframer, frame_bytes, rms_dbfs, trim_leading_silence

log = structlog.get_logger("voicebot_pbx.pbx.speaker")

WriteFrame = Callable[[bytes, bool], Awaitable[None]]
"""Writes one frame to the wire: ``(pcm, is_silence)``."""


@dataclass(slots=True)
class Marker:
    """Fired (``callback(written_at_s)``) when the pacer reaches it in the queue."""

    callback: Callable[[float], None]
    generation: int
    # Fire with the first frame queued after it (the reply's first audio), not as soon as
    # the pacer reaches it: a reply still being synthesized has queued nothing yet.
    with_audio: bool = False
    # The id of the mark sent to the PBX for it (``Speaker.mark_writer``), until it fires.
    mark_id: str | None = None


class Speaker:
    def __init__(
        self,
        rate_hz: int,
        *,
        frame_ms: int = FRAME_MS,
        max_buffered_s: float = 60.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.frame_ms = frame_ms
        self._frame_s = frame_ms / 1000.0
        self._rate_hz = rate_hz
        self._frame_size = frame_bytes(rate_hz, frame_ms)
        self._silence = bytes(self._frame_size)
        self._queue: deque[bytes | Marker] = deque()
        self._queued_frames = 0
        self._reframer = Reframer(self._frame_size)
        self._generation = 0
        self._max_buffered_frames = int(max_buffered_s / self._frame_s)
        self._room = asyncio.Event()
        self._room.set()
        self._clock = clock
        self._paused = False
        # Called (synchronously) when queued audio is dropped or held back: ``interrupt()``
        # and ``pause()``. A transport whose PBX buffers ahead (chan_websocket) flushes it.
        self.on_flush: Callable[[], None] | None = None
        # Called with every frame written (silence too) and its time: call recording.
        self.tap: Callable[[bytes, float], None] | None = None
        self._accepted_bytes = 0
        # Levels of the last frames written (for echo gating on the inbound side).
        self._recent_dbfs: deque[float] = deque(maxlen=12)
        # The last ~360 ms written (silence too): the reference for echo detection (a 60 ms
        # caller stretch against echo delays up to ~300 ms).
        self._recent_frames: deque[bytes] = deque(maxlen=max(1, 360 // frame_ms))
        self.frames_written = 0
        self.audio_frames_written = 0
        self.stalls = 0
        self.last_audio_at_s: float | None = None
        # Audio kept sent ahead of the frame being played (0: paced, one frame per tick).
        self.send_ahead_s = 0.0
        # Sent ahead and not yet played at the PBX (send_ahead_s > 0 only): audio frames with
        # the time each ends playing, and markers reached meanwhile with the time playback
        # reaches them (they fire then, not when the pacer passed them).
        self._unplayed: deque[tuple[bytes | Marker, float]] = deque()
        self._played_until_s = 0.0  # when the last frame sent ends playing
        # Send-ahead with a PBX that reports marks: sends one (its id) in the stream, in
        # order with the frames; the marker then fires on ``mark_played``.
        self.mark_writer: Callable[[str], Awaitable[None]] | None = None
        self.mark_grace_s = 0.5
        self._mark_seq = 0
        self._marks_out: list[str] = []  # ids to send before the next frame
        self.marks_sent = 0
        self.marks_unconfirmed = 0

    # --- producer side (session) --------------------------------------------------

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def rate_hz(self) -> int:
        return self._rate_hz

    @property
    def busy(self) -> bool:
        """True while audio (not silence) is queued, or sent ahead and not yet played."""
        if self._queued_frames > 0 or self._reframer.pending_bytes > 0:
            return True
        return bool(self._unplayed) and self._played_until_s > self._now()

    @property
    def buffered_s(self) -> float:
        """Audio still to be heard: queued here, and sent ahead but not yet played."""
        queued_s = self._queued_frames * self._frame_s
        if not self._unplayed:
            return queued_s
        return queued_s + max(0.0, self._played_until_s - self._now())

    def set_rate(self, rate_hz: int) -> None:
        """Change the outbound rate (only before any audio is queued)."""
        if rate_hz == self._rate_hz:
            return
        if self.busy:
            raise RuntimeError("cannot change the rate while audio is queued")
        self._rate_hz = rate_hz
        self._frame_size = frame_bytes(rate_hz, self.frame_ms)
        self._silence = bytes(self._frame_size)
        self._reframer = Reframer(self._frame_size)

    @property
    def recent_peak_dbfs(self) -> float:
        """Loudest of the last ~240 ms of frames written (-120 when silent)."""
        return max(self._recent_dbfs, default=-120.0)

    @property
    def recent_output(self) -> bytes:
        """The last ~360 ms of frames written, oldest first (silence included)."""
        return b"".join(self._recent_frames)

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        """Go silent from the next frame but keep the queue (the caller may only be saying
        "uh-huh"): ``resume()`` continues where it stopped, ``interrupt()`` drops it. Audio
        sent ahead and not yet played goes back to the front of the queue (the flush drops
        it at the PBX)."""
        self._paused = True
        if self._unplayed:
            now_s = self._now()
            self._play_until(now_s, settle=True)
            # The frame playing now was heard; the rest (and markers between) go back.
            back = [
                item
                for item, at_s in self._unplayed
                if isinstance(item, Marker) or at_s - self._frame_s >= now_s
            ]
            for item in back:
                if isinstance(item, Marker):
                    item.mark_id = None  # the flush drops its mark; a new one goes with it
            self._marks_out.clear()
            self._unplayed.clear()
            self._played_until_s = now_s
            self._queue.extendleft(reversed(back))
            self._queued_frames += sum(not isinstance(item, Marker) for item in back)
        if self.on_flush is not None:
            self.on_flush()

    def resume(self) -> None:
        self._paused = False

    def interrupt(self) -> int:
        """Stop at once: drop everything queued; returns the new generation."""
        self._paused = False
        self._generation += 1
        self._queue.clear()
        self._queued_frames = 0
        self._unplayed.clear()
        self._marks_out.clear()
        self._played_until_s = 0.0
        self._reframer = Reframer(self._frame_size)
        self._room.set()
        if self.on_flush is not None:
            self.on_flush()
        return self._generation

    @property
    def queued_audio_s(self) -> float:
        """Seconds of audio ever accepted by ``enqueue`` (a running total)."""
        return self._accepted_bytes / (2 * self._rate_hz)

    def enqueue(self, pcm: bytes, generation: int, *, trim_lead_in: bool = False) -> bool:
        """Queue PCM at the call's rate; False (nothing queued) if ``generation`` is stale.

        ``trim_lead_in`` is for a whole piece of speech (a sentence, a clip): if the line is
        silent now, its leading near-silence is cut to 10 ms (Piper starts each sentence with
        40-60 ms of it, dead air before every reply). Audio streamed in pieces (an echo, a
        relay) leaves it off: a piece that happens to start quiet is not a lead-in."""
        if generation != self._generation:
            return False
        if trim_lead_in and not self.busy:
            pcm = trim_leading_silence(pcm, self._rate_hz)
        self._accepted_bytes += len(pcm)
        for frame in self._reframer.feed(pcm):
            self._queue.append(frame)
            self._queued_frames += 1
        if self._queued_frames >= self._max_buffered_frames:
            self._room.clear()
        return True

    def end_segment(self, generation: int) -> bool:
        """Pad the remainder of the current segment to a whole frame."""
        if generation != self._generation:
            return False
        tail = self._reframer.flush()
        if tail:
            self._queue.append(tail)
            self._queued_frames += 1
        return True

    def mark(
        self, callback: Callable[[float], None], generation: int, *, with_audio: bool = False
    ) -> bool:
        """``callback(written_at_s)`` when the pacer reaches this point of the queue; with
        ``with_audio``, when it writes the first frame queued after it (or reaches a later
        marker with no audio between)."""
        if generation != self._generation:
            return False
        self.end_segment(generation)
        self._queue.append(Marker(callback, generation, with_audio))
        return True

    async def wait_for_room(self) -> None:
        await self._room.wait()

    # --- pacer ---------------------------------------------------------------------

    def _next_frame(self, now_s: float) -> tuple[bytes, bool]:
        if self._paused:
            return self._silence, True
        while self._queue:
            item = self._queue.popleft()
            if isinstance(item, Marker):
                if item.with_audio and not self._queue and item.generation == self._generation:
                    self._queue.appendleft(item)  # its audio is not queued yet
                    return self._silence, True
                if self.send_ahead_s > 0 and self._played_until_s > now_s:
                    # Audio before it is still in the PBX's queue: fire when it is played
                    # (when the PBX reports the mark sent here, if it can).
                    if self.mark_writer is not None and item.generation == self._generation:
                        self._mark_seq += 1
                        item.mark_id = f"m{self._mark_seq}"
                        self._marks_out.append(item.mark_id)
                    self._unplayed.append((item, self._played_until_s))
                else:
                    self._fire(item, now_s)  # an older generation's marker is dropped
                continue
            self._queued_frames -= 1
            if self._queued_frames < self._max_buffered_frames:
                self._room.set()
            return item, False
        return self._silence, True

    def _now(self) -> float:
        return (self._clock or asyncio.get_running_loop().time)()

    def _fire(self, marker: Marker, at_s: float) -> None:
        if marker.generation != self._generation:
            return
        try:
            marker.callback(at_s)
        except Exception:
            # A session bug must not stop the pacer: the call would go silent and Asterisk
            # hangs up after 2 s without frames.
            log.exception("marker_callback_failed")

    def _play_until(self, now_s: float, *, settle: bool = False) -> None:
        """Forget what the PBX has played by ``now_s`` (the pacer's clock); fire the markers
        it reached. A marker whose mark the PBX will report waits for that, up to
        ``mark_grace_s`` (``settle``: not at all; a pause's flush drops the mark)."""
        while self._unplayed and self._unplayed[0][1] <= now_s:
            item, at_s = self._unplayed[0]
            if isinstance(item, Marker) and item.mark_id is not None:
                if not settle and now_s < at_s + self.mark_grace_s:
                    break  # the PBX says when
                if not settle:
                    self.marks_unconfirmed += 1
                item.mark_id = None
            self._unplayed.popleft()
            if isinstance(item, Marker):
                self._fire(item, at_s)

    def mark_played(self, mark_id: str, at_s: float) -> None:
        """The PBX reports the mark ``mark_id`` reached: everything sent before it has been
        played. Its marker (and any earlier one) fires with ``at_s``; an id no marker waits
        for (its mark was flushed, or the clock fired it already) is ignored."""
        if not any(
            isinstance(item, Marker) and item.mark_id == mark_id for item, _ in self._unplayed
        ):
            return
        while self._unplayed:
            item, _ = self._unplayed.popleft()
            if isinstance(item, Marker):
                reached = item.mark_id == mark_id
                item.mark_id = None
                self._fire(item, at_s)
                if reached:
                    return

    async def _send_marks(self) -> None:
        """The marks reached since the last frame, before the next one."""
        while self._marks_out and self.mark_writer is not None:
            mark_id = self._marks_out.pop(0)
            self.marks_sent += 1
            await self.mark_writer(mark_id)

    def _ahead_s(self, now_s: float) -> float:
        """Audio sent beyond the frame playing at ``now_s`` (send-ahead only)."""
        self._play_until(now_s)
        return max(0.0, self._played_until_s - now_s - self._frame_s)

    async def _write(self, write: WriteFrame, frame: bytes, is_silence: bool, now_s: float) -> None:
        await write(frame, is_silence)
        if self.tap is not None:
            self.tap(frame, now_s)
        self._recent_dbfs.append(-120.0 if is_silence else rms_dbfs(frame))
        self._recent_frames.append(frame)
        self.frames_written += 1
        if not is_silence:
            self.audio_frames_written += 1
            # When the frame starts playing: now, or after what was sent ahead of it.
            start_s = max(now_s, self._played_until_s)
            self.last_audio_at_s = start_s
            if self.send_ahead_s > 0:
                self._played_until_s = start_s + self._frame_s
                self._unplayed.append((frame, self._played_until_s))

    async def run(self, write: WriteFrame) -> None:
        """Write one frame per tick until cancelled. Never bursts to catch up, except to
        keep ``send_ahead_s`` of audio sent ahead."""
        loop = asyncio.get_running_loop()
        clock = self._clock or loop.time
        origin_s = clock()
        tick = 0
        while True:
            deadline_s = origin_s + tick * self._frame_s
            delay_s = deadline_s - clock()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            # Judge lateness after the sleep too: the process may have been descheduled
            # while waiting. Up to a frame late: write now and stay on the grid (at most two
            # frames close together, the rate stays 50/s). More: a stall; re-anchor here
            # instead of bursting the missed frames.
            now_s = clock()
            if now_s - deadline_s > self._frame_s:
                self.stalls += 1
                origin_s = now_s
                tick = 0
            if self.send_ahead_s > 0 and self._ahead_s(now_s) > self.send_ahead_s + 1e-9:
                tick += 1  # the PBX is still playing what was sent ahead
                continue
            frame, is_silence = self._next_frame(now_s)
            await self._send_marks()
            await self._write(write, frame, is_silence, clock())
            while (
                not is_silence
                and self.send_ahead_s > 0
                and self._ahead_s(clock()) < self.send_ahead_s - 1e-9
            ):
                frame, is_silence = self._next_frame(now_s)
                await self._send_marks()
                if is_silence:
                    break  # nothing more to say yet: no silence is sent ahead
                await self._write(write, frame, is_silence, clock())
            tick += 1
