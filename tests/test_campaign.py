"""Outbound campaigns (issue #23 item 1): the contact list, the calling window, retries,
caps, the do-not-call list and resuming, on virtual time with a scripted dialer; the AMI
dialer against the fake Asterisk; the CLI's status and dnc commands."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog

from tests.fake_ami import FakeAmi, OriginatePlan
from voicebot_pbx.call.session import Shared
from voicebot_pbx.campaign.contacts import Contact, ContactsError, parse_contacts
from voicebot_pbx.campaign.policy import RateGate, Window, retry_after_s
from voicebot_pbx.campaign.runner import AmiDialer, DialResult, RunStats, run_campaign
from voicebot_pbx.campaign.state import CampaignError, CampaignStore
from voicebot_pbx.config import AmiConfig, CampaignConfig, Config, parse_config
from voicebot_pbx.config.parse import ConfigError
from voicebot_pbx.testing import run_virtual

# Wednesday 2026-12-02 10:00 in London (UTC+0 in winter): inside the default window.
WED_10 = dt.datetime(2026, 12, 2, 10, 0, tzinfo=dt.UTC).timestamp()
CSV = "number,name,profile,timezone,account\n"


def contacts_csv(*rows: str) -> str:
    return CSV + "".join(row + "\n" for row in rows)


class ScriptedDialer:
    """Each number's outcomes in order (the last one repeats), each after ``ring_s``."""

    def __init__(self, script: dict[str, list[str]], ring_s: float = 5.0) -> None:
        self.script = script
        self.ring_s = ring_s
        self.calls: list[tuple[float, str, str]] = []  # (loop time, number, call id)
        self.in_flight = 0
        self.max_in_flight = 0

    async def dial(self, contact: Contact, call_id: str, campaign: str) -> DialResult:
        loop = asyncio.get_running_loop()
        self.calls.append((loop.time(), contact.number, call_id))
        outcomes = self.script[contact.number]
        done = sum(1 for _t, number, _c in self.calls if number == contact.number)
        outcome = outcomes[min(done, len(outcomes)) - 1]
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.ring_s)
        finally:
            self.in_flight -= 1
        return DialResult(outcome)  # type: ignore[arg-type]


def config(**changes: object) -> Config:
    return dataclasses.replace(Config(), campaign=dataclasses.replace(CampaignConfig(), **changes))  # type: ignore[arg-type]


def run(
    store: CampaignStore,
    cfg: Config,
    dialer: ScriptedDialer,
    start: float = WED_10,
    name: str = "c1",
    **kwargs: object,
) -> tuple[RunStats, Callable[[], float]]:
    clock_box: list[Callable[[], float]] = []

    async def main() -> RunStats:
        loop = asyncio.get_running_loop()
        origin = loop.time()
        clock_box.append(lambda: start + loop.time() - origin)
        return await run_campaign(store, name, cfg, dialer, clock=clock_box[0], **kwargs)  # type: ignore[arg-type]

    return run_virtual(main()), clock_box[0]


def opened(
    tmp_path: Path, text: str, name: str = "c1", sha: str = "a", now: float = WED_10
) -> CampaignStore:
    store = CampaignStore(tmp_path / "campaigns.sqlite")
    store.open_campaign(name, parse_contacts(text), source="list.csv", sha256=sha, now=now)
    return store


# --- the contact list ---------------------------------------------------------------------


