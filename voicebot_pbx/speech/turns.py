"""Turn-taking, pure: VAD probabilities and playback state in, turn actions out.

No asyncio and no clock: every call takes the time (seconds) as a parameter, so tests can
drive whole conversations on a scripted timeline. The session executes the actions.

* ``UtteranceStarted``: the caller began a turn; start feeding STT (with look-back audio).
* ``UtteranceEnded``: the caller finished; finalise STT, then answer.
* ``BargeIn``: the caller talks over the bot long enough: silence the bot now.
* ``BargeInOnset`` / ``BargeInCancelled``: with ``vad.barge_in_pause_at_onset``, the first
  window of caller speech over the bot (the bot may pause at once), and the end of that
  sound before it became a barge-in (the bot goes on). With ``vad.barge_in_level_db`` the
  first voiced window of a sound over the line's noise floor is that onset (``LevelOnset``:
  before the VAD hears speech); the VAD must then hear speech within
  ``barge_in_level_confirm_ms`` (or before the sound stops), else it is cancelled.

While the bot is speaking the VAD threshold is raised (echo gating) and a barge-in needs
``barge_in_min_speech_ms`` of caller speech, so a cough or the line echo of the bot's own
voice does not cut it off.
"""

from __future__ import annotations

from dataclasses import dataclass

from voicebot_pbx.config import VadConfig
from voicebot_pbx.speech.level_onset import LevelOnset, voicing
from voicebot_pbx.speech.vad import WINDOW_MS, Endpointer, SpeechEnded, SpeechStarted

# A transcript ending in one of these is probably not the end of what the caller says:
# articles, conjunctions, prepositions, possessives, auxiliaries, subject pronouns, fillers.
# Words a finished question often ends in are not here ("... please", "... my account",
# "where can I find you", "how do I pay it"): the list is the model's tie-breaker and
# held such turns for the full maximum silence.
_CONTINUATION_WORDS = frozenset(
    """a an the and or but so because if then to of for from with at in on by my our your
    his her their its is are was were be am i i'm we he she they uh um er hmm like dash
    """.split()
)
_SPOKEN_DIGITS = frozenset(
    "zero oh one two three four five six seven eight nine double triple".split()
)
# A be-verb after a pronoun ends a sentence ("yes it is", "I know who you are"), after a
# noun it does not ("my account number is"); a particle after an object pronoun ends a
# phrasal verb ("log me in", "switch it on"), after a noun it is a preposition ("I live in").
_BE_VERBS = frozenset("is are was were am".split())
_PRONOUNS = frozenset("it i we you they he she that this there here who what".split())
_PARTICLES = frozenset("in on out up off back over down".split())
_OBJECT_PRONOUNS = frozenset("me it us them him her you".split())


def looks_complete(text: str) -> bool:
    """Pure heuristic: does this transcript read like a finished turn?

    Incomplete: empty, trailing conjunction/preposition/article/filler ("my account number
    is ..."), or a run of digits being read out (callers pause between digit groups); but a
    be-verb after a pronoun ("yes it is") and a particle after an object pronoun ("log me
    in") end a sentence.
    """
    words = [w.strip(".,?!;:\"'") for w in text.lower().split()]
    words = [w for w in words if w]
    if not words:
        return False
    if text.rstrip().endswith("?"):
        return True  # the STT heard a whole question ("... in your office, okay, then?")
    last = words[-1]
    if text.rstrip().endswith((",", "-", "...")):
        return False
    before = words[-2] if len(words) > 1 else ""
    if (last in _BE_VERBS and before in _PRONOUNS) or (
        last in _PARTICLES and before in _OBJECT_PRONOUNS
    ):
        return True
    if last in _CONTINUATION_WORDS or last in _SPOKEN_DIGITS:
        return False
    return not any(ch.isdigit() for ch in last)


@dataclass(frozen=True, slots=True)
class UtteranceStarted:
    turn_id: int
    onset_s: float


