"""The generator worker in-process: jobs, retries, idempotent commits, pool top-up and the threshold."""
from __future__ import annotations

import io
import logging
import random

import pytest
from PIL import Image

from game.config import generation_settings
from game.errors import AdminError
from game.generation.service import job_payload, pool_shortfall
from game.generation.jobs import JobQueue
from game.generation.heartbeats import live_workers
from game.generation.worker import Worker, combined_prompts, load_prompts, pick_prompt
from harness.settings import SETTINGS

SMALL = {"size": 32, "iterations": 4, "seeds": 1, "keep": 1, "cutn": 4}


@pytest.fixture
def app(redis_client, redis_url, clock):
    from game import create_app
    return create_app(dict(SETTINGS, TESTING=True, REDIS_URL=redis_url, VQGAN_MODEL="test-tiny", CLOCK=clock,
                           GEN_SIZE=32, GEN_ITERATIONS=4, GEN_SEEDS=1, GEN_CUTN=4,
                           POOL_TARGET=1, GAN_MIN_SCORE=-1.0, JOB_MAX_ATTEMPTS=2, JOB_VISIBILITY_S=0.2))


@pytest.fixture
def store(app):
    return app.extensions["store"]


def make_worker(app, name="w1", **kw):
    return Worker.from_app(app, name=name, rng=random.Random(1), **kw)


def enqueue(app, prompt, **extra):
    payload = job_payload(prompt, **{**SMALL, **extra})
    return JobQueue(app.extensions["redis"]).enqueue(payload)


def test_worker_processes_a_queued_job(app, store):
    job_id = enqueue(app, "a penguin playing the saxophone", seed=5)
    worker = make_worker(app, top_up=False)
    assert worker.process_one() is True
    job = worker.queue.get(job_id)
    assert job.status == "done" and job.worker == "w1" and job.attempts == 1
    target = store.get_target(job.target_id)
    assert target.kind == "gan" and target.status == "ready" and target.prompt == "a penguin playing the saxophone"
    assert target.seed == 5 and target.settings["job_id"] == job_id and target.history
    assert worker.process_one() is False  # nothing left


def test_models_are_loaded_once_per_worker(app, store):
    worker = make_worker(app, top_up=False)
    for prompt in ("a cat on the moon", "a dog on the moon"):
        enqueue(app, prompt)
        worker.process_one()
    clip_keys = [k for k in worker.models if k[0] == "clip"]
    assert len(clip_keys) == 1 and len(worker.models) == 2
    # The generator reuses the judge's CLIP object when it is the same model.
    assert worker.models[clip_keys[0]] is app.extensions["scorer"].clip


def test_two_workers_share_the_queue_without_duplicates(app, store):
    ids = [enqueue(app, f"a snail number {i}") for i in range(3)]
    w1, w2 = make_worker(app, "w1", top_up=False), make_worker(app, "w2", top_up=False)
    handled = [w.process_one() for w in (w1, w2, w1, w2)]
    assert handled == [True, True, True, False]
    jobs = [w1.queue.get(i) for i in ids]
    assert all(j.status == "done" for j in jobs)
    assert {j.worker for j in jobs} == {"w1", "w2"}
    targets = store.list_targets(kind="gan")
    assert sorted(t.settings["job_id"] for t in targets) == sorted(ids)


def test_failing_job_is_retried_then_parked_with_its_error(app, store, caplog):
    import time
    job_id = enqueue(app, "a cat")
    redis = app.extensions["redis"]
    # Damage the stored payload: a size the engine refuses (a corrupted or hand-written job).
    import json
    payload = json.loads(redis.hget(f"captionary:jobs:job:{job_id}", "payload"))
    payload["size"] = 40
    redis.hset(f"captionary:jobs:job:{job_id}", "payload", json.dumps(payload))
    worker = make_worker(app, top_up=False)
    with caplog.at_level(logging.ERROR, logger="captionary.worker"):
        assert worker.process_one()
    job = worker.queue.get(job_id)
    assert job.status == "queued" and "size" in job.error and "multiple of 16" in job.error
    assert "attempt 1 failed" in caplog.text
    time.sleep(0.25)  # the visibility timeout: the retry comes from the pending list
    assert worker.process_one()
    job = worker.queue.get(job_id)
    assert job.status == "failed" and "failed 2 times" in job.error and "multiple of 16" in job.error
    assert store.list_targets() == []
    time.sleep(0.25)
    assert worker.process_one() is False


