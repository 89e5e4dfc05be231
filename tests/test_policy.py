"""call/policy.py: what the bot says when the conversation goes wrong, and DTMF entry."""

from __future__ import annotations

from voicebot_pbx.call import policy
from voicebot_pbx.config import FallbackConfig


def test_give_up_hands_over_to_the_profile_target_else_the_default_else_says_goodbye() -> None:
    fallbacks = FallbackConfig(give_up_target="agents")
    assert policy.give_up_turn(fallbacks, "billing", "x").transfer_target == "billing"
    assert policy.give_up_turn(fallbacks, "", "x").transfer_target == "agents"
    nobody = policy.give_up_turn(FallbackConfig(give_up_target=""), "", "error")
    assert nobody.end == "hangup" and nobody.fallbacks == ("error",)


def test_no_input_asks_again_then_ends_the_call_past_the_limit() -> None:
    fallbacks = FallbackConfig(no_input_max=2)
    assert [policy.no_input_turn(fallbacks, n)[1] for n in (1, 2, 3)] == [
        "no_input",
        "no_input",
        "no_input_goodbye",
    ]
    assert policy.no_input_turn(fallbacks, 3)[0].end == "hangup"


def test_backchannels_match_whatever_the_punctuation() -> None:
    backchannels = policy.backchannel_set(FallbackConfig(backchannels=("uh-huh", "okay")))
    assert policy.normalise("Okay.") in backchannels
    assert policy.normalise("okay, what about my bill") not in backchannels


def test_dtmf_keys_go_one_by_one_until_the_dialogue_asks_for_digits() -> None:
    entry = policy.DtmfEntry()
    assert entry.key("5") == ("5", False)
    entry.expect(4)
    assert [entry.key(k) for k in "123"] == [("", True)] * 3
    assert entry.key("4") == ("1234", False)
    assert entry.key("9") == ("9", False)  # the entry is over: keys go one by one again
    entry.expect(6)
    entry.key("7")
    assert entry.key("#") == ("7", False)  # '#' ends a short entry
    entry.expect(3)
    entry.key("8")
    assert entry.flush() == "8" and entry.flush() == ""  # the timer sends what was typed


def test_star_during_an_entry_starts_it_again() -> None:
    """Issue #19's keypad mistakes: "1 2 3 * 8 7 6 5 4 3 2 1" is the account 87654321."""
    entry = policy.DtmfEntry()
    entry.expect(8)
    assert [entry.key(k) for k in "123*"] == [("", True)] * 4
    sent = [entry.key(k) for k in "8765432"]
    assert sent == [("", True)] * 7
    assert entry.key("1") == ("87654321", False)
    entry.expect(8)
    assert entry.key("*") == ("", True) and entry.key("#") == ("", False)  # nothing typed
    assert entry.key("*") == ("*", False)  # outside an entry a star is a key like any
