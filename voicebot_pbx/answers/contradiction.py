"""The contradiction post-check (pure): a sentence the LLM produced must not say the opposite
of the retrieved passages, even when every word and number in it is *present* there.

Three checks; each reason names the passage (``Passage.id``, or "passage N" for plain text):

- **polarity**: sentences are split into clauses (at ; : . ! ?, "but", "so", "if", "when",
  "and you ...", and at commas unless a list goes on: "by card, or by bank transfer"). A
  clause is denied by "not", "no", "never", "none", "nothing", "without", "no longer", "nor"
  or any "n't" form; "closed" reads as "not open", "free" (and "free of charge") as a
  separate "no fee", with "fee", "charge" and "cost" one term. Terms (stemmed with
  :func:`knowledge.search_terms`; negation words, "always"/"ever" and digits left out)
  before the negation word are the clause's subject, those after it what it denies, the
  first of them its head ("you don't need to *read* it"); a denied list ("closed on Sundays
  and bank holidays") denies the head with each item. An answer clause is compared with
  the passage sentences sharing 2 of its terms (1 if a side has only 1) whose passage has
  60 % of them. It contradicts one when it affirms a passage clause's denied head with 60 %
  of a denied item, or denies a head that sentence only affirms with 60 % of that
  affirming clause (either way, also: with 60 % of the answer clause when all of the
  answer clause is in that sentence), unless a sentence matching at least as well says
  the same. Not compared: clauses under another "if" case or about another subject than
  the denial's; "you don't need to X" against anything but an obligation ("you can X",
  "customers who X"); "after" against "before". "If ..." clauses assert nothing.
- **yes/no**: a first sentence opening with "Yes" or "No", for a yes/no ``question``, when
  the one passage whose heading matches the question (60 % of the terms both ways, same
  negation parity) opens with the other word.
- **weekday/time**: each weekday named with a time ("Saturday 8 am to 6 pm", "8 am to 6 pm
  on weekdays", "open at 9 am on Saturday"; "Monday to Friday" covers the days between)
  must have that range, or that time as a range end, for that weekday in the passage
  sentences about the same thing (those sharing most terms with the answer, else all);
  a weekday the passages give no times for fails too.

Known limits: it reads words, not meaning, and is tuned to let paraphrases through. Missed:
synonyms and antonyms beyond open/closed and free/fee ("go to" vs "take it to", "only",
"unhappy"); a denial whose head is not the passage's ("no *engineer* slots" against "we
have slots", "without *paying* an exit fee"); a denial with only stop words after the
negation ("it costs nothing"); double negation in one clause; pronouns ("it", "they") in
the answer beyond the caller's question; a subject mismatch in an affirmative clause ("our
phone lines are open on bank holidays" passes when the power cut line is); swapped
"before"/"after" with the same polarity; a flip covering too little of either side ("you
need an appointment to visit the customer centre"). "and" does not end a negation
("closed on Sundays and open on Saturdays" reads as one denial), so such an answer may be
rejected. Weekday times are matched against every passage sentence about the same thing,
so two topics with different hours can vouch for each other.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache

from voicebot_pbx.answers.grounding import ClockTime, words_and_times
from voicebot_pbx.answers.knowledge import Passage, search_terms
from voicebot_pbx.answers.number_words import WEEKDAYS
from voicebot_pbx.speech.tts import split_sentences

# An answer clause is compared with a passage sentence sharing MIN_SHARED_TERMS of its terms
# whose passage has MIN_SHARED_FRACTION of them; a flip must cover MIN_FLIP_FRACTION of the
# flipped clause (or denied item), and a subject or "if" case must be found to that share.
MIN_SHARED_FRACTION = 0.6
MIN_SHARED_TERMS = 2
MIN_FLIP_FRACTION = 0.6

_NEGATORS = frozenset(
    """not no never none nothing nobody neither nor without cannot dont doesnt didnt cant
    wont isnt arent wasnt werent havent hasnt hadnt shouldnt mustnt neednt couldnt wouldnt
    aint""".split()
)
# "no later than 2 days", "not only", "no problem": a negation word that denies nothing.
_NOT_NEGATING_NEXT = {
    "no": frozenset({"later", "more", "less", "matter", "problem", "worries", "doubt"}),
    "not": frozenset({"later", "more", "less", "only", "just"}),
}
_FEE_WORDS = frozenset(
    "fee fees charge charges charged charging cost costs costing".split()
)  # "free" denies these
_FEE = "fee"
# Left out of the terms compared: they carry polarity, not content.
_POLARITY_WORDS = frozenset("always ever longer yes yeah yep nope free closed am pm".split())
_YES = frozenset({"yes", "yeah", "yep"})
_NO = frozenset({"no", "nope"})
# A comma fragment starting with one of these continues the clause before it
# ("by card on our website, or by bank transfer").
_ATTACHING = frozenset(
    """by on in at for from to with within through via including free every each as into
    over under after before between until during""".split()
)
_CLAUSE_WORDS = frozenset(
    "but so because although though whereas while if unless when whenever".split()
)
_NECESSITY = frozenset("need needs needed must required necessary please".split())
_POSSIBILITY = frozenset("can could may able cannot".split())
_TIMING = frozenset({"before", "after"})
# A clause starting with one of these is an instruction ("Tell us ...", "Please call ...").
_IMPERATIVES = frozenset(
    """ask call tell give take leave check go choose visit contact send pay book read keep
    make use phone ring write email let""".split()
)
_SOFTENERS = frozenset("and or then so just also please".split())
_CONDITIONAL_STARTS = frozenset("if unless when whenever once before after until".split())
_SUBJECTS = frozenset("i you we it they there he she this that these those any your our".split())
_SEPARATORS = frozenset(",;:.!?")
_WORD_RE = re.compile(r"[£$€]?[a-z0-9]+(?:'[a-z]+)*|[,;:.!?]")
_AUXILIARIES = frozenset(
    """do does did is are am was were can could will would should shall may might must have
    has had""".split()
)
_QUESTION_FILLERS = frozenset(
    "so and hi hello hey um er erm ok okay well please sorry then".split()
)


# --- reading a sentence -----------------------------------------------------------------------


def _lower_words(text: str) -> list[str]:
    """Lower-cased words and clause punctuation; "a.m." -> "am", "3.5" -> "35"."""
    text = text.lower().replace("’", "'")
    text = re.sub(r"\b([ap])\.\s?m\b\.?", r"\1m", text)
    text = re.sub(r"(?<=\d)[.,:](?=\d)", "", text)
    return _WORD_RE.findall(text)


def _is_negator(word: str) -> bool:
    return word in _NEGATORS or word.endswith("n't")


def _term(word: str) -> str:
    """The content term of one word ("" for stop words, digits and polarity words)."""
    if word in _FEE_WORDS:
        return _FEE
    if word in _POLARITY_WORDS or _is_negator(word):
        return ""
    terms = search_terms(word.split("'")[0])  # "we'll" -> "we", "Northwind's" -> "northwind"
    return terms[0] if terms and not terms[0].isdigit() else ""


@dataclass(frozen=True, slots=True)
class _Claim:
    """What one clause asserts: ``polar`` terms, denied when ``negated`` (first = head)."""

    text: str
    polar: tuple[str, ...]
    negated: bool
    # What must be flipped together: the polar terms, or for a denied list ("closed on
    # Sundays and bank holidays") the head with each item: {open, sunday}, {open, bank, holiday}
    units: tuple[frozenset[str], ...]
    subject: frozenset[str]  # terms before the negation word
    conditions: frozenset[str]  # terms of the sentence's "if ..." clauses
    terms: frozenset[str]  # for matching: the clause's terms, conditions, maybe the question
    # "can" (you can pay; you can't pay), "need" (you must; you don't need to) or ""
    modality: str = ""
    timing: frozenset[str] = frozenset()  # "before" / "after" in the clause or its conditions


@dataclass(frozen=True, slots=True)
class _Clause:
    words: tuple[str, ...]
    conditional: bool


def _split_clauses(words: Sequence[str]) -> list[_Clause]:
    """Split at ; : . ! ?, at "but", "so", "if", "unless", "when" ..., at "and"/"or" before a
    subject ("and you ..."), and at commas unless the next fragment starts with a
    preposition (a list: "by card, or by bank transfer")."""
    clauses: list[list[str]] = [[]]
    for i, word in enumerate(words):
        nxt = words[i + 1] if i + 1 < len(words) else ""
        after = words[i + 2] if i + 2 < len(words) else ""
        if word in _SEPARATORS:
            continues = word == "," and (
                nxt in _ATTACHING or (nxt in ("and", "or") and after in _ATTACHING)
            )
            if not continues:
                clauses.append([])
            continue
        starts = word in _CLAUSE_WORDS or (word in ("and", "or") and nxt in _SUBJECTS)
        if starts and clauses[-1]:
            clauses.append([])
        clauses[-1].append(word)
    return [
        _Clause(tuple(c), conditional=c[0] in _CONDITIONAL_STARTS or c[:2] == ["in", "case"])
        for c in clauses
        if c
    ]


@dataclass(slots=True)
class _ClauseReading:
    subject: list[str] = field(default_factory=list)  # terms before the first negation
    polar: list[str] = field(default_factory=list)  # terms after it
    chunks: list[list[str]] = field(default_factory=lambda: [[]])  # polar, split at and/or
    negations: int = 0
    fee_claims: list[bool] = field(default_factory=list)  # per "free": True if it denies a fee

    def add(self, term: str) -> None:
        if self.negations:
            self.polar.append(term)
            self.chunks[-1].append(term)
        else:
            self.subject.append(term)

    def units(self) -> tuple[frozenset[str], ...]:
        chunks = [c for c in self.chunks if c]
        if len(chunks) < 2:
            return (frozenset(self.polar),)
        head = chunks[0][0]
        return (frozenset(chunks[0]), *(frozenset({head, *c}) for c in chunks[1:]))


def _read_clause(words: Sequence[str]) -> _ClauseReading:
    reading = _ClauseReading()
    skip = 0
    for i, word in enumerate(words):
        if skip:
            skip -= 1
            continue
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if word == "feel" and nxt == "free":
            skip = 1
        elif word == "free":
            reading.fee_claims.append(reading.negations % 2 == 0)  # "isn't free": a fee
            if nxt == "of" and i + 2 < len(words) and words[i + 2] in _FEE_WORDS:
                skip = 2
        elif word in _NOT_NEGATING_NEXT and nxt in _NOT_NEGATING_NEXT[word]:
            skip = 1
        elif word == "closed":
            reading.negations += 1
            reading.add("open")
        elif _is_negator(word):
            reading.negations += 1
        elif word in ("and", "or") and reading.chunks[-1]:
            reading.chunks.append([])
        else:
            term = _term(word)
            if term:
                reading.add(term)
    return reading


def _modality(words: Sequence[str]) -> str:
    """ "need" for a necessity ("you must", "please call", "tell us", "you don't need to",
    "no need"), "can" for a possibility ("you can", "you can't"), else "". After a negation
    only its next words count: "you don't have to pay" is "need", "you can't pay" is "can"."""
    leading = [w for w in words if w not in _SOFTENERS][:1]
    if leading and leading[0] in _IMPERATIVES:
        return "need"
    negation = next((i for i, w in enumerate(words) if _is_negator(w)), None)
    if negation is not None:
        words = words[max(negation - 1, 0) : negation + 3]
    joined = " ".join(words)
    if set(words) & _NECESSITY or re.search(r"\b(?:have|has|got) to\b|needn't", joined):
        return "need"
    if set(words) & _POSSIBILITY or re.search(r"\b(?:can't|couldn't)\b", joined):
        return "can"
    return ""


def _claims(clause: _Clause, conditions: _Clause, context: frozenset[str]) -> list[_Claim]:
    """What a non-conditional clause asserts (``conditions``: the sentence's "if" clauses,
    as one); nothing for double negation."""
    reading = _read_clause(clause.words)
    condition_terms = _clause_terms(conditions)
    base = _Claim(
        text=" ".join(clause.words),
        polar=(),
        negated=False,
        units=(),
        subject=frozenset(),
        conditions=condition_terms,
        terms=_clause_terms(clause) | condition_terms | context,
        timing=frozenset(clause.words + conditions.words) & _TIMING,
    )
    fee = (_FEE,)
    claims = [
        replace(base, polar=fee, negated=denies_fee, units=(frozenset(fee),))
        for denies_fee in reading.fee_claims
    ]
    modality = _modality(clause.words)
    if reading.negations == 0 and reading.subject:
        polar = tuple(reading.subject)  # nothing denied: every term is affirmed
        claims.append(replace(base, polar=polar, units=(frozenset(polar),), modality=modality))
    elif reading.negations == 1 and reading.polar:
        denied = replace(base, polar=tuple(reading.polar), negated=True, units=reading.units())
        claims.append(replace(denied, subject=frozenset(reading.subject), modality=modality))
    return claims


def _compatible(negated: _Claim, affirmed: _Claim) -> bool:
    """Claims that do not contradict whatever their terms: "you don't have to pay by
    direct debit" and "you can pay by direct debit" (or "customers who pay by direct debit
    get a discount"); "after the 25th" and "before the 25th"."""
    if negated.modality == "need" and affirmed.modality != "need":
        return True  # "you don't need to X" denies an obligation, not a fact or an option
    return bool(negated.timing and affirmed.timing and not negated.timing & affirmed.timing)


