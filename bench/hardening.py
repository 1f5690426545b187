"""Hardening benchmark: fuzzing, fault scenarios and a draft flood, against gunicorn as the Procfile runs it.

1. Fuzz (harness/fuzzing.py, hypothesis): >= 10,000 malformed or abusive websocket frames
   and HTTP requests against one gunicorn web process (test-tiny/random, rate limits
   lifted so fuzzed actions reach the scorer and the store). Crashes: `internal` errors,
   sockets the server dropped, a gunicorn worker that died or restarted. HTTP 500s: any
   status >= 500 outside /readyz and the judge's documented 503 `busy`.
2. Faults (harness/faults.py): kill -9 redis-server mid-stream of submissions and restart
   it; two web processes on one Redis with one killed -9 mid-load; and
   tests/system/test_worker_kill.py (kill -9 a generator worker mid-job) run as it runs in CI.
   lost_acks: acknowledged submissions missing afterwards, summed over the scenarios.
3. Flood: players typing at human pace on one web process (default throttle:
   DRAFT_RATE 12/s, DRAFT_BURST 30) with the full-size judge (ViT-B-32, random
   weights: same compute as the trained model, meaningless scores); their draft latency
   is measured in rounds alternating "no flood" and "one client flooding drafts at
   1,000/s" from a separate process, and flood_p99_ratio = p99(flood) / p99(no flood),
   the flood side counting only drafts sent while the flooder was still sending (the
   server throttles it to its frame budget at once and cuts it off with 1008 after ~3 s
   of sustained flooding; the time after the cut-off is not counted as "flood").

4. Abuse (one web process, one trusted proxy hop so each simulated client has its own
   X-Forwarded-For address; today = a GAN target whose file carries its prompt and seed,
   two photos with text chunks, two more GAN targets left unseen in the pool):
   - secrets: every public page, API and websocket reply of today and every served image
     is searched for the prompt, the seed and the photos' text; served images must carry
     no metadata chunk; pool images must answer 404; walking 200 dates around today
     (/play, /leaderboard, /reveal, /api/board, /api/daily) must answer nothing and write
     no Redis key that never expires;
   - names: after "Admin", a Cyrillic "Аdmin", "ADMIN", a U+3164 filler, a zero-width and
     a bidi-control name must be refused;
   - identity churn: one address asking for 120 new anonymous players must be refused
     (429) at some point;
   - slow reader: a client subscribed to every board that keeps asking for boards and
     never reads (4 KiB receive buffer), while 3 watchers wait for the board push of each
     new player's submission: slow_reader_stall_ms is the worst push delay (5000 = never);
   - socket cap: one player, then one address, open sockets until refused (up to 160;
     gunicorn has 128 threads); held = both refused before 160 and another client is
     still served afterwards.
   leaks = secrets found + dates answered + keys written + pool images served + names
   accepted + (identity churn never refused).

Last line, exactly:
  hardening: fuzz_msgs=<n> crashes=<c> http_500=<h> lost_acks=<l> flood_p99_ratio=<r> leaks=<k> slow_reader_stall_ms=<s> socket_cap_held=<yes|no>
Targets: n >= 10000, c = 0, h = 0, l = 0, r <= 1.2, k = 0, s <= 1000, yes.

Usage: python bench/hardening.py [--quick] [--fuzz-examples N] [--flood-model NAME] [--skip-faults]
                                 [--only fuzz|faults|flood|abuse]
"""
from __future__ import annotations

import argparse
import io
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

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
    from harness import servers
    from harness.fuzzing import Stats, fuzz_http, fuzz_websocket, requests_sender
    puzzles = servers.seed_today(client, embed_dim("test-tiny"))
    web = servers.Gunicorn(redis_url, workdir, "web-fuzz", DRAFT_RATE=1e6, DRAFT_BURST=1e6, SUBMIT_RATE=1e6,
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
    from harness import faults
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
                           "tests/system/test_worker_kill.py"], cwd=ROOT, capture_output=True, text=True)
    tail = (proc.stdout.strip().splitlines() or ["?"])[-1]
    print(f"faults: worker kill -9 mid-job (tests/system/test_worker_kill.py): {tail} in {time.perf_counter() - t0:.1f}s")
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
    from harness.client import WSClient
    player = WSClient.player(url)
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
            except (OSError, AttributeError):  # cut off (1008); once the reader saw the close, ws.sock is None
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
        from harness.client import WSClient
        self.rng = random.Random(idx)
        self.player = WSClient.player(url)
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
    from harness import servers
    from harness.client import WSClient
    client.flushall()
    puzzles = servers.seed_today(client, embed_dim(model), model_id=f"{model}/random")
    web = servers.Gunicorn(redis_url, workdir, "web-flood", CLIP_MODEL=model, TORCH_THREADS=1)
    try:
        web.wait_ready(timeout=180)
        players = [Typist(i, web.url, puzzles[i % len(puzzles)]) for i in range(typists)]
        warm = WSClient.player(web.url)  # the first drafts pay for warm-up: not part of either phase
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