def test_contacts_keep_their_columns_and_other_columns_become_variables() -> None:
    (a, b) = parse_contacts(
        contacts_csv("+44 20 7946 0001,Ada,reminder,,A-17", "07700 900002,,,Europe/Paris,")
    )
    assert (a.seq, a.number, a.name, a.profile, a.timezone) == (
        1,
        "+44 20 7946 0001",
        "Ada",
        "reminder",
        "",
    )
    assert a.variables == (("ACCOUNT", "A-17"),)
    assert (b.seq, b.timezone) == (2, "Europe/Paris")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name\nAda\n", "with 'number'"),
        (contacts_csv("not-a-number,Ada,,,"), ":2: 'not-a-number' is not a phone number"),
        (
            contacts_csv("+44 20 7946 0001,,,,", "+442079460001,,,,"),
            ":3: +442079460001 is already on line 2",
        ),
        (contacts_csv("07700 900002,,,Mars/Olympus,"), ":2: unknown time zone"),
        ("number,bad column\n123456,x\n", "is not a usable variable name"),
        (CSV, "no contacts"),
    ],
)
def test_a_bad_contact_list_is_one_error_naming_the_line(text: str, expected: str) -> None:
    with pytest.raises(ContactsError) as info:
        parse_contacts(text, "list.csv")
    assert str(info.value).startswith("list.csv") and expected in str(info.value)


# --- policy (pure) ------------------------------------------------------------------------


def test_retry_steps_per_outcome_then_finished() -> None:
    cfg = CampaignConfig(busy_retries_s=(60.0, 120.0), no_answer_retries_s=())
    assert [retry_after_s("busy", n, cfg) for n in (1, 2, 3)] == [60.0, 120.0, None]
    assert retry_after_s("no_answer", 1, cfg) is None
    assert retry_after_s("answered", 1, cfg) is None


def test_the_window_is_local_to_the_contact() -> None:
    from zoneinfo import ZoneInfo

    window = Window.from_config(CampaignConfig(window="09:00-20:00", days=("mon", "tue", "wed")))
    at = dt.datetime(2026, 12, 2, 8, 30, tzinfo=dt.UTC)  # Wednesday
    assert not window.open_at(at, ZoneInfo("Europe/London"))  # 08:30 there
    assert window.open_at(at, ZoneInfo("Europe/Paris"))  # 09:30 there
    opens = window.next_open(
        dt.datetime(2026, 12, 2, 21, 0, tzinfo=dt.UTC), ZoneInfo("Europe/London")
    )
    # Wednesday evening: closed until Monday 09:00 (Thursday-Sunday are not calling days).
    assert opens == dt.datetime(2026, 12, 7, 9, 0, tzinfo=ZoneInfo("Europe/London"))


def test_the_rate_gate_spaces_starts() -> None:
    gate = RateGate(2.0)
    assert gate.wait_s(10.0) == 0.0
    gate.started(10.0)
    assert gate.wait_s(10.1) == pytest.approx(0.4)
    gate.started(10.5)
    assert gate.wait_s(10.5) == pytest.approx(0.5)


def test_bad_campaign_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "campaign": {
                    "window": "20:00-09:00",
                    "days": ["mon", "someday"],
                    "timezone": "Mars/Olympus",
                    "channel": "PJSIP/1001",
                    "busy_retries_s": [0],
                    "max_concurrent": 0,
                }
            }
        )
    message = str(info.value)
    for part in (
        "campaign.window",
        "campaign.days",
        "campaign.timezone",
        "{number}",
        "retries_s",
        "max_concurrent",
    ):
        assert part in message, part


# --- running ------------------------------------------------------------------------------


def test_outcomes_retries_and_the_dnc_list(tmp_path: Path) -> None:
    store = opened(
        tmp_path,
        contacts_csv("1001,,,,", "1002,,,,", "1003,,,,", "1004,,,,"),
    )
    store.add_dnc("1004", source="test", now=WED_10)
    dialer = ScriptedDialer(
        {
            "1001": ["answered"],
            "1002": ["busy", "answered"],
            "1003": ["no_answer"],
            "1004": ["answered"],
        }
    )
    cfg = config(busy_retries_s=(60.0,), no_answer_retries_s=(300.0, 600.0), calls_per_s=10.0)
    stats, _clock = run(store, cfg, dialer)
    summary = store.summary("c1")
    assert summary["status"] == {"done": 2, "exhausted": 1, "dnc": 1}
    assert summary["attempts"] == {"answered": 2, "busy": 1, "no_answer": 3}
    assert stats.skipped_dnc == 1 and not [c for c in dialer.calls if c[1] == "1004"]
    # The busy number's retry came its back-off after the busy outcome (ring_s 5 s).
    times = [t for t, number, _ in dialer.calls if number == "1002"]
    assert times[1] - times[0] == pytest.approx(5.0 + 60.0, abs=1.5)
    no_answer = [t for t, number, _ in dialer.calls if number == "1003"]
    assert no_answer[2] - no_answer[1] == pytest.approx(5.0 + 600.0, abs=1.5)
    # Every call had its own id, written before it was dialled.
    assert len({c for _t, _n, c in dialer.calls}) == len(dialer.calls)