def _clause_terms(clause: _Clause) -> frozenset[str]:
    reading = _read_clause(clause.words)
    fee = {_FEE} if reading.fee_claims else set()
    return frozenset(reading.subject) | frozenset(reading.polar) | fee


@dataclass(frozen=True, slots=True)
class _Sentence:
    source: str
    text: str
    yes_no: str  # "yes", "no" or "" (the sentence's first word)
    claims: tuple[_Claim, ...]
    terms: frozenset[str]
    polarity: Mapping[str, frozenset[bool]]  # term -> {negated?} over its claims
    topic: frozenset[str] = frozenset()  # the terms of its whole passage and heading


def _yes_no(words: Sequence[str]) -> str:
    """ "yes" / "no" when the sentence opens with that answer word ("No, ...", "Yes you can")."""
    if not words:
        return ""
    nxt = words[1] if len(words) > 1 else "."
    if words[0] in _YES:
        return "yes"
    if words[0] in _NO and nxt in _SEPARATORS:
        return "no"
    return ""


def _read_sentence(text: str, source: str, extra_context: frozenset[str]) -> _Sentence:
    """``extra_context`` (the question's terms) helps clauses with fewer than 2 terms."""
    words = _lower_words(text)
    yes_no = _yes_no(words)
    if yes_no:
        words = words[1:]
    clauses = _split_clauses(words)
    conditions = _Clause(sum((c.words for c in clauses if c.conditional), ()), conditional=True)
    claims: list[_Claim] = []
    for clause in clauses:
        if clause.conditional:
            continue
        short = len(_clause_terms(clause)) < MIN_SHARED_TERMS
        claims += _claims(clause, conditions, extra_context if short else frozenset())
    polarity: dict[str, set[bool]] = {}
    for claim in claims:
        for term in claim.polar:
            polarity.setdefault(term, set()).add(claim.negated)
        for term in claim.subject:
            polarity.setdefault(term, set())
    terms = frozenset().union(*(_clause_terms(c) for c in clauses))
    return _Sentence(
        source,
        text,
        yes_no,
        tuple(claims),
        terms,
        {term: frozenset(values) for term, values in polarity.items()},
    )


