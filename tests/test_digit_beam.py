"""speech/digit_beam.py: a decode held to a known number of digits (an account number whose
length the dialogue said), searched with a beam over a scripted decoder; the digit counts
of speech/expect.py it relies on; and the real Moonshine engine taking the search's decode
only when its greedy held decode has the wrong count, and its other readings always."""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt
import pytest
from structlog.testing import capture_logs

from tests.test_moonshine import moonshine  # noqa: F401  (the packaged tiny model, module-scoped)
from tests.test_stt import caller
from voicebot_pbx.answers.normalize import normalize
from voicebot_pbx.audio import pcm_to_float32
from voicebot_pbx.config.speech import DIGITS_TEMPO
from voicebot_pbx.models import MOONSHINE_BASE_EN, MOONSHINE_TOKENIZER, model_path
from voicebot_pbx.speech.digit_beam import (
    DIGITS_MIN_CONFIDENCE,
    MAX_ALTERNATIVES,
    Found,
    Step,
    looping,
    merge_readings,
    search_digits,
)
from voicebot_pbx.speech.expect import (
    WORDS,
    Expectation,
    HeldVocabulary,
    count_digits,
    read_digits,
)
from voicebot_pbx.speech.logits import log_softmax
from voicebot_pbx.speech.moonshine import MoonshineEngine

PIECES = [
    "<unk>",  # 0
    "<s>",  # 1
    "</s>",  # 2: the end of text
    "5",  # 3
    "42",  # 4
    ",",  # 5
    "\u2581five",  # 6
    "\u2581nine",  # 7
    "\u2581time",  # 8: not a digit word
    "\u2581fi",  # 9
    "ve,",  # 10
]
EOS = 2
DIGITS_ONLY = frozenset({Expectation.DIGITS})
Tokens = tuple[int, ...]
START: Tokens = ()


def vocabulary() -> HeldVocabulary:
    return HeldVocabulary(PIECES, WORDS[Expectation.DIGITS], end_id=EOS, special=[0, 1, 2])


def scripted(logits: dict[Tokens, dict[int, float]]) -> tuple[list[Tokens], Step[Tokens]]:
    """A decoder whose next-token logits depend on the tokens so far (others -10); its
    state is those tokens. Returns the prefixes it was stepped on, and the step."""
    stepped: list[Tokens] = []

    def step(
        index: int, states: Sequence[Tokens], tokens: Sequence[int]
    ) -> tuple[npt.NDArray[np.float64], list[Tokens]]:
        rows, nows = [], []
        for state, token in zip(states, tokens, strict=True):
            now = state if index == 0 else (*state, token)
            assert len(now) == index  # each hypothesis steps on its own history
            stepped.append(now)
            row = np.full(len(PIECES), -10.0)
            for tid, value in logits.get(now, {}).items():
                row[tid] = value
            rows.append(row)
            nows.append(now)
        return np.stack(rows), nows

    return stepped, step


def decode_digits(
    step: Step[Tokens], start: Tokens, held: HeldVocabulary, **settings: int
) -> Found | None:
    """The search's best decode (keep 1), or None."""
    found = search_digits(step, start, held, keep=1, **settings)
    return found[0] if found else None


def test_digits_are_counted_as_figures_and_digit_words() -> None:
    assert count_digits("Six, four, 55 and oh.") == 5
    assert count_digits("4338-0626") == 8
    assert count_digits("I don't have it") == 0
    held = vocabulary()
    assert held.digits_after("", 4) == 2  # "42"
    assert held.digits_after("", 6) == 0  # "five" is not complete until a break or the end
    assert held.digits_after("five", 5) == 1  # "," completes it
    assert held.digits_after("fi", 10) == 1  # "ve," completes "five"
    assert held.digits_ending("five") == 1 and held.digits_ending("") == 0


