"""Loads the Northwind Energy demo data into a database (idempotent).

cd rasa_project && python -m actions.seed --dsn /var/lib/voicebot/demo.sqlite [--seed 19]
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Sequence

from .backend_sql import describe_dsn
from .demo_data import seed_demo


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m actions.seed", description="Load the Northwind Energy demo data."
    )
    parser.add_argument(
        "--dsn",
        required=True,
        help="a SQLite file (created if missing), sqlite:///path, or postgresql://...",
    )
    parser.add_argument("--seed", type=int, default=19, help="demo data seed (default 19)")
    parser.add_argument("--accounts", type=int, default=200, help="how many (default 200)")
    args = parser.parse_args(argv)
    try:
        count = seed_demo(args.dsn, seed=args.seed, n=args.accounts, now=datetime.datetime.now())
    except Exception as exc:
        print(f"could not seed {describe_dsn(args.dsn)}: {exc}", file=sys.stderr)
        return 1
    print(f"{count} demo accounts (seed {args.seed}) in {describe_dsn(args.dsn)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
