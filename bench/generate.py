"""Generation benchmark and notebook check: the 2021 notebook's loop against engine.generate, in one run.

The notebook's loop is written out below, step for step (the plain "z+quantize"
notebook): random codebook tokens as z, straight-through quantise, decode,
clamp with gradient, `cutn` square crops each resized on its own by the
notebook's `resample` (Lanczos-2 low-pass on each shrinking axis, reflect
padding, then bicubic with align_corners=True), the cutouts clamped, CLIP,
spherical distance, `F.mse_loss(z, z_orig) * init_weight / 2`, Adam at lr 0.1,
z clamped to the codebook's range.

`--check-notebook` (CPU, fp32, the tiny test models, 5 steps at 64 and 128 px):
runs our `generate()` and that loop from the same seed, the same z and the
same cutout boxes (the loop draws them from the engine's seeded generator in
the engine's order, as a `torch.randint` call would have), and prints last

  notebook_match: steps=5 cutouts_max_abs_diff=<a> loss_max_abs_diff=<b> z_max_abs_diff=<c>

exit status 1 when any is above 1e-4. At 64 px every crop is the whole image at
CLIP's 64 px input (bicubic only); at 128 px crops shrink (the prefilter runs).

Speed (the default): both sides on the same models, the imagenet f16/16384
VQGAN architecture and CLIP ViT-B-32 with seeded random weights (the compute
of trained weights; the images mean nothing). For each size, in this order:

  (a) reference: the loop as the notebook ran it, at the notebook's precision:
      on CUDA CLIP in fp16 (OpenAI's clip.load converted it) and the VQGAN in
      fp32; on CPU all fp32 (CPU fp16 is not what anyone ran, and is slow);
      batch 1, one resample per cutout, boxes drawn by torch.rand/randint per
      cutout, PyTorch's default backend settings with cudnn.benchmark off;
  (b) engine: as the worker runs it: the job config from
      game.generation.service.generation_config (its REPORT_EVERY cadence: the
      device syncs and on_step runs every REPORT_EVERY steps) and the worker's
      own progress callback; bf16 autocast on CUDA; `--compile` adds torch.compile;
  (a') the reference again; the better of its two measurements counts.

The engine changes no global backend setting; the bench checks that the flags
after each engine run equal those the reference ran with, so nothing leaks.
Then `--seeds` candidates run batched on both sides (the engine with pruning
off: best-of-N's first phase), and both sides' images after `--score-steps`
steps from the same start are scored by the game's self-score path (a
random-weight judge: the numbers show the two stay alike, not that either is good).
Each side's rate is the best of `--repeats` timed windows (a busy machine's stalls
hit one window, not the figure); ratios compare numbers measured in the same run.
The last lines are machine-readable:

  generate: size=<s> reference_it_s=<a> engine_it_s=<b> ratio=<r> peak_gib=<m>
  generate_batch: size=<s> seeds=<n> seed_it_s=<x> reference_seed_it_s=<y>
  self_score: size=<s> steps=<n> engine=<a> reference=<b>

`--cutouts` only times one step's cutout resize (forward + backward) three ways:
our batched notebook resample, our bilinear option, and the notebook's per-cutout loop:

  cutouts: size=<s> cutn=<n> notebook_ms=<a> bilinear_ms=<b> per_cutout_notebook_ms=<c>

peak_gib is torch.cuda.max_memory_allocated on CUDA; on CPU it is "n/a" (the
process's peak RSS, which covers the whole run, is printed on an info line).

Usage: python bench/generate.py [--quick] [--check-notebook] [--sizes 256 512 1024] [--cutn 32]
       [--steps 10] [--seeds 16] [--batch-size 256] [--repeats 3] [--score-steps 50] [--threads N]
       [--cutouts] [--tiny-models] [--compile] [--device cuda]
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import resource
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from engine import cutouts as cut
from engine.clip_model import load_clip
from engine.generate import GenerationConfig, GenerationOutOfMemoryError, generate
from engine.vqgan import load_vqgan
from game.generation.service import REPORT_EVERY, generation_config, progress_callback
from game.generation.worker import TOUCH_EVERY_S

PROMPT = "a raccoon driving a tractor"
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
CHECK_LIMIT = 1e-4


def backend_flags() -> dict:
    return {"cudnn.benchmark": torch.backends.cudnn.benchmark,
            "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "deterministic": torch.are_deterministic_algorithms_enabled()}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---- the notebook's loop ------------------------------------------------------------------
def lanczos_taps(ratio: float) -> torch.Tensor:
    """The notebook's lanczos(ramp(ratio, 2), 2): sinc(x) sinc(x/2) at multiples of ratio, |x| < 2, sum 1."""
    n = math.ceil(2 / ratio + 1)
    ramp = torch.arange(n, dtype=torch.float64) * ratio
    x = torch.cat([-ramp[1:].flip(0), ramp])[1:-1]
    k = torch.where(x.abs() < 2, torch.sinc(x) * torch.sinc(x / 2), x.new_zeros([]))
    return (k / k.sum()).float()


