"""The generation service: what the worker and `flask targets seed` do, as plain functions.

A job's payload (`job_payload`, checked here before it is queued), the
engine's GenerationConfig for it, the models a generation uses (`model_choice`,
`load_models`, once per process), one generation turned into a pool target
(`generate_target`, idempotent under a worker's retries with `find_job_target`),
and how many targets the pool is short (`pool_shortfall`). No click, no request:
the CLI, the worker and the admin pages call these, so each behaviour is
written and tested once. Errors an admin can fix raise `AdminError`
(game/errors.py) with a message that says what to do. The settings they read
(GAN_MIN_SCORE, POOL_TARGET, GEN_*, ...) are `game.config.generation_settings`.
"""
from __future__ import annotations

import base64
import dataclasses
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from game.errors import AdminError

log = logging.getLogger("captionary.admin")

TINY = "test-tiny"

MAX_PROMPT_CHARS = 200  # the judge scores captions up to 200 characters
MAX_SIZE = 2048
MAX_ITERATIONS = 100_000
MAX_SEEDS = 64


# -- models ---------------------------------------------------------------

@dataclass(frozen=True)
class ModelChoice:
    """Which CLIP and VQGAN a generation uses (names as the loaders take them)."""

    clip_model: str
    clip_pretrained: str
    vqgan_model: str
    device: str
    models_dir: Optional[str]


def model_choice(config: dict, clip_model: Optional[str] = None, clip_pretrained: Optional[str] = None,
                 vqgan_model: Optional[str] = None) -> ModelChoice:
    """Options win over the configuration (CAPTIONARY_CLIP_MODEL, ..._CLIP_PRETRAINED, ..._VQGAN_MODEL)."""
    clip = clip_model or config.get("CLIP_MODEL") or "ViT-B-32"
    if clip_pretrained is None:
        # test-tiny has random weights only; asking for it must not drag in the configured tag.
        clip_pretrained = "random" if (clip == TINY and clip_model) else (config.get("CLIP_PRETRAINED") or "openai")
        if clip == TINY and clip_pretrained not in ("random", "") and not os.path.isfile(clip_pretrained):
            clip_pretrained = "random"
    device = config.get("DEVICE")
    if not device:
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return ModelChoice(clip, str(clip_pretrained), vqgan_model or config.get("VQGAN_MODEL") or "vqgan_imagenet_f16_16384",
                       str(device), config.get("MODELS_DIR"))


def load_models(choice: ModelChoice, cache: Optional[dict] = None, judge_clip: Any = None):
    """(clip, vqgan) for a choice, loaded once per process when `cache` is kept.

    Reuses the judge's CLIP when it is the same model, so a process holds one copy.
    Unknown names and missing weights become AdminError with the loaders' how-to.
    """
    from engine.clip_model import load_clip
    from engine.vqgan import load_vqgan
    from engine.weights import WeightsUnavailableError

    cache = {} if cache is None else cache
    clip_key = ("clip", choice.clip_model, choice.clip_pretrained, choice.device)
    vq_key = ("vqgan", choice.vqgan_model, choice.device)
    try:
        if clip_key not in cache:
            if judge_clip is not None and (judge_clip.name, judge_clip.pretrained) == (choice.clip_model, choice.clip_pretrained):
                cache[clip_key] = judge_clip
            else:
                cache[clip_key] = load_clip(choice.clip_model, choice.clip_pretrained, device=choice.device,
                                            models_dir=choice.models_dir)
        if vq_key not in cache:
            cache[vq_key] = load_vqgan(choice.vqgan_model, device=choice.device, models_dir=choice.models_dir)
    except WeightsUnavailableError as exc:
        raise AdminError(str(exc)) from exc
    except (ValueError, KeyError) as exc:
        raise AdminError(str(exc).strip("'\"")) from exc
    return cache[clip_key], cache[vq_key]


# -- generation -----------------------------------------------------------