@dataclass(frozen=True, slots=True)
class UtteranceEnded:
    turn_id: int
    speech_end_s: float
    decided_s: float


@dataclass(frozen=True, slots=True)
class BargeIn:
    turn_id: int
    onset_s: float
    decided_s: float


@dataclass(frozen=True, slots=True)
class BargeInOnset:
    """The first window of caller speech while the bot talks (not yet a barge-in)."""

    onset_s: float


@dataclass(frozen=True, slots=True)
class BargeInCancelled:
    """The sound that started at a ``BargeInOnset`` ended before it was a barge-in."""

    at_s: float


@dataclass(frozen=True, slots=True)
class PauseStarted:
    """The caller stopped talking (first silent window); the turn may or may not be over.

    The session can start a speculative transcription of the audio so far, so little is
    left to do if the pause becomes the end of the turn. ``pause_id`` increases with every
    pause; a result for an older pause is stale.
    """

    turn_id: int
    pause_id: int
    since_s: float


TurnAction = (
    UtteranceStarted | UtteranceEnded | BargeIn | BargeInOnset | BargeInCancelled | PauseStarted
)


class TurnTaker:
    """``now_s`` everywhere is the start of the latest VAD window (stream time, as
    ``VadStream.process_timed`` gives it); durations count the audio heard through the end of
    that window (see ``Endpointer``)."""

    def __init__(self, config: VadConfig, *, window_ms: float = WINDOW_MS) -> None:
        self.config = config
        self._endpointer = Endpointer(
            threshold=config.threshold,
            neg_threshold=config.neg_threshold,
            min_speech_ms=config.min_speech_ms,
            end_silence_ms=config.end_silence_max_ms,
            lookback_ms=config.lookback_ms,
            window_ms=window_ms,
            quiet_below_peak_db=config.quiet_below_peak_db,
            silence_from_last_sound=config.silence_from_last_sound == "all",
        )
        self._turn_id = 0
        self._onset_s: float | None = None
        self._bot_speaking = False
        self._barged = False
        self._tentative_onset_s: float | None = None  # a BargeInOnset not yet decided
        # ... started by the line's level, the VAD has not heard speech yet
        self._tentative_by_level = False
        self._window_s = window_ms / 1000.0
        self._level: LevelOnset | None = None
        if config.barge_in_pause_at_onset and config.barge_in_level_db > 0:
            self._level = LevelOnset(
                above_db=config.barge_in_level_db,
                min_dbfs=config.barge_in_level_min_dbfs,
                window_s=window_ms / 1000.0,
            )
        self._pause_id = 0
        self._in_pause = False

    @property
    def turn_id(self) -> int:
        return self._turn_id

    @property
    def pause_id(self) -> int:
        return self._pause_id

    @property
    def caller_speaking(self) -> bool:
        return self._endpointer.in_speech

    @property
    def in_pause(self) -> bool:
        """Inside an utterance, the caller is silent (a pause that may end the turn)."""
        return self._endpointer.silence_since_s is not None

    @property
    def quiet_since_s(self) -> float | None:
        """Inside an utterance, before a pause: the start of the current run of windows
        ``vad.quiet_below_peak_db`` under the caller's loudest (``Endpointer``)."""
        return self._endpointer.quiet_since_s

    @property
    def last_sound_s(self) -> float | None:
        """In a pause: when the caller's last sound ended (``Endpointer.last_sound_s``)."""
        return self._endpointer.last_sound_s

    @property
    def pause_since_s(self) -> float | None:
        """Stream time the current pause began (None: the caller is talking or idle)."""
        return self._endpointer.silence_since_s

    @property
    def bot_speaking(self) -> bool:
        return self._bot_speaking

    def set_bot_speaking(self, speaking: bool) -> None:
        """Playback started/stopped: switch the VAD threshold (echo gating)."""
        if speaking == self._bot_speaking:
            return
        self._bot_speaking = speaking
        self._tentative_onset_s = None  # the session decides what a pending onset becomes
        self._tentative_by_level = False
        if speaking:
            self._endpointer.set_threshold(
                self.config.barge_in_threshold,
                max(self.config.neg_threshold, self.config.barge_in_threshold - 0.15),
            )
            # Speech over the bot counts from the barge-in's own minimum when that is
            # shorter: the bot stops after barge_in_min_speech_ms, not min_speech_ms.
            speech_ms = min(self.config.min_speech_ms, self.config.barge_in_min_speech_ms)
            self._endpointer.min_speech_s = speech_ms / 1000.0
        else:
            self._endpointer.set_threshold(self.config.threshold, self.config.neg_threshold)
            self._endpointer.min_speech_s = self.config.min_speech_ms / 1000.0

    def set_max_silence_ms(self, max_silence_ms: int | None) -> None:
        """The silence that ends a turn whatever the detectors say, from now on (None: back
        to ``vad.end_silence_max_ms``); a pause under way is measured against it."""
        self._endpointer.set_end_silence_ms(
            self.config.end_silence_max_ms if max_silence_ms is None else max_silence_ms
        )

    def end_turn_early(
        self,
        now_s: float,
        silence_ms: int | None = None,
        *,
        tiebreak: bool = False,
        finished: bool = False,
    ) -> UtteranceEnded | None:
        """End the utterance now (the pause is ``silence_ms`` long, by default
        ``end_silence_ms``, and the end-of-turn detector says the caller sounds finished);
        None unless the caller is in such a pause. ``tiebreak``: this is the tie-break's
        silence, counted from the caller's last sound (``Endpointer.last_sound_s``) unless
        ``vad.silence_from_last_sound`` is "off" ("all" counts every pause from there). An
        utterance that talked over the bot also needs ``barge_in_end_silence_ms`` after the
        last sound (after the fall with "off"). ``finished``: a detector hears the caller
        finished; the pause also ends ``end_silence_after_sound_ms`` after the last sound
        if that comes first (not after a short utterance)."""
        if silence_ms is None:
            silence_ms = self.config.end_silence_ms
        since_s = self._endpointer.silence_since_s
        last_sound_s = self._endpointer.last_sound_s
        if since_s is None or last_sound_s is None:
            return None
        short = (
            self._onset_s is not None
            and since_s - self._onset_s < self.config.short_utterance_ms / 1000.0
        )
        if short:
            # "yes" / "no" before a pause: "... please" / "... thanks" often follows.
            silence_ms = max(silence_ms, self.config.short_end_silence_ms)
        if self.config.silence_from_last_sound == "off":
            last_sound_s = since_s
        needed = [(last_sound_s if tiebreak else since_s, silence_ms)]
        after_sound_ms = self.config.end_silence_after_sound_ms
        if (
            finished
            and not short
            and after_sound_ms > 0
            and self._endpointer.reached(last_sound_s, now_s, after_sound_ms / 1000.0)
        ):
            needed[0] = (last_sound_s, after_sound_ms)
        if self._barged:
            # A caller who talked over the bot often pauses after "wait," / "sorry,": the
            # interruption ends no sooner than barge_in_end_silence_ms.
            needed.append((last_sound_s, self.config.barge_in_end_silence_ms))
        if not all(self._endpointer.reached(s, now_s, ms / 1000.0) for s, ms in needed):
            return None
        self._endpointer.reset()
        self._onset_s = None
        self._in_pause = False
        self._barged = False  # the next sound over the bot may pause it at its onset again
        return UtteranceEnded(self._turn_id, since_s, now_s)

    def on_vad(
        self,
        prob: float,
        now_s: float,
        level_dbfs: float | None = None,
        *,
        echo: bool = False,
        pcm: bytes = b"",
    ) -> list[TurnAction]:
        """One VAD window: its probability, start time, level (dBFS), whether the echo
        gate took it for the bot's own voice (then it is no sound over the bot) and its
        audio (for the voicing test of a sound over the bot)."""
        actions: list[TurnAction] = []
        event = self._endpointer.update(prob, now_s, level_dbfs)
        loud = False
        if self._level is not None and level_dbfs is not None:
            if echo:
                self._level.echo()
            else:
                loud = self._level.update(level_dbfs) and self._voiced(pcm)
        match event:
            case SpeechStarted(at_s):
                self._turn_id += 1
                self._onset_s = at_s
                self._barged = False
                actions.append(UtteranceStarted(self._turn_id, at_s))
            case SpeechEnded(at_s, speech_end_s):
                self._onset_s = None
                self._in_pause = False
                self._barged = False
                actions.append(UtteranceEnded(self._turn_id, speech_end_s, at_s))
            case None:
                silence_since_s = self._endpointer.silence_since_s
                if silence_since_s is None:
                    self._in_pause = False
                elif not self._in_pause:
                    self._in_pause = True
                    self._pause_id += 1
                    actions.append(PauseStarted(self._turn_id, self._pause_id, silence_since_s))
        if (
            self._bot_speaking
            and not self._barged
            and self._onset_s is not None
            and self._endpointer.in_speech
            and self._endpointer.reached(
                self._onset_s, now_s, self.config.barge_in_min_speech_ms / 1000.0
            )
        ):
            self._barged = True
            self._tentative_onset_s = None
            self._tentative_by_level = False
            actions.append(BargeIn(self._turn_id, self._onset_s, now_s))
        actions.extend(self._tentative_actions(now_s, loud))
        return actions

    @property
    def _may_pause_at_onset(self) -> bool:
        """A sound now may pause the bot (``barge_in_pause_at_onset``): it is speaking and
        this utterance has not barged in yet."""
        return self.config.barge_in_pause_at_onset and self._bot_speaking and not self._barged

    def _voiced(self, pcm: bytes) -> bool:
        """A loud window that may pause the bot is voiced (``barge_in_level_voicing``);
        only tested while it could (the test costs an FFT)."""
        min_voicing = self.config.barge_in_level_voicing
        if min_voicing <= 0:
            return True
        if not self._may_pause_at_onset or self._tentative_onset_s is not None:
            return False
        rate_hz = round(len(pcm) / 2 / self._window_s) if pcm else 0
        return rate_hz > 0 and voicing(pcm, rate_hz) >= min_voicing

    def _tentative_actions(self, now_s: float, loud: bool) -> list[TurnAction]:
        """``BargeInOnset`` at the first speech window over the bot, or the first window of
        a sound over the line's floor (``loud``); ``BargeInCancelled`` when that run of
        windows is dropped as a blip (shorter than the barge-in needs), or when the VAD did
        not hear speech in a sound that started by its level."""
        pending_s = self._endpointer.pending_onset_s
        heard = pending_s is not None or self._endpointer.in_speech
        if self._tentative_onset_s is not None:
            if self._tentative_by_level:
                if heard:
                    self._tentative_by_level = False  # speech: the VAD's rules from here
                    return []
                assert self._level is not None
                confirm_s = self.config.barge_in_level_confirm_ms / 1000.0
                if self._level.sound_over or self._endpointer.reached(
                    self._tentative_onset_s, now_s, confirm_s
                ):
                    self._level.unconfirmed()
                    self._tentative_onset_s = None
                    self._tentative_by_level = False
                    return [BargeInCancelled(now_s)]
                return []
            if not heard:
                self._tentative_onset_s = None
                return [BargeInCancelled(now_s)]
            return []
        if not self._may_pause_at_onset:
            return []
        if pending_s is not None:
            self._tentative_onset_s = pending_s
            return [BargeInOnset(pending_s)]
        if loud and not self._endpointer.in_speech:
            self._tentative_onset_s = now_s
            self._tentative_by_level = True
            return [BargeInOnset(now_s)]
        return []
