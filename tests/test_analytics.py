"""Call records in SQLite: written by the real session (fake engines; virtual time, and over
real sockets), read back; a process killed mid-call leaves its finished turns and a sound
database; schema migrations; redaction; retention; a recorder that never raises."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from voicebot_pbx.answers.dialogue import RuleDialogue
from voicebot_pbx.call.prompts import ClipLibrary, TtsCache
from voicebot_pbx.call.session import CallSession, Shared
from voicebot_pbx.config import AnalyticsConfig, DialogueConfig, RuleConfig, load_config
from voicebot_pbx.ops.analytics import AnalyticsRecorder, open_recorder
from voicebot_pbx.ops.analytics_schema import (
    CALL_COLUMNS,
    MIGRATIONS,
    SCHEMA_VERSION,
    TURN_COLUMNS,
    Migration,
)
from voicebot_pbx.ops.analytics_sqlite import SqliteStore
from voicebot_pbx.ops.analytics_store import AnalyticsError, Store
from voicebot_pbx.ops.outcomes import end_class, fallback_stage
from voicebot_pbx.ops.records import CallRecord, Recorder, TurnRecord
from voicebot_pbx.ops.redaction import Redactor
from voicebot_pbx.testing import FakeEngines, FakeMedia, ScriptedStt, ToneTts, run_virtual, tone

REPO = Path(__file__).resolve().parent.parent

# --- a scripted bot (fake engines) and a known call ----------------------------------------

HOURS = 440
AGENT = 660
TARIFF = 880
PHRASES = {
    HOURS: "what are your opening hours",
    AGENT: "agent please now",
    TARIFF: "tell me about tariffs",
}
LONG = "First sentence here. Second sentence here. Third sentence here. Fourth one."
CACHED = ("Hi.", "We open at eight.")


def fake_shared(recorder: Recorder | None = None, *, seconds_per_char: float = 0.06) -> Shared:
    """The real session's pieces with fake engines: tones are speech (``PHRASES``)."""
    base = load_config()
    rules = (
        RuleConfig(keywords=("hours",), reply="We open at eight."),
        RuleConfig(keywords=("tariffs",), reply=LONG),
        RuleConfig(keywords=("agent",), reply="Transferring you.", then="transfer", target="q"),
    )
    config = dataclasses.replace(
        base,
        dialogue=DialogueConfig(greeting="Hi.", reprompt="Pardon?", rules=rules),
        fallbacks=dataclasses.replace(base.fallbacks, no_input_s=0.0),
    )
    engines = FakeEngines(
        ScriptedStt(PHRASES, delay_s=0.1), ToneTts(0.15, seconds_per_char=seconds_per_char)
    )
    cache = TtsCache("tone", None)
    for text in CACHED:
        cache.put(text, 8000, engines.script_tts.synthesize_all(text, 8000))
    return Shared(
        config=config,
        engines=engines,
        dialogue=RuleDialogue.from_config(config.dialogue),
        tts_cache=cache,
        clips=ClipLibrary({}),
        recorder=recorder,
    )


async def scripted_call(
    shared: Shared,
    script: list[tuple[float, bytes | str]],
    until_s: float,
    call_id: str = "00000000-0000-4000-8000-000000000001",
) -> tuple[FakeMedia, CallSession]:
    media = FakeMedia(call_id=call_id)
    session = CallSession(media, shared)
    async with asyncio.TaskGroup() as group:
        pacer = group.create_task(media.speaker.run(media.write))
        runner = group.create_task(session.run())
        await media.play_caller(script)
        await media.silence_until(until_s)
        if not runner.done():
            await media.hangup("caller_hangup")
        await runner
        pacer.cancel()
    return media, session


def known_script() -> list[tuple[float, bytes | str]]:
    """Opening hours (cached reply); tariffs (long TTS reply) interrupted by a second
    opening-hours question; then "agent" -> transfer to q."""
    return [
        (2.0, tone(1.0, 8000, HOURS)),
        (5.0, tone(1.0, 8000, TARIFF)),
        (8.5, tone(1.0, 8000, HOURS)),
        (12.0, tone(1.0, 8000, AGENT)),
    ]


def run_known_call(
    recorder: Recorder | None, call_id: str = "00000000-0000-4000-8000-000000000001"
) -> CallSession:
    result: tuple[FakeMedia, CallSession] = run_virtual(
        scripted_call(fake_shared(recorder), known_script(), until_s=16.0, call_id=call_id)
    )
    return result[1]


def without_stamps(call: CallRecord) -> dict[str, Any]:
    data = dataclasses.asdict(call)
    for turn in data["turns"]:
        turn["finished_at"] = None
    return data


