"""CLIP loading: `load_clip(name, pretrained, device)` and the model it returns.

Three sources, always chosen explicitly (a silently random CLIP is a known trap):
  * an open_clip pretrained tag with a registry entry (default "ViT-B-32" +
    "openai"), read from the local weights cache; never fetched at load time;
  * a local checkpoint file (`pretrained="/path/to/file.bin"`);
  * random weights: the shipped `test-tiny` config (tests, offline demo mode)
    or any architecture with `pretrained="random"` (benchmarks).
Random weights are seeded, so every process of an installation builds the same
model and stored embeddings stay comparable; `LoadedClip.is_pretrained` says
whether scores mean anything, and `model_id` tags every embedding and board.
The tokenizer's per-word BPE cache, unbounded in open_clip, is bounded here
(`bound_tokenizer_cache`): every distinct word a player types would otherwise
stay in the web process's memory for good.
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from engine import weights

log = logging.getLogger(__name__)

TINY_MODEL = "test-tiny"
RANDOM = "random"
RANDOM_SEED = 0
DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "openai"
_CONFIG_DIR = Path(__file__).with_name("model_configs")
# Distinct words whose BPE merges the tokenizer remembers. open_clip keeps them in a plain dict
# that grows with every new word any player ever types (a few hundred bytes each); 16k words
# cover ordinary English several times over, so the hit rate on real captions barely changes.
TOKENIZER_CACHE_WORDS = 16_384
_configs_registered = False


def _register_configs() -> None:
    global _configs_registered
    if not _configs_registered:
        import open_clip
        open_clip.add_model_config(_CONFIG_DIR)
        _configs_registered = True


@dataclass
class LoadedClip:
    """A CLIP model ready for inference, with where its weights came from."""

    model: Any  # open_clip CLIP module, eval mode, grads off
    tokenizer: Callable  # open_clip tokenizer: list[str] -> LongTensor (N, context_length)
    preprocess: Callable  # PIL image -> normalised tensor (3, S, S)
    name: str  # architecture, e.g. "ViT-B-32"
    pretrained: str  # tag, file path or "random"
    model_id: str  # stable id stored with every embedding, e.g. "ViT-B-32/openai"
    is_pretrained: bool  # False: random weights, scores are not meaningful
    device: torch.device

    @property
    def context_length(self) -> int:
        return int(self.model.context_length)

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1])

    def __getstate__(self) -> dict:
        # The tokenizer's BPE sits in an lru_cache (bound_tokenizer_cache), which does not pickle;
        # a process that receives this model (game/explain_process.py) builds its own from the name.
        state = dict(self.__dict__)
        state.pop("tokenizer", None)
        return state

    def __setstate__(self, state: dict) -> None:
        import open_clip
        _register_configs()
        self.__dict__.update(state)
        self.tokenizer = bound_tokenizer_cache(open_clip.get_tokenizer(self.name))

    def describe(self) -> str:
        kind = "pretrained" if self.is_pretrained else "RANDOM WEIGHTS - scores are not real"
        return f"CLIP {self.model_id} on {self.device} ({kind})"

    @torch.inference_mode()
    def encode_texts_reference(self, captions: Sequence[str]) -> torch.Tensor:
        """open_clip's own path, one caption at a time: normalised float32 (N, D). The exactness yardstick."""
        rows = [self.model.encode_text(self.tokenizer([c]).to(self.device)) for c in captions]
        return F.normalize(torch.cat(rows).float(), dim=-1)

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Any]) -> torch.Tensor:
        """Normalised float32 image embeddings (N, D) for PIL images."""
        batch = torch.stack([self.preprocess(img.convert("RGB")) for img in images]).to(self.device)
        return F.normalize(self.model.encode_image(batch).float(), dim=-1)


class ClipCheckpointError(ValueError):
    """A local CLIP checkpoint file that cannot be loaded (unsafe, truncated, or another architecture)."""


def _create_from_file(name: str, path: str, **kwargs):
    """open_clip's loader (torch.load with weights_only=True) with one readable error for bad files."""
    import open_clip
    try:
        return open_clip.create_model_and_transforms(name, pretrained=path, **kwargs)
    except Exception as exc:  # unpickling, zip, size-mismatch and key errors all mean "wrong file"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        text = str(exc)
        if "Unsupported global" in text or "GLOBAL" in text:
            reason = ("it holds objects other than tensors, and loading them could run code "
                      "(only plain state dicts saved with torch.save are accepted)")
        elif "Weights only load failed" in text or "central directory" in text or "load key" in text:
            reason = "it is not a torch checkpoint, or it is truncated"
        raise ClipCheckpointError(f"cannot load CLIP checkpoint {path} as {name}: {reason}") from exc


