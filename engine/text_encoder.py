"""Exact, fast CLIP text encoding: length grouping and reusable prefix keys/values.

open_clip's text tower (`CLIP.encode_text`) embeds tokens, adds absolute
positional embeddings, runs pre-LN residual blocks under a causal mask, applies
`ln_final` and pools the features at the end-of-text token (the argmax of the
token ids), then projects. Two facts make a faster, still exact, path possible:

* The causal mask means a position only ever sees positions before it, so the
  pooled feature depends only on the tokens up to and including the pooled
  position. Padding after it (the 77-token context) can be cut, and captions of
  similar length batched together with their own padding, without changing a
  number beyond float rounding.
* For the same reason, the keys and values every layer computes for a token
  prefix are the same whatever follows. A typing player's drafts share their
  complete words, so we keep the prefix's keys/values (`Prefix`) and compute
  only the tokens from the first one that differs, plus the end token. Every
  caption shares at least the start token, so its keys/values (`root`) are
  computed once at start-up.

The blocks are re-implemented with explicit q/k/v (open_clip runs them through
`nn.MultiheadAttention`, batch_first) while calling the model's own LayerNorm,
LayerScale and activation modules. Two more exact savings: the last block runs
queries, attention output and MLP for the pooled row only (the other tokens
only supply keys/values), and on CPU the fp32 matmuls go through oneDNN, with
exact GELU fused, when it agrees with torch (`choose_linear`; about twice
MKL's speed on the AMD CPU of our 2-core machine, still full fp32). Models whose text tower differs from that shape
(custom blocks, non-causal mask, other pooling) fall back to open_clip's own
`encode_text` on full-context rows, so a score is never silently wrong.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

# Grouping cost model, in "token rows" of the transformer: every forward call
# costs a fixed overhead (Python dispatch of ~15 ops per layer) on top of the
# padded rows it runs. Measured on 2 cores for ViT-B-32 (about 0.35 ms per
# token row, about 1.5 ms per call): overhead ~4 rows.
GROUP_OVERHEAD_ROWS = 4.0
MAX_GROUP_ROWS = 4096  # bound on batch x tokens of one forward call (memory)


@dataclass(frozen=True)
class Prefix:
    """Keys and values of every layer for a token prefix (immutable, shareable)."""

    tokens: tuple[int, ...]  # token ids at positions 0..len-1
    kv: torch.Tensor  # (layers, 2, heads, len(tokens), head_dim), float32

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()


@dataclass
class Job:
    """One caption to encode: its token key and the cached prefix to start from."""

    key: tuple[int, ...]  # from `TextEncoder.key`
    prefix: Optional[Prefix] = None  # None: start from the shared start-token prefix
    keep: bool = False  # return a Prefix of this caption's tokens (for a stream cache)


@dataclass
class Result:
    embedding: torch.Tensor  # (D,) float32, L2-normalised
    prefix: Optional[Prefix]  # the caption's content tokens (all but the pooled one) when kept
    reused: int  # prefix tokens not recomputed


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def fast_path_problem(model) -> Optional[str]:
    """Why `model`'s text tower cannot use the re-implemented path (None when it can)."""
    from open_clip.model import CLIP
    from open_clip.transformer import ResidualAttentionBlock

    if type(model) is not CLIP:
        return f"{type(model).__name__} is not open_clip's plain CLIP"
    if getattr(model, "text_pool_type", None) not in ("argmax", "eos"):
        return f"text pooling {model.text_pool_type!r}"
    if model.text_pool_type == "eos" and getattr(model, "text_eos_id", None) is None:
        return "eos pooling without an eos id"
    mask = getattr(model, "attn_mask", None)
    n = model.positional_embedding.shape[0]
    if mask is None or tuple(mask.shape) != (n, n):
        return "no causal attention mask"
    causal = torch.full((n, n), float("-inf"), device=mask.device).triu_(1)
    if not torch.equal(mask.float(), causal):
        return "attention mask is not causal"
    if not isinstance(model.token_embedding, torch.nn.Embedding):
        return "token embedding is not nn.Embedding"
    for block in model.transformer.resblocks:
        if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv"):
            return f"text block {type(block).__name__}"
        attn = block.attn
        if (not attn._qkv_same_embed_dim or attn.bias_k is not None or attn.add_zero_attn
                or attn.in_proj_weight is None):
            return "unusual attention projections"
    if model.transformer.get_cast_dtype() != torch.float32:
        return f"text tower dtype {model.transformer.get_cast_dtype()}"
    return None