def test_caps_on_concurrency_and_calls_per_second(tmp_path: Path) -> None:
    store = opened(tmp_path, contacts_csv(*(f"20{i:02d},,,," for i in range(12))))
    dialer = ScriptedDialer({f"20{i:02d}": ["answered"] for i in range(12)}, ring_s=4.0)
    stats, _clock = run(store, config(max_concurrent=3, calls_per_s=2.0), dialer)
    assert dialer.max_in_flight == 3 and stats.max_in_flight == 3
    starts = sorted(t for t, _n, _c in dialer.calls)
    assert min(b - a for a, b in zip(starts, starts[1:], strict=False)) >= 0.5 - 1e-6
    assert store.summary("c1")["status"] == {"done": 12}


def test_outside_the_window_the_call_waits_for_it_in_the_contacts_time_zone(tmp_path: Path) -> None:
    # Wednesday 07:00 UTC: London is not open yet (opens at 09:00), Tokyo is (16:00).
    start = dt.datetime(2026, 12, 2, 7, 0, tzinfo=dt.UTC).timestamp()
    csv_text = contacts_csv("3001,,,Europe/London,", "3002,,,Asia/Tokyo,")
    store = opened(tmp_path, csv_text, now=start)
    dialer = ScriptedDialer({"3001": ["answered"], "3002": ["answered"]})
    stats, _clock = run(store, config(), dialer, start=start)
    first = {number: t for t, number, _ in dialer.calls}
    assert first["3002"] < 1.0  # Tokyo at once
    assert first["3001"] == pytest.approx(2 * 3600.0, abs=2.0)  # London at 09:00
    assert stats.postponed == 1


def test_a_number_added_to_the_dnc_list_mid_campaign_is_not_called_again(tmp_path: Path) -> None:
    store = opened(tmp_path, contacts_csv("4001,,,,"))
    dialer = ScriptedDialer({"4001": ["busy"]})

    class AddsDnc(ScriptedDialer):
        async def dial(self, contact: Contact, call_id: str, campaign: str) -> DialResult:
            result = await super().dial(contact, call_id, campaign)
            store.add_dnc(contact.number, source="opt_out", now=WED_10)  # "stop calling me"
            return result

    dialer = AddsDnc({"4001": ["busy"]})
    run(store, config(busy_retries_s=(30.0, 30.0)), dialer)
    assert len(dialer.calls) == 1
    assert store.summary("c1")["status"] == {"dnc": 1}


def test_a_runner_that_died_mid_call_leaves_it_interrupted_and_never_redials_it(
    tmp_path: Path,
) -> None:
    store = opened(tmp_path, contacts_csv("5001,,,,", "5002,,,,"))
    store.start_attempt("c1", 1, "call-before-crash", WED_10)  # dialling when it died
    dialer = ScriptedDialer({"5001": ["answered"], "5002": ["answered"]})
    stats, _clock = run(store, config(), dialer)
    assert stats.interrupted == 1
    assert [n for _t, n, _c in dialer.calls] == ["5002"]
    summary = store.summary("c1")
    assert summary["status"] == {"interrupted": 1, "done": 1}
    assert summary["attempts"] == {"interrupted": 1, "answered": 1}
    # Running the finished campaign again dials nobody.
    again = ScriptedDialer({"5001": ["answered"], "5002": ["answered"]})
    run(store, config(), again)
    assert again.calls == []