def test_retry_after_a_crash_between_image_and_embedding_finishes_the_target(app, store):
    # An earlier attempt died inside add_target: the image and record exist, the embedding does not.
    job_id = enqueue(app, "a castle made of cheese")
    queue = JobQueue(app.extensions["redis"], visibility_s=0.2)
    queue.claim("dead-worker")
    png = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 180, 20)).save(png, "PNG")
    emb = app.extensions["scorer"].embed_image(Image.new("RGB", (32, 32), (200, 180, 20)))
    tid = store.add_target("gan", png.getvalue(), emb, prompt="a castle made of cheese", self_score=0.1,
                           seed=1, settings={"job_id": job_id})
    app.extensions["redis"].delete(f"cap:m:{store.model_id}:emb:{tid}")
    app.extensions["redis"].srem(f"cap:m:{store.model_id}:ready", tid)
    assert store.get_target(tid).status == "pending"
    import time
    time.sleep(0.25)

    def must_not_generate(*args, **kwargs):
        raise AssertionError("the retry must reuse the committed image, not generate again")

    worker = make_worker(app, top_up=False, generate_fn=must_not_generate)
    assert worker.process_one()
    job = worker.queue.get(job_id)
    assert job.status == "done" and job.target_id == tid and job.attempts == 2
    [target] = store.list_targets(kind="gan")
    assert target.id == tid and target.status == "ready" and target.hint_word
    scorer = app.extensions["scorer"]
    expected = float(scorer.embed_texts(["a castle made of cheese"])[0] @ store.target_embedding(tid))
    assert target.self_score == pytest.approx(expected, abs=1e-5)


def test_top_up_fills_the_pool_then_stops(app, store, caplog):
    worker = make_worker(app)
    with caplog.at_level(logging.INFO, logger="captionary.worker"):
        worker.run(once=True)
    [target] = store.list_targets(kind="gan")
    assert target.status == "ready" and target.settings["source"] == "topup"
    assert target.prompt in load_prompts() or target.prompt in combined_prompts()
    assert "pool short by 1" in caplog.text
    assert worker.top_up() is None  # K=1 fresh target: nothing more to do
    assert pool_shortfall(store, worker.cfg) == 0


def test_top_up_counts_targets_already_shown_as_used(app, store, clock):
    worker = make_worker(app)
    worker.run(once=True)
    store.freeze_day(store.today())  # today's puzzle shows the only GAN target
    assert pool_shortfall(store, worker.cfg) == 1
    job_id = worker.top_up()
    assert job_id and worker.queue.get(job_id).payload["source"] == "topup"
    assert worker.top_up() is None  # the one in flight covers the gap: no duplicate job


def test_threshold_rejects_low_scores_and_logs_why(app, store, caplog):
    app.config["GAN_MIN_SCORE"] = 0.99  # random tiny models score near 0
    worker = make_worker(app)
    job_id = worker.top_up()
    with caplog.at_level(logging.INFO, logger="captionary.worker"):
        assert worker.process_one()
    assert store.list_targets() == []
    job = worker.queue.get(job_id)
    assert job.status == "rejected" and job.target_id is None and "below the threshold 0.9900" in job.error
    assert "rejected: self-score" in caplog.text and job.payload["prompt"] in caplog.text


