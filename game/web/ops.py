"""Operations: health and readiness probes, Prometheus metrics, JSON logs, graceful SIGTERM.

  GET /healthz   200 while the process can answer at all (liveness: restart me if this fails)
  GET /readyz    200 when Redis answers, the judge is loaded and (if required) a generator
                 worker heartbeat is present; 503 with the failing checks otherwise, and
                 always 503 once a graceful shutdown has begun (load balancers stop routing)
  GET /metrics   Prometheus text format (prometheus_client), this process's counters plus
                 gauges read from Redis at scrape time (queue depth, pool size, workers,
                 generation it/s reported through the workers' heartbeats), and this
                 process's judge (batches, seconds computing, token rows computed and
                 reused, drafts queued, torch threads, and where its thread's computing
                 time went: on a core, waiting for one, blocked): how busy the live scorer is; and
                 this process's garbage collector (game/gc_pauses.py: collections, seconds
                 paused and the longest pause by generation, objects frozen at start-up)

Settings (CAPTIONARY_*): LOG_FORMAT "text" | "json"; READY_REQUIRES_WORKERS (default
false: the web game keeps serving from the existing pool while no worker runs, so a
missing worker is reported on /readyz but does not take every web node out of the
load balancer); GRACEFUL_SIGTERM "auto" | true | false ("auto": only inside a gunicorn
worker, never in a test runner or a CLI command); METRICS_TOKEN (bearer token for
/metrics: when set, every scrape needs `Authorization: Bearer <token>`; unset, /metrics is
open in development and answers 404 in production, where queue depths and worker names
are nobody else's business).

Graceful shutdown: gunicorn's gthread worker on SIGTERM stops accepting and waits up to
--graceful-timeout for open requests, and a websocket is one long request. `Drain` wraps
gunicorn's handler: readiness turns 503, idle sockets are closed at once with code 1012
("service restart"), a socket busy with a draft or submission is closed right after its
reply is sent, so nothing in flight is cut. The page (static/live.js) reconnects on any
close with a jittered backoff and lands on another web process.

Counting drafts and submissions wraps the process's `Game` instance methods (not the
module), so game/service.py stays free of metrics code and every entry point (websocket
and HTTP) is counted the same way.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import signal
import threading
import time
from contextlib import contextmanager

from flask import Blueprint, Response, abort, current_app, jsonify, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from engine.thread_clock import STATES as THREAD_STATES
from game.web.security import bearer_token, tokens_match

log = logging.getLogger("captionary.ops")
bp = Blueprint("ops", __name__)

CLOSE_SERVICE_RESTART = 1012  # RFC 6455 registry: "service restart"; browsers report it in onclose
# Draft latency buckets (seconds): a keystroke on CPU costs a few ms to ~100 ms; a busy judge more.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)


# -- metrics ------------------------------------------------------------------------------------
class Metrics:
    """One registry per app (several apps in one test process must not share global collectors)."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.drafts = Counter("captionary_drafts_scored", "Drafts scored (live score replies sent)", registry=r)
        self.draft_latency = Histogram("captionary_draft_latency_seconds",
                                       "Server time from a parsed draft to its score", buckets=LATENCY_BUCKETS,
                                       registry=r)
        self.submissions = Counter("captionary_submissions", "Submissions recorded", ["mode"], registry=r)
        self.refused = Counter("captionary_actions_refused", "Actions answered with an error, by action and code",
                               ["action", "code"], registry=r)
        self.sockets = Gauge("captionary_websockets_open", "Websockets open in this process", registry=r)
        self.draining = Gauge("captionary_draining", "1 once a graceful shutdown has begun", registry=r)


