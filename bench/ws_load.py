"""Websocket load benchmark: N players typing at human pace against the server as the Procfile runs it.

The server is the Procfile's `web:` line, run verbatim by bash (gunicorn,
gthread worker; harness.servers, with the settings of harness.settings) with
`CAPTIONARY_CLIP_MODEL=ViT-B-32 CAPTIONARY_CLIP_PRETRAINED=random`:
the full-size architecture with seeded random weights (same compute as the
trained model; the scores mean nothing). It gets a fresh instance folder and
its own embedded Redis. Three targets are put in the pool beforehand with
seeded random unit embeddings (what a draft costs does not depend on the
image; this keeps start-up short) and the day is frozen.

Each simulated player loads the page over HTTP (session cookie), opens the
websocket with the page's Origin, says hello, subscribes to its puzzle's board,
then types captions keystroke by keystroke at human pace (120-300 ms per key,
~60 words per minute) with the play page's rule: a draft once typing pauses
for the page's PAUSE_MS (read from game/web/static/play.js; --pause-ms
overrides it to measure other values), or at once after a space. After each caption it submits
(while submissions remain) and starts another. Latency is measured from
sending a draft to receiving its `score`; a draft that a newer one overtook
gets `dropped` and counts as neither. Errors: error replies, drafts never
answered, and sockets that fail.

`--stalled N` adds N clients that subscribe to every board and never read
their socket (a 4 KiB receive buffer): the server must close them (their
outbox fills or a write times out, game/web/ws.py) while the players' drafts and
board pushes go on. Closing needs their socket buffers full (megabytes of
pushes on loopback), so a short run normally reports 0 closed: what matters is
that the push latency does not grow with N. Board push latency is measured from sending a submission
that improved the player's best to receiving the next board push.

Last line, exactly:
  ws_load: players=<n> drafts_per_s=<x> p50_ms=<a> p99_ms=<b> errors=<e>
where drafts_per_s is the offered rate (drafts sent per second of load).

`--capacity` steps the number of typists (10, 20, 30, 45, 60, 90, 120; 15 s each unless
--seconds) on one server, one load run per step, and prints last
  ws_capacity: typists=<n> drafts_per_s=<x> p50_ms=<a> p99_ms=<b> errors=<e>
for the largest step whose p99 stays <= 150 ms with no errors (typists=0 when
none does); steps stop early once a p99 passes 450 ms.

Each run also prints the drafts offered per typist per second (the page's
pause decides it) and the server's torch threads (--threads N sets the web
process's CAPTIONARY_TORCH_THREADS; default: the scorer's own choice).

`--profile FILE` samples the web worker with py-spy (a dev tool, not in
requirements.txt: `pip install py-spy`) during the load run, writes py-spy's
raw (collapsed) stacks to FILE and prints where the worker's busy time went:
websocket and JSON, Redis round trips, tokenization, the encoder's per-layer
Python, attention, GEMMs, the rest (`profile_breakdown`).

Usage: python bench/ws_load.py [--quick] [--capacity] [--players N] [--seconds S] [--port P] [--stalled N]
                               [--pause-ms MS] [--threads N] [--profile FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

WORDS = ("a photo of the red old wooden small big tiny dog cat bird astronaut rocket coffee cup coins "
         "woman man portrait painting sky night city street blue green yellow bright dark galaxy stars "
         "space launch tower smoke steam table morning light shadow field river mountain snow").split()
MODEL, PRETRAINED = "ViT-B-32", "random"
EMBED_DIM = 512  # ViT-B-32's; targets get seeded random unit embeddings of this size
CAPACITY_STEPS = (10, 20, 30, 45, 60, 90, 120)  # typists per step of --capacity (10, 20: where a slow box is today)
CAPACITY_P99_MS = 150.0  # the live score's promise: a draft's score within 150 ms
PLAY_JS = Path(__file__).resolve().parent.parent / "game" / "web" / "static" / "play.js"


def page_pause_ms() -> float:
    """The play page's typing pause before it sends a draft (PAUSE_MS in play.js)."""
    match = re.search(r"\bPAUSE_MS\s*=\s*(\d+)", PLAY_JS.read_text(encoding="utf-8"))
    if not match:
        raise SystemExit(f"no PAUSE_MS constant in {PLAY_JS}")
    return float(match.group(1))