def _source(passage: Passage | str, index: int) -> str:
    return passage.id if isinstance(passage, Passage) else f"passage {index + 1}"


@lru_cache(maxsize=512)
def _passage_sentences(passage: Passage | str, source: str) -> tuple[_Sentence, ...]:
    text = passage if isinstance(passage, str) else passage.text
    heading = "" if isinstance(passage, str) else passage.question
    sentences: list[_Sentence] = []
    for line in split_sentences(text):
        sentence = _read_sentence(line, source, frozenset())
        if sentences and _lower_words(line)[:1] in (["it"], ["this"], ["they"], ["these"]):
            # "It is free": the sentence before says what "it" is
            sentence = replace(sentence, terms=sentence.terms | sentences[-1].terms)
        sentences.append(sentence)
    topic = frozenset().union(
        *(s.terms for s in sentences), _read_sentence(heading, "", frozenset()).terms
    )
    return tuple(replace(s, topic=topic) for s in sentences)


# --- polarity ---------------------------------------------------------------------------------


def _shared(claim: _Claim, sentence: _Sentence) -> int:
    """How many content terms a claim and a passage sentence share; 0 unless they are
    comparable: 2 shared terms (1 if a side has only 1) and most of the claim's terms in the
    sentence's passage."""
    shared = len(claim.terms & sentence.terms)
    topical = len(claim.terms & (sentence.topic or sentence.terms))
    shorter = min(len(claim.terms), len(sentence.terms))
    if shared < min(MIN_SHARED_TERMS, shorter) or topical < MIN_SHARED_FRACTION * len(claim.terms):
        return 0
    return shared


