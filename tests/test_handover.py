"""What a transfer tells the agent: the channel variables built from a call's record
(voicebot_pbx.call.handover, issue #19 item 3)."""

from __future__ import annotations

from voicebot_pbx.call.handover import handover_vars as build_vars
from voicebot_pbx.call.handover import mask_account, safe_value
from voicebot_pbx.config import KnowledgeConfig
from voicebot_pbx.ops.records import CallRecord, TurnRecord


def record(*turns: TurnRecord) -> CallRecord:
    return CallRecord(call_id="c0ffee00-0000-4000-8000-000000000001", pbx="asterisk", peer="x",
                      turns=list(turns))  # fmt: skip


def handover_vars(*args: object, **kwargs: object) -> dict[str, str]:
    conversation = KnowledgeConfig().keep_intents  # the defaults, as the session passes them
    return build_vars(*args, conversation=conversation, **kwargs)  # type: ignore[arg-type]


def turn(seq: int, transcript: str, intent: str | None, kind: str = "speech") -> TurnRecord:
    return TurnRecord(turn_id=seq, seq=seq, kind=kind, transcript=transcript, intent=intent)


def test_the_task_is_the_latest_intent_that_is_not_conversation() -> None:
    call = record(
        TurnRecord(turn_id=0, seq=0, kind="greeting"),
        turn(1, "what's left to pay on account 12345678", "check_balance"),
        turn(2, "12345678", "dtmf", kind="dtmf"),
        turn(3, "yes", "affirm"),
        turn(4, "can I talk to a person", "speak_to_agent"),
    )
    got = handover_vars(call, {})
    assert got == {
        "VOICEBOT_CALL_ID": "c0ffee00-0000-4000-8000-000000000001",
        "VOICEBOT_INTENT": "check_balance",
        "VOICEBOT_SUMMARY": "check balance; 4 turns; account ****5678; "
        "said: whats left to pay on account ########",
        "VOICEBOT_VERIFIED": "no",
        "VOICEBOT_ACCOUNT": "****5678",
    }
    assert handover_vars(call, {}, account="full")["VOICEBOT_ACCOUNT"] == "12345678"
    assert "VOICEBOT_ACCOUNT" not in handover_vars(call, {}, account="none")
    # The summary never carries the whole number, whatever the account setting.
    assert "12345678" not in handover_vars(call, {}, account="full")["VOICEBOT_SUMMARY"]


def test_an_agent_request_alone_and_a_spoken_account_and_verification() -> None:
    only_agent = record(turn(1, "an agent right now", "speak_to_agent"))
    got = handover_vars(only_agent, {})
    assert got["VOICEBOT_INTENT"] == ""
    assert got["VOICEBOT_SUMMARY"] == "no task understood; 1 turn"
    assert "VOICEBOT_ACCOUNT" not in got
    spoken = handover_vars(
        record(turn(1, "balance check", "check_balance")),
        {"account_number": "8765 4321", "identity_verified": "true"},
    )
    assert spoken["VOICEBOT_ACCOUNT"] == "****4321"
    assert spoken["VOICEBOT_VERIFIED"] == "yes"
    # A keyed entry too short to be an account is not one.
    assert "VOICEBOT_ACCOUNT" not in handover_vars(record(turn(1, "1", "dtmf", kind="dtmf")), {})


def test_values_are_one_plain_line_that_fits() -> None:
    assert safe_value('it\'s "quoted"\r\nand\ttabbed \u2019x') == "its quoted and tabbed x"
    long = safe_value("word " * 100)
    assert len(long) <= 200 and long.endswith("...") and "\n" not in long
    assert mask_account("12345678") == "****5678" and mask_account("123") == "123"
