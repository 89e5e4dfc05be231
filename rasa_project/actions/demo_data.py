"""The demo company, Northwind Energy: customers in north-west London (NW1..NW9), a few known
power cuts, engineer visits. Deterministic from a seed, so a demo script can rely on it.

``python -m actions.seed --dsn DSN`` (cwd ``rasa_project``) loads it into a database.
"""

from __future__ import annotations

import datetime
import random

from .backend import Account, Outage, iso_minute
from .backend_sql import connect_sql, ensure_schema

__all__ = ["DEMO_REFERENCE_DATE", "demo_accounts", "demo_outages", "seed_demo"]

# The "today" of demo_accounts() when none is given: bills fall in the 60 days before it.
DEMO_REFERENCE_DATE = datetime.date(2025, 6, 2)

_FIRST_NAMES = (
    "Olivia", "Amelia", "Isla", "Ava", "Mia", "Grace", "Freya", "Lily", "Emily", "Sophie",
    "Priya", "Aisha", "Fatima", "Zara", "Chloe", "Hannah", "Ruth", "Margaret", "Joan", "Eileen",
    "Oliver", "George", "Harry", "Noah", "Jack", "Leo", "Arthur", "Oscar", "Thomas", "James",
    "Mohammed", "Arjun", "Kwame", "Daniel", "Samuel", "David", "Peter", "Michael", "Colin",
    "Sean",
)  # fmt: skip
_SURNAMES = (
    "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Patel",
    "Robinson", "Wright", "Thompson", "Evans", "Walker", "White", "Roberts", "Green", "Hall",
    "Wood", "Jackson", "Clarke", "Khan", "Ahmed", "Singh", "Murphy", "O'Brien", "Kowalski",
    "Okafor", "Mensah", "Hughes", "Edwards", "Turner", "Hill", "Moore", "Cooper", "Ward",
    "Morris", "King", "Baker", "Harris",
)  # fmt: skip
# Letters a postcode's inward code may use (no C, I, K, M, O, V).
_INWARD_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"

# (area, cause, hours until the estimated fix): two districts and one street.
_OUTAGES = (
    ("NW3", "a damaged underground cable", 3),
    ("NW6", "a fault at a local substation", 2),
    ("NW1 4RY", "a fault on the overhead line in your street", 4),
)


def demo_accounts(
    seed: int = 19, n: int = 200, *, reference_date: datetime.date | None = None
) -> list[Account]:
    """``n`` demo accounts, the same for the same arguments. Numbers are 8 digits, not
    starting with 0, unique; postcodes in NW1..NW9; balances from -£50.00 to £400.00 (some
    whole pounds, some in credit); the last bill 1..60 days before ``reference_date``
    (default :data:`DEMO_REFERENCE_DATE`)."""
    if n < 0:
        raise ValueError("n must not be negative")
    today = DEMO_REFERENCE_DATE if reference_date is None else reference_date
    rng = random.Random(seed)
    numbers: set[str] = set()
    accounts: list[Account] = []
    while len(accounts) < n:
        number = str(rng.randrange(10_000_000, 100_000_000))
        if number in numbers:
            continue
        numbers.add(number)
        name = f"{rng.choice(_FIRST_NAMES)} {rng.choice(_SURNAMES)}"
        postcode = (
            f"NW{rng.randint(1, 9)} {rng.randint(1, 9)}"
            f"{rng.choice(_INWARD_LETTERS)}{rng.choice(_INWARD_LETTERS)}"
        )
        birth_date = datetime.date(1940, 1, 1) + datetime.timedelta(days=rng.randrange(23_700))
        kind = rng.random()
        if kind < 0.15:  # in credit
            balance = -rng.randint(1, 5_000)
        elif kind < 0.35:  # whole pounds
            balance = rng.randint(0, 400) * 100
        else:
            balance = rng.randint(1, 40_000)
        last_bill = rng.randint(1_500, 25_000)
        if rng.random() < 0.2:
            last_bill -= last_bill % 100
        last_bill_date = today - datetime.timedelta(days=rng.randint(1, 60))
        accounts.append(
            Account(
                number=number,
                name=name,
                postcode=postcode,
                birth_date=birth_date,
                balance_pence=balance,
                last_bill_pence=last_bill,
                last_bill_date=last_bill_date,
            )
        )
    return accounts


def demo_outages(now: datetime.datetime) -> list[Outage]:
    """The known power cuts: districts NW3 and NW6 and the street NW1 4RY, each fixed a few
    hours after ``now`` (rounded up to the quarter hour, so it is easy to say)."""
    base = now.replace(second=0, microsecond=0, tzinfo=None)
    base += datetime.timedelta(minutes=-base.minute % 15)
    return [
        Outage(area=area, cause=cause, estimated_fix=base + datetime.timedelta(hours=hours))
        for area, cause, hours in _OUTAGES
    ]


_UPSERT_ACCOUNT = (
    "INSERT INTO accounts (number, name, postcode, birth_date, balance_pence, last_bill_pence,"
    " last_bill_date) VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (number) DO UPDATE SET name = excluded.name, postcode = excluded.postcode,"
    " birth_date = excluded.birth_date, balance_pence = excluded.balance_pence,"
    " last_bill_pence = excluded.last_bill_pence, last_bill_date = excluded.last_bill_date"
)
_UPSERT_OUTAGE = (
    "INSERT INTO outages (area, cause, estimated_fix) VALUES (?, ?, ?)"
    " ON CONFLICT (area) DO UPDATE SET cause = excluded.cause,"
    " estimated_fix = excluded.estimated_fix"
)


def seed_demo(
    dsn: str, *, seed: int = 19, now: datetime.datetime | None = None, n: int = 200
) -> int:
    """Creates the schema if needed and loads the demo accounts (last bills relative to
    ``now``, default the current local time) and outages (refreshed relative to ``now``), in
    one transaction. Idempotent: rows are upserted, so re-running duplicates nothing;
    bookings are left alone. Returns the number of demo accounts."""
    moment = datetime.datetime.now() if now is None else now
    accounts = demo_accounts(seed, n, reference_date=moment.date())
    ensure_schema(dsn)
    with connect_sql(dsn) as conn:
        conn.executemany(
            _UPSERT_ACCOUNT,
            [
                (
                    a.number,
                    a.name,
                    a.postcode,
                    a.birth_date.isoformat(),
                    a.balance_pence,
                    a.last_bill_pence,
                    a.last_bill_date.isoformat(),
                )
                for a in accounts
            ],
        )
        conn.executemany(
            _UPSERT_OUTAGE,
            [(o.area, o.cause, iso_minute(o.estimated_fix)) for o in demo_outages(moment)],
        )
        conn.commit()
    return len(accounts)
