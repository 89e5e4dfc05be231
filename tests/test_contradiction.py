"""The contradiction post-check (voicebot_pbx/answers/contradiction.py) on the real knowledge
base: flipped negations, free against a fee, open against closed, Yes against No and a
weekday given another weekday's hours must be rejected; faithful paraphrases must pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicebot_pbx.answers import contradiction
from voicebot_pbx.answers.contradiction import contradiction_problems
from voicebot_pbx.answers.grounding import grounding_problems
from voicebot_pbx.answers.knowledge import KnowledgeBase, Passage
from voicebot_pbx.speech.tts import split_sentences

KNOWLEDGE = Path(__file__).resolve().parent.parent / "knowledge"


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return KnowledgeBase.load(KNOWLEDGE)


def passages(kb: KnowledgeBase, *ids: str) -> list[Passage]:
    """The passages with these ids, or of these files ("tariffs": every tariffs#n)."""
    return [p for p in kb.passages if p.id in ids or p.id.split("#")[0] in ids]


# (passages, caller's question, answer sentence, what the reason must contain)
CONTRADICTIONS: list[tuple[tuple[str, ...], str, str, str]] = [
    (("billing",), "How can I pay my bill?", "You can't pay by card.", "(billing#2)"),
    (
        ("billing",),
        "Can I pay at the customer centre?",
        "You cannot pay in person at the customer centre.",
        "polarity: says 'you cannot pay in person",
    ),
    (
        ("meter-readings",),
        "Do I need to read a smart meter?",
        "Yes, you need to read your smart meter yourself.",
        "yes/no: says 'Yes' where the passage answers 'No' (meter-readings#2)",
    ),
    (
        ("meter-readings",),
        "",
        "You need to read your smart meter every day.",
        "where the passage says 'so you don't need to read it yourself' (meter-readings#2)",
    ),
    (
        ("address",),
        "Can I just walk in?",
        "You need an appointment to pay a bill at the customer centre.",
        "(address#2)",
    ),
    (("tariffs",), "", "Standard Variable has an exit fee.", "(tariffs#1)"),
    (("tariffs",), "", "There is an exit fee on Green Saver.", "(tariffs#2)"),
    (("tariffs",), "", "Fixed 12 has no exit fee.", "'there is an exit fee of £30"),
    (("tariffs",), "", "You can leave Fixed 12 for free.", "(tariffs#2)"),
    (("appointments",), "", "Smart meters cost £30 to install.", "(appointments#2)"),
    (
        ("appointments",),
        "How do I get a smart meter?",
        "There is a charge for installing a smart meter.",
        "'smart meters are installed free of charge'",
    ),
    (
        ("opening-hours",),
        "Are you open on Saturday?",
        "We are open on Saturday from 8 am to 6 pm.",
        "weekday/time: says Saturday 8 am to 6 pm where the passages give Saturday 9 am to "
        "1 pm (opening-hours#1)",
    ),
    (
        ("opening-hours",),
        "",
        "On Saturdays our phone lines are open from 8 am to 6 pm.",
        "weekday/time: says Saturday 8 am to 6 pm",
    ),
    (
        ("opening-hours",),
        "",
        "Our phone lines are open 8 am to 6 pm, Monday to Saturday.",
        "weekday/time: says Saturday 8 am to 6 pm",
    ),
    (
        ("opening-hours",),
        "",
        "The phone lines open at 8 am on Saturdays.",
        "weekday/time: says Saturday 8 am where",
    ),
    (
        ("opening-hours",),
        "",
        "We are open on Sunday from 9 am to 1 pm.",
        "weekday/time: says Sunday 9 am to 1 pm; the passages give no times for it",
    ),
    (
        ("opening-hours",),
        "",
        "Our phone lines are open on Sundays.",
        "where the passage says 'we are closed on sundays and bank holidays'",
    ),
    (("opening-hours",), "", "We're not open on Saturdays.", "(opening-hours#1)"),
    (
        ("opening-hours",),
        "Can I report a power cut outside opening hours?",
        "No, the power cut line is only open during office hours.",
        "yes/no: says 'No' where the passage answers 'Yes' (opening-hours#2)",
    ),
    (("opening-hours",), "", "Calling 105 is not free.", "(opening-hours#2)"),
    (
        ("power-cuts",),
        "What should I do if I smell gas?",
        "If you smell gas, use the light switches.",
        "'don't use any switches' (power-cuts#2)",
    ),
    (
        ("power-cuts",),
        "I can smell gas",
        "If you can smell gas, don't leave the property.",
        "(power-cuts#2)",
    ),
    (
        ("complaints",),
        "",
        "You can't take your complaint to the Energy Ombudsman.",
        "(complaints#2)",
    ),
    (
        ("refunds",),
        "",
        "Credit is not refunded automatically when you close your account.",
        "'any credit is refunded automatically' (refunds#1)",
    ),
    (
        ("refunds",),
        "Can I get a refund of my credit?",
        "No, we don't refund credit.",
        "yes/no: says 'No' where the passage answers 'Yes' (refunds#1)",
    ),
    (
        ("direct-debit",),
        "",
        "Customers who pay by direct debit don't get a discount.",
        "(direct-debit#1)",
    ),
    (
        ("direct-debit",),
        "Can I change my direct debit date?",
        "No, you can't change the date.",
        "yes/no: says 'No'",
    ),
    (("moving-house",), "", "You don't need to tell us before you move.", "(moving-house#1)"),
    (("online-account",), "", "We won't email you a link.", "(online-account#1)"),
    (("accessibility",), "", "We can't send bills in braille.", "(accessibility#2)"),
    (
        ("accessibility",),
        "",
        "The Priority Services Register is not free.",
        "(accessibility#1)",
    ),
    (
        ("meter-readings",),
        "",
        "You can't give a meter reading on our website.",
        "(meter-readings#1)",
    ),
    (("meter-readings",), "", "You must read your smart meter yourself.", "(meter-readings#2)"),
    (
        ("meter-readings",),
        "",
        "Readings we get before the 25th are not used for that month's bill.",
        "(meter-readings#1)",
    ),
    (
        ("opening-hours",),
        "",
        "Our phone lines are open Monday to Friday from 9 am to 5 pm.",
        "weekday/time: says Monday to Friday 9 am to 5 pm where the passages give Monday 8 am "
        "to 6 pm (opening-hours#1)",
    ),
]

# (passages, caller's question, a faithful answer: reworded, reordered, partial, "Yes, ...")
FAITHFUL: list[tuple[tuple[str, ...], str, str]] = [
    (
        ("accessibility",),
        "Do you offer extra help for vulnerable customers?",
        "Yes, our Priority Services Register is free.",
    ),
    (
        ("accessibility",),
        "Do you help vulnerable customers?",
        "It gives you advance warning of planned power cuts and priority help in an emergency.",
    ),
    (
        ("accessibility",),
        "Can I get my bill in another format?",
        "Yes, we can send your bills in braille or large print.",
    ),
    (
        ("address",),
        "Do I need an appointment to visit?",
        "No, you don't need an appointment to pay a bill or ask a question.",
    ),
    (
        ("address",),
        "Can I just walk in?",
        "You can pay a bill at the customer centre without an appointment.",
    ),
    (
        ("address",),
        "When is the customer centre open?",
        "The customer centre is open Monday to Friday, 9 am to 5 pm.",
    ),
    (
        ("appointments",),
        "When can an engineer come?",
        "Engineer slots are available from 8 am to 6 pm, Monday to Saturday.",
    ),
    (
        ("appointments",),
        "Is a smart meter free?",
        "Yes, smart meters are installed free of charge.",
    ),
    (
        ("appointments",),
        "How do I get a smart meter?",
        "There's no charge for installing a smart meter, and it takes about 2 hours.",
    ),
    (("billing",), "Can I pay by card?", "Yes, you can pay by card on our website."),
    (
        ("billing",),
        "How can I pay?",
        "You can also pay in person at the customer centre, or by bank transfer.",
    ),
    (
        ("complaints",),
        "What if you don't sort out my complaint?",
        "If your complaint isn't sorted out within 8 weeks, you can take it to the Energy "
        "Ombudsman.",
    ),
    (
        ("complaints",),
        "What if I am not happy with how you dealt with my complaint?",
        "You can take your complaint to the Energy Ombudsman after 8 weeks.",
    ),
    (
        ("complaints",),
        "Is the ombudsman free?",
        "Yes, the Energy Ombudsman is free and independent.",
    ),
    (
        ("direct-debit",),
        "Can I change my direct debit date?",
        "Yes, you can pick any date from the 1st to the 28th of the month.",
    ),
    (
        ("direct-debit",),
        "Can I change my direct debit date?",
        "We need 10 working days' notice before the change.",
    ),
    (
        ("meter-readings",),
        "Do I need to read my smart meter?",
        "No, your smart meter sends us your readings automatically every day.",
    ),
    (
        ("meter-readings",),
        "Do I need to read a smart meter?",
        "You don't need to read it yourself.",
    ),
    (("meter-readings",), "Do I need to read a smart meter?", "No."),
    (
        ("meter-readings",),
        "Do I have to read my smart meter?",
        "There's no need to read your smart meter, it sends the readings itself.",
    ),
    (
        ("opening-hours",),
        "Are you open on Saturdays?",
        "Yes, on Saturday our phone lines are open from 9 am to 1 pm.",
    ),
    (("opening-hours",), "Are you open at weekends?", "We're closed on Sundays and bank holidays."),
    (("opening-hours",), "When are you open?", "Our lines are open 8 am to 6 pm on weekdays."),
    (("opening-hours",), "Are you open on Sunday?", "No, we aren't open on Sundays."),
    (
        ("opening-hours",),
        "When are your phone lines open?",
        "From Monday to Friday we're open 8 am to 6 pm, and on Saturdays 9 am to 1 pm.",
    ),
    (
        ("opening-hours",),
        "Can I report a power cut outside opening hours?",
        "Yes, you can call 105 at any time, free of charge.",
    ),
    (("opening-hours",), "Is it free to call 105?", "Calling 105 is free from any phone."),
    (
        ("opening-hours",),
        "Is the power cut line open on bank holidays?",
        "Yes, the power cut line doesn't close on bank holidays.",
    ),
    (
        ("power-cuts",),
        "What should I do if I smell gas?",
        "Leave the property, don't use any switches, and call 0800 111 999 straight away.",
    ),
    (
        ("power-cuts",),
        "I can smell gas",
        "Don't touch any switches; call the gas emergency line on 0800 111 999.",
    ),
    (
        ("power-cuts",),
        "Is the gas line free?",
        "Yes, the gas emergency line is free and open 24 hours a day.",
    ),
    (
        ("refunds",),
        "Can I get a refund of my credit?",
        "Yes, ask for a refund and we'll pay it into your bank account within 10 working days.",
    ),
    (("refunds",), "Can I get a refund of my credit?", "Yes."),
    (
        ("refunds",),
        "What happens to my credit when I leave?",
        "When you close your account, you don't need to ask for a refund.",
    ),
    (
        ("tariffs",),
        "Is there a fee to leave a fixed tariff?",
        "Standard Variable and Green Saver have no exit fee.",
    ),
    (
        ("tariffs",),
        "Is there a fee to leave a fixed tariff?",
        "If you leave Fixed 12 before the 12 months are up, you pay an exit fee of £30 for "
        "each fuel.",
    ),
    (
        ("tariffs",),
        "What tariffs do you offer?",
        "Fixed 12 fixes your unit price for 12 months, and there's no exit fee on Standard "
        "Variable.",
    ),
    (
        ("direct-debit",),
        "Do I get a discount for direct debit?",
        "Yes, customers who pay by direct debit get a £5 discount on every monthly bill.",
    ),
    (("moving-house",), "I'm moving house", "We'll send your final bill within 14 days."),
    (
        ("power-cuts",),
        "How do I report a power cut?",
        "Please check your fuse box first, and see if your neighbours have power too.",
    ),
    (
        ("online-account",),
        "I forgot my password",
        "Choose log in, then forgot password, and we'll email you a link to set a new one.",
    ),
    (
        ("billing",),
        "How often will I get a bill?",
        "You'll get a bill every month, by post or by email.",
    ),
    # "don't have to" denies an obligation, not an option ("you can pay by direct debit")
    (
        ("billing", "direct-debit"),
        "Do I have to pay by direct debit?",
        "You don't have to pay by direct debit; you can also pay by card or bank transfer.",
    ),
    (
        ("meter-readings",),
        "Can I read my smart meter?",
        "You can read your smart meter yourself if you want to.",
    ),
    (
        ("meter-readings",),
        "Do I need to read a smart meter?",
        "Nope, you never need to read a smart meter yourself.",
    ),
    # "after" is another case than the passage's "before"
    (
        ("meter-readings",),
        "When do readings count?",
        "Readings we get after the 25th won't be used for that month's bill.",
    ),
    (
        ("tariffs",),
        "Is there a fee to leave a fixed tariff?",
        "If you leave Fixed 12 after the 12 months are up, there is no exit fee.",
    ),
    (
        ("tariffs",),
        "Is there an exit fee?",
        "None on Standard Variable or Green Saver, but £30 per fuel on Fixed 12.",
    ),
    (
        ("opening-hours",),
        "Can I report a power cut outside opening hours?",
        "Yes, the power cut line never closes.",
    ),
    (
        ("opening-hours",),
        "When are you open?",
        "Monday to Friday 8 am to 6 pm, Saturday 9 am to 1 pm.",
    ),
    (
        ("opening-hours",),
        "When are you open?",
        "We're open from eight a.m. to six p.m. Monday to Friday.",
    ),
]


def test_the_case_lists_are_big_enough() -> None:
    assert len(CONTRADICTIONS) >= 15 and len(FAITHFUL) >= 25


@pytest.mark.parametrize(("ids", "question", "answer", "reason"), CONTRADICTIONS)
def test_contradicting_sentences_are_rejected(
    kb: KnowledgeBase, ids: tuple[str, ...], question: str, answer: str, reason: str
) -> None:
    found = contradiction_problems(answer, passages(kb, *ids), question=question)
    assert any(reason in problem for problem in found), found


@pytest.mark.parametrize(("ids", "question", "answer"), FAITHFUL)
def test_faithful_paraphrases_pass(
    kb: KnowledgeBase, ids: tuple[str, ...], question: str, answer: str
) -> None:
    assert contradiction_problems(answer, passages(kb, *ids), question=question) == []
    # with every passage retrieved (more sentences that could seem to disagree)
    assert contradiction_problems(answer, kb.passages, question=question) == []


def test_every_knowledge_base_sentence_passes_against_the_whole_knowledge_base(
    kb: KnowledgeBase,
) -> None:
    checked = 0
    for passage in kb.passages:
        for sentence in split_sentences(passage.text):
            for question in ("", passage.question):
                found = contradiction_problems(sentence, kb.passages, question=question)
                assert found == [], (passage.id, sentence, found)
                checked += 1
    assert checked >= 100


def test_the_briefs_own_examples_on_plain_text_passages() -> None:
    home = "No, you do not need to be at home for a smart meter reading."
    question = "Do I need to be at home for a smart meter reading?"
    found = contradiction_problems("Yes, you need to be at home.", [home], question=question)
    assert found[0] == "yes/no: says 'Yes' where the passage answers 'No' (passage 1)"
    assert "says 'you need to be at home'" in found[1]
    assert (
        contradiction_problems("No, you don't need to be at home.", [home], question=question) == []
    )
    assert contradiction_problems("You can't pay by card.", ["You can pay by card."])
    assert contradiction_problems("You can pay by card.", ["You can pay by card."]) == []
    assert contradiction_problems("We never charge a fee.", ["We always charge a fee."])
    assert contradiction_problems("A fee is charged.", ["There is no fee."])
    assert contradiction_problems("There is no fee.", ["There is no fee."]) == []
    five_pounds = ["There is a charge of £5 for a paper bill."]
    assert contradiction_problems("Paper bills are free.", five_pounds)
    assert contradiction_problems("Paper bills cost £5.", five_pounds) == []
    question = "Is there a charge for a paper bill?"
    assert contradiction_problems("It is free.", five_pounds, question=question)


def test_yes_no_needs_a_yes_no_question_about_that_passage(kb: KnowledgeBase) -> None:
    meters = passages(kb, "meter-readings")
    # no question, or a question that is not yes/no, or about something else: no yes/no check
    assert contradiction_problems("Yes.", meters) == []
    assert contradiction_problems("Yes.", meters, question="How do I read a smart meter?") == []
    assert contradiction_problems("Yes.", meters, question="Do you sell smart plugs?") == []
    # a negated question flips what "Yes" means: not checked
    negated = "Is it true I don't need to read a smart meter?"
    assert contradiction_problems("Yes.", meters, question=negated) == []
    assert contradiction_problems("Yes.", meters, question="Do I need to read a smart meter?")


def test_weekday_ranges_cover_the_days_between_and_topics_are_kept_apart(
    kb: KnowledgeBase,
) -> None:
    hours = passages(kb, "opening-hours", "address")
    for fine in (
        "We are open on Wednesday from 8 am to 6 pm.",
        "The customer centre is open on Thursday from 9 am to 5 pm.",
        "Our phone lines close at 1 pm on Saturday.",
    ):
        assert contradiction_problems(fine, hours) == [], fine
    found = contradiction_problems("The customer centre is open Saturday 9 am to 1 pm.", hours)
    assert found == ["weekday/time: says Saturday 9 am to 1 pm; the passages give no times for it"]
    found = contradiction_problems("The customer centre is open Friday 8 am to 6 pm.", hours)
    assert found == [
        "weekday/time: says Friday 8 am to 6 pm where the passages give Friday 9 am to 5 pm "
        "(address#2)"
    ]


@pytest.mark.parametrize(
    "text", ["", " ", "...", "?!", "-", "£££", "105", "Yes", "No.", "n't", "free", "Monday to"]
)
def test_never_raises_on_odd_text(kb: KnowledgeBase, text: str) -> None:
    assert isinstance(contradiction_problems(text, kb.passages, question="Is it?"), list)
    assert contradiction_problems(text, []) == []
    assert contradiction_problems(text, ["", "   ", "No."], question=text) == []


def test_no_passages_means_nothing_to_contradict() -> None:
    assert contradiction_problems("You can't pay by card.", []) == []
    assert contradiction_problems("You can't pay by card.", iter([])) == []


def test_grounding_problems_includes_contradictions_and_never_raises(
    kb: KnowledgeBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    bills = passages(kb, "billing#2")
    found = grounding_problems("You can't pay by card.", bills, question="Can I pay by card?")
    assert len(found) == 1 and found[0].startswith("polarity: ")
    assert grounding_problems("You can pay by card.", bills) == []

    def broken(text: str, passages: object, *, question: str = "") -> list[str]:
        raise RuntimeError("bug")

    monkeypatch.setattr(contradiction, "contradiction_problems", broken)
    # Logged, and not spoken: a sentence nobody could check may be wrong.
    assert grounding_problems("You can pay by card.", bills) == [
        "contradiction check failed: RuntimeError"
    ]
    assert grounding_problems("Call 106.", bills) == [
        "number 106 not in the passages",
        "contradiction check failed: RuntimeError",
    ]