def test_the_end_of_text_comes_only_after_exactly_the_digits_asked_for() -> None:
    # Greedy would end after "42": two digits of the three asked for.
    _, step = scripted({(): {4: 3.0, 3: 1.0}, (4,): {EOS: 3.0, 3: 1.0}, (4, 3): {EOS: 3.0}})
    found = decode_digits(step, START, vocabulary(), n_digits=3, bos=1, eos=EOS, max_tokens=6)
    assert found is not None and found.tokens == (4, 3)  # "425"
    # Never more digits than asked for: "42" is not allowed after "5" when two are asked for.
    _, step = scripted({(): {3: 3.0}, (3,): {4: 5.0, 3: 1.0}, (3, 3): {EOS: 3.0}})
    found = decode_digits(step, START, vocabulary(), n_digits=2, bos=1, eos=EOS, max_tokens=6)
    assert found is not None and found.tokens == (3, 3)


def test_the_beam_keeps_a_decode_that_starts_a_little_less_likely_but_ends_well() -> None:
    logits = {
        (): {3: 2.0, 4: 1.9},  # "5" slightly ahead of "42"
        (3,): {EOS: 6.0, 3: 0.0},  # after "5" the model wants to stop: "55" is unlikely
        (3, 3): {EOS: 3.0},
        (4,): {EOS: 6.0},  # "42" ends well
    }
    _, step = scripted(logits)
    greedy = decode_digits(
        step, START, vocabulary(), n_digits=2, bos=1, eos=EOS, max_tokens=6, beam=1
    )
    searched = decode_digits(
        step, START, vocabulary(), n_digits=2, bos=1, eos=EOS, max_tokens=6, beam=2
    )
    assert greedy is not None and greedy.tokens == (3, 3)
    assert searched is not None and searched.tokens == (4,)
    # Its confidence is over the tokens it was allowed (the end of text included).
    assert searched.confidence == pytest.approx(
        math.exp((searched.logprobs[0] + searched.logprobs[1]) / 2)
    )
    assert searched.logprobs[1] == pytest.approx(0.0, abs=1e-3)  # the end: all but certain


def test_digit_words_count_and_other_words_are_never_decoded() -> None:
    logits = {
        (): {8: 9.0, 6: 2.0},  # "time" likeliest, but not a digit word
        (6,): {7: 2.0, EOS: 5.0},
        (6, 7): {EOS: 4.0},
    }
    stepped, step = scripted(logits)
    found = decode_digits(step, START, vocabulary(), n_digits=2, bos=1, eos=EOS, max_tokens=6)
    assert found is not None and found.tokens == (6, 7)  # "five nine"
    assert all(8 not in prefix for prefix in stepped)


def test_the_search_keeps_the_other_readings_likeliest_first() -> None:
    logits = {
        (): {3: 2.0, 6: 1.5, 7: 0.5},  # "5", "five", "nine" as the first digit
        (3,): {3: 2.0, 7: 1.0},
        (6,): {5: 3.0},
        (6, 5): {7: 2.0},
        (7,): {3: 2.0},
        (3, 3): {EOS: 5.0},
        (3, 7): {EOS: 5.0},
        (6, 5, 7): {EOS: 5.0},
        (7, 3): {EOS: 5.0},
    }
    _, step = scripted(logits)
    found = search_digits(
        step, START, vocabulary(), n_digits=2, bos=1, eos=EOS, max_tokens=6, beam=3, keep=3
    )
    readings = [
        read_digits("".join(PIECES[t] for t in f.tokens).replace("\u2581", " ")) for f in found
    ]
    # "five, nine" and "5 nine" are two decodes of one number (the engine keeps it once).
    assert [f.tokens for f in found] == [(3, 3), (6, 5, 7), (3, 7)]
    assert readings == ["55", "59", "59"]
    assert len(found) == 3 and len({f.tokens for f in found}) == 3
    # Likeliest first: the best decode, then the others.
    best = decode_digits(step, START, vocabulary(), n_digits=2, bos=1, eos=EOS, max_tokens=6)
    assert best is not None and found[0] == best and found[0].tokens == (3, 3)
    assert all(len(r) == 2 for r in readings)
    one = search_digits(
        step, START, vocabulary(), n_digits=2, bos=1, eos=EOS, max_tokens=6, beam=3, keep=1
    )
    assert one == [best]


