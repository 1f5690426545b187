"""Worker heartbeats in Redis: which generator workers are alive and what each is doing.

A worker writes its heartbeat, a hash `captionary:workers:{name}` (state, job,
progress, counters), every second or so while working and at every idle turn;
the hash expires after HEARTBEAT_TTL_S, so a killed worker disappears by itself.
The set `captionary:workers` lists the names. The web pages (/admin/jobs,
/readyz, /metrics) and `flask targets jobs` read them with `live_workers`: they
import this module, never the worker loop (a process's entry point is a leaf).
"""
from __future__ import annotations

WORKERS_SET = "captionary:workers"
HEARTBEAT_TTL_S = 60


def beat(client, name: str, fields: dict) -> None:
    """Write a worker's heartbeat (name listed, hash replaced field by field, expiry renewed) in one transaction."""
    key = f"{WORKERS_SET}:{name}"
    pipe = client.pipeline(transaction=True)
    pipe.sadd(WORKERS_SET, name)
    pipe.hset(key, mapping=fields)
    pipe.expire(key, HEARTBEAT_TTL_S)
    pipe.execute()


def forget(client, name: str) -> None:
    """A worker stopping politely: its heartbeat goes at once instead of expiring."""
    client.delete(f"{WORKERS_SET}:{name}")
    client.srem(WORKERS_SET, name)


def live_workers(client) -> list[dict]:
    """Heartbeats of the workers alive now (expired ones are dropped from the set)."""
    out = []
    for raw in sorted(client.smembers(WORKERS_SET)):
        name = raw.decode() if isinstance(raw, bytes) else raw
        data = client.hgetall(f"{WORKERS_SET}:{name}")
        if not data:
            client.srem(WORKERS_SET, name)
            continue
        out.append({(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                    for k, v in data.items()})
    return out
