"""Tests for the generation job queue (game/generation/jobs.py) on a real redis-server."""
import time

import pytest
from game.generation.jobs import STREAM, JobQueue, job_key


@pytest.fixture
def r(redis_client):
    """The session's real Redis (tests/conftest.py), emptied for this test."""
    return redis_client


def test_enqueue_then_claim_then_commit_acknowledges(r):
    q = JobQueue(r)
    job_id = q.enqueue({"prompt": "a raccoon driving a tractor"})
    assert q.get(job_id).status == "queued"
    assert q.pending_count() == 1
    job = q.claim("w1")
    assert job.id == job_id and job.payload["prompt"] == "a raccoon driving a tractor"
    assert job.status == "running" and job.attempts == 1 and q.get(job_id).worker == "w1"
    assert q.claim("w2") is None  # one job, held by w1: nobody else gets it
    written = []
    target = q.commit(job, find_existing=lambda: None, write=lambda: written.append(1) or "t1")
    assert target == "t1" and written == [1]
    done = q.get(job_id)
    assert done.status == "done" and done.target_id == "t1"
    assert q.pending_count() == 0 and r.xpending(STREAM, "workers")["pending"] == 0


def test_two_consumers_never_get_the_same_job(r):
    q = JobQueue(r)
    ids = {q.enqueue({"n": i}) for i in range(6)}
    got = []
    for consumer in ["a", "b", "a", "b", "a", "b", "a"]:
        job = q.claim(consumer)
        if job:
            got.append(job.id)
    assert sorted(got) == sorted(ids)


def test_dead_workers_job_is_reclaimed_after_visibility_timeout(r):
    q = JobQueue(r, visibility_s=0.2)
    job_id = q.enqueue({"prompt": "x"})
    first = q.claim("dead")
    assert first.id == job_id
    assert q.claim("alive") is None  # not yet: the holder may still be working
    time.sleep(0.3)
    second = q.claim("alive")
    assert second.id == job_id and second.attempts == 2 and q.get(job_id).worker == "alive"


def test_touch_keeps_a_live_job_and_never_steals_one_back(r):
    q = JobQueue(r, visibility_s=0.3)
    q.enqueue({"prompt": "x"})
    job = q.claim("slow")
    time.sleep(0.2)
    assert q.touch(job, "slow")
    time.sleep(0.2)
    assert q.claim("other") is None  # touched 0.2 s ago: still under the timeout
    time.sleep(0.2)
    taken = q.claim("other")
    assert taken is not None and taken.id == job.id
    assert q.touch(job, "slow") is False  # the slow worker lost it and must not take it back
    assert q.owner(job) == "other"


def test_commit_is_idempotent_when_a_retry_finds_the_earlier_target(r):
    q = JobQueue(r, visibility_s=0.1)
    job_id = q.enqueue({"prompt": "x"})
    q.claim("dies-after-writing")
    pool = []  # stands in for the store: the dead worker wrote its target but never acknowledged
    pool.append(("t-first", job_id))
    time.sleep(0.15)
    retry = q.claim("retrier")
    target = q.commit(retry, find_existing=lambda: next((t for t, j in pool if j == job_id), None),
                      write=lambda: pool.append(("t-second", job_id)) or "t-second")
    assert target == "t-first" and len(pool) == 1
    assert q.get(job_id).target_id == "t-first"


def test_commit_lock_blocks_a_concurrent_commit(r):
    q = JobQueue(r)
    q.enqueue({"prompt": "x"})
    job = q.claim("w")
    r.set(f"captionary:jobs:commit:{job.id}", "someone-else")
    assert q.commit(job, lambda: None, lambda: "t") is None
    assert q.get(job.id).status == "running"


def test_errors_are_retried_then_parked_as_failed_with_the_error(r):
    q = JobQueue(r, max_attempts=2, visibility_s=0.05)
    job_id = q.enqueue({"prompt": "x"})
    job = q.claim("w")
    assert q.fail(job, "ValueError: bad size") == "queued"
    assert q.get(job_id).error == "ValueError: bad size"
    time.sleep(0.08)
    job = q.claim("w")
    assert job.attempts == 2
    assert q.fail(job, "ValueError: bad size again") == "failed"
    parked = q.get(job_id)
    assert parked.status == "failed" and "bad size again" in parked.error and "2 times" in parked.error
    assert q.pending_count() == 0
    time.sleep(0.08)
    assert q.claim("w") is None


def test_job_whose_workers_keep_dying_is_parked(r):
    q = JobQueue(r, max_attempts=2, visibility_s=0.05)
    job_id = q.enqueue({"prompt": "x"})
    assert q.claim("dies-1").attempts == 1
    time.sleep(0.08)
    assert q.claim("dies-2").attempts == 2
    time.sleep(0.08)
    assert q.claim("dies-3") is None  # third delivery exceeds max_attempts: parked, not run
    parked = q.get(job_id)
    assert parked.status == "failed" and "gave up after 2 attempts" in parked.error
    assert [j.id for j in q.list_jobs(status="failed")] == [job_id]


def test_list_jobs_newest_first_and_counts(r):
    clock = iter(range(100, 200))
    q = JobQueue(r, clock=lambda: float(next(clock)))
    a = q.enqueue({"n": 1})
    b = q.enqueue({"n": 2})
    q.claim("w")
    assert [j.id for j in q.list_jobs()] == [b, a]
    assert q.counts() == {"queued": 1, "running": 1, "done": 0, "rejected": 0, "failed": 0}


def test_group_created_after_enqueue_sees_the_job(r):
    r.xadd(STREAM, {"job": "orphan"})  # an entry whose record is missing is dropped, not run
    q = JobQueue(r)
    job_id = q.enqueue({"n": 1})
    assert q.claim("w").id == job_id
    assert not r.exists(job_key("orphan"))


def test_bad_settings_are_refused(r):
    with pytest.raises(ValueError):
        JobQueue(r, max_attempts=0)
    with pytest.raises(ValueError):
        JobQueue(r, visibility_s=0)


def test_released_job_is_claimable_at_once_without_using_an_attempt(r):
    q = JobQueue(r, visibility_s=60)
    job_id = q.enqueue({"prompt": "x"})
    job = q.claim("stopping")
    q.release(job)
    assert q.get(job_id).status == "queued"
    again = q.claim("other")
    assert again.id == job_id and again.attempts == 1 and q.owner(again) == "other"


def test_rejected_job_is_finished_and_never_retried(r):
    q = JobQueue(r, visibility_s=0.05)
    job_id = q.enqueue({"prompt": "x"})
    job = q.claim("w")
    q.reject(job, "rejected: self-score 0.1 below the threshold 0.4")
    time.sleep(0.08)
    assert q.claim("w") is None
    assert q.get(job_id).status == "rejected" and "below the threshold" in q.get(job_id).error
    assert q.pending_count() == 0