# -- 4. abuse ------------------------------------------------------------------------------------
SECRET_PROMPT = "a quartz zebra painting in the style of nobody 7781"  # distinctive: any byte of it served is a leak
SECRET_SEED = 918273645


def _png(color, text: dict | None = None) -> bytes:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo
    info = PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def seed_abuse_day(client, dim: int) -> tuple[list[str], list[str]]:
    """Today: a GAN target whose file carries its prompt and seed (as engine/generate.py writes
    them) and two photos with text chunks; then two more GAN targets left in the pool, unseen.
    Returns (today's puzzle ids, pool-only target ids)."""
    import numpy as np
    from game.store import Store
    from harness.settings import MODEL_ID
    store = Store(client, MODEL_ID)
    rng = np.random.default_rng(7)

    def unit():
        v = rng.standard_normal(dim).astype(np.float32)
        return v / np.linalg.norm(v)
    chunks = {"prompt": SECRET_PROMPT, "seed": str(SECRET_SEED), "settings": '{"steps": 300}'}
    store.add_target("gan", _png((10, 200, 30), chunks), unit(), prompt=SECRET_PROMPT, self_score=0.31,
                     seed=SECRET_SEED, settings={"steps": 300})
    for i in range(2):
        store.add_target("photo", _png((200, 40 * i, 90), {"Author": "Jane Doe, 12 Secret Lane"}), unit(),
                         title=f"photo {i}")
    puzzles = [p.id for p in store.freeze_day(store.today())]
    pool = [store.add_target("gan", _png((90, 90, 20 * i), {"prompt": f"tomorrow's prompt {i}"}), unit(),
                             prompt=f"tomorrow's prompt {i}", self_score=0.3, seed=i) for i in range(2)]
    return puzzles, pool


class Client:
    """A player as seen from one client address (X-Forwarded-For, trusted: one proxy hop configured)."""

    def __init__(self, url: str, addr: str, cookie: str | None = None):
        import requests
        self.url, self.addr = url, addr
        self.http = requests.Session()
        self.http.headers["X-Forwarded-For"] = addr
        if cookie is None:
            resp = self.http.get(url + "/", timeout=20)
            cookie = resp.cookies.get("captionary") and f"captionary={resp.cookies['captionary']}"
        else:
            self.http.headers["Cookie"] = cookie
        self.cookie = cookie

    def socket(self, **kwargs):
        """This client's websocket (the raw connection of harness.client.WSClient), with its address."""
        from harness.client import WSClient
        return WSClient(self.url, self.cookie, self.url, headers=[f"X-Forwarded-For: {self.addr}"], **kwargs).ws


def _persistent_keys(client) -> set[bytes]:
    return {k for k in client.scan_iter(count=1000) if client.ttl(k) == -1}