def test_digits_are_read_in_order_from_figures_and_words() -> None:
    assert read_digits("Five, 5, oh nine.") == "5509"
    assert read_digits("42, zero o") == "4200"
    assert read_digits("I don't have it") == ""


def test_no_decode_when_the_digits_cannot_be_reached() -> None:
    _, step = scripted({(): {3: 3.0}, (3,): {3: 3.0}, (3, 3): {3: 3.0}})
    found = decode_digits(step, START, vocabulary(), n_digits=8, bos=1, eos=EOS, max_tokens=3)
    assert found is None


@pytest.mark.models
def test_moonshine_searches_when_its_held_decode_has_the_wrong_count(
    moonshine: MoonshineEngine,  # noqa: F811
) -> None:
    """A repeated nine heard once ("5 5 8 7 6 9 9 3" -> seven digits): told the number has
    eight, the engine searches and finds them; a decode with the right count is kept as it
    is, with no search."""
    pcm = caller("5 5 8 7 6 9 9 3", 8000)
    uncounted = moonshine.transcribe_expecting(pcm, 8000, DIGITS_ONLY)
    assert uncounted.held_to == "digits" and count_digits(uncounted.text) == 7, uncounted
    with capture_logs() as logs:
        counted = moonshine.transcribe_expecting(pcm, 8000, DIGITS_ONLY, digits=8)
    assert normalize(counted.text).replace(" ", "") == "55876993", counted
    assert counted.held_to == "digits" and counted.confidence is not None
    assert counted.confidence >= DIGITS_MIN_CONFIDENCE
    [search] = [e for e in logs if e["event"] == "stt.moonshine.digits_search"]
    assert (search["wanted"], search["greedy"], search["kept"]) == (8, 7, True)
    assert not re.search(r"\d{4}", str(search))  # counts, never the caller's digits
    right = caller("2 9 0 5 9 9 5 1", 8000)
    with capture_logs() as logs:
        kept = moonshine.transcribe_expecting(right, 8000, DIGITS_ONLY, digits=8)
    assert kept == moonshine.transcribe_expecting(right, 8000, DIGITS_ONLY)
    assert count_digits(kept.text) == 8
    # The search ran for the other readings only: eight digits each, none the one heard;
    # with the second listen's (logged by count, never the digits).
    [search] = [e for e in logs if e["event"] == "stt.moonshine.digits_search"]
    assert (search["greedy"], search["kept"]) == (8, False)
    assert search["alternatives"] <= MAX_ALTERNATIVES
    assert len(kept.alternatives) <= 2 * MAX_ALTERNATIVES
    [faster] = [e for e in logs if e["event"] == "stt.moonshine.digits_faster"]
    assert faster["tempo"] == DIGITS_TEMPO and not re.search(r"\d{4}", str(faster))
    heard = read_digits(kept.text)
    for other in kept.alternatives:
        assert len(other) == 8 and other.isdigit() and other != heard
    assert len(set(kept.alternatives)) == len(kept.alternatives)
    # Not told the count: no search, no other readings.
    assert moonshine.transcribe_expecting(right, 8000, DIGITS_ONLY).alternatives == ()
    off = MoonshineEngine(
        moonshine.model_dir, tokenizer_path=moonshine.tokenizer_path, digits_beam=0
    )
    assert off.transcribe_expecting(pcm, 8000, DIGITS_ONLY, digits=8).text == uncounted.text


def test_a_run_of_one_digit_the_greedy_reading_does_not_have_is_a_loop() -> None:
    """The search forced to eight digits repeats the last one ("6 0 0 0 0 0 0 0" for a
    number the greedy decode read as nine digits): a loop. A run the greedy reading has too
    (a number with "0 0 0 0" in it), or a run of three, is the caller's."""
    assert looping("60000000", "634639777")
    assert looping("22658888", "2265995")
    assert looping("30000000", "33068631")
    assert not looping("10000457", "100004573")
    assert not looping("60639777", "6063977")
    assert not looping("71106740", "7110674")
    assert looping("11110000", "1111000")  # the zeros: four here, three in the greedy


