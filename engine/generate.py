"""CLIP-guided VQGAN generation: a pure function of explicit arguments.

`generate(config, clip, vqgan, on_step=None)` runs the 2021 notebook's loop:
random codebook tokens as the start (or an encoded init image), straight-through
vector quantisation, decode, clamp with gradient, `cutn` random square cutouts
resized to CLIP's input, spherical distance to each weighted prompt (negative
weights push away, `stop` ends a prompt's pull), Adam on the latents, latents
clamped into the codebook's range after every step.

Beyond the notebook:
  * best-of-N: `seeds` candidates run batched until `checkpoint_step`, are
    scored by CLIP against the prompt, and the best `keep` continue; every
    candidate has its own random generator, so the winner is exactly the image
    a single run with its seed would have made;
  * prompt schedules (`^` stories or explicit (iteration, prompts) pairs) and
    a progressive-size option (start small, upscale the latent);
  * augment="notebook": the "with augmentations" notebook's kornia set and noise;
    resample="bilinear": a faster cutout resize than the notebook's (see engine/cutouts.py);
  * speed: all cutouts of all candidates in two batched matmuls, bf16 autocast on
    GPU, no host synchronisation inside the loop unless a callback, a frame or
    a score point asks for one, optional torch.compile and activation
    checkpointing. Global backend settings are never changed.

The self-score is the final PNG's cosine to the score text through the game's
own path (`clip.encode_images` on the PIL image, `clip.encode_texts_reference`
on the text), so players see the same number the machine got.
Nothing here keeps module state; everything a run needs is in its arguments.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from engine import cutouts as cut
from engine.images import open_user_image, png_with_metadata
from engine.prompts import Prompt, parse_image_prompt, parse_schedule, score_text_of, segment_at

log = logging.getLogger(__name__)

MIN_SIZE, MAX_SIZE, SIZE_MULTIPLE = 16, 2048, 16
MAX_ITERATIONS = 100_000
MAX_SEEDS = 64
MAX_CUTN = 1024
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
AUGMENTS = ("none", "notebook")
NOTEBOOK_NOISE = 0.1  # the augmented notebook's noise_fac


class GenerationOutOfMemoryError(RuntimeError):
    """The device ran out of memory; the message suggests what to lower."""


class GenerationCancelled(Exception):
    """Raise from on_step to stop a run; generate() lets it propagate."""


@dataclass(frozen=True)
class GenerationConfig:
    """Every setting of one generation run. Validated on construction (ValueError)."""

    prompts: str  # "text:weight:stop | ..." ; "^" separates story segments
    size: int = 256  # output side in pixels; a multiple of 16 (one VQGAN token per 16 px)
    iterations: int = 300  # optimisation steps of the final image
    seed: int = 0  # candidate i starts from seed + i; same seed + config -> same image on one device
    seeds: int = 1  # best-of-N: candidates run batched until checkpoint_step
    keep: int = 1  # candidates that continue after checkpoint_step
    checkpoint_step: int = 100  # where best-of-N scores and prunes (the 2021 "by iteration 100" advice)
    cutn: int = 32  # random cutouts per image per step
    cut_pow: float = 1.0  # cutout size distribution: >1 favours small cutouts
    step_size: float = 0.1  # learning rate
    optimizer: str = "adam"  # "adam" (the notebook's) or "adamw"
    init_image: Optional[Union[str, bytes]] = None  # path or bytes of an image to start from
    init_weight: float = 0.0  # pull towards the init image's latents (MSE), 0 = free
    image_prompts: tuple[str, ...] = ()  # "path[:weight[:stop]]" images to steer towards
    schedule: tuple[tuple[int, str], ...] = ()  # explicit (start iteration, prompts); overrides `prompts`
    change_every: Optional[int] = None  # story: iterations per "^" segment (None: spread evenly)
    score_text: Optional[str] = None  # text of the self-score; default: final segment's positive prompts
    progressive: tuple[int, ...] = ()  # smaller sizes to run first (ascending); iterations split evenly
    frame_every: int = 0  # pass a PIL frame to on_step every N iterations (0: none)
    score_every: int = 50  # add a (iteration, score) point to history every N iterations (0: ends only)
    report_every: int = 1  # call on_step every N iterations (each call syncs the device)
    flip: bool = False  # augmentation: mirror half the cutouts
    noise: float = 0.0  # augmentation: per-cutout Gaussian noise up to this std (augment="notebook": 0.1)
    resample: str = "notebook"  # cutout resize: "notebook" (Lanczos-2 + bicubic) or "bilinear" (faster, aliases)
    augment: str = "none"  # "none" (the plain notebook) or "notebook" (the augmented notebook's kornia set)
    precision: str = "auto"  # "auto" (bf16 on CUDA, fp32 elsewhere), "fp32" or "bf16"
    compile: bool = False  # torch.compile the decode+CLIP step (pays compile time once per shape)
    checkpointing: bool = False  # recompute decoder activations in backward: less memory, ~30% slower

    def __post_init__(self):
        def integer(name, low, high):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")

        integer("iterations", 1, MAX_ITERATIONS)
        integer("seeds", 1, MAX_SEEDS)
        integer("keep", 1, self.seeds)
        integer("checkpoint_step", 1, MAX_ITERATIONS)
        integer("cutn", 1, MAX_CUTN)
        integer("seed", 0, 2**63 - 1 - MAX_SEEDS)
        for name in ("frame_every", "score_every"):
            integer(name, 0, MAX_ITERATIONS)
        integer("report_every", 1, MAX_ITERATIONS)
        for size in (self.size, *self.progressive):
            if not isinstance(size, int) or isinstance(size, bool) or not MIN_SIZE <= size <= MAX_SIZE \
                    or size % SIZE_MULTIPLE:
                raise ValueError(f"size must be a multiple of {SIZE_MULTIPLE} in [{MIN_SIZE}, {MAX_SIZE}], "
                                 f"got {size!r}")
        if list(self.progressive) != sorted(set(self.progressive)) or (self.progressive and
                                                                       self.progressive[-1] >= self.size):
            raise ValueError("progressive sizes must be ascending, distinct and smaller than size")
        if len(self.progressive) + 1 > self.iterations:
            raise ValueError("more progressive stages than iterations")
        for name in ("cut_pow", "step_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name in ("init_weight", "noise"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.resample not in cut.RESAMPLES:
            raise ValueError(f"resample must be one of {', '.join(cut.RESAMPLES)}, got {self.resample!r}")
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}, got {self.augment!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.change_every is not None:
            integer("change_every", 1, MAX_ITERATIONS)
        if self.score_text is not None and not str(self.score_text).strip():
            raise ValueError("score_text is empty")
        self.segments()  # raises ValueError on malformed prompts or schedules
        self.parsed_image_prompts()

    def segments(self):
        return parse_schedule(self.prompts, self.iterations, self.change_every, self.schedule)

    def parsed_image_prompts(self) -> tuple[Prompt, ...]:
        return tuple(parse_image_prompt(p) for p in self.image_prompts)

    def resolved_score_text(self) -> str:
        return self.score_text or score_text_of(self.segments()[-1].prompts)

    def settings(self) -> dict:
        """JSON-safe copy of the settings (an init image given as bytes is described, not embedded)."""
        data = asdict(self)
        if isinstance(self.init_image, (bytes, bytearray)):
            data["init_image"] = f"<{len(self.init_image)} bytes>"
        return data


@dataclass
class StepInfo:
    """What on_step receives. Values describe the image entering optimisation step `iteration`."""

    iteration: int  # 0-based step index; the run has `total` steps
    total: int
    loss: float  # mean loss over running candidates
    score: Optional[float]  # latest self-score point in history (best candidate), if any
    it_s: float  # optimisation steps per second so far
    candidates: int  # candidates still running
    size: int  # current image side (progressive runs change it)
    frame: Optional[Image.Image] = None  # current image of the best-loss candidate, every frame_every


@dataclass
class GenerationResult:
    """A finished run: the image, its PNG with provenance, and how it got there."""

    image: Image.Image
    png_bytes: bytes  # PNG with text chunks: prompt, seed, settings, model ids, score
    self_score: float  # cosine of `image` to `score_text` through the game's scoring path
    seed: int  # the winning candidate's seed
    score_text: str
    history: list[tuple[int, float]]  # (iteration, best self-score); last = (iterations, self_score)
    candidates: list[dict] = field(default_factory=list)  # per seed: checkpoint_score, final_score
    iterations: int = 0
    elapsed_s: float = 0.0
    clip_model_id: str = ""
    vqgan_model_id: str = ""
    is_pretrained: bool = False  # both models pretrained; otherwise scores are not real


class _ClampWithGrad(torch.autograd.Function):
    """Clamp forward; backward lets through gradients that point back into range (the notebook's)."""

    @staticmethod
    def forward(ctx, x, low, high):
        ctx.low, ctx.high = low, high
        ctx.save_for_backward(x)
        return x.clamp(low, high)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (grad * (x - x.clamp(ctx.low, ctx.high)) >= 0), None, None


def _replace_grad(forward_value: torch.Tensor, backward_value: torch.Tensor) -> torch.Tensor:
    return backward_value + (forward_value - backward_value).detach()


def spherical_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    return (x - y).norm(dim=-1).div(2).arcsin().pow(2).mul(2)


def _to_tensor(image: Image.Image, device) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).to(device)