def check_secrets(url: str, client, puzzles: list[str], pool: list[str]) -> int:
    """Date walking, served images, pool images, every public page: what leaked (count)."""
    import requests
    import websocket
    from engine.images import has_png_metadata
    from game import puzzles as pz
    leaks = 0
    visitor = Client(url, "10.9.0.1")
    s = visitor.http
    secret = [SECRET_PROMPT.encode(), str(SECRET_SEED).encode(), b"Secret Lane", b"tomorrow's prompt"]

    def leaked(body: bytes, where: str) -> int:
        found = [x.decode() for x in secret if x in body]
        if found:
            print(f"abuse: LEAK {where}: {found}")
        return len(found)
    # Every public page and API reply of today, and each served image.
    day = requests.get(url + "/api/status", timeout=20).json()["today"]
    pages = ["/", "/how", "/archive", "/leaderboard", f"/leaderboard/{day}", "/api/status", "/api/state",
             f"/api/daily?date={day}"] + [f"/play/{day}/{n}" for n in range(1, len(puzzles) + 1)]
    pages += [f"/api/board?puzzle={p}" for p in puzzles] + [f"/api/state?puzzle={p}" for p in puzzles]
    for path in pages:
        r = s.get(url + path, timeout=20)
        leaks += leaked(r.content + str(r.headers).encode(), path)
    ws = visitor.socket()
    for p in puzzles:
        for msg in ({"type": "hello", "puzzle": p}, {"type": "hint", "puzzle": p}, {"type": "subscribe", "puzzles": [p]}):
            ws.send(json.dumps(msg))
            leaks += leaked(ws.recv().encode(), f"ws {msg['type']}")
    ws.close()
    images = 0
    from game.store import Store
    from harness.settings import MODEL_ID
    store = Store(client, MODEL_ID)
    for target_id in [p.target_id for p in store.puzzles_for(day)]:
        r = s.get(f"{url}/target/{target_id}.png", timeout=20)
        images += 1
        if r.status_code != 200:
            print(f"abuse: today's image {target_id} answered {r.status_code}")
            continue
        if has_png_metadata(r.content):
            leaks += 1
            print(f"abuse: LEAK metadata in served image {target_id}")
        leaks += leaked(r.content, f"image {target_id}")
    pool_served = sum(s.get(f"{url}/target/{t}.png", timeout=20).status_code != 404 for t in pool)
    leaks += pool_served
    # Walking dates: 100 days back, 100 ahead (never puzzle days here), each puzzle and board.
    before = _persistent_keys(client)
    walked = answered = 0
    for offset in [d for d in range(-100, 101) if d != 0]:
        date = pz.add_days(day, offset)
        for path in [f"/play/{date}/1", f"/play/{date}/2", f"/leaderboard/{date}", f"/reveal/{date}",
                     f"/api/board?puzzle={pz.puzzle_id(date, 1)}", f"/api/daily?date={date}"]:
            r = s.get(url + path, timeout=20, allow_redirects=False)
            walked += 1
            if r.status_code == 200 and not path.startswith("/api/daily"):
                answered += 1
            elif path.startswith("/api/daily") and r.status_code == 200 and r.json().get("entries"):
                answered += 1
    new_keys = _persistent_keys(client) - before
    leaks += answered + len(new_keys)
    print(f"abuse: secrets: {len(pages)} public pages + {3 * len(puzzles)} websocket replies + {images} served "
          f"images checked for the prompt, seed and file metadata; pool images served: {pool_served}/{len(pool)}; "
          f"date walking: {walked} requests over 200 non-puzzle days, answered 200: {answered}, keys written that "
          f"never expire: {len(new_keys)} {sorted(k.decode() for k in new_keys)[:5]}")
    return leaks


def check_names(url: str) -> int:
    """Look-alike and invisible nicknames accepted (count)."""
    wrong = 0
    first = Client(url, "10.9.1.1")
    r = first.http.post(url + "/api/nickname", json={"nickname": "Admin"}, headers={"Origin": url}, timeout=20)
    base_ok = r.status_code == 200
    attempts = {"\u0410dmin (Cyrillic A)": "\u0410dmin", "ADMIN (case)": "ADMIN",
                "U+3164 filler only": "\u3164", "zero-width inside": "Ad\u200bmin2",
                "bidi control": "\u202eelgoog"}
    accepted = []
    for label, name in attempts.items():
        other = Client(url, "10.9.1.2")
        r = other.http.post(url + "/api/nickname", json={"nickname": name}, headers={"Origin": url}, timeout=20)
        if r.status_code >= 500:
            print(f"abuse: nickname {label}: HTTP {r.status_code}")
        if r.status_code == 200:
            accepted.append(label)
    wrong = len(accepted) + (not base_ok)
    print(f"abuse: names: 'Admin' taken first ({'ok' if base_ok else 'REFUSED'}); accepted afterwards: "
          f"{', '.join(accepted) or 'none'} of {len(attempts)} look-alike/invisible names")
    return wrong


def check_identity_churn(url: str, n: int = 120) -> int:
    """One address minting anonymous players: how many it got (a limit should stop it early)."""
    import requests
    minted = refused = 0
    t0 = time.perf_counter()
    for _ in range(n):
        r = requests.get(url + "/", headers={"X-Forwarded-For": "10.9.2.1"}, timeout=20)
        if r.status_code == 429:
            refused += 1
        elif "captionary" in r.cookies:
            minted += 1
    print(f"abuse: identity churn: one address asked for {n} new players in {time.perf_counter() - t0:.1f}s: "
          f"{minted} minted, {refused} refused (429)")
    return 0 if refused else 1