def notebook_resample(x: torch.Tensor, size: int) -> torch.Tensor:
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)
    if size < h:
        k = lanczos_taps(size / h).to(x)
        p = (k.numel() - 1) // 2
        y = F.conv2d(F.pad(y, (0, 0, p, p), "reflect"), k.view(1, 1, -1, 1))
    if size < w:
        k = lanczos_taps(size / w).to(x)
        p = (k.numel() - 1) // 2
        y = F.conv2d(F.pad(y, (p, p, 0, 0), "reflect"), k.view(1, 1, 1, -1))
    return F.interpolate(y.reshape(n, c, h, w), (size, size), mode="bicubic", align_corners=True)


class ReplaceGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_forward, x_backward):
        ctx.shape = x_backward.shape
        return x_forward

    @staticmethod
    def backward(ctx, grad_in):
        return None, grad_in.sum_to_size(ctx.shape)


class ClampWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, min, max):
        ctx.min, ctx.max = min, max
        ctx.save_for_backward(input)
        return input.clamp(min, max)

    @staticmethod
    def backward(ctx, grad_in):
        (input,) = ctx.saved_tensors
        return grad_in * (grad_in * (input - input.clamp(ctx.min, ctx.max)) >= 0), None, None


def vector_quantize(x, codebook):
    d = x.pow(2).sum(dim=-1, keepdim=True) + codebook.pow(2).sum(dim=1) - 2 * x @ codebook.T
    x_q = F.one_hot(d.argmin(-1), codebook.shape[0]).to(d.dtype) @ codebook
    return ReplaceGrad.apply(x_q, x)


def spherical_dist_loss(x, y):
    x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    return (x - y).norm(dim=-1).div(2).arcsin().pow(2).mul(2)


def notebook_boxes(side_x, side_y, cutn, cut_size, cut_pow=1.0):
    """The notebook's MakeCutouts draws: torch's global generator, one crop at a time."""
    max_size, min_size = min(side_x, side_y), min(side_x, side_y, cut_size)
    boxes = []
    for _ in range(cutn):
        size = int(torch.rand([]) ** cut_pow * (max_size - min_size) + min_size)
        ox = int(torch.randint(0, side_x - size + 1, ()))
        oy = int(torch.randint(0, side_y - size + 1, ()))
        boxes.append((size, ox, oy))
    return boxes


def start_latents(vq, size, seed, device):
    """The notebook's random start (one-hot tokens @ codebook), tokens drawn as the engine draws them."""
    codebook = vq.quantize.embedding.weight
    n_toks, e_dim = codebook.shape
    toks = size // vq.config.factor
    gen = torch.Generator(device=device).manual_seed(seed)
    idx = torch.randint(n_toks, (toks, toks), generator=gen, device=device)
    one_hot = F.one_hot(idx.view(-1), n_toks).float()
    return (one_hot @ codebook).view(1, toks, toks, e_dim).permute(0, 3, 1, 2).contiguous(), gen


