"""Rooms load benchmark: R rooms of P typing players play a few rounds against one web process.

The server is the Procfile's `web:` line run verbatim (gunicorn, gthread worker;
harness.servers, with harness.settings) on its own embedded Redis, with the judge
chosen by `--model`: `test-tiny` (the tiny test CLIP) or `ViT-B-32` (the full-size
architecture); both with seeded random weights, so the scores mean nothing and what
is measured is the cost. A finished day of pictures is seeded first
(harness.servers.seed_revealed_day), so rooms draw from the archive as players' rooms do.

This process is the load generator: every player is a websocket client here (its page
loaded over HTTP for the session cookie, the page's Origin), with a reader thread
and a typing thread, like bench/ws_load.py's players (whose word list and pace this
reuses: a key every 120-300 ms, a draft DEBOUNCE_MS after the last key, read from
game/web/static/room.js as the page has it, or at once after a space). In each room
the host creates it, the others join by its code; then, each round, everyone types
one caption for `--type-seconds`, waits for the score of its last draft, pauses a
second (reading the bars) and locks in; the round ends when all have locked in, and
the host starts the next once everyone has seen the reveal.

Latency p is from sending a draft to the first live-bar message (`room_bars`) at
*another* player of the room that shows that draft's score or a later draft's of the
same player (the server throttles bars to <= 10 messages per room per second, so a
draft overtaken inside a window is shown by the next bar). It is measured at every
other player, so one draft gives P-1 samples. Errors: error replies, drafts never
answered, drafts whose bar never reached some other player, rooms that did not reach
the podium, and sockets that failed. bar_updates_per_s counts `room_bars` messages
arriving at players, all rooms together, per second of play.

Last line, exactly:
  rooms: rooms=<R> players=<n> bar_updates_per_s=<u> p50_ms=<a> p99_ms=<b> errors=<e>
where n is the number of players in all rooms (R x P).

Usage: python bench/rooms_load.py [--quick] [--rooms R] [--players P] [--rounds N]
                                  [--type-seconds S] [--model test-tiny|ViT-B-32] [--port PORT]
"""
from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

from ws_load import WORDS, judge_line, percentile, server_judge  # bench/ is this script's folder

ROOT = Path(__file__).resolve().parents[1]

MODELS = {"test-tiny": None, "ViT-B-32": 512}  # embed dims (test-tiny's is read from its shipped config)
ROOM_JS = ROOT / "game" / "web" / "static" / "room.js"
SETTLE_S = 1.0  # a player reads the bars this long after its last score before locking in


def room_debounce_s() -> float:
    """The room page's typing pause before it sends a draft (DEBOUNCE_MS in room.js)."""
    match = re.search(r"\bDEBOUNCE_MS\s*=\s*(\d+)", ROOM_JS.read_text(encoding="utf-8"))
    if match is None:
        raise SystemExit(f"no DEBOUNCE_MS constant in {ROOM_JS}")
    return int(match.group(1)) / 1000.0


DEBOUNCE_S = room_debounce_s()
SCORE_MATCH = 1e-5  # replies round scores to 6 decimals; bars carry them whole


def embed_dim(model: str) -> int:
    if MODELS[model] is not None:
        return MODELS[model]
    return int(json.loads((ROOT / "engine" / "model_configs" / f"{model}.json").read_text())["embed_dim"])