def _only(sentence: _Sentence, term: str, negated: bool) -> bool:
    """``sentence`` uses ``term`` only denied (``negated``) or only affirmed."""
    return sentence.polarity.get(term, frozenset()) == frozenset({negated})


def _covers(found: int, total: int) -> bool:
    return total > 0 and found >= MIN_FLIP_FRACTION * total


def _subject_found(subject: frozenset[str], terms: frozenset[str]) -> bool:
    """A denial is about its subject, a claim about its "if" case: the other side must name
    most of it (if there is one)."""
    return not subject or _covers(len(subject & terms), len(subject))


def _denial_affirmed(claim: _Claim, sentence: _Sentence) -> tuple[_Claim, frozenset[str]] | None:
    """The passage clause denying what the (affirmative) answer claim affirms, and the terms
    a passage sentence must affirm to back the answer (the flipped unit)."""
    if not _subject_found(claim.conditions, sentence.terms):
        return None  # the answer speaks of another case
    for denial in sentence.claims:
        if not denial.negated or not _subject_found(denial.subject, claim.terms):
            continue
        if _compatible(denial, claim):
            continue
        flipped = {t for t in set(claim.polar) & set(denial.polar) if _only(sentence, t, True)}
        head = denial.polar[0]
        if head not in flipped:
            continue
        unit = _flipped_unit(denial, flipped, head) or _answer_side_flip(
            claim, flipped, sentence, head
        )
        if unit:
            return denial, unit
    return None


