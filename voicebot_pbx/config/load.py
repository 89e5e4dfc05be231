"""The whole configuration (:class:`Config`), loading (:func:`load_config`,
:func:`parse_config`) and the checks that span sections (one ``ConfigError`` naming every
problem and the file)."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from voicebot_pbx.call.amd import AmdConfig
from voicebot_pbx.config.answers import KnowledgeConfig, LlmConfig
from voicebot_pbx.config.campaign import CampaignConfig, campaign_problems
from voicebot_pbx.config.dialogue import (
    ActionsConfig,
    DialogueConfig,
    FallbackConfig,
    PromptsConfig,
    RasaConfig,
    actions_problems,
)
from voicebot_pbx.config.facts import with_facts
from voicebot_pbx.config.ops import (
    AnalyticsConfig,
    HealthConfig,
    InferenceConfig,
    LogConfig,
    ProfileConfig,
    WebhookConfig,
)
from voicebot_pbx.config.parse import ConfigError, build
from voicebot_pbx.config.pbx import (
    AmiConfig,
    FreeswitchConfig,
    HandoverConfig,
    ServerConfig,
    WebSocketConfig,
)
from voicebot_pbx.config.speech import SttConfig, TtsConfig, TurnConfig, VadConfig


@dataclass(frozen=True, slots=True)
class Config:
    state_dir: str = ".cache/state"
    server: ServerConfig = field(default_factory=ServerConfig)
    vad: VadConfig = field(default_factory=VadConfig)
    turn: TurnConfig = field(default_factory=TurnConfig)
    stt: SttConfig = field(default_factory=SttConfig)
    tts: TtsConfig = field(default_factory=TtsConfig)
    dialogue: DialogueConfig = field(default_factory=DialogueConfig)
    rasa: RasaConfig = field(default_factory=RasaConfig)
    actions: ActionsConfig = field(default_factory=ActionsConfig)
    fallbacks: FallbackConfig = field(default_factory=FallbackConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    ami: AmiConfig = field(default_factory=AmiConfig)
    handover: HandoverConfig = field(default_factory=HandoverConfig)
    webhook: WebhookConfig = field(default_factory=WebhookConfig)
    campaign: CampaignConfig = field(default_factory=CampaignConfig)
    amd: AmdConfig = field(default_factory=AmdConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    profiles: tuple[ProfileConfig, ...] = ()
    analytics: AnalyticsConfig = field(default_factory=AnalyticsConfig)
    llm: LlmConfig = field(default_factory=LlmConfig)
    knowledge: KnowledgeConfig = field(default_factory=KnowledgeConfig)
    freeswitch: FreeswitchConfig = field(default_factory=FreeswitchConfig)
    log: LogConfig = field(default_factory=LogConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    config = with_facts(build(Config, data, "", source), source)
    _validate(config, source)
    return config


def load_config(path: str | Path | None = None) -> Config:
    """Load ``path`` (or ``$VOICEBOT_CONFIG``); built-in defaults when neither is given."""
    chosen = path if path is not None else os.environ.get("VOICEBOT_CONFIG")
    if not chosen:
        return parse_config({}, "<defaults>")
    file = Path(chosen)
    try:
        with file.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:  # a folder, no permission, not UTF-8
        raise ConfigError(f"{file}: cannot be read ({type(exc).__name__}: {exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    return parse_config(data, str(file))


def _validate(config: Config, source: str) -> None:
    problems: list[str] = []
    if not 0 <= config.server.port <= 65535:
        problems.append(f"server.port {config.server.port} out of range")
    if config.server.default_rate_hz not in (8000, 16000):
        problems.append("server.default_rate_hz must be 8000 or 16000")
    if config.server.max_calls < 1:
        problems.append("server.max_calls must be at least 1")
    dialogue = config.dialogue
    if dialogue.timeout_s <= 0 or dialogue.hold_after_s < 0 or dialogue.max_dead_air_s < 0:
        problems.append("dialogue: timeout_s > 0, hold_after_s and max_dead_air_s >= 0")
    if config.server.evict_silent_after_s < 0 or config.server.max_calls_per_peer < 0:
        problems.append("server.evict_silent_after_s and server.max_calls_per_peer must be >= 0")
    if not 0.0 < config.vad.neg_threshold <= config.vad.threshold < 1.0:
        problems.append("vad thresholds need 0 < neg_threshold <= threshold < 1")
    if config.vad.end_silence_max_ms < config.vad.end_silence_ms:
        problems.append("vad.end_silence_max_ms must be >= vad.end_silence_ms")
    if config.vad.quiet_below_peak_db < 0:
        problems.append("vad.quiet_below_peak_db must be >= 0 (0: the VAD's fall)")
    if config.vad.end_silence_after_sound_ms < 0:
        problems.append("vad.end_silence_after_sound_ms must be >= 0 (0: off)")
    if config.vad.barge_in_level_db < 0 or config.vad.barge_in_level_confirm_ms <= 0:
        problems.append(
            "vad.barge_in_level_db must be >= 0 (0: off) and vad.barge_in_level_confirm_ms > 0"
        )
    if not -120.0 <= config.vad.barge_in_level_min_dbfs <= 0.0:
        problems.append("vad.barge_in_level_min_dbfs must be between -120 and 0")
    if not 0.0 <= config.vad.barge_in_level_voicing < 1.0:
        problems.append("vad.barge_in_level_voicing must be between 0 (any sound) and 1")
    if config.vad.speculate_after_quiet_ms < 0:
        problems.append("vad.speculate_after_quiet_ms must be >= 0 (0: at the VAD's fall)")
    if not 0.0 < config.turn.threshold < 1.0:
        problems.append("turn.threshold must be between 0 and 1")
    if config.turn.timeout_ms <= 0 or config.turn.score_after_ms < 0 or config.turn.threads < 1:
        problems.append("turn.timeout_ms must be > 0, turn.score_after_ms >= 0, turn.threads >= 1")
    if not (
        config.vad.end_silence_ms
        <= config.vad.barge_in_end_silence_ms
        <= config.vad.end_silence_max_ms
    ):
        problems.append(
            f"vad.barge_in_end_silence_ms = {config.vad.barge_in_end_silence_ms} must be "
            "between vad.end_silence_ms and vad.end_silence_max_ms"
        )
    if (
        not (
            config.vad.end_silence_ms
            <= config.vad.short_end_silence_ms
            <= config.vad.end_silence_max_ms
        )
        or config.vad.short_utterance_ms < 0
    ):
        problems.append(
            f"vad.short_end_silence_ms = {config.vad.short_end_silence_ms} must be between "
            "vad.end_silence_ms and vad.end_silence_max_ms, vad.short_utterance_ms >= 0"
        )
    tiebreak_ms = config.turn.tiebreak_silence_ms
    if tiebreak_ms != 0 and not (
        config.vad.end_silence_ms <= tiebreak_ms <= config.vad.end_silence_max_ms
    ):
        problems.append(
            f"turn.tiebreak_silence_ms = {tiebreak_ms} must be 0 (off) or between "
            f"vad.end_silence_ms ({config.vad.end_silence_ms}) and vad.end_silence_max_ms "
            f"({config.vad.end_silence_max_ms})"
        )
    digits_ms = config.turn.digits_max_silence_ms
    if digits_ms != 0 and digits_ms < config.vad.end_silence_max_ms:
        problems.append(
            f"turn.digits_max_silence_ms = {digits_ms} must be 0 (off) or at least "
            f"vad.end_silence_max_ms ({config.vad.end_silence_max_ms}): it waits longer"
        )
    unfinished_ms = config.turn.unfinished_max_silence_ms
    if unfinished_ms != 0 and unfinished_ms < config.vad.end_silence_max_ms:
        problems.append(
            f"turn.unfinished_max_silence_ms = {unfinished_ms} must be 0 (off) or at least "
            f"vad.end_silence_max_ms ({config.vad.end_silence_max_ms}): it waits longer"
        )
    if config.turn.went_on_within_ms < 0:
        problems.append("turn.went_on_within_ms must be >= 0 (0: off)")
    if config.turn.text_reader not in ("model", "words"):
        problems.append(f'turn.text_reader = "{config.turn.text_reader}": "model" or "words"')
    if config.turn.text_unfinished_below > config.turn.text_finished_from:
        problems.append(
            f"turn.text_unfinished_below = {config.turn.text_unfinished_below} must not be "
            f"above turn.text_finished_from ({config.turn.text_finished_from})"
        )
    ws = config.websocket
    if bool(ws.tls_cert) != bool(ws.tls_key):
        problems.append("websocket: tls_cert and tls_key go together (both or neither)")
    if ws.incoming_url and not ws.incoming_url.startswith(("ws://", "wss://")):
        problems.append(f"websocket.incoming_url = {ws.incoming_url!r} must start ws:// or wss://")
    if ws.incoming_url and not (ws.enabled and config.ami.enabled):
        problems.append(
            "websocket.incoming_url needs [websocket] enabled = true and [ami] enabled = true "
            "(the connection ids come from AMI)"
        )
    if not 0 <= ws.send_ahead_ms <= 1000:
        problems.append(f"websocket.send_ahead_ms = {ws.send_ahead_ms} must be 0-1000")
    hook = config.webhook
    if hook.url and urlsplit(hook.url).scheme not in ("http", "https"):
        problems.append(f"webhook.url {hook.url!r} must be http:// or https://")
    if hook.timeout_s <= 0 or hook.max_queued < 1 or not all(s > 0 for s in hook.backoff_s):
        problems.append("webhook: timeout_s > 0, max_queued >= 1, backoff_s steps > 0")
    if config.handover.timeout_s <= 0:
        problems.append("handover.timeout_s must be > 0")
    problems.extend(actions_problems(config.actions))
    problems.extend(campaign_problems(config.campaign))
    if config.inference.pool_threads < 1:
        problems.append("inference.pool_threads must be at least 1")
    if config.stt.max_batch < 1:
        problems.append("stt.max_batch must be at least 1")
    if config.stt.batch_wait_ms < 0 or config.stt.short_min_input_s <= 0:
        problems.append("stt.batch_wait_ms must be >= 0 and stt.short_min_input_s > 0")
    for index, rule in enumerate(config.dialogue.rules):
        if not rule.keywords or not rule.reply:
            problems.append(f"dialogue.rules[{index}] needs keywords and a reply")
        if rule.then == "transfer" and not rule.target:
            problems.append(f"dialogue.rules[{index}] transfers but has no target")
    try:
        import ipaddress

        for cidr in config.server.allow:
            ipaddress.ip_network(cidr, strict=False)
    except ValueError as exc:
        problems.append(f"server.allow: {exc}")
    if not config.server.allow and not _is_loopback(config.server.host):
        problems.append(
            f"server.host {config.server.host!r} is not loopback: list the PBX addresses "
            "allowed to connect in server.allow"
        )
    if config.ami.enabled and not 0 < config.ami.port <= 65535:
        problems.append("ami.port out of range")
    names = [p.name for p in config.profiles]
    if any(not n for n in names) or len(set(names)) != len(names):
        problems.append("every [[profiles]] entry needs a unique name")
    ports = [p.port for p in config.profiles if p.port]
    if config.server.port in ports or len(set(ports)) != len(ports):
        problems.append("profile ports must differ from each other and from server.port")
    for profile in config.profiles:
        where = f"profile {profile.name!r}"
        if profile.tts_length_scale < 0 or not 0 <= profile.tts_volume <= 1:
            problems.append(f"{where}: tts_length_scale must be >= 0 and tts_volume in 0..1")
        if profile.rasa_url and not profile.rasa_url.startswith(("http://", "https://")):
            problems.append(f"{where}: rasa_url must be an http(s) URL")
        if profile.rasa_url and profile.dialogue_engine != "rasa":
            problems.append(f"{where}: rasa_url is set but dialogue_engine is not 'rasa'")
    for entry in config.prompts.clips:
        name, sep, path = entry.partition("=")
        if not sep or not name.strip() or not path.strip():
            problems.append(f"prompts.clips entry {entry!r} is not name=path")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def profile_named(config: Config, name: str | None) -> ProfileConfig | None:
    return next((p for p in config.profiles if name and p.name == name), None)