def check_socket_cap(url: str, limit: int = 160) -> bool:
    """Open sockets for one player, then many players from one address, until refused; then
    check that someone else can still connect and play."""
    import websocket
    held = []

    def fill(make) -> int:
        opened = 0
        for i in range(limit):
            try:
                ws = make(i)
            except (websocket.WebSocketException, OSError):
                return opened
            ws.send(json.dumps({"type": "ping"}))
            try:
                reply = json.loads(ws.recv())
            except (websocket.WebSocketException, OSError, ValueError):
                return opened
            if reply.get("code") == "too_many_connections":
                return opened
            held.append(ws)
            opened += 1
        return opened
    import requests
    per_player = per_address = 0
    others_ok = False
    try:
        one = Client(url, "10.9.3.1")
        per_player = fill(lambda i: one.socket())
        # Players minted first (different addresses), then all connecting from one address.
        cookies = [Client(url, f"10.9.4.{i % 250 + 1}").cookie for i in range(limit // 2)]
        per_address = fill(lambda i: Client(url, "10.9.5.1", cookies[i % len(cookies)]).socket())
        other = Client(url, "10.9.6.1").socket()
        other.send(json.dumps({"type": "ping"}))
        others_ok = json.loads(other.recv()).get("type") == "pong"
        other.close()
    except (requests.RequestException, websocket.WebSocketException, OSError) as exc:
        print(f"abuse: socket cap: the server stopped answering others: {type(exc).__name__}: {exc}")
    finally:
        for ws in held:
            try:
                ws.close()
            except Exception:
                pass
    capped = per_player < limit and per_address < limit
    print(f"abuse: socket cap: one player opened {per_player}, one address {per_address} (tried up to {limit} "
          f"each) before refusal; another client still served: {others_ok}")
    return capped and others_ok


def check_slow_reader(url: str, puzzles: list[str], seconds: float = 12.0, watchers: int = 3) -> float:
    """A client subscribed to every board that never reads (and keeps asking for boards), while
    watchers see each submission's board push; returns the worst push delay in ms (seconds*1000
    when a push never came)."""
    import socket as socketlib
    import websocket
    slow = Client(url, "10.9.7.1").socket(sockopt=((socketlib.SOL_SOCKET, socketlib.SO_RCVBUF, 4096),))
    slow.send(json.dumps({"type": "subscribe", "puzzles": puzzles}))
    stop = threading.Event()

    def pester():  # under the frame budget, every reply a few boards it never reads
        try:
            while not stop.is_set():
                slow.send(json.dumps({"type": "subscribe", "puzzles": puzzles}))
                time.sleep(1 / 40)
        except (websocket.WebSocketException, OSError):
            pass  # the server cut it off: that is the point
    pest = threading.Thread(target=pester, daemon=True)
    pest.start()
    seen: dict[int, list[float]] = {}
    watch_socks = []
    for i in range(watchers):
        ws = Client(url, f"10.9.8.{i + 1}").socket()
        ws.send(json.dumps({"type": "subscribe", "puzzles": [puzzles[0]]}))
        watch_socks.append(ws)

    def watch(ws):
        while not stop.is_set():
            try:
                msg = json.loads(ws.recv())
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketException, OSError, ValueError):  # closed ('' is not JSON)
                return
            if msg.get("type") == "board" and msg.get("entries"):
                marks = [e.get("score") for e in msg["entries"]]
                now = time.perf_counter()
                for mark in marks:
                    seen.setdefault(round(mark or 0, 6), []).append(now)
    threads = [threading.Thread(target=watch, args=(ws,), daemon=True) for ws in watch_socks]
    for t in threads:
        t.start()
    time.sleep(2.0)  # the slow reader's buffers fill first
    delays = []
    t_end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < t_end and n < 10:
        n += 1
        submitter = Client(url, f"10.9.9.{n}").socket()  # a new player each time: a new row on the board
        # From the moment the submission is sent: its board push can reach a watcher before the
        # submitter has read its own result, and must not be mistaken for a push that never came.
        sent = time.perf_counter()
        submitter.send(json.dumps({"type": "submit", "puzzle": puzzles[0], "caption": f"{random.choice(WORDS)} {n}"}))
        reply = json.loads(submitter.recv())
        while reply.get("type") != "result":
            reply = json.loads(submitter.recv())
        submitter.close()
        score = round(reply["score"], 6)
        deadline = sent + 5.0
        while time.perf_counter() < deadline and len([t for t in seen.get(score, []) if t >= sent]) < watchers:
            time.sleep(0.005)
        arrivals = [t for t in seen.get(score, []) if t >= sent]
        delays.append((max(arrivals) - sent) if len(arrivals) >= watchers else 5.0)
        time.sleep(0.5)
    stop.set()
    for ws in watch_socks + [slow]:
        try:
            ws.close()
        except Exception:
            pass
    worst = max(delays) * 1000 if delays else seconds * 1000
    print(f"abuse: slow reader: {watchers} watchers saw {len(delays)} submissions' board pushes: "
          f"worst {worst:.0f} ms, median {sorted(delays)[len(delays) // 2] * 1000:.0f} ms "
          f"(5000 ms = never arrived)")
    return worst


def run_abuse(workdir: Path, redis_url: str, client) -> dict:
    from harness import servers
    client.flushall()
    puzzles, pool = seed_abuse_day(client, embed_dim("test-tiny"))
    # One trusted proxy hop: each simulated client has its own address in X-Forwarded-For.
    # The shipped per-address limits (harness/settings.py lifts them for tests, whose clients all
    # share 127.0.0.1; here each client has its own address, so the real defaults apply).
    from game.config import DEFAULTS
    shipped = {k: DEFAULTS[k] for k in ("WS_PER_PLAYER", "WS_PER_ADDRESS", "NEW_PLAYER_RATE", "NEW_PLAYER_BURST")}
    web = servers.Gunicorn(redis_url, workdir, "web-abuse", TRUSTED_PROXIES=1,
                         ADMIN_TOKEN="hardening-admin-token-0123456789abcdef", **shipped)
    try:
        web.wait_ready()
        leaks = check_secrets(web.url, client, puzzles, pool)
        stall = check_slow_reader(web.url, puzzles)
        cap_held = check_socket_cap(web.url)
        leaks += check_names(web.url)
        leaks += check_identity_churn(web.url)
        if web.proc.poll() is not None:
            print("abuse: the web process DIED")
            leaks += 1
    finally:
        web.stop()
    return {"leaks": leaks, "stall_ms": stall, "cap_held": cap_held}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller fuzz run and shorter flood (CI-sized)")
    parser.add_argument("--fuzz-examples", type=int, help="websocket fuzz batches (1-4 frames each)")
    parser.add_argument("--flood-model", default="ViT-B-32", help="judge for the flood run (random weights)")
    parser.add_argument("--skip-faults", action="store_true")
    parser.add_argument("--only", choices=("fuzz", "faults", "flood", "abuse"),
                        help="run one section (its figures only; the others print as not run)")
    parser.add_argument("--flood-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.flood_child:
        url, puzzle, rate, seconds = args.flood_child
        flood_child(url, puzzle, float(rate), float(seconds))
        return 0
    ws_examples = args.fuzz_examples or (600 if args.quick else 4000)
    http_examples = 400 if args.quick else 1500

    def wanted(section):
        return args.only in (None, section) and not (section == "faults" and args.skip_faults)
    from game.store import server as redis_server
    fuzz = {"messages": "-", "crashes": 0, "bad_replies": 0, "http_500": "-"}
    flood = {"ratio": float("nan")}
    abuse = {"leaks": "-", "stall_ms": float("nan"), "cap_held": None}
    lost = "-"
    with tempfile.TemporaryDirectory(prefix="captionary-hardening-") as tmp:
        workdir = Path(tmp)
        instance = str(workdir / "redis")
        client = redis_server.connect(instance)
        redis_url = "unix://" + redis_server.socket_path(instance)
        try:
            if wanted("fuzz"):
                fuzz = run_fuzz(workdir, redis_url, client, ws_examples, http_examples)
            if wanted("faults"):
                faults = run_faults(workdir, redis_url, client)
                lost = faults["lost_acks"]
                if not faults["ok"]:
                    print("faults: a scenario check FAILED (see above)")
            if wanted("flood"):
                flood = run_flood(workdir, redis_url, client, args.flood_model, typists=4 if args.quick else 6,
                                  rounds=2 if args.quick else 5, round_s=4.0 if args.quick else 6.0)
                if not flood["throttled"]:
                    print("flood: the flooder was NOT throttled")
            if wanted("abuse"):
                abuse = run_abuse(workdir, redis_url, client)
        finally:
            client.close()
            redis_server.stop(instance)
    crashes = fuzz["crashes"] + fuzz["bad_replies"]
    cap = {True: "yes", False: "no", None: "-"}[abuse["cap_held"]]
    print(f"hardening: fuzz_msgs={fuzz['messages']} crashes={crashes} http_500={fuzz['http_500']} "
          f"lost_acks={lost} flood_p99_ratio={flood['ratio']:.2f} leaks={abuse['leaks']} "
          f"slow_reader_stall_ms={abuse['stall_ms']:.0f} socket_cap_held={cap}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