class NotebookLoop:
    """The notebook's train(i), one z per image (the notebook had one; the batch line runs several)."""

    def __init__(self, vq, clip_model, text_emb, z, cut_size, step_size=0.1, init_weight=0.0, clip_half=False):
        self.vq, self.text_emb, self.cut_size, self.init_weight = vq, text_emb, cut_size, init_weight
        self.clip_half = clip_half
        # clip.load on CUDA converted CLIP to fp16; the VQGAN stayed fp32.
        self.clip = copy.deepcopy(clip_model).half() if clip_half else clip_model
        self.codebook = vq.quantize.embedding.weight
        self.z_min = self.codebook.min(dim=0).values[None, :, None, None]
        self.z_max = self.codebook.max(dim=0).values[None, :, None, None]
        self.z = z.clone().requires_grad_(True)
        self.z_orig = z.clone()
        self.opt = torch.optim.Adam([self.z], lr=step_size)
        self.mean = torch.tensor(MEAN, device=z.device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=z.device).view(1, 3, 1, 1)

    def synth(self, z):
        z_q = vector_quantize(z.movedim(1, 3), self.codebook).movedim(3, 1)
        return ClampWithGrad.apply(self.vq.decode(z_q).add(1).div(2), 0, 1)

    def step(self, boxes=None, cutn=None):
        """One step; boxes: per image a list of (size, x, y), or None to draw them as the notebook did."""
        self.opt.zero_grad(set_to_none=True)
        out = self.synth(self.z)
        cuts, losses = [], []
        for b in range(out.shape[0]):
            img = out[b:b + 1]
            mine = boxes[b] if boxes is not None else notebook_boxes(img.shape[3], img.shape[2], cutn, self.cut_size)
            one = [notebook_resample(img[:, :, oy:oy + s, ox:ox + s], self.cut_size) for s, ox, oy in mine]
            batch = ClampWithGrad.apply(torch.cat(one), 0, 1)
            x = (batch - self.mean) / self.std
            iii = self.clip.encode_image(x.half() if self.clip_half else x).float()
            loss = spherical_dist_loss(iii.unsqueeze(1), self.text_emb.unsqueeze(0)).mean()
            if self.init_weight:
                loss = loss + F.mse_loss(self.z[b:b + 1], self.z_orig[b:b + 1]) * self.init_weight / 2
            cuts.append(batch)
            losses.append(loss)
        sum(losses).backward()
        self.opt.step()
        with torch.no_grad():
            self.z.copy_(self.z.maximum(self.z_min).minimum(self.z_max))
        return torch.cat(cuts).detach(), torch.stack(losses).detach()


# ---- the check ----------------------------------------------------------------------------
def check_notebook(steps=5, sizes=(64, 128), cutn=8, seed=0, init_weight=0.5,
                   resample="notebook") -> tuple[float, float, float]:
    """Max |ours - notebook| of cutouts, losses and z over `steps` steps at each size (CPU, fp32).

    `resample="bilinear"` checks our fast option against the notebook (it must not match).
    """
    device = torch.device("cpu")
    clip = load_clip("test-tiny", "random", device=device)
    vqgan = load_vqgan("test-tiny", device=device)
    text_emb = clip.encode_texts_reference([PROMPT]).float()
    worst = [0.0, 0.0, 0.0]
    for size in sizes:
        config = GenerationConfig(prompts=PROMPT, size=size, iterations=steps, cutn=cutn, seed=seed,
                                  init_weight=init_weight, score_every=0, precision="fp32", resample=resample)
        ours = []
        generate(config, clip, vqgan, trace=ours.append)
        z, gen = start_latents(vqgan.model, size, seed, device)
        loop = NotebookLoop(vqgan.model, clip.model, text_emb, z, clip.image_size, config.step_size, init_weight)
        diffs = [0.0, 0.0, 0.0]
        for i in range(steps):
            boxes = cut.sample_boxes(size, size, cutn, clip.image_size, config.cut_pow, gen, device)
            cuts, losses = loop.step([boxes.int().tolist()])
            step = ours[i]
            diffs[0] = max(diffs[0], (step["cutouts"] - cuts).abs().max().item())
            diffs[1] = max(diffs[1], (step["losses"] - losses).abs().max().item())
            diffs[2] = max(diffs[2], (step["z"] - loop.z.detach()).abs().max().item())
        print(f"  check at {size}px: cutouts {diffs[0]:.2e}, loss {diffs[1]:.2e}, z {diffs[2]:.2e} "
              f"(crops {min(size, clip.image_size)}..{size} px to {clip.image_size} px, init_weight={init_weight})")
        worst = [max(a, b) for a, b in zip(worst, diffs)]
    return tuple(worst)


