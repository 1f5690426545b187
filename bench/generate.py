"""Generation benchmark: the 2021 notebook's loop against engine.generate, in one run.

Both sides use the same models: the imagenet f16/16384 VQGAN architecture and
CLIP ViT-B-32, with seeded random weights (the compute of trained weights; the
images mean nothing). For each size, in this order:

  (a) reference: the loop as the notebook ran it, written out below: fp32,
      PyTorch's default backend settings with cudnn.benchmark off, batch 1,
      `cutn` cutouts each cut and resized by its own F.interpolate call,
      spherical distance loss, Adam on z, z clamped to the codebook range;
  (b) engine: `engine.generate.generate` with the same size, cutn and steps
      (bf16 autocast on CUDA, one batched grid_sample for all cutouts, no host
      sync in the loop); `--compile` adds torch.compile;
  (a') the reference again; the better of its two measurements counts.

The engine changes no global backend setting; the bench checks that the flags
after each engine run equal those the reference ran with, so nothing leaks.
Then the engine runs `--seeds` candidates batched (best-of-N's first phase).
Each side's rate is the best of `--repeats` timed windows (a busy machine's stalls
hit one window, not the figure); ratios compare numbers measured in the same run.
The last lines are machine-readable:

  generate: size=<s> reference_it_s=<a> engine_it_s=<b> ratio=<r> peak_gib=<m>
  generate_batch: size=<s> seeds=<n> seed_it_s=<x>

peak_gib is torch.cuda.max_memory_allocated on CUDA; on CPU it is "n/a" (the
process's peak RSS, which covers the whole run, is printed on an info line).

Usage: python bench/generate.py [--quick] [--sizes 256 512 1024] [--cutn 32] [--steps 10]
       [--seeds 16] [--batch-size 256] [--repeats 3] [--threads N] [--compile] [--device cuda]
"""
from __future__ import annotations

import argparse
import resource
import sys
import time

import torch
import torch.nn.functional as F

from engine.clip_model import load_clip
from engine.generate import GenerationConfig, GenerationOutOfMemoryError, generate
from engine.vqgan import load_vqgan

