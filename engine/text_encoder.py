"""Exact, fast CLIP text encoding: one packed forward per batch and reusable prefix keys/values.

open_clip's text tower (`CLIP.encode_text`) embeds tokens, adds absolute
positional embeddings, runs pre-LN residual blocks under a causal mask, applies
`ln_final` and pools the features at the end-of-text token (the argmax of the
token ids), then projects. Two facts make a faster, still exact, path possible:

* The causal mask means a position only ever sees positions before it, so the
  pooled feature depends only on the tokens up to and including the pooled
  position. Padding after it (the 77-token context) can be cut without
  changing a number beyond float rounding.
* For the same reason, the keys and values every layer computes for a token
  prefix are the same whatever follows. A typing player's drafts share their
  complete words, so we keep the prefix's keys/values (`Prefix`) and compute
  only the tokens from the first one that differs, plus the end token. Every
  caption shares at least the start token, so its keys/values (`root`) are
  computed once at start-up.

A batch runs as one packed forward (`TextEncoder._forward`): the new tokens of
every caption are the rows of one matrix, so each layer's matmuls read the
weights once for the whole batch. That is what sets a CPU's typing capacity:
one call with a handful of rows costs about as much as streaming the ~150 MB of
ViT-B-32 text weights, so a call for 32 drafts costs ~3x one for 1 draft, not
32x (docs/scaling.md, "Where a draft's time goes"). Attention over the ragged
prefixes is one masked SDPA per layer over a KV slab.

The blocks are re-implemented with explicit q/k/v (open_clip runs them through
`nn.MultiheadAttention`, batch_first) while calling the model's own LayerNorm,
LayerScale and activation modules. Two more exact savings: the last block runs
queries, attention output and MLP for the pooled row only (the other tokens
only supply keys/values), and on CPU the fp32 matmuls go through oneDNN, with
exact GELU fused, when it agrees with torch (`choose_linear`; about twice
MKL's speed on the AMD CPU of our 2-core machine, still full fp32). On CPU the
blocks run as one TorchScript call (`_blocks_forward`), the same ops without the
GIL: the eager loop took it back after every op and queued behind the web
process's request threads. Models whose text tower differs from that shape
(custom blocks, non-causal mask, other pooling) fall back to open_clip's own
`encode_text` on full-context rows, so a score is never silently wrong.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from itertools import accumulate
from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
MAX_GROUP_ROWS = 4096  # bound on the new token rows of one forward call (memory)
MAX_SLAB_SLOTS = 4096  # bound on jobs x longest caption of one call: its KV slab (~200 MB for ViT-B-32)
SLAB_REUSE_BYTES = 64 << 20  # KV slabs up to this size reuse one buffer (typing batches)


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

    def __init__(self, clip, precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        self.precision = precision
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
        self._slab_buf: Optional[torch.Tensor] = None
        self.pool_eos = model.text_eos_id if model.text_pool_type == "eos" else None
        if precision == "bf16":
            self._linear, self.linear_backend = bf16_linear(self.blocks), "bf16"
        else:
            self._linear, self.linear_backend = choose_linear(self.device)
        act = self.blocks[0].mlp.gelu
        # Fuse exact (erf) GELU into the first MLP matmul when oneDNN does the matmuls.
        self._fuse_gelu = (self.linear_backend == "onednn" and type(act) is torch.nn.GELU
                           and act.approximate == "none")
        # Off the GIL on CPU (see _blocks_forward); the eager loop stays for bf16 and GPUs.
        self._scripted, self._script_weights = None, None
        if self.device.type == "cpu" and precision == "fp32":
            self._scripted, why = scripted_blocks(self.blocks, self.linear_backend, self._fuse_gelu)
            if self._scripted is None:
                log.info("text encoder: eager blocks (%s)", why)
            else:
                self._script_weights = why
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
        """Results in job order, from one packed forward (several only beyond MAX_GROUP_ROWS new rows).

        grouping=False: one forward whatever the size. Not thread-safe: one call
        at a time (the scorer holds its compute lock; the KV slab buffer is shared).
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
        """One packed forward for the whole batch, split only to bound memory.

        grouping=False: a single forward whatever its size (tests use it to
        check ragged masking). Otherwise jobs are cut, in order, into chunks of
        at most MAX_GROUP_ROWS new token rows and MAX_SLAB_SLOTS KV slots
        (bulk batches of long captions); a typing batch of up to ~100 players
        is one chunk.
        """
        starts = [self._start(job, root) for job in jobs]
        if not grouping:
            return self._forward(jobs, starts)
        # A GPU has memory to spare and wants big calls; the bounds are for CPU boxes.
        scale = 16 if torch.device(self.device).type == "cuda" else 1
        max_rows, max_slots = MAX_GROUP_ROWS * scale, MAX_SLAB_SLOTS * scale
        results: list[Result] = []
        lo, rows, longest = 0, 0, 0
        for i, (job, (_, used)) in enumerate(zip(jobs, starts)):
            n, total = len(job.key) - used, len(job.key)
            if i > lo and (rows + n > max_rows or (i - lo + 1) * max(longest, total) > max_slots):
                results += self._forward(jobs[lo:i], starts[lo:i])
                lo, rows, longest = i, 0, 0
            rows, longest = rows + n, max(longest, total)
        results += self._forward(jobs[lo:], starts[lo:])
        return results

    def _forward(self, jobs: Sequence[Job], starts: Sequence[tuple[Optional[Prefix], int]]) -> list[Result]:
        """Encode a ragged batch in one pass: packed GEMMs, one padded SDPA per layer.

        Every new token of every job is one row of a packed (N, width) matrix,
        so each layer's QKV, output and MLP matmuls read the weights once for
        the whole batch, with no padding rows. For attention, a KV slab
        (layers, 2, B, heads, T, head_dim) holds each job's cached prefix
        followed directly by its new keys/values, so a key's slot is its
        absolute position and one mask serves every layer: query at position
        p sees slots 0..p of its own row (which covers prefix and causality;
        slots past a job's end are never visible to its real queries).
        """
        model, dev = self.model, self.device
        B = len(jobs)
        used = [n for _, n in starts]
        lens = [len(job.key) - n for job, n in zip(jobs, used)]
        totals = [u + n for u, n in zip(used, lens)]
        M, T, N = max(lens), max(totals), sum(lens)
        L, H, D, W = self.layers, self.heads, self.head_dim, self.width

        # Packed row -> (job, slot in the job's query block, absolute position).
        flat_tokens, row_job, row_q, row_pos = [], [], [], []
        for i, (job, u, n) in enumerate(zip(jobs, used, lens)):
            flat_tokens.extend(job.key[u:])
            row_job.extend([i] * n)
            row_q.extend(range(n))
            row_pos.extend(range(u, u + n))
        tokens = torch.tensor(flat_tokens, dtype=torch.long, device=dev)
        b_idx = torch.tensor(row_job, dtype=torch.long, device=dev)
        q_idx = torch.tensor(row_q, dtype=torch.long, device=dev)
        pos = torch.tensor(row_pos, dtype=torch.long, device=dev)
        # Same ops as encode_text: embedding gather, then add the absolute positional rows.
        x = model.token_embedding(tokens) + model.positional_embedding[pos]  # (N, W)
        uniform = all(n == M for n in lens)  # typing batches: no query padding, plain views

        # Query positions per (job, query slot); padding slots repeat the job's last
        # position, so they attend to real keys only and are discarded.
        qpos = torch.tensor([[u + min(m, n - 1) for m in range(M)] for u, n in zip(used, lens)],
                            dtype=torch.long, device=dev)
        mask = torch.arange(T, device=dev)[None, None, :] <= qpos[:, :, None]  # (B, M, T), True = attend
        mask = mask[:, None]  # (B, 1, M, T)
        ends = torch.tensor(totals, device=dev) - 1
        end_rows = torch.tensor(list(accumulate(lens)), device=dev) - 1  # each job's last packed row

        slab = self._slab((L, 2, B, H, T, D))
        for i, (prefix, u) in enumerate(starts):
            if u:
                slab[:, :, i, :, :u] = prefix.kv[:, :, :, :u]

        q_pad = None if uniform else x.new_zeros(B, M, H, D)  # padding slots stay 0
        if self._scripted is not None:
            last_mask = (torch.arange(T, device=dev)[None, :] <= ends[:, None])[:, None, None]
            x = self._scripted(x, slab, b_idx, q_idx, pos, mask, end_rows, last_mask, q_pad, uniform,
                               B, M, H, D, N, **self._script_weights)
        else:
            x = self._eager_blocks(x, slab, b_idx, q_idx, pos, mask, end_rows, ends, q_pad, uniform, B, M, T, N)

        # ln_final is per token, so applying it to the pooled row only is exact.
        pooled = model.ln_final(x)
        proj = model.text_projection
        pooled = proj(pooled) if isinstance(proj, torch.nn.Linear) else pooled @ proj
        feats = F.normalize(pooled.float(), dim=-1).cpu()

        results = []
        for i, job in enumerate(jobs):  # kept prefixes are copies: the slab is reused
            kept = None
            if job.keep:
                kv = slab[:, :, i, :, : totals[i] - 1]
                kept = Prefix(tokens=tuple(job.key[:-1]), kv=kv.clone())
            results.append(Result(feats[i], kept, used[i]))
        return results

    def _eager_blocks(self, x, slab, b_idx, q_idx, pos, mask, end_rows, ends, q_pad, uniform, B, M, T, N):
        """The residual blocks in Python, one op at a time (bf16, GPUs, and blocks the script does not cover)."""
        dev = self.device
        L, H, D, W = self.layers, self.heads, self.head_dim, self.width
        lin = self._linear
        for layer, block in enumerate(self.blocks):
            attn = block.attn
            qkv = lin(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).view(-1, 3, H, D)
            # Ragged scatter of the new keys/values into their absolute-position slots.
            slab[layer, 0, b_idx, :, pos] = qkv[:, 1]
            slab[layer, 1, b_idx, :, pos] = qkv[:, 2]
            k, v = slab[layer, 0], slab[layer, 1]  # (B, H, T, D)
            if layer == L - 1:
                # Only the pooled row leaves the last block: every token still
                # contributes keys/values, but queries, attention output, MLP
                # and everything after are needed for that one row. Exact.
                q = qkv[end_rows, 0].unsqueeze(2)  # (B, H, 1, D)
                m = (torch.arange(T, device=dev)[None, :] <= ends[:, None])[:, None, None]
                x = x[end_rows]
                a = F.scaled_dot_product_attention(q, k, v, attn_mask=m).reshape(B, W)
            else:
                if uniform:
                    q = qkv[:, 0].view(B, M, H, D).transpose(1, 2)
                else:
                    q_pad[b_idx, q_idx] = qkv[:, 0]
                    q = q_pad.transpose(1, 2)
                a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)  # (B, M, H, D)
                a = a.reshape(N, W) if uniform else a[b_idx, q_idx].reshape(N, W)
            a = lin(a, attn.out_proj.weight, attn.out_proj.bias)
            x = x + block.ls_1(a)
            x = x + block.ls_2(self._mlp(block, block.ln_2(x)))
        return x

    def _slab(self, shape: tuple[int, ...]) -> torch.Tensor:
        """A KV slab of `shape`, reusing one buffer up to SLAB_REUSE_BYTES.

        Zero-filling a fresh slab per call cost ~5% of a typing batch. Slots no
        query may see (past a job's end) keep stale keys/values of an earlier
        batch; those are finite, so masked attention weights of exactly 0 still
        multiply them to 0 (uninitialised memory could hold NaN, and 0 * NaN is NaN).
        """
        numel = 1
        for n in shape:
            numel *= n
        if numel * 4 > SLAB_REUSE_BYTES:
            return torch.zeros(shape, device=self.device)
        buf = self._slab_buf
        if buf is None or buf.numel() < numel:
            buf = self._slab_buf = torch.zeros(max(numel, 1 << 20), device=self.device)
        return buf[:numel].view(shape)


