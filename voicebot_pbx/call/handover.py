"""What a transfer tells the agent (issue #19): channel variables set before the call moves.

Pure: from the call's record (and the entities the dialogue collected) to the variables the
PBX gets over AMI ``Setvar`` / ESL ``uuid_setvar`` before the ``Redirect`` /
``uuid_transfer``:

* ``VOICEBOT_CALL_ID``: the bot's call id (``voicebot-pbx calls show <id>``);
* ``VOICEBOT_INTENT``: the caller's task, the latest intent that is not conversation
  ("check_balance", not "speak_to_agent" or "affirm": the config's ``[knowledge]
  keep_intents``) nor a fallback; empty when none was understood;
* ``VOICEBOT_SUMMARY``: one line for the agent's screen / the CDR: the task, the number of
  turns, the account (masked) and the caller's words for the task, digits masked;
* ``VOICEBOT_VERIFIED``: ``yes`` only when the dialogue verified the caller's identity
  (an ``identity_verified`` entity of ``true``), else ``no``;
* ``VOICEBOT_ACCOUNT``: the account number the caller gave (spoken or keyed), all but its
  last 4 digits masked by default (``[handover] account = "full"`` shows it whole,
  ``"none"`` leaves the variable out).

Every value is one line of plain characters (``safe_value``): an AMI header cannot carry a
line break, and FreeSWITCH's ``uuid_setvar`` splits on quotes.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Literal

from voicebot_pbx.ops.records import CallRecord

# Not a task either (besides the conversation intents the config names).
NOT_A_TASK = frozenset({"nlu_fallback", "out_of_scope"})
SUMMARY_MAX_CHARS = 200
_UNSAFE = re.compile(r"[^A-Za-z0-9 .,:;!?*#/_@+=()-]")
_DIGITS = re.compile(r"\d")
_ACCOUNT_DIGITS = re.compile(r"^\d{6,12}$")

AccountShown = Literal["masked", "full", "none"]


def safe_value(text: str, max_chars: int = SUMMARY_MAX_CHARS) -> str:
    """One line of plain characters: quotes and control characters dropped, whitespace
    collapsed, at most ``max_chars`` (cut at a word, with "...")."""
    words = (_UNSAFE.sub("", word) for word in text.replace("\u2019", "").split())
    line = " ".join(word for word in words if word)
    if len(line) <= max_chars:
        return line
    return line[: max_chars - 3].rsplit(" ", 1)[0] + "..."


def mask_account(number: str) -> str:
    """All but the last 4 digits as ``*``: "12345678" -> "****5678"."""
    return "*" * max(0, len(number) - 4) + number[-4:]


def caller_task(record: CallRecord, conversation: Collection[str]) -> tuple[str, str]:
    """(intent, the caller's words for it) of the latest turn whose intent is a task, not
    one of the ``conversation`` intents (greetings, yes/no, "agent": [knowledge]
    keep_intents) nor a fallback."""
    for turn in reversed(record.turns):
        if turn.intent and turn.intent not in conversation and turn.intent not in NOT_A_TASK:
            return turn.intent, turn.transcript
    return "", ""


def account_number(record: CallRecord, entities: Mapping[str, str]) -> str:
    """The account number the caller gave: the dialogue's ``account_number`` entity, else
    the latest keyed (DTMF) entry of 6-12 digits; "" when none."""
    spoken = "".join(_DIGITS.findall(entities.get("account_number", "")))
    if _ACCOUNT_DIGITS.match(spoken):
        return spoken
    for turn in reversed(record.turns):
        keyed = turn.transcript.strip()
        if turn.kind == "dtmf" and _ACCOUNT_DIGITS.match(keyed):
            return keyed
    return ""


def handover_vars(
    record: CallRecord,
    entities: Mapping[str, str],
    *,
    conversation: Collection[str],
    account: AccountShown = "masked",
) -> dict[str, str]:
    """The channel variables for a transfer of this call (see the module docstring)."""
    intent, words = caller_task(record, conversation)
    number = account_number(record, entities)
    shown = "" if account == "none" or not number else number
    if shown and account == "masked":
        shown = mask_account(number)
    answered = sum(1 for t in record.turns if t.kind in ("speech", "dtmf"))
    parts = [intent.replace("_", " ") if intent else "no task understood"]
    parts.append(f"{answered} turn{'s' if answered != 1 else ''}")
    if number:
        parts.append(f"account {mask_account(number)}")
    if words:
        parts.append("said: " + _DIGITS.sub("#", words))
    verified = entities.get("identity_verified", "").strip().lower() == "true"
    variables = {
        "VOICEBOT_CALL_ID": safe_value(record.call_id, 64),
        "VOICEBOT_INTENT": safe_value(intent, 64),
        "VOICEBOT_SUMMARY": safe_value("; ".join(parts)),
        "VOICEBOT_VERIFIED": "yes" if verified else "no",
    }
    if shown:
        variables["VOICEBOT_ACCOUNT"] = shown
    return variables
