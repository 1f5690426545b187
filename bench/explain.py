"""Explanation benchmark: word contributions and heatmaps while players type, on CPU.

On the ViT-B-32 architecture with seeded random weights (the compute of the real
judge; the numbers themselves mean nothing), in one process, as the web process
runs them (game/explain.py):

  * a light typing load: `--typists` threads, each typing distinct captions
    (a draft at every word boundary and every few keystrokes, bench/scoring.py's
    typing model) through `Scorer.score` with its stream key, pausing `--think-ms`
    between drafts; each draft's latency is recorded;
  * explanations, one at a time, back to back (the worst case for one process:
    the heatmap lane is serial): for fresh 12-word captions, the word
    contributions (`engine.explain.word_contributions`, one bulk batch) and the
    heatmap (the caption's embedding, then `relevance_map`), both on the web
    process's `game.explain.ExplainLane`: on CPU a niced child process over the
    same weights that the live scorer stops during each live batch
    (game/explain_process.py); `--in-thread` runs them on the lane thread with
    its own Scorer instead, as a GPU judge does.

Rounds alternate typing alone and typing with explanations, so a machine shared
with other work slows both alike. Afterwards every word effect is checked
against scoring its two captions on their own through open_clip's path
(`encode_texts_reference`): max_abs_diff. Prints the CPU, then as its last line

  explain: words=<n> words_p50_ms=<a> heatmap_p50_ms=<b> max_abs_diff=<d>

after a line with the typing load's p99 alone and with explanations and their
ratio (target <= 1.2). An earlier line gives the explanations' cost with nobody
typing, which on a machine shared with other work shows how much of the figures
under load is the lane's low priority rather than compute. --nice and
--switch-ms try other settings of the in-thread lane. Targets on the 2-core box: words_p50_ms <= 300,
heatmap_p50_ms <= 1500, max_abs_diff <= 1e-5.

Usage: PYTHONPATH=. python bench/explain.py [--quick] [--rounds N] [--seconds S] [--typists N]
       [--model ViT-B-32] [--threads N]
AVX2 as on most servers: ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from engine.clip_model import load_clip
from engine.scorer import Scorer, configure_torch_threads
from game.explain import ExplainLane

ROOT = Path(__file__).resolve().parents[1]
WORDS = 12


def _scoring():
    # bench/ is scripts, not a package: load the caption and typing models from the file.
    spec = importlib.util.spec_from_file_location("bench_scoring", ROOT / "bench" / "scoring.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def isa() -> str:
    wanted = os.environ.get("ATEN_CPU_CAPABILITY")
    return f"ATEN_CPU_CAPABILITY={wanted} (emulated)" if wanted else f"native ({torch.backends.cpu.get_cpu_capability()})"


def scene(size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), (120, 180, 235))
    d = ImageDraw.Draw(img)
    d.rectangle((0, size * 2 // 3, size, size), fill=(70, 150, 60))
    d.ellipse((size * 3 // 4, 10, size - 10, size // 4), fill=(250, 210, 60))
    d.rectangle((size // 5, size // 3, size // 2, size * 3 // 4), fill=(170, 40, 35))
    return img


class Typists:
    """`n` threads typing distinct captions through the scorer; latencies go to `self.samples`."""

    def __init__(self, scorer: Scorer, image_emb, n: int, think_s: float, seed: int, scoring):
        self.scorer, self.image, self.think = scorer, image_emb, think_s
        self.samples: list[float] = []
        self.recording = False
        self.paused = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i, seed + i, scoring), daemon=True)
                         for i in range(n)]

    def _run(self, index: int, seed: int, scoring) -> None:
        rng = random.Random(seed)
        k = 0
        while not self._stop.is_set():
            k += 1
            caption = f"{scoring.make_caption(rng, rng.randint(6, 16))} take {index}-{k}"
            for draft in scoring.typing_drafts(caption, rng):
                if self._stop.is_set():
                    return
                while self.paused.is_set() and not self._stop.is_set():
                    time.sleep(0.05)
                started = time.perf_counter()
                self.scorer.score(draft, self.image, stream=f"typist{index}")
                took = (time.perf_counter() - started) * 1000
                if self.recording:
                    with self._lock:
                        self.samples.append(took)
                time.sleep(self.think)

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def take(self) -> list[float]:
        with self._lock:
            out, self.samples = self.samples, []
        return out

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two short rounds (about a minute)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds of each kind (default 3)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per round (default 12)")
    parser.add_argument("--typists", type=int, default=3)
    parser.add_argument("--think-ms", type=float, default=120.0, help="pause between one typist's drafts")
    parser.add_argument("--seed", type=int, default=4321)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: cores - 1)")
    parser.add_argument("--nice", type=int, default=None, help="the lane thread's nice (default game.explain.LANE_NICE)")
    parser.add_argument("--switch-ms", type=float, default=None, help="GIL switch interval for this run (default: the lane's 1 ms; Python's own is 5)")
    parser.add_argument("--in-thread", action="store_true",
                        help="explain on the lane thread in this process, as a GPU judge does (default on CPU: "
                             "the niced child process, game/explain_process.py)")
    parser.add_argument("--only", choices=("words", "heatmap"), default=None,
                        help="explain with one kind only (to see which one costs the typists)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    seconds = args.seconds or (8.0 if args.quick else 12.0)

    threads = configure_torch_threads(args.threads)
    clip = load_clip(args.model, "random")
    scoring = _scoring()
    print(f"model: {clip.describe()}; torch {torch.__version__}, {threads} intra-op threads; "
          f"CPU {cpu_name()}, {len(os.sched_getaffinity(0))} cores, ISA {isa()}, load average "
          f"{os.getloadavg()[0]:.1f}")
    scorer = Scorer(clip)
    picture = scene(clip.image_size)
    image_emb = scorer.embed_image(picture)
    lane = ExplainLane(scorer, max_queue=1, isolate=not args.in_thread,
                       **({} if args.nice is None else {"nice": args.nice}))
    if args.switch_ms:  # after the lane, which sets the production value (game.explain.GIL_SWITCH_S)
        sys.setswitchinterval(args.switch_ms / 1000)
    rng = random.Random(args.seed)
    typists = Typists(scorer, image_emb, args.typists, args.think_ms / 1000, args.seed, scoring)
    typists.start()
    time.sleep(1.0)  # warm the typists' streams and the model
    word_ms, heat_ms, explained = [], [], []
    alone, loaded = [], []

    lane.heatmap("a warm up caption", picture)
    typists.paused.set()  # the explanations' own cost on this machine now, with nobody typing
    time.sleep(0.5)
    solo_words, solo_heat = [], []
    for i in range(3):
        caption = f"{scoring.make_caption(rng, WORDS - 1)} solo{i}"
        started = time.perf_counter()
        lane.words(caption, image_emb)
        solo_words.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        lane.heatmap(caption, picture)
        solo_heat.append((time.perf_counter() - started) * 1000)
    typists.paused.clear()
    print(f"alone (nobody typing): words p50 {np.percentile(solo_words, 50):.1f} ms, "
          f"heatmap p50 {np.percentile(solo_heat, 50):.1f} ms", flush=True)
    for r in range(rounds):
        typists.take()
        typists.recording = True
        time.sleep(seconds)
        typists.recording = False
        alone += typists.take()
        typists.recording = True
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            caption = f"{scoring.make_caption(rng, WORDS)}"
            words = caption.split()
            if len(words) != WORDS or caption in explained:
                continue
            if args.only != "heatmap":
                started = time.perf_counter()
                result = lane.words(caption, image_emb)
                word_ms.append((time.perf_counter() - started) * 1000)
                explained.append((caption, result))
            if args.only != "words":
                started = time.perf_counter()
                lane.heatmap(caption, picture)
                heat_ms.append((time.perf_counter() - started) * 1000)
        typists.recording = False
        loaded += typists.take()
        print(f"round {r + 1}: {max(len(word_ms), len(heat_ms))} explained so far; typing p99 alone "
              f"{np.percentile(alone, 99):.1f} ms, with explanations {np.percentile(loaded, 99):.1f} ms", flush=True)
    typists.stop()

    image = np.asarray(image_emb, dtype=np.float64)
    diffs = []
    for caption, result in explained:
        words = caption.split()
        variants = [" ".join(words[:i] + words[i + 1:]) for i in range(len(words))]
        ref = clip.encode_texts_reference([caption] + variants).numpy().astype(np.float64) @ image
        diffs += [abs(e - (ref[0] - ref[i + 1])) for i, e in enumerate(result.effects)]
    scorer.close()
    lane.close()
    p99_alone, p99_loaded = np.percentile(alone, 99), np.percentile(loaded, 99)
    print(f"typing: {len(alone)} drafts alone p50 {np.percentile(alone, 50):.1f} ms p99 {p99_alone:.1f} ms; "
          f"{len(loaded)} drafts with explanations p50 {np.percentile(loaded, 50):.1f} ms p99 {p99_loaded:.1f} ms; "
          f"p99_ratio={p99_loaded / p99_alone:.2f} (target <= 1.2)")
    p50 = lambda xs: f"{np.percentile(xs, 50):.1f}" if xs else "nan"  # noqa: E731
    print(f"explain: words={WORDS} words_p50_ms={p50(word_ms)} heatmap_p50_ms={p50(heat_ms)} "
          f"max_abs_diff={max(diffs) if diffs else float('nan'):.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