def _to_pil(images: torch.Tensor) -> list[Image.Image]:
    array = images.detach().float().clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in array]


def _fit_area(image: Image.Image, size: int) -> Image.Image:
    """The notebook's resize_image: keep the aspect ratio, area at most size x size."""
    ratio = image.size[0] / image.size[1]
    area = min(image.size[0] * image.size[1], size * size)
    return image.resize((max(1, round((area * ratio) ** 0.5)), max(1, round((area / ratio) ** 0.5))),
                        Image.LANCZOS)


def _synth(vq, z: torch.Tensor, checkpointing: bool) -> torch.Tensor:
    """Latents -> image in [0, 1]: straight-through quantise, decode, clamp with gradient."""
    zq = vq.quantize_st(z)
    if checkpointing and z.requires_grad:
        out = torch.utils.checkpoint.checkpoint(vq.decode, zq, use_reentrant=False)
    else:
        out = vq.decode(zq)
    return _ClampWithGrad.apply(out.add(1).div(2), 0, 1)


def _forward(vq, clip_model, z, boxes, noise, mean, std, cut_size: int, bf16: bool, checkpointing: bool,
             resample: str = "notebook", augment: Optional[Callable] = None):
    """One step's forward pass for all candidates: images, their cutouts, and the cutouts' CLIP embeddings.

    As the notebooks: the plain one clamps its cutouts (bicubic overshoots [0, 1]) with the
    gradient-passing clamp; the augmented one does not, augments, then adds noise.
    """
    with torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=bf16):
        image = _synth(vq, z, checkpointing)
        cuts = cut.make_cutouts(image, boxes, cut_size, resample)
        cuts = _ClampWithGrad.apply(cuts, 0, 1) if augment is None else augment(cuts)
        if noise is not None:
            cuts = cuts + noise.to(cuts.dtype)
        emb = clip_model.encode_image((cuts - mean) / std)
    return image, cuts, emb.float()


