"""The generation job queue: Redis streams with a consumer group.

Why streams and not a list: a consumer group remembers which worker holds each
job (the pending entries list), so a worker killed with -9 loses nothing; after
a visibility timeout another worker takes the job over with XAUTOCLAIM. The
stream's delivery counter counts every hand-out, including the ones to workers
that died, so a job that keeps crashing its workers is parked as failed after
`max_attempts` deliveries instead of looping forever.

Keys (all under `captionary:jobs:`):
  stream            the stream; one entry per job, field `job` = job id
  job:<id>          hash: id, payload (JSON), status, attempts, error, worker,
                    created_at, started_at, finished_at, target_id, entry
  index             sorted set job id -> created_at, for listing (trimmed)
  commit:<id>       short-lived lock held while a worker commits the result

Status: queued -> running -> done | rejected (finished, no target: below the
score threshold) | failed (parked after max_attempts). A job whose worker died reads
"running" until another worker claims it (`list_jobs` shows the heartbeat age).
The entry is acknowledged (XACK) only after its target is committed, so a crash
anywhere before that point means a retry, never a loss; the commit itself is
idempotent (see `JobQueue.commit`).
"""
from __future__ import annotations

import json
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional

import redis

PREFIX = "captionary:jobs:"
STREAM = PREFIX + "stream"
GROUP = "workers"
INDEX = PREFIX + "index"
INDEX_LIMIT = 1000  # job records kept for `targets jobs` and the admin page
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_VISIBILITY_S = 300.0
STATUSES = ("queued", "running", "done", "rejected", "failed")
COMMIT_LOCK_MS = 60_000  # long enough for one add_target; short enough for a dead holder to expire


