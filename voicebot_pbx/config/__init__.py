"""Configuration: one TOML file (stdlib ``tomllib``) loaded into frozen dataclasses.

One module per group of sections, each with its dataclasses, defaults and per-section checks:
``speech`` ([vad], [turn], [stt], [tts]), ``pbx`` ([server], [ami], [handover], [websocket],
[freeswitch]), ``dialogue`` ([dialogue], [fallbacks], [rasa], [actions], [prompts]),
``answers`` ([llm], [knowledge]), ``ops`` ([webhook], [health], [[profiles]], [analytics],
[log], [inference]), ``campaign`` ([campaign]); ``load`` holds :class:`Config`, the checks
that span sections and loading (:func:`load_config`, :func:`parse_config`); ``parse`` the
generic conversion (an unknown key or a value of the wrong type is a ``ConfigError`` naming
the key and the file), ``facts`` the business facts that built-in texts name. Every field has
a built-in default, so no file is needed. Secrets never live here: they come from the
environment (see ``secret_env`` fields). Import from ``voicebot_pbx.config``: every public
name of the modules is here.
"""

from __future__ import annotations

from voicebot_pbx.config.answers import (
    DEFAULT_FALLBACK_REPLY,
    DEFAULT_REFUSAL_REPLY,
    KnowledgeConfig,
    LlmConfig,
    LlmEndpointConfig,
    safe_url,
)
from voicebot_pbx.config.campaign import CampaignConfig
from voicebot_pbx.config.dialogue import (
    ActionsConfig,
    DialogueConfig,
    FallbackConfig,
    PromptsConfig,
    RasaConfig,
    RuleConfig,
)
from voicebot_pbx.config.load import Config, load_config, parse_config, profile_named
from voicebot_pbx.config.ops import (
    AnalyticsConfig,
    HealthConfig,
    InferenceConfig,
    LogConfig,
    ProfileConfig,
    WebhookConfig,
)
from voicebot_pbx.config.parse import ConfigError
from voicebot_pbx.config.pbx import (
    AmiConfig,
    FreeswitchConfig,
    HandoverConfig,
    ServerConfig,
    WebSocketConfig,
)
from voicebot_pbx.config.speech import (
    MAX_STT_PROMPT_WORDS,
    TIEBREAK_SILENCE_MS,
    SttConfig,
    TtsConfig,
    TurnConfig,
    VadConfig,
)

__all__ = [
    "ActionsConfig",
    "AmiConfig",
    "AnalyticsConfig",
    "CampaignConfig",
    "Config",
    "ConfigError",
    "DEFAULT_FALLBACK_REPLY",
    "DEFAULT_REFUSAL_REPLY",
    "DialogueConfig",
    "FallbackConfig",
    "FreeswitchConfig",
    "HandoverConfig",
    "HealthConfig",
    "InferenceConfig",
    "KnowledgeConfig",
    "LlmConfig",
    "LlmEndpointConfig",
    "LogConfig",
    "MAX_STT_PROMPT_WORDS",
    "ProfileConfig",
    "PromptsConfig",
    "RasaConfig",
    "RuleConfig",
    "ServerConfig",
    "SttConfig",
    "TIEBREAK_SILENCE_MS",
    "TtsConfig",
    "TurnConfig",
    "VadConfig",
    "WebSocketConfig",
    "WebhookConfig",
    "load_config",
    "parse_config",
    "profile_named",
    "safe_url",
]
