"""The judge: CLIP and its scorer, loaded once per process and shared by every request.

Which CLIP comes from CAPTIONARY_CLIP_MODEL + CAPTIONARY_CLIP_PRETRAINED
(a tag, a checkpoint file, or the explicit choice "random"). In development,
when the configured pretrained weights are not on this machine, the game
starts anyway in demo mode on the tiny random `test-tiny` model, and says so
loudly (log line here, banner on every page, /api/status). Production refuses
both: it never serves random-weight scores. Boards and embeddings are keyed by
`model_id`, so demo data never mixes with real data.

Which weights are on this machine, and fetching them (`models_table`,
`model_files`, `download_model`: the `flask models` commands, which also run
without the app through `python -m game.cli models`), live here too.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable, Optional

from game.config import ConfigError
from game.errors import AdminError

log = logging.getLogger("captionary.models")

DOWNLOAD_HOWTO = ("flask --app game models download clip-vit-b-32-openai "
                  "(or point CAPTIONARY_CLIP_WEIGHTS at the .bin file)")

_lock = threading.Lock()
_loaded: dict[tuple, "Judge"] = {}


@dataclass
class Judge:
    """The process's scorer plus what the UI must say about it."""

    scorer: object  # engine.scorer.Scorer
    model_id: str
    is_pretrained: bool
    demo_mode: bool  # True whenever scores are not from pretrained weights
    demo_reason: Optional[str]  # why (for the banner and the log)


def load_judge(config: dict) -> Judge:
    """Load (once per process and settings) the CLIP scorer the config asks for."""
    key = (config["CLIP_MODEL"], config["CLIP_PRETRAINED"], config.get("DEVICE"),
           config.get("MODELS_DIR"), config["ENV"], config["DEMO_FALLBACK"],
           config["MAX_CAPTION_CHARS"], config["SCORER_BATCH_WINDOW_MS"], config.get("TORCH_THREADS"),
           config.get("SCORER_PRECISION", "fp32"))
    with _lock:
        judge = _loaded.get(key)
        if judge is None:
            judge = _loaded[key] = _load(config)
        return judge


def _device(config: dict) -> str:
    if config.get("DEVICE"):
        return str(config["DEVICE"])
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def _load(config: dict) -> Judge:
    from engine.clip_model import TINY_MODEL, load_clip
    from engine.scorer import Scorer
    from engine.weights import WeightsUnavailableError

    device = _device(config)
    name, pretrained = config["CLIP_MODEL"], config["CLIP_PRETRAINED"]
    reason = None
    try:
        clip = load_clip(name, pretrained, device=device, models_dir=config.get("MODELS_DIR"))
    except WeightsUnavailableError as exc:
        if config["ENV"] == "production" or not config["DEMO_FALLBACK"]:
            raise ConfigError(f"CLIP weights for {name}/{pretrained} are not available:\n{exc}") from exc
        reason = (f"the CLIP weights for {name}/{pretrained} are not on this machine, so the game runs "
                  f"on a tiny random model. To get real scores: {DOWNLOAD_HOWTO}")
        clip = load_clip(TINY_MODEL, "random", device=device)
    except ValueError as exc:
        raise ConfigError(f"CAPTIONARY_CLIP_MODEL/CAPTIONARY_CLIP_PRETRAINED: {exc}") from exc
    if not clip.is_pretrained and reason is None:
        reason = (f"CLIP {clip.model_id} has random weights (chosen explicitly), so scores are not real. "
                  f"For real scores: {DOWNLOAD_HOWTO}")
    if config["ENV"] == "production" and not clip.is_pretrained:
        raise ConfigError(f"production refuses non-pretrained CLIP {clip.model_id}")
    # TORCH_THREADS unset: the scorer's default (cores - 1, see engine.scorer.configure_torch_threads).
    threads = int(config["TORCH_THREADS"]) if config.get("TORCH_THREADS") else None
    scorer = Scorer(clip, max_caption_chars=config["MAX_CAPTION_CHARS"],
                    batch_window_ms=config["SCORER_BATCH_WINDOW_MS"], num_threads=threads,
                    precision=config.get("SCORER_PRECISION", "fp32"))
    if reason:
        log.warning("DEMO MODE: %s", reason)
    log.info("judge: %s", clip.describe())
    return Judge(scorer=scorer, model_id=clip.model_id, is_pretrained=clip.is_pretrained,
                 demo_mode=not clip.is_pretrained, demo_reason=reason)


# -- weights on this machine (`flask models list|check|download`) -----------------

def models_table(directory: Optional[str] = None) -> list[dict]:
    """One row per registered model: name, kind, size, present?, description."""
    from engine import weights
    rows = []
    for name in sorted(weights.REGISTRY):
        entry = weights.REGISTRY[name]
        files = weights.status(name, directory)
        known = [f.size for f in entry.files if f.size]
        size_mb = round(sum(known) / 2**20) if len(known) == len(entry.files) else entry.approx_size_mb
        rows.append({"name": name, "kind": entry.kind, "size_mb": size_mb,
                     "present": all(p for _, _, p in files), "description": entry.description})
    return rows


def model_files(directory: Optional[str] = None) -> list[dict]:
    """One row per file of every registered model: where it is expected and whether it is there."""
    from engine import weights
    rows = []
    for name in sorted(weights.REGISTRY):
        entry = weights.REGISTRY[name]
        override = os.environ.get(entry.env_override) if entry.env_override else None
        for index, (file, path, present) in enumerate(weights.status(name, directory)):
            if index == 0 and override:
                path, present = override, os.path.isfile(override)
            rows.append({"name": name, "kind": entry.kind, "file": file.filename, "path": str(path),
                         "present": present})
    return rows


def download_model(name: str, directory: Optional[str] = None,
                   progress: Optional[Callable[[int, Optional[int]], None]] = None,
                   force: bool = False) -> list[str]:
    """Download (or verify, if present) every file of a registered model; `force` fetches them again."""
    from engine import weights
    if name not in weights.REGISTRY:
        raise AdminError(f"unknown model {name!r}; known models: {', '.join(sorted(weights.REGISTRY))}")
    target = weights.models_dir(directory)
    try:
        target.mkdir(parents=True, exist_ok=True)
        if not os.access(target, os.W_OK):
            raise PermissionError(f"{target} is not writable")
    except OSError as exc:
        raise AdminError(f"cannot write to the models folder {target}: {exc} "
                         f"(set CAPTIONARY_MODELS_DIR to a writable folder)") from exc
    try:
        return [str(p) for p in weights.download(name, directory, progress, force=force)]
    except (weights.WeightsUnavailableError, weights.WeightsVerificationError) as exc:
        raise AdminError(str(exc)) from exc
