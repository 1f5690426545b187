"""Why a caption scored what it did: word contributions and where CLIP looked.

Two explanations, both exact computations on the judge's own model, no Flask:

* `word_contributions(scorer, caption, image_embedding)`: leave-one-word-out.
  A *word* is a whitespace-separated token of the (validated) caption, with any
  punctuation attached ("raccoon," is one word): that is what a player sees as
  a word and can delete, and removing it never splits a token the tokenizer
  would merge differently. The variant without word i is the other words joined
  by single spaces (CLIP's tokenizer folds whitespace, so spacing never changes
  a score). Effect of word i = score(full caption) - score(caption without it):
  positive means the word helped. The full caption and every variant go through
  the scorer's public bulk path (`Scorer.embed_family`: the full caption, then
  every variant from the full caption's cached keys/values up to the removed
  word, about half the rows of scoring each from scratch), so the numbers are
  the judge's own and equal scoring each variant on its own within float
  rounding (tests hold them to 1e-5). A one-word caption has no variant
  (removing its word leaves nothing to score): its effect is None, as is that of
  a word whose removal leaves a caption the scorer refuses.

* `relevance_map(clip, image, text_embedding)`: which image patches made the
  image embedding agree with the caption, by the gradient-weighted attention
  rollout of Chefer, Gur and Wolf, "Generic Attention-model Explainability for
  Interpreting Bi-Modal and Encoder-Decoder Transformers", ICCV 2021 (their
  rule for self-attention encoders, eq. 5-6 there): with R = I, for every
  block b of the image tower, R <- R + mean_heads((dS/dA_b * A_b)^+) @ R, where
  A_b are the block's attention probabilities and S the cosine score with the
  caption; the class token's row of R over the patch tokens is the relevance.
  open_clip's blocks call nn.MultiheadAttention with need_weights=False, so the
  probabilities are never materialised; `_ExplicitViT` runs the same forward
  over the same weights with attention written out (tests check it equals
  `model.encode_image`), keeping A_b in the graph for autograd.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["caption_words", "leave_one_out", "WordContributions", "word_contributions",
           "Heatmap", "relevance_map", "image_tensor", "ExplainError"]


class ExplainError(ValueError):
    """A request the explainer cannot answer; the message is meant for the player."""


# -- word contributions ------------------------------------------------------------------------

def caption_words(caption: str) -> list[str]:
    """The caption's words: whitespace-separated tokens, punctuation attached."""
    return caption.split()


def leave_one_out(words: Sequence[str]) -> list[str]:
    """For each word, the caption without it (single spaces); "" when nothing is left."""
    return [" ".join(words[:i] + words[i + 1:]) for i in range(len(words))]


@dataclass(frozen=True)
class WordContributions:
    caption: str
    score: float  # the full caption's score
    words: list[str]
    effects: list[Optional[float]]  # score(full) - score(without word i); None: no variant to score

    def as_dict(self) -> dict:
        return {"caption": self.caption, "score": round(self.score, 6),
                "words": [{"word": w, "effect": None if e is None else round(e, 6)}
                          for w, e in zip(self.words, self.effects)]}


def word_contributions(scorer, caption: str, image_embedding) -> WordContributions:
    """Leave-one-word-out effects of a caption against an image embedding, all in one bulk batch.

    `scorer` is an engine.scorer.Scorer; only its public API is used. Raises the scorer's
    CaptionError for a caption it refuses.
    """
    from engine.embeddings import as_unit_vector
    from engine.scorer import CaptionError
    text = scorer.validate_caption(caption)
    words = caption_words(text)
    variants = leave_one_out(words) if len(words) > 1 else []
    scorable = []
    for i, variant in enumerate(variants):
        try:
            scorable.append((i, scorer.validate_caption(variant)))
        except CaptionError:  # e.g. only a symbol the tokenizer drops is left
            pass
    image = as_unit_vector(image_embedding, scorer.embed_dim).astype(np.float64)
    embs = scorer.embed_family(text, [v for _, v in scorable]).astype(np.float64)
    scores = embs @ image
    effects: list[Optional[float]] = [None] * len(words)
    for (i, _), s in zip(scorable, scores[1:]):
        effects[i] = float(scores[0] - s)
    return WordContributions(caption=text, score=float(scores[0]), words=words, effects=effects)


# -- where CLIP looked -------------------------------------------------------------------------

@dataclass(frozen=True)
class Heatmap:
    grid: np.ndarray  # (rows, cols) float32 in [0, 1], max 1 (all zeros if nothing was relevant)
    score: float  # the cosine score the relevance explains
    ms: float  # compute time

    def as_dict(self) -> dict:
        return {"rows": int(self.grid.shape[0]), "cols": int(self.grid.shape[1]), "score": round(self.score, 6),
                "grid": [[round(float(v), 4) for v in row] for row in self.grid]}