_TOUCH_LUA = """
local rows = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #rows == 0 or rows[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""


def _s(value: Any) -> Any:
    """Decode bytes from a client without decode_responses; leave str/None alone."""
    return value.decode() if isinstance(value, bytes) else value


def job_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


@dataclass
class Job:
    """One generation job as stored in Redis."""

    id: str
    payload: dict  # what to generate: prompt, size, iterations, seeds, ... (see game.generation.service.job_payload)
    status: str  # queued | running | done | rejected | failed
    attempts: int = 0  # deliveries so far (from the stream's counter)
    error: Optional[str] = None  # last error; for a failed job, why it was parked
    worker: Optional[str] = None  # consumer name of the last worker that took it
    created_at: float = 0.0
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    target_id: Optional[str] = None  # set when done
    entry: Optional[str] = None  # stream entry id (internal)
    progress: Optional[str] = None  # "iteration/total" as last reported by the running worker

    @classmethod
    def from_hash(cls, data: dict) -> "Job":
        d = {_s(k): _s(v) for k, v in data.items()}

        def num(name, conv=float):
            return conv(d[name]) if d.get(name) not in (None, "") else None

        return cls(id=d["id"], payload=json.loads(d.get("payload") or "{}"), status=d.get("status", "queued"),
                   attempts=num("attempts", int) or 0, error=d.get("error") or None, worker=d.get("worker") or None,
                   created_at=num("created_at") or 0.0, started_at=num("started_at"),
                   finished_at=num("finished_at"), target_id=d.get("target_id") or None,
                   entry=d.get("entry") or None, progress=d.get("progress") or None)


def default_consumer_name() -> str:
    """host:pid:random — unique per worker process, readable in `targets jobs`."""
    return f"{socket.gethostname()}:{__import__('os').getpid()}:{uuid.uuid4().hex[:6]}"


class JobQueue:
    """Producer and consumer side of the queue over one Redis client."""

    def __init__(self, client: redis.Redis, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 visibility_s: float = DEFAULT_VISIBILITY_S, clock: Callable[[], float] = time.time):
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if visibility_s <= 0:
            raise ValueError("visibility_s must be positive")
        self.r = client
        self.max_attempts = int(max_attempts)
        self.visibility_ms = int(visibility_s * 1000)
        self.clock = clock
        self._group_ready = False

    # -- producer ---------------------------------------------------------
    def ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            # id "0": a group created after jobs were enqueued still sees them.
            self.r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def enqueue(self, payload: dict) -> str:
        """Store the job record and add it to the stream in one transaction; returns the job id."""
        self.ensure_group()
        job_id = uuid.uuid4().hex[:12]
        now = self.clock()
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(job_key(job_id), mapping={"id": job_id, "payload": json.dumps(payload, sort_keys=True),
                                             "status": "queued", "attempts": 0, "created_at": now})
        pipe.zadd(INDEX, {job_id: now})
        pipe.xadd(STREAM, {"job": job_id})
        results = pipe.execute()
        self.r.hset(job_key(job_id), "entry", _s(results[-1]))
        self._trim_index()
        return job_id

    def get(self, job_id: str) -> Optional[Job]:
        data = self.r.hgetall(job_key(job_id))
        return Job.from_hash(data) if data else None

    def list_jobs(self, status: Optional[str] = None, limit: int = 100) -> list[Job]:
        """Newest first."""
        ids = [_s(i) for i in self.r.zrevrange(INDEX, 0, -1)]
        jobs = []
        for job_id in ids:
            job = self.get(job_id)
            if job is None or (status and job.status != status):
                continue
            jobs.append(job)
            if len(jobs) >= limit:
                break
        return jobs

    def counts(self) -> dict[str, int]:
        out = {status: 0 for status in STATUSES}
        for job in self.list_jobs(limit=INDEX_LIMIT):
            out[job.status] = out.get(job.status, 0) + 1
        return out

    def pending_count(self) -> int:
        """Jobs not finished yet (queued or held by a worker): finished entries are deleted."""
        return int(self.r.xlen(STREAM))

    def _trim_index(self) -> None:
        # Old finished records go; queued/running/failed ones stay listed until they finish.
        extra = self.r.zcard(INDEX) - INDEX_LIMIT
        if extra <= 0:
            return
        for job_id in [_s(i) for i in self.r.zrange(INDEX, 0, extra - 1)]:
            if _s(self.r.hget(job_key(job_id), "status")) in ("done", "rejected"):
                self.r.delete(job_key(job_id))
                self.r.zrem(INDEX, job_id)

    # -- consumer ---------------------------------------------------------
    def claim(self, consumer: str, block_ms: int = 0) -> Optional[Job]:
        """The next job for `consumer`: first one abandoned by a dead worker, else a new one.

        Returns None when there is nothing to do. A job already delivered more
        than max_attempts times is parked as failed here and the next one is tried.
        """
        self.ensure_group()
        while True:
            entry_id, job_id = self._claim_stale(consumer)
            if entry_id is None:
                entry_id, job_id = self._read_new(consumer, block_ms)
            if entry_id is None:
                return None
            job = self._start(entry_id, job_id, consumer)
            if job is not None:
                return job

    def _claim_stale(self, consumer: str):
        result = self.r.xautoclaim(STREAM, GROUP, consumer, min_idle_time=self.visibility_ms,
                                   start_id="0-0", count=1)
        messages = result[1] if len(result) > 1 else []
        for entry_id, fields in messages:
            if fields is None:  # entry deleted under us; drop it from the pending list
                self.r.xack(STREAM, GROUP, entry_id)
                continue
            return _s(entry_id), _s(fields.get(b"job", fields.get("job")))
        return None, None

    def _read_new(self, consumer: str, block_ms: int):
        reply = self.r.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=1, block=block_ms or None)
        for _stream, messages in reply or []:
            for entry_id, fields in messages:
                return _s(entry_id), _s(fields.get(b"job", fields.get("job")))
        return None, None

    def _deliveries(self, entry_id: str) -> int:
        rows = self.r.xpending_range(STREAM, GROUP, min=entry_id, max=entry_id, count=1)
        return int(rows[0]["times_delivered"]) if rows else 1

    def _start(self, entry_id: str, job_id: Optional[str], consumer: str) -> Optional[Job]:
        job = self.get(job_id) if job_id else None
        if job is None:  # a stream entry without a record: nothing to run
            self._finish_entry(entry_id)
            return None
        if job.status in ("done", "rejected", "failed"):  # finished by a worker whose XACK did not land
            self._finish_entry(entry_id)
            return None
        attempts = self._deliveries(entry_id)
        if attempts > self.max_attempts:
            reason = job.error or "the worker died or timed out during every attempt"
            self._park(job.id, entry_id, f"gave up after {self.max_attempts} attempts: {reason}", attempts - 1)
            return None
        now = self.clock()
        self.r.hset(job_key(job.id), mapping={"status": "running", "worker": consumer, "attempts": attempts,
                                               "started_at": now, "entry": entry_id, "progress": ""})
        job.status, job.worker, job.attempts, job.started_at, job.entry = "running", consumer, attempts, now, entry_id
        return job

    def owner(self, job: Job) -> Optional[str]:
        """The consumer currently holding the job's entry, or None once it is acknowledged."""
        rows = self.r.xpending_range(STREAM, GROUP, min=job.entry, max=job.entry, count=1)
        return _s(rows[0]["consumer"]) if rows else None

    def touch(self, job: Job, consumer: str) -> bool:
        """Reset the entry's idle time so a live worker's long job is not taken over.

        Returns False when another worker has already taken the job over (then
        this one must not steal it back; its commit will find the other's target).
        """
        # Atomic check-and-claim; JUSTID resets the idle time without counting another delivery.
        return bool(self.r.eval(_TOUCH_LUA, 1, STREAM, GROUP, consumer, job.entry))

    def commit(self, job: Job, find_existing: Callable[[], Optional[str]],
               write: Callable[[], str]) -> Optional[str]:
        """Commit a job's result exactly once, then acknowledge it.

        `find_existing()` returns the id of a target an earlier attempt already
        committed for this job (or None); `write()` writes the target and returns
        its id. A lock stops two live workers committing at once; if a holder
        died mid-commit the lock expires and the next one finds what it wrote.
        Returns the target id, or None when another worker holds the commit lock.
        """
        lock = f"{PREFIX}commit:{job.id}"
        token = uuid.uuid4().hex
        if not self.r.set(lock, token, nx=True, px=COMMIT_LOCK_MS):
            return None
        try:
            target_id = find_existing() or write()
            self._done(job, target_id)
            return target_id
        finally:
            # Release only our own lock (a slow holder must not delete a successor's).
            self.r.eval("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0",
                        1, lock, token)

    def reject(self, job: Job, note: str) -> None:
        """Finish a job that ran fine but produced no target (below the score threshold): not retried."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(job_key(job.id), mapping={"status": "rejected", "finished_at": self.clock(), "error": note})
        pipe.xack(STREAM, GROUP, job.entry)
        pipe.xdel(STREAM, job.entry)
        pipe.execute()

    def fail(self, job: Job, error: str) -> str:
        """Record an attempt's error. Parks the job as failed once attempts are used up.

        Otherwise the entry stays pending (not acknowledged) and is retried by
        whichever worker claims it after the visibility timeout. Returns the new status.
        """
        if job.attempts >= self.max_attempts:
            self._park(job.id, job.entry, f"failed {job.attempts} times; last error: {error}", job.attempts)
            return "failed"
        self.r.hset(job_key(job.id), mapping={"status": "queued", "error": error, "worker": ""})
        return "queued"

    def release(self, job: Job) -> None:
        """Hand an unfinished job back (its worker is stopping): claimable at once, attempt not counted.

        The entry's idle time is set past the visibility timeout so the next
        XAUTOCLAIM takes it; that claim counts a delivery, so the count is
        lowered by one here first (XCLAIM RETRYCOUNT).
        """
        self.r.xclaim(STREAM, GROUP, job.worker or "released", min_idle_time=0, message_ids=[job.entry],
                      idle=self.visibility_ms + 1, retrycount=max(0, job.attempts - 1), justid=True)
        self.r.hset(job_key(job.id), mapping={"status": "queued", "worker": ""})

    def _done(self, job: Job, target_id: str) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(job_key(job.id), mapping={"status": "done", "finished_at": self.clock(), "target_id": target_id,
                                             "error": ""})
        pipe.xack(STREAM, GROUP, job.entry)
        pipe.xdel(STREAM, job.entry)
        pipe.execute()

    def _park(self, job_id: str, entry_id: str, error: str, attempts: int) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(job_key(job_id), mapping={"status": "failed", "error": error, "attempts": attempts,
                                             "finished_at": self.clock()})
        pipe.xack(STREAM, GROUP, entry_id)
        pipe.xdel(STREAM, entry_id)
        pipe.execute()

    def _finish_entry(self, entry_id: str) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.xack(STREAM, GROUP, entry_id)
        pipe.xdel(STREAM, entry_id)
        pipe.execute()
