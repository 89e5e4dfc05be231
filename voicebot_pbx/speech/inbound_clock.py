"""A call's inbound audio kept on wall-clock time (pure: time is a parameter).

Some callers send no frames at all while they are silent: a Local channel whose other half
is in ``Wait()``, trunks and softphones with silence suppression (DTX). Turn-taking counts
silence in audio, so without frames a turn would never end and the caller would wait
forever. ``InboundClock`` tracks where the stream should be by now: once a frame is overdue
by more than the jitter allowance, the missing time counts as silence, in whole frames, and
the session feeds that silence to VAD and turn-taking as if it had arrived.

Frames that come late in a burst after a gap are appended as they are (nothing the caller
said is dropped); the clock never moves the stream back, so a burst only means the next
gap has to be that much longer before silence is filled in again. A sender whose clock runs
slow (every frame a little late) moves the clock's origin with it instead of being filled.
"""

from __future__ import annotations

FRAME_S = 0.02
# How late a frame may be before its time counts as silence. Frames over a loopback or LAN
# socket arrive within a few ms of their 20 ms tick; a caller who sends nothing is answered
# this much later than one who streams silence (plus up to one frame).
JITTER_S = 0.03


class InboundClock:
    def __init__(self, frame_s: float = FRAME_S, jitter_s: float = JITTER_S) -> None:
        self.frame_s = frame_s
        self.jitter_s = jitter_s
        self._origin_s: float | None = None  # wall time of stream position 0
        self.stream_s = 0.0  # audio so far, real and filled
        self.filled_s = 0.0  # of which silence filled in for missing frames

    def on_frame(self, at_s: float, duration_s: float) -> None:
        """A real frame of ``duration_s`` arrived at wall time ``at_s``."""
        self.stream_s += duration_s
        if self._origin_s is None:
            self._origin_s = at_s - self.stream_s
            return
        lateness_s = at_s - (self._origin_s + self.stream_s)
        if lateness_s > 0:
            # The sender is behind our clock (slow clock, or frames resuming after a gap
            # that was filled): follow it rather than fill what is still coming.
            self._origin_s += lateness_s

    def due_in_s(self, now_s: float) -> float | None:
        """Seconds until a frame's worth of silence would be missing (None before the
        first frame: a call that never sent audio has no turn to end)."""
        if self._origin_s is None:
            return None
        fill_at_s = self._origin_s + self.stream_s + self.jitter_s + self.frame_s
        return max(0.0, fill_at_s - now_s)

    def missing_s(self, now_s: float) -> float:
        """The silence to feed now, in whole frames (0.0 when nothing is overdue); counted
        as fed."""
        if self._origin_s is None:
            return 0.0
        behind_s = now_s - self.jitter_s - (self._origin_s + self.stream_s)
        frames = int(behind_s / self.frame_s + 1e-6)
        if frames <= 0:
            return 0.0
        fill_s = frames * self.frame_s
        self.stream_s += fill_s
        self.filled_s += fill_s
        return fill_s