def percentile(values, q):
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class Player(threading.Thread):
    """One simulated typist on one websocket."""

    def __init__(self, idx, base, puzzle, stop_at, stats, lock, pause_s=0.15, run=0):
        super().__init__(name=f"player-{idx}", daemon=True)
        self.pause_s = pause_s
        self.idx, self.base, self.puzzle, self.stop_at = idx, base, puzzle, stop_at
        self.stats, self.lock = stats, lock
        # Seeded per run too: the steps of --capacity share one server, whose caption
        # cache would answer a replay of an earlier step's drafts without encoding them.
        self.rng = random.Random(f"{run}-{idx}")
        self.pending: dict[int, float] = {}  # seq -> send time
        self.plock = threading.Lock()
        self.seq = 0
        self.ws = None
        self.submit_waiting = False
        self.submit_sent = None  # when the submission now awaiting its result was sent
        self.push_from = None  # an improving submission's send time, until the next board push

    def record(self, key, value=1):
        with self.lock:
            if isinstance(self.stats[key], list):
                self.stats[key].append(value)
            else:
                self.stats[key] += value

    def connect(self):
        from harness.client import WSClient
        self.ws = WSClient.player(self.base, timeout=30).ws  # the raw socket: the reader thread times replies
        self.ws.send(json.dumps({"type": "hello", "puzzle": self.puzzle}))
        self.ws.send(json.dumps({"type": "subscribe", "puzzles": [self.puzzle]}))

    def receive(self):
        from harness.client import timed_messages
        for now, msg in timed_messages(self.ws):
            kind = msg.get("type")
            if kind in ("score", "dropped"):
                with self.plock:
                    sent = self.pending.pop(msg["seq"], None)
                if sent is not None and kind == "score":
                    self.record("latencies", (now - sent) * 1000)
                elif kind == "dropped":
                    self.record("dropped")
            elif kind == "result":
                self.record("submits")
                self.submit_waiting = False
                if msg.get("improved") and not msg.get("practice"):
                    self.push_from = self.submit_sent
            elif kind == "board":
                self.record("pushes")
                if self.push_from is not None:
                    self.record("push_ms", (now - self.push_from) * 1000)
                    self.push_from = None
            elif kind == "error":
                if msg.get("seq") is not None:
                    with self.plock:
                        self.pending.pop(msg["seq"], None)
                if msg.get("code") == "over_cap":
                    self.submit_waiting = False
                    self.record("over_cap")
                else:
                    self.record("errors")
                    self.record("error_codes", msg.get("code"))

    def send_draft(self, text):
        self.seq += 1
        with self.plock:
            self.pending[self.seq] = time.perf_counter()
        self.ws.send(json.dumps({"type": "draft", "seq": self.seq, "puzzle": self.puzzle, "caption": text}))
        self.record("sent")

    def run(self):
        try:
            self.connect()
        except Exception as exc:
            self.record("errors")
            self.record("error_codes", f"connect: {exc}"[:80])
            return
        reader = threading.Thread(target=self.receive, daemon=True)
        reader.start()
        try:
            self.type_until_stopped()
        except Exception as exc:
            self.record("errors")
            self.record("error_codes", f"socket: {exc}"[:80])

    def type_until_stopped(self):
        while time.perf_counter() < self.stop_at:
            caption = " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(4, 10)))
            text = ""
            for ch in caption:
                text += ch
                if ch == " ":  # a word ended: the page sends at once
                    self.send_draft(text)
                    gap = self.rng.uniform(0.12, 0.30)
                else:
                    gap = self.rng.uniform(0.12, 0.30)
                    if gap >= self.pause_s:  # the page's pause timer fires before the next key
                        time.sleep(self.pause_s)
                        self.send_draft(text)
                        gap -= self.pause_s
                time.sleep(gap)
                if time.perf_counter() >= self.stop_at:
                    return
            if not self.submit_waiting:
                self.submit_waiting = True
                self.submit_sent = time.perf_counter()
                self.ws.send(json.dumps({"type": "submit", "puzzle": self.puzzle, "caption": text}))
            time.sleep(self.rng.uniform(0.5, 1.5))  # reads the score, thinks

    def outstanding(self) -> int:
        with self.plock:
            return len(self.pending)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer players, 15 s of load (under a minute)")
    parser.add_argument("--players", type=int)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--stalled", type=int, default=0,
                        help="extra clients that subscribe to every board and never read")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--capacity", action="store_true",
                        help=f"step the typists ({', '.join(map(str, CAPACITY_STEPS))}; --players caps it) on one "
                             f"server and report the largest count whose p99 stays <= {CAPACITY_P99_MS:.0f} ms")
    parser.add_argument("--pause-ms", type=float, default=None,
                        help="typing pause before a draft (default: the play page's PAUSE_MS)")
    parser.add_argument("--threads", type=int, default=None,
                        help="the web process's torch threads (default: the scorer's choice)")
    parser.add_argument("--gil-switch-ms", type=float, default=None,
                        help="the web process's GIL switch interval (default: the game's GIL_SWITCH_MS)")
    parser.add_argument("--profile", default=None, metavar="FILE",
                        help="sample the web worker with py-spy during the load; raw stacks to FILE")
    args = parser.parse_args()
    if args.profile and not shutil.which("py-spy"):
        raise SystemExit("--profile needs py-spy on PATH (pip install py-spy; a dev tool, not a requirement)")
    pause_ms = args.pause_ms if args.pause_ms is not None else page_pause_ms()
    players = args.players or (30 if args.quick else 60)
    seconds = args.seconds or (15.0 if args.quick or args.capacity else 45.0)
    port = args.port or None  # None: the harness picks a free one

    instance = tempfile.mkdtemp(prefix="captionary-wsload-")
    from game.store import server as redis_server
    from harness import servers
    web = None
    try:
        client = redis_server.connect(instance)  # the bench's own embedded Redis
        puzzles = servers.seed_today(client, EMBED_DIM, model_id=f"{MODEL}/{PRETRAINED}")
        client.close()
        # harness.settings (the lifted per-address caps: every simulated player is
        # 127.0.0.1) with the full-size judge and torch's own thread count, as in production.
        web = servers.Gunicorn("unix://" + redis_server.socket_path(instance), Path(instance), port=port,
                               CLIP_MODEL=MODEL, CLIP_PRETRAINED=PRETRAINED, TORCH_THREADS=args.threads,
                               **({"GIL_SWITCH_MS": args.gil_switch_ms} if args.gil_switch_ms else {}))
        print(f"server: {servers.procfile_web(web.port)}  (CLIP {MODEL}/{PRETRAINED}: random weights, "
              f"scores meaningless)", flush=True)
        base = web.url
        t0 = time.perf_counter()
        _wait_ready(web)
        print(f"server ready in {time.perf_counter() - t0:.1f}s; typists draft after a {pause_ms:.0f} ms pause "
              f"or a space; server torch threads: {args.threads or 'default'}; GIL switch "
              f"{args.gil_switch_ms or 'default'} ms; load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        warm_up(base, puzzles[0])

        if args.capacity:
            steps = [n for n in CAPACITY_STEPS if n <= (args.players or CAPACITY_STEPS[-1])]
            best = None
            for n in steps:
                result = run_load(base, puzzles, n, seconds, args.stalled, pause_ms / 1000)
                if result["p99_ms"] <= CAPACITY_P99_MS and result["errors"] == 0:
                    best = result
                elif result["p99_ms"] > 3 * CAPACITY_P99_MS:
                    print(f"capacity: p99 {result['p99_ms']:.0f} ms at {n} typists, far past "
                          f"{CAPACITY_P99_MS:.0f} ms: larger steps skipped", flush=True)
                    break
            if best is None:
                print(f"capacity: even {steps[0]} typists were over p99 {CAPACITY_P99_MS:.0f} ms", flush=True)
                print("ws_capacity: typists=0 drafts_per_s=0.0 p50_ms=nan p99_ms=nan errors=0", flush=True)
            else:
                print(f"ws_capacity: typists={best['players']} drafts_per_s={best['drafts_per_s']:.1f} "
                      f"p50_ms={best['p50_ms']:.1f} p99_ms={best['p99_ms']:.1f} errors={best['errors']}", flush=True)
        else:
            spy = None
            if args.profile:
                import subprocess
                pid = web.worker_pids()[0]
                spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--rate", "100", "--nonblocking",
                                        "--threads", "--idle", "--format", "raw", "--duration", str(int(seconds)),
                                        "--output", args.profile],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                # A second sampler at the same time: only the thread holding the GIL (who runs Python).
                gil = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--rate", "100", "--nonblocking",
                                        "--threads", "--gil", "--format", "raw", "--duration", str(int(seconds)),
                                        "--output", args.profile + ".gil"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            result = run_load(base, puzzles, players, seconds, args.stalled, pause_ms / 1000)
            if spy is not None:
                for proc, path in ((spy, args.profile), (gil, args.profile + ".gil")):
                    _, err = proc.communicate(timeout=60)
                    if proc.returncode:
                        print(f"py-spy failed: {err.decode(errors='replace')[-500:]}", flush=True)
                    else:
                        print(profile_breakdown(Path(path), gil=path.endswith(".gil")), flush=True)
            print(f"ws_load: players={players} drafts_per_s={result['drafts_per_s']:.1f} "
                  f"p50_ms={result['p50_ms']:.1f} p99_ms={result['p99_ms']:.1f} errors={result['errors']}",
                  flush=True)
    finally:
        servers.tear_down(web, instance)