def _flipped_unit(claim: _Claim, flipped: set[str], head: str) -> frozenset[str]:
    """The flipped part of the first unit of ``claim`` that has ``head`` and that
    ``flipped`` mostly covers; empty if none."""
    for unit in claim.units:
        if head in flipped & unit and _covers(len(flipped & unit), len(unit)):
            return frozenset(flipped & unit)
    return frozenset()


def _answer_side_flip(
    claim: _Claim, flipped: set[str], sentence: _Sentence, head: str
) -> frozenset[str]:
    """Most of the answer clause is flipped, and all of it is in the passage sentence."""
    if not claim.terms <= sentence.terms:
        return frozenset()
    return _flipped_unit(claim, flipped, head)


def _affirmation_denied(claim: _Claim, sentence: _Sentence) -> tuple[_Claim, frozenset[str]] | None:
    """The passage clause affirming what the (negated) answer claim denies, and the terms a
    passage sentence must deny to back the answer (the answer's head)."""
    head = claim.polar[0]
    if not _only(sentence, head, False):
        return None
    if not _subject_found(claim.conditions | claim.subject, sentence.terms):
        return None  # the answer speaks of another case or another thing
    flipped = {t for t in claim.polar if _only(sentence, t, False)}
    for affirmation in sentence.claims:
        if affirmation.negated or head not in affirmation.polar:
            continue
        if _compatible(claim, affirmation):
            continue
        if _answer_side_flip(claim, flipped, sentence, head) or _covers(
            len(flipped & set(affirmation.polar)), len(set(affirmation.polar))
        ):
            return affirmation, frozenset({head})
    return None


def _supports(sentence: _Sentence, terms: frozenset[str], negated: bool) -> bool:
    """``sentence`` says each of ``terms`` with this polarity."""
    return all(negated in sentence.polarity.get(term, frozenset()) for term in terms)


def _quote(text: str, max_words: int = 12) -> str:
    words = text.split()
    return " ".join(words[:max_words]) + (" ..." if len(words) > max_words else "")


def _claim_problem(claim: _Claim, sentences: Sequence[_Sentence]) -> str | None:
    matched = [(n, s) for s in sentences if (n := _shared(claim, s))]
    for shared, sentence in sorted(matched, key=lambda item: -item[0]):
        found = (
            _affirmation_denied(claim, sentence)
            if claim.negated
            else _denial_affirmed(claim, sentence)
        )
        if found is None:
            continue
        other, decisive = found
        if any(n >= shared and _supports(s, decisive, claim.negated) for n, s in matched):
            continue  # a passage sentence matching as well says the same
        return (
            f"polarity: says '{_quote(claim.text)}' where the passage says "
            f"'{_quote(other.text)}' ({sentence.source})"
        )
    return None


# --- yes/no -----------------------------------------------------------------------------------


def _is_yes_no_question(question: str) -> bool:
    for sentence in re.split(r"[.!?]+", question):
        words = [w for w in _lower_words(sentence) if w not in _SEPARATORS]
        while words and words[0] in _QUESTION_FILLERS:
            words = words[1:]
        if words and (words[0] in _AUXILIARIES or _is_negator(words[0])):
            return True
    return False