@contextlib.contextmanager
def sqlite_recorder(path: Path, **kwargs: Any) -> Iterator[AnalyticsRecorder]:
    recorder = AnalyticsRecorder(lambda: SqliteStore.open(path), **kwargs).start()
    assert recorder.wait_ready()
    try:
        yield recorder
    finally:
        recorder.close()


def read_calls(path: Path) -> list[CallRecord]:
    store = SqliteStore.open(path, create=False)
    try:
        return store.calls()
    finally:
        store.close()


# --- schema ----------------------------------------------------------------------------------


def test_every_record_field_has_a_column() -> None:
    """Adding a field to TurnRecord/CallRecord needs a migration: this fails until then."""
    turn_fields = {f.name for f in dataclasses.fields(TurnRecord)}
    assert turn_fields == set(TURN_COLUMNS) - {"call_id"}
    call_fields = {f.name for f in dataclasses.fields(CallRecord)} - {"turns"}
    assert call_fields <= set(CALL_COLUMNS)


def test_migrations_create_upgrade_and_refuse_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    store = SqliteStore.open(path)
    assert store.schema_version() == 0
    assert store.migrate() == SCHEMA_VERSION
    assert store.migrate() == SCHEMA_VERSION  # idempotent
    call = CallRecord(call_id="c1", pbx="asterisk", peer="p", started_at=1000.0)
    store.write(_row(call), [_turn(call, TurnRecord(turn_id=1, transcript="hi"))])
    # A later release adds a column: the upgrade keeps the rows.
    later = (
        *MIGRATIONS,
        Migration(SCHEMA_VERSION + 1, "test column", ("ALTER TABLE calls ADD COLUMN extra TEXT",)),
    )
    assert store.migrate(later) == SCHEMA_VERSION + 1
    assert [c.turns[0].transcript for c in store.calls()] == ["hi"]
    store.close()
    # This program's migrations on that newer database: refused, clearly.
    store = SqliteStore.open(path)
    with pytest.raises(AnalyticsError, match="newer"):
        store.migrate()
    store.close()
    # ... and the recorder does not raise into calls: it logs and keeps the writes queued.
    recorder = AnalyticsRecorder(lambda: SqliteStore.open(path), retry_s=60.0).start()
    assert not recorder.wait_ready(5.0)
    asyncio.run(recorder.call_started(CallRecord(call_id="c2", pbx="a", peer="p")))
    assert recorder.flush()
    assert recorder.stats.write_errors >= 1 and recorder.stats.backlog == 1
    recorder.close()


def _row(call: CallRecord) -> dict[str, Any]:
    from voicebot_pbx.ops.analytics_schema import call_row

    return call_row(call, "n")


def _turn(call: CallRecord, turn: TurnRecord) -> dict[str, Any]:
    from voicebot_pbx.ops.analytics_schema import turn_row

    return turn_row(call.call_id, turn)


def test_classification_of_end_reasons_and_fallbacks() -> None:
    assert [end_class(r) for r in ("peer_hangup", "caller_hangup", "shutdown", "")] == [
        "caller_hangup",
        "caller_hangup",
        "drained",
        "in_progress",
    ]
    assert end_class("read_timeout") == end_class("session_error") == "error"
    stages = {
        f: fallback_stage(f)
        for f in (
            "stt_empty",
            "dialogue_timeout",
            "tts_failed_midway",
            "clip_missing:hours",
            "nlu_unavailable:rasa",
            "no_input_goodbye",
            "backchannel_ignored",
            "not_understood",
            "max_duration",
            "mystery",
        )
    }
    assert stages == {
        "stt_empty": "stt",
        "dialogue_timeout": "dialogue",
        "tts_failed_midway": "tts",
        "clip_missing:hours": "tts",
        "nlu_unavailable:rasa": "nlu",
        "no_input_goodbye": "no_input",
        "backchannel_ignored": "turn_taking",
        "not_understood": "dialogue",
        "max_duration": "call",
        "mystery": "other",
    }


# --- a call through the real session ----------------------------------------------------------


