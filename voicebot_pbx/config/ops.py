"""The sections for running it: the webhook, health, profiles, analytics, logs and the
shared inference pool."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """Post-call webhook (voicebot_pbx.ops.webhook): each finished call's record POSTed as
    JSON to a CRM, signed (HMAC-SHA256 with the secret from ``secret_env``), through a
    durable queue in the state dir, retried with back-off until the CRM takes it. Empty
    ``url``: off (the default: nothing leaves the machine)."""

    url: str = ""
    secret_env: str = "VOICEBOT_WEBHOOK_SECRET"
    timeout_s: float = 5.0
    backoff_s: tuple[float, ...] = (1.0, 2.0, 5.0, 15.0, 60.0, 300.0)
    # Calls kept while the CRM is down; beyond it the oldest are dropped (logged).
    max_queued: int = 100_000


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """HTTP on loopback: /health (liveness), /ready (readiness), /metrics (Prometheus), and
    the calls pages (/calls: voicebot_pbx.ops.web)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9091
    web: bool = True
    # When this variable is set, every calls page needs "Authorization: Bearer <it>" (or
    # ?token=): set it whenever the admin port is reachable from beyond loopback.
    web_token_env: str = "VOICEBOT_WEB_TOKEN"


@dataclass(frozen=True, slots=True)
class ProfileConfig:
    """A bot persona for some calls, chosen by the AudioSocket port the call arrives on
    (``port``: an extra listener) or by the channel variable VOICEBOT_PROFILE that the
    dialplan sets before AudioSocket() (read over AMI). Empty fields keep the defaults."""

    name: str = ""
    port: int = 0
    greeting: str = ""
    greeting_clip: str = ""  # a pre-recorded clip played instead (first word at once)
    transfer_target: str = ""
    # Dialogue: "" the process's [dialogue] engine; "rules"; "rasa": the Rasa server at
    # rasa_url (this profile's own project, run by its own unit; empty: [rasa] url), with
    # the rules answering while it is unreachable.
    dialogue_engine: Literal["", "rules", "rasa"] = ""
    rasa_url: str = ""
    # Voice: a Piper model (empty: [tts] model_path; the same file is loaded once), its
    # config (empty: <model>.json), speaking speed and volume (0: [tts]'s).
    tts_model_path: str = ""
    tts_config_path: str = ""
    tts_length_scale: float = 0.0
    tts_volume: float = 0.0
    # The LLM fallback's knowledge base folder and company name (empty: [llm]'s); the
    # model itself is shared by every profile.
    knowledge_dir: str = ""
    company: str = ""
    # Outbound calls (campaigns): decide human / machine / silence from the first seconds
    # ([amd]) before the greeting (the opening); a machine gets voicemail_message after
    # its beep (empty: just hang up).
    amd: bool = False
    voicemail_message: str = ""

    @property
    def own_voice(self) -> bool:
        return bool(
            self.tts_model_path or self.tts_config_path or self.tts_length_scale or self.tts_volume
        )

    @property
    def own_knowledge(self) -> bool:
        return bool(self.knowledge_dir or self.company)


@dataclass(frozen=True, slots=True)
class AnalyticsConfig:
    backend: Literal["sqlite", "postgres"] = "sqlite"
    sqlite_path: str = ""  # empty: <state_dir>/calls.db
    # Name of the environment variable holding the PostgreSQL DSN (never the DSN itself).
    dsn_env: str = "VOICEBOT_PG_DSN"
    retention_days: int = 0  # 0: keep forever
    redact: bool = True  # caller data masked before anything is stored or logged
    redact_names: tuple[str, ...] = ()
    # Runs of at least this many digits (written or spoken) are redacted.
    redact_min_digits: int = 3
    record_audio: bool = False
    recordings_dir: str = ""  # empty: <state_dir>/recordings
    node: str = ""  # this bot's name in a shared database; empty: the host name

    def __post_init__(self) -> None:
        if self.retention_days < 0:
            raise ValueError("analytics.retention_days must be >= 0")
        if self.redact_min_digits < 1:
            raise ValueError("analytics.redact_min_digits must be >= 1")


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True, slots=True)
class InferenceConfig:
    # Threads for blocking model calls shared by all calls (STT, TTS).
    pool_threads: int = 2
    # Inference threads run this much nicer than the event loop, so a burst of decoding
    # never delays the 20 ms pacing of other calls (Linux; 0 turns it off).
    nice: int = 5
