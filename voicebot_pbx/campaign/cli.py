"""``voicebot-pbx campaign run | status | dnc``: the command line of outbound campaigns."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import structlog

from voicebot_pbx.campaign.contacts import ContactsError, load_contacts, unknown_profiles
from voicebot_pbx.campaign.esl_dialer import EslDialer
from voicebot_pbx.campaign.runner import AmiDialer, DialerUnavailable, run_campaign
from voicebot_pbx.campaign.state import CampaignError, CampaignStore, store_path
from voicebot_pbx.config import Config, load_config
from voicebot_pbx.config.parse import ConfigError
from voicebot_pbx.ops.logs import configure_logging


def _fail(message: str) -> int:
    print(f"voicebot-pbx campaign: {message}", file=sys.stderr)
    return 2


async def _run(config: Config, store: CampaignStore, name: str, once: bool) -> dict[str, Any]:
    dialer: AmiDialer | EslDialer = (
        EslDialer(config) if config.campaign.pbx == "freeswitch" else AmiDialer(config)
    )
    await dialer.start()
    try:
        stats = await run_campaign(store, name, config, dialer, until_done=not once)
    finally:
        await dialer.close()
    return {"run": vars(stats), **store.summary(name)}


def run_main(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        contacts = load_contacts(args.file)
    except (ConfigError, ContactsError) as exc:
        return _fail(str(exc))
    problems = unknown_profiles(contacts, {p.name for p in config.profiles}, str(args.file))
    if problems:
        return _fail("; ".join(problems[:5]) + (" ..." if len(problems) > 5 else ""))
    configure_logging(config.log.format, config.log.level)
    name = args.name or args.file.stem
    sha256 = hashlib.sha256(args.file.read_bytes()).hexdigest()
    store = CampaignStore(store_path(config))
    try:
        created = store.open_campaign(
            name, contacts, source=str(args.file), sha256=sha256, now=time.time()
        )
        structlog.get_logger("voicebot_pbx.campaign").info(
            "campaign_open", campaign=name, contacts=len(contacts), resumed=not created
        )
        summary = asyncio.run(_run(config, store, name, args.once))
    except (CampaignError, DialerUnavailable) as exc:
        return _fail(str(exc))
    finally:
        store.close()
    print(json.dumps(summary, indent=2))
    return 0


def status_main(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail(str(exc))
    path = store_path(config)
    if not path.exists():
        return _fail(f"no campaigns yet ({path} does not exist)")
    store = CampaignStore(path)
    try:
        names = [args.name] if args.name else store.campaigns()
        summaries = [store.summary(n) for n in names]
    except CampaignError as exc:
        return _fail(str(exc))
    finally:
        store.close()
    if args.json:
        print(json.dumps(summaries, indent=2))
        return 0
    for s in summaries:
        status: dict[str, int] = s["status"]  # type: ignore[assignment]
        attempts: dict[str, int] = s["attempts"]  # type: ignore[assignment]
        print(f"{s['campaign']}: {s['contacts']} contacts from {s['source']}")
        print("  contacts: " + ", ".join(f"{k} {v}" for k, v in sorted(status.items())))
        print(
            "  attempts: " + (", ".join(f"{k} {v}" for k, v in sorted(attempts.items())) or "none")
        )
    return 0


def dnc_main(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail(str(exc))
    store = CampaignStore(store_path(config))
    try:
        if args.action == "list":
            for number, added_at, source in store.dnc_numbers():
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(added_at))
                print(f"{number}\t{when}\t{source}")
            return 0
        if not args.number:
            return _fail(f"dnc {args.action} needs a NUMBER")
        if args.action == "add":
            added = store.add_dnc(args.number, source="cli", now=time.time())
            print("added" if added else "already on the list")
        else:
            print("removed" if store.remove_dnc(args.number) else "not on the list")
        return 0
    finally:
        store.close()


def register_cli(sub: Any) -> None:
    """Add ``campaign`` to the CLI's subparsers."""
    campaign = sub.add_parser("campaign", help="outbound campaigns (AMI Originate)")
    commands = campaign.add_subparsers(dest="campaign_command", required=True)

    run = commands.add_parser("run", help="dial a contact list (CSV); resumes by name")
    run.add_argument("file", type=Path, help="CSV: number[,name,profile,timezone,VARIABLES...]")
    run.add_argument("--name", default="", help="campaign name (default: the file's stem)")
    run.add_argument("--once", action="store_true", help="stop when nothing is due now")
    run.add_argument("--config", type=Path)
    run.set_defaults(func=run_main)

    status = commands.add_parser("status", help="contacts and attempts per campaign")
    status.add_argument("name", nargs="?", default="")
    status.add_argument("--json", action="store_true")
    status.add_argument("--config", type=Path)
    status.set_defaults(func=status_main)

    dnc = commands.add_parser("dnc", help="the do-not-call list")
    dnc.add_argument("action", choices=("add", "remove", "list"))
    dnc.add_argument("number", nargs="?", default="")
    dnc.add_argument("--config", type=Path)
    dnc.set_defaults(func=dnc_main)