def _negation_parity(text: str) -> int:
    return sum(map(_is_negator, _lower_words(text))) % 2


def _yes_no_problem(answer: str, question: str, passages: Sequence[Passage | str]) -> str | None:
    """The answer's opening Yes/No against the one passage whose heading matches the
    question (for plain-text passages: whose text does), when that passage opens with one."""
    if not answer or not question or not _is_yes_no_question(question):
        return None
    asked = set(search_terms(question))
    best: list[tuple[int, Passage | str, int]] = []
    for index, passage in enumerate(passages):
        heading = passage.question if isinstance(passage, Passage) else passage
        terms = set(search_terms(heading))
        shared = len(asked & terms)
        enough = _covers(shared, len(asked)) and (
            not isinstance(passage, Passage) or _covers(shared, len(terms))
        )
        if enough and _negation_parity(heading) == _negation_parity(question):
            best.append((shared, passage, index))
    if not best:
        return None
    top = max(n for n, _, _ in best)
    stated = {
        _source(p, i): _yes_no(_lower_words(p if isinstance(p, str) else p.text))
        for n, p, i in best
        if n == top
    }
    if len(set(stated.values())) != 1:
        return None  # the best passages disagree
    source, said = next(iter(stated.items()))
    if not said or said == answer:
        return None
    return (
        f"yes/no: says '{answer.capitalize()}' where the passage answers "
        f"'{said.capitalize()}' ({source})"
    )


# --- weekday/time -----------------------------------------------------------------------------

_DAY_WORDS: dict[str, tuple[str, ...]] = {
    **{day: (day,) for day in WEEKDAYS},
    **{day + "s": (day,) for day in WEEKDAYS},
    **{short: (day,) for day in WEEKDAYS[:5] for short in (day[:3],)},
    "tues": ("tuesday",),
    "thur": ("thursday",),
    "thurs": ("thursday",),
    "weekday": WEEKDAYS[:5],
    "weekdays": WEEKDAYS[:5],
    "weekend": WEEKDAYS[5:],
    "weekends": WEEKDAYS[5:],
}
_DAY_RANGE_WORDS = frozenset({"to", "until", "till", "through", "thru", "-", "–"})
_DAY_LIST_WORDS = frozenset({",", "and", "or", "&", "/"})
_BEFORE_DAYS = frozenset({"on", "every", "at", "over", "the"})
_DAY_TERMS = frozenset(t for word in _DAY_WORDS for t in search_terms(word))
Times = tuple[ClockTime, ...]  # one time ("9 am") or a range ("8 am to 6 pm")


def _days_between(first: str, last: str) -> tuple[str, ...]:
    start, end = WEEKDAYS.index(first), WEEKDAYS.index(last)
    return tuple(WEEKDAYS[(start + k) % 7] for k in range((end - start) % 7 + 1))


@dataclass(slots=True)
class _DayGroup:
    days: list[str]
    end: int  # item index after the group


def _links(items: Sequence[str | Times], start: int) -> list[str]:
    """The (at most 2) day-joining words from ``start``: "to", "-", ",", "and", ", and"."""
    links: list[str] = []
    for item in items[start : start + 2]:
        if not isinstance(item, str) or item not in _DAY_RANGE_WORDS | _DAY_LIST_WORDS:
            break
        links.append(item)
    return links


def _day_groups(items: Sequence[str | Times]) -> list[tuple[int, _DayGroup]]:
    """(start item, group) for "Monday to Friday", "Saturday and Sunday", "weekdays"."""
    groups: list[tuple[int, _DayGroup]] = []
    i = 0
    while i < len(items):
        item = items[i]
        if not isinstance(item, str) or item not in _DAY_WORDS:
            i += 1
            continue
        group = _DayGroup(list(_DAY_WORDS[item]), i + 1)
        while True:
            links = _links(items, group.end)  # "to", "-", ",", "and", ", and"
            nxt = items[group.end + len(links)] if group.end + len(links) < len(items) else ""
            if not links or not isinstance(nxt, str) or nxt not in _DAY_WORDS:
                break
            if set(links) & _DAY_RANGE_WORDS and len(_DAY_WORDS[nxt]) == 1:
                group.days += _days_between(group.days[-1], _DAY_WORDS[nxt][0])[1:]
            else:
                group.days += _DAY_WORDS[nxt]
            group.end += len(links) + 1
        groups.append((i, group))
        i = group.end
    return groups


