"""The custom actions of the Northwind Energy line (rasa-sdk 3.6).

* ``validate_balance_form``: the account number (8 digits, said or keyed; ``*``/``#``
  mistakes heard as such) and the identity check: the property's postcode or the account
  holder's date of birth, looked up in the billing back end, ``identity_attempts`` tries.
  A spoken account number is read back with the identity question
  (``action_ask_identity_check``); "no" to it asks for the number again
  (``ACCOUNT_DENIALS`` times), "no" after a keyed one declines the check. A reading the
  caller said "no" to is not read back again: another reading that is an account, else
  the keypad is offered (``SAME_NUMBER_AGAIN``).
* ``action_tell_balance``: balance and last bill in words, or why not.
* ``validate_appointment_form`` / ``action_ask_time`` / ``action_ask_appointment_confirmed`` /
  ``action_book_appointment``: a day and a time the bookings back end has free (else the
  nearest free ones are offered), then booked; the slots are cleared so a second booking in
  the same call starts afresh.
* ``validate_outage_form`` / ``action_ask_postcode_confirmed`` / ``action_check_outage``: the
  postcode read back ("I heard N W 3, 2 Q G. Is that right?"; "no" asks for it again, the
  ``POSTCODE_DENIALS``th puts the caller through), then a known outage by postcode (cause
  and estimated fix) or a new report.

Every back-end failure is spoken ("I can't reach our billing system right now.") and followed
by ``utter_offer_transfer``; the reason goes to the bot in a ``note`` payload
(``{"action": "note", "fallback": "backend_timeout:billing"}``), which it writes into the call
record. Each action's back-end work is bounded by the configured ``budget_s``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from collections.abc import Sequence
from typing import Any

from rasa_sdk import Action, FormValidationAction, Tracker
from rasa_sdk.events import EventType, FollowupAction, SlotSet
from rasa_sdk.executor import CollectingDispatcher
from rasa_sdk.types import DomainDict

from .account_numbers import keyed_or_said_account, one_digit_too_many, readings_to_look_up
from .answer_words import only_answer_words, says_it_is_wrong
from .backend import Account, BackendError, SlotTaken, normalise_postcode
from .runtime import Runtime, runtime
from .when import parse_day, parse_time
from .wording import (
    ACCOUNT_AGAIN,
    ASK_DATE_OF_BIRTH_INSTEAD,
    ASK_POSTCODE_INSTEAD,
    SAME_NUMBER_AGAIN,
    read_back_account,
    say_balance,
    say_date,
    say_digits,
    say_fix_estimate,
    say_money,
    say_postcode,
    say_slot,
    say_slots,
)

log = logging.getLogger(__name__)

# A caller may say "no" to the account number read back this many times; the next "no"
# declines the check (utter_identity_refused), as "no" to the account number question does.
ACCOUNT_DENIALS = 2
# Postcodes read back that the caller may say "no" to before being put through.
POSTCODE_DENIALS = 2
NEAREST_SLOTS = 3
_SYSTEM_WORDS = {"billing": "billing", "outages": "power cut", "bookings": "bookings"}


def _note(dispatcher: CollectingDispatcher, **fields: Any) -> None:
    """Tell the voice bot something for the call record (not spoken)."""
    dispatcher.utter_message(json_message={"action": "note", **fields})


def _failed_in_form(tracker: Tracker, system: str) -> BackendError | None:
    """The back-end failure a form's validation met (slot ``backend_error``,
    "reason:system"), which the action after the form reports."""
    error = tracker.get_slot("backend_error")
    if not error:
        return None
    reason, _, named = str(error).partition(":")
    return BackendError(named or system, reason)


def _backend_down(dispatcher: CollectingDispatcher, exc: BackendError) -> list[EventType]:
    words = _SYSTEM_WORDS.get(exc.system, exc.system)
    log.warning("backend %s failed: %s %s", exc.system, exc.reason, exc.detail)
    dispatcher.utter_message(text=f"I'm sorry, I can't reach our {words} system right now.")
    _note(dispatcher, fallback=f"backend_{exc.reason}:{exc.system}")
    return [SlotSet("backend_error", None), FollowupAction("utter_offer_transfer")]


async def _bounded(rt: Runtime, system: str, work: Any) -> Any:
    """Await ``work`` within the action budget; a late or broken back end is a
    BackendError."""
    try:
        return await asyncio.wait_for(work, rt.budget_s)
    except asyncio.TimeoutError as exc:
        raise BackendError(system, "timeout", f"over the {rt.budget_s} s budget") from exc
    except (BackendError, SlotTaken):
        raise
    except Exception as exc:  # a back end's bug is a failed back end, spoken as such
        log.exception("back end %s raised", system)
        raise BackendError(system, "error", f"{type(exc).__name__}: {exc}") from exc


def _birth_date(text: str) -> dt.date | None:
    """A date of birth said with its year ("4th of july 1980", "1980-07-04")."""
    # "1987", or "19 87" as the text normaliser writes "nineteen eighty seven"
    match = re.search(r"\b(19|20) ?(\d\d)\b", text)
    if match is None:
        return None
    year = int(match.group(1) + match.group(2))
    rest = (text[: match.start()] + text[match.end() :]).strip()
    day = parse_day(rest, dt.date(year, 1, 1) - dt.timedelta(days=1))
    if day is None:
        return None
    try:
        return day.replace(year=year)
    except ValueError:
        return None


_POSTCODE_IN_TEXT = re.compile(r"\b[a-z]{1,2}\d[a-z\d]? ?\d[a-z]{2}\b", re.IGNORECASE)


def postcode_in(text: str) -> str | None:
    """The first postcode in a sentence ("it's nw9 4rq please" -> "NW9 4RQ")."""
    whole = normalise_postcode(text)
    if whole is not None:
        return whole
    for match in _POSTCODE_IN_TEXT.finditer(text):
        found = normalise_postcode(match.group(0))
        if found is not None:
            return found
    return None


def keyed_birth_date(answer: str) -> dt.date | None:
    """A date of birth keyed as 8 digits, day month year ("23061987")."""
    digits = answer.strip().rstrip("#")
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return dt.date(int(digits[4:]), int(digits[2:4]), int(digits[:2]))
    except ValueError:
        return None


def identity_matches(account: Account, answer: str) -> bool:
    """The caller's answer is the account's postcode or the holder's date of birth (said,
    or keyed as DDMMYYYY)."""
    keyed = keyed_birth_date(answer)
    if keyed is not None:
        return keyed == account.birth_date
    postcode = postcode_in(answer)
    if postcode is not None:
        return postcode == account.postcode
    return _birth_date(answer.lower()) == account.birth_date


def retry_identity_question(answer: str) -> str:
    """The identity question after the first answer did not match (the account number
    kept): the other of the two answers, the first one allowed again. A date of birth said
    or keyed gets the postcode; anything else (a postcode, or words heard as neither, most
    often a postcode spelled out on a phone line) gets the date of birth."""
    lowered = answer.lower()
    if keyed_birth_date(answer) is not None or (
        postcode_in(answer) is None and _birth_date(lowered) is not None
    ):
        return ASK_POSTCODE_INSTEAD
    return ASK_DATE_OF_BIRTH_INSTEAD


def _last_answer(tracker: Tracker) -> str:
    """What the caller last said, or the digits they keyed (``/dtmf{"digits": ...}``)."""
    message = tracker.latest_message or {}
    if _latest_intent(tracker) == "dtmf":
        for entity in message.get("entities") or []:
            if entity.get("entity") == "digits":
                return str(entity.get("value") or "")
    return str(message.get("text") or "")


def _latest_intent(tracker: Tracker) -> str:
    message = tracker.latest_message or {}
    return str((message.get("intent") or {}).get("name") or "")


def _alternatives(tracker: Tracker) -> list[str]:
    """The recogniser's other readings of a number in the caller's latest message (the
    bot's ``metadata.alternatives``: digits, likeliest first)."""
    metadata = (tracker.latest_message or {}).get("metadata") or {}
    values = metadata.get("alternatives") if isinstance(metadata, dict) else None
    if not isinstance(values, list):
        return []
    return [str(v) for v in values if str(v).isdigit()]


def _denied_numbers(tracker: Tracker) -> list[str]:
    """The account numbers read back in this call that the caller said "no" to."""
    return str(tracker.get_slot("account_denied") or "").split()


def _just_said_account(tracker: Tracker, number: str) -> bool:
    """The caller's latest message said the account number (spoken, not keyed): its digits,
    one of the recogniser's other readings of them, or its digits with one left out
    (``account_numbers.one_digit_too_many``) are the number."""
    if not number or _latest_intent(tracker) == "dtmf":
        return False
    digits = re.sub(r"\D", "", str((tracker.latest_message or {}).get("text") or ""))
    return (
        digits == number or number in _alternatives(tracker) or number in one_digit_too_many(digits)
    )


async def _existing_reading(
    rt: Runtime, call: str, heard: str | None, others: Sequence[str]
) -> str | None:
    """``heard`` (8 digits or None), unless it is no account and one of the ``others``
    (``account_numbers.readings_to_look_up``: the recogniser's other readings of the spoken
    number, those of a number heard with a digit too many) is: then the first such. The
    account found is remembered for ``call`` (the conversation), so the identity question
    asks the back end no second time. A back end that fails keeps ``heard``: the identity
    question's own lookup reports it."""
    if not others:
        return heard
    billing = rt.backend("billing")

    async def first_found() -> str | None:
        # Each account found is remembered: the identity question asks the memory first.
        for number in ([heard] if heard is not None else []) + list(others):
            account = await billing.account(number)
            if account is not None:
                rt.remember(call, account)
                return number
        return heard

    try:  # all the lookups within the one action budget
        found: str | None = await _bounded(rt, "billing", first_found())
    except BackendError:
        return heard
    return found


def corrects_read_back(answer: str) -> bool:
    """The caller's words after their account number was read back say it is wrong ("no,
    that's not it"; "so that's the wrong number", as a phone line may hear the "no"), and
    hold no postcode, date or digits that could be the identity answer itself."""
    return (
        says_it_is_wrong(answer)
        and re.search(r"\d", answer) is None
        and postcode_in(answer) is None
        and _birth_date(answer.lower()) is None
    )


def _keeps_account(failures: int) -> bool:
    """After this many identity answers that did not match, the account number is kept and
    the other answer asked for (the first miss only; later ones start from the account)."""
    return failures == 1


def _retrying_identity(tracker: Tracker) -> bool:
    """The identity question is being asked again for the same account number (one answer
    did not match, ``validate_identity_check``)."""
    failures = int(tracker.get_slot("identity_failures") or 0)
    return _keeps_account(failures) and bool(tracker.get_slot("account_number"))


class ValidateBalanceForm(FormValidationAction):
    def name(self) -> str:
        return "validate_balance_form"

    async def validate_account_number(
        self,
        slot_value: Any,
        dispatcher: CollectingDispatcher,
        tracker: Tracker,
        domain: DomainDict,
    ) -> dict[str, Any]:
        number = keyed_or_said_account(slot_value)
        if _latest_intent(tracker) != "dtmf":
            heard = number
            rt = runtime()
            others = readings_to_look_up(
                heard, slot_value, _alternatives(tracker), rt.account_alternatives
            )
            number = await _existing_reading(rt, tracker.sender_id, heard, others)
            denied = _denied_numbers(tracker)
            if number is not None and number in denied:
                # The reading the caller said "no" to, heard again: another reading that
                # is an account, else the keypad.
                left = [r for r in others if r not in denied]
                number = await _existing_reading(rt, tracker.sender_id, None, left)
                if number is None:
                    dispatcher.utter_message(text=SAME_NUMBER_AGAIN)
                    _note(dispatcher, fallback="account_heard_again")
                    return {"account_number": None}
            if number != heard:
                # Which reading, not the digits: they are the caller's account number.
                _note(dispatcher, fallback="account_alternative")
        if number is None:
            dispatcher.utter_message(
                text="Sorry, that isn't an 8 digit account number. Let's try again."
            )
            _note(dispatcher, fallback="account_number_invalid")
            return {"account_number": None}
        return {"account_number": number}

    async def extract_identity_check(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> dict[str, Any]:
        """The identity answer heard as odd letters and figures ("and b y b v e v") is
        the answer whatever intent Rasa gave it: the domain's mapping leaves out an FAQ's
        (the form would step aside for the customer centre's address) or a goodbye's,
        whose words it has none of; anything else is left to the domain's mappings
        (``answer_words``)."""
        if (
            tracker.active_loop_name != self.form_name()
            or tracker.get_slot("requested_slot") != "identity_check"
            or tracker.get_slot("identity_check") is not None
        ):
            return {}
        text = str((tracker.latest_message or {}).get("text") or "")
        return {"identity_check": text} if only_answer_words(text) else {}

    async def validate_identity_check(
        self,
        slot_value: Any,
        dispatcher: CollectingDispatcher,
        tracker: Tracker,
        domain: DomainDict,
    ) -> dict[str, Any]:
        if slot_value in ("verified", "failed"):  # settled earlier in this call
            return {"identity_check": slot_value}
        rt = runtime()
        number = str(tracker.get_slot("account_number") or "")
        answer = str(slot_value or "")
        # The postcode or date said here is not a power cut's postcode nor a visit's day.
        forget = {"postcode": None, "date": None}
        intent = _latest_intent(tracker)
        read_back = bool(tracker.get_slot("account_read_back"))
        if intent == "deny" or (read_back and corrects_read_back(answer)):
            denials = int(tracker.get_slot("account_denials") or 0) + 1
            denied = self._denied(dispatcher, read_back, denials)
            if read_back and "account_number" in denied:
                # Remembered for the call: not read back again (validate_account_number).
                numbers = [*_denied_numbers(tracker), number]
                denied["account_denied"] = " ".join(dict.fromkeys(numbers))
            return {**forget, **denied}
        if intent == "affirm" and not re.search(r"\d", answer):
            # "yes" to the account number read back: not an answer yet; asked again.
            return {**forget, "identity_check": None}
        try:
            # What the identity question just looked up (action_ask_identity_check), else
            # the back end now.
            account = rt.recent(tracker.sender_id, number)
            if account is None:
                failed = rt.recent_failure(tracker.sender_id, number)
                if failed is not None:
                    raise failed
                account = await _bounded(rt, "billing", rt.backend("billing").account(number))
        except BackendError as exc:
            # The form ends (both slots filled); action_tell_balance says why.
            return {
                **forget,
                "identity_check": "unchecked",
                "backend_error": f"{exc.reason}:billing",
            }
        if account is not None and identity_matches(account, answer):
            rt.remember(tracker.sender_id, account)
            _note(dispatcher, entities={"identity_verified": "true", "account_number": number})
            return {**forget, "identity_check": "verified", "identity_verified": True}
        failures = int(tracker.get_slot("identity_failures") or 0) + 1
        _note(dispatcher, fallback="identity_mismatch")
        if failures >= rt.identity_attempts:
            return {
                **forget,
                "identity_check": "failed",
                "identity_failures": float(failures),
                "identity_verified": False,
            }
        if _keeps_account(failures):
            # The account number stays: the identity question comes again, asking for the
            # other answer (action_ask_identity_check). The same whether the account exists
            # or not, so the retry reveals nothing about the number.
            dispatcher.utter_message(text="Sorry, that doesn't match our records.")
            return {**forget, "identity_check": None, "identity_failures": float(failures)}
        dispatcher.utter_message(
            text="Sorry, those details don't match our records. Let's try again."
        )
        return {
            **forget,
            "account_number": None,
            "identity_check": None,
            "identity_failures": float(failures),
            "account_read_back": False,
        }

    @staticmethod
    def _denied(dispatcher: CollectingDispatcher, read_back: bool, denials: int) -> dict[str, Any]:
        """ "No" to the identity question (the ``denials``-th in this call). After the
        account number was ``read_back`` it is "that's not my number": the number is asked
        for again (``ACCOUNT_DENIALS`` times, no identity failure counted); otherwise the
        caller declines the check (``action_tell_balance`` says so)."""
        if read_back and denials <= ACCOUNT_DENIALS:
            dispatcher.utter_message(text=ACCOUNT_AGAIN)
            _note(dispatcher, fallback="account_read_back_denied")
            return {
                "account_number": None,
                "identity_check": None,
                "account_read_back": False,
                "account_denials": float(denials),
            }
        return {"identity_check": "refused"}


class ActionAskIdentityCheck(Action):
    """The identity question (the domain's ``utter_ask_identity_check``: its text and
    payload), with the answers the billing back end knows for the account just given
    (``verify: {postcode, date}``): the bot asks its speech recogniser whether the caller
    says one of them (voicebot_pbx/speech/verify.py) instead of comparing a transcript of
    letters and digits read out on a phone line. The lookup is the call's only one: the
    check of the answer reads the account it found, or that it failed (then the answers
    are left out, and the check says what failed), from the runtime's memory."""

    def name(self) -> str:
        return "action_ask_identity_check"

    async def run(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> list[EventType]:
        responses = domain.get("responses") or {}
        template = (responses.get("utter_ask_identity_check") or [{}])[0]
        text = str(
            template.get("text") or "To check it's you, what's the postcode of the property?"
        )
        number = str(tracker.get_slot("account_number") or "")
        read_back = False
        if _retrying_identity(tracker):
            text = retry_identity_question(_last_answer(tracker))
        elif _just_said_account(tracker, number):
            # A number heard, not keyed: read back, so a caller can say "no" to a mistake.
            read_back = True
            question = text.removeprefix("Thanks. ")
            text = f"Thanks. {read_back_account(number)} {question}"
        else:
            # Asked again after a "yes" alone: a "no" now is still about the number read back.
            read_back = bool(tracker.get_slot("account_read_back"))
        custom = dict(template.get("custom") or {})
        rt = runtime()
        account: Account | None = None
        if number:
            # One lookup per account number: the validation may just have found it (a spoken
            # number's readings); the check of the answer reads what was found (or that it
            # failed) instead of asking the back end again.
            account = rt.recent(tracker.sender_id, number)
            if account is None:
                try:
                    account = await _bounded(rt, "billing", rt.backend("billing").account(number))
                except BackendError as exc:
                    rt.remember_failure(tracker.sender_id, number, exc)
        if account is not None:
            rt.remember(tracker.sender_id, account)
            custom["verify"] = {
                "postcode": account.postcode,
                "date": account.birth_date.isoformat(),
            }
        dispatcher.utter_message(text=text, json_message=custom or None)
        return [SlotSet("account_read_back", read_back)]


class ActionTellBalance(Action):
    def name(self) -> str:
        return "action_tell_balance"

    async def run(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> list[EventType]:
        rt = runtime()
        failed = _failed_in_form(tracker, "billing")
        if failed is not None:
            return [SlotSet("identity_check", None), *_backend_down(dispatcher, failed)]
        if tracker.get_slot("identity_check") == "refused":
            # "no" to the identity question (validate_identity_check); asked again next time.
            dispatcher.utter_message(response="utter_identity_refused")
            return [SlotSet("identity_check", None), SlotSet("account_denials", None)]
        if tracker.get_slot("identity_verified") is not True:
            dispatcher.utter_message(
                text="Sorry, I couldn't confirm your details, so I'll put you through to "
                "our billing team, who can help.",
                json_message={"action": "transfer", "target": "billing"},
            )
            _note(dispatcher, fallback="identity_failed")
            return [FollowupAction("action_listen")]  # no "anything else?" before the transfer
        number = str(tracker.get_slot("account_number") or "")
        account = rt.recent(tracker.sender_id, number)
        if account is None:
            try:
                account = await _bounded(rt, "billing", rt.backend("billing").account(number))
            except BackendError as exc:
                return _backend_down(dispatcher, exc)
        if account is None:  # closed between the check and now
            dispatcher.utter_message(text="Sorry, I can't find that account any more.")
            return [FollowupAction("utter_offer_transfer")]
        today = rt.today()
        bill_day = say_date(account.last_bill_date, today)
        dispatcher.utter_message(
            text=f"{say_balance(account.balance_pence)} Your last bill, on {bill_day}, "
            f"was {say_money(account.last_bill_pence)}."
        )
        return []


class ValidateOutageForm(FormValidationAction):
    def name(self) -> str:
        return "validate_outage_form"

    async def validate_postcode(
        self,
        slot_value: Any,
        dispatcher: CollectingDispatcher,
        tracker: Tracker,
        domain: DomainDict,
    ) -> dict[str, Any]:
        postcode = postcode_in(str(slot_value or ""))
        if postcode is None:
            dispatcher.utter_message(text="Sorry, that doesn't sound like a postcode.")
            return {"postcode": None}
        return {"postcode": postcode}

    async def validate_postcode_confirmed(
        self,
        slot_value: Any,
        dispatcher: CollectingDispatcher,
        tracker: Tracker,
        domain: DomainDict,
    ) -> dict[str, Any]:
        """A "no" to the postcode read back: nothing is reported; the postcode is asked for
        again (the form's question), or at the ``POSTCODE_DENIALS``th "no" the form ends
        "denied" and ``action_check_outage`` puts the caller through."""
        if slot_value == "confirmed":
            return {"postcode_confirmed": "confirmed"}
        _note(dispatcher, fallback="postcode_read_back_denied")
        denials = int(tracker.get_slot("postcode_denials") or 0) + 1
        if denials >= POSTCODE_DENIALS:
            return {"postcode_confirmed": "denied", "postcode_denials": float(denials)}
        dispatcher.utter_message(text="Sorry about that.")
        return {"postcode": None, "postcode_confirmed": None, "postcode_denials": float(denials)}


class ActionAskPostcodeConfirmed(Action):
    """The postcode heard, read back before anything is looked up or reported: a line that
    garbles a spelled postcode must not log a power cut at another address."""

    def name(self) -> str:
        return "action_ask_postcode_confirmed"

    async def run(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> list[EventType]:
        postcode = str(tracker.get_slot("postcode") or "")
        dispatcher.utter_message(text=f"I heard {say_postcode(postcode)}. Is that right?")
        return []


class ActionCheckOutage(Action):
    def name(self) -> str:
        return "action_check_outage"

    async def run(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> list[EventType]:
        rt = runtime()
        postcode = str(tracker.get_slot("postcode") or "")
        reset: list[EventType] = [
            SlotSet("postcode", None),
            SlotSet("postcode_confirmed", None),
            SlotSet("postcode_denials", None),
        ]
        if tracker.get_slot("postcode_confirmed") == "denied":
            dispatcher.utter_message(
                text="Sorry, I can't get the postcode right on this line, so I'll put you "
                "through to someone who can take your report.",
                json_message={"action": "transfer", "target": "agents"},
            )
            _note(dispatcher, fallback="postcode_not_heard")
            return [*reset, FollowupAction("action_listen")]  # no "anything else?" first
        try:
            outage = await _bounded(rt, "outages", rt.backend("outages").outage(postcode))
        except BackendError as exc:
            return reset + _backend_down(dispatcher, exc)
        if outage is None:
            dispatcher.utter_message(
                text=f"Thank you. There's no known power cut at {say_postcode(postcode)}, so "
                "I've logged a new report and our engineers are being told now. Please keep "
                "well away from any fallen power lines."
            )
            _note(dispatcher, entities={"outage": "reported"})
            return reset
        dispatcher.utter_message(
            text=f"Thanks. There's a known power cut in your area, caused by {outage.cause}. "
            f"{say_fix_estimate(outage.estimated_fix, rt.now())}"
        )
        _note(dispatcher, entities={"outage": "known"})
        return reset


def _slot_start(tracker: Tracker, today: dt.date) -> dt.datetime | None:
    day = parse_day(str(tracker.get_slot("date") or ""), today)
    time = parse_time(str(tracker.get_slot("time") or ""))
    if day is None or time is None:
        return None
    return dt.datetime.combine(day, time)


class ValidateAppointmentForm(FormValidationAction):
    def name(self) -> str:
        return "validate_appointment_form"

    async def validate_date(
        self,
        slot_value: Any,
        dispatcher: CollectingDispatcher,
        tracker: Tracker,
        domain: DomainDict,
    ) -> dict[str, Any]:
        rt = runtime()
        day = parse_day(str(slot_value or ""), rt.today())
        if day is None:
            dispatcher.utter_message(text="Sorry, I didn't get the day.")
            return {"date": None}
        if day.weekday() == 6:
            dispatcher.utter_message(text="Sorry, we don't visit on Sundays.")
            return {"date": None}
        return {"date": str(slot_value)}

    async def validate_time(
        self,
        slot_value: Any,
        dispatcher: CollectingDispatcher,
        tracker: Tracker,
        domain: DomainDict,
    ) -> dict[str, Any]:
        rt = runtime()
        today = rt.today()
        day = parse_day(str(tracker.get_slot("date") or ""), today)
        time = parse_time(str(slot_value or ""))
        if day is None:
            return {"time": str(slot_value)}  # the date is asked (again) first
        if time is None:
            dispatcher.utter_message(text="Sorry, I didn't get the time.")
            return {"time": None}
        wanted = dt.datetime.combine(day, time)
        try:
            free = await _bounded(rt, "bookings", rt.backend("bookings").free_slots(day, rt.now()))
        except BackendError as exc:
            # Every slot filled ends the form; action_book_appointment then says why.
            return {
                "time": "unchecked",
                "appointment_confirmed": "confirmed",
                "backend_error": f"{exc.reason}:bookings",
            }
        if wanted in free:
            return {"time": str(slot_value)}
        nearest = sorted(free, key=lambda s: abs((s - wanted).total_seconds()))[:NEAREST_SLOTS]
        if not nearest:
            dispatcher.utter_message(
                text=f"Sorry, there are no free times on {say_date(day, today)}. "
                "Which other day would suit you?"
            )
            return {"date": None, "time": None}
        dispatcher.utter_message(
            text=f"Sorry, {say_slot(wanted, today)} isn't free. The nearest free times are "
            f"{say_slots(sorted(nearest), today)}. Which would suit you?"
        )
        return {"time": None, "times_offered": True}  # action_ask_time need not ask again


class ActionAskTime(Action):
    def name(self) -> str:
        return "action_ask_time"

    async def run(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> list[EventType]:
        if tracker.get_slot("times_offered"):
            return [SlotSet("times_offered", None)]  # validate_time just asked
        rt = runtime()
        day = parse_day(str(tracker.get_slot("date") or ""), rt.today())
        when = say_date(day, rt.today()) if day is not None else "that day"
        dispatcher.utter_message(
            text=f"And what time on {when}? We have slots from 8 in the morning to 6 in "
            "the evening."
        )
        return []


class ActionAskAppointmentConfirmed(Action):
    def name(self) -> str:
        return "action_ask_appointment_confirmed"

    async def run(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> list[EventType]:
        rt = runtime()
        start = _slot_start(tracker, rt.today())
        if start is None:
            dispatcher.utter_message(text="Shall I book that appointment?")
        else:
            dispatcher.utter_message(
                text=f"So that's {say_slot(start, rt.today())}. Shall I book it?"
            )
        return []


_APPOINTMENT_RESET: list[EventType] = [
    SlotSet("date", None),
    SlotSet("time", None),
    SlotSet("appointment_confirmed", None),
]


class ActionBookAppointment(Action):
    def name(self) -> str:
        return "action_book_appointment"

    async def run(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> list[EventType]:
        rt = runtime()
        failed = _failed_in_form(tracker, "bookings")
        if failed is not None:
            return [*_APPOINTMENT_RESET, *_backend_down(dispatcher, failed)]
        today = rt.today()
        start = _slot_start(tracker, today)
        if start is None:
            dispatcher.utter_message(text="Sorry, I lost track of the day and time.")
            return [*_APPOINTMENT_RESET, FollowupAction("appointment_form")]
        account = str(tracker.get_slot("account_number") or "")
        bookings = rt.backend("bookings")
        try:
            booking = await _bounded(rt, "bookings", bookings.book(account, start))
        except SlotTaken:
            dispatcher.utter_message(
                text=f"Sorry, {say_slot(start, today)} has just been taken. Which other "
                "time would suit you?"
            )
            return [SlotSet("time", None), SlotSet("appointment_confirmed", None)] + [
                FollowupAction("appointment_form")
            ]
        except BackendError as exc:
            return [*_APPOINTMENT_RESET] + _backend_down(dispatcher, exc)
        dispatcher.utter_message(
            text=f"Your appointment is booked for {say_slot(booking.start, today)}. Your "
            f"reference is {say_digits(booking.reference)}."
        )
        _note(dispatcher, entities={"booking_reference": booking.reference})
        return list(_APPOINTMENT_RESET)


def warm_up() -> None:
    """Open (and seed) the back ends while the server starts, so ``/health`` answering
    means the first caller does not wait for it; a failure here is retried on first use."""
    try:
        runtime()
    except Exception:  # noqa: BLE001 - logged; the actions report it per call
        log.exception("back ends not ready at start")


warm_up()
