"""Lifecycle of the Rasa server: train when the project changed, run, supervise, stop.

Rasa 3.6 needs Python < 3.11, so it lives in its own venv (``scripts/install-rasa``) and runs
as a child process that ``voicebot_pbx.answers.rasa.RasaDialogue`` talks to over loopback HTTP.

* ``ensure_trained()`` hashes the project (config, domain, data, pins) and trains only when
  no model of that hash exists under ``models_dir`` (``model-<hash>.tar.gz``): a second call
  is a no-op. Concurrent trainers are serialised with a lock file.
* ``await start()`` runs ``rasa run --enable-api`` in its own process group (log file under
  ``work_dir/logs``), polls ``GET /status`` until the model is loaded and logs the startup
  seconds; a supervisor task restarts the server with back-off if it dies.
* ``await stop()``: SIGTERM to the process group, SIGKILL after ``stop_timeout_s``.
* With ``redis_url`` the manager writes an endpoints file with a Redis tracker store and lock
  store (conversations survive a restart and can be shared by several Rasa processes).

``python -m voicebot_pbx.answers.rasa_server train|exec`` is the same for systemd (see
``systemd/voicebot-rasa.service``): ``exec`` replaces itself with the Rasa server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import structlog

from voicebot_pbx.answers.supervised import (
    SupervisedChild,
    SupervisedServer,
    log_tail,
    wait_for_http,
)
from voicebot_pbx.facts import FactsError, load_facts, render

__all__ = [
    "RASA_ENV",
    "RasaServer",
    "RasaServerError",
    "TrainedModel",
    "default_rasa_venv",
    "project_hash",
    "redis_endpoints",
]

log = structlog.get_logger(__name__)

# Always set for every Rasa process (train and run). Telemetry off is not negotiable.
RASA_ENV: Mapping[str, str] = {
    "RASA_TELEMETRY_ENABLED": "false",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "SQLALCHEMY_SILENCE_UBER_WARNING": "1",
    "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::UserWarning",
    "RASA_MAX_CACHE_SIZE": "0",  # no training cache: the model is keyed by project hash
    "PYTHONUNBUFFERED": "1",
}

# Importing skops.io before Rasa halves the server start (~21 s -> ~11 s measured).
_LAUNCHER = "import skops.io; from rasa.__main__ import main; main()"

# Files of the project that define the model; everything else (README, tests) is ignored.
_HASHED_GLOBS = (
    "config.yml",
    "domain.yml",
    "domain/**/*.yml",
    "data/**/*.yml",
    "data/**/*.yaml",
    "requirements.txt",
    "constraints.txt",
)
_KEEP_MODELS = 3
_REPO = Path(__file__).resolve().parents[2]


class RasaServerError(RuntimeError):
    """Training or starting the Rasa server failed."""


@dataclass(frozen=True, slots=True)
class TrainedModel:
    """Result of ``ensure_trained``: the model for the current project files."""

    path: Path
    project_hash: str
    trained: bool  # False when the model already existed
    train_s: float


def default_rasa_venv(repo_dir: Path | None = None) -> Path:
    """``${VOICEBOT_CACHE:-<repo>/.cache}/rasa-venv``, as created by ``scripts/install-rasa``."""
    cache = os.environ.get("VOICEBOT_CACHE")
    if cache:
        return Path(cache) / "rasa-venv"
    base = repo_dir if repo_dir is not None else Path(__file__).resolve().parents[2]
    return base / ".cache" / "rasa-venv"


def project_hash(project_dir: Path, facts: Mapping[str, str] | None = None) -> str:
    """sha256 over the relative paths and contents of the files that define the model, and
    the business facts its responses are rendered with."""
    files: set[Path] = set()
    for pattern in _HASHED_GLOBS:
        files.update(p for p in project_dir.glob(pattern) if p.is_file())
    if not (project_dir / "config.yml").is_file():
        raise RasaServerError(f"no config.yml in Rasa project {project_dir}")
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.relative_to(project_dir).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    for name, value in sorted((facts or {}).items()):
        digest.update(f"fact:{name}={value}".encode())
        digest.update(b"\0")
    return digest.hexdigest()


def redis_endpoints(
    redis_url: str, *, key_prefix: str = "voicebot", record_exp_s: int | None = None
) -> dict[str, Any]:
    """Rasa endpoints (tracker store + lock store) for ``redis[s]://[user:pw@]host[:port][/db]``."""
    parts = urlsplit(redis_url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(f"not a redis:// URL: {redis_url!r}")
    if not key_prefix.isalnum():
        raise ValueError("Rasa ignores non-alphanumeric Redis key prefixes")
    db_text = parts.path.lstrip("/")
    common: dict[str, Any] = {
        "type": "redis",
        "url": parts.hostname,
        "port": parts.port or 6379,
        "db": int(db_text) if db_text else 0,
        "key_prefix": key_prefix,
        "use_ssl": parts.scheme == "rediss",
    }
    if parts.username:
        common["username"] = unquote(parts.username)
    if parts.password:
        common["password"] = unquote(parts.password)
    tracker = dict(common)
    if record_exp_s is not None:
        tracker["record_exp"] = int(record_exp_s)  # redis-py wants an int (a float fails saves)
    return {"tracker_store": tracker, "lock_store": dict(common)}


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class RasaServer(SupervisedServer):
    """Trains (if needed), runs and supervises one ``rasa run`` process."""

    def __init__(
        self,
        project_dir: Path,
        venv_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 5005,
        models_dir: Path,
        endpoints_path: Path | None = None,
        startup_timeout_s: float = 120.0,
        env_extra: Mapping[str, str] | None = None,
        redis_url: str | None = None,
        redis_record_exp_s: int | None = 86400,
        work_dir: Path | None = None,
        auth_token: str | None = None,
        preload_skops: bool = True,
        stop_timeout_s: float = 10.0,
        train_timeout_s: float = 900.0,
        restart_backoff_s: Sequence[float] = (1.0, 2.0, 5.0, 10.0, 30.0),
        stable_after_s: float = 60.0,
        facts: Mapping[str, str] | None = None,
        action_url: str | None = None,
    ) -> None:
        if redis_url is not None and endpoints_path is not None:
            raise ValueError("give either redis_url or endpoints_path, not both")
        # absolute: Rasa runs with cwd=work_dir
        self.project_dir = project_dir.absolute()
        self.venv_dir = venv_dir.absolute()
        self.host = host
        self.port = port
        self.models_dir = models_dir.absolute()
        self.work_dir = (work_dir if work_dir is not None else models_dir.parent).absolute()
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.train_timeout_s = train_timeout_s
        self.restart_backoff_s = tuple(restart_backoff_s) or (1.0,)
        self.stable_after_s = stable_after_s
        self.auth_token = auth_token
        self.preload_skops = preload_skops
        self._env_extra = dict(env_extra or {})
        # Business facts ({{name}} in domain.yml's responses; voicebot_pbx.facts); None:
        # the repository's knowledge/facts.toml.
        self.facts = dict(facts if facts is not None else load_facts(_REPO / "knowledge"))
        self._redis_url = redis_url
        # The action server's webhook (``action_server.ActionServer.webhook_url``).
        self.action_url = action_url
        self._redis_record_exp_s = redis_record_exp_s
        self._endpoints_path = endpoints_path.absolute() if endpoints_path is not None else None
        self._model: TrainedModel | None = None
        self._child = SupervisedChild(
            event_prefix="rasa_server",
            host=host,
            port=port,
            argv=self._current_run_argv,
            env=self.env,
            cwd=self.work_dir,
            log_path=self.log_path,
            probe=self._probe,
            startup_timeout_s=startup_timeout_s,
            stop_timeout_s=stop_timeout_s,
            restart_backoff_s=self.restart_backoff_s,
            stable_after_s=stable_after_s,
            error=RasaServerError,
            pid_path=self.work_dir / f"rasa-{port}.pid",
            orphan_marks=("rasa", "--enable-api", f"--port {port}"),
        )

    # -- paths and commands ----------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def python(self) -> Path:
        return self.venv_dir / "bin" / "python"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "logs" / f"rasa-{self.port}.log"

    @property
    def model(self) -> TrainedModel | None:
        return self._model

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(RASA_ENV)
        env["RASA_CACHE_DIRECTORY"] = str(self.work_dir / "rasa-train-cache")
        env.update(self._env_extra)
        env["RASA_TELEMETRY_ENABLED"] = "false"
        return env

    def _rasa_argv(self, *args: str) -> list[str]:
        if self.preload_skops:
            return [str(self.python), "-c", _LAUNCHER, *args]
        return [str(self.venv_dir / "bin" / "rasa"), *args]

    async def stop(self) -> None:
        """Stop the server; the endpoints file written for it (it may hold the Redis
        password) goes with it."""
        await super().stop()
        if self._endpoints_path is None:
            (self.work_dir / f"endpoints-{self.port}.yml").unlink(missing_ok=True)

    def endpoints_file(self) -> Path | None:
        """The endpoints file the server runs with: written here when Redis or an action
        server is configured, else the given file or the project's endpoints.yml."""
        if self._endpoints_path is not None:
            return self._endpoints_path
        data: dict[str, Any] = {}
        if self._redis_url is not None:
            data.update(redis_endpoints(self._redis_url, record_exp_s=self._redis_record_exp_s))
        if self.action_url is not None:
            data["action_endpoint"] = {"url": self.action_url}
        if data:
            path = self.work_dir / f"endpoints-{self.port}.yml"
            path.parent.mkdir(parents=True, exist_ok=True)
            # JSON is YAML: no YAML library needed, and no quoting mistakes.
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=2) + "\n")
            tmp.chmod(0o600)  # may hold the Redis password
            tmp.replace(path)
            return path
        default = self.project_dir / "endpoints.yml"
        return default if default.is_file() else None

    def run_argv(self, model_path: Path) -> list[str]:
        argv = self._rasa_argv(
            "run",
            "--enable-api",
            "--model",
            str(model_path),
            "--interface",
            self.host,
            "--port",
            str(self.port),
            "--credentials",
            str(self.project_dir / "credentials.yml"),
        )
        endpoints = self.endpoints_file()
        if endpoints is not None:
            argv += ["--endpoints", str(endpoints)]
        if self.auth_token:
            argv += ["--auth-token", self.auth_token]
        return argv

    def _check_venv(self) -> None:
        if not self.python.exists():
            raise RasaServerError(
                f"Rasa venv missing at {self.venv_dir}: run scripts/install-rasa first"
            )

    # -- training --------------------------------------------------------------------------

    def ensure_trained(self) -> TrainedModel:
        """Train when no model exists for the current project hash (blocking; ~25 s).

        Call it from async code with ``await asyncio.to_thread(server.ensure_trained)``.
        """
        digest = project_hash(self.project_dir, self.facts)
        name = f"model-{digest[:16]}"
        target = self.models_dir / f"{name}.tar.gz"
        if target.is_file():
            self._model = TrainedModel(target, digest, trained=False, train_s=0.0)
            log.info("rasa_server.model_up_to_date", model=str(target))
            return self._model
        self._check_venv()
        self.models_dir.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.models_dir / ".train.lock"):
            if target.is_file():  # another process trained it while we waited
                self._model = TrainedModel(target, digest, trained=False, train_s=0.0)
                return self._model
            tmp_name = f"tmp-{name}-{os.getpid()}"
            log_path = self.work_dir / "logs" / "rasa-train.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            domain = self._rendered_domain(tmp_name)
            argv = self._rasa_argv(
                "train",
                "--config",
                str(self.project_dir / "config.yml"),
                "--domain",
                str(domain),
                "--data",
                str(self.project_dir / "data"),
                "--out",
                str(self.models_dir),
                "--fixed-model-name",
                tmp_name,
            )
            log.info("rasa_server.training", project=str(self.project_dir), hash=digest[:16])
            t0 = time.monotonic()
            with log_path.open("ab") as out:
                try:
                    proc = subprocess.run(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=self.env(),
                        cwd=self.work_dir,
                        timeout=self.train_timeout_s,
                        check=False,
                    )
                except subprocess.TimeoutExpired as exc:
                    raise RasaServerError(
                        f"rasa train took more than {self.train_timeout_s:.0f} s"
                    ) from exc
            train_s = time.monotonic() - t0
            produced = self.models_dir / f"{tmp_name}.tar.gz"
            if proc.returncode != 0 or not produced.is_file():
                produced.unlink(missing_ok=True)
                raise RasaServerError(
                    f"rasa train failed (exit {proc.returncode}); log {log_path}:\n"
                    + log_tail(log_path)
                )
            produced.replace(target)
            self._prune_models(keep=target)
            log.info("rasa_server.trained", model=str(target), train_s=round(train_s, 2))
            self._model = TrainedModel(target, digest, trained=True, train_s=train_s)
            return self._model

    def _rendered_domain(self, name: str) -> Path:
        """domain.yml with the business facts filled in (``{{name}}``), written under the
        work dir for ``rasa train`` (the project folder stays as the admin wrote it)."""
        source = self.project_dir / "domain.yml"
        try:
            text = render(source.read_text(encoding="utf-8"), self.facts, where=str(source))
        except (OSError, FactsError) as exc:
            raise RasaServerError(str(exc)) from exc
        target = self.work_dir / "rasa-build" / f"{name}-domain.yml"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        return target

    def _prune_models(self, keep: Path) -> None:
        models = sorted(
            (p for p in self.models_dir.glob("model-*.tar.gz") if p != keep),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for old in models[_KEEP_MODELS - 1 :]:
            old.unlink(missing_ok=True)

    # -- running ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the server (training first if needed) and return once it answers."""
        if self._child.running:
            return
        self._check_venv()
        if self._model is None or not self._model.path.is_file():
            await asyncio.to_thread(self.ensure_trained)
        await self._child.start()

    def _current_run_argv(self) -> list[str]:
        model = self._model
        assert model is not None
        log.info("rasa_server.model", model=model.path.name)
        return self.run_argv(model.path)

    async def _probe(self, client: httpx.AsyncClient) -> bool:
        params = {"token": self.auth_token} if self.auth_token else None
        resp = await client.get(f"{self.base_url}/status", params=params)
        return resp.status_code == 200 and bool(resp.json().get("model_file"))


# -- command line (systemd) ----------------------------------------------------------------


def wait_until_ready(host: str, port: int, timeout_s: float, poll_s: float = 0.5) -> int:
    """0 once ``GET /`` of the Rasa server answers 200 ("Hello from Rasa"), 1 after
    ``timeout_s`` (``ExecStartPost=`` of the Rasa units)."""
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    return wait_for_http(url, timeout_s, event_prefix="rasa_server", poll_s=poll_s)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    repo = _REPO
    p = argparse.ArgumentParser(prog="python -m voicebot_pbx.answers.rasa_server")
    p.add_argument(
        "command",
        choices=("train", "exec", "wait"),
        help="train if needed / train + exec / wait until the server at --host:--port answers",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="wait: give up after (s)")
    p.add_argument("--project", type=Path, default=repo / "rasa_project")
    p.add_argument("--venv", type=Path, default=default_rasa_venv(repo))
    p.add_argument("--models-dir", type=Path, default=None, help="train/exec: required")
    p.add_argument("--work-dir", type=Path, default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5005)
    p.add_argument("--redis-url", default=os.environ.get("VOICEBOT_RASA_REDIS_URL") or None)
    p.add_argument("--endpoints", type=Path, default=None)
    p.add_argument(
        "--knowledge", type=Path, default=repo / "knowledge", help="folder of facts.toml"
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.command == "wait":
        return wait_until_ready(args.host, args.port, args.timeout)
    if args.models_dir is None:
        log.error("rasa_server.usage", error="--models-dir is required for train and exec")
        return 2
    try:
        facts = load_facts(args.knowledge)
    except FactsError as exc:
        log.error("rasa_server.train_failed", error=str(exc))
        return 1
    server = RasaServer(
        args.project,
        args.venv,
        host=args.host,
        port=args.port,
        models_dir=args.models_dir,
        work_dir=args.work_dir,
        endpoints_path=args.endpoints,
        redis_url=args.redis_url,
        auth_token=os.environ.get("VOICEBOT_RASA_TOKEN") or None,
        facts=facts,
    )
    try:
        model = server.ensure_trained()
    except RasaServerError as exc:
        log.error("rasa_server.train_failed", error=str(exc))
        return 1
    if args.command == "train":
        sys.stdout.write(f"{model.path}\n")
        return 0
    argv_run = server.run_argv(model.path)
    sys.stdout.flush()
    sys.stderr.flush()
    if server.work_dir.is_dir():
        os.chdir(server.work_dir)
    os.execve(argv_run[0], argv_run, server.env())  # systemd supervises the real process


if __name__ == "__main__":
    raise SystemExit(main())