def warm_up(base: str, puzzle: str, drafts: int = 30) -> None:
    """The first drafts of a fresh process pay for one-time work (allocator, kernels, caches):
    not part of any measured run."""
    from harness.client import WSClient
    t0 = time.perf_counter()
    ws = WSClient.player(base)
    try:
        for i in range(drafts):
            ws.ask({"type": "draft", "seq": i + 1, "puzzle": puzzle, "caption": " ".join(WORDS[:i % 12 + 1])},
                   "score")
    finally:
        ws.close()
    print(f"warm-up: {drafts} drafts in {time.perf_counter() - t0:.1f}s", flush=True)


JUDGE_COUNTERS = ("captionary_judge_batches_total", "captionary_judge_compute_seconds_total",
                  "captionary_judge_captions_encoded_total", 'captionary_judge_token_rows_total{kind="computed"}')
THREAD_STATES = {"on_cpu": "on a core", "waiting_for_cpu": "waiting for a core",
                 "blocked": "blocked (the GIL, torch's other threads)"}
THREAD_SECONDS = {state: f'captionary_judge_compute_thread_seconds_total{{state="{state}"}}'
                  for state in THREAD_STATES}


def server_judge(base: str) -> dict[str, float]:
    """The web process's judge counters (/metrics), to tell a judge out of compute from one starved of CPU."""
    import requests
    try:
        text = requests.get(base + "/metrics", timeout=10).text
    except requests.RequestException:
        return {}
    out = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in JUDGE_COUNTERS or name in THREAD_SECONDS.values() or name == "captionary_judge_torch_threads":
            out[name] = float(value)
    return out