def test_heartbeat_is_visible_while_running_and_gone_after(app):
    worker = make_worker(app, top_up=False)
    worker.heartbeat("idle")
    [beat] = live_workers(app.extensions["redis"])
    assert beat["name"] == "w1" and beat["state"] == "idle" and beat["model_id"] == "test-tiny/random"
    assert app.extensions["redis"].ttl("captionary:workers:w1") > 0
    worker.run(once=True)
    assert live_workers(app.extensions["redis"]) == []


def test_prompts_file_and_picker():
    prompts = load_prompts()
    assert len(prompts) >= 50 and "a raccoon driving a tractor" in prompts
    rng = random.Random(0)
    avoid = set(prompts) | set(combined_prompts()[:-1])
    assert pick_prompt(rng, prompts, avoid) == combined_prompts()[-1]
    assert pick_prompt(rng, prompts, set()) in set(prompts) | set(combined_prompts())


def test_bad_prompts_file_is_refused(tmp_path):
    bad = tmp_path / "prompts.txt"
    bad.write_text("# fine\na cat:2\n")
    with pytest.raises(ValueError, match="prompt syntax"):
        load_prompts(bad)


def test_stopping_mid_job_hands_the_job_back(app, store):
    job_id = enqueue(app, "a moose in a canoe")
    worker = make_worker(app, top_up=False)

    def generate_until_stopped(store_, scorer, clip, vqgan, payload, defaults, *, on_step, **kwargs):
        worker.stop.set()  # SIGTERM arrives during the run
        on_step({"iteration": 0, "total": 4, "score": None, "it_s": 1.0})
        raise AssertionError("on_step must stop the run")

    worker.generate_fn = generate_until_stopped
    assert worker.process_one()
    assert worker.queue.get(job_id).status == "queued" and store.list_targets() == []
    worker._forget_heartbeat()  # the stopping worker exits: its handed-back entry must survive that
    other = make_worker(app, "w2", top_up=False)
    assert other.process_one()
    job = other.queue.get(job_id)
    assert job.status == "done" and job.worker == "w2" and job.attempts == 1


def test_worker_falls_back_to_tiny_models_in_development_only(app, tmp_path):
    app.config.update(CLIP_MODEL="ViT-B-32", CLIP_PRETRAINED="openai", VQGAN_MODEL="vqgan_imagenet_f16_16384",
                      MODELS_DIR=str(tmp_path / "empty"))
    worker = make_worker(app)
    choice = worker.prepare()
    assert (choice.clip_model, choice.vqgan_model) == ("test-tiny", "test-tiny")
    app.config["ENV"] = "production"
    with pytest.raises(AdminError, match="not on this machine"):
        make_worker(app).prepare()


def test_flask_worker_run_once_processes_the_queue_and_leaves_the_group_clean(app, store):
    from game.generation.jobs import GROUP, STREAM
    job_id = enqueue(app, "a duck wearing a crown")
    result = app.test_cli_runner().invoke(args=["worker", "run", "--once", "--name", "cli-worker"])
    assert result.exit_code == 0, result.output
    job = JobQueue(app.extensions["redis"]).get(job_id)
    assert job.status == "done" and job.worker == "cli-worker"
    consumers = [c["name"] for c in app.extensions["redis"].xinfo_consumers(STREAM, GROUP)]
    assert b"cli-worker" not in consumers and "cli-worker" not in consumers
    assert len(store.list_targets(kind="gan")) == 1  # K=1: the queued job's target fills the pool


def test_init_image_travels_inside_the_job(app, store, tmp_path):
    # A worker on another machine cannot open the admin's file: the job carries the image itself.
    init = tmp_path / "start.png"
    Image.new("RGB", (48, 48), (250, 250, 0)).save(init)
    job_id = enqueue(app, "a yellow sun", init_image=str(init))
    init.unlink()
    worker = make_worker(app, top_up=False)
    assert worker.process_one()
    job = worker.queue.get(job_id)
    assert job.status == "done", job.error
    assert store.get_target(job.target_id).settings["init_image"] == "start.png"


