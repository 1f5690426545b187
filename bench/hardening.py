"""Hardening benchmark: fuzzing, fault scenarios and a draft flood, against gunicorn as the Procfile runs it.

1. Fuzz (tests/fuzzing.py, hypothesis): >= 10,000 malformed or abusive websocket frames
   and HTTP requests against one gunicorn web process (test-tiny/random, rate limits
   lifted so fuzzed actions reach the scorer and the store). Crashes: `internal` errors,
   sockets the server dropped, a gunicorn worker that died or restarted. HTTP 500s: any
   status >= 500 outside /readyz and the judge's documented 503 `busy`.
2. Faults (tests/faults.py): kill -9 redis-server mid-stream of submissions and restart
   it; two web processes on one Redis with one killed -9 mid-load; and
   tests/test_worker_kill.py (kill -9 a generator worker mid-job) run as it runs in CI.
   lost_acks: acknowledged submissions missing afterwards, summed over the scenarios.
3. Flood: players typing at human pace on one web process (default throttle:
   DRAFT_RATE 12/s, DRAFT_BURST 30) with the full-size judge (ViT-B-32, random
   weights: same compute as the trained model, meaningless scores); their draft latency
   is measured in rounds alternating "no flood" and "one client flooding drafts at
   1,000/s" from a separate process, and flood_p99_ratio = p99(flood) / p99(no flood),
   the flood side counting only drafts sent while the flooder was still sending (the
   server throttles it to its frame budget at once and cuts it off with 1008 after ~3 s
   of sustained flooding; the time after the cut-off is not counted as "flood").

Last line, exactly:
  hardening: fuzz_msgs=<n> crashes=<c> http_500=<h> lost_acks=<l> flood_p99_ratio=<r>
Targets: n >= 10000, c = 0, h = 0, l = 0, r <= 1.2.

Usage: python bench/hardening.py [--quick] [--fuzz-examples N] [--flood-model NAME] [--skip-faults]
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

WORDS = ("a photo of the red old wooden small big dog cat bird astronaut rocket coffee cup woman man portrait "
         "painting sky night city street blue green yellow bright dark galaxy stars field river mountain").split()


def percentile(values, q):
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def embed_dim(model: str) -> int:
    from engine.clip_model import load_clip
    return int(load_clip(model, "random").embed_dim)


# -- 1. fuzz ------------------------------------------------------------------------------------
def run_fuzz(workdir: Path, redis_url: str, client, ws_examples: int, http_examples: int) -> dict:
    import procs
    from fuzzing import Stats, fuzz_http, fuzz_websocket, requests_sender
    puzzles = procs.seed_today(client, embed_dim("test-tiny"))
    web = procs.Gunicorn(redis_url, workdir, "web-fuzz", DRAFT_RATE=1e6, DRAFT_BURST=1e6, SUBMIT_RATE=1e6,
                         SUBMIT_BURST=1e6, MAX_SUBMISSIONS=1000000, FRAME_RATE=1e6, FRAME_BURST=1e6, ADMIN_TOKEN="hardening-admin-token-0123456789abcdef")
    stats = Stats()
    try:
        web.wait_ready()
        pids = web.worker_pids()
        t0 = time.perf_counter()
        fuzz_websocket(web.url, puzzles, ws_examples, stats=stats)
        ws_msgs = stats.messages
        sender = requests_sender(web.url)
        fuzz_http(sender, puzzles, http_examples, stats=stats)
        elapsed = time.perf_counter() - t0
        after = web.worker_pids()
        if web.proc.poll() is not None or after != pids:
            stats.problem("crashes", f"gunicorn worker changed: {pids} -> {after}", False)
    finally:
        web.stop()
    print(f"fuzz: {stats.messages} messages ({ws_msgs} websocket frames, {stats.messages - ws_msgs} HTTP "
          f"requests) in {elapsed:.1f}s; crashes={stats.crashes} http_500={stats.http_500} "
          f"bad_replies={stats.bad_replies}; HTTP requests retried on a fresh connection after gunicorn "
          f"closed a kept-alive one (unread body over 64 KiB): {sender.retries}")
    print("fuzz: replies seen:", ", ".join(f"{k}={v}" for k, v in sorted(stats.replies.items())))
    for kind, detail in stats.examples:
        print(f"fuzz: PROBLEM {kind}: {detail}")
    return {"messages": stats.messages, "crashes": stats.crashes, "http_500": stats.http_500,
            "bad_replies": stats.bad_replies}


# -- 2. faults ----------------------------------------------------------------------------------
def run_faults(workdir: Path, redis_url: str, client) -> dict:
    import faults
    dim = embed_dim("test-tiny")
    client.flushall()
    r = faults.redis_kill_scenario(workdir / "redis-kill", dim, players=4)
    print(f"faults: redis kill -9: {r['acked']} submissions acknowledged ({r['acked_before_kill']} before the kill, "
          f"{r['acked_after_restart']} after the restart), {r['logged']} in the log, lost={r['lost_acks']}, "
          f"duplicates={r['duplicates']}, error replies during the outage={r['errors']} {r['error_codes']}")
    client.flushall()
    w = faults.two_webs_scenario(redis_url, client, workdir / "two-webs", dim)
    print(f"faults: two web processes: cross-process push={w['push_seen']} logged once={w['logged_once']}; "
          f"after kill -9 of one: survivor errors={w['survivor_errors']} {w['survivor_error_codes']} "
          f"reconnects={w['survivor_reconnects']} "
          f"scores after the kill={w['survivor_scores_after_kill']}; moved players reconnected="
          f"{w['movers_reconnected']} resumed={w['movers_resumed']}; lost={w['lost_acks']} "
          f"duplicates={w['duplicates']}")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_worker_kill.py"], cwd=ROOT, capture_output=True, text=True)
    tail = (proc.stdout.strip().splitlines() or ["?"])[-1]
    print(f"faults: worker kill -9 mid-job (tests/test_worker_kill.py): {tail} in {time.perf_counter() - t0:.1f}s")
    ok = (w["push_seen"] and w["logged_once"] and w["survivor_errors"] == 0 and w["survivor_reconnects"] == 0
          and w["movers_resumed"]
          and r["duplicates"] == 0 and w["duplicates"] == 0 and proc.returncode == 0)
    return {"lost_acks": r["lost_acks"] + w["lost_acks"], "ok": ok}


# -- 3. flood -----------------------------------------------------------------------------------
def flood_child(url: str, puzzle: str, rate: float, seconds: float) -> None:
    """Separate process: one client sending drafts at `rate`/s; prints what came back as JSON.

    The frames are encoded once, up front (a zero mask key is valid: RFC 6455 asks clients
    to mask, the server cannot tell a zero key from any other), and written in bulk to the
    socket: a real flooder spends its own machine's CPU, so the measurement should spend
    as little of ours as possible on the attacker's side.
    """
    import websocket
    import procs
    player = procs.Player(url)
    player.ws.set_mask_key(lambda n: b"\x00" * n)
    frames = [websocket.ABNF.create_frame(json.dumps({"type": "draft", "seq": i + 1, "puzzle": puzzle,
                                                        "caption": f"flood flood {i % 97}"}),
                                          websocket.ABNF.OPCODE_TEXT)
              for i in range(1000)]
    for f in frames:
        f.get_mask_key = lambda n: b"\x00" * n
    encoded = [f.format() for f in frames]
    counts: dict[str, int] = {}
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                msg = player.recv()
            except Exception:  # closed by the server (1008 once it has flooded for a few seconds)
                return
            key = msg.get("code") or msg.get("type")
            counts[key] = counts.get(key, 0) + 1

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    print("flooding", flush=True)
    sent, start = 0, time.perf_counter()
    while (now := time.perf_counter()) - start < seconds:
        due = int((now - start) * rate)
        if due > sent:
            try:
                player.ws.sock.sendall(b"".join(encoded[i % 1000] for i in range(sent, due)))
            except OSError:  # the server cut the flooder off (1008): it sends nothing more
                closed_after = time.perf_counter() - start
                break
            sent = due
        time.sleep(0.002)
    else:
        closed_after = None
    elapsed = time.perf_counter() - start
    t.join(1.0)
    if closed_after is None and not t.is_alive():
        closed_after = elapsed  # the reader saw the close; the last writes still went into the buffer
    time.sleep(0.5)
    stop.set()
    player.close()
    print(json.dumps({"sent": sent, "seconds": elapsed, "replies": counts, "cut_off_after_s": closed_after}))


class Typist(threading.Thread):
    """A human-paced player: a draft, wait for its score, think 150-300 ms, repeat."""

    def __init__(self, idx, url, puzzle):
        super().__init__(daemon=True)
        import procs
        self.rng = random.Random(idx)
        self.player = procs.Player(url)
        self.puzzle = puzzle
        self.latencies: list[tuple[float, float]] = []  # (send time, latency)
        self.errors: list[str] = []
        self.stop_event = threading.Event()
        self.seq = 0

    def run(self):
        words = []
        while not self.stop_event.is_set():
            if len(words) > 8:
                words = []
            words.append(self.rng.choice(WORDS))
            self.seq += 1
            t0 = time.perf_counter()
            try:
                reply = self.player.ask({"type": "draft", "seq": self.seq, "puzzle": self.puzzle,
                                         "caption": " ".join(words)})
            except Exception as exc:
                self.errors.append(type(exc).__name__)
                return
            if reply.get("type") == "score":
                self.latencies.append((t0, time.perf_counter() - t0))
            else:
                self.errors.append(reply.get("code", reply.get("type")))
            time.sleep(self.rng.uniform(0.15, 0.3))
        self.player.close()


def run_flood(workdir: Path, redis_url: str, client, model: str, typists: int, rounds: int, round_s: float) -> dict:
    import procs
    client.flushall()
    puzzles = procs.seed_today(client, embed_dim(model), model_id=f"{model}/random")
    web = procs.Gunicorn(redis_url, workdir, "web-flood", CLIP_MODEL=model, TORCH_THREADS=1)
    try:
        web.wait_ready(timeout=180)
        players = [Typist(i, web.url, puzzles[i % len(puzzles)]) for i in range(typists)]
        warm = procs.Player(web.url)  # the first drafts pay for warm-up: not part of either phase
        for i in range(20):
            warm.ask({"type": "draft", "seq": i + 1, "puzzle": puzzles[0], "caption": " ".join(WORDS[:i + 1])})
        warm.close()
        for p in players:
            p.start()
        windows = {"calm": [], "flood": []}
        flood_stats = []
        time.sleep(1.0)
        for r in range(rounds):
            for phase in ("calm", "flood"):
                start = time.perf_counter()
                if phase == "calm":
                    time.sleep(round_s)
                    windows["calm"].append((start, start + round_s))
                    continue
                child = subprocess.Popen([sys.executable, __file__, "--flood-child", web.url, puzzles[0],
                                          "1000", str(round_s)], stdout=subprocess.PIPE, text=True)
                child.stdout.readline()  # "flooding": connected, the first frames are going out now
                start = time.perf_counter()
                out, _ = child.communicate(timeout=60)
                stats = json.loads(out.strip().splitlines()[-1])
                flood_stats.append(stats)
                # Others' drafts count while the flood runs: from its start (+0.3 s, so it is at
                # full rate) until the server cut it off (1008) or it stopped.
                active = stats["cut_off_after_s"] or stats["seconds"]
                windows["flood"].append((start + 0.3, start + max(0.3, active - 0.1)))
                time.sleep(0.3)
        for p in players:
            p.stop_event.set()
        for p in players:
            p.join(10)
    finally:
        web.stop()

    def in_phase(phase):
        return [lat for p in players for t, lat in p.latencies if any(a <= t < b for a, b in windows[phase])]

    calm, flood = in_phase("calm"), in_phase("flood")
    p99c, p99f = percentile(calm, 99), percentile(flood, 99)
    sent = sum(f["sent"] for f in flood_stats)
    secs = sum(f["seconds"] for f in flood_stats)
    replies: dict[str, int] = {}
    for f in flood_stats:
        for k, v in f["replies"].items():
            replies[k] = replies.get(k, 0) + v
    errors = sum(len(p.errors) for p in players)
    print(f"flood: judge {model}/random, {typists} typists, {rounds} rounds of {round_s:.0f}s calm + {round_s:.0f}s "
          f"flood; flooder sent {sent} drafts ({sent / max(secs, 1e-9):.0f}/s), got scores for "
          f"{replies.get('score', 0)} ({replies.get('score', 0) / max(secs, 1e-9):.1f}/s), "
          f"slow_down={replies.get('slow_down', 0)} dropped={replies.get('dropped', 0)}; cut off (1008) after "
          f"{', '.join('%.1fs' % f['cut_off_after_s'] if f['cut_off_after_s'] else 'never' for f in flood_stats)}")
    print(f"flood: others' draft latency calm: n={len(calm)} p50={percentile(calm, 50) * 1000:.1f}ms "
          f"p99={p99c * 1000:.1f}ms; during the flood: n={len(flood)} p50={percentile(flood, 50) * 1000:.1f}ms "
          f"p99={p99f * 1000:.1f}ms; typist errors={errors}")
    return {"ratio": p99f / p99c if calm and flood else float("nan"), "throttled": replies.get("score", 0) < sent / 10,
            "typist_errors": errors}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller fuzz run and shorter flood (CI-sized)")
    parser.add_argument("--fuzz-examples", type=int, help="websocket fuzz batches (1-4 frames each)")
    parser.add_argument("--flood-model", default="ViT-B-32", help="judge for the flood run (random weights)")
    parser.add_argument("--skip-faults", action="store_true")
    parser.add_argument("--flood-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.flood_child:
        url, puzzle, rate, seconds = args.flood_child
        flood_child(url, puzzle, float(rate), float(seconds))
        return 0
    ws_examples = args.fuzz_examples or (600 if args.quick else 4000)
    http_examples = 400 if args.quick else 1500
    from game import redis_server
    with tempfile.TemporaryDirectory(prefix="captionary-hardening-") as tmp:
        workdir = Path(tmp)
        instance = str(workdir / "redis")
        client = redis_server.connect(instance)
        redis_url = "unix://" + redis_server.socket_path(instance)
        try:
            fuzz = run_fuzz(workdir, redis_url, client, ws_examples, http_examples)
            lost = 0
            if not args.skip_faults:
                faults = run_faults(workdir, redis_url, client)
                lost = faults["lost_acks"]
                if not faults["ok"]:
                    print("faults: a scenario check FAILED (see above)")
            flood = run_flood(workdir, redis_url, client, args.flood_model, typists=4 if args.quick else 6,
                              rounds=2 if args.quick else 5, round_s=4.0 if args.quick else 6.0)
            if not flood["throttled"]:
                print("flood: the flooder was NOT throttled")
        finally:
            client.close()
            redis_server.stop(instance)
    crashes = fuzz["crashes"] + fuzz["bad_replies"]
    print(f"hardening: fuzz_msgs={fuzz['messages']} crashes={crashes} http_500={fuzz['http_500']} "
          f"lost_acks={lost} flood_p99_ratio={flood['ratio']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