class TextEncoder:
    """Encodes token keys to normalised embeddings, exactly as `model.encode_text` would."""

    def __init__(self, clip):
        model = clip.model
        self.model = model
        self.tokenizer = clip.tokenizer
        self.device = clip.device
        self.context_length = int(model.positional_embedding.shape[0])
        self.problem = fast_path_problem(model)
        self.fast = self.problem is None
        if not self.fast:
            log.warning("text encoder: using open_clip's full-context path (%s)", self.problem)
            self.root = None
            return
        self.blocks = list(model.transformer.resblocks)
        self.layers = len(self.blocks)
        self.heads = self.blocks[0].attn.num_heads
        self.width = int(model.positional_embedding.shape[1])
        self.head_dim = self.width // self.heads
        self.pool_eos = model.text_eos_id if model.text_pool_type == "eos" else None
        self._linear, self.linear_backend = choose_linear(self.device)
        act = self.blocks[0].mlp.gelu
        # Fuse exact (erf) GELU into the first MLP matmul when oneDNN does the matmuls.
        self._fuse_gelu = (self.linear_backend == "onednn" and type(act) is torch.nn.GELU
                           and act.approximate == "none")
        # The first token (start-of-text) is shared by every caption.
        first = int(self.tokenizer([""])[0, 0])
        with torch.inference_mode():
            self.root = self._encode_groups([Job(key=(first, first), keep=True)], root=None)[0].prefix

    # ---- tokens -------------------------------------------------------------
    def key(self, caption: str) -> tuple[int, ...]:
        """The token ids that determine `caption`'s embedding.

        Fast path: the tokenizer's own row (so truncation of long captions is
        exactly the tokenizer's: the end token kept at the last position), up to
        and including the pooled position; what follows cannot reach the pooled
        feature through the causal mask. Fallback: the whole row, trailing
        padding trimmed.
        """
        row = self.tokenizer([caption])[0]
        if not self.fast:
            nonzero = torch.nonzero(row).flatten()
            end = int(nonzero[-1]) + 1 if len(nonzero) else 0
            return tuple(row[:end].tolist())
        if self.pool_eos is None:
            pool = int(row.argmax())  # open_clip: text.argmax(dim=-1), first maximal index
        else:
            pool = int((row == self.pool_eos).int().argmax())
        return tuple(row[: pool + 1].tolist())

    @staticmethod
    def is_empty(key: tuple[int, ...]) -> bool:
        """True when the caption has no tokens between the start and the pooled end token."""
        return len(key) <= 2

    # ---- encoding -----------------------------------------------------------
    @torch.inference_mode()
    def encode(self, jobs: Sequence[Job], grouping: bool = True) -> list[Result]:
        """Results in job order.

        Jobs are grouped by the number of tokens they must compute (grouping=False:
        one ragged forward pass for all of them, as tests use to check masking).
        """
        if not jobs:
            return []
        if not self.fast:
            return self._encode_reference(jobs)
        return self._encode_groups(jobs, root=self.root, grouping=grouping)

    def _encode_reference(self, jobs: Sequence[Job]) -> list[Result]:
        rows = torch.zeros(len(jobs), self.context_length, dtype=torch.long)
        for i, job in enumerate(jobs):
            rows[i, : len(job.key)] = torch.tensor(job.key, dtype=torch.long)
        feats = F.normalize(self.model.encode_text(rows.to(self.device)).float(), dim=-1).cpu()
        return [Result(feats[i], None, 0) for i in range(len(jobs))]

    def _start(self, job: Job, root: Optional[Prefix]) -> tuple[Optional[Prefix], int]:
        """The prefix to start from and how many of its tokens are reusable.

        Only the truly identical token prefix counts, and never the pooled
        position: at least the last token is always recomputed.
        """
        content = job.key[:-1]
        best, best_len = None, 0
        for candidate in (job.prefix, root):
            if candidate is not None:
                n = common_prefix_len(candidate.tokens, content)
                if n > best_len:
                    best, best_len = candidate, n
        return best, best_len

    def _mlp(self, block, h: torch.Tensor) -> torch.Tensor:
        fc, proj = block.mlp.c_fc, block.mlp.c_proj
        if self._fuse_gelu:
            h = torch.ops.mkldnn._linear_pointwise(h, fc.weight, fc.bias, "gelu", [], "none")
        else:
            h = block.mlp.gelu(self._linear(h, fc.weight, fc.bias))
        return self._linear(h, proj.weight, proj.bias)

    def _encode_groups(self, jobs: Sequence[Job], root: Optional[Prefix], grouping: bool = True) -> list[Result]:
        starts = [self._start(job, root) for job in jobs]
        if not grouping:
            return self._forward(jobs, starts)
        new_counts = [len(job.key) - used for job, (_, used) in zip(jobs, starts)]
        order = sorted(range(len(jobs)), key=lambda i: new_counts[i])
        results: list[Optional[Result]] = [None] * len(jobs)
        for group in partition_by_length([new_counts[i] for i in order]):
            idx = [order[i] for i in group]
            out = self._forward([jobs[i] for i in idx], [starts[i] for i in idx])
            for i, result in zip(idx, out):
                results[i] = result
        return results  # type: ignore[return-value]

    def _forward(self, jobs: Sequence[Job], starts: Sequence[tuple[Optional[Prefix], int]]) -> list[Result]:
        model, dev = self.model, self.device
        B = len(jobs)
        used = [n for _, n in starts]
        new = [job.key[n:] for job, n in zip(jobs, used)]
        lens = [len(t) for t in new]
        M, P = max(lens), max(used)
        L, H, D = self.layers, self.heads, self.head_dim

        tokens = torch.zeros(B, M, dtype=torch.long)
        positions = torch.full((B, M), self.context_length - 1, dtype=torch.long)
        for i, (toks, p) in enumerate(zip(new, used)):
            tokens[i, : len(toks)] = torch.tensor(toks, dtype=torch.long)
            positions[i, : len(toks)] = torch.arange(p, p + len(toks))
        tokens, positions = tokens.to(dev), positions.to(dev)
        # Same ops as encode_text: embedding gather, then add the absolute positional rows.
        x = model.token_embedding(tokens) + model.positional_embedding[positions]

        # Additive mask (B, 1, M, P + M): cached prefix keys up to each row's own
        # length, then causal over the new tokens. Padding queries (after a row's
        # end token) still see themselves, so no row is all -inf.
        mask = torch.zeros(B, 1, M, P + M, device=dev)
        if P:
            pref_pad = torch.arange(P, device=dev)[None, :] >= torch.tensor(used, device=dev)[:, None]
            mask[:, 0, :, :P].masked_fill_(pref_pad[:, None, :], float("-inf"))
        mask[:, 0, :, P:].masked_fill_(torch.ones(M, M, dtype=torch.bool, device=dev).triu_(1), float("-inf"))

        prefix_kv = None
        if P:
            prefix_kv = torch.zeros(L, 2, B, H, P, D, device=dev)
            for i, (prefix, p) in enumerate(starts):
                if p:
                    prefix_kv[:, :, i, :, :p] = prefix.kv[:, :, :, :p]
        keep = any(job.keep for job in jobs)
        new_kv = torch.empty(L, 2, B, H, M, D, device=dev) if keep else None

        lin = self._linear
        ends = torch.tensor(lens, device=dev) - 1  # each row's pooled (end-token) position
        rows = torch.arange(B, device=dev)
        for layer, block in enumerate(self.blocks):
            attn = block.attn
            qkv = lin(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
            q, k, v = qkv.view(B, M, 3, H, D).permute(2, 0, 3, 1, 4)  # each (B, H, M, D)
            if keep:
                new_kv[layer, 0] = k
                new_kv[layer, 1] = v
            if P:
                k = torch.cat([prefix_kv[layer, 0], k], dim=2)
                v = torch.cat([prefix_kv[layer, 1], v], dim=2)
            if layer == L - 1:
                # Only the pooled row leaves the last block: every token still
                # contributes keys/values, but queries, attention output, MLP
                # and everything after are needed for that one row. Exact.
                q = q[rows, :, ends].unsqueeze(2)
                mask = mask[rows, :, ends].unsqueeze(2)
                x = x[rows, ends].unsqueeze(1)
                M = 1
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            a = lin(a.transpose(1, 2).reshape(B, M, self.width), attn.out_proj.weight, attn.out_proj.bias)
            x = x + block.ls_1(a)
            x = x + block.ls_2(self._mlp(block, block.ln_2(x)))

        # ln_final is per token, so applying it to the pooled row only is exact.
        pooled = model.ln_final(x[:, 0])
        proj = model.text_projection
        pooled = proj(pooled) if isinstance(proj, torch.nn.Linear) else pooled @ proj
        feats = F.normalize(pooled.float(), dim=-1).cpu()

        results = []
        for i, job in enumerate(jobs):
            kept = None
            if job.keep:
                parts = [new_kv[:, :, i, :, : lens[i] - 1]]
                if used[i]:
                    parts.insert(0, starts[i][0].kv[:, :, :, : used[i]])
                kept = Prefix(tokens=tuple(job.key[:-1]), kv=torch.cat(parts, dim=3).contiguous())
            results.append(Result(feats[i], kept, used[i]))
        return results


def _onednn_linear(x, weight, bias):
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def choose_linear(device: torch.device):
    """The matmul for the text blocks: oneDNN on CPU when it agrees with F.linear, else F.linear.

    On CPUs where MKL takes a slow path (e.g. AMD), oneDNN's fp32 GEMM is about
    twice as fast; it is still full fp32 (no reduced-precision math), differing
    from MKL only in summation order. A self-check guards odd builds.
    """
    if torch.device(device).type != "cpu" or not torch.backends.mkldnn.is_available():
        return F.linear, "torch"
    try:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(5, 3, 64, generator=gen)
        w = torch.randn(96, 64, generator=gen) / 8
        b = torch.randn(96, generator=gen)
        with torch.inference_mode():
            ok = torch.allclose(_onednn_linear(x, w, b), F.linear(x, w, b), atol=1e-4, rtol=1e-4)
            fused = torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu", [], "none")
            ok = ok and torch.allclose(fused, F.gelu(F.linear(x, w, b)), atol=1e-4, rtol=1e-4)
    except Exception as exc:  # op missing or unsupported in this build
        log.info("oneDNN linear unavailable (%s); using torch.nn.functional.linear", exc)
        return F.linear, "torch"
    if not ok:
        log.warning("oneDNN linear disagrees with F.linear; using F.linear")
        return F.linear, "torch"
    return _onednn_linear, "onednn"


def partition_by_length(counts: Sequence[int], overhead: float = GROUP_OVERHEAD_ROWS,
                        max_rows: int = MAX_GROUP_ROWS) -> list[list[int]]:
    """Split sorted token counts into contiguous groups minimising padded rows + per-call overhead.

    `counts` must be ascending; a group's cost is size x its largest count
    (padding included) plus `overhead`. Dynamic programming, O(n^2) on a
    batch of at most a few hundred.
    """
    n = len(counts)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j - 1, -1, -1):
            rows = (j - i) * counts[j - 1]
            if rows > max_rows and j - i > 1:
                break
            cost = best[i] + rows + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append(list(range(cut[j], j)))
        j = cut[j]
    return groups[::-1]
