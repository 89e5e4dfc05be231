"""Silero VAD (real ONNX model) and the pure endpointer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.speech import espeak_pcm, frames, pink_noise, silence, white_noise
from voicebot_pbx.models import SILERO_VAD, model_path
from voicebot_pbx.speech.vad import Endpointer, SileroVad, SpeechEnded, SpeechStarted

UTTERANCE = "what are your opening hours"


@pytest.fixture(scope="module")
def vad_model_path() -> Path:
    return model_path(SILERO_VAD)


@pytest.fixture(scope="module")
def vad(vad_model_path: Path) -> SileroVad:
    return SileroVad(vad_model_path)


def stream_probs(vad: SileroVad, pcm: bytes, rate_hz: int) -> list[float]:
    stream = vad.new_stream(rate_hz)
    probs: list[float] = []
    for frame in frames(pcm, rate_hz):
        probs += stream.process(frame)
    return probs


def reference_probs(model: Path, pcm: bytes, rate_hz: int) -> list[float]:
    """Independent re-implementation of silero-vad 6.2.3's OnnxWrapper.__call__ loop
    (utils_vad.py) on whole windows of the whole buffer, with its own session."""
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(model), sess_options=opts)
    num_samples = 512 if rate_hz == 16000 else 256
    context_size = 64 if rate_hz == 16000 else 32
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    state = np.zeros((2, 1, 128), dtype=np.float32)
    context = np.zeros((1, context_size), dtype=np.float32)
    out: list[float] = []
    for i in range(0, audio.size - num_samples + 1, num_samples):
        x = np.concatenate([context, audio[np.newaxis, i : i + num_samples]], axis=1)
        prob, state = session.run(
            None, {"input": x, "state": state, "sr": np.array(rate_hz, dtype="int64")}
        )
        context = x[..., -context_size:]
        out.append(float(prob[0, 0]))
    return out


def speech_clip(rate_hz: int) -> bytes:
    return (
        silence(500, rate_hz)
        + espeak_pcm(UTTERANCE, rate_hz, voice="en-gb")
        + silence(800, rate_hz)
    )


@pytest.mark.models
@pytest.mark.parametrize("rate_hz", [8000, 16000])
def test_speech_is_detected(vad: SileroVad, rate_hz: int) -> None:
    pcm = speech_clip(rate_hz)
    probs = stream_probs(vad, pcm, rate_hz)
    window_s = vad.new_stream(rate_hz).window_s
    assert len(probs) == len(pcm) // 2 // int(window_s * rate_hz)
    times = np.arange(len(probs)) * window_s
    speech = np.array(probs)[(times > 0.8) & (times < 1.8)]
    leading = np.array(probs)[times < 0.4]
    assert speech.mean() > 0.8
    assert leading.max() < 0.2


@pytest.mark.models
def test_window_sizes(vad: SileroVad) -> None:
    assert vad.new_stream(8000).window_samples == 256
    assert vad.new_stream(16000).window_samples == 512
    assert vad.new_stream(8000).window_ms == pytest.approx(32.0)
    with pytest.raises(ValueError):
        vad.new_stream(44100)


@pytest.mark.models
@pytest.mark.parametrize(
    "pcm",
    [
        silence(3000, 8000),
        white_noise(3000, 8000, level_dbfs=-30, seed=1),
        white_noise(3000, 8000, level_dbfs=-20, seed=2),
        pink_noise(3000, 8000, level_dbfs=-30, seed=3),
        pink_noise(3000, 8000, level_dbfs=-20, seed=4),
    ],
    ids=["silence", "white-30", "white-20", "pink-30", "pink-20"],
)
def test_no_speech_on_silence_and_noise(vad: SileroVad, pcm: bytes) -> None:
    probs = stream_probs(vad, pcm, 8000)
    assert len(probs) == 93
    assert max(probs) < 0.3


@pytest.mark.models
@pytest.mark.parametrize("rate_hz", [8000, 16000])
def test_matches_reference_wrapper_with_any_chunking(
    vad: SileroVad, vad_model_path: Path, rate_hz: int
) -> None:
    pcm = speech_clip(rate_hz)
    expected = reference_probs(vad_model_path, pcm, rate_hz)
    stream = vad.new_stream(rate_hz)
    got: list[float] = []
    # odd-sized chunks, including odd byte counts that split a sample
    sizes = [7, 333, 1, 1000, 640, 2]
    pos = 0
    i = 0
    while pos < len(pcm):
        chunk = pcm[pos : pos + sizes[i % len(sizes)]]
        got += stream.process(chunk)
        pos += len(chunk)
        i += 1
    assert len(got) == len(expected)
    assert np.max(np.abs(np.array(got) - np.array(expected))) < 1e-5


@pytest.mark.models
def test_streams_are_independent(vad: SileroVad) -> None:
    speech = speech_clip(8000)
    quiet = white_noise(len(speech) // 16, 8000, level_dbfs=-50, seed=5)[: len(speech)]
    alone_speech = stream_probs(vad, speech, 8000)
    alone_quiet = stream_probs(vad, quiet, 8000)
    a, b = vad.new_stream(8000), vad.new_stream(8000)
    got_a: list[float] = []
    got_b: list[float] = []
    for fa, fb in zip(frames(speech, 8000), frames(quiet, 8000), strict=False):
        got_a += a.process(fa)
        got_b += b.process(fb)
    assert got_a == pytest.approx(alone_speech, abs=1e-6)
    assert got_b == pytest.approx(alone_quiet, abs=1e-6)
    assert max(got_b) < 0.3 < max(got_a)


@pytest.mark.models
def test_reset_forgets_state(vad: SileroVad) -> None:
    speech = speech_clip(8000)
    stream = vad.new_stream(8000)
    stream.process(speech[: len(speech) // 2 + 101])  # leaves a partial window behind
    stream.reset()
    assert stream.windows_done == 0
    assert stream.process(speech) == pytest.approx(stream_probs(vad, speech, 8000), abs=1e-6)


@pytest.mark.models
def test_process_timed_and_endpointer_on_real_speech(vad: SileroVad) -> None:
    rate_hz = 8000
    voice = espeak_pcm(UTTERANCE, rate_hz, voice="en-gb")
    samples = np.abs(np.frombuffer(voice, dtype="<i2"))
    loud = np.nonzero(samples > 1000)[0]
    true_start_s = 0.5 + loud[0] / rate_hz
    true_end_s = 0.5 + loud[-1] / rate_hz
    pcm = silence(500, rate_hz) + voice + silence(1500, rate_hz)

    stream = vad.new_stream(rate_hz)
    endpointer = Endpointer(min_speech_ms=200, end_silence_ms=600)
    events = []
    for frame in frames(pcm, rate_hz):
        for start_s, prob in stream.process_timed(frame):
            event = endpointer.update(prob, start_s)
            if event is not None:
                events.append(event)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    started, ended = events
    assert isinstance(started, SpeechStarted) and isinstance(ended, SpeechEnded)
    assert abs(started.at_s - true_start_s) < 0.15
    assert abs(ended.speech_end_s - true_end_s) < 0.25
    assert ended.at_s - ended.speech_end_s == pytest.approx(0.6, abs=0.04)


# --- endpointer: pure ----------------------------------------------------------------------

STEP_S = 0.032


def run(endpointer: Endpointer, probs: list[float], t0: float = 0.0) -> Iterator[object]:
    for i, prob in enumerate(probs):
        event = endpointer.update(prob, t0 + i * STEP_S)
        if event is not None:
            yield event


def test_endpointer_start_and_end_times() -> None:
    ep = Endpointer(threshold=0.5, neg_threshold=0.35, min_speech_ms=200, end_silence_ms=500)
    probs = [0.0] * 10 + [0.9] * 30 + [0.1] * 30
    started, ended = list(run(ep, probs))
    assert isinstance(started, SpeechStarted) and isinstance(ended, SpeechEnded)
    assert started.at_s == pytest.approx(10 * STEP_S)
    assert ended.speech_end_s == pytest.approx(40 * STEP_S)
    # The 16th silent window (it starts at 55) completes 512 ms >= 500 ms of silence heard.
    assert ended.at_s == pytest.approx(55 * STEP_S)
    assert not ep.in_speech


def test_endpointer_start_fires_after_min_speech() -> None:
    ep = Endpointer(min_speech_ms=200, end_silence_ms=500)
    fired_at = None
    for i in range(20):
        if ep.update(0.9, i * STEP_S) is not None:
            fired_at = i
            break
    assert fired_at == 6  # windows 0-6 are 224 ms of speech >= 200 ms; 0-5 (192 ms) are not
    assert ep.in_speech


def test_endpointer_durations_count_whole_windows_heard() -> None:
    # 160 ms is exactly 5 windows: decided on the 5th (float sums must not push it to the
    # 6th), and 100 ms of silence on the 4th silent window (128 ms heard; 96 ms is short).
    ep = Endpointer(min_speech_ms=160, end_silence_ms=100)
    assert list(run(ep, [0.9] * 5)) == [SpeechStarted(at_s=0.0)]
    # Silence from 1.0 s: the 4th silent window starts at 1.0 + 3 windows.
    assert list(run(ep, [0.1] * 5, t0=1.0)) == [
        SpeechEnded(at_s=pytest.approx(1.0 + 3 * STEP_S), speech_end_s=1.0)
    ]
    with pytest.raises(ValueError):
        Endpointer(window_ms=0)


def test_endpointer_drops_short_blip() -> None:
    ep = Endpointer(min_speech_ms=200, end_silence_ms=500)
    probs = [0.9] * 4 + [0.1] * 20 + [0.9] * 3 + [0.0] * 10
    assert list(run(ep, probs)) == []
    assert not ep.in_speech


def test_endpointer_short_pause_does_not_end_speech() -> None:
    ep = Endpointer(min_speech_ms=100, end_silence_ms=500)
    probs = [0.9] * 10 + [0.1] * 10 + [0.9] * 10 + [0.1] * 20
    events = list(run(ep, probs))
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    ended = events[1]
    assert isinstance(ended, SpeechEnded)
    assert ended.speech_end_s == pytest.approx(30 * STEP_S)


def test_endpointer_hysteresis_band_keeps_state() -> None:
    ep = Endpointer(threshold=0.5, neg_threshold=0.35, min_speech_ms=0, end_silence_ms=100)
    # in-between probabilities neither start speech ...
    assert list(run(ep, [0.45] * 20)) == []
    # ... nor start the silence count once speaking
    events = list(run(ep, [0.9] + [0.45] * 20 + [0.2] * 5))
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    ended = events[1]
    assert isinstance(ended, SpeechEnded)
    assert ended.speech_end_s == pytest.approx(21 * STEP_S)


def test_endpointer_threshold_changes_at_run_time() -> None:
    ep = Endpointer(min_speech_ms=0, end_silence_ms=100)
    ep.set_threshold(0.95)  # e.g. while the bot is speaking (echo)
    assert ep.neg_threshold == pytest.approx(0.8)
    assert list(run(ep, [0.9] * 10)) == []
    ep.set_threshold(0.5, 0.3)
    events = list(run(ep, [0.9] * 3, t0=1.0))
    assert events == [SpeechStarted(at_s=1.0)]


def test_endpointer_rejects_bad_thresholds() -> None:
    with pytest.raises(ValueError):
        Endpointer(threshold=0.3, neg_threshold=0.5)
    ep = Endpointer()
    with pytest.raises(ValueError):
        ep.set_threshold(1.0)
    with pytest.raises(ValueError):
        Endpointer(min_speech_ms=-1)


def test_endpointer_reset_and_lookback() -> None:
    ep = Endpointer(min_speech_ms=0, end_silence_ms=100, lookback_ms=300)
    assert ep.lookback_s == pytest.approx(0.3)
    assert list(run(ep, [0.9])) == [SpeechStarted(at_s=0.0)]
    ep.reset()
    assert not ep.in_speech
    assert list(run(ep, [0.1] * 10)) == []  # no SpeechEnded after a reset


def test_events_are_frozen() -> None:
    event = SpeechStarted(at_s=1.0)
    with pytest.raises(AttributeError):
        event.at_s = 2.0  # type: ignore[misc]


# --- endpointer: silence from the caller's last sound (quiet_below_peak_db) --------------------


def run_levels(
    endpointer: Endpointer, windows: list[tuple[float, float]], t0: float = 0.0
) -> list[object]:
    """``windows``: (probability, level dBFS) per window."""
    out = []
    for i, (prob, level) in enumerate(windows):
        event = endpointer.update(prob, t0 + i * STEP_S, level)
        if event is not None:
            out.append(event)
    return out


LOUD, QUIET = -12.0, -60.0
# Speech, then the caller's last sound: the model's probability stays up for 5 windows
# (160 ms) after the level has fallen, as silero's does after real speech.
TRAILING = [(0.9, LOUD)] * 20 + [(0.9, QUIET)] * 5 + [(0.1, QUIET)] * 20


def test_silence_counts_from_the_last_sound_not_from_the_probabilitys_fall() -> None:
    old = Endpointer(min_speech_ms=100, end_silence_ms=150)
    started, ended = run_levels(old, TRAILING)
    assert isinstance(ended, SpeechEnded)  # off (quiet_below_peak_db 0): the model's fall
    assert ended.speech_end_s == pytest.approx(25 * STEP_S)
    assert ended.at_s == pytest.approx(29 * STEP_S)

    new = Endpointer(
        min_speech_ms=100, end_silence_ms=150, quiet_below_peak_db=30, silence_from_last_sound=True
    )
    started, ended = run_levels(new, TRAILING)
    assert isinstance(started, SpeechStarted) and isinstance(ended, SpeechEnded)
    assert ended.speech_end_s == pytest.approx(20 * STEP_S)  # the first quiet window
    # The 150 ms were heard long before the fall: the turn ends on the falling window itself.
    assert ended.at_s == pytest.approx(25 * STEP_S)


def test_a_quiet_run_the_model_calls_speech_is_not_a_pause() -> None:
    # A stop consonant's closure, or a soft word: quiet windows the model still hears as
    # speech, then loud again. No pause starts, nothing ends.
    ep = Endpointer(
        min_speech_ms=100, end_silence_ms=150, quiet_below_peak_db=30, silence_from_last_sound=True
    )
    windows = [(0.9, LOUD)] * 10 + [(0.9, QUIET)] * 8 + [(0.9, LOUD)] * 10
    assert [type(e) for e in run_levels(ep, windows)] == [SpeechStarted]
    assert ep.silence_since_s is None and ep.in_speech


def test_the_fall_is_backdated_to_an_unbroken_quiet_run_only() -> None:
    ep = Endpointer(
        min_speech_ms=100, end_silence_ms=300, quiet_below_peak_db=30, silence_from_last_sound=True
    )
    # Quiet, one loud window (a click the model still calls speech), quiet again, then the
    # model falls: silence counts from the quiet run after the click, not before it.
    windows = (
        [(0.9, LOUD)] * 10
        + [(0.9, QUIET)] * 2
        + [(0.9, LOUD)]
        + [(0.9, QUIET)] * 2
        + [(0.1, QUIET)] * 20
    )
    ended = run_levels(ep, windows)[-1]
    assert isinstance(ended, SpeechEnded)
    assert ended.speech_end_s == pytest.approx(13 * STEP_S)
    assert ended.at_s == pytest.approx((13 + 9) * STEP_S)  # 300 ms heard from window 13


def test_a_line_as_noisy_as_the_voice_leaves_it_to_the_model() -> None:
    # Line noise only 20 dB under the voice: never quiet, so nothing changes.
    ep = Endpointer(
        min_speech_ms=100, end_silence_ms=150, quiet_below_peak_db=30, silence_from_last_sound=True
    )
    windows = [(0.9, LOUD)] * 20 + [(0.9, LOUD - 20)] * 5 + [(0.1, LOUD - 20)] * 20
    ended = run_levels(ep, windows)[-1]
    assert isinstance(ended, SpeechEnded)
    assert ended.speech_end_s == pytest.approx(25 * STEP_S)
    with pytest.raises(ValueError):
        Endpointer(quiet_below_peak_db=-1)


def test_the_last_sound_is_known_in_a_pause_counted_from_the_fall() -> None:
    # silence_from_last_sound off: the pause and its silences start at the fall, and the
    # last sound is there to be asked for (the tie-break counts from it).
    ep = Endpointer(min_speech_ms=100, end_silence_ms=700, quiet_below_peak_db=30)
    run_levels(ep, TRAILING[:26])  # speech, 5 quiet windows, then the fall
    assert ep.silence_since_s == pytest.approx(25 * STEP_S)
    assert ep.last_sound_s == pytest.approx(20 * STEP_S)
    run_levels(ep, [(0.9, LOUD)], t0=26 * STEP_S)  # the caller goes on: no pause, no last sound
    assert ep.silence_since_s is None and ep.last_sound_s is None


def test_a_sound_inside_the_pause_moves_the_last_sound_to_its_end() -> None:
    # After the fall, the caller's next word starts (loud windows) while the probability is
    # still low: the last sound is the end of that sound, not the quiet before the fall, so
    # a tie-break counted from it cannot end the turn in a comma that is already over.
    ep = Endpointer(min_speech_ms=100, end_silence_ms=700, quiet_below_peak_db=30)
    run_levels(ep, TRAILING[:26])
    assert ep.last_sound_s == pytest.approx(20 * STEP_S)
    run_levels(ep, [(0.1, QUIET)] * 3 + [(0.2, LOUD)] * 2, t0=26 * STEP_S)
    assert ep.silence_since_s == pytest.approx(25 * STEP_S)  # still the same pause
    assert ep.last_sound_s == pytest.approx(31 * STEP_S)  # the end of the second loud window
    run_levels(ep, [(0.1, QUIET)] * 2, t0=31 * STEP_S)
    assert ep.last_sound_s == pytest.approx(31 * STEP_S)  # quiet again since then
    # A line as noisy as the voice: no quiet run at the fall, the levels say nothing.
    noisy = Endpointer(min_speech_ms=100, end_silence_ms=700, quiet_below_peak_db=30)
    run_levels(noisy, [(0.9, LOUD)] * 20 + [(0.1, LOUD - 20)] * 8)
    assert noisy.last_sound_s == pytest.approx(20 * STEP_S)  # the fall, and it stays there


def test_the_quiet_run_before_the_fall_is_known_while_it_lasts() -> None:
    # What an early decode starts from: a run of quiet windows the model still calls
    # speech. Known only inside an utterance and before the pause (in the pause, the last
    # sound says it); a loud window ends the run.
    ep = Endpointer(min_speech_ms=100, end_silence_ms=700, quiet_below_peak_db=30)
    run_levels(ep, [(0.9, QUIET)] * 3)
    assert ep.quiet_since_s is None  # not in speech yet
    run_levels(ep, [(0.9, LOUD)] * 10 + [(0.9, QUIET)] * 2, t0=3 * STEP_S)
    assert ep.quiet_since_s == pytest.approx(13 * STEP_S)
    run_levels(ep, [(0.9, LOUD)], t0=15 * STEP_S)
    assert ep.quiet_since_s is None
    run_levels(ep, [(0.9, QUIET)] * 3 + [(0.1, QUIET)], t0=16 * STEP_S)
    assert ep.quiet_since_s is None and ep.last_sound_s == pytest.approx(16 * STEP_S)
    off = Endpointer(min_speech_ms=100, end_silence_ms=700)  # no levels: never known
    run_levels(off, [(0.9, LOUD)] * 10 + [(0.9, QUIET)] * 3)
    assert off.quiet_since_s is None


def test_the_loudest_window_is_the_utterances_own() -> None:
    # A loud first utterance does not make the next, softer caller's speech "quiet".
    ep = Endpointer(
        min_speech_ms=100, end_silence_ms=150, quiet_below_peak_db=30, silence_from_last_sound=True
    )
    first = [(0.9, -3.0)] * 10 + [(0.1, QUIET)] * 10
    assert [type(e) for e in run_levels(ep, first)] == [SpeechStarted, SpeechEnded]
    soft = [(0.9, -30.0)] * 10 + [(0.9, -50.0)] * 3 + [(0.1, -50.0)] * 10
    ended = run_levels(ep, soft, t0=1.0)[-1]
    assert isinstance(ended, SpeechEnded)
    assert ended.speech_end_s == pytest.approx(1.0 + 13 * STEP_S)  # -50 is not 30 dB under -30


def test_process_windows_gives_each_windows_level(vad: SileroVad) -> None:
    stream = vad.new_stream(8000)
    tone = (0.5 * 32767 * np.sin(2 * np.pi * 440 * np.arange(512) / 8000)).astype("<i2")
    windows = stream.process_windows(bytes(512) + tone.tobytes())
    assert [w.start_s for w in windows] == pytest.approx([0.0, 0.032, 0.064])
    assert windows[0].level_dbfs < -100
    assert windows[1].level_dbfs == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.2)
    assert stream.process_timed(b"") == []