def judge_line(before: dict, after: dict, seconds: float) -> str:
    if not before or not after:
        return "judge: /metrics unavailable"
    batches, busy, drafts, rows = (after[k] - before[k] for k in JUDGE_COUNTERS)
    batches = max(batches, 1)
    return (f"judge: computing {busy / seconds:.0%} of the run; {drafts / batches:.1f} drafts, "
            f"{rows / batches:.1f} new token rows and {busy * 1000 / batches:.1f} ms per batch "
            f"({busy * 1000 / max(rows, 1):.2f} ms per row); torch threads now "
            f"{after.get('captionary_judge_torch_threads', float('nan')):.0f}{thread_split(before, after, busy)}")


def thread_split(before: dict, after: dict, busy: float) -> str:
    """'; its thread ...': how the judge thread spent its computing time (Linux servers only)."""
    if busy <= 0 or not all(name in before and name in after for name in THREAD_SECONDS.values()):
        return ""
    parts = [f"{(after[name] - before[name]) / busy:.0%} {THREAD_STATES[state]}"
             for state, name in THREAD_SECONDS.items()]
    return "; of that time its thread was " + ", ".join(parts)


def server_draft_buckets(base: str) -> dict[float, float]:
    """The web process's draft latency histogram (/metrics: parsed draft to score, cumulative)."""
    import requests
    out = {}
    try:
        text = requests.get(base + "/metrics", timeout=10).text
    except requests.RequestException:
        return out
    for m in re.finditer(r'^captionary_draft_latency_seconds_bucket\{le="([^"]+)"\} (\S+)$', text, re.M):
        out[float(m.group(1))] = float(m.group(2))
    return out