@pytest.mark.models
def test_moonshine_drops_the_searchs_loops_from_the_number_and_its_readings(
    moonshine: MoonshineEngine,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A searched reading that loops is neither the number taken nor one of its other
    readings, however sure the search was of it; the log counts the loops dropped."""
    pcm = caller("5 5 8 7 6 9 9 3", 8000)  # the greedy held decode reads seven digits
    search = MoonshineEngine._search
    loop_ids = moonshine._tokenizer.encode("5, 5, 8, 8, 8, 8, 8, 8.").ids
    loop_ids = [t for t in loop_ids if t not in (moonshine._bos, moonshine._eos)]
    assert read_digits(moonshine._text(loop_ids)) == "55888888"

    def looping_first(self: MoonshineEngine, *args: object) -> list[Found]:
        return [Found(tuple(loop_ids), (-0.01,) * (len(loop_ids) + 1)), *search(self, *args)]  # type: ignore[arg-type]

    monkeypatch.setattr(MoonshineEngine, "_search", looping_first)
    one = MoonshineEngine(
        moonshine.model_dir, tokenizer_path=moonshine.tokenizer_path, digits_tempo=1.0
    )
    with capture_logs() as logs:
        counted = one.transcribe_expecting(pcm, 8000, DIGITS_ONLY, digits=8)
    assert read_digits(counted.text) == "55876993", counted
    assert "55888888" not in counted.alternatives
    [logged] = [e for e in logs if e["event"] == "stt.moonshine.digits_search"]
    assert logged["loops"] == 1 and logged["kept"] is True


def test_the_second_listens_best_reading_comes_first_then_the_first_listens() -> None:
    heard = "11111646"
    first = ("11111846", "17111646", "11111646")
    second = ("77111646", "17111646", "71111646", "11111646")
    merged = merge_readings(heard, first, second, 6)
    assert merged == ("77111646", "11111846", "17111646", "71111646")
    assert merge_readings(heard, first, second, 2) == ("77111646", "11111846")
    assert merge_readings(heard, first, (), 6) == ("11111846", "17111646")
    assert merge_readings(heard, (), (), 6) == ()


def test_the_second_listen_hears_the_same_speech_faster(
    moonshine: MoonshineEngine,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An expected number with its count is encoded twice: as said, then played
    ``digits_tempo`` times faster (shorter, not longer); the second listen's readings go
    with the first's. ``digits_tempo = 1.0``: one listen, its own readings only."""
    pcm = caller("7 7 1 1 1 6 4 6", 8000)
    sizes: list[int] = []
    encode = MoonshineEngine._encode

    def counting(self: MoonshineEngine, audio: npt.NDArray[np.float32]) -> object:
        sizes.append(int(audio.size))
        return encode(self, audio)

    monkeypatch.setattr(MoonshineEngine, "_encode", counting)
    both = moonshine.transcribe_expecting(pcm, 8000, DIGITS_ONLY, digits=8)
    assert len(sizes) == 2, sizes
    assert sizes[1] == pytest.approx(sizes[0] / DIGITS_TEMPO, rel=0.01)
    one = MoonshineEngine(
        moonshine.model_dir, tokenizer_path=moonshine.tokenizer_path, digits_tempo=1.0
    )
    sizes.clear()
    with capture_logs() as logs:
        alone = one.transcribe_expecting(pcm, 8000, DIGITS_ONLY, digits=8)
    assert len(sizes) == 1
    assert not [e for e in logs if e["event"] == "stt.moonshine.digits_faster"]
    [search] = [e for e in logs if e["event"] == "stt.moonshine.digits_search"]
    assert len(alone.alternatives) == search["alternatives"]
    assert alone.text == both.text  # the second listen adds readings, never the transcript
    assert set(alone.alternatives) <= set(both.alternatives) | {read_digits(both.text)}
    with pytest.raises(ValueError, match="digits_tempo"):
        MoonshineEngine(
            moonshine.model_dir, tokenizer_path=moonshine.tokenizer_path, digits_tempo=3.0
        )


def test_the_second_listen_runs_beside_the_first_in_the_pool_or_after_it_when_busy(
    moonshine: MoonshineEngine,  # noqa: F811
) -> None:
    """Given the shared pool, the second listen goes there and runs beside the first; when
    the pool is busy it is taken back (cancelled) and run after the first, so a decode
    holding a pool thread never waits on a job queued behind it. The readings are the
    same every way."""
    pcm = caller("7 7 1 1 1 6 4 6", 8000)
    alone = moonshine.transcribe_expecting(pcm, 8000, DIGITS_ONLY, digits=8)
    threads: list[str] = []
    faster = MoonshineEngine._faster_readings

    def where(self: MoonshineEngine, *args: object, **kwargs: object) -> list[str]:
        threads.append(threading.current_thread().name)
        return faster(self, *args, **kwargs)  # type: ignore[arg-type]

    with ThreadPoolExecutor(1, thread_name_prefix="pool") as pool:
        engine = MoonshineEngine(
            moonshine.model_dir, tokenizer_path=moonshine.tokenizer_path, pool=pool
        )
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(MoonshineEngine, "_faster_readings", where)
            beside = engine.transcribe_expecting(pcm, 8000, DIGITS_ONLY, digits=8)
            assert threads == ["pool_0"]
            release = threading.Event()
            busy = pool.submit(release.wait, 30)
            after = engine.transcribe_expecting(pcm, 8000, DIGITS_ONLY, digits=8)
            release.set()
            busy.result(timeout=30)
            assert threads == ["pool_0", threading.current_thread().name]
    assert (beside.text, beside.alternatives) == (alone.text, alone.alternatives)
    assert (after.text, after.alternatives) == (alone.text, alone.alternatives)
    # A pool shut down (the service stopping) takes no job: the decode runs both itself.
    closed = engine.transcribe_expecting(pcm, 8000, DIGITS_ONLY, digits=8)
    assert (closed.text, closed.alternatives) == (alone.text, alone.alternatives)


@pytest.mark.parametrize("model", ["tiny", "base"])
def test_a_step_of_several_hypotheses_in_one_batch_is_each_ones_own_step(
    moonshine: MoonshineEngine,  # noqa: F811
    model: str,
) -> None:
    """The search runs a step's hypotheses as one batch on the decoder: each row and each
    cache is what that hypothesis's own step gives (the packaged tiny model's merged
    decoder, and the converted base model's split one), up to the int8 models' dynamic
    quantisation, which scales a batch's activations together (a few tenths of a logit on
    unlikely tokens; the probabilities within 0.05, the likeliest token the same)."""
    engine = moonshine
    if model == "base":
        engine = MoonshineEngine(
            model_path(MOONSHINE_BASE_EN), tokenizer_path=model_path(MOONSHINE_TOKENIZER)
        )
    audio = pcm_to_float32(caller("4 0 7 2", 16000))
    hidden = engine._encode(audio)
    first_feed, start = engine._feeds(hidden, audio.size)
    rows, [after_start] = engine._step_many(0, first_feed, [start], [engine._bos])
    digits = [engine._tokenizer.token_to_id(d) for d in "3479"]
    batched, caches = engine._step_many(1, first_feed, [after_start] * 4, digits)
    batched2, _ = engine._step_many(2, first_feed, caches, digits[::-1])
    for k, token in enumerate(digits):
        own = dict(after_start)
        row = engine._step(1, (first_feed, own), token)
        row2 = engine._step(2, (first_feed, own), digits[::-1][k])
        for got, own_row in ((batched[k], row), (batched2[k], row2)):
            p_got, p_own = np.exp(log_softmax(got)), np.exp(log_softmax(own_row))
            np.testing.assert_allclose(p_got, p_own, rtol=0, atol=0.05)
            assert int(np.argmax(got)) == int(np.argmax(own_row))
    # the rows are each hypothesis's own: their histories differ by more than that
    other = np.exp(log_softmax(batched2[0])) - np.exp(log_softmax(batched2[1]))
    assert np.abs(other).max() > 0.2, np.abs(other).max()