def notebook_augmentations() -> torch.nn.Module:
    """The "with augmentations" notebook's kornia pipeline, with its 2021 arguments.

    kornia renamed that notebook's ColorJitter to ColorJiggle (0.6); ColorJitter now
    means torchvision's variant. Imported here only: the plain path needs no kornia.
    """
    import kornia.augmentation as K
    return torch.nn.Sequential(
        K.RandomHorizontalFlip(p=0.5),
        K.RandomSharpness(0.3, p=0.4),
        K.RandomAffine(degrees=30, translate=(0.1, 0.1), p=0.8, padding_mode="border"),
        K.RandomPerspective(0.2, p=0.4),
        K.ColorJiggle(hue=0.01, saturation=0.01, p=0.7))


@functools.lru_cache(maxsize=1)
def _compiled_forward():
    """The torch.compile'd forward, one wrapper per process.

    Dynamo keeps its compiled graphs on this wrapper, keyed by the models and the
    shapes, so a worker that keeps its models loaded pays compile time once per
    size and candidate count, not once per job (inductor also caches kernels on disk).
    """
    return torch.compile(_forward)


class _Run:
    """State of one generate() call; lives only for that call."""

    def __init__(self, config: GenerationConfig, clip, vqgan, on_step, init_pil, prompt_pils):
        self.c, self.clip, self.vq, self.on_step = config, clip, vqgan.model, on_step
        self.device = vqgan.device
        self.segments = config.segments()
        self.score_text = config.resolved_score_text()
        cuda = self.device.type == "cuda"
        bf16 = config.precision == "bf16" or (config.precision == "auto" and cuda and torch.cuda.is_bf16_supported())
        self.autocast = dict(device_type=self.device.type, dtype=torch.bfloat16, enabled=bf16)
        self.cut_size = clip.image_size
        visual = clip.model.visual
        self.mean = torch.tensor(getattr(visual, "image_mean", None) or CLIP_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(getattr(visual, "image_std", None) or CLIP_STD, device=self.device).view(1, 3, 1, 1)
        self.encode_image = clip.model.encode_image
        self.noise_std = config.noise or (NOTEBOOK_NOISE if config.augment == "notebook" else 0.0)
        self.augs = notebook_augmentations().to(self.device) if config.augment == "notebook" else None
        self.init_pil, self.prompt_pils = init_pil, prompt_pils
        self.vqgan_id, self.vq_pretrained = vqgan.model_id, vqgan.is_pretrained
        self.score_emb = clip.encode_texts_reference([self.score_text]).clone()
        texts = sorted({p.text for s in self.segments for p in s.prompts})
        embs = clip.encode_texts_reference(texts).clone() if texts else None
        self.text_emb = {t: embs[i:i + 1] for i, t in enumerate(texts)}

    # --- pieces of one step -------------------------------------------------------------
    def _image(self, z: torch.Tensor) -> torch.Tensor:
        return _synth(self.vq, z, self.c.checkpointing)

    def forward(self, z, boxes, noise, aug_generators):
        fn = _compiled_forward() if self.c.compile else _forward
        augment = None
        if self.augs is not None:
            augment = functools.partial(self._augment, aug_generators)
        return fn(self.vq, self.clip.model, z, boxes, noise, self.mean, self.std, self.cut_size,
                  self.autocast["enabled"], self.c.checkpointing, self.c.resample, augment)

    def _augment(self, generators, cuts):
        """kornia draws from torch's global generator: run it per candidate under a seed from that
        candidate's own (CPU) generator, with the global state put back afterwards."""
        devices = list(range(torch.cuda.device_count())) if self.device.type == "cuda" else []
        out = []
        with torch.autocast(self.device.type, enabled=False):
            for part, g in zip(cuts.float().chunk(len(generators)), generators):
                seed = int(torch.randint(2**62, (), generator=g))
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(seed)
                    out.append(self.augs(part))
        return torch.cat(out)

    def _noise(self, generators):
        if not self.noise_std:
            return None
        s, parts = self.cut_size, []
        for g in generators:
            facs = torch.rand(self.c.cutn, 1, 1, 1, generator=g, device=self.device) * self.noise_std
            parts.append(facs * torch.randn(self.c.cutn, 3, s, s, generator=g, device=self.device))
        return torch.cat(parts)

    def _losses(self, emb, z, segment_index, image_targets, z_orig):
        """Per-candidate loss (N,): weighted spherical distances, plus the init-image pull."""
        n = z.shape[0]
        emb = emb.view(n, self.c.cutn, 1, -1)
        targets = [(self.text_emb[p.text], p) for p in self.segments[segment_index].prompts] + image_targets
        losses = z.new_zeros(n)
        for embed, prompt in targets:
            if prompt.weight == 0:
                continue
            d = spherical_distance(emb, embed[None, None]) * math.copysign(1.0, prompt.weight)
            d = _replace_grad(d, d.clamp_min(prompt.stop))  # a Python scalar: no host-to-device copy
            losses = losses + abs(prompt.weight) * d.mean(dim=(1, 2))
        if self.c.init_weight:  # the notebook's F.mse_loss(z, z_orig) * init_weight / 2, per candidate
            losses = losses + (z - z_orig).pow(2).mean(dim=(1, 2, 3)) * self.c.init_weight / 2
        return losses

    @torch.no_grad()
    def scores(self, images: torch.Tensor) -> list[float]:
        """Self-scores of image tensors in [0, 1] through the game's PIL path."""
        emb = self.clip.encode_images(_to_pil(images))
        return (emb @ self.score_emb.T).squeeze(1).tolist()

    # --- setup --------------------------------------------------------------------------
    def image_targets(self, size, generator):
        targets = []
        for prompt, pil in zip(self.c.parsed_image_prompts(), self.prompt_pils):
            x = _to_tensor(_fit_area(pil, size), self.device)
            boxes = cut.random_boxes(x.shape[2], x.shape[3], self.c.cutn, self.cut_size, self.c.cut_pow,
                                     [generator], self.device)
            with torch.no_grad(), torch.autocast(**self.autocast):
                cuts = cut.make_cutouts(x, boxes, self.cut_size, self.c.resample).clamp(0, 1)
                emb = self.encode_image((cuts - self.mean) / self.std).float()
            targets.append((emb, prompt))
        return targets

    @torch.no_grad()
    def init_latents(self, size, generators):
        tokens = size // self.vq.config.factor
        if self.init_pil is not None:
            x = _to_tensor(self.init_pil.resize((size, size), Image.LANCZOS), self.device) * 2 - 1
            z = self.vq.encode(x).float()
            return z.expand(len(generators), -1, -1, -1).clone(), z
        idx = torch.stack([torch.randint(self.vq.config.n_embed, (tokens, tokens), generator=g, device=self.device)
                           for g in generators])
        z = self.vq.tokens_to_latents(idx).float()
        return z, z.clone()  # the notebook's z_orig: init_weight pulls towards the random start


def _rebuild_optimizer(config, z, old=None, transform=None):
    """A fresh optimiser over z; `old`'s Adam moments carried over through `transform` (prune/upscale)."""
    opt = OPTIMIZERS[config.optimizer]([z], lr=config.step_size)
    if old is not None:
        (old_z,) = old.param_groups[0]["params"]
        state = old.state.get(old_z, {})
        opt.state[z] = {k: (transform(v) if torch.is_tensor(v) and v.dim() == 4 else v) for k, v in state.items()}
    return opt


def _check_models(config: GenerationConfig, clip, vqgan) -> None:
    if torch.device(clip.device) != torch.device(vqgan.device):
        raise ValueError(f"CLIP is on {clip.device} and the VQGAN on {vqgan.device}; put both on one device")
    for size in (config.size, *config.progressive):
        if size % vqgan.factor:
            raise ValueError(f"size {size} is not a multiple of the VQGAN's factor {vqgan.factor}")


def generate(config: GenerationConfig, clip, vqgan, *, on_step: Optional[Callable[[StepInfo], None]] = None,
             scorer=None, trace: Optional[Callable[[dict], None]] = None) -> GenerationResult:
    """Run one generation (see the module docstring). Bad input raises ValueError before any model work.

    `scorer`: the game's engine.scorer.Scorer for the same CLIP, if the caller has one;
    the final self-score then comes from it. Without it the score comes from the
    reference methods the Scorer reproduces (equal within 1e-5).
    `trace`: for checks (bench/generate.py --check-notebook), called after every step with
    detached tensors {iteration, boxes, cutouts, losses, z}; it keeps them alive and so costs memory.
    """
    _check_models(config, clip, vqgan)
    if scorer is not None and scorer.model_id != clip.model_id:
        raise ValueError(f"scorer is for {scorer.model_id}, the generation's CLIP is {clip.model_id}")
    init_pil = open_user_image(config.init_image, "init image") if config.init_image is not None else None
    prompt_pils = [open_user_image(p.text, "image prompt") for p in config.parsed_image_prompts()]
    failure = None
    try:
        return _generate(_Run(config, clip, vqgan, on_step, init_pil, prompt_pils), scorer, trace)
    except torch.OutOfMemoryError as exc:
        failure = str(exc).splitlines()[0][:200]
    except RuntimeError as exc:  # the CPU allocator reports OOM as a plain RuntimeError
        if "can't allocate memory" not in str(exc) and "out of memory" not in str(exc):
            raise
        failure = str(exc).splitlines()[0][:200]
    # Outside the except block: the failed run's tensors are released before the cache is emptied.
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    raise GenerationOutOfMemoryError(
        f"out of memory at {config.size}px with cutn={config.cutn} and seeds={config.seeds}: "
        f"try a smaller size, fewer cutouts (cutn), fewer seeds, or checkpointing=True ({failure})")


def _augment_seed(seed: int) -> int:
    """Seed of a candidate's augmentation stream: not `seed` itself, whose CPU stream the cutouts use."""
    return (seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**64


def _generate(run: _Run, scorer=None, trace=None) -> GenerationResult:
    c, device = run.c, run.device
    t0 = time.perf_counter()
    seeds = [c.seed + i for i in range(c.seeds)]
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    aug_generators = [torch.Generator().manual_seed(_augment_seed(s)) for s in seeds]
    stages = list(c.progressive) + [c.size]
    stage_starts = [round(k * c.iterations / len(stages)) for k in range(len(stages))]
    size = stages[0]
    z0, z_orig = run.init_latents(size, generators)
    z = z0.requires_grad_(True)
    opt = _rebuild_optimizer(c, z)
    z_min, z_max = run.vq.codebook_range()
    z_min, z_max = z_min.float(), z_max.float()
    prompt_gen = torch.Generator(device=device).manual_seed(c.seed)
    image_targets = run.image_targets(size, prompt_gen)
    candidates = [{"seed": s, "checkpoint_score": None, "final_score": None} for s in seeds]
    alive = list(range(c.seeds))  # indices into candidates, in z's batch order
    history: list[tuple[int, float]] = []
    checkpoint_at = min(c.checkpoint_step, c.iterations)

    for i in range(c.iterations):
        if i in stage_starts[1:]:  # progressive: upscale the latent grid, keep Adam's moments
            size = stages[stage_starts.index(i)]
            tokens = size // run.vq.config.factor
            up = lambda t: F.interpolate(t, size=(tokens, tokens), mode="nearest")
            z = up(z.detach()).requires_grad_(True)
            opt = _rebuild_optimizer(c, z, opt, up)
            if run.init_pil is not None:
                z_orig = run.init_latents(size, generators[:1])[1]
            else:
                z_orig = up(z_orig)
            image_targets = run.image_targets(size, prompt_gen)
        if i == checkpoint_at and len(alive) > c.keep:  # best-of-N: score, prune to the best `keep`
            with torch.no_grad(), torch.autocast(**run.autocast):
                scores = run.scores(run._image(z))
            for slot, s in zip(alive, scores):
                candidates[slot]["checkpoint_score"] = s
            order = sorted(range(len(alive)), key=lambda k: -scores[k])[:c.keep]
            order.sort()
            history.append((i, max(scores)))
            index = torch.tensor(order, device=device)
            pick = lambda t: t.index_select(0, index)
            z = pick(z.detach()).requires_grad_(True)
            opt = _rebuild_optimizer(c, z, opt, pick)
            alive = [alive[k] for k in order]
            generators = [generators[k] for k in order]
            aug_generators = [aug_generators[k] for k in order]
            if z_orig.shape[0] > 1:
                z_orig = pick(z_orig)

        boxes = cut.random_boxes(size, size, c.cutn, run.cut_size, c.cut_pow, generators, device, flip=c.flip)
        opt.zero_grad(set_to_none=True)
        image, cuts, emb = run.forward(z, boxes, run._noise(generators), aug_generators)
        losses = run._losses(emb, z, segment_at(run.segments, i), image_targets, z_orig)
        losses.sum().backward()
        opt.step()
        with torch.no_grad():
            z.copy_(torch.maximum(torch.minimum(z, z_max), z_min))
        if trace is not None:
            trace({"iteration": i, "boxes": boxes, "cutouts": cuts.detach(), "losses": losses.detach(),
                   "z": z.detach().clone()})

        if c.score_every and i % c.score_every == 0 and not (history and history[-1][0] == i):
            history.append((i, max(run.scores(image))))
        report = run.on_step is not None and (i % c.report_every == 0 or i == c.iterations - 1)
        want_frame = run.on_step is not None and c.frame_every and i % c.frame_every == 0
        if report or want_frame:
            loss_values = losses.detach().tolist()
            best = min(range(len(loss_values)), key=loss_values.__getitem__)
            elapsed = time.perf_counter() - t0
            run.on_step(StepInfo(
                iteration=i, total=c.iterations, loss=sum(loss_values) / len(loss_values),
                score=history[-1][1] if history else None, it_s=(i + 1) / elapsed if elapsed > 0 else 0.0,
                candidates=len(alive), size=size,
                frame=_to_pil(image[best:best + 1])[0] if want_frame else None))

    with torch.no_grad(), torch.autocast(**run.autocast):
        final = run._image(z)
    pils = _to_pil(final)
    scores = run.scores(final)
    for slot, s in zip(alive, scores):
        candidates[slot]["final_score"] = s
    best = max(range(len(alive)), key=lambda k: scores[k])
    winner = candidates[alive[best]]
    image, self_score = pils[best], scores[best]
    if scorer is not None:
        self_score = _scorer_score(scorer, run.score_text, image, self_score)
    history.append((c.iterations, self_score))
    elapsed = time.perf_counter() - t0
    pretrained = bool(run.clip.is_pretrained and run.vq_pretrained)
    return _finish(run, image, self_score, winner["seed"], history, candidates, elapsed, pretrained)


def _scorer_score(scorer, text: str, image: Image.Image, fallback: float) -> float:
    """The game scorer's cosine for (text, image); a prompt it refuses as a caption keeps `fallback`."""
    try:
        return scorer.score(text, scorer.embed_image(image))
    except ValueError as exc:  # CaptionError: e.g. a prompt longer than a caption may be
        log.info("self-score via the reference path: the scorer refused the prompt (%s)", exc)
        return fallback


def _finish(run: _Run, image, self_score, seed, history, candidates, elapsed, pretrained) -> GenerationResult:
    c = run.c
    result = GenerationResult(
        image=image, png_bytes=b"", self_score=float(self_score), seed=seed, score_text=run.score_text,
        history=history, candidates=candidates, iterations=c.iterations, elapsed_s=elapsed,
        clip_model_id=run.clip.model_id, vqgan_model_id=run.vqgan_id, is_pretrained=pretrained)
    metadata = {
        "prompt": c.prompts if not c.schedule else json.dumps(c.schedule),
        "seed": str(seed),
        "score": f"{self_score:.6f}",
        "score_text": run.score_text,
        "clip_model": run.clip.model_id,
        "vqgan_model": run.vqgan_id,
        "pretrained": "true" if pretrained else "false (random weights: score not meaningful)",
        "settings": json.dumps(c.settings(), sort_keys=True),
        "software": "Captionary engine (CLIP-guided VQGAN)",
    }
    result.png_bytes = png_with_metadata(image, metadata)
    return result
