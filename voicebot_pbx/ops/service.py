"""Composition root: load models once, build the shared pieces, serve calls, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import itertools
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol
from urllib.parse import urlsplit

import structlog

from voicebot_pbx.answers import factory
from voicebot_pbx.answers.action_server import ActionServer
from voicebot_pbx.answers.dialogue import Dialogue, RuleDialogue
from voicebot_pbx.answers.knowledge import KnowledgeBase, knowledge_problems
from voicebot_pbx.answers.llm import LlmAnswerer, load_llm
from voicebot_pbx.answers.rasa import DialogueUnavailable, RasaDialogue
from voicebot_pbx.answers.rasa_examples import RasaExamplesError, load_intent_examples
from voicebot_pbx.answers.rasa_server import RasaServer, default_rasa_venv
from voicebot_pbx.answers.routing import confirm_questions, spoken_sentences
from voicebot_pbx.answers.supervised import ChildError
from voicebot_pbx.call.prompts import ClipLibrary, TtsCache, clip_paths
from voicebot_pbx.call.session import Shared, make_handler
from voicebot_pbx.config import Config
from voicebot_pbx.facts import FactsError, load_facts
from voicebot_pbx.ops import sdnotify
from voicebot_pbx.ops.analytics import AnalyticsRecorder, open_recorder
from voicebot_pbx.ops.health import HealthServer, readiness_report
from voicebot_pbx.ops.metrics import MetricsRecorder, default_metrics, render_text
from voicebot_pbx.ops.profiles import build_profile_kits
from voicebot_pbx.ops.records import Recorder
from voicebot_pbx.ops.redaction import Redactor
from voicebot_pbx.ops.web import CallsWeb
from voicebot_pbx.ops.webhook import WebhookRecorder, WebhookSender
from voicebot_pbx.ops.webhook_outbox import Outbox
from voicebot_pbx.pbx.ami import AmiClient
from voicebot_pbx.pbx.audiosocket import AudioSocketServer
from voicebot_pbx.pbx.media import DtmfIn
from voicebot_pbx.speech.engines import Engines, load_engines
from voicebot_pbx.speech.stt_split import vocabulary_words

if TYPE_CHECKING:
    from voicebot_pbx.pbx.freeswitch import FreeswitchServer

log = structlog.get_logger("voicebot_pbx.ops.service")

WARM_RATES_HZ = (8000, 16000)


def build_dialogue(config: Config) -> tuple[Dialogue, list[str]]:
    """The configured brain and the fixed texts it can say (to warm the TTS cache)."""
    rules = RuleDialogue.from_config(config.dialogue)
    return rules, rules.static_texts() + fallback_texts(config)


def fallback_texts(config: Config) -> list[str]:
    """What the fallback paths say: cached at start-up so they play even if TTS fails."""
    f = config.fallbacks
    texts = [f.still_there, f.no_input_goodbye, f.clarify, f.apology, f.wrap_up]
    texts.append(f.give_up_transfer if f.give_up_target else f.give_up_goodbye)
    texts.append(config.dialogue.hold_reply)
    if config.ami.enabled:  # campaign calls' "stop calling me" replies
        texts += [config.campaign.opt_out_reply, config.campaign.opt_out_failed_reply]
    return [t for t in texts if t]


class _Voice(Protocol):
    def synthesize_all(self, text: str, rate_hz: int) -> bytes: ...


def warm_tts_cache(voice: _Voice, cache: TtsCache, texts: Sequence[str]) -> int:
    """Synthesize every static text in ``voice`` at every call rate not yet cached.
    Blocking."""
    made = 0
    for text in dict.fromkeys(texts):
        for rate_hz in WARM_RATES_HZ:
            if cache.get(text, rate_hz) is None:
                cache.put(text, rate_hz, voice.synthesize_all(text, rate_hz))
                made += 1
    return made


async def warm_knowledge_answers(shared: Shared) -> None:
    """Synthesize every sentence a knowledge answer can say into the TTS cache after
    start-up, one sentence at a time in the shared inference pool (calls' own jobs queue
    between them; ~10 s of one core per call rate on first start, the cache on disk makes
    later starts instant). A sentence asked for before it is cached is synthesized as any
    reply is; a failure is logged, not fatal."""
    llm = shared.llm
    if llm is None or not shared.config.knowledge.direct:
        return
    knowledge = shared.config.knowledge
    texts = spoken_sentences(llm.kb, knowledge.max_words)
    texts += [
        *confirm_questions(llm.kb, knowledge),
        knowledge.offer_accepted_reply,
        knowledge.answer_reprompt,
        knowledge.answer_reask,
        knowledge.answer_give_up,
    ]
    started = time.perf_counter()
    made = 0
    try:
        for text in dict.fromkeys(texts):
            job = functools.partial(warm_tts_cache, shared.engines.tts, shared.tts_cache, [text])
            made += await shared.engines.run("tts_warm", 30.0, job)
    except Exception as exc:
        log.error("knowledge_answers_not_cached", error=f"{type(exc).__name__}: {exc}")
        return
    log.info(
        "knowledge_answers_cached",
        sentences=len(texts),
        new=made,
        duration_s=round(time.perf_counter() - started, 2),
    )


def warm_stt(engines: Engines) -> None:
    """One decode so the first caller does not pay for lazy initialisation."""
    stream = engines.stt.new_stream(8000)
    stream.accept(bytes(16000))
    stream.finish()
    stream.close()


def add_intent_examples(kb: KnowledgeBase, config: Config) -> None:
    """Embed the Rasa project's examples of every intent the router may overrule (not the
    ``keep_intents``), so a knowledge question is told from a task request by closeness
    (``voicebot_pbx.answers.routing``); every intent's examples' words are the deployment's
    words (``KnowledgeBase.add_known_words``). A project that cannot be read leaves the router on
    its topic rule, with one ``intent_examples_unavailable`` line."""
    try:
        examples = load_intent_examples(config.rasa.project_dir)
    except RasaExamplesError as exc:
        log.warning("intent_examples_unavailable", error=str(exc))
        return
    keep = set(config.knowledge.keep_intents)
    kb.add_known_words(text for texts in examples.values() for text in texts)
    count = kb.add_intent_examples({k: v for k, v in examples.items() if k not in keep})
    log.info("intent_examples_embedded", examples=count)


async def load_llm_or_none(config: Config) -> LlmAnswerer | None:
    """The LLM fallback, loaded and warmed (its fixed prompt evaluated); None when it is
    disabled or cannot load (logged: the bot then answers with the rule/Rasa reprompt)."""
    if not config.llm.enabled:
        return None
    for problem in knowledge_problems(config.llm.knowledge_dir):
        log.warning("knowledge_problem", problem=problem)
    started = time.perf_counter()
    try:
        llm = await asyncio.to_thread(load_llm, config.llm, config.knowledge)
        await llm.warm()
        if llm.kb.hybrid and config.dialogue.engine == "rasa":
            await asyncio.to_thread(add_intent_examples, llm.kb, config)
    except Exception as exc:
        log.error("llm_unavailable", error=f"{type(exc).__name__}: {exc}")
        return None
    log.info(
        "llm_ready",
        engine=config.llm.engine,
        passages=len(llm.kb.passages),
        retrieval="hybrid" if llm.kb.hybrid else "bm25",
        load_s=round(time.perf_counter() - started, 2),
    )
    return llm


def freeze_startup_heap() -> int:
    """Move every object alive after start-up (modules, the engines' Python side, caches)
    to the collector's permanent generation; returns how many are frozen.

    A full collection walked them all and held the event loop ~33 ms (measured after the
    default engines load), a stall that delayed the next frame of every call at once (one
    per 16-call benchmark run, frame gaps up to ~50 ms). Frozen objects are still freed by
    reference counting; objects made later, calls included, are collected as before."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def open_webhook(config: Config) -> WebhookSender | None:
    """The post-call webhook's sender over its durable queue in the state dir (None: no
    ``[webhook] url``). Calls queued before a restart are delivered after it."""
    hook = config.webhook
    if not hook.url:
        return None
    secret = os.environ.get(hook.secret_env, "").encode() or None
    if secret is None:
        log.warning("webhook_unsigned", reason=f"${hook.secret_env} is not set")
    outbox = Outbox(Path(config.state_dir) / "webhook-outbox.sqlite", max_rows=hook.max_queued)
    parts = urlsplit(hook.url)
    log.info("webhook_enabled", host=parts.hostname, path=parts.path, queued=outbox.pending())
    return WebhookSender(
        outbox, hook.url, secret=secret, timeout_s=hook.timeout_s, backoff_s=hook.backoff_s
    )


def stt_vocabulary(config: Config, kb: KnowledgeBase | None) -> frozenset[str]:
    """The words the deployment's callers are expected to use, for the speech recognition's
    second opinion (``speech/stt_split.py``): the Rasa project's training examples, the
    knowledge files (``kb``, the loaded knowledge base) and the rule dialogue's keywords. A part
    that cannot be read is left out (its own load reports it)."""
    texts: list[str] = [kw for rule in config.dialogue.rules for kw in rule.keywords]
    with contextlib.suppress(RasaExamplesError):
        for examples in load_intent_examples(config.rasa.project_dir).values():
            texts.extend(examples)
    if kb is not None:
        texts.extend(f"{p.question} {p.text} {p.keywords}" for p in kb.passages)
    return vocabulary_words(texts)


async def share_vocabulary(engines: Engines, config: Config, kb: KnowledgeBase | None) -> None:
    """``[stt] second_opinion``: the deployment's words (:func:`stt_vocabulary`) to a speech
    recogniser that weighs its transcripts by them (``SttCapabilities.vocabulary``)."""
    user = engines.stt.capabilities.vocabulary
    if user is None or not config.stt.second_opinion:
        return
    words = await asyncio.to_thread(stt_vocabulary, config, kb)
    user.use_vocabulary(words)
    log.info("stt_vocabulary", words=len(words))


async def build_shared(config: Config, webhook: WebhookSender | None = None) -> Shared:
    started = time.perf_counter()
    engines = await asyncio.to_thread(load_engines, config)
    engines.timer = default_metrics()
    dialogue, texts = build_dialogue(config)
    state_dir = Path(config.state_dir)
    cache_dir = Path(config.tts.cache_dir) if config.tts.cache_dir else state_dir / "tts-cache"
    cache = TtsCache(engines.tts.voice_id, cache_dir)
    llm = await load_llm_or_none(config)
    if llm is not None:
        texts = texts + list(llm.fixed_replies())
    await share_vocabulary(engines, config, llm.kb if llm is not None else None)
    clips = ClipLibrary(clip_paths(config.prompts.dir, config.prompts.clips))
    for problem in clips.problems:
        log.warning("clip_unusable", problem=problem)
    kits = await asyncio.to_thread(build_profile_kits, config, engines.tts, llm, cache_dir, texts)
    # Profiles speaking with the default voice: their greetings in the default cache.
    own_voice = {name for name, kit in kits.items() if kit.tts is not None}
    texts = texts + [p.greeting for p in config.profiles if p.greeting and p.name not in own_voice]
    texts += [p.voicemail_message for p in config.profiles if p.voicemail_message]
    made = await asyncio.to_thread(warm_tts_cache, engines.tts, cache, texts)
    for kit in kits.values():
        if kit.tts is not None and kit.tts_cache is not None:
            made += await asyncio.to_thread(warm_tts_cache, kit.tts, kit.tts_cache, kit.texts)
    await asyncio.to_thread(warm_stt, engines)
    log.info(
        "ready_to_serve",
        startup_s=round(time.perf_counter() - started, 2),
        tts_cache_new=made,
        tts_cache_texts=len(texts),
    )
    return Shared(
        config=config,
        engines=engines,
        dialogue=dialogue,
        tts_cache=cache,
        clips=clips,
        llm=llm,
        profiles=kits,
        recorder=_recorder(config, webhook),
    )


def _recorder(config: Config, webhook: WebhookSender | None) -> Recorder:
    """Metrics + the analytics store, and the webhook's queue around them when set."""
    stored = MetricsRecorder(default_metrics(), open_recorder(config.analytics, config.state_dir))
    if webhook is None:
        return stored
    return WebhookRecorder(stored, webhook.outbox, webhook, Redactor.from_config(config.analytics))


def _rasa_venv(config: Config) -> Path:
    """The Rasa venv (the action server runs in it too)."""
    return Path(config.rasa.venv_dir) if config.rasa.venv_dir else default_rasa_venv()


def rasa_server_for(config: Config) -> RasaServer:
    """The managed Rasa server described by the config (not started)."""
    url = urlsplit(config.rasa.url)
    venv = _rasa_venv(config)
    # systemd's CacheDirectory= (writable under ProtectSystem=strict) before the install's
    # cache folder, which a production unit mounts read-only.
    systemd_cache = os.environ.get("CACHE_DIRECTORY", "").split(":")[0]
    cache = Path(systemd_cache or os.environ.get("VOICEBOT_CACHE") or Path(config.state_dir).parent)
    redis_url = os.environ.get(config.rasa.redis_url_env) or None
    return RasaServer(
        Path(config.rasa.project_dir),
        venv,
        host=url.hostname or "127.0.0.1",
        port=url.port or 5005,
        models_dir=cache / "rasa-models",
        redis_url=redis_url,
        facts=_facts_or_none(config),
        action_url=f"{config.actions.url.rstrip('/')}/webhook" if config.actions.enabled else None,
    )


def action_server_for(config: Config) -> ActionServer | None:
    """The managed action server (not started), when ``[actions]`` is enabled."""
    if not config.actions.enabled:
        return None
    venv = _rasa_venv(config)
    return ActionServer(
        config.actions,
        state_dir=config.state_dir,
        venv_dir=venv,
        project_dir=Path(config.rasa.project_dir),
    )


def _facts_or_none(config: Config) -> dict[str, str]:
    """The business facts for the Rasa domain; a broken facts.toml is one log line (Rasa
    then fails to train with the fact it lacks named, and the rules answer)."""
    try:
        return load_facts(config.llm.knowledge_dir)
    except FactsError as exc:
        log.error("facts_unreadable", reason=str(exc))
        return {}


VoiceCache = tuple["_Voice", TtsCache]


def voices_for(shared: Shared, profile: str | None) -> list[VoiceCache]:
    """The (voice, cache) pairs a dialogue's static responses are said in: for the default
    dialogue (``profile`` None) the default voice and every profile voice of a profile
    without its own dialogue; for a profile's own dialogue, that profile's voice."""
    default: VoiceCache = (shared.engines.tts, shared.tts_cache)
    kits = shared.profiles
    if profile is not None:
        kit = kits.get(profile)
        if kit is not None and kit.tts is not None and kit.tts_cache is not None:
            return [(kit.tts, kit.tts_cache)]
        return [default]
    pairs = [default]
    for kit in kits.values():
        if kit.dialogue is None and kit.tts is not None and kit.tts_cache is not None:
            pairs.append((kit.tts, kit.tts_cache))
    return pairs


async def start_rasa(
    voices: Sequence[VoiceCache],
    server: RasaServer | None,
    rasa: RasaDialogue,
    *,
    wait_s: float = 0.0,
    actions: ActionServer | None = None,
) -> None:
    """Start the managed action server and train/start the managed Rasa server (if any),
    then pre-synthesize Rasa's static responses in each voice. Calls are served by the rule
    dialogue until Rasa answers. ``wait_s`` > 0: an unmanaged server is polled this often
    until it answers."""
    started = time.perf_counter()
    if actions is not None:
        try:
            await actions.start()
        except (ChildError, OSError) as exc:  # Rasa still answers all but the lookups
            log.error("actions_unavailable", url=actions.base_url, error=str(exc)[:500])
    if server is not None:
        await asyncio.to_thread(server.ensure_trained)
        await server.start()
    while wait_s > 0:
        try:
            await rasa.ping()
            break
        except DialogueUnavailable:
            await asyncio.sleep(wait_s)
    texts = await rasa.static_responses()
    made = 0
    for voice, cache in voices:
        made += await asyncio.to_thread(warm_tts_cache, voice, cache, texts)
    log.info(
        "rasa_ready",
        url=rasa.base_url,
        ready_s=round(time.perf_counter() - started, 2),
        responses=len(texts),
        tts_cache_new=made,
    )


async def _start_rasa_logged(
    voices: Sequence[VoiceCache],
    server: RasaServer | None,
    rasa: RasaDialogue,
    *,
    wait_s: float = 0.0,
    actions: ActionServer | None = None,
    retry_s: Sequence[float] = (5.0, 10.0, 30.0, 60.0),
) -> None:
    """``start_rasa`` until it succeeds: the rules answer meanwhile, and a start that failed
    (port held, venv broken, a training error) is tried again with back-off, logged."""
    for attempt in itertools.count():
        try:
            await start_rasa(voices, server, rasa, wait_s=wait_s, actions=actions)
            return
        except Exception as exc:  # the bot keeps serving on the rule dialogue
            delay_s = retry_s[min(attempt, len(retry_s) - 1)]
            log.error(
                "rasa_unavailable",
                url=rasa.base_url,
                error=f"{type(exc).__name__}: {exc}"[:500],
                retry_in_s=delay_s,
            )
            await asyncio.sleep(delay_s)


class CallServer(Protocol):
    """What the service needs of a transport's server (AudioSocket, FreeSWITCH)."""

    @property
    def calls(self) -> Mapping[str, object]: ...

    async def start(self) -> None: ...

    async def stop_accepting(self) -> None: ...

    async def wait_idle(self) -> None: ...

    async def close(self, grace_s: float = ..., reason: str = ...) -> None: ...


class RoutedControl:
    """Call control for a process serving several PBXs: a FreeSWITCH call is controlled over
    its own Event Socket, an Asterisk call over AMI."""

    def __init__(self, freeswitch: FreeswitchServer | None, ami: AmiClient | None) -> None:
        self.freeswitch = freeswitch
        self.ami = ami

    async def transfer(self, call_id: str, target: str) -> bool:
        if self.freeswitch is not None and call_id in self.freeswitch.calls:
            return await self.freeswitch.transfer(call_id, target)
        if self.ami is not None:
            return await self.ami.transfer(call_id, target)
        return False

    async def set_vars(self, call_id: str, variables: Mapping[str, str]) -> bool:
        if self.freeswitch is not None and call_id in self.freeswitch.calls:
            return await self.freeswitch.set_vars(call_id, variables)
        if self.ami is not None:
            return await self.ami.set_vars(call_id, variables)
        return False

    async def get_var(self, call_id: str, name: str) -> str | None:
        if self.freeswitch is not None and call_id in self.freeswitch.calls:
            return await self.freeswitch.get_var(call_id, name)
        if self.ami is not None:
            return await self.ami.get_var(call_id, name)
        return None


@dataclass(slots=True)
class _State:
    models_loaded: bool = False
    draining: bool = False
    servers: list[CallServer] = field(default_factory=list)
    rasa: RasaDialogue | None = None
    rasa_ok: bool = False
    # The managed children, when the bot runs them: Rasa is "ok" only while its own server is.
    rasa_server: RasaServer | None = None
    actions: ActionServer | None = None
    ami: AmiClient | None = None
    # Profiles with their own Rasa server: name -> reachable.
    profile_rasa_ok: dict[str, bool] = field(default_factory=dict)
    knowledge: Literal["ok", "unavailable", "disabled"] = "disabled"

    def active_calls(self) -> int:
        return sum(len(server.calls) for server in self.servers)

    def _rasa_ok(self) -> bool:
        """Reachable, and (when the bot runs it) answered by its own child, not by a
        stranger on the port."""
        return self.rasa_ok and (self.rasa_server is None or self.rasa_server.ready)

    def readiness(self) -> dict[str, object]:
        return readiness_report(
            models_loaded=self.models_loaded,
            draining=self.draining,
            rasa="disabled" if self.rasa is None else ("ok" if self._rasa_ok() else "degraded"),
            actions="disabled"
            if self.actions is None
            else ("ok" if self.actions.ready else "degraded"),
            ami="disabled"
            if self.ami is None
            else ("connected" if self.ami.connected else "disconnected"),
            active_calls=self.active_calls(),
            profiles={
                name: "ok" if ok else "degraded" for name, ok in self.profile_rasa_ok.items()
            },
            knowledge=self.knowledge,
        )


async def _watch_rasa(state: _State, rasa: RasaDialogue, profile: str | None = None) -> None:
    """Keep the readiness report's Rasa field (or the profile's) current."""
    while True:
        try:
            await rasa.ping()
            ok = True
        except DialogueUnavailable:
            ok = False
        if profile is None:
            state.rasa_ok = ok
        else:
            state.profile_rasa_ok[profile] = ok
        await asyncio.sleep(5.0)


async def drain(servers: Sequence[CallServer], drain_s: float) -> None:
    """Stop accepting; give calls in progress up to ``drain_s`` to finish, then send each
    remaining call 0x00 (its dialplan continues, e.g. to the agent queue)."""
    for server in servers:
        await server.stop_accepting()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(drain_s):
            await asyncio.gather(*(server.wait_idle() for server in servers))
    remaining = sum(len(server.calls) for server in servers)
    log.info("drain_done", handed_back=remaining)
    await asyncio.gather(*(server.close(reason="drained") for server in servers))


async def _close_recorder(shared: Shared) -> None:
    """Flush queued record writes (after the servers closed and every call ended)."""
    recorder = shared.recorder
    if isinstance(recorder, WebhookRecorder):
        recorder = recorder.inner
    if isinstance(recorder, MetricsRecorder) and isinstance(recorder.inner, AnalyticsRecorder):
        await recorder.inner.aclose()


async def serve(
    config: Config, *, on_ready: Callable[[AudioSocketServer], None] | None = None
) -> None:
    state = _State()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        if config.health.enabled:
            web: CallsWeb | None = None
            if config.health.web:
                web = CallsWeb(
                    config,
                    token_env=config.health.web_token_env,
                    active_calls=lambda: [
                        {"call_id": call_id} for server in state.servers for call_id in server.calls
                    ],
                )
                stack.callback(web.close)
            health = HealthServer(
                state.readiness,
                metrics=render_text,
                host=config.health.host,
                port=config.health.port,
                on_refused=default_metrics().admin_refused,
                pages=web.page if web is not None else None,
            )
            await health.start()
            stack.push_async_callback(health.close)
        sdnotify.status("loading models")
        webhook = open_webhook(config)
        if webhook is not None:
            stack.callback(webhook.outbox.close)
            stack.push_async_callback(webhook.aclose)
        shared = await build_shared(config, webhook)
        stack.callback(shared.engines.close)
        stack.push_async_callback(_close_recorder, shared)
        if shared.llm is not None:
            stack.push_async_callback(shared.llm.aclose)
        for kit in shared.profiles.values():
            if kit.rasa is not None:
                stack.push_async_callback(kit.rasa.aclose)
                state.profile_rasa_ok[kit.name] = False
        state.models_loaded = True
        if config.llm.enabled:
            state.knowledge = "ok" if shared.llm is not None else "unavailable"
        rasa_server: RasaServer | None = None
        actions: ActionServer | None = None
        if config.dialogue.engine == "rasa":
            built = factory.build_dialogue(config, "rasa")
            assert built.rasa is not None
            state.rasa = built.rasa
            stack.push_async_callback(state.rasa.aclose)
            shared.dialogue = built.dialogue
            if config.rasa.manage:
                rasa_server = rasa_server_for(config)
                stack.push_async_callback(rasa_server.stop)
                actions = action_server_for(config)
                if actions is not None:
                    stack.push_async_callback(actions.stop)
                state.rasa_server, state.actions = rasa_server, actions
        dtmf_filter = None
        if config.ami.enabled:

            def on_ami_dtmf(call_id: str, digit: str) -> None:
                for server in state.servers:
                    if isinstance(server, AudioSocketServer) and call_id in server.calls:
                        with contextlib.suppress(asyncio.QueueFull):
                            server.calls[call_id].inbound.put_nowait(DtmfIn(digit, loop.time()))

            state.ami = AmiClient(config.ami, on_dtmf=on_ami_dtmf)
            await state.ami.start()
            stack.push_async_callback(state.ami.close)
            dtmf_filter = state.ami.accept_media_dtmf
        handler = make_handler(shared)
        audiosocket = AudioSocketServer(config.server, handler, dtmf_filter=dtmf_filter)
        state.servers.append(audiosocket)
        freeswitch: FreeswitchServer | None = None
        if config.freeswitch.enabled:
            # Loaded only when enabled: it brings gevent and greenswitch.
            from voicebot_pbx.pbx.freeswitch import FreeswitchServer

            freeswitch = FreeswitchServer(config.freeswitch, handler)
            state.servers.append(freeswitch)
        if config.websocket.enabled:
            from voicebot_pbx.pbx.websocket import WebSocketServer

            websocket = WebSocketServer(config.websocket, config.server, handler)
            state.servers.append(websocket)
            if config.websocket.incoming_url and state.ami is not None:
                # Dial(WebSocket/INCOMING/...): AMI says which connection Asterisk awaits.
                state.ami.on_incoming_media = websocket.dial_incoming
        if state.ami is not None or freeswitch is not None:
            shared.control = RoutedControl(freeswitch, state.ami)
        for profile in config.profiles:
            if profile.port:
                state.servers.append(
                    AudioSocketServer(
                        config.server,
                        handler,
                        port=profile.port,
                        profile=profile.name,
                        dtmf_filter=dtmf_filter,
                    )
                )
        for server in state.servers:
            await server.start()
        log.info("startup_heap_frozen", objects=freeze_startup_heap())
        sdnotify.ready(f"serving on port {config.server.port}")
        if on_ready is not None:
            on_ready(audiosocket)
        async with asyncio.TaskGroup() as group:
            background = [group.create_task(sdnotify.watchdog_heartbeat())]
            if state.rasa is not None:
                background.append(
                    group.create_task(
                        _start_rasa_logged(
                            voices_for(shared, None), rasa_server, state.rasa, actions=actions
                        )
                    )
                )
                background.append(group.create_task(_watch_rasa(state, state.rasa)))
            for kit in shared.profiles.values():
                if kit.rasa is None:
                    continue
                voices = voices_for(shared, kit.name)
                background.append(
                    group.create_task(_start_rasa_logged(voices, None, kit.rasa, wait_s=5.0))
                )
                background.append(group.create_task(_watch_rasa(state, kit.rasa, kit.name)))
            background.append(group.create_task(warm_knowledge_answers(shared)))
            if webhook is not None:
                background.append(group.create_task(webhook.run()))
            await stop.wait()
            state.draining = True
            log.info("stopping", active_calls=state.active_calls(), drain_s=config.server.drain_s)
            sdnotify.stopping(f"draining {state.active_calls()} calls")
            await drain(state.servers, config.server.drain_s)
            for task in background:
                task.cancel()