def test_a_used_name_with_another_list_is_refused(tmp_path: Path) -> None:
    store = opened(tmp_path, contacts_csv("6001,,,,"), sha="first")
    assert not store.open_campaign(
        "c1",
        parse_contacts(contacts_csv("6001,,,,")),
        source="list.csv",
        sha256="first",
        now=WED_10,
    )
    with pytest.raises(CampaignError, match="another contact list"):
        store.open_campaign(
            "c1",
            parse_contacts(contacts_csv("6002,,,,")),
            source="b.csv",
            sha256="second",
            now=WED_10,
        )


def test_once_stops_when_nothing_is_due_now(tmp_path: Path) -> None:
    store = opened(tmp_path, contacts_csv("7001,,,,"))
    dialer = ScriptedDialer({"7001": ["busy"]})
    run(store, config(busy_retries_s=(3600.0,)), dialer, until_done=False)
    assert len(dialer.calls) == 1
    assert store.summary("c1")["status"] == {"pending": 1}


def test_the_ami_dialer_originates_into_the_outbound_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOICEBOT_AMI_SECRET", "s3cret")

    async def main() -> list[dict[str, list[str]]]:
        fake = FakeAmi(secret="s3cret")
        await fake.start()
        fake.originate_plans.update(
            {
                "PJSIP/8001@trunk": OriginatePlan(reason=4),
                "PJSIP/8002@trunk": OriginatePlan(reason=5),
            }
        )
        base = Config()
        cfg = dataclasses.replace(
            base,
            ami=AmiConfig(enabled=True, port=fake.port, outbound_timeout_s=2.0),
            campaign=CampaignConfig(
                channel="PJSIP/{number}@trunk", busy_retries_s=(), failed_retries_s=()
            ),
        )
        fake.dialplan.add((cfg.ami.outbound_context, cfg.ami.outbound_exten))
        store = opened(tmp_path, contacts_csv("8001,Ada,reminder,,A-1", "8002,,,,"))
        dialer = AmiDialer(cfg)
        await dialer.start()
        try:
            await run_campaign(store, "c1", cfg, dialer, clock=lambda: WED_10)
        finally:
            await dialer.close()
            await fake.stop()
        assert store.summary("c1")["attempts"] == {"answered": 1, "busy": 1}
        return fake.actions_named("Originate")

    originates = asyncio.run(main())
    first = next(a for a in originates if a["channel"] == ["PJSIP/8001@trunk"])
    variables = dict(v.split("=", 1) for v in first["variable"])
    assert variables["VOICEBOT_CAMPAIGN"] == "c1" and variables["VOICEBOT_CONTACT"] == "1"
    assert (
        variables["VOICEBOT_PROFILE"] == "reminder" and variables["VOICEBOT_VAR_ACCOUNT"] == "A-1"
    )
    assert len(variables["VOICEBOT_UUID"]) == 36
    assert first["context"] == [AmiConfig().outbound_context]


def test_cli_dnc_and_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from voicebot_pbx.cli import main

    toml = tmp_path / "voicebot.toml"
    toml.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    saved = structlog.get_config()
    try:
        assert main(["campaign", "dnc", "add", "+44 7700 900123", "--config", str(toml)]) == 0
        assert main(["campaign", "dnc", "add", "+447700900123", "--config", str(toml)]) == 0
        assert main(["campaign", "dnc", "list", "--config", str(toml)]) == 0
        out = capsys.readouterr().out
        assert "added" in out and "already on the list" in out and "+447700900123\t" in out
        store = CampaignStore(tmp_path / "state" / "campaigns.sqlite")
        store.open_campaign(
            "spring",
            parse_contacts(contacts_csv("1001,,,,")),
            source="s.csv",
            sha256="x",
            now=WED_10,
        )
        store.close()
        assert main(["campaign", "status", "--config", str(toml)]) == 0
        assert "spring: 1 contacts from s.csv" in capsys.readouterr().out
        assert main(["campaign", "status", "nope", "--config", str(toml)]) == 2
        assert "no campaign named 'nope'" in capsys.readouterr().err
        bad = tmp_path / "bad.csv"
        bad.write_text("number\nabc\n")
        assert main(["campaign", "run", str(bad), "--config", str(toml)]) == 2
        assert "bad.csv:2: 'abc' is not a phone number" in capsys.readouterr().err
    finally:
        structlog.configure(**saved)