PROMPT = "a raccoon driving a tractor"
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def backend_flags() -> dict:
    return {"cudnn.benchmark": torch.backends.cudnn.benchmark,
            "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "deterministic": torch.are_deterministic_algorithms_enabled()}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---- (a) the notebook's loop -------------------------------------------------------------
def notebook_cutouts(img, cutn, cut_size, cut_pow=1.0):
    side_y, side_x = img.shape[2:4]
    max_size, min_size = min(side_x, side_y), min(side_x, side_y, cut_size)
    out = []
    for _ in range(cutn):
        size = int(torch.rand([]) ** cut_pow * (max_size - min_size) + min_size)
        ox = int(torch.randint(0, side_x - size + 1, ()))
        oy = int(torch.randint(0, side_y - size + 1, ()))
        out.append(F.interpolate(img[:, :, oy:oy + size, ox:ox + size], (cut_size, cut_size),
                                 mode="bilinear", align_corners=False))
    return torch.cat(out)


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


def reference_it_s(vq, clip_model, text_emb, size, cutn, warm, steps, repeats, device) -> float:
    """Iterations/s of the notebook's loop (fp32, batch 1, one resize per cutout): best of `repeats` windows."""
    torch.backends.cudnn.benchmark = False
    codebook = vq.quantize.embedding.weight
    n_toks, e_dim = codebook.shape
    toks = size // 16
    gen = torch.Generator(device="cpu").manual_seed(0)
    one_hot = F.one_hot(torch.randint(n_toks, [toks * toks], generator=gen).to(device), n_toks).float()
    z = (one_hot @ codebook).view(1, toks, toks, e_dim).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    z_min = codebook.min(dim=0).values[None, :, None, None]
    z_max = codebook.max(dim=0).values[None, :, None, None]
    opt = torch.optim.Adam([z], lr=0.1)
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    cut_size = clip_model.visual.image_size
    cut_size = cut_size[0] if isinstance(cut_size, (tuple, list)) else cut_size
    marks = []
    for i in range(warm + repeats * steps):
        if i >= warm and (i - warm) % steps == 0:
            sync(device)
            marks.append(time.perf_counter())
        opt.zero_grad(set_to_none=True)
        z_q = vector_quantize(z.movedim(1, 3), codebook).movedim(3, 1)
        img = ClampWithGrad.apply(vq.decoder(vq.post_quant_conv(z_q)).add(1).div(2), 0, 1)
        emb = clip_model.encode_image((notebook_cutouts(img, cutn, cut_size) - mean) / std).float()
        loss = spherical_dist_loss(emb.unsqueeze(1), text_emb.unsqueeze(0)).mean()
        loss.backward()
        opt.step()
        with torch.no_grad():
            z.copy_(z.maximum(z_min).minimum(z_max))
    sync(device)
    marks.append(time.perf_counter())
    return max(steps / (b - a) for a, b in zip(marks, marks[1:]))


# ---- (b) the engine ----------------------------------------------------------------------
def engine_it_s(clip, vqgan, size, cutn, warm, steps, repeats, seeds, compile_) -> tuple[float, float | None]:
    """Iterations/s of engine.generate after warm-up: best of `repeats` windows of `steps`.

    on_step fires at iterations 0, steps, 2*steps, ... and the last (report_every=steps);
    with warm = steps + 1 the calls from iteration warm-1 on bound the timed windows,
    so the loop syncs only at window edges.
    """
    timestamps = {}
    iterations = warm + repeats * steps
    config = GenerationConfig(prompts=PROMPT, size=size, iterations=iterations, cutn=cutn, seeds=seeds,
                              checkpoint_step=iterations, score_every=0, report_every=steps,
                              compile=compile_)

    def on_step(info):
        timestamps[info.iteration] = time.perf_counter()

    device = vqgan.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    generate(config, clip, vqgan, on_step=on_step)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    edges = [timestamps[warm - 1 + k * steps] for k in range(repeats + 1)]
    return max(steps / (b - a) for a, b in zip(edges, edges[1:])), peak


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU smoke run: 64 and 128 px, cutn 4, 2 steps")
    parser.add_argument("--sizes", type=int, nargs="+")
    parser.add_argument("--cutn", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--repeats", type=int, help="timed windows per measurement; the best one counts")
    parser.add_argument("--batch-size", type=int, help="size for the batched-seeds line")
    parser.add_argument("--compile", action="store_true", help="engine with torch.compile")
    parser.add_argument("--threads", type=int, help="CPU intra-op threads (default: 1 with --quick on CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    quick = args.quick
    sizes = args.sizes or ([64, 128] if quick else [256, 512, 1024])
    cutn = args.cutn or (4 if quick else 32)
    steps = args.steps or (2 if quick else 10)
    warm = steps + 1  # see engine_it_s: the engine's clock starts at iteration warm - 1
    seeds = args.seeds or (2 if quick else 16)
    repeats = args.repeats or (2 if quick else 3)
    batch_size = args.batch_size or (64 if quick else 256)

    # On a shared 2-core machine, OpenMP's spin-waiting with 2 threads made identical runs
    # differ 10x; one thread per side gives comparable numbers (both sides get the same).
    threads = args.threads or (1 if quick and device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; random weights (speed only, images meaningless)")
    clip = load_clip("ViT-B-32", "random", device=device)
    vqgan = load_vqgan("vqgan_imagenet_f16_16384", device=device, random_weights=True)
    with torch.no_grad():
        text_emb = clip.model.encode_text(clip.tokenizer([PROMPT]).to(device)).float()
    torch.backends.cudnn.benchmark = False
    reference_flags = backend_flags()
    print(f"reference backend flags: {reference_flags}")
    print(f"settings: cutn={cutn} warm-up={warm} steps; best of {repeats} windows of {steps} steps; "
          f"compile={args.compile}")

    lines = []
    def reference(size):
        try:
            return reference_it_s(vqgan.model, clip.model, text_emb, size, cutn, warm, steps, repeats, device)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            print(f"reference at {size}px: out of memory")
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
    batch_it_s, _ = engine_it_s(clip, vqgan, batch_size, cutn, warm, steps, repeats, seeds, args.compile)
    lines.append(f"generate_batch: size={batch_size} seeds={seeds} seed_it_s={seeds * batch_it_s:.3f}")
    if device.type == "cpu":
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
        print(f"info: peak_gib is n/a on CPU; process peak RSS over the whole run: {rss:.2f} GiB")
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