ACT_GELU_FUSED, ACT_GELU, ACT_QUICK_GELU = 0, 1, 2


def _blocks_forward(x: torch.Tensor, slab: torch.Tensor, b_idx: torch.Tensor, q_idx: torch.Tensor,
                    pos: torch.Tensor, mask: torch.Tensor, end_rows: torch.Tensor, last_mask: torch.Tensor,
                    q_pad: Optional[torch.Tensor], uniform: bool, B: int, M: int, H: int, D: int, N: int,
                    ln1_w: List[torch.Tensor], ln1_b: List[torch.Tensor], ln1_eps: List[float],
                    in_w: List[torch.Tensor], in_b: List[torch.Tensor],
                    out_w: List[torch.Tensor], out_b: List[torch.Tensor],
                    ln2_w: List[torch.Tensor], ln2_b: List[torch.Tensor], ln2_eps: List[float],
                    fc_w: List[torch.Tensor], fc_b: List[torch.Tensor],
                    pr_w: List[torch.Tensor], pr_b: List[torch.Tensor],
                    onednn: bool, act: int) -> torch.Tensor:
    """The residual blocks of `TextEncoder._forward`, op for op, as one TorchScript call.

    Why TorchScript: a scripted call runs all its ops without the GIL, while the eager loop
    takes the GIL back after every one of its ~200 ops. In a web process whose request
    threads run Python, the judge's batching thread then queued for the GIL at every op:
    a 6-draft batch took 5x longer beside four busy Python threads (bench/gil_convoy.py).
    Same aten ops, same order, so the same numbers (tests compare it bit for bit with the
    eager loop). Returns the pooled rows (B, W) after the last block.
    """
    W = H * D
    scalars: List[Optional[Union[int, float, complex]]] = []  # TorchScript's spelling of the op's Scalar?[]
    layers = len(in_w)
    for layer in range(layers):
        h = F.layer_norm(x, [W], ln1_w[layer], ln1_b[layer], ln1_eps[layer])
        if onednn:
            qkv = torch.ops.mkldnn._linear_pointwise(h, in_w[layer], in_b[layer], "none", scalars, "")
        else:
            qkv = F.linear(h, in_w[layer], in_b[layer])
        qkv = qkv.view(-1, 3, H, D)
        keys, values = slab[layer, 0], slab[layer, 1]  # (B, H, T, D) views
        keys.index_put_([b_idx, None, pos], qkv[:, 1])
        values.index_put_([b_idx, None, pos], qkv[:, 2])
        if layer == layers - 1:
            q = qkv.index_select(0, end_rows)[:, 0].unsqueeze(2)  # (B, H, 1, D): the pooled rows only
            x = x.index_select(0, end_rows)
            a = F.scaled_dot_product_attention(q, keys, values, attn_mask=last_mask).reshape(B, W)
        else:
            if uniform or q_pad is None:
                q = qkv[:, 0].view(B, M, H, D).transpose(1, 2)
            else:
                q_pad.index_put_([b_idx, q_idx], qkv[:, 0])
                q = q_pad.transpose(1, 2)
            a = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask).transpose(1, 2)
            if uniform:
                a = a.reshape(N, W)
            else:
                a = a[b_idx, q_idx].reshape(N, W)
        if onednn:
            a = torch.ops.mkldnn._linear_pointwise(a, out_w[layer], out_b[layer], "none", scalars, "")
        else:
            a = F.linear(a, out_w[layer], out_b[layer])
        x = x + a
        h = F.layer_norm(x, [W], ln2_w[layer], ln2_b[layer], ln2_eps[layer])
        if act == 0:
            h = torch.ops.mkldnn._linear_pointwise(h, fc_w[layer], fc_b[layer], "gelu", scalars, "none")
        else:
            if onednn:
                h = torch.ops.mkldnn._linear_pointwise(h, fc_w[layer], fc_b[layer], "none", scalars, "")
            else:
                h = F.linear(h, fc_w[layer], fc_b[layer])
            if act == 1:
                h = F.gelu(h)
            else:
                h = h * torch.sigmoid(1.702 * h)
        if onednn:
            h = torch.ops.mkldnn._linear_pointwise(h, pr_w[layer], pr_b[layer], "none", scalars, "")
        else:
            h = F.linear(h, pr_w[layer], pr_b[layer])
        x = x + h
    return x