def bucket_quantile(before: dict, after: dict, q: float) -> str:
    """Upper bucket bound holding the q-quantile of the drafts observed between two scrapes."""
    edges = sorted(after)
    counts = [after[e] - before.get(e, 0.0) for e in edges]
    if not counts or counts[-1] <= 0:
        return "n/a"
    for edge, c in zip(edges, counts):
        if c >= q * counts[-1]:
            return f"<= {edge * 1000:.0f}" if edge != float("inf") else "> last bucket"
    return "n/a"


_RUNS = 0  # load runs so far in this process (players' seeds)


def run_load(base: str, puzzles: list[str], players: int, seconds: float, stalled_n: int = 0,
             pause_s: float = 0.15) -> dict:
    """One load run of `players` typists for `seconds`; prints its lines and returns its figures."""
    print(f"load: {players} typists for {seconds:.0f}s", flush=True)
    server_before = server_draft_buckets(base)
    judge_before = server_judge(base)
    stats = {"latencies": [], "sent": 0, "dropped": 0, "errors": 0, "submits": 0, "pushes": 0,
             "over_cap": 0, "error_codes": [], "push_ms": []}
    stalled = [stalled_reader(base, puzzles) for _ in range(stalled_n)]
    lock = threading.Lock()
    start = time.perf_counter()
    stop_at = start + seconds
    global _RUNS
    _RUNS += 1
    crowd = [Player(i, base, puzzles[i % len(puzzles)], stop_at, stats, lock, pause_s, _RUNS)
             for i in range(players)]
    for i, p in enumerate(crowd):
        p.start()
        time.sleep(min(0.05, 1.0 / players))  # players arrive over about a second, not in one instant
    for p in crowd:
        p.join(seconds + 60)
    elapsed = time.perf_counter() - start
    deadline = time.perf_counter() + 5.0  # answers still in flight
    while time.perf_counter() < deadline and any(p.outstanding() for p in crowd):
        time.sleep(0.05)
    unanswered = sum(p.outstanding() for p in crowd)
    for p in crowd:
        try:
            p.ws.close()
        except Exception:
            pass
    lat = stats["latencies"]
    errors = stats["errors"] + unanswered
    rate = stats["sent"] / elapsed
    print(f"offered {rate / players:.2f} drafts/s per typist (load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())})")
    print(f"drafts sent {stats['sent']} in {elapsed:.1f}s; scored {len(lat)}, dropped (overtaken) "
          f"{stats['dropped']}, unanswered {unanswered}; submits {stats['submits']} "
          f"(+{stats['over_cap']} over the cap); board pushes received {stats['pushes']}")
    if stats["error_codes"]:
        counts = {}
        for code in stats["error_codes"]:
            counts[code] = counts.get(code, 0) + 1
        print("errors by code:", counts)
    closed = sum(_closed_by_server(s) for s in stalled)
    push = stats["push_ms"]
    print(f"board push after an improving submit, ms: p50 {percentile(push, 50):.1f} "
          f"p99 {percentile(push, 99):.1f} ({len(push)} pushes)"
          + (f"; stalled readers closed by the server: {closed}/{len(stalled)}" if stalled else ""))
    server_after = server_draft_buckets(base)
    print(judge_line(judge_before, server_judge(base), elapsed))
    print(f"server side (parsed draft to score, /metrics buckets), ms: p50 "
          f"{bucket_quantile(server_before, server_after, 0.5)} p99 {bucket_quantile(server_before, server_after, 0.99)}")
    print(f"scored/s {len(lat) / elapsed:.1f}; latency ms: p50 {percentile(lat, 50):.1f} "
          f"p90 {percentile(lat, 90):.1f} p99 {percentile(lat, 99):.1f} max {max(lat, default=float('nan')):.1f}")
    return {"players": players, "drafts_per_s": rate, "p50_ms": percentile(lat, 50),
            "p99_ms": percentile(lat, 99), "errors": errors}


FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*):(?P<line>\d+)\)$")
WAITS = ("Condition.wait", "Event.wait", "Queue.get", "select (", "Selector.select", "sleep", "accept",
         "_wait_for_tstate_lock", "Thread.join", "_worker")  # _worker: an idle pool thread (C queue get)


def _frames(frames: list[str]):
    for frame in frames:
        m = FRAME.match(frame)
        if m:
            yield m["func"], m["file"], int(m["line"])


