"""GIL convoy benchmark: the judge's encoder calls beside busy Python threads, scripted vs eager blocks.

A web process's request threads run Python (websocket frames, JSON, Redis replies) while
the judge's batching thread encodes. The eager text blocks take the GIL back after each
of their ~200 torch ops per call, so every op can queue behind a request thread (up to
the switch interval each time); the TorchScript blocks (engine/text_encoder.py
`_blocks_forward`) run all of them in one call without the GIL. This measures the same
ragged typing batches (1-12 drafts, one new word on a cached prefix each) both ways, in
alternating rounds, alone and beside `--busy` Python threads that do JSON work and sleep
2 ms now and then (a stand-in for request threads), with the web process's GIL switch
interval (game GIL_SWITCH_MS, 1 ms). ViT-B-32, random weights, 1 torch thread.

Last line:
  gil_convoy: busy=<n> scripted_ms=<a> eager_ms=<b> ratio=<b/a> alone_scripted_ms=<c> alone_eager_ms=<d>

Usage: PYTHONPATH=. python bench/gil_convoy.py [--busy N] [--batches N] [--model ViT-B-32]
AVX2 as on most servers: ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import threading
import time

import torch

from engine.clip_model import load_clip
from engine.text_encoder import Job, TextEncoder

WORDS = ("red barn field cow dog snow lake tree sky blue green old man woman child runs sits eats "
         "castle robot violin owl train harbor").split()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busy", type=int, default=4, help="busy Python threads beside the encoder")
    parser.add_argument("--batches", type=int, default=40, help="typing batches per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--switch-ms", type=float, default=1.0, help="GIL switch interval (the game's default)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sys.setswitchinterval(args.switch_ms / 1000)
    clip = load_clip(args.model, "random")
    enc = TextEncoder(clip)
    if enc._scripted is None:
        print(f"the scripted blocks are unavailable here: {enc._script_weights}")
        return 1
    rng = random.Random(1)

    def batch(n: int) -> list[Job]:
        caps = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]
        kept = enc.encode([Job(enc.key(c), keep=True) for c in caps])
        return [Job(enc.key(c + " " + rng.choice(WORDS)), prefix=k.prefix) for c, k in zip(caps, kept)]

    stop = threading.Event()

    def busy() -> None:
        msg = {"type": "draft", "seq": 1, "puzzle": "2026-12-02/1", "caption": "a red barn in a field " * 3}
        while not stop.is_set():
            for _ in range(200):
                json.loads(json.dumps(msg))
            time.sleep(0.002)

    scripted = enc._scripted

    def per_batch_ms(batches, use_script: bool) -> float:
        enc._scripted = scripted if use_script else None
        started = time.perf_counter()
        for jobs in batches:
            enc.encode(jobs)
        return (time.perf_counter() - started) * 1000 / len(batches)

    print(f"model: {clip.describe()}; torch {torch.__version__}, 1 thread; GIL switch {args.switch_ms} ms; "
          f"{len(os.sched_getaffinity(0))} cores; load average {os.getloadavg()[0]:.1f}")
    results = {}
    with torch.inference_mode():
        batches = [batch(rng.randint(1, 12)) for _ in range(args.batches)]
        per_batch_ms(batches[:5], True)
        per_batch_ms(batches[:5], False)
        for label, n in (("alone", 0), ("busy", args.busy)):
            stop.clear()
            threads = [threading.Thread(target=busy, daemon=True) for _ in range(n)]
            for t in threads:
                t.start()
            s_ms, e_ms = [], []
            for _ in range(args.rounds):  # alternating, so both see the same machine
                s_ms.append(per_batch_ms(batches, True))
                e_ms.append(per_batch_ms(batches, False))
            stop.set()
            for t in threads:
                t.join()
            results[label] = (statistics.median(s_ms), statistics.median(e_ms))
            print(f"{label} ({n} busy threads): ms per batch, scripted {[round(x, 1) for x in s_ms]}, "
                  f"eager {[round(x, 1) for x in e_ms]}", flush=True)
    (s_alone, e_alone), (s_busy, e_busy) = results["alone"], results["busy"]
    print(f"gil_convoy: busy={args.busy} scripted_ms={s_busy:.1f} eager_ms={e_busy:.1f} ratio={e_busy / s_busy:.2f} "
          f"alone_scripted_ms={s_alone:.1f} alone_eager_ms={e_alone:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
