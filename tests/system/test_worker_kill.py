"""Worker processes for real: one is killed with SIGKILL mid-job, a second one finishes the job.

Runs `python -m game.generation.worker` (what the Procfile starts) against the session's
Redis with the tiny models. Nothing of the killed attempt may reach the pool,
and the job must end with exactly one target.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from game.generation.service import generate_target, job_payload
from game.generation.jobs import JobQueue
from game.generation.heartbeats import live_workers
from harness.settings import environment

ROOT = Path(__file__).resolve().parents[2]
STEP_DELAY_S = 0.1


def slow_generate(store, scorer, clip, vqgan, payload, defaults, *, on_step=None, **kwargs):
    """The real generation, slowed per step so a kill lands mid-job on any machine (`--generate`)."""
    def slow(info):
        time.sleep(STEP_DELAY_S)
        on_step(info)
    return generate_target(store, scorer, clip, vqgan, payload, defaults, on_step=slow, **kwargs)


def _start(name, redis_url, tmp_path):
    env = dict(os.environ, REDIS_URL=redis_url,
               **environment(VQGAN_MODEL="test-tiny", JOB_VISIBILITY_S=2, WORKER_IDLE_S=0.3, TORCH_THREADS=1))
    log = open(tmp_path / f"{name}.log", "wb")
    # `python -m` in ROOT puts the checkout first on sys.path: tests.system is this package.
    return subprocess.Popen([sys.executable, "-m", "game.generation.worker", "--name", name, "--no-top-up",
                             "--generate", "tests.system.test_worker_kill:slow_generate"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait(predicate, timeout, what, procs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"{what}: worker exited early with {proc.returncode}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_worker_loses_nothing_and_another_finishes_the_job(redis_client, redis_url, tmp_path):
    from game.store import Store
    queue = JobQueue(redis_client)
    payload = job_payload("a hot air balloon shaped like a fish", size=32, iterations=40, seeds=1, cutn=4,
                                seed=11)
    job_id = queue.enqueue(payload)
    store = Store(redis_client, "test-tiny/random")
    first = _start("first", redis_url, tmp_path)
    second = None
    try:
        # Kill only once the job is visibly in progress (the worker reports steps into the job record).
        _wait(lambda: (redis_client.hget(f"captionary:jobs:job:{job_id}", "progress") or b"").startswith(
            tuple(str(i).encode() for i in range(1, 10))), 120, "the first worker's progress", [first])
        assert queue.get(job_id).worker == "first"
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        assert queue.get(job_id).status == "running"  # nobody has finished it
        assert store.list_targets(kind="gan") == []  # and nothing half-done entered the pool

        second = _start("second", redis_url, tmp_path)
        _wait(lambda: any(w["name"] == "second" for w in live_workers(redis_client)), 60, "second's heartbeat",
              [second])
        done = _wait(lambda: queue.get(job_id).status == "done" and queue.get(job_id), 180,
                     "the second worker to finish the job", [second])
        assert done.worker == "second" and done.attempts == 2
        targets = store.list_targets(kind="gan")
        assert [t.id for t in targets] == [done.target_id]
        assert targets[0].status == "ready" and targets[0].settings["job_id"] == job_id and targets[0].seed == 11
        second.send_signal(signal.SIGTERM)  # a polite stop: the loop ends, the heartbeat goes
        assert second.wait(60) == 0
        assert not any(w["name"] == "second" for w in live_workers(redis_client))
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for name in ("first", "second"):
            log = tmp_path / f"{name}.log"
            if log.exists():
                sys.stdout.write(f"--- {name} log ---\n{log.read_text(errors='replace')[-3000:]}\n")


def test_worker_refuses_an_unknown_generate_function(redis_url, tmp_path):
    env = dict(os.environ, REDIS_URL=redis_url, **environment())
    out = subprocess.run([sys.executable, "-m", "game.generation.worker", "--generate", "no_such_module:fn"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "worker cannot start: --generate no_such_module:fn" in out.stderr
