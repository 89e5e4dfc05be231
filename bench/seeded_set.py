"""What the seeded evaluation sets' builders share (``bench/amd_dataset.py``,
``bench/answers_dataset.py``): a WAV's hash, whether a built set is up to date with its
plan, writing the WAVs and the manifest, and building a set only when it is stale.

A set's items are dataclasses with at least ``id``, ``wav`` (a path relative to the set's
folder), ``sha256`` and ``duration_s``; the manifest is ``{header..., "plan_sha256",
"items": [...]}`` with the items as the builder writes them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from voicebot_pbx.audio import read_wav, write_wav

MANIFEST = "manifest.json"


class SetInfo(NamedTuple):
    """The manifest's header: the set's version, seeds and rate."""

    version: int
    seed: int
    split_seed: int
    rate_hz: int


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def up_to_date(out_dir: Path, items: Sequence[Any], plan_sha256: str) -> bool:
    """The manifest matches the plan and every WAV is there with its recorded hash."""
    manifest = out_dir / MANIFEST
    if not manifest.exists():
        return False
    try:
        data = json.loads(manifest.read_text())
    except ValueError:
        return False
    if data.get("plan_sha256") != plan_sha256 or len(data.get("items", [])) != len(items):
        return False
    for entry, item in zip(data["items"], items, strict=True):
        path = out_dir / item.wav
        if entry.get("id") != item.id or not path.exists():
            return False
        if entry.get("sha256") != sha256_file(path):
            return False
    return True


def write_set(
    out_dir: Path,
    items: Sequence[Any],
    render: Callable[[Any], bytes],
    info: SetInfo,
    plan_sha256: str,
    item_json: Callable[[Any], dict[str, Any]],
) -> Path:
    """Render every item's WAV (its ``sha256`` and ``duration_s`` filled in), then write the
    manifest: ``info``, ``plan_sha256``, then ``items`` as ``item_json`` gives them. Returns
    its path."""
    (out_dir / "wav").mkdir(parents=True, exist_ok=True)
    for item in items:
        path = out_dir / item.wav
        write_wav(path, render(item), info.rate_hz)
        item.sha256 = sha256_file(path)
        item.duration_s = round(len(read_wav(path)[0]) / 2 / info.rate_hz, 3)
    manifest = out_dir / MANIFEST
    header = {**info._asdict(), "plan_sha256": plan_sha256}
    manifest.write_text(
        json.dumps({**header, "items": [item_json(i) for i in items]}, indent=1) + "\n"
    )
    return manifest


def build_if_stale(
    out_dir: Path,
    items: Sequence[Any],
    plan_sha256: str,
    render: Callable[[Any], bytes],
    info: SetInfo,
    item_json: Callable[[Any], dict[str, Any]],
    *,
    force: bool = False,
    before_writing: Callable[[], None] = lambda: None,
) -> tuple[Path, bool]:
    """(manifest path, whether anything was written): :func:`write_set` unless the set is
    :func:`up_to_date` (or ``force``); ``before_writing`` runs first (a check that the
    synthesiser is there)."""
    if not force and up_to_date(out_dir, items, plan_sha256):
        return out_dir / MANIFEST, False
    before_writing()
    return write_set(out_dir, items, render, info, plan_sha256, item_json), True
