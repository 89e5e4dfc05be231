"""A campaign's contact list from CSV (pure apart from reading the file).

Columns: ``number`` (required), ``name``, ``profile``, ``timezone`` (IANA, e.g.
"Europe/London"; empty: the campaign's), and any other column becomes a channel variable
for the call (``VOICEBOT_VAR_<COLUMN>``, upper-cased). A bad row is an error naming the file
and line; duplicate numbers are errors too (a number is dialled once per campaign).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

KNOWN_COLUMNS = ("number", "name", "profile", "timezone")
_VARIABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,39}")
MAX_CONTACTS = 100_000


class ContactsError(ValueError):
    """A contact list that cannot be used; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Contact:
    seq: int  # 1-based row number among the contacts (stable: the campaign's key)
    number: str  # as dialled
    name: str = ""
    profile: str = ""
    timezone: str = ""  # empty: the campaign's
    variables: tuple[tuple[str, str], ...] = field(default=())
    line: int = 0  # in the contact file (for errors)


def normalise_number(number: str) -> str:
    """The form numbers are compared in (the do-not-call list, duplicates): digits, with a
    leading "+" kept; spaces, dashes, dots and brackets dropped."""
    text = number.strip()
    plus = text.startswith("+")
    digits = re.sub(r"\D", "", text)
    return f"+{digits}" if plus else digits


def _valid_number(number: str) -> bool:
    return (
        bool(re.fullmatch(r"\+?[0-9 ().\-]{3,32}", number))
        and len(normalise_number(number).lstrip("+")) >= 3
    )


def parse_contacts(text: str, source: str = "<contacts>") -> list[Contact]:
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "number" not in [f.strip() for f in reader.fieldnames]:
        raise ContactsError(f"{source}: the first line must name the columns, with 'number'")
    extra = [f.strip() for f in reader.fieldnames if f.strip() not in KNOWN_COLUMNS]
    for name in extra:
        if not _VARIABLE_NAME.fullmatch(name):
            raise ContactsError(f"{source}:1: column {name!r} is not a usable variable name")
    contacts: list[Contact] = []
    seen: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        values = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
        if None in row:
            raise ContactsError(f"{source}:{line}: more fields than columns")
        number = values.get("number", "")
        if not _valid_number(number):
            raise ContactsError(f"{source}:{line}: {number!r} is not a phone number")
        key = normalise_number(number)
        if key in seen:
            raise ContactsError(f"{source}:{line}: {number} is already on line {seen[key]}")
        seen[key] = line
        tz = values.get("timezone", "")
        if tz:
            try:
                ZoneInfo(tz)
            except (ZoneInfoNotFoundError, ValueError):
                raise ContactsError(f"{source}:{line}: unknown time zone {tz!r}") from None
        variables = tuple((name.upper(), values.get(name, "")) for name in extra)
        for _name, value in variables:
            if "\n" in value or "\r" in value or len(value) > 200:
                raise ContactsError(f"{source}:{line}: a variable value must be one short line")
        contacts.append(
            Contact(
                seq=len(contacts) + 1,
                number=number,
                name=values.get("name", ""),
                profile=values.get("profile", ""),
                timezone=tz,
                variables=variables,
                line=line,
            )
        )
        if len(contacts) > MAX_CONTACTS:
            raise ContactsError(f"{source}: more than {MAX_CONTACTS} contacts")
    if not contacts:
        raise ContactsError(f"{source}: no contacts")
    return contacts


def load_contacts(path: Path) -> list[Contact]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ContactsError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ContactsError(f"{path}: not UTF-8 text") from None
    return parse_contacts(text, str(path))


def unknown_profiles(contacts: list[Contact], profiles: set[str], source: str) -> list[str]:
    """One error per row whose profile the bot does not have."""
    return [
        f"{source}:{c.line}: unknown profile {c.profile!r} (not in the config's [[profiles]])"
        for c in contacts
        if c.profile and c.profile not in profiles
    ]


def campaign_variables(contact: Contact, campaign: str) -> dict[str, str]:
    """The channel variables a campaign call carries into the bot: which campaign and
    contact (for "stop calling me" and the machine verdict), the profile, the row's columns."""
    variables = {"VOICEBOT_CAMPAIGN": campaign, "VOICEBOT_CONTACT": str(contact.seq)}
    if contact.profile:
        variables["VOICEBOT_PROFILE"] = contact.profile
    variables.update({f"VOICEBOT_VAR_{k}": v for k, v in contact.variables})
    return variables