class RedisCollector:
    """Gauges read from Redis at scrape time, so every web process reports the same shared figures."""

    def __init__(self, app):
        self.app = app

    def describe(self):
        return []  # computed at scrape time; nothing to pre-register

    def collect(self):
        ext = self.app.extensions
        up = GaugeMetricFamily("captionary_redis_up", "1 when Redis answered this scrape")
        try:
            client, store = ext["redis"], ext["store"]
            from game.generation.jobs import JobQueue
            from game.generation.heartbeats import live_workers
            depth = JobQueue(client).pending_count()
            pool = store.pool()
            workers = live_workers(client)
            rates = _generation_rates(client, workers)
        except Exception as exc:  # Redis down: say so instead of failing the whole scrape
            log.warning("metrics: Redis unavailable (%s)", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        g = GaugeMetricFamily("captionary_queue_depth", "Generation jobs queued or running (stream length)")
        g.add_metric([], depth)
        yield g
        g = GaugeMetricFamily("captionary_pool_size", "Targets in this model's ready pool", labels=["kind"])
        kinds: dict[str, int] = {}
        for kind in pool.values():
            kinds[kind] = kinds.get(kind, 0) + 1
        for kind in ("gan", "photo"):
            g.add_metric([kind], kinds.pop(kind, 0))
        for kind, n in kinds.items():
            g.add_metric([kind], n)
        yield g
        g = GaugeMetricFamily("captionary_workers_alive", "Generator workers with a live heartbeat")
        g.add_metric([], len(workers))
        yield g
        g = GaugeMetricFamily("captionary_generation_iterations_per_second",
                              "Generation speed of each working worker's current job", labels=["worker"])
        for name, rate in rates.items():
            g.add_metric([name], rate)
        yield g


class JudgeCollector:
    """This process's live scorer, read at scrape time from `Scorer.stats()`.

    What an operator needs to tell a judge that runs out of compute (seconds computing per
    second near 1, drafts queued) from one starved of CPU or waiting on other work (few
    seconds computing, yet slow drafts); bench/ws_load.py prints the same figures.
    """

    def __init__(self, app):
        self.app = app

    def describe(self):
        return []

    def collect(self):
        scorer = self.app.extensions.get("scorer")
        if scorer is None:
            return
        stats = scorer.stats()
        for name, key, text in (("batches", "batches", "Batches the judge encoded"),
                                ("compute_seconds", "compute_s", "Seconds the judge spent encoding batches"),
                                ("captions_encoded", "encoded", "Drafts and captions the judge encoded")):
            c = CounterMetricFamily(f"captionary_judge_{name}", text)
            c.add_metric([], stats[key])
            yield c
        c = CounterMetricFamily("captionary_judge_token_rows", "Token positions encoded, computed or reused "
                                "from a player's cached prefix", labels=["kind"])
        c.add_metric(["computed"], stats["tokens_computed"])
        c.add_metric(["reused"], stats["tokens_reused"])
        yield c
        if stats.get("thread_times"):  # Linux: where the judge thread's computing time went
            c = CounterMetricFamily("captionary_judge_compute_thread_seconds",
                                    "The judge's computing seconds by what its thread did: on a core, waiting "
                                    "for a core, blocked (the GIL, torch's other threads)", labels=["state"])
            for state in THREAD_STATES:
                c.add_metric([state], stats[f"compute_{state}_s"])
            yield c
        g = GaugeMetricFamily("captionary_judge_queue_depth", "Drafts waiting for the judge")
        g.add_metric([], stats["queue_depth"])
        yield g
        g = GaugeMetricFamily("captionary_judge_torch_threads", "The judge's torch intra-op threads now")
        g.add_metric([], stats["torch_threads"])
        yield g


class GcCollector:
    """This process's garbage-collector pauses (game/gc_pauses.py): every thread stops while one runs."""

    def describe(self):
        return []

    def collect(self):
        from game import gc_pauses
        snap = gc_pauses.tracker().snapshot()
        for name, key, text, family in (
                ("collections", "collections", "Garbage collections, by generation", CounterMetricFamily),
                ("pause_seconds", "seconds", "Seconds every thread stood still for garbage collection",
                 CounterMetricFamily),
                ("longest_pause_seconds", "longest", "The longest garbage-collection pause since start",
                 GaugeMetricFamily)):
            m = family(f"captionary_gc_{name}", text, labels=["generation"])
            for generation, value in snap[key].items():
                m.add_metric([str(generation)], value)
            yield m
        g = GaugeMetricFamily("captionary_gc_frozen_objects", "Objects frozen at start-up (collections skip them)")
        g.add_metric([], snap["frozen"])
        yield g


def _generation_rates(client, workers: list[dict]) -> dict[str, float]:
    """it/s per working worker: iterations reported in its heartbeat over the job's running time.

    The worker writes `progress` ("iteration/total") and `updated` into its heartbeat each second;
    the job record has `started_at`. Their ratio is stateless, so every web process agrees.
    """
    out = {}
    for hb in workers:
        job, progress = hb.get("job"), hb.get("progress") or ""
        if hb.get("state") != "working" or not job or "/" not in progress:
            continue
        try:
            iteration = int(progress.split("/", 1)[0])
            started = client.hget(f"captionary:jobs:job:{job}", "started_at")
            elapsed = float(hb["updated"]) - float(started)
        except (TypeError, ValueError, KeyError):
            continue
        if iteration > 0 and elapsed > 0:
            out[hb.get("name") or "?"] = iteration / elapsed
    return out


def instrument_game(game, metrics: Metrics) -> None:
    """Count and time the process's Game actions (instance attributes shadow the class methods)."""
    from game.service import ProtocolError

    def wrap(name, on_ok):
        original = getattr(game, name)

        @functools.wraps(original)
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                reply = original(*args, **kwargs)
            except ProtocolError as exc:
                metrics.refused.labels(name, exc.code).inc()
                raise
            on_ok(reply, time.perf_counter() - start)
            return reply
        setattr(game, name, run)

    def drafted(reply, seconds):
        metrics.drafts.inc()
        metrics.draft_latency.observe(seconds)

    def submitted(reply, seconds):
        metrics.submissions.labels("practice" if reply.get("practice") else "ranked").inc()

    if not getattr(game, "_ops_instrumented", False):
        wrap("draft", drafted)
        wrap("submit", submitted)
        game._ops_instrumented = True


# -- graceful shutdown --------------------------------------------------------------------------
class Drain:
    """Open websockets of this process, and closing them with 1012 once each is idle."""

    def __init__(self, metrics: Metrics | None = None):
        self._lock = threading.Lock()
        self._open: dict = {}  # Connection -> busy (a batch is being answered)
        self.draining = threading.Event()
        self.metrics = metrics

    def opened(self, conn) -> bool:
        """Track a new socket; False (and closed with 1012) when the process is already draining."""
        with self._lock:
            if not self.draining.is_set():
                self._open[conn] = False
                self._gauge()
                return True
        self._close(conn)
        return False

    def closed(self, conn) -> None:
        with self._lock:
            self._open.pop(conn, None)
            self._gauge()

    @contextmanager
    def busy(self, conn):
        """Around answering one batch: a drain waits for it, then closes the socket."""
        with self._lock:
            if conn in self._open:
                self._open[conn] = True
        try:
            yield
        finally:
            with self._lock:
                close = self.draining.is_set() and conn in self._open
                if conn in self._open:
                    self._open[conn] = False
            if close:
                self._close(conn)

    def start(self) -> int:
        """Begin draining: refuse readiness, close idle sockets now. Returns how many were closed now."""
        with self._lock:
            self.draining.set()
            idle = [c for c, busy in self._open.items() if not busy]
        if self.metrics:
            self.metrics.draining.set(1)
        for conn in idle:
            self._close(conn)
        log.info("draining: closed %d idle websocket(s) with %d; busy ones close after their reply",
                 len(idle), CLOSE_SERVICE_RESTART)
        return len(idle)

    def closed_by_drain(self, conn) -> bool:
        return self.draining.is_set() and (getattr(conn, "closing", False)
                                           or not getattr(conn.ws, "connected", True))

    def open_count(self) -> int:
        with self._lock:
            return len(self._open)

    def _gauge(self) -> None:
        if self.metrics:
            self.metrics.sockets.set(len(self._open))

    @staticmethod
    def _close(conn) -> None:
        if hasattr(conn, "close"):  # game/web/ws.py Connection: queued behind the replies already answered
            conn.close(CLOSE_SERVICE_RESTART, "server restarting, reconnect")
            return
        ws = conn.ws
        lock = getattr(conn, "_send_lock", None) or contextlib.nullcontext()
        try:
            with lock:  # never interleave the close frame with a reply being written
                ws.close(CLOSE_SERVICE_RESTART, "server restarting, reconnect")
        except Exception:
            pass  # already closed by the client
        # Wake the handler thread blocked in receive(): it sees the socket closed and returns.
        event = getattr(ws, "event", None)
        if event is not None:
            event.set()


def in_gunicorn_worker() -> bool:
    """Whether this process is a gunicorn worker (its SIGTERM handler is the worker's), not a test or CLI."""
    try:
        from gunicorn.workers.base import Worker
    except ImportError:
        return False
    return isinstance(getattr(signal.getsignal(signal.SIGTERM), "__self__", None), Worker)


def install_sigterm(app, drain: Drain) -> bool:
    """Chain our drain in front of the current SIGTERM handler (gunicorn's `handle_exit`)."""
    mode = app.config["GRACEFUL_SIGTERM"]  # auto | true | false (checked in game/config.py)
    if mode == "false" or (mode == "auto" and not in_gunicorn_worker()):
        return False  # auto: not a gunicorn worker (tests, CLI, werkzeug): leave signals alone
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        # Signal handlers run on the main thread between bytecodes: do the socket work elsewhere.
        threading.Thread(target=drain.start, name="captionary-drain", daemon=True).start()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            raise SystemExit(0)

    try:
        signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread
        return False
    return True


# -- structured logs ----------------------------------------------------------------------------
class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and the exception when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
               "msg": record.getMessage(), "pid": record.process, "thread": record.threadName}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class RedactSecrets(logging.Filter):
    """Replace configured secret values (SECRET_KEY, ADMIN_TOKEN, ...) in any log line."""

    def __init__(self, secrets):
        super().__init__("captionary-redact")
        self.secrets = sorted({str(s) for s in secrets if s and len(str(s)) >= 6}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        redacted = message
        for secret in self.secrets:
            redacted = redacted.replace(secret, "[redacted]")
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


SECRET_SETTINGS = ("SECRET_KEY", "ADMIN_TOKEN", "METRICS_TOKEN")


def _redis_password(url) -> str | None:
    from urllib.parse import urlsplit
    try:
        return urlsplit(str(url)).password if url else None
    except ValueError:
        return None


def configure_logging(app) -> None:
    """JSON lines when LOG_FORMAT=json; secrets redacted on every handler of the root logger."""
    root = logging.getLogger()
    secrets = [app.config.get(k) for k in SECRET_SETTINGS] + [_redis_password(app.config.get("REDIS_URL"))]
    for handler in root.handlers:
        for old in [f for f in handler.filters if isinstance(f, RedactSecrets)]:
            handler.removeFilter(old)
        # On handlers, not loggers: a filter on the root logger misses records from child loggers.
        handler.addFilter(RedactSecrets(secrets))
        if app.config["LOG_FORMAT"] == "json":
            handler.setFormatter(JsonFormatter())


# -- endpoints ----------------------------------------------------------------------------------
@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


def readiness(app) -> tuple[bool, dict]:
    """(ready, checks): each check is {"ok": bool, ...detail}."""
    ext = app.extensions
    checks: dict[str, dict] = {}
    try:
        ext["redis"].ping()
        checks["redis"] = {"ok": True}
    except Exception as exc:
        checks["redis"] = {"ok": False, "error": type(exc).__name__}
    judge = ext.get("judge")
    checks["model"] = {"ok": judge is not None and ext.get("scorer") is not None,
                       "model_id": getattr(judge, "model_id", None),
                       "demo_mode": bool(getattr(judge, "demo_mode", False))}
    required = app.config["READY_REQUIRES_WORKERS"]
    if checks["redis"]["ok"]:
        from game.generation.heartbeats import live_workers
        try:
            workers = live_workers(ext["redis"])
            checks["workers"] = {"ok": bool(workers) or not required, "alive": len(workers), "required": required}
        except Exception as exc:
            checks["workers"] = {"ok": not required, "error": type(exc).__name__, "required": required}
    else:
        checks["workers"] = {"ok": not required, "alive": None, "required": required}
    drain = ext.get("drain")
    checks["accepting"] = {"ok": not (drain and drain.draining.is_set())}
    return all(c["ok"] for c in checks.values()), checks


@bp.get("/readyz")
def readyz():
    ok, checks = readiness(current_app)
    resp = jsonify({"status": "ready" if ok else "not_ready", "checks": checks})
    resp.status_code = 200 if ok else 503
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.get("/metrics")
def metrics():
    token = current_app.config.get("METRICS_TOKEN")
    if not token and current_app.config.get("ENV") == "production":
        abort(404)  # production: closed until a token is configured
    if token:
        if not tokens_match(bearer_token(request), token):
            return jsonify({"type": "error", "code": "forbidden", "message": "metrics need the bearer token"}), 403
    data = generate_latest(current_app.extensions["metrics"].registry)
    return Response(data, mimetype=CONTENT_TYPE_LATEST.split(";")[0], headers={"Cache-Control": "no-store"})


def init_app(app) -> None:
    configure_logging(app)
    m = Metrics()
    m.registry.register(RedisCollector(app))
    m.registry.register(JudgeCollector(app))
    m.registry.register(GcCollector())
    app.extensions["metrics"] = m
    instrument_game(app.extensions["game"], m)
    drain = Drain(m)
    app.extensions["drain"] = drain
    app.extensions["gunicorn_worker"] = in_gunicorn_worker()  # before our SIGTERM handler replaces gunicorn's
    app.extensions["sigterm_installed"] = install_sigterm(app, drain)
    app.register_blueprint(bp)