@lru_cache(maxsize=1024)
def _day_times(text: str) -> tuple[tuple[tuple[str, ...], Times], ...]:
    """Each weekday group paired with the times it is given: the time goes with the day
    group right after it ("8 am to 6 pm on weekdays"), else the one before it ("Monday to
    Friday from 8 am to 6 pm"), else the next one."""
    items = words_and_times(text)
    groups = _day_groups(items)
    pairs: list[tuple[tuple[str, ...], Times]] = []
    for index, item in enumerate(items):
        if isinstance(item, str):
            continue
        after = index + 1
        while after < len(items) and items[after] in _BEFORE_DAYS:
            after += 1
        following = [g for start, g in groups if start == after]
        before = [g for start, g in groups if g.end <= index]
        later = [g for start, g in groups if start > index]
        chosen = following or before[-1:] or later[:1]
        if chosen:
            pairs.append((tuple(dict.fromkeys(chosen[0].days)), item))
    return tuple(pairs)


def _say_days(days: Sequence[str]) -> str:
    """ "Monday to Friday" for 3+ consecutive days, else "Saturday, Sunday"."""
    names = [day.capitalize() for day in days]
    if len(days) >= 3 and tuple(days) == _days_between(days[0], days[-1]):
        return f"{names[0]} to {names[-1]}"
    return ", ".join(names)


def _say_times(times: Times) -> str:
    return " to ".join(f"{hour:f} {meridiem}" for hour, meridiem in times)


def _time_fits(times: Times, given: set[Times]) -> bool:
    if len(times) == 2:
        return times in given
    return any(times[0] in g for g in given)


def _weekday_problems(answer: str, sentences: Sequence[_Sentence]) -> list[str]:
    pairs = _day_times(answer)
    if not pairs:
        return []
    timed = [(s, p) for s in sentences if (p := _day_times(s.text))]
    if not timed:
        return []
    about = set(search_terms(answer)) - _DAY_TERMS
    overlap = [len(about & s.terms) for s, _ in timed]
    if max(overlap) > 0:  # the passage sentences about the same thing
        timed = [t for t, n in zip(timed, overlap, strict=True) if n == max(overlap)]
    given: dict[str, set[Times]] = {}
    sources: dict[str, list[str]] = {}
    for sentence, sentence_pairs in timed:
        for days, times in sentence_pairs:
            for day in days:
                given.setdefault(day, set()).add(times)
                sources.setdefault(day, []).append(sentence.source)
    problems: list[str] = []
    for days, times in pairs:
        wrong = [day for day in days if not _time_fits(times, given.get(day, set()))]
        if not wrong:
            continue
        said = f"says {_say_days(wrong)} {_say_times(times)}"
        day = next((d for d in wrong if d in given), "")
        if not day:
            problems.append(f"weekday/time: {said}; the passages give no times for it")
            continue
        known = " or ".join(sorted(_say_times(t) for t in given[day]))
        where = ", ".join(dict.fromkeys(sources[day]))
        problems.append(
            f"weekday/time: {said} where the passages give {day.capitalize()} {known} ({where})"
        )
    return problems


# --- the check --------------------------------------------------------------------------------


def contradiction_problems(
    text: str, passages: Iterable[Passage | str], *, question: str = ""
) -> list[str]:
    """Why ``text`` (one sentence or a short answer) contradicts ``passages``; empty if it
    does not, as far as this check can tell (see the module docstring). ``question`` (the
    caller's) enables the yes/no check and gives short clauses ("Yes, it is free.") their
    topic. Pure."""
    passages = list(passages)
    sentences = [s for i, p in enumerate(passages) for s in _passage_sentences(p, _source(p, i))]
    if not sentences or not any(ch.isalnum() for ch in text):
        return []
    asked = frozenset(t for t in map(_term, _lower_words(question)) if t)
    problems: list[str] = []
    for index, answer in enumerate(split_sentences(text)):
        sentence = _read_sentence(answer, "answer", asked)
        if index == 0 and sentence.yes_no:
            problem = _yes_no_problem(sentence.yes_no, question, passages)
            if problem:
                problems.append(problem)
        for claim in sentence.claims:
            problem = _claim_problem(claim, sentences)
            if problem:
                problems.append(problem)
        problems += _weekday_problems(answer, sentences)
    return list(dict.fromkeys(problems))