class _PinnedOnly(dict):
    """A dict that keeps only the keys it was built with and silently ignores new ones.

    Replaces open_clip's `SimpleTokenizer.cache`: its special tokens ("<start_of_text>"...)
    must stay (their BPE is themselves, not a computed merge), while the per-word entries
    `bpe()` writes are what grew without bound; those now live in a bounded lru_cache.
    """

    def __setitem__(self, key, value) -> None:
        if key in self:
            super().__setitem__(key, value)


def bound_tokenizer_cache(tokenizer, max_words: int = TOKENIZER_CACHE_WORDS):
    """Bound open_clip's BPE word cache (unbounded upstream) to `max_words` entries, in place.

    Every distinct word ever tokenized stayed in `tokenizer.cache` for the life of the
    process, so a client typing random strings grew the web process's memory without limit.
    `bpe` is wrapped in functools.lru_cache (bounded and thread-safe; the request threads
    tokenize concurrently) and the dict keeps only the special tokens. Tokenizers without
    this cache (Hugging Face ones) are returned unchanged. Returns the tokenizer.
    """
    cache, bpe = getattr(tokenizer, "cache", None), getattr(tokenizer, "bpe", None)
    if not isinstance(cache, dict) or not callable(bpe) or isinstance(cache, _PinnedOnly):
        return tokenizer
    tokenizer.cache = _PinnedOnly(cache)
    tokenizer.bpe = functools.lru_cache(maxsize=max_words)(bpe)
    return tokenizer


def _finish(model, name, pretrained, model_id, is_pretrained, device, preprocess) -> LoadedClip:
    import open_clip
    model = model.to(device).eval().requires_grad_(False)
    tokenizer = bound_tokenizer_cache(open_clip.get_tokenizer(name))
    loaded = LoadedClip(model=model, tokenizer=tokenizer, preprocess=preprocess,
                        name=name, pretrained=pretrained, model_id=model_id,
                        is_pretrained=is_pretrained, device=torch.device(device))
    if is_pretrained:
        log.info("loaded %s", loaded.describe())
    else:
        log.warning("loaded %s", loaded.describe())
    return loaded


def _registry_entry_for(name: str, tag: str) -> Optional[weights.WeightsEntry]:
    for entry in weights.REGISTRY.values():
        if entry.kind == "clip" and entry.extra.get("arch") == name and entry.extra.get("tag") == tag:
            return entry
    return None


def load_clip(name: str, pretrained: str, device: str | torch.device = "cpu",
              models_dir: Optional[os.PathLike | str] = None) -> LoadedClip:
    """Build CLIP `name` with weights from `pretrained` (a tag, a file path, or "random").

    `name="test-tiny"` is the shipped random test model (pretrained must be
    "random" or empty). Raises `weights.WeightsUnavailableError` with a message
    saying where to put the file when a pretrained tag's weights are absent,
    `ClipCheckpointError` for a file that cannot be loaded safely, and
    ValueError for an unknown model or tag.
    """
    import open_clip
    _register_configs()
    if name not in open_clip.list_models():
        raise ValueError(f"unknown CLIP model {name!r}; known: {TINY_MODEL}, {DEFAULT_MODEL}, "
                         f"and the other open_clip architectures (open_clip.list_models())")
    if name == TINY_MODEL and pretrained not in ("", None, RANDOM) and not os.path.isfile(pretrained):
        raise ValueError(f"{TINY_MODEL} has random weights only; pass pretrained='random' or a checkpoint file")
    pretrained = pretrained or RANDOM

    if pretrained == RANDOM:
        # The seed makes random weights identical in every process of an installation.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
        return _finish(model, name, RANDOM, f"{name}/random", False, device, preprocess)

    if os.path.isfile(pretrained):
        model, _, preprocess = _create_from_file(name, pretrained)
        model_id = f"{name}/file:{Path(pretrained).name}"
        return _finish(model, name, pretrained, model_id, True, device, preprocess)

    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
    entry = _registry_entry_for(name, pretrained)
    if not tag_cfg or entry is None:
        known = sorted({e.extra.get("tag") for e in weights.REGISTRY.values() if e.extra.get("arch") == name})
        raise ValueError(f"no weights known for CLIP {name} with pretrained={pretrained!r} "
                         f"(registered tags: {', '.join(known) or 'none'}; or pass a checkpoint file path)")
    path = weights.resolve(entry.name, models_dir)[0]  # raises WeightsUnavailableError with the how-to
    try:
        model, _, preprocess = _create_from_file(
            name, str(path), force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
            **{f"image_{k}": tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode")
               if tag_cfg.get(k) is not None},
        )
    except ClipCheckpointError as exc:  # a registry file: say how to replace it, not only that it is bad
        raise ClipCheckpointError(f"{exc}\n{weights.force_hint(entry.name)}") from None
    return _finish(model, name, pretrained, f"{name}/{pretrained}", True, device, preprocess)
