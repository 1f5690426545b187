"""The judge: CLIP and its scorer, loaded once per process and shared by every request.

Which CLIP comes from CAPTIONARY_CLIP_MODEL + CAPTIONARY_CLIP_PRETRAINED
(a tag, a checkpoint file, or the explicit choice "random"). In development,
when the configured pretrained weights are not on this machine, the game
starts anyway in demo mode on the tiny random `test-tiny` model, and says so
loudly (log line here, banner on every page, /api/status). Production refuses
both: it never serves random-weight scores. Boards and embeddings are keyed by
`model_id`, so demo data never mixes with real data.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Optional

from game.config import ConfigError

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
           config["MAX_CAPTION_CHARS"], config["SCORER_BATCH_WINDOW_MS"], config.get("TORCH_THREADS"))
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
                    batch_window_ms=config["SCORER_BATCH_WINDOW_MS"], num_threads=threads)
    if reason:
        log.warning("DEMO MODE: %s", reason)
    log.info("judge: %s", clip.describe())
    return Judge(scorer=scorer, model_id=clip.model_id, is_pretrained=clip.is_pretrained,
                 demo_mode=not clip.is_pretrained, demo_reason=reason)