def validate_prompt(prompt: Any) -> str:
    """A prompt an admin typed: non-empty printable text; the engine checks the `text:weight` syntax."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise AdminError("the prompt is empty; give the text to generate, e.g. \"a raccoon driving a tractor\"")
    prompt = prompt.strip()
    if len(prompt) > MAX_PROMPT_CHARS:
        raise AdminError(f"the prompt is {len(prompt)} characters long; keep it under {MAX_PROMPT_CHARS}")
    if any(ord(c) < 32 or 0xD800 <= ord(c) <= 0xDFFF for c in prompt):
        raise AdminError("the prompt contains control characters or invalid unicode")
    return prompt


def job_payload(prompt: str, *, size: int, iterations: int, seeds: int, keep: int = 1, seed: Optional[int] = None,
                init_image: Optional[str] = None, cutn: Optional[int] = None, clip_model: Optional[str] = None,
                clip_pretrained: Optional[str] = None, vqgan_model: Optional[str] = None,
                min_score: Optional[float] = None, source: str = "admin") -> dict:
    """A checked, JSON-ready description of one generation (what a job carries)."""
    prompt = validate_prompt(prompt)
    for name, value, top in (("size", size, MAX_SIZE), ("iterations", iterations, MAX_ITERATIONS),
                             ("seeds", seeds, MAX_SEEDS), ("keep", keep, MAX_SEEDS)):
        if not isinstance(value, int) or value < 1 or value > top:
            raise AdminError(f"--{name} must be a whole number from 1 to {top}, not {value!r}")
    if size % 16:
        raise AdminError(f"--size must be a multiple of 16 (the VQGAN works in 16-pixel tokens), not {size}")
    if keep > seeds:
        raise AdminError(f"--keep ({keep}) cannot exceed --seeds ({seeds})")
    if seed is None:
        # Chosen now, not by the engine: a retried job then regenerates the same image.
        seed = random.randrange(2**31)
    elif not isinstance(seed, int) or seed < 0:
        raise AdminError(f"--seed must be a whole number >= 0, not {seed!r}")
    init_png = init_name = None
    if init_image is not None:
        # The image travels inside the job (normalised PNG, base64): a worker on another
        # machine cannot read the admin's file path.
        init_name = os.path.basename(init_image)
        init_png = base64.b64encode(_read_init_image(init_image)).decode("ascii")
    payload = {"prompt": prompt, "size": size, "iterations": iterations, "seeds": seeds, "keep": keep,
               "seed": seed, "init_image": init_name, "init_png": init_png, "cutn": cutn, "clip_model": clip_model,
               "clip_pretrained": clip_pretrained, "vqgan_model": vqgan_model, "min_score": min_score,
               "source": source}
    return {k: v for k, v in payload.items() if v is not None}


def _read_init_image(path: str) -> bytes:
    """An init image file, validated and normalised like a photo (size, format, bombs)."""
    from game import photos
    try:
        return photos.read_photo(path)
    except photos.PhotoError as exc:
        raise AdminError(f"init image {exc}") from exc
    except OSError as exc:
        raise AdminError(f"init image {path}: cannot read it ({exc.strerror or exc})") from exc


# The worker's progress cadence: the engine syncs the device (and calls on_step) every REPORT_EVERY
# steps, not every step. bench/generate.py times the engine through this same config and callback.
REPORT_EVERY = 5


def progress_callback(touch: Callable[[Any], None], every_s: float,
                      check: Optional[Callable[[Any], None]] = None) -> Callable[[Any], None]:
    """The worker's on_step: `check(info)` on every report (stop requests), `touch(info)` at most every `every_s`."""
    last = [float("-inf")]

    def on_step(info) -> None:
        if check is not None:
            check(info)
        now = time.monotonic()
        if now - last[0] < every_s:
            return
        last[0] = now
        touch(info)

    return on_step


