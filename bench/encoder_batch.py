"""Where a typing draft's time goes in the judge: cost of one encoder call by batch size.

A profile of the typing path's compute, not a load test. For B typing players
(each with an 8-word cached prefix and one new word, so 2 new token positions
per draft: the word and the end token), it times `TextEncoder.encode` on the
whole batch, and, as the reference in the same run, open_clip's own
`model.encode_text` on one of those drafts at a time. It also times a bare
512x2048 fp32 linear at 1..128 rows, the GEMM speed the typing path can reach.

What it showed (docs/scaling.md, "Where a draft's time goes"): one draft alone
costs as much as a batch of four, because every call streams all 150 MB of
text-tower weights from memory; only batching many players' new positions into
the same GEMMs amortises that.

Usage: python bench/encoder_batch.py [--threads N] [--model ViT-B-32]
Last line: encoder_batch: threads=<t> b1_ms=<a> b32_ms=<b> b32_drafts_per_s=<x> ragged32_ms=<c>
ragged128_drafts_per_s=<y> reference_drafts_per_s=<r> ratio=<x/r>
("ragged": prefixes of 1-14 words and 1-3 new words per player, as a real batch)
"""
from __future__ import annotations

import argparse
import random
import sys
import time

import torch

from engine.clip_model import load_clip
from engine.text_encoder import Job, TextEncoder

WORDS = ("a red fluffy raccoon driving an old tractor across the snowy valley at sunset in "
         "winter painting").split()


def typing_jobs(encoder: TextEncoder, players: int, rng: random.Random) -> list[Job]:
    jobs = []
    for _ in range(players):
        base = " ".join(rng.sample(WORDS, 8))
        prefix = encoder.encode([Job(encoder.key(base), keep=True)])[0].prefix
        draft = encoder.key(base + " " + rng.choice(WORDS))
        jobs.append(Job(draft, prefix=prefix, keep=True))
    return jobs


def ragged_jobs(encoder: TextEncoder, players: int, rng: random.Random) -> list[Job]:
    """Typing players as the server sees them: cached prefixes of 1-14 words, 1-3 new words."""
    jobs = []
    for _ in range(players):
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 14))]
        base = " ".join(words)
        prefix = encoder.encode([Job(encoder.key(base), keep=True)])[0].prefix
        draft = encoder.key(" ".join([base] + [rng.choice(WORDS) for _ in range(rng.randint(1, 3))]))
        jobs.append(Job(draft, prefix=prefix, keep=True))
    return jobs


def timed(fn, repeats: int) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default="ViT-B-32")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    clip = load_clip(args.model, "random")
    encoder = TextEncoder(clip)
    rng = random.Random(0)
    print(f"model: {clip.describe()}; linear backend {encoder.linear_backend}; {args.threads} thread(s)")

    with torch.inference_mode():
        one = typing_jobs(encoder, 1, rng)[0]
        rows = clip.tokenizer([""])  # a full-context row like the naive path's
        rows[0].zero_()
        rows[0, : len(one.key)] = torch.tensor(one.key)
        reference_s = timed(lambda: clip.model.encode_text(rows), 10)
        per_batch = {}
        for players in (1, 4, 16, 32, 64):
            jobs = typing_jobs(encoder, players, rng)
            per_batch[players] = timed(lambda: encoder.encode(jobs), max(3, 60 // players))
            print(f"batch {players:3d} drafts: {per_batch[players] * 1000:7.2f} ms/call, "
                  f"{players / per_batch[players]:7.1f} drafts/s")
        ragged = {}
        for players in (8, 32, 128):
            jobs = ragged_jobs(encoder, players, rng)
            new = sum(len(j.key) - r.reused for j, r in zip(jobs, encoder.encode(jobs)))
            ragged[players] = timed(lambda: encoder.encode(jobs), max(3, 60 // players))
            print(f"ragged {players:3d} drafts ({new} new positions): {ragged[players] * 1000:7.2f} ms/call, "
                  f"{players / ragged[players]:7.1f} drafts/s")
        weight = torch.randn(2048, 512)
        for n in (1, 8, 32, 128):
            x = torch.randn(n, 512)
            dt = timed(lambda: torch.nn.functional.linear(x, weight), 200)
            print(f"linear {n:3d} x 512 -> 2048: {2 * n * 512 * 2048 / dt / 1e9:6.1f} GFLOP/s")
    reference = 1 / reference_s
    b32 = 32 / per_batch[32]
    print(f"reference: open_clip encode_text, one draft per call: {reference:.1f} drafts/s")
    print(f"encoder_batch: threads={args.threads} b1_ms={per_batch[1] * 1000:.1f} "
          f"b32_ms={per_batch[32] * 1000:.1f} b32_drafts_per_s={b32:.1f} "
          f"ragged32_ms={ragged[32] * 1000:.1f} ragged128_drafts_per_s={128 / ragged[128]:.1f} "
          f"reference_drafts_per_s={reference:.1f} ratio={b32 / reference:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
