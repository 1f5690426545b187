"""Operations: /healthz, /readyz, /metrics (Prometheus), JSON logs with secrets redacted, graceful SIGTERM.

Real Redis (the session's server, and a second one that is stopped to show
readiness failing), the real worker heartbeat code, and real gunicorn for the
SIGTERM drain.
"""
from __future__ import annotations

import io
import json
import logging
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.web import make_app
from harness import servers
from harness.client import WSClient
from harness.settings import MODEL_ID


def _metrics(client) -> dict:
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    out = {}
    for family in text_string_to_metric_families(resp.get_data(as_text=True)):
        for sample in family.samples:
            key = sample.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items())) + "}"
                                 if sample.labels else "")
            out[key] = sample.value
    return out


def test_healthz_and_readyz_when_all_is_well(client, seeded):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    resp = client.get("/readyz")
    body = resp.get_json()
    assert resp.status_code == 200 and body["status"] == "ready"
    assert body["checks"]["redis"]["ok"] and body["checks"]["model"]["model_id"] == "test-tiny/random"
    # No worker runs, and by default that is reported without taking the web node out of rotation.
    assert body["checks"]["workers"] == {"ok": True, "alive": 0, "required": False}


def test_readyz_can_require_a_worker_heartbeat(tmp_path, redis_url, redis_client, clock, seeded):
    from game.generation.worker import Worker
    app = make_app(tmp_path / "req", redis_url, clock, READY_REQUIRES_WORKERS="true")
    client = app.test_client()
    resp = client.get("/readyz")
    assert resp.status_code == 503 and resp.get_json()["checks"]["workers"]["ok"] is False
    worker = Worker.from_app(app, name="ready-worker", top_up=False)
    worker.heartbeat("idle")  # what a running worker writes every few seconds
    body = client.get("/readyz").get_json()
    assert body["status"] == "ready" and body["checks"]["workers"]["alive"] == 1
    worker._forget_heartbeat()
    assert client.get("/readyz").status_code == 503


def test_redis_down_makes_readyz_503_and_metrics_say_so(tmp_path, clock):
    from game.store import server as redis_server
    instance = str(tmp_path / "lonely-redis")
    redis_server.connect(instance).close()
    url = "unix://" + redis_server.socket_path(instance)
    app = make_app(tmp_path / "app", url, clock)
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    redis_server.stop(instance)
    resp = client.get("/readyz")
    assert resp.status_code == 503 and resp.get_json()["checks"]["redis"]["ok"] is False
    assert client.get("/healthz").status_code == 200  # alive, just not ready: do not restart it
    assert _metrics(client)["captionary_redis_up"] == 0


def test_metrics_count_drafts_submissions_refusals_and_read_redis(app, client, seeded):
    from game.generation.jobs import JobQueue
    from game.generation.worker import Worker
    p = seeded[0].id
    client.get("/")
    before = _metrics(client)  # the judge is shared by the tests' apps: its counters only grow
    for i in range(3):
        assert client.post("/api/draft", json={"puzzle": p, "caption": f"a red square {i}"}).status_code == 200
    assert client.post("/api/draft", json={"puzzle": p, "caption": " "}).status_code == 400
    assert client.post("/api/submit", json={"puzzle": p, "caption": "a red square"}).status_code == 200

    queue = JobQueue(app.extensions["redis"])
    job_id = queue.enqueue({"prompt": "a fox on the moon", "iterations": 100})
    job = queue.claim("metrics-worker")
    worker = Worker.from_app(app, name="metrics-worker", top_up=False)
    app.extensions["redis"].hset(f"captionary:jobs:job:{job_id}", "started_at", time.time() - 4.0)
    worker.heartbeat("working", job, "40/100")  # 40 iterations in ~4 s

    m = _metrics(client)
    assert m["captionary_drafts_scored_total"] == 3
    assert m["captionary_draft_latency_seconds_count"] == 3 and m["captionary_draft_latency_seconds_sum"] > 0
    assert m["captionary_submissions_total{mode=ranked}"] == 1
    assert m["captionary_actions_refused_total{action=draft,code=empty_caption}"] == 1
    assert m["captionary_pool_size{kind=photo}"] == 2 and m["captionary_pool_size{kind=gan}"] == 1
    assert m["captionary_queue_depth"] == 1 and m["captionary_workers_alive"] == 1
    assert m["captionary_generation_iterations_per_second{worker=metrics-worker}"] == pytest.approx(10, rel=0.2)
    assert m["captionary_redis_up"] == 1
    grew = {k: m[k] - before[k] for k in ("captionary_judge_captions_encoded_total", "captionary_judge_batches_total",
                                          "captionary_judge_compute_seconds_total",
                                          "captionary_judge_token_rows_total{kind=computed}")}
    assert grew["captionary_judge_captions_encoded_total"] >= 3 and grew["captionary_judge_batches_total"] >= 1
    assert grew["captionary_judge_compute_seconds_total"] > 0 and grew["captionary_judge_token_rows_total{kind=computed}"] > 3
    assert m["captionary_judge_queue_depth"] == 0 and m["captionary_judge_torch_threads"] >= 1
    # Where the judge thread's computing seconds went (Linux schedstat): the three add up to them.
    states = [m[f"captionary_judge_compute_thread_seconds_total{{state={s}}}"] for s in ("on_cpu", "waiting_for_cpu",
                                                                                       "blocked")]
    assert states[0] > 0 and sum(states) == pytest.approx(m["captionary_judge_compute_seconds_total"], rel=1e-3)