# --- "stop calling me" inside a campaign call (item 3) ------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("please stop calling me", True),
        ("take me off your list", True),
        ("don't ring me again", True),
        ("Don’t call this number", True),
        ("remove my number", True),
        ("I want to opt out", True),
        ("call me back later", False),
        ("can you stop the engineer calling round", False),
        ("no thanks", False),
        ("what is my balance", False),
    ],
)
def test_opt_out_phrases(text: str, expected: bool) -> None:
    from voicebot_pbx.campaign.opt_out import is_opt_out

    assert is_opt_out(text) is expected


class CampaignControl:
    """Call control whose channel carries the campaign's variables."""

    def __init__(self, variables: dict[str, str]) -> None:
        self.variables = variables
        self.set: list[dict[str, str]] = []

    async def transfer(self, call_id: str, target: str) -> bool:
        return True

    async def set_vars(self, call_id: str, variables: object) -> bool:
        self.set.append(dict(variables))  # type: ignore[call-overload]
        return True

    async def get_var(self, call_id: str, name: str) -> str | None:
        return self.variables.get(name)


STOP = 1330  # a tone the scripted STT hears as the opt-out request


def opt_out_call(
    tmp_path: Path, variables: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> tuple[object, object, CampaignStore]:
    from tests.test_turns import PHRASES, make_shared, timeline
    from voicebot_pbx.campaign import opt_out
    from voicebot_pbx.testing import tone

    async def inline(fn: Callable[..., str], *args: object) -> str:
        return fn(*args)  # no worker thread on virtual time (it would race the clock)

    monkeypatch.setattr(opt_out, "run_blocking", inline)

    PHRASES[STOP] = "please stop calling me"
    shared = make_shared()
    state = tmp_path / "state"
    shared = dataclasses.replace(
        shared,
        config=dataclasses.replace(shared.config, state_dir=str(state)),
        control=CampaignControl(variables),  # type: ignore[arg-type]
    )
    store = CampaignStore(state / "campaigns.sqlite")
    store.open_campaign(
        "spring",
        parse_contacts(contacts_csv("+44 7700 900555,,,,")),
        source="s",
        sha256="x",
        now=WED_10,
    )
    media, session = run_virtual(timeline(shared, [(2.0, tone(1.0, 8000, STOP))], 14.0))
    return media, session, store


def test_a_campaign_callee_who_says_stop_is_listed_told_and_hung_up_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    media, session, store = opt_out_call(
        tmp_path, {"VOICEBOT_CAMPAIGN": "spring", "VOICEBOT_CONTACT": "1"}, monkeypatch
    )
    assert store.is_dnc("+447700900555")
    assert store.summary("spring")["opted_out"] == 1
    (turn,) = [t for t in session.record.turns if t.kind == "speech"]  # type: ignore[attr-defined]
    assert turn.intent == "opt_out" and turn.reply_text == CampaignConfig().opt_out_reply
    assert media.hangups == ["bot_hangup"]  # type: ignore[attr-defined]


def test_stop_on_a_call_that_is_not_from_a_campaign_goes_to_the_dialogue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    media, session, store = opt_out_call(tmp_path, {}, monkeypatch)
    assert store.dnc_numbers() == []
    (turn,) = [t for t in session.record.turns if t.kind == "speech"]  # type: ignore[attr-defined]
    assert turn.intent != "opt_out" and "bot_hangup" not in media.hangups  # type: ignore[attr-defined]


def test_a_list_that_cannot_be_updated_is_said_honestly_and_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    media, session, store = opt_out_call(
        tmp_path, {"VOICEBOT_CAMPAIGN": "spring", "VOICEBOT_CONTACT": "99"}, monkeypatch
    )
    assert store.dnc_numbers() == []
    (turn,) = [t for t in session.record.turns if t.kind == "speech"]  # type: ignore[attr-defined]
    assert turn.reply_text == CampaignConfig().opt_out_failed_reply
    assert "opt_out_failed" in turn.fallbacks
    assert any("do-not-call" in e for e in session.record.errors)  # type: ignore[attr-defined]


def test_a_machine_found_by_the_bot_reopens_the_contact_with_its_retry(tmp_path: Path) -> None:
    store = opened(tmp_path, contacts_csv("9001,,,,", "9002,,,,"))
    first = store.start_attempt("c1", 1, "call-a", WED_10)
    store.finish_attempt(
        "c1", 1, first, outcome="answered", detail="", now=WED_10 + 1, retry_at=None
    )
    assert store.mark_machine("c1", "call-a", now=WED_10 + 5, retry_after=lambda n: 600.0)
    # The bot was quicker than the runner on the other call: its verdict stays.
    second = store.start_attempt("c1", 2, "call-b", WED_10)
    assert store.mark_machine("c1", "call-b", now=WED_10 + 5, retry_after=lambda n: None)
    store.finish_attempt(
        "c1", 2, second, outcome="answered", detail="", now=WED_10 + 6, retry_at=None
    )
    assert not store.mark_machine("c1", "no-such-call", now=WED_10, retry_after=lambda n: 1.0)
    summary = store.summary("c1")
    assert summary["attempts"] == {"machine": 2}
    assert summary["status"] == {"pending": 1, "exhausted": 1}
    assert store.next_due_at("c1") == WED_10 + 5 + 600.0


def test_the_bot_tells_the_campaign_when_a_machine_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_answering import call, noise, outbound
    from voicebot_pbx.campaign import opt_out
    from voicebot_pbx.testing import FakeMedia, tone

    async def inline(fn: Callable[..., object], *args: object) -> object:
        return fn(*args)

    monkeypatch.setattr(opt_out, "run_blocking", inline)
    state = tmp_path / "state"
    shared = outbound()
    shared = dataclasses.replace(
        shared,
        config=dataclasses.replace(shared.config, state_dir=str(state)),
        control=CampaignControl({"VOICEBOT_CAMPAIGN": "c1", "VOICEBOT_CONTACT": "1"}),  # type: ignore[arg-type]
    )
    store = opened(state, contacts_csv("9101,,,,"))
    attempt = store.start_attempt("c1", 1, FakeMedia.call_id, WED_10)
    store.finish_attempt("c1", 1, attempt, outcome="answered", detail="", now=WED_10, retry_at=None)
    beep = tone(0.5, 8000, 1000.0, level=0.4)
    call(shared, [(0.5, noise(3.5, 2) + bytes(1600) + beep)], 12.0)
    assert store.summary("c1")["attempts"] == {"machine": 1}
    assert store.summary("c1")["status"] == {"pending": 1}  # machine_retries_s: once more


def test_a_person_who_talked_over_the_message_is_answered_again_for_the_campaign(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bot took the callee for a machine, then the callee talked over the voicemail
    message (a person: ``tests/test_answering.py``): the attempt it had marked ``machine``
    is ``answered`` again and its contact done, not due for a machine's retry."""
    from tests.test_answering import talked_over
    from voicebot_pbx.campaign import opt_out
    from voicebot_pbx.testing import FakeMedia

    async def inline(fn: Callable[..., object], *args: object) -> object:
        return fn(*args)

    monkeypatch.setattr(opt_out, "run_blocking", inline)
    state = tmp_path / "state"
    store = opened(state, contacts_csv("9301,,,,"))
    attempt = store.start_attempt("c1", 1, FakeMedia.call_id, WED_10)
    store.finish_attempt("c1", 1, attempt, outcome="answered", detail="", now=WED_10, retry_at=None)

    def campaign_call(shared: Shared) -> Shared:
        config = dataclasses.replace(shared.config, state_dir=str(state))
        control = CampaignControl({"VOICEBOT_CAMPAIGN": "c1", "VOICEBOT_CONTACT": "1"})
        return dataclasses.replace(shared, config=config, control=control)  # type: ignore[arg-type]

    _, session, logs = talked_over("Hello? Who's this?", adapt=campaign_call)
    noted = [e.get("verdict") for e in logs if e["event"] == "campaign_verdict_noted"]
    assert noted == ["machine", "person"], "marked a machine at the verdict, then taken back"
    assert session.record.end_reason != "voicemail"
    summary = store.summary("c1")
    assert summary["attempts"] == {"answered": 1} and summary["status"] == {"done": 1}
    assert not store.unmark_machine("c1", FakeMedia.call_id, now=WED_10), "only a machine's"


def test_a_pbx_link_that_drops_pauses_the_campaign_without_spending_attempts(
    tmp_path: Path,
) -> None:
    from voicebot_pbx.campaign.runner import DialerUnavailable

    store = opened(tmp_path, contacts_csv("9201,,,,"))

    class FlakyLink(ScriptedDialer):
        down_for = 3

        async def dial(self, contact: Contact, call_id: str, campaign: str) -> DialResult:
            if self.down_for:
                self.down_for -= 1
                raise DialerUnavailable("AMI is not connected (refused)")
            return await super().dial(contact, call_id, campaign)

    dialer = FlakyLink({"9201": ["answered"]})
    stats, _clock = run(store, config(busy_retries_s=()), dialer)
    assert stats.paused == 3 and stats.dialled == 1
    summary = store.summary("c1")
    assert summary["attempts"] == {"answered": 1} and summary["status"] == {"done": 1}


def test_a_row_with_an_unknown_profile_is_refused_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from voicebot_pbx.cli import main

    toml = tmp_path / "voicebot.toml"
    toml.write_text(f'state_dir = "{tmp_path / "state"}"\n[[profiles]]\nname = "reminder"\n')
    rows = tmp_path / "rows.csv"
    rows.write_text(contacts_csv("9301,,reminder,,", "9302,,remindr,,"))
    saved = structlog.get_config()
    try:
        assert main(["campaign", "run", str(rows), "--config", str(toml)]) == 2
    finally:
        structlog.configure(**saved)
    err = capsys.readouterr().err
    assert "rows.csv:3: unknown profile 'remindr'" in err and ":2:" not in err


def test_the_freeswitch_originate_command_and_its_outcomes() -> None:
    from voicebot_pbx.campaign.esl_dialer import originate_command, outcome_of

    cfg = dataclasses.replace(
        config(channel="sofia/gateway/trunk/{number}", caller_id="Example <8005550100>"),
    )
    (contact,) = parse_contacts(contacts_csv('+44 7700 900123,Ada,reminder,,"A 1,2(x)"'))
    command = originate_command(cfg, contact, "c0ffee", "spring sale")
    assert command.startswith("originate {origination_uuid=c0ffee,")
    assert "VOICEBOT_CAMPAIGN=spring_sale," in command  # no space may split the argument
    assert (
        "VOICEBOT_VAR_ACCOUNT=A_1" in command
        and "origination_caller_id_number=8005550100" in command
    )
    assert "}sofia/gateway/trunk/+447700900123 '&socket(127.0.0.1:8084 async full)'" in command
    # originate, the dial string, the quoted application (shlex splits as FreeSWITCH does)
    assert len(shlex.split(command)) == 3
    assert outcome_of("+OK 0b8e4c1e\n").outcome == "answered"
    assert outcome_of("-ERR USER_BUSY\n").outcome == "busy"
    assert outcome_of("-ERR NO_ANSWER\n").outcome == "no_answer"
    failed = outcome_of("-ERR DESTINATION_OUT_OF_ORDER\n")
    assert failed.outcome == "failed" and "OUT_OF_ORDER" in failed.detail