class Stats:
    """Counters shared by every player thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.errors = 0
        self.codes: dict[str, int] = {}
        self.sent = self.dropped = self.bar_messages = 0

    def error(self, code: str) -> None:
        with self.lock:
            self.errors += 1
            self.codes[code] = self.codes.get(code, 0) + 1

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + n)


class RoomPlayer:
    """One player of one room: a websocket, a reader thread, and what it sent and saw."""

    def __init__(self, base: str, room_idx: int, idx: int, stats: Stats):
        from harness.client import WSClient
        self.room_idx, self.idx, self.stats = room_idx, idx, stats
        self.rng = random.Random(room_idx * 1000 + idx)
        self.ws = WSClient.player(base, timeout=60).ws  # the raw socket: the reader thread times messages
        self.pub = None
        self.code = None
        self.seq = 0
        self.pending: dict[int, tuple[int, float]] = {}  # seq -> (round, send time)
        self.plock = threading.Lock()
        self.drafts: list[tuple[int, float, float]] = []  # (round, send time, score) of scored drafts
        self.score_ms: list[float] = []  # draft -> its own room_score reply, ms (the judge's part of p)
        self.bars: list[tuple[float, int, dict]] = []  # (arrival, round, bars) of every room_bars message
        self.events: dict[str, threading.Event] = {}
        self.elock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True, name=f"room{room_idx}-p{idx}")
        self.reader.start()

    def event(self, name: str) -> threading.Event:
        with self.elock:
            return self.events.setdefault(name, threading.Event())

    def send(self, msg: dict) -> None:
        self.ws.send(json.dumps(msg))

    def _read(self) -> None:
        from harness.client import timed_messages
        for now, msg in timed_messages(self.ws):
            kind = msg.get("type")
            if kind == "room_bars":
                self.bars.append((now, msg["round"], msg["bars"]))
                self.stats.add("bar_messages")
            elif kind == "room_score":
                with self.plock:
                    sent = self.pending.pop(msg["seq"], None)
                if sent is not None:
                    self.drafts.append((sent[0], sent[1], msg["score"]))
                    self.score_ms.append((now - sent[1]) * 1000)
            elif kind == "dropped":
                with self.plock:
                    self.pending.pop(msg["seq"], None)
                self.stats.add("dropped")
            elif kind == "room":
                if msg["phase"] == "round":
                    self.event(f"round{msg['round']}").set()
                elif msg["phase"] in ("reveal", "over"):
                    self.event(f"end{msg['round']}").set()
            elif kind == "room_created":
                self.code = msg["room"]
                self.event("created").set()
            elif kind == "room_joined":
                self.pub = msg["you"]["player"]
                self.event("joined").set()
            elif kind in ("room_locked", "room_done"):
                self.event(kind).set()
            elif kind == "error":
                if msg.get("seq") is not None:
                    with self.plock:
                        self.pending.pop(msg["seq"], None)
                self.stats.error(msg.get("code", "?"))

    def wait(self, name: str, timeout: float) -> None:
        if not self.event(name).wait(timeout):
            raise TimeoutError(f"room {self.room_idx} player {self.idx}: no {name} in {timeout:.0f}s")

    def draft(self, round_no: int, text: str) -> None:
        self.seq += 1
        with self.plock:
            self.pending[self.seq] = (round_no, time.perf_counter())
        self.send({"type": "room_draft", "seq": self.seq, "room": self.code, "round": round_no, "caption": text})
        self.stats.add("sent")

    def outstanding(self) -> int:
        with self.plock:
            return len(self.pending)

    def type_round(self, round_no: int, seconds: float) -> str:
        """Type captions at human pace for `seconds` (ws_load's rhythm); the text typed last."""
        stop_at = time.perf_counter() + seconds
        text = ""
        while time.perf_counter() < stop_at:
            caption = " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(4, 10)))
            text = ""
            for ch in caption:
                text += ch
                gap = self.rng.uniform(0.12, 0.30)
                if ch == " ":  # a word ended: the page sends at once
                    self.draft(round_no, text)
                elif gap >= DEBOUNCE_S:  # the page's debounce fires before the next key
                    time.sleep(DEBOUNCE_S)
                    self.draft(round_no, text)
                    gap -= DEBOUNCE_S
                time.sleep(gap)
                if time.perf_counter() >= stop_at:
                    break
        if text.strip():
            self.draft(round_no, text)  # what the page sends once the typing stops
        return text.strip() or "a photo"

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass


def play_room(base: str, room_idx: int, players: int, rounds: int, type_s: float, stats: Stats,
              out: list) -> None:
    """One room from creation to the podium; its players land in `out` (for the latency pass)."""
    people = []
    try:
        people = [RoomPlayer(base, room_idx, i, stats) for i in range(players)]
        out.extend(people)
        host = people[0]
        host.send({"type": "room_create", "nickname": f"r{room_idx}p0x", "rounds": rounds,
                   "seconds": int(min(300, max(15, type_s + 45))), "source": "archive"})
        host.wait("created", 60)
        for p in people:
            p.code = host.code
            p.send({"type": "room_join", "room": host.code, "nickname": f"r{room_idx}p{p.idx}x"})
            p.wait("joined", 60)
        barrier = threading.Barrier(players)

        def play(p: RoomPlayer) -> None:
            for n in range(1, rounds + 1):
                if p is host:
                    p.send({"type": "room_start" if n == 1 else "room_next", "room": p.code})
                p.wait(f"round{n}", 60)
                text = p.type_round(n, type_s)
                deadline = time.perf_counter() + 10
                while p.outstanding() and time.perf_counter() < deadline:
                    time.sleep(0.02)
                time.sleep(SETTLE_S)
                p.send({"type": "room_lock", "room": p.code, "round": n, "caption": text})
                p.wait(f"end{n}", 60 + type_s)
                barrier.wait(60)  # everyone has seen the reveal before the host starts the next round

        threads = [threading.Thread(target=_guarded, args=(play, p, stats), daemon=True) for p in people]
        for t in threads:
            t.start()
        for t in threads:
            t.join(rounds * (type_s + 180))
        if not host.event(f"end{rounds}").is_set():
            stats.error("room_not_finished")
    except Exception as exc:
        stats.error(f"room: {exc}"[:80])


def _guarded(fn, player, stats: Stats) -> None:
    try:
        fn(player)
    except Exception as exc:
        stats.error(f"player: {type(exc).__name__}: {exc}"[:80])


def bar_latencies(people: list[RoomPlayer]) -> tuple[list[float], int]:
    """(latencies in ms, undelivered) over every (drafter, other player of the room, round)."""
    latencies, undelivered = [], 0
    rooms: dict[int, list[RoomPlayer]] = {}
    for p in people:
        rooms.setdefault(p.room_idx, []).append(p)
    for members in rooms.values():
        for drafter in members:
            by_round: dict[int, list[tuple[float, float]]] = {}
            for round_no, sent, score in drafter.drafts:
                by_round.setdefault(round_no, []).append((sent, score))
            for round_no, drafts in by_round.items():
                drafts.sort()
                times = [t for t, _ in drafts]
                for other in members:
                    if other is drafter:
                        continue
                    delivered = 0  # drafts[:delivered] have been shown at `other`
                    for arrived, bar_round, bars in other.bars:
                        value = bars.get(drafter.pub)
                        if bar_round != round_no or value is None:
                            continue
                        # The newest draft sent before this message arrived whose score it shows.
                        j = bisect.bisect_right(times, arrived) - 1
                        while j >= delivered and abs(drafts[j][1] - value) > SCORE_MATCH:
                            j -= 1
                        if j < delivered:
                            continue
                        latencies.extend((arrived - t) * 1000 for t in times[delivered:j + 1])
                        delivered = j + 1
                    undelivered += len(drafts) - delivered
    return latencies, undelivered


def run(base: str, rooms: int, players: int, rounds: int, type_s: float) -> dict:
    stats = Stats()
    people: list[RoomPlayer] = []
    outs = [[] for _ in range(rooms)]
    print(f"load: {rooms} rooms x {players} players, {rounds} round(s), {type_s:.0f}s of typing per round",
          flush=True)
    start = time.perf_counter()
    threads = [threading.Thread(target=play_room, args=(base, r, players, rounds, type_s, stats, outs[r]),
                                daemon=True) for r in range(rooms)]
    for t in threads:
        t.start()
        time.sleep(0.2)  # rooms open over a couple of seconds, not in one instant
    for t in threads:
        t.join(rounds * (type_s + 240) + 120)
    elapsed = time.perf_counter() - start
    for out in outs:
        people.extend(out)
    unanswered = sum(p.outstanding() for p in people)
    for p in people:
        p.close()
    latencies, undelivered = bar_latencies(people)
    errors = stats.errors + unanswered + undelivered
    scored = sum(len(p.drafts) for p in people)
    print(f"drafts sent {stats.sent}, scored {scored}, dropped (overtaken) {stats.dropped}, unanswered "
          f"{unanswered}; bar messages received {stats.bar_messages} in {elapsed:.1f}s "
          f"({stats.bar_messages / max(1, len(people)) / elapsed:.1f}/s per player); draft-to-bar samples "
          f"{len(latencies)}, never shown {undelivered}")
    if stats.codes:
        print("errors by code:", stats.codes)
    own = [ms for p in people for ms in p.score_ms]
    print(f"draft -> own score reply, ms: p50 {percentile(own, 50):.1f} p90 {percentile(own, 90):.1f} "
          f"p99 {percentile(own, 99):.1f} (the judge's and the request's part of p; the rest is the bar's way)")
    print(f"draft -> bar at another player, ms: p50 {percentile(latencies, 50):.1f} "
          f"p90 {percentile(latencies, 90):.1f} p99 {percentile(latencies, 99):.1f} "
          f"max {max(latencies, default=float('nan')):.1f}", flush=True)
    return {"players": len(people) or rooms * players, "bar_updates_per_s": stats.bar_messages / elapsed,
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99), "errors": errors}


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes used so far (Linux /proc), to tell a busy server from a busy box."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def warm_up(base: str, drafts: int = 30) -> None:
    """The first drafts of a fresh process pay for one-time work: a one-player room, not measured."""
    from harness.client import WSClient
    t0 = time.perf_counter()
    ws = WSClient.player(base, timeout=60)
    try:
        code = ws.ask({"type": "room_create", "nickname": "warmup", "rounds": 1, "seconds": 300,
                       "source": "archive"}, "room_created")["room"]
        ws.ask({"type": "room_join", "room": code}, "room_joined")
        ws.ask({"type": "room_start", "room": code}, "room_done")
        for i in range(drafts):
            ws.ask({"type": "room_draft", "seq": i + 1, "room": code, "round": 1,
                    "caption": " ".join(WORDS[:i % 12 + 1])}, "room_score")
        ws.ask({"type": "room_leave", "room": code}, "room_done")
    finally:
        ws.close()
    print(f"warm-up: {drafts} drafts in {time.perf_counter() - t0:.1f}s", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rooms x 3 players, 1 round of 4 s typing")
    parser.add_argument("--rooms", type=int)
    parser.add_argument("--players", type=int, help="players per room")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--type-seconds", type=float, help="typing per player per round")
    parser.add_argument("--model", choices=sorted(MODELS), default="ViT-B-32",
                        help="the judge (random weights either way: scores mean nothing)")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    args = parser.parse_args(argv)
    rooms = args.rooms or (2 if args.quick else 10)
    players = args.players or (3 if args.quick else 8)
    rounds = args.rounds or (1 if args.quick else 3)
    type_s = args.type_seconds or (4.0 if args.quick else 12.0)
    if rooms < 1 or not 2 <= players <= 24 or not 1 <= rounds <= 20 or type_s <= 0:
        parser.error("need rooms >= 1, 2 to 24 players per room, 1 to 20 rounds and some typing time")

    instance = tempfile.mkdtemp(prefix="captionary-roomsload-")
    from game.store import server as redis_server
    from harness import servers
    web = None
    try:
        client = redis_server.connect(instance)  # the bench's own embedded Redis
        servers.seed_revealed_day(client, embed_dim(args.model), n=max(3, rounds),
                                  model_id=f"{args.model}/random")
        client.close()
        web = servers.Gunicorn("unix://" + redis_server.socket_path(instance), Path(instance),
                               port=args.port or None, CLIP_MODEL=args.model, CLIP_PRETRAINED="random",
                               TORCH_THREADS=None, PUZZLES_PER_DAY=max(3, rounds))
        print(f"server: {servers.procfile_web(web.port)}  (CLIP {args.model}/random: random weights, "
              "scores meaningless)", flush=True)
        t0 = time.perf_counter()
        try:
            web.wait_ready(timeout=180)
        except RuntimeError as exc:
            raise SystemExit(str(exc))
        print(f"server ready in {time.perf_counter() - t0:.1f}s", flush=True)
        warm_up(web.url)
        workers = web.worker_pids()
        cpu0, bench0, wall0 = cpu_seconds(workers), time.process_time(), time.perf_counter()
        judge0 = server_judge(web.url)
        result = run(web.url, rooms, players, rounds, type_s)
        wall = time.perf_counter() - wall0
        print(judge_line(judge0, server_judge(web.url), wall), flush=True)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"CPU during the load: web worker {cpu_seconds(workers) - cpu0:.1f}s, this load generator "
              f"{time.process_time() - bench0:.1f}s, over {wall:.1f}s of wall time on {os.cpu_count()} cores "
              f"(load average {load:.1f}: other processes share the cores)", flush=True)
        print(f"rooms: rooms={rooms} players={result['players']} bar_updates_per_s={result['bar_updates_per_s']:.1f} "
              f"p50_ms={result['p50_ms']:.1f} p99_ms={result['p99_ms']:.1f} errors={result['errors']}", flush=True)
        return 0
    finally:
        servers.tear_down(web, instance)


if __name__ == "__main__":
    sys.exit(main())