def _bucket(thread: str, frames: list[str]) -> str:
    """Where one sampled stack (leaf first) is. py-spy sees no C frames, so a matmul or an SDPA
    call shows as the Python line that called it; waits are named by what they wait for."""
    import linecache
    parsed = list(_frames(frames))
    leaf = parsed[0][0] if parsed else ""
    waiting = any(w in leaf for w in WAITS) or (parsed and parsed[0][1].endswith("socket.py"))
    for func, file, line in parsed:
        text = linecache.getline(file, line)
        if "text_encoder.py" in file:
            if "scaled_dot_product_attention" in text:
                return "judge: attention (SDPA over the KV slab)"
            if func in ("_onednn_linear", "_mlp", "linear") or "lin(" in text or "_mlp(" in text:
                return "judge: GEMMs (QKV, out, MLP matmuls)"
            if func == "key":
                return "request: tokenization"
            return "judge: encoder Python (per-layer dispatch, KV slab, LayerNorm, embedding)"
        if "tokenizer" in file or "ftfy" in file:
            return "request: tokenization"
        if "redis" in file:
            return "request: Redis round trips"
        if "engine/scorer.py" in file:
            if thread.startswith("scorer["):
                return "judge: idle, waiting for drafts" if waiting else "judge: batching, caches"
            if waiting:
                return "request: waiting for the judge's batch (queue + compute)"
            return "request: scorer validation and caches"
        if any(k in file for k in ("simple_websocket", "wsproto", "flask_sock", "json/", "game/web/ws.py")):
            return "idle socket thread" if waiting else "request: websocket and JSON"
    return "idle socket thread" if waiting else "request: other (gunicorn, game logic, Python runtime)"


def profile_breakdown(path: Path, gil: bool = False) -> str:
    """Shares of the worker's sampled stacks (py-spy raw format with --idle --threads:
    'thread (tid): name;frame;... count'): the judge thread's time, and the request
    threads' time on drafts (idle socket threads left out)."""
    judge: dict[str, int] = {}
    request: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        head, _, rest = stack.partition(";")
        thread = head.split(": ", 1)[-1]
        bucket = _bucket(thread, rest.split(";")[::-1])
        if bucket == "idle socket thread":
            continue
        side = judge if bucket.startswith("judge") else request
        side[bucket] = side.get(bucket, 0) + int(count)
    lines = [f"profile ({path}){': samples of the thread holding the GIL' if gil else ''}:"]
    for title, totals in (("the judge thread", judge), ("request threads, busy or waiting on a draft", request)):
        total = sum(totals.values())
        lines.append(f"  {title}: {total} samples")
        for name, n in sorted(totals.items(), key=lambda kv: -kv[1]):
            lines.append(f"    {100 * n / max(1, total):5.1f}%  {name.split(': ', 1)[1]}")
    return "\n".join(lines)


def stalled_reader(base: str, puzzles: list[str]):
    """A raw websocket that subscribes to every board and then never reads (4 KiB receive buffer)."""
    import base64
    import requests
    import socket
    import struct
    session = requests.Session()
    session.get(base + "/", timeout=30)
    host, port = base.split("//")[1].split(":")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((host, int(port)))
    s.sendall((f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
               f"Sec-WebSocket-Version: 13\r\nOrigin: {base}\r\n"
               f"Cookie: captionary={session.cookies['captionary']}\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    payload = json.dumps({"type": "subscribe", "puzzles": puzzles}).encode()
    mask = os.urandom(4)
    s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    return s


def _closed_by_server(s) -> bool:
    """Whether the server has closed a stalled reader (reading it now finds the end of the stream)."""
    s.settimeout(0.5)
    try:
        while True:
            if not s.recv(1 << 20):
                return True
    except OSError:  # a reset or nothing more yet: reset means closed
        return False if isinstance(sys.exc_info()[1], TimeoutError) else True
    finally:
        s.close()


def _wait_ready(web) -> None:
    """Wait for /healthz (up to 180 s: the full-size model loads first), then check the judge is the bench's."""
    import requests
    try:
        web.wait_ready(timeout=180)
    except RuntimeError as exc:
        raise SystemExit(str(exc))
    model_id = requests.get(web.url + "/api/status", timeout=10).json().get("model_id")
    if model_id != f"{MODEL}/{PRETRAINED}":
        raise SystemExit(f"unexpected judge {model_id}")


if __name__ == "__main__":
    main()
