"""Explanations under the Procfile's gunicorn: the worker spawns its niced explanation child, answers
from it, and the child dies with the worker.

The in-process tests (tests/game/test_explain_process.py) cover the child's numbers, pausing and
restarts; this one checks the same machinery inside a real gunicorn gthread worker, whose main
module the spawned child must be able to import."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import requests

from harness import servers
from harness.client import new_player_cookie


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_gunicorn_worker_explains_in_its_child_process(redis_url, redis_client, tmp_path, tiny_clip):
    yesterday = servers.seed_revealed_day(redis_client, tiny_clip.embed_dim)
    with servers.Gunicorn(redis_url, tmp_path) as web:
        web.wait_ready()
        [worker] = web.worker_pids()
        assert children(worker) == []  # nothing is spawned before the first explanation
        cookie = new_player_cookie(web.url)
        headers = {"Cookie": cookie, "Origin": web.url}
        words = requests.post(f"{web.url}/api/explain/words", headers=headers, timeout=60,
                              json={"target": yesterday[0], "caption": "a green and red square"})
        assert words.status_code == 200, (words.status_code, words.text, web.log())
        assert [w["word"] for w in words.json()["words"]] == ["a", "green", "and", "red", "square"]
        heat = requests.post(f"{web.url}/api/explain/heatmap", headers=headers, timeout=60,
                             json={"target": yesterday[1], "caption": "a square"})
        assert heat.status_code == 200, (heat.status_code, heat.text, web.log())
        assert heat.json()["rows"] >= 1
        spawned = {c: Path(f"/proc/{c}/cmdline").read_bytes() for c in children(worker)}
        # The explanation child, and multiprocessing's resource tracker that "spawn" starts beside it.
        [child] = [c for c, cmd in spawned.items() if b"spawn_main" in cmd]
        assert all(b"spawn_main" in cmd or b"resource_tracker" in cmd for cmd in spawned.values()), spawned
        assert os.getpriority(os.PRIO_PROCESS, child) == 19
        os.kill(worker, signal.SIGKILL)  # the worker dies without cleaning up: so must its child
        deadline = time.monotonic() + 20
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child), "the explanation process outlived its gunicorn worker"
        deadline = time.monotonic() + 20
        while any(alive(c) for c in spawned) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(c) for c in spawned), "the resource tracker outlived its gunicorn worker"