def test_metrics_token(tmp_path, redis_url, redis_client, clock):
    client = make_app(tmp_path, redis_url, clock, METRICS_TOKEN="scrape-token-123").test_client()
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert client.get("/metrics", headers={"Authorization": "Bearer scrape-token-123"}).status_code == 200
    assert client.get("/metrics", headers={"Authorization": "scrape-token-123"}).status_code == 403  # no scheme


def test_metrics_in_production_is_closed_without_a_token_and_needs_it_with_one(tmp_path, redis_url, redis_client,
                                                                              clock):
    # create_app refuses production with test-tiny weights, so the setting flips after start-up,
    # as test_security does; /metrics reads it per request.
    app = make_app(tmp_path, redis_url, clock)
    client = app.test_client()
    assert client.get("/metrics").status_code == 200  # development: open
    app.config["ENV"] = "production"
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", headers={"Authorization": "Bearer anything"}).status_code == 404
    app.config["METRICS_TOKEN"] = "production-scrape-token-0123456789"
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 403
    ok = client.get("/metrics", headers={"Authorization": "Bearer production-scrape-token-0123456789"})
    assert ok.status_code == 200 and b"captionary_redis_up" in ok.data


def test_json_logs_redact_secrets(tmp_path, redis_url, redis_client, clock):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        make_app(tmp_path, redis_url, clock, LOG_FORMAT="json", ADMIN_TOKEN="admin-token-very-secret-0123456789ab")
        logging.getLogger("captionary.test").warning("token was %s and key %s", "admin-token-very-secret-0123456789ab",
                                                     "test-secret-key-not-for-production")
    finally:
        root.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    mine = [l for l in lines if l["logger"] == "captionary.test"]
    assert mine and mine[0]["level"] == "WARNING"
    assert mine[0]["msg"] == "token was [redacted] and key [redacted]"
    assert "admin-token-very-secret-0123456789ab" not in stream.getvalue()
    assert "test-secret-key-not-for-production" not in stream.getvalue()


def test_drain_closes_idle_sockets_with_1012_and_refuses_readiness(app, seeded, live_server, ws_connect):
    ws, cookie = ws_connect()
    assert ws.ask({"type": "ping"})["type"] == "pong"
    drain = app.extensions["drain"]
    assert drain.open_count() == 1
    drain.start()  # what SIGTERM does in a gunicorn worker
    frame = ws.ws.recv_frame()
    assert int.from_bytes(frame.data[:2], "big") == 1012
    assert requests.get(live_server.url + "/readyz").status_code == 503
    # A socket opened while draining is closed at once with the same code (the page retries elsewhere).
    late, _ = ws_connect(cookie=cookie)
    assert int.from_bytes(late.ws.recv_frame().data[:2], "big") == 1012
    deadline = time.monotonic() + 5
    while drain.open_count() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert drain.open_count() == 0


def test_sigterm_on_gunicorn_finishes_in_flight_submissions_then_closes_1012(redis_url, redis_client, tiny_clip,
                                                                           tmp_path):
    from game.store import Store
    puzzles = servers.seed_today(redis_client, tiny_clip.embed_dim)
    web = servers.Gunicorn(redis_url, tmp_path, MAX_SUBMISSIONS=40, SUBMIT_RATE=100, SUBMIT_BURST=100)
    try:
        web.wait_ready()
        # A gunicorn worker froze its start-up objects (GC_FREEZE auto; game/gc_pauses.py): torch alone is >100k.
        scraped = {s.name: s.value for f in text_string_to_metric_families(requests.get(web.url + "/metrics").text)
                   for s in f.samples}
        assert scraped["captionary_gc_frozen_objects"] > 100_000, scraped["captionary_gc_frozen_objects"]
        idle = WSClient.player(web.url)
        busy = WSClient.player(web.url)
        assert idle.ask({"type": "ping"})["type"] == "pong" and busy.ask({"type": "ping"})["type"] == "pong"
        for i in range(30):
            busy.send({"type": "submit", "puzzle": puzzles[0], "caption": f"caption number {i}", "seq": i})
        import signal
        web.proc.send_signal(signal.SIGTERM)  # as a process manager does: to the master, which tells the worker
        got, code = busy.frames_until_close()
        _, idle_code = idle.frames_until_close()
        assert code == 1012 and idle_code == 1012
        assert web.proc.wait(20) == 0
    finally:
        web.stop()
    acked = [m for m in got if m["type"] == "result"]
    store = Store(redis_client, MODEL_ID)
    (entry,) = store.leaderboard(puzzles[0]) or [None]
    recorded = store.attempts(entry.player_id, puzzles[0]) if entry else []
    # Every submission the server recorded was acknowledged before the close, and vice versa.
    assert sorted(a.caption for a in recorded) == sorted(m["caption"] for m in acked)
    assert not [m for m in got if m["type"] == "error"], got
    print(f"acknowledged before the drain closed the socket: {len(acked)}")
