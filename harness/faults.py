"""Fault scenarios on real processes, shared by tests/ (test_faults.py) and bench/hardening.py.

  redis_kill_scenario   gunicorn + its own embedded redis-server; players submit in a stream;
                        redis-server gets SIGKILL mid-stream and is restarted; every submission
                        a player saw acknowledged (a `result` reply) must be in the day's log
  two_webs_scenario     two gunicorn web processes on one Redis: a board push crosses
                        processes, each submission is logged once; one process is killed -9
                        mid-load: typists on the other see no error, and the killed process's
                        players reconnect to the survivor with their cookie and resume

The worker kill -9 scenario is tests/system/test_worker_kill.py (bench/hardening.py runs it).
Each function returns what it measured; the tests assert, the bench prints.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from harness import servers
from harness.client import WSClient
from harness.settings import MODEL_ID


class Submitter(threading.Thread):
    """Submits unique captions one after another, reconnecting when its socket dies."""

    def __init__(self, name: str, urls: list[str], puzzle: str, stop: threading.Event, drafts: bool = False):
        super().__init__(name=name, daemon=True)
        self.tag, self.urls, self.puzzle, self.stop_event, self.drafts = name, list(urls), puzzle, stop, drafts
        self.acked: list[str] = []  # captions answered with a result
        self.errors: list[str] = []  # error codes received
        self.scores = 0
        self.reconnects = 0
        self.cookie = None
        self.player = None
        self.lock = threading.Lock()
        self.connect_error = None

    def _connect(self):
        for _ in range(100):
            url = self.urls[0]
            try:
                self.player = WSClient.player(url, cookie=self.cookie, timeout=10)
                self.cookie = self.player.cookie
                return
            except Exception as exc:  # the server we knew is gone: try the next one
                self.connect_error = exc
                if len(self.urls) > 1:
                    self.urls.append(self.urls.pop(0))
                time.sleep(0.1)
        raise RuntimeError(f"{self.tag}: could not connect: {self.connect_error}")

    def run(self):
        self._connect()
        n = 0
        while not self.stop_event.is_set():
            n += 1
            if self.drafts:
                msg = {"type": "draft", "seq": n, "puzzle": self.puzzle, "caption": f"{self.tag} typing {n}"}
                want = "score"
            else:
                msg = {"type": "submit", "puzzle": self.puzzle, "caption": f"{self.tag} caption {n}", "seq": n}
                want = "result"
            try:
                reply = self.player.ask(msg, None)
                while reply.get("type") == "board":
                    reply = self.player.recv()
            except Exception:
                self.reconnects += 1
                self.player.close()
                self._connect()
                continue
            with self.lock:
                if reply.get("type") == want:
                    if want == "result":
                        self.acked.append(msg["caption"])
                    else:
                        self.scores += 1
                else:
                    self.errors.append(reply.get("code", reply.get("type")))
            if reply.get("type") == "error":
                time.sleep(0.05)  # the page would show the error and the player would try again
            elif self.drafts:
                time.sleep(0.02)
        self.player.close()


def _logged_captions(redis_client) -> list[str]:
    from game.store import Store
    store = Store(redis_client, MODEL_ID)
    return [row["caption"] for row in store.submission_log(store.today(), count=1_000_000)]


def redis_kill_scenario(workdir: Path, embed_dim: int, players: int = 4, before_s: float = 1.5,
                        down_s: float = 1.0, after_s: float = 1.5) -> dict:
    from game.store import server as redis_server
    instance = str(Path(workdir) / "killed-redis")
    client = redis_server.connect(instance)
    url = "unix://" + redis_server.socket_path(instance)
    puzzles = servers.seed_today(client, embed_dim)
    # Scripted players answer-and-resend faster than any page: the per-connection frame budget is lifted.
    web = servers.Gunicorn(url, Path(workdir), "web-redis-kill", MAX_SUBMISSIONS=100000, SUBMIT_RATE=1000,
                         SUBMIT_BURST=1000, FRAME_RATE=1e6, FRAME_BURST=1e6)
    stop = threading.Event()
    try:
        web.wait_ready()
        subs = [Submitter(f"p{i}", [web.url], puzzles[i % len(puzzles)], stop) for i in range(players)]
        for s in subs:
            s.start()
        time.sleep(before_s)
        acked_before_kill = sum(len(s.acked) for s in subs)
        pid = redis_server.server_pid(instance)
        os.kill(pid, signal.SIGKILL)  # no shutdown, no final save: only what was fsynced survives
        time.sleep(down_s)
        client = redis_server.connect(instance)  # restart (a supervisor would); AOF replayed
        acked_at_restart = sum(len(s.acked) for s in subs)
        time.sleep(after_s)
        stop.set()
        for s in subs:
            s.join(30)
        acked = [c for s in subs for c in s.acked]
        logged = _logged_captions(client)
        lost = sorted(set(acked) - set(logged))
        return {"acked": len(acked), "acked_before_kill": acked_before_kill, "logged": len(logged),
                "lost_acks": len(lost), "lost_examples": lost[:5], "duplicates": len(logged) - len(set(logged)),
                "errors": sum(len(s.errors) for s in subs), "error_codes": sorted({c for s in subs for c in s.errors}),
                "acked_after_restart": len(acked) - acked_at_restart}
    finally:
        stop.set()
        web.stop()
        redis_server.stop(instance)


def two_webs_scenario(redis_url: str, redis_client, workdir: Path, embed_dim: int, load_s: float = 1.5,
                      after_s: float = 1.5) -> dict:
    puzzles = servers.seed_today(redis_client, embed_dim)
    opts = dict(MAX_SUBMISSIONS=100000, SUBMIT_RATE=1000, SUBMIT_BURST=1000, DRAFT_RATE=1000, DRAFT_BURST=1000,
                FRAME_RATE=1e6, FRAME_BURST=1e6)
    web1 = servers.Gunicorn(redis_url, Path(workdir), "web1", **opts)
    web2 = servers.Gunicorn(redis_url, Path(workdir), "web2", **opts)
    out: dict = {}
    stop = threading.Event()
    try:
        web1.wait_ready()
        web2.wait_ready()
        # One live board: a watcher on web1 sees a submission made on web2, once.
        watcher = WSClient.player(web1.url)
        watcher.ask({"type": "subscribe", "puzzles": [puzzles[0]]}, "subscribed")
        writer = WSClient.player(web2.url)
        result = writer.ask({"type": "submit", "puzzle": puzzles[0], "caption": "cross-process caption"}, "result")
        push = watcher.recv_until("board")
        out["push_seen"] = [e["score"] for e in push["entries"]] == [result["score"]]
        out["logged_once"] = _logged_captions(redis_client).count("cross-process caption") == 1
        watcher.close()
        writer.close()

        survivors = [Submitter(f"w2-typist{i}", [web2.url], puzzles[1], stop, drafts=True) for i in range(2)]
        survivors += [Submitter(f"w2-sub{i}", [web2.url], puzzles[1], stop) for i in range(1)]
        movers = [Submitter(f"w1-sub{i}", [web1.url, web2.url], puzzles[2], stop) for i in range(2)]
        for s in survivors + movers:
            s.start()
        time.sleep(load_s)
        before = sum(s.scores for s in survivors)
        web1.kill9()
        time.sleep(after_s)
        stop.set()
        for s in survivors + movers:
            s.join(30)
        out["survivor_errors"] = sum(len(s.errors) for s in survivors)
        out["survivor_error_codes"] = sorted({c for s in survivors for c in s.errors})
        out["survivor_reconnects"] = sum(s.reconnects for s in survivors)
        out["survivor_scores_after_kill"] = sum(s.scores for s in survivors) - before
        out["movers_reconnected"] = all(s.reconnects >= 1 for s in movers)
        out["movers_acked_after_move"] = [len(s.acked) for s in movers]
        # Resume: each mover's cookie on the survivor sees exactly what it was acknowledged (and
        # at most one more, whose reply the kill swallowed), in one attempts list.
        resumed = []
        for s in movers:
            p = WSClient.player(web2.url, cookie=s.cookie)
            state = p.ask({"type": "hello", "puzzle": puzzles[2]}, "state")
            p.close()
            attempts = [a["caption"] for a in state["puzzle"]["attempts"]]
            resumed.append(set(s.acked) <= set(attempts) and len(attempts) - len(s.acked) in (0, 1))
        out["movers_resumed"] = all(resumed)
        logged = _logged_captions(redis_client)
        acked = [c for s in survivors + movers for c in s.acked]
        out["lost_acks"] = len(set(acked) - set(logged))
        out["duplicates"] = len(logged) - len(set(logged))
        return out
    finally:
        stop.set()
        web1.stop()
        web2.stop()
