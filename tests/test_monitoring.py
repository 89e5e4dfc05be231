"""The shipped Prometheus alert rules and Grafana dashboard (systemd/monitoring, issue #22):
they parse, and every metric they name is one the bot exports (a renamed metric would
otherwise leave a silent alert and an empty panel)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from voicebot_pbx.ops.analytics import RecorderStats
from voicebot_pbx.ops.metrics import Metrics

MONITORING = Path(__file__).resolve().parent.parent / "systemd" / "monitoring"
_NAME = re.compile(r"\bvoicebot_[a-z_]+")
_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def exported() -> set[str]:
    """Every sample name the bot's registry writes (counters as name_total, histograms as
    name_bucket/_sum/_count), with the call-record collector attached."""
    metrics = Metrics()
    metrics.watch_recorder(lambda: RecorderStats())
    # A labelled metric writes samples only once a label set exists: one of each.
    metrics.transfers.labels("agents").inc()
    metrics.turns.labels("speech", "tts").inc()
    metrics.turn_latency.labels("speech").observe(0.3)
    metrics.stage_latency.labels("stt").observe(0.1)
    metrics.fallbacks.labels("dialogue", "nlu_unavailable").inc()
    metrics.engine_errors.labels("stt", "timeout").inc()
    metrics.admin_refused("busy")
    metrics.queue_wait.labels("stt").observe(0.01)
    text = metrics.render().decode()
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    # a family named without its sample suffix (in prose) counts too
    return names | {n.removesuffix(s) for n in names for s in _SUFFIXES if n.endswith(s)}


def named_in(text: str) -> set[str]:
    return set(_NAME.findall(text))


def test_the_alert_rules_parse_and_name_only_exported_metrics() -> None:
    text = (MONITORING / "prometheus-alerts.yml").read_text()
    rules = yaml.safe_load(text)["groups"][0]["rules"]
    assert {r["alert"] for r in rules} >= {"VoicebotDown", "VoicebotSlowTurns"}
    assert all(r["expr"] and r["annotations"]["summary"] for r in rules)
    have = exported()
    missing = sorted(n for n in named_in(text) if n not in have)
    assert missing == [], f"alert rules name metrics the bot does not export: {missing}"


def test_the_dashboard_is_grafana_json_naming_only_exported_metrics() -> None:
    text = (MONITORING / "grafana-dashboard.json").read_text()
    board = json.loads(text)
    assert board["uid"] == "voicebot-pbx" and len(board["panels"]) >= 8
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    have = exported()
    missing = sorted({n for e in exprs for n in named_in(e)} - have)
    assert missing == [], f"the dashboard names metrics the bot does not export: {missing}"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_the_check_itself_catches_a_renamed_metric() -> None:
    assert "voicebot_turn_latency_seconds_bucket" in exported()
    assert "voicebot_turn_latency_bucket" not in exported()  # a typo would be reported
    assert all(not n.endswith(_SUFFIXES) or n in exported() for n in ["voicebot_calls_total"])