def generation_config(payload: dict, defaults: dict):
    """The engine's GenerationConfig for a job payload (with the worker's REPORT_EVERY cadence)."""
    from engine.generate import GenerationConfig
    fields = {f.name for f in dataclasses.fields(GenerationConfig)}
    wanted = {"prompts": payload["prompt"], "size": payload["size"], "iterations": payload["iterations"],
              "seed": payload.get("seed"), "seeds": payload["seeds"], "keep": payload.get("keep", 1),
              "init_image": base64.b64decode(payload["init_png"]) if payload.get("init_png") else None,
              "cutn": payload.get("cutn") or defaults.get("GEN_CUTN"), "report_every": REPORT_EVERY}
    kwargs = {k: v for k, v in wanted.items() if k in fields and v is not None}
    # A checkpoint step past the end would mean best-of-N never prunes: stop halfway in short runs.
    if "checkpoint_step" in fields and payload["seeds"] > 1:
        default_step = next(f.default for f in dataclasses.fields(GenerationConfig) if f.name == "checkpoint_step")
        if isinstance(default_step, int) and default_step >= payload["iterations"]:
            kwargs["checkpoint_step"] = max(1, payload["iterations"] // 2)
    try:
        return GenerationConfig(**kwargs)
    except (ValueError, TypeError) as exc:
        raise AdminError(f"invalid generation settings: {exc}") from exc


@dataclass
class Seeded:
    """What `generate_target` produced."""

    target_id: Optional[str]  # None when rejected below the threshold
    self_score: float  # the judge's cosine between the prompt and the image
    seed: int
    history: list
    settings: dict
    elapsed_s: float


def score_text(prompt: str) -> str:
    """The text a prompt's self-score is measured against (the engine's rule: final segment, positive parts)."""
    from engine.generate import GenerationConfig
    try:
        return GenerationConfig(prompts=prompt).resolved_score_text()
    except ValueError:
        return prompt


def judge_score(scorer: Any, prompt: str, embedding) -> float:
    """Cosine of the full prompt to an image embedding, by the game's judge."""
    import numpy as np
    text = scorer.embed_texts([prompt])[0] if hasattr(scorer, "embed_texts") else scorer.embed_text(prompt)
    return float(np.dot(np.asarray(text, dtype=np.float32).ravel(), np.asarray(embedding, dtype=np.float32).ravel()))


def generate_target(store: Any, scorer: Any, clip: Any, vqgan: Any, payload: dict, defaults: dict, *,
                    on_step: Optional[Callable] = None, min_score: Optional[float] = None,
                    job_id: Optional[str] = None, commit: Optional[Callable] = None) -> Seeded:
    """Generate one image for `payload` and add it to the pool as a GAN target.

    The embedding stored is the judge's (store.model_id); the self-score is the
    judge's cosine to the prompt's score text, so players compete against the
    model they are scored by. Below `min_score` nothing is written. The target
    is written by one `add_target` call at the very end, and joins the pool only
    with its embedding (the store's last step), so an interruption never leaves
    a half-made target in the pool; a worker's retry completes one that lacks
    its embedding (`find_job_target`). `commit(write)` lets the worker wrap the
    write in the queue's idempotent commit.
    """
    from engine.generate import GenerationOutOfMemoryError, generate
    config = generation_config(payload, defaults)
    started = time.monotonic()
    try:
        result = generate(config, clip, vqgan, on_step=on_step)
    except (ValueError, TypeError) as exc:
        raise AdminError(f"generation refused the settings: {exc}") from exc
    except GenerationOutOfMemoryError as exc:  # the message says what to lower
        raise AdminError(str(exc)) from exc
    elapsed = time.monotonic() - started
    image = result.image.convert("RGB")
    embedding = scorer.embed_image(image)
    # Same model: the engine already scored through the judge's path. Another CLIP generated it:
    # the judge scores the same text (the prompt's positive final segment) against its own embedding.
    score = result.self_score if clip.model_id == scorer.model_id else \
        judge_score(scorer, getattr(result, "score_text", None) or score_text(payload["prompt"]), embedding)
    settings_ = {k: payload[k] for k in ("size", "iterations", "seeds", "keep", "cutn") if payload.get(k) is not None}
    settings_.update({"clip_model": clip.model_id, "vqgan_model": vqgan.model_id,
                      "pretrained": bool(clip.is_pretrained and getattr(vqgan, "is_pretrained", False)),
                      "generation_self_score": round(float(result.self_score), 6), "elapsed_s": round(elapsed, 2),
                      "source": payload.get("source", "admin")})
    if payload.get("init_image"):
        settings_["init_image"] = payload["init_image"]
    if job_id:
        settings_["job_id"] = job_id
    history = [[int(i), float(s)] for i, s in (result.history or [])]
    seeded = Seeded(None, float(score), int(result.seed), history, settings_, elapsed)
    if min_score is not None and score < min_score:
        return seeded

    from game import hints
    hint_word, hint_score = hints.hint_for(store, scorer, embedding)

    def write() -> str:
        try:
            return store.add_target("gan", result.png_bytes, embedding, prompt=payload["prompt"],
                                    self_score=float(score), seed=int(result.seed), settings=settings_,
                                    history=history, hint_word=hint_word, hint_score=hint_score)
        except ValueError as exc:  # e.g. the very same image (same prompt, seed, settings) is already a target
            raise AdminError(f"not added: {exc}") from exc

    seeded.target_id = commit(write) if commit else write()
    return seeded


def find_job_target(store: Any, job_id: str, scorer: Any = None) -> Optional[str]:
    """The GAN target an earlier attempt of `job_id` already committed, if any.

    `add_target` writes the target and then its embedding; a worker killed
    between the two leaves a complete image with no embedding ("pending", not
    in the pool). That one is finished here from its stored image rather than
    generated again.
    """
    for target in store.list_targets(kind="gan"):
        if (target.settings or {}).get("job_id") != job_id or target.status == "removed":
            continue
        if target.status == "pending" and scorer is not None:
            import io
            from PIL import Image
            from game import hints
            with Image.open(io.BytesIO(store.target_image(target.id))) as img:
                embedding = scorer.embed_image(img.convert("RGB"))
            word, hint_score = hints.hint_for(store, scorer, embedding)
            self_score = judge_score(scorer, score_text(target.prompt), embedding)
            store.set_embedding(target.id, embedding, self_score=self_score, hint_word=word, hint_score=hint_score)
        return target.id
    return None


def step_fields(info: Any) -> dict:
    """iteration (1-based, done so far)/total/score/it_s from the engine's StepInfo (or a dict)."""
    get = info.get if isinstance(info, dict) else (lambda k, d=None: getattr(info, k, d))
    score = get("score")
    return {"iteration": int(get("iteration", 0) or 0) + 1, "total": int(get("total", 0) or 0),
            "score": None if score is None else float(score), "it_s": float(get("it_s", 0.0) or 0.0)}


# -- the pool -------------------------------------------------------------

def used_target_ids(store: Any, through: str) -> set[str]:
    """Targets shown on any frozen day up to and including `through`."""
    used = set()
    for day in store.days():
        if day <= through:
            used.update(p.target_id for p in store.puzzles_for(day))
    return used


def pool_shortfall(store: Any, cfg: dict, in_flight: int = 0) -> int:
    """How many more GAN targets the coming days need: K minus fresh ready ones minus those in flight.

    Fresh = ready and not yet shown on a past day or today (a target scheduled
    for a future day still counts: it is there for the coming days).
    """
    used = used_target_ids(store, store.today())
    fresh = [t for t in store.list_targets(kind="gan", status="ready") if t.id not in used]
    return max(0, int(cfg["POOL_TARGET"]) - len(fresh) - in_flight)


def check_model_names(choice: ModelChoice) -> None:
    """Refuse unknown model names before a job is queued (the weights may live on the workers)."""
    import open_clip
    from engine import clip_model, vqgan, weights
    clip_model._register_configs()
    if choice.clip_model not in open_clip.list_models():
        raise AdminError(f"unknown CLIP model {choice.clip_model!r}; e.g. test-tiny, ViT-B-32")
    if not (choice.vqgan_model in vqgan.SHIPPED_CONFIGS or os.path.isdir(choice.vqgan_model)
            or getattr(weights.REGISTRY.get(choice.vqgan_model), "kind", None) == "vqgan"):
        known = ", ".join(sorted(vqgan.SHIPPED_CONFIGS))
        raise AdminError(f"unknown VQGAN model {choice.vqgan_model!r}; known: {known}")