def test_a_scripted_call_is_recorded_turn_by_turn_and_reads_back_whole(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    with sqlite_recorder(path, node="test-node") as recorder:
        session = run_known_call(recorder)
        assert recorder.flush()
        assert recorder.stats.write_errors == 0
    record = session.record
    (stored,) = read_calls(path)
    # Everything the session knew, read back (the recorder adds finished_at stamps).
    assert without_stamps(stored) == without_stamps(record)
    assert stored.end_reason == "transferred" and stored.transfer_target == "q"
    speech = [t for t in stored.turns if t.kind == "speech"]
    assert [t.transcript for t in speech] == [
        PHRASES[HOURS],
        PHRASES[TARIFF],
        PHRASES[HOURS],
        PHRASES[AGENT],
    ]
    assert [t.barged_in for t in speech] == [False, True, False, False]
    assert speech[0].reply_source == "cache" and speech[1].reply_source == "tts"
    assert all(t.end_of_speech_to_first_frame_ms is not None for t in speech)
    assert all(t.end_of_speech_to_stt_ms is not None for t in speech)
    assert speech[1].tts_first_audio_ms is not None and speech[1].tts_first_audio_ms > 0
    assert speech[1].played_ms is not None and speech[1].played_ms > 0
    # Turns were stamped as they finished, in order, before the call ended.
    stamps = [t.finished_at for t in stored.turns if t.finished_at is not None]
    assert len(stamps) >= 4 and stamps == sorted(stamps)
    assert stored.ended_at is not None and stamps[-1] <= stored.ended_at + 1.0
    assert [t.seq for t in stored.turns] == list(range(len(stored.turns)))


def test_turns_are_on_disk_before_the_call_ends(tmp_path: Path) -> None:
    """turn_finished alone (no call_ended): what a crash after those turns leaves."""
    path = tmp_path / "calls.db"

    async def partial(recorder: AnalyticsRecorder) -> None:
        call = CallRecord(call_id="c-partial", pbx="asterisk", peer="p")
        await recorder.call_started(call)
        for seq in range(3):
            turn = TurnRecord(turn_id=seq, seq=seq, transcript=f"turn {seq}")
            call.turns.append(turn)
            await recorder.turn_finished(call, turn)
        # Visible to another connection (another process) now, without a flush.
        (seen,) = read_calls(path)
        assert [t.transcript for t in seen.turns] == ["turn 0", "turn 1", "turn 2"]
        assert seen.ended_at is None and seen.end_reason == ""

    with sqlite_recorder(path) as recorder:
        asyncio.run(partial(recorder))


def test_final_values_win_and_a_late_turn_write_does_not_reopen_the_call(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"

    async def run(recorder: AnalyticsRecorder) -> None:
        call = CallRecord(call_id="c", pbx="asterisk", peer="p", started_at=100.0)
        turn = TurnRecord(turn_id=1, seq=0, transcript="first", reply_text="a")
        call.turns.append(turn)
        await recorder.turn_finished(call, turn)
        turn.reply_text = "final"
        turn.barged_in = True
        call.ended_at, call.end_reason = 130.0, "caller_hangup"
        await recorder.call_ended(call)
        # A straggling turn write after the end (old snapshot of the call).
        stale = CallRecord(call_id="c", pbx="asterisk", peer="p", started_at=100.0)
        await recorder.turn_finished(stale, TurnRecord(turn_id=2, seq=1, transcript="late"))

    with sqlite_recorder(path) as recorder:
        asyncio.run(run(recorder))
    (call,) = read_calls(path)
    assert call.end_reason == "caller_hangup" and call.ended_at == 130.0
    assert call.turns[0].reply_text == "final" and call.turns[0].barged_in
    assert call.turns[0].finished_at is not None  # the first stamp is kept
    assert [t.transcript for t in call.turns] == ["first", "late"]


# --- over real sockets, and killed mid-call --------------------------------------------------


def serve_fake_bot(db: str, node: str) -> None:
    """Subprocess entry: the AudioSocket server + real session with fake engines, recording
    to ``db``; prints {"port": N} and serves until killed."""
    from voicebot_pbx.call.session import make_handler
    from voicebot_pbx.ops.logs import configure_logging
    from voicebot_pbx.pbx.audiosocket import AudioSocketServer

    configure_logging("json", "warning")  # stderr; stdout is for the port

    async def main() -> None:
        recorder = AnalyticsRecorder(lambda: SqliteStore.open(db), node=node).start()
        recorder.wait_ready()
        shared = fake_shared(recorder, seconds_per_char=0.03)
        config = dataclasses.replace(shared.config.server, port=0)
        server = AudioSocketServer(config, make_handler(shared))
        await server.start()
        print(json.dumps({"port": server.port}), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def spawn(entry: str, *args: str) -> subprocess.Popen[str]:
    code = f"import sys; from tests.test_analytics import {entry} as f; f(*sys.argv[1:])"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def caller_speech(freq: int, seconds: float = 1.0) -> bytes:
    return bytes(3200) + tone(seconds, 8000, freq) + bytes(1600)


def test_crash_mid_call_keeps_the_finished_turns_and_a_sound_database(tmp_path: Path) -> None:
    from voicebot_pbx.pbx.caller import Say, SimulatedCaller

    db = tmp_path / "calls.db"
    bot = spawn("serve_fake_bot", str(db), "crash-node")
    try:
        assert bot.stdout is not None
        port = json.loads(bot.stdout.readline())["port"]

        async def call_and_kill() -> str:
            caller = SimulatedCaller("127.0.0.1", port, reply_gap_s=0.5)
            steps = [
                Say(caller_speech(HOURS)),
                Say(caller_speech(HOURS)),
                Say(caller_speech(TARIFF, seconds=4.0)),  # killed while this is spoken
            ]
            task = asyncio.create_task(caller.run(steps))
            for _ in range(3000):  # until the third utterance starts
                if len(caller.result.turns) >= 3 or task.done():
                    break
                await asyncio.sleep(0.02)
            assert not task.done(), "the call ended before the third utterance"
            await asyncio.sleep(0.5)
            bot.send_signal(signal.SIGKILL)
            await asyncio.wait_for(task, 10.0)
            return caller.result.call_id

        call_id = asyncio.run(call_and_kill())
        assert bot.wait(10.0) == -signal.SIGKILL
    finally:
        if bot.poll() is None:
            bot.kill()
            bot.wait()

    store = SqliteStore.open(db, create=False)
    assert store.integrity_check() == "ok"
    (call,) = store.calls()
    store.close()
    assert call.call_id == call_id and call.ended_at is None and call.end_reason == ""
    assert [(t.kind, t.transcript, t.reply_text) for t in call.turns] == [
        ("greeting", "", "Hi."),
        ("speech", PHRASES[HOURS], "We open at eight."),
        ("speech", PHRASES[HOURS], "We open at eight."),
    ]
    assert all(t.finished_at is not None for t in call.turns)

    # The node restarts: its open call is closed as process_died at its last finished turn.
    with sqlite_recorder(db, node="crash-node"):
        pass
    (call,) = read_calls(db)
    assert call.end_reason == "process_died" and end_class(call.end_reason) == "error"
    assert call.ended_at == max(t.finished_at or 0.0 for t in call.turns)


def write_turns_until_killed(db: str) -> None:
    """Subprocess entry: write turns as fast as possible, printing each acknowledged seq."""
    from voicebot_pbx.ops.logs import configure_logging

    configure_logging("json", "warning")

    async def main() -> None:
        recorder = AnalyticsRecorder(
            lambda: SqliteStore.open(db), node="ack", max_wait_s=60.0
        ).start()
        recorder.wait_ready()
        call = CallRecord(call_id="ack-call", pbx="asterisk", peer="p")
        await recorder.call_started(call)
        for seq in range(1_000_000):
            turn = TurnRecord(turn_id=seq, seq=seq, transcript=f"t{seq}" * 20)
            call.turns.append(turn)
            await recorder.turn_finished(call, turn)
            print(seq, flush=True)

    asyncio.run(main())


def test_every_acknowledged_turn_survives_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "calls.db"
    writer = spawn("write_turns_until_killed", str(db))
    assert writer.stdout is not None
    acked = -1
    for line in writer.stdout:
        acked = int(line)
        if acked >= 200:
            writer.send_signal(signal.SIGKILL)  # while it keeps writing
            break
    rest, _ = writer.communicate(timeout=10)
    acked = max([acked, *(int(x) for x in rest.split())])
    assert writer.returncode == -signal.SIGKILL
    store = SqliteStore.open(db, create=False)
    assert store.integrity_check() == "ok"
    (call,) = store.calls()
    store.close()
    seqs = [t.seq for t in call.turns]
    assert seqs[: acked + 1] == list(range(acked + 1))  # every acknowledged turn, in order


def test_a_call_over_real_sockets_is_recorded(tmp_path: Path) -> None:
    from voicebot_pbx.call.session import make_handler
    from voicebot_pbx.pbx.audiosocket import AudioSocketServer
    from voicebot_pbx.pbx.caller import Say, SimulatedCaller

    db = tmp_path / "calls.db"

    async def scenario(recorder: AnalyticsRecorder) -> str:
        shared = fake_shared(recorder, seconds_per_char=0.03)
        server = AudioSocketServer(
            dataclasses.replace(shared.config.server, port=0), make_handler(shared)
        )
        await server.start()
        try:
            caller = SimulatedCaller("127.0.0.1", server.port, reply_gap_s=0.5)
            result = await caller.run([Say(caller_speech(HOURS)), Say(caller_speech(AGENT))])
            for _ in range(100):  # the record is written as the call closes
                if not server.calls:
                    break
                await asyncio.sleep(0.05)
        finally:
            await server.close()
        return result.call_id

    with sqlite_recorder(db, node="sockets") as recorder:
        call_id = asyncio.run(scenario(recorder))
        assert recorder.flush()
    (call,) = read_calls(db)
    assert call.call_id == call_id and call.pbx == "asterisk"
    assert call.peer.startswith("127.0.0.1:")
    assert call.end_reason == "transferred" and call.transfer_target == "q"
    assert call.ended_at is not None and call.ended_at > call.started_at
    speech = [t for t in call.turns if t.kind == "speech"]
    assert [t.transcript for t in speech] == [PHRASES[HOURS], PHRASES[AGENT]]
    assert [t.reply_text for t in speech] == ["We open at eight.", "Transferring you."]
    for turn in speech:
        assert turn.end_of_speech_to_first_frame_ms is not None
        assert turn.end_of_speech_to_first_frame_ms > 0


@pytest.mark.models
def test_a_real_model_call_is_recorded(tmp_path: Path, tts_cache_dir: Path, request: Any) -> None:
    """The whole bot (silero, Whisper, Piper) over real sockets, recording to SQLite."""
    from tests.speech import have_espeak

    if not have_espeak():
        pytest.skip("needs espeak-ng and sox (scripts/install)")
    from tests.conftest import running_bot
    from tests.speech import espeak_pcm, silence
    from voicebot_pbx.pbx.caller import Say, SimulatedCaller

    engines = request.getfixturevalue("engines")
    base = load_config()
    config = dataclasses.replace(
        base,
        server=dataclasses.replace(base.server, port=0),
        dialogue=DialogueConfig(
            greeting="Hello, how can I help?",
            rules=(RuleConfig(keywords=("opening", "open", "hours"), reply="We open at eight."),),
        ),
    )
    db = tmp_path / "calls.db"

    async def scenario(recorder: AnalyticsRecorder) -> str:
        async with running_bot(engines, config, tts_cache_dir, tmp_path) as (server, shared):
            shared.recorder = recorder
            speech = silence(200, 8000) + espeak_pcm("what are your opening hours") + bytes(1600)
            caller = SimulatedCaller("127.0.0.1", server.port, reply_gap_s=0.8)
            result = await caller.run([Say(speech)], hangup_after_s=0.3)
            for _ in range(100):
                if not server.calls:
                    break
                await asyncio.sleep(0.05)
            return result.call_id

    with sqlite_recorder(db, node="models") as recorder:
        call_id = asyncio.run(scenario(recorder))
        assert recorder.flush()
    (call,) = read_calls(db)
    assert call.call_id == call_id and call.end_reason == "caller_hangup"
    (turn,) = [t for t in call.turns if t.kind == "speech"]
    assert "open" in turn.transcript.lower() and turn.reply_text == "We open at eight."
    assert turn.end_of_speech_to_first_frame_ms is not None


# --- redaction ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("my number is 07700 900123", "my number is [digits]"),
        ("account one two three four", "account [digits]"),
        ("it's 4 five 6 7", "it's [digits]"),
        ("call +44 (20) 7946-0958 now", "call [digits] now"),
        ("mail me at jane.doe+x@example.co.uk please", "mail me at [email] please"),
        ("it is jane at example dot com", "it is [email]"),
        ("I'm Jane Smith from Leeds", "I'm [name] from Leeds"),
        ("jane said hi to JOHN", "[name] said hi to [name]"),
        ("we open at 8am on day 12", "we open at 8am on day 12"),  # short numbers stay
        ("I want one ticket", "I want one ticket"),
        ("oh I see, look at it. Thanks", "oh I see, look at it. Thanks"),
    ],
)
def test_redaction(text: str, expected: str) -> None:
    redactor = Redactor(names=("Jane Smith", "jane", "John"), min_digits=3)
    assert redactor.text(text) == expected


def test_caller_id_redaction() -> None:
    redactor = Redactor()
    assert redactor.caller_id("+441234567890") == "+**********90"
    assert redactor.caller_id("sip:jane@example.com") == "[redacted]"
    assert redactor.caller_id(None) is None


def test_redaction_happens_before_anything_is_written(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    secrets = ("07700900123", "jane@example.com", "Jane", "4111")
    config = AnalyticsConfig(sqlite_path=str(path), redact=True, redact_names=("Jane",))
    recorder = open_recorder(config, tmp_path)
    assert recorder.wait_ready()

    async def run() -> None:
        call = CallRecord(call_id="c", pbx="asterisk", peer="p", caller_id="07700900123")
        await recorder.call_started(call)
        turn = TurnRecord(
            turn_id=1,
            transcript="I'm Jane, jane@example.com, card 4111 1111 1111 1111",
            reply_text="Thanks Jane, I'll call 07700900123.",
        )
        call.turns.append(turn)
        await recorder.turn_finished(call, turn)
        call.errors.append("dialogue: ValueError: bad input 'Jane 4111'")
        call.ended_at, call.end_reason = time.time(), "bot_hangup"
        await recorder.call_ended(call)

    asyncio.run(run())
    (call,) = read_calls(path)
    recorder.close()
    assert call.caller_id == "*********23"
    assert call.turns[0].transcript == "I'm [name], [email], card [digits]"
    assert call.turns[0].reply_text == "Thanks [name], I'll call [digits]."
    # Not in the database file, nor its WAL: never written at all.
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("calls.db*"))
    for secret in secrets:
        assert secret.encode() not in raw, secret


# --- retention ---------------------------------------------------------------------------------


def test_retention_deletes_old_calls_and_recordings(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    recordings = tmp_path / "recordings"
    now = time.time()
    old_wav = recordings / "2020-01-01" / "old.wav"
    new_wav = recordings / "today" / "new.wav"
    for wav in (old_wav, new_wav):
        wav.parent.mkdir(parents=True)
        wav.write_bytes(b"RIFF")
    os.utime(old_wav, (now - 40 * 86400, now - 40 * 86400))
    store = SqliteStore.open(path)
    store.migrate()
    for call_id, age_days in (("old", 40.0), ("edge", 29.0), ("new", 0.1)):
        call = CallRecord(call_id=call_id, pbx="a", peer="p", started_at=now - age_days * 86400)
        call.recording_path = str(old_wav) if call_id == "old" else None
        store.write(_row(call), [_turn(call, TurnRecord(turn_id=1))])
    store.close()
    config = AnalyticsConfig(
        sqlite_path=str(path), retention_days=30, recordings_dir=str(recordings)
    )
    recorder = open_recorder(config, tmp_path)
    assert recorder.wait_ready() and recorder.flush()
    recorder.close()
    assert [c.call_id for c in read_calls(path)] == ["edge", "new"]
    assert not old_wav.exists() and not old_wav.parent.exists() and new_wav.exists()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM turns").fetchone()[0] == 2
    conn.close()


# --- a recorder that never raises ---------------------------------------------------------------


def test_an_unreachable_store_backlogs_then_catches_up(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    attempts: list[float] = []

    def flaky() -> Store:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise sqlite3.OperationalError("unable to open database file")
        return SqliteStore.open(path)

    recorder = AnalyticsRecorder(flaky, retry_s=0.05).start()

    async def run() -> None:
        call = CallRecord(call_id="c", pbx="a", peer="p")
        await recorder.call_started(call)  # returns although nothing could be written
        for seq in range(3):
            turn = TurnRecord(turn_id=seq, seq=seq, transcript=str(seq))
            call.turns.append(turn)
            await recorder.turn_finished(call, turn)

    asyncio.run(asyncio.wait_for(run(), 5.0))
    deadline = time.monotonic() + 5.0
    while recorder.stats.writes < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    recorder.close()
    assert recorder.stats.write_errors == 2 and recorder.stats.dropped == 0
    (call,) = read_calls(path)
    assert [t.transcript for t in call.turns] == ["0", "1", "2"]


def test_recorder_survives_bad_records_and_a_closed_loop(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    with sqlite_recorder(path) as recorder:
        bad: Any = CallRecord(call_id="c", pbx="a", peer="p")
        bad.turns = [object()]  # not a TurnRecord: snapshot fails, logged, no raise
        asyncio.run(recorder.call_ended(bad))

        async def not_waiting() -> None:
            # The caller gives up waiting (the session's timeout): the write still happens.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0):
                    await recorder.call_ended(CallRecord(call_id="d", pbx="a", peer="p"))

        asyncio.run(not_waiting())
        assert recorder.flush()
    assert [c.call_id for c in read_calls(path)] == ["d"]


def test_sqlite_file_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "state" / "calls.db"
    with sqlite_recorder(path):
        pass
    assert path.stat().st_mode & 0o777 == 0o600
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_open_store_needs_an_existing_database_and_a_dsn_for_postgres(tmp_path: Path) -> None:
    from voicebot_pbx.ops.analytics_open import open_store, store_factory

    with pytest.raises(AnalyticsError, match="no call records"):
        open_store(AnalyticsConfig(), tmp_path)
    with pytest.raises(AnalyticsError, match="VOICEBOT_TEST_NO_SUCH_DSN"):
        store_factory(
            AnalyticsConfig(backend="postgres", dsn_env="VOICEBOT_TEST_NO_SUCH_DSN"), tmp_path
        )


def test_analytics_config_parses_like_the_rest_of_the_config() -> None:
    """The ``[analytics]`` table: types checked and errors named as for every other table."""
    from voicebot_pbx import config as config_module
    from voicebot_pbx.config import parse as config_parse

    data = {
        "backend": "postgres",
        "retention_days": 30,
        "redact": True,
        "redact_names": ["Alice", "Bob"],
        "record_audio": True,
    }
    if any(f.name == "analytics" for f in dataclasses.fields(config_module.Config)):
        parsed = config_module.parse_config({"analytics": data}).analytics  # type: ignore[attr-defined]
    else:  # until the lead adds the table to Config
        parsed = config_parse.build(AnalyticsConfig, data, "analytics", "<test>")
    assert parsed == AnalyticsConfig(
        backend="postgres",
        retention_days=30,
        redact=True,
        redact_names=("Alice", "Bob"),
        record_audio=True,
    )
    for bad in ({"backend": "mysql"}, {"retention_days": -1}, {"redact_names": "Alice"}):
        with pytest.raises(config_parse.ConfigError, match="analytics"):
            config_parse.build(AnalyticsConfig, bad, "analytics", "<test>")


# --- a page of calls, filtered in SQL (the calls web page) -------------------------------------

PAGE_T0 = 1_700_000_000.0
PAGE_PROFILES = ("default", "sales", "Sales", "support")
PAGE_REASONS = ("caller_hangup", "peer_hangup", "transferred", "bot_hangup", "drained", "boom", "")
PAGE_INTENTS = ("billing", "Hours", "agent", None)
PAGE_FALLBACKS = ((), ("stt_low_confidence",), ("clip_missing:hours", "llm_timeout"))


def synthetic_calls(n: int, turns_per_call: int = 2) -> list[CallRecord]:
    """``n`` calls a minute apart with a spread of profiles, end reasons (in progress and
    an unknown one included), transfer targets, intents and fallbacks; some start in the
    same second (ties are ordered by call id)."""
    calls = []
    for i in range(n):
        started = PAGE_T0 + 60.0 * (i // 2 * 2 if i % 7 == 0 else i)
        reason = PAGE_REASONS[i % len(PAGE_REASONS)]
        call = CallRecord(
            call_id=f"syn-{i:06d}",
            pbx="asterisk",
            peer="127.0.0.1",
            profile=PAGE_PROFILES[i % len(PAGE_PROFILES)],
            started_at=started,
            ended_at=None if not reason else started + 30.0,
            end_reason=reason,
            transfer_target=("Sales-Queue" if i % 2 else "support")
            if reason == "transferred"
            else None,
        )
        for seq in range(turns_per_call):
            call.turns.append(
                TurnRecord(
                    turn_id=seq,
                    seq=seq,
                    transcript=f"turn {seq}",
                    intent=PAGE_INTENTS[(i + seq) % len(PAGE_INTENTS)],
                    fallbacks=list(PAGE_FALLBACKS[(i * 3 + seq) % len(PAGE_FALLBACKS)]),
                    end_of_speech_to_first_frame_ms=400.0,
                    finished_at=started + 5.0 * (seq + 1),
                )
            )
        calls.append(call)
    return calls


def bulk_write(store: Store, calls: list[CallRecord]) -> None:
    """Many calls in one transaction (the recorder writes them one by one: too slow here)."""
    from voicebot_pbx.ops.analytics_schema import (
        CALL_UPSERT,
        TURN_UPSERT,
        call_params,
        call_row,
        turn_params,
        turn_row,
    )

    with store._transaction() as cur:
        cur.executemany(store._sql(CALL_UPSERT), [call_params(call_row(c, "n")) for c in calls])
        cur.executemany(
            store._sql(TURN_UPSERT),
            [turn_params(turn_row(c.call_id, t)) for c in calls for t in c.turns],
        )


class _CountingCursor:
    """A cursor that counts the rows fetched through it, by row width."""

    def __init__(self, cur: Any, fetched: dict[int, int]) -> None:
        self._cur, self._fetched = cur, fetched

    def _count(self, rows: list[Any]) -> list[Any]:
        for row in rows:
            self._fetched[len(row)] = self._fetched.get(len(row), 0) + 1
        return rows

    def fetchall(self) -> list[Any]:
        return self._count(list(self._cur.fetchall()))

    def fetchone(self) -> Any:
        row = self._cur.fetchone()
        if row is not None:
            self._count([row])
        return row

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)


class CountingSqliteStore(SqliteStore):
    """A SQLite store that counts the rows it reads: ``calls_read`` (rows as wide as a call)
    and ``turns_read`` (as wide as a turn)."""

    fetched: dict[int, int]

    @contextlib.contextmanager
    def _transaction(self, *, write: bool = True) -> Iterator[Any]:
        with super()._transaction(write=write) as cur:
            yield _CountingCursor(cur, self.fetched)

    @property
    def calls_read(self) -> int:
        return self.fetched.get(len(CALL_COLUMNS), 0)

    @property
    def turns_read(self) -> int:
        return self.fetched.get(len(TURN_COLUMNS), 0)

    @classmethod
    def counting(cls, path: Path) -> CountingSqliteStore:
        plain = SqliteStore.open(path, create=False)
        store = cls(plain.conn, plain.path)
        store.fetched = {}
        return store


def expected_page(calls: list[CallRecord], query: Any) -> list[str]:
    """What ``calls_page(query)`` must return, in Python over all calls: newest first."""

    def passes(call: CallRecord) -> bool:
        if query.since is not None and call.started_at < query.since:
            return False
        if query.until is not None and call.started_at >= query.until:
            return False
        if query.end_reason and not query.end_reason(call.end_reason):
            return False
        if query.profile and not query.profile(call.profile):
            return False
        if query.transfer_target and not (
            call.transfer_target is not None and query.transfer_target(call.transfer_target)
        ):
            return False
        if query.intent and not any(
            t.intent is not None and query.intent(t.intent) for t in call.turns
        ):
            return False
        return not query.fallback or any(query.fallback(f) for t in call.turns for f in t.fallbacks)

    matched = sorted(
        (c for c in calls if passes(c)), key=lambda c: (c.started_at, c.call_id), reverse=True
    )
    return [c.call_id for c in matched]


def page_queries() -> list[Any]:
    from voicebot_pbx.ops.analytics_store import CallQuery

    return [
        CallQuery(),
        CallQuery(profile=lambda p: p.casefold() == "sales"),  # "sales" and "Sales"
        CallQuery(end_reason=lambda r: "caller_hangup" in (r, end_class(r))),  # peer_hangup too
        CallQuery(end_reason=lambda r: end_class(r) == "error"),  # "boom"
        CallQuery(end_reason=lambda r: end_class(r) == "in_progress"),  # ""
        CallQuery(transfer_target=lambda t: t.casefold() == "sales-queue"),
        CallQuery(intent=lambda i: i.casefold() == "hours"),
        CallQuery(fallback=lambda f: "missing" in f),
        CallQuery(since=PAGE_T0 + 600.0, until=PAGE_T0 + 3000.0, profile=lambda p: p == "sales"),
        CallQuery(
            intent=lambda i: i == "billing",
            fallback=lambda f: f.startswith("stt"),
            end_reason=lambda r: r != "",
        ),
        CallQuery(profile=lambda p: p == "nobody"),  # no stored value passes
        CallQuery(since=PAGE_T0 + 1e9),  # an empty window
    ]


def check_calls_page(store: Store, calls: list[CallRecord]) -> None:
    """``calls_page`` against the Python reference, every page of every query (any store)."""
    for query in page_queries():
        expected = expected_page(calls, query)
        for size in (1, 7, 50):
            got: list[str] = []
            offset = 0
            while True:
                page = store.calls_page(query, limit=size, offset=offset)
                assert page.total == len(expected)
                assert len(page.calls) <= size
                if not page.calls:
                    break
                got += [c.call_id for c in page.calls]
                offset += size
            assert got == expected, (query, size)
    # A page's calls come with their turns, as ``call`` reads them.
    first = store.calls_page(page_queries()[0], limit=3).calls
    for call in first:
        whole = store.call(call.call_id)
        assert whole is not None and call == whole
    with pytest.raises(ValueError, match="limit"):
        store.calls_page(page_queries()[0], limit=0)
    with pytest.raises(ValueError, match="limit"):
        store.calls_page(page_queries()[0], limit=10_000)
    with pytest.raises(ValueError, match="offset"):
        store.calls_page(page_queries()[0], limit=5, offset=-1)
    far = store.calls_page(page_queries()[0], limit=5, offset=10**15)
    assert far.calls == [] and far.total == len(calls)


def test_a_page_of_calls_is_filtered_sorted_and_counted_in_sql(tmp_path: Path) -> None:
    calls = synthetic_calls(150)
    store = SqliteStore.open(tmp_path / "calls.db")
    store.migrate()
    bulk_write(store, calls)
    try:
        check_calls_page(store, calls)
    finally:
        store.close()


def test_a_page_of_ten_thousand_calls_reads_one_page_of_rows(tmp_path: Path) -> None:
    """10 000 stored calls: page 1, a middle page and a filtered page each read at most one
    page of call rows (and those calls' turns), not the whole table."""
    from voicebot_pbx.ops.analytics_store import CallQuery

    calls = synthetic_calls(10_000)
    plain = SqliteStore.open(tmp_path / "calls.db")
    plain.migrate()
    bulk_write(plain, calls)
    plain.close()
    store = CountingSqliteStore.counting(tmp_path / "calls.db")
    try:
        for query, offset in (
            (CallQuery(), 0),
            (CallQuery(), 5000),
            (CallQuery(profile=lambda p: p == "support", intent=lambda i: i == "billing"), 100),
        ):
            store.fetched = {}
            page = store.calls_page(query, limit=50, offset=offset)
            expected = expected_page(calls, query)
            assert [c.call_id for c in page.calls] == expected[offset : offset + 50]
            assert page.total == len(expected) and len(page.calls) == 50
            assert store.calls_read == 50
            assert store.turns_read == 50 * 2
    finally:
        store.close()