class _ExplicitViT:
    """open_clip's VisionTransformer forward with attention probabilities written out.

    Same weights, same ops order as open_clip 3.x `VisionTransformer.forward` for the plain
    CLIP towers (class-token pooling, ResidualAttentionBlock with nn.MultiheadAttention);
    anything else (attentional pooling, custom blocks) is refused rather than explained wrongly.
    """

    def __init__(self, visual):
        import torch.nn as nn
        if getattr(visual, "attn_pool", None) is not None or not hasattr(visual, "_embeds"):
            raise ExplainError("this image tower has attentional pooling; the relevance map supports plain ViTs")
        if getattr(visual, "pool_type", "tok") != "tok":
            raise ExplainError("the relevance map needs class-token pooling")
        self.visual = visual
        self.blocks = list(visual.transformer.resblocks)
        for block in self.blocks:
            if not isinstance(getattr(block, "attn", None), nn.MultiheadAttention) or hasattr(block, "ln_1_kv"):
                raise ExplainError("the relevance map supports open_clip's ResidualAttentionBlock only")
        self.batch_first = getattr(visual.transformer, "batch_first", True)
        grid = visual.grid_size
        self.grid = (int(grid[0]), int(grid[1]))

    def forward(self, pixels: torch.Tensor, between: Optional[Callable[[], None]] = None):
        """(normalised (N, D') image features before normalising, [A_b (N, H, T, T) per block])."""
        x = self.visual._embeds(pixels)  # (N, T, W), batch first
        attns = []
        for block in self.blocks:
            if between is not None:
                between()
            h, attn = self._attention(block.attn, block.ln_1(x))
            attns.append(attn)
            x = x + block.ls_1(h)
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
        pooled, _ = self.visual._pool(x)
        if self.visual.proj is not None:
            pooled = pooled @ self.visual.proj
        return pooled, attns

    @staticmethod
    def _attention(mha, x: torch.Tensor):
        n, t, w = x.shape
        heads = mha.num_heads
        q, k, v = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (z.reshape(n, t, heads, w // heads).transpose(1, 2) for z in (q, k, v))
        attn = torch.softmax((q * (1.0 / math.sqrt(w // heads))) @ k.transpose(-2, -1), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(n, t, w)
        return mha.out_proj(out), attn


def image_tensor(clip, image) -> torch.Tensor:
    """A PIL image as the model's (1, 3, S, S) input (the judge's own preprocessing)."""
    return clip.preprocess(image.convert("RGB")).unsqueeze(0).to(clip.device)


def relevance_map(clip, image, text_embedding, *, between: Optional[Callable[[], None]] = None) -> Heatmap:
    """Chefer et al. (2021) relevance of each image patch to a caption (see the module docstring).

    `image`: a PIL image or a preprocessed (1, 3, S, S) tensor. `text_embedding`: the caption's
    normalised embedding from the scorer (fixed; gradients flow through the image tower only).
    `between`: called before each block, e.g. to let live scoring go first.
    Returns the patch grid (rows x cols of the ViT) scaled so its maximum is 1.
    """
    started = time.perf_counter()
    vit = _ExplicitViT(clip.model.visual)
    pixels = image if isinstance(image, torch.Tensor) else image_tensor(clip, image)
    text = torch.as_tensor(np.asarray(text_embedding, dtype=np.float32), device=pixels.device).reshape(-1)
    with torch.enable_grad():
        # The model's parameters have grads off; a grad-requiring input keeps the graph for autograd.
        pixels = pixels.detach().float().requires_grad_(True)
        features, attns = vit.forward(pixels, between)
        score = (F.normalize(features.float(), dim=-1)[0] * F.normalize(text, dim=0)).sum()
        grads = torch.autograd.grad(score, attns)
    with torch.no_grad():
        tokens = attns[0].shape[-1]
        relevance = torch.eye(tokens, dtype=torch.float32, device=pixels.device)
        for attn, grad in zip(attns, grads):
            cam = (grad[0] * attn[0]).clamp(min=0).mean(dim=0)  # heads averaged, negatives dropped
            relevance = relevance + cam @ relevance
        patches = relevance[0, 1:].reshape(vit.grid).cpu().numpy().astype(np.float32)
    top = float(patches.max())
    grid = patches / top if top > 0 else np.zeros_like(patches)
    return Heatmap(grid=grid, score=float(score.detach()), ms=(time.perf_counter() - started) * 1000)