def scripted_blocks(blocks, linear_backend: str, fuse_gelu: bool):
    """(scripted `_blocks_forward`, its weight lists) for these blocks, or (None, why not).

    Only for the shape `_blocks_forward` spells out: open_clip's LayerNorm, no LayerScale,
    exact GELU or QuickGELU, fp32 weights; anything else keeps the eager loop.
    """
    from open_clip.transformer import LayerNorm, QuickGELU
    act = blocks[0].mlp.gelu
    if type(act) is QuickGELU:
        kind = ACT_QUICK_GELU
    elif type(act) is torch.nn.GELU and act.approximate == "none":
        kind = ACT_GELU_FUSED if fuse_gelu else ACT_GELU
    else:
        return None, f"activation {type(act).__name__}"
    for block in blocks:
        if type(block.mlp.gelu) is not type(act):
            return None, "mixed activations"
        if not (isinstance(block.ls_1, torch.nn.Identity) and isinstance(block.ls_2, torch.nn.Identity)):
            return None, "LayerScale"
        for ln in (block.ln_1, block.ln_2):
            if type(ln) not in (LayerNorm, torch.nn.LayerNorm) or ln.weight is None or ln.bias is None:
                return None, f"norm {type(ln).__name__}"
    try:
        with warnings.catch_warnings():
            # torch marks torch.jit.script deprecated for torch.compile, which has no equivalent of a
            # GIL-free call over ragged shapes without recompiling; tests pin that it still works here.
            warnings.simplefilter("ignore", FutureWarning)
            fn = torch.jit.script(_blocks_forward)
    except Exception as exc:  # a torch build without TorchScript, or one that cannot compile it
        return None, f"TorchScript unavailable ({type(exc).__name__}: {exc})"
    weights = dict(
        ln1_w=[b.ln_1.weight for b in blocks], ln1_b=[b.ln_1.bias for b in blocks],
        ln1_eps=[float(b.ln_1.eps) for b in blocks],
        in_w=[b.attn.in_proj_weight for b in blocks], in_b=[b.attn.in_proj_bias for b in blocks],
        out_w=[b.attn.out_proj.weight for b in blocks], out_b=[b.attn.out_proj.bias for b in blocks],
        ln2_w=[b.ln_2.weight for b in blocks], ln2_b=[b.ln_2.bias for b in blocks],
        ln2_eps=[float(b.ln_2.eps) for b in blocks],
        fc_w=[b.mlp.c_fc.weight for b in blocks], fc_b=[b.mlp.c_fc.bias for b in blocks],
        pr_w=[b.mlp.c_proj.weight for b in blocks], pr_b=[b.mlp.c_proj.bias for b in blocks],
        onednn=linear_backend == "onednn", act=kind)
    return fn, weights


def bf16_linear(blocks):
    """The opt-in bf16 matmul: the blocks' weights copied once to bfloat16, fp32 in and out.

    Not exact (inputs are rounded to 8 bits of mantissa before each matmul;
    bench/scoring.py --precision bf16 prints the measured error); everything
    else (LayerNorm, attention, residual stream, keys/values) stays fp32. The
    model's own fp32 weights are untouched, so `encode_text` stays the reference.
    """
    copies: dict[int, torch.Tensor] = {}
    for block in blocks:
        for module in (block.attn, block.mlp.c_fc, block.mlp.c_proj):
            for name in ("in_proj_weight", "in_proj_bias", "weight", "bias"):
                t = getattr(module, name, None)
                if isinstance(t, torch.Tensor):
                    copies[id(t)] = t.detach().to(torch.bfloat16)
        out = block.attn.out_proj
        for t in (out.weight, out.bias):
            if t is not None:
                copies[id(t)] = t.detach().to(torch.bfloat16)

    def linear(x, weight, bias):
        b = copies[id(bias)] if bias is not None else None
        return F.linear(x.to(torch.bfloat16), copies[id(weight)], b).float()
    return linear


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