# ---- speed --------------------------------------------------------------------------------
def cutout_ms(size, cutn, cut_size, repeats, device) -> dict:
    """Forward + backward ms of one step's cutouts: our notebook resample, our bilinear, the per-cutout loop."""
    image = torch.rand(1, 3, size, size, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    boxes = cut.random_boxes(size, size, cutn, cut_size, 1.0, [gen], device)
    listed = [boxes[0, :, :3].int().tolist()]
    ways = {"notebook": lambda x: cut.make_cutouts(x, boxes, cut_size, "notebook"),
            "bilinear": lambda x: cut.make_cutouts(x, boxes, cut_size, "bilinear"),
            "per_cutout": lambda x: torch.cat([notebook_resample(x[:, :, oy:oy + s, ox:ox + s], cut_size)
                                               for s, ox, oy in listed[0]])}
    out = {}
    for name, fn in ways.items():
        best = float("inf")
        for _ in range(repeats + 1):  # the first is warm-up
            x = image.clone().requires_grad_(True)
            sync(device)
            t0 = time.perf_counter()
            fn(x).sum().backward()
            sync(device)
            best = min(best, time.perf_counter() - t0)
        out[name] = best * 1000
    return out


def reference_it_s(vq, clip_model, text_emb, size, cutn, warm, steps, repeats, device, batch=1) -> float:
    """Iterations/s of the notebook's loop at its precision: best of `repeats` windows."""
    torch.backends.cudnn.benchmark = False
    zs = [start_latents(vq, size, seed, device)[0] for seed in range(batch)]
    loop = NotebookLoop(vq, clip_model, text_emb, torch.cat(zs), clip_model.visual.image_size[0]
                        if isinstance(clip_model.visual.image_size, (tuple, list)) else clip_model.visual.image_size,
                        clip_half=device.type == "cuda")
    torch.manual_seed(0)
    marks = []
    for i in range(warm + repeats * steps):
        if i >= warm and (i - warm) % steps == 0:
            sync(device)
            marks.append(time.perf_counter())
        loop.step(cutn=cutn)
    sync(device)
    marks.append(time.perf_counter())
    return max(steps / (b - a) for a, b in zip(marks, marks[1:]))


def worker_config(size, cutn, iterations, seeds, compile_) -> GenerationConfig:
    """The config the worker would build for this job (service.generation_config), pruning off for seeds > 1."""
    payload = {"prompt": PROMPT, "size": size, "iterations": iterations, "seeds": seeds, "keep": 1, "seed": 0,
               "cutn": cutn}
    config = generation_config(payload, {})
    return dataclasses.replace(config, checkpoint_step=iterations, compile=compile_)


def engine_it_s(clip, vqgan, size, cutn, warm, steps, repeats, seeds, compile_) -> tuple[float, float | None]:
    """Iterations/s of engine.generate as the worker runs it, after warm-up: best of `repeats` windows.

    The worker's callback sees every report (every REPORT_EVERY steps); `steps` is a
    multiple of REPORT_EVERY and warm = steps + 1, so reports at warm - 1 + k * steps
    bound the timed windows and the loop syncs no more than in the worker.
    """
    timestamps = {}
    iterations = warm + repeats * steps
    config = worker_config(size, cutn, iterations, seeds, compile_)
    on_step = progress_callback(lambda info: None, TOUCH_EVERY_S,
                                check=lambda info: timestamps.__setitem__(info.iteration, time.perf_counter()))
    device = vqgan.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    generate(config, clip, vqgan, on_step=on_step)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    edges = [timestamps[warm - 1 + k * steps] for k in range(repeats + 1)]
    return max(steps / (b - a) for a, b in zip(edges, edges[1:])), peak


def self_scores(clip, vqgan, text_emb, size, cutn, steps) -> tuple[float, float]:
    """Game-path self-scores of ours and the notebook's image after `steps` steps from the same start."""
    device = vqgan.device
    config = dataclasses.replace(worker_config(size, cutn, steps, 1, False), score_every=0)
    ours = generate(config, clip, vqgan).self_score
    z, _ = start_latents(vqgan.model, size, config.seed, device)
    loop = NotebookLoop(vqgan.model, clip.model, text_emb, z, clip.image_size, clip_half=device.type == "cuda")
    torch.manual_seed(config.seed)
    for _ in range(steps):
        loop.step(cutn=cutn)
    with torch.no_grad():
        image = loop.synth(loop.z)
    pixels = image[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    emb = clip.encode_images([Image.fromarray(pixels)])
    score = clip.encode_texts_reference([config.resolved_score_text()])
    return ours, float((emb @ score.T).item())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU smoke run: 64 and 128 px, cutn 4, 5 steps")
    parser.add_argument("--check-notebook", action="store_true", help="step-for-step check against the notebook")
    parser.add_argument("--sizes", type=int, nargs="+")
    parser.add_argument("--cutn", type=int)
    parser.add_argument("--steps", type=int, help=f"steps per timed window (rounded up to a multiple of "
                                                  f"the worker's REPORT_EVERY={REPORT_EVERY})")
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--repeats", type=int, help="timed windows per measurement; the best one counts")
    parser.add_argument("--batch-size", type=int, help="size for the batched-seeds line")
    parser.add_argument("--score-steps", type=int, help="steps before the self-score comparison")
    parser.add_argument("--score-size", type=int, help="size of the self-score comparison")
    parser.add_argument("--cutouts", action="store_true", help="only time the cutout resize options")
    parser.add_argument("--tiny-models", action="store_true",
                        help="the test-tiny CLIP and VQGAN (to try the script: its figures mean nothing)")
    parser.add_argument("--compile", action="store_true", help="engine with torch.compile")
    parser.add_argument("--threads", type=int, help="CPU intra-op threads (default: 1 on CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    if args.check_notebook:
        torch.set_num_threads(args.threads or 1)
        print("notebook check: CPU, fp32, test-tiny models (random weights), same seed, z and cutout boxes")
        a, b, c = check_notebook()
        print(f"notebook_match: steps=5 cutouts_max_abs_diff={a:.2e} loss_max_abs_diff={b:.2e} "
              f"z_max_abs_diff={c:.2e}")
        return 0 if max(a, b, c) <= CHECK_LIMIT else 1

    device = torch.device(args.device)
    quick = args.quick
    if args.cutouts:
        torch.set_num_threads(args.threads or (1 if device.type == "cpu" else torch.get_num_threads()))
        print(f"cutout resize, forward + backward, best of {args.repeats or 3}; device {device}, "
              f"{torch.get_num_threads()} threads")
        for size in args.sizes or [256, 512, 1024]:
            ms = cutout_ms(size, args.cutn or 32, 224, args.repeats or 3, device)
            print(f"cutouts: size={size} cutn={args.cutn or 32} notebook_ms={ms['notebook']:.1f} "
                  f"bilinear_ms={ms['bilinear']:.1f} per_cutout_notebook_ms={ms['per_cutout']:.1f}")
        return 0
    sizes = args.sizes or ([64, 128] if quick else [256, 512, 1024])
    cutn = args.cutn or (4 if quick else 32)
    steps = args.steps or (REPORT_EVERY if quick else 10)
    steps = -(-steps // REPORT_EVERY) * REPORT_EVERY
    warm = steps + 1  # see engine_it_s: the engine's clock starts at iteration warm - 1
    seeds = args.seeds or (2 if quick else 16)
    repeats = args.repeats or (2 if quick else 3)
    batch_size = args.batch_size or (64 if quick else 256)
    score_steps = args.score_steps or (5 if quick else 50)
    score_size = args.score_size or (64 if quick else 256)

    # On a shared 2-core machine, OpenMP's spin-waiting with 2 threads made identical runs
    # differ 10x; one thread per side gives comparable numbers (both sides get the same).
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; random weights (speed only, images meaningless)")
    if args.tiny_models:
        print("models: test-tiny CLIP and VQGAN (a smoke run of the script, not a speed figure)")
        clip, vqgan = load_clip("test-tiny", "random", device=device), load_vqgan("test-tiny", device=device)
    else:
        clip = load_clip("ViT-B-32", "random", device=device)
        vqgan = load_vqgan("vqgan_imagenet_f16_16384", device=device, random_weights=True)
    text_emb = clip.encode_texts_reference([PROMPT]).float()
    torch.backends.cudnn.benchmark = False
    reference_flags = backend_flags()
    precision = "CLIP fp16 + VQGAN fp32 (the notebook on CUDA)" if device.type == "cuda" else \
        "fp32 (CPU: the notebook never ran CLIP in fp16 on a CPU)"
    print(f"reference: the notebook's loop, {precision}, batch 1, one resample per cutout")
    print(f"engine: the worker's config and callback (on_step every {REPORT_EVERY} steps), precision auto")
    print(f"reference backend flags: {reference_flags}")
    print(f"settings: cutn={cutn} warm-up={warm} steps; best of {repeats} windows of {steps} steps; "
          f"compile={args.compile}")

    lines = []

    def reference(size, batch=1, windows=repeats):
        try:
            return reference_it_s(vqgan.model, clip.model, text_emb, size, cutn, warm, steps, windows, device, batch)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            print(f"reference at {size}px (batch {batch}): out of memory")
            return float("nan")

    for size in sizes:
        # Reference, engine, reference again (A-B-A): a slow spell or warm-up order favours
        # neither side. The flags check proves the engine left the reference's settings alone.
        ref_before = reference(size)
        try:
            eng, peak = engine_it_s(clip, vqgan, size, cutn, warm, steps, repeats, 1, args.compile)
        except GenerationOutOfMemoryError as exc:
            eng, peak = float("nan"), None
            print(f"engine at {size}px: {exc}")
        if backend_flags() != reference_flags:
            raise SystemExit(f"engine changed backend flags: {backend_flags()} != {reference_flags}")
        ref_after = reference(size)
        ref = max(ref_before, ref_after)
        print(f"  reference it/s at {size}px: {ref_before:.3f} before, {ref_after:.3f} after the engine")
        peak_text = f"{peak:.2f}" if peak is not None else "n/a"
        lines.append(f"generate: size={size} reference_it_s={ref:.3f} engine_it_s={eng:.3f} "
                     f"ratio={eng / ref:.2f} peak_gib={peak_text}")
        print(f"  {lines[-1]}", flush=True)
    try:
        batch_it_s, _ = engine_it_s(clip, vqgan, batch_size, cutn, warm, steps, repeats, seeds, args.compile)
    except GenerationOutOfMemoryError as exc:
        batch_it_s = float("nan")
        print(f"engine batch at {batch_size}px: {exc}")
    # One window: the batched reference's per-cutout loop (seeds x cutn resamples a step) is the
    # slowest part of the run, and what it shows (seed-iterations/s) needs no best-of.
    ref_batch = reference(batch_size, seeds, windows=1)
    lines.append(f"generate_batch: size={batch_size} seeds={seeds} seed_it_s={seeds * batch_it_s:.3f} "
                 f"reference_seed_it_s={seeds * ref_batch:.3f}")
    print(f"  {lines[-1]}", flush=True)
    ours, theirs = self_scores(clip, vqgan, text_emb, score_size, cutn, score_steps)
    print(f"info: self-scores by a RANDOM-WEIGHT judge after {score_steps} steps from the same start "
          f"(same z, different cutout draws): they show the two loops stay alike, not image quality")
    lines.append(f"self_score: size={score_size} steps={score_steps} engine={ours:.4f} reference={theirs:.4f}")
    if device.type == "cpu":
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
        print(f"info: peak_gib is n/a on CPU; process peak RSS over the whole run: {rss:.2f} GiB")
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
