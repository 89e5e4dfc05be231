"""voicebot_pbx.config: defaults without a file, errors that name the key and the file, masking."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from voicebot_pbx.config import (
    Config,
    ServerConfig,
    load_config,
    parse_config,
)
from voicebot_pbx.config.parse import ConfigError, as_dict

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = REPO_ROOT / "voicebot.example.toml"


@pytest.fixture(autouse=True)
def _no_env_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOICEBOT_CONFIG", raising=False)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "voicebot.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_load_without_a_file() -> None:
    config = load_config()
    # Config() as written, with the business facts filled in (knowledge/facts.toml).
    assert config.server == ServerConfig() and config.vad == Config().vad
    assert (
        Config().dialogue.greeting
        == "Hello, thanks for calling {{company}}. How can I help you today?"
    )
    assert config.dialogue.greeting == (
        "Hello, thanks for calling Northwind Energy. How can I help you today?"
    )
    assert "{{" not in repr(config)
    assert config.server.port == 9092
    assert config.server.default_rate_hz == 8000


def test_env_var_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[server]\nport = 9100\n")
    monkeypatch.setenv("VOICEBOT_CONFIG", str(path))
    assert load_config().server.port == 9100


def test_values_are_read_and_frozen(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, '[server]\nhost = "::1"\nmax_calls = 4\nwrite_timeout_s = 1\n')
    )
    assert config.server.host == "::1"
    assert config.server.max_calls == 4
    assert config.server.write_timeout_s == 1.0
    assert isinstance(config.server.write_timeout_s, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("bogus = 1\n", "'bogus'"),
        ("[server]\nprot = 9092\n", "'server.prot'"),
        ("[nosuchsection]\nx = 1\n", "'nosuchsection'"),
        (
            '[[dialogue.rules]]\nkeywords = ["hi"]\nreply = "hello"\nthen_do = "hangup"\n',
            "'dialogue.rules[0].then_do'",
        ),
    ],
)
def test_unknown_key_names_the_key_and_the_file(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "unknown key" in message
    assert key in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[server]\nport = "9092"\n', "server.port"),
        ("[server]\nport = true\n", "server.port"),  # bool is not an int here
        ("[server]\nport = 9092.5\n", "server.port"),
        ('[server]\nwrite_timeout_s = "2"\n', "server.write_timeout_s"),
        ("[server]\nhost = 127\n", "server.host"),
        ('[stt]\nengine = "kaldi"\n', "stt.engine"),
        ('[dialogue]\nrules = "none"\n', "dialogue.rules"),
        ('[[dialogue.rules]]\nkeywords = "hi"\nreply = "x"\n', "dialogue.rules[0].keywords"),
        ("server = 5\n", "server"),
    ],
)
def test_wrong_type_names_the_key_and_the_file(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert key in message


def test_invalid_values_are_rejected(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[server]\ndefault_rate_hz = 44100\nmax_calls = 0\nmax_calls_per_peer = -1\n"
        "[dialogue]\nmax_dead_air_s = -1\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "server.default_rate_hz" in str(info.value)
    assert "server.max_calls must" in str(info.value)
    assert "server.evict_silent_after_s and server.max_calls_per_peer" in str(info.value)
    assert "hold_after_s and max_dead_air_s >= 0" in str(info.value)


def test_the_second_listens_tempo_is_bounded(tmp_path: Path) -> None:
    for value in (0.3, 2.5):
        path = write(tmp_path, f"[stt]\ndigits_tempo = {value}\n")
        with pytest.raises(ConfigError, match="digits_tempo"):
            load_config(path)
    for value in (1.0, 1.3):
        path = write(tmp_path, f"[stt]\ndigits_tempo = {value}\n")
        assert load_config(path).stt.digits_tempo == value


def check_turn_setting(
    tmp_path: Path, key: str, rejected: tuple[int, ...], accepted: tuple[int, ...]
) -> None:
    """``[turn] key = value``: each rejected value is refused naming ``turn.<key>``, each
    accepted one is read as given."""
    for value in rejected:
        path = write(tmp_path, f"[turn]\n{key} = {value}\n")
        with pytest.raises(ConfigError, match=f"turn.{key}"):
            load_config(path)
    for value in accepted:
        path = write(tmp_path, f"[turn]\n{key} = {value}\n")
        assert dataclasses.asdict(load_config(path).turn)[key] == value


def test_a_tiebreak_silence_outside_the_short_and_maximum_silences_is_rejected(
    tmp_path: Path,
) -> None:
    check_turn_setting(tmp_path, "tiebreak_silence_ms", (100, 900), (0, 200, 700))


def test_a_digits_wait_shorter_than_the_maximum_silence_is_rejected(tmp_path: Path) -> None:
    check_turn_setting(tmp_path, "digits_max_silence_ms", (-1, 300), (0, 700, 2000))


def test_an_unfinished_wait_shorter_than_the_maximum_silence_is_rejected(tmp_path: Path) -> None:
    check_turn_setting(tmp_path, "unfinished_max_silence_ms", (-1, 300), (0, 700, 2500))


def test_text_thresholds_in_the_wrong_order_are_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "[turn]\ntext_unfinished_below = -1.0\ntext_finished_from = -2.0\n")
    with pytest.raises(ConfigError, match="turn.text_unfinished_below"):
        load_config(path)


def test_a_barge_in_end_silence_outside_the_short_and_maximum_silences_is_rejected(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "[vad]\nbarge_in_end_silence_ms = 800\n")
    with pytest.raises(ConfigError, match="vad.barge_in_end_silence_ms"):
        load_config(path)


def test_a_short_utterance_silence_outside_the_short_and_maximum_silences_is_rejected(
    tmp_path: Path,
) -> None:
    for text in ("short_end_silence_ms = 100\n", "short_end_silence_ms = 800\n"):
        path = write(tmp_path, "[vad]\n" + text)
        with pytest.raises(ConfigError, match="vad.short_end_silence_ms"):
            load_config(path)


def test_missing_file_and_bad_toml_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="nope.toml"):
        load_config(missing)
    broken = write(tmp_path, "[server\nport = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(broken)
    assert str(broken) in str(info.value)


def test_parse_config_reports_its_source() -> None:
    with pytest.raises(ConfigError, match=r"^inline: unknown key 'x'"):
        parse_config({"x": 1}, "inline")


@pytest.mark.skipif(
    not EXAMPLE.exists(),
    reason="voicebot.example.toml is not written yet (the lead adds it at the repo root)",
)
def test_example_file_loads() -> None:
    config = load_config(EXAMPLE)
    assert isinstance(config, Config)


# --- masking --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Llm:
    api_key: str = ""
    max_tokens: int = 256
    api_key_env: str = "VOICEBOT_LLM_API_KEY"


@dataclasses.dataclass(frozen=True, slots=True)
class _WithSecrets:
    password: str = "hunter2"
    client_secret: str = "s3cr3t"
    auth_token: str = "tok"
    empty_password: str = ""
    host: str = "example.invalid"
    llm: _Llm = dataclasses.field(default_factory=lambda: _Llm(api_key="sk-123"))


def test_as_dict_masks_secrets_and_only_secrets() -> None:
    shown = as_dict(_WithSecrets())
    assert shown == {
        "password": "********",
        "client_secret": "********",
        "auth_token": "********",
        "empty_password": "",  # unset: shown as unset, nothing to hide
        "host": "example.invalid",
        "llm": {
            "api_key": "********",
            "max_tokens": 256,  # a count, not a token
            "api_key_env": "VOICEBOT_LLM_API_KEY",  # the NAME of an env var, not its value
        },
    }
    assert as_dict(_WithSecrets(), mask_secrets=False)["llm"]["api_key"] == "sk-123"


def test_as_dict_of_the_real_config_round_trips() -> None:
    data = as_dict(Config())
    assert data["server"]["port"] == 9092
    assert isinstance(data["dialogue"]["rules"], list)
    assert data["dialogue"]["rules"][0]["keywords"]
    # Everything as_dict shows can be loaded back (tuples shown as lists).
    assert parse_config(data, "round-trip") == load_config()  # facts filled in


def test_a_webhook_url_must_be_http(tmp_path: Path) -> None:
    path = write(tmp_path, '[webhook]\nurl = "ftp://crm.example/x"\n')
    with pytest.raises(ConfigError, match="webhook.url"):
        load_config(path)
    path = write(tmp_path, '[webhook]\nurl = "https://crm.example/x"\nbackoff_s = [1.0, 0.0]\n')
    with pytest.raises(ConfigError, match="backoff_s"):
        load_config(path)


def test_an_unreadable_config_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read.*IsADirectoryError"):
        load_config(tmp_path)
    binary = tmp_path / "v.toml"
    binary.write_bytes(b"\xff\xfe garbage")
    with pytest.raises(ConfigError, match="v.toml"):
        load_config(binary)