def test_top_up_waits_while_another_worker_holds_the_lock(app, store):
    from game.generation.worker import TOPUP_LOCK
    redis = app.extensions["redis"]
    redis.set(TOPUP_LOCK, "someone-else", px=5000)
    worker = make_worker(app)
    assert worker.top_up() is None and JobQueue(redis).list_jobs() == []
    assert redis.get(TOPUP_LOCK) == b"someone-else"  # never released by a worker that did not take it
    redis.delete(TOPUP_LOCK)
    assert worker.top_up() is not None and redis.get(TOPUP_LOCK) is None


def test_worker_survives_a_redis_outage(app, tmp_path, caplog):
    """Redis goes away while the worker idles; it waits with backoff and carries on when Redis returns."""
    import subprocess
    import threading
    import time

    import redis as redis_lib
    from game.store.server import redis_executable
    from game.store import Store

    sock = tmp_path / "r.sock"

    def start_redis():
        proc = subprocess.Popen([redis_executable(), "--port", "0", "--unixsocket", str(sock),
                                 "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        probe = redis_lib.Redis(unix_socket_path=str(sock))
        for _ in range(200):
            try:
                probe.ping()
                return proc
            except redis_lib.ConnectionError:
                time.sleep(0.02)
        raise AssertionError("redis-server did not start")

    server = start_redis()
    client = redis_lib.Redis(unix_socket_path=str(sock))
    store = Store(client, app.extensions["store"].model_id)
    worker = Worker(redis=client, store=store, scorer=app.extensions["scorer"], config=app.config, name="survivor",
                    top_up=False)
    worker.prepare()  # models loaded before the loop starts
    thread = threading.Thread(target=worker.run, kwargs={"idle_s": 0.2}, daemon=True)
    try:
        with caplog.at_level(logging.ERROR, logger="captionary.worker"):
            thread.start()
            time.sleep(0.5)
            server.terminate()
            server.wait(5)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and caplog.text.count("Redis unavailable") < 2:
                time.sleep(0.1)
            assert thread.is_alive() and caplog.text.count("Redis unavailable") >= 2  # retried, not crashed
            server = start_redis()  # an empty Redis again (e.g. restarted without persistence)
            job_id = JobQueue(client).enqueue(job_payload("a phoenix", **SMALL))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and JobQueue(client).get(job_id).status != "done":
                time.sleep(0.2)
            assert JobQueue(client).get(job_id).status == "done"
    finally:
        worker.stop.set()
        thread.join(30)
        server.terminate()
        server.wait(5)
    assert not thread.is_alive()


def test_once_mode_is_bounded_when_nothing_reaches_the_threshold(app, store, caplog):
    app.config.update(GAN_MIN_SCORE=0.99, POOL_TARGET=2)
    worker = make_worker(app)
    with caplog.at_level(logging.INFO, logger="captionary.worker"):
        worker.run(once=True)
    jobs = worker.queue.list_jobs()
    assert len(jobs) == 2 and all(j.status == "rejected" for j in jobs)  # POOL_TARGET tries, then it stops
    assert store.list_targets() == [] and caplog.text.count("rejected: self-score") == 2


def test_top_ups_pause_after_rejections_in_a_row(app, store, caplog):
    import time
    from game.generation import worker as worker_mod
    app.config.update(GAN_MIN_SCORE=0.99)
    worker = make_worker(app)
    with caplog.at_level(logging.WARNING, logger="captionary.worker"):
        for _ in range(worker_mod.TOPUP_PATIENCE):
            worker.top_up()
            worker.process_one()
    assert worker.rejected_in_a_row == worker_mod.TOPUP_PATIENCE
    assert worker.topup_not_before > time.monotonic() and "pausing top-ups" in caplog.text
    # A queued admin job is still taken at once during the pause, and an accepted image ends it.
    app.config["GAN_MIN_SCORE"] = -1.0
    worker.cfg = generation_settings(app.config)
    job_id = worker.top_up()
    worker.process_one()
    assert worker.queue.get(job_id).status == "done"
    assert worker.rejected_in_a_row == 0 and worker.topup_not_before == 0.0
