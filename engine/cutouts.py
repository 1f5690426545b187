"""Random square cutouts of a batch of images, resized to CLIP's input, in one op.

The notebook cut `cutn` squares one at a time and resized each with its own
`resample`: on each axis that shrinks, a Lanczos-2 low-pass (reflect padding),
then bicubic interpolation with align_corners=True. At small sizes that loop
of tiny kernels, not arithmetic, bounds the speed.

Both steps are linear and separable, so here each cutout's resize along one
axis is a [cut_size, image_side] matrix: the bicubic taps composed with the
Lanczos taps (reflect padding folded in), placed at the crop's offset. All
cutouts of an image are then two batched matmuls (rows, then columns), and the
image is never repeated per cutout. A horizontal flip is the x matrix with its
rows reversed. The result equals the notebook's per-cutout resample within
float32 rounding (tests/engine/test_cutouts.py checks 1e-5).

`resample="bilinear"` is the fast option: one bilinear `grid_sample` over all
cutouts, no prefilter (large crops alias: the gradient reaches a thin sample
of pixels), sampling positions of `F.interpolate(crop, mode="bilinear",
align_corners=False)`, reading the neighbouring pixel at a crop's edge.

Crop sizes follow the notebook: size = rand ** cut_pow * (max - min) + min,
truncated to whole pixels.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

RESAMPLES = ("notebook", "bilinear")
_BICUBIC_A = -0.75  # PyTorch's (and the notebook's F.interpolate) cubic convolution constant


def sample_boxes(height: int, width: int, cutn: int, cut_size: int, cut_pow: float,
                 generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    """(cutn, 3) float tensor of [size, offset_x, offset_y] in whole pixels, drawn on `device`."""
    max_size = min(height, width)
    min_size = min(height, width, cut_size)
    r = torch.rand(3, cutn, generator=generator, device=device)
    size = torch.floor(r[0].pow(cut_pow) * (max_size - min_size) + min_size)
    # torch.randint(0, side - size + 1) in the notebook == floor(u * (side - size + 1))
    off_x = torch.floor(r[1] * (width - size + 1)).clamp_max(width - size)
    off_y = torch.floor(r[2] * (height - size + 1)).clamp_max(height - size)
    return torch.stack([size, off_x, off_y], dim=1)


def random_boxes(height: int, width: int, cutn: int, cut_size: int, cut_pow: float,
                 generators: Sequence[Optional[torch.Generator]], device: torch.device,
                 flip: bool = False) -> torch.Tensor:
    """Fresh cutout boxes for each image, one generator per image: (B, cutn, 4) of [size, x, y, flip].

    One generator per image keeps a seed's trajectory independent of which other
    seeds share its batch: best-of-N's winner is the image a single run would make.
    """
    out = []
    for gen in generators:
        boxes = sample_boxes(height, width, cutn, cut_size, cut_pow, gen, device)
        if flip:
            flips = (torch.rand(cutn, generator=gen, device=device) < 0.5).to(boxes.dtype)
        else:
            flips = boxes.new_zeros(cutn)
        out.append(torch.cat([boxes, flips[:, None]], dim=1))
    return torch.stack(out)


def boxes_to_theta(boxes: torch.Tensor, height: int, width: int, flip: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Affine matrices (cutn, 2, 3) mapping an output square in [-1, 1] onto each crop.

    With align_corners=False, pixel centres of a crop of `size` starting at
    `off` map exactly to interpolate's positions off + (i + 0.5) * size / s - 0.5.
    `flip` (cutn,) bool mirrors a cutout horizontally for free (negated x scale).
    """
    size, off_x, off_y = boxes[:, 0], boxes[:, 1], boxes[:, 2]
    sx, sy = size / width, size / height
    cx = (2 * off_x + size) / width - 1
    cy = (2 * off_y + size) / height - 1
    if flip is not None:
        sx = torch.where(flip, -sx, sx)
    zero = torch.zeros_like(sx)
    return torch.stack([torch.stack([sx, zero, cx], 1), torch.stack([zero, sy, cy], 1)], 1)


def _cubic_weights(t: torch.Tensor) -> torch.Tensor:
    """The four bicubic weights for taps at floor-1 .. floor+2, fraction t: (..., 4)."""
    a = _BICUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return torch.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], dim=-1)


def max_lanczos_half(length: int, cut_size: int) -> int:
    """Half-width of the widest Lanczos-2 kernel a crop of an image side `length` can need."""
    if length <= cut_size:
        return 0
    return math.ceil(2 * length / cut_size + 1) - 2


def notebook_matrices(size: torch.Tensor, offset: torch.Tensor, length: int, cut_size: int,
                      flip: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(n, cut_size, length) matrices: row i is output pixel i of each cutout along one axis.

    Output = bicubic(align_corners=True) of the Lanczos-2-prefiltered crop, the prefilter
    applied only when the crop is longer than cut_size, as the notebook's resample did.
    size, offset: (n,) whole-pixel floats; flip: (n,) bool, reverses a cutout's rows.
    """
    n, s, dev = size.shape[0], cut_size, size.device
    crop = size.double()
    last = (crop - 1)[:, None, None, None]
    # Bicubic source positions, computed in float32 as F.interpolate does.
    scale = ((size.float() - 1) / (s - 1)) if s > 1 else torch.zeros_like(size.float())
    src = (torch.arange(s, device=dev, dtype=torch.float32)[None] * scale[:, None]).double()
    base = torch.floor(src)
    bicubic = _cubic_weights(src - base)  # (n, s, 4)
    taps = base[..., None] + torch.arange(-1, 3, device=dev, dtype=torch.float64)
    taps = torch.minimum(taps.clamp_min(0), (crop - 1)[:, None, None])  # F.interpolate clamps at the border
    # Lanczos-2 taps sinc(x) sinc(x/2), x = m * s / crop, for |x| < 2; a delta when not shrinking.
    half = max_lanczos_half(length, s)
    m = torch.arange(-half, half + 1, device=dev, dtype=torch.float64)
    ratio = (s / crop)[:, None]
    x = m[None] * ratio
    lanczos = torch.sinc(x) * torch.sinc(x / 2) * (x.abs() < 2)
    lanczos = torch.where((crop > s)[:, None], lanczos, (m == 0).double()[None].expand_as(lanczos))
    lanczos = (lanczos / lanczos.sum(1, keepdim=True)).float().double()  # the notebook's float32 taps
    # Prefilter input position of each (output, bicubic tap, lanczos tap), reflect-padded.
    pos = taps[..., None] + m  # (n, s, 4, 2*half+1)
    pos = torch.where(pos < 0, -pos, pos)
    pos = torch.where(pos > last, 2 * last - pos, pos)
    pos = torch.minimum(pos.clamp_min(0), last)  # zero-weight taps beyond a short kernel's reach
    weight = bicubic[..., None] * lanczos[:, None, None, :]
    cols = (pos + offset.double()[:, None, None, None]).long().view(n, s, -1)
    matrices = torch.zeros(n, s, length, device=dev, dtype=torch.float64)
    matrices.scatter_add_(2, cols, weight.reshape(n, s, -1))
    matrices = matrices.float()
    if flip is not None:
        matrices = torch.where(flip.bool()[:, None, None], matrices.flip(1), matrices)
    return matrices


def make_cutouts(images: torch.Tensor, boxes: torch.Tensor, cut_size: int, resample: str = "notebook") -> torch.Tensor:
    """Cut images (B, C, H, W) with boxes (B, cutn, 4): (B * cutn, C, s, s), image-major order.

    Not clamped: the notebook clamps its cutouts (bicubic overshoots) with a
    gradient-passing clamp, which the caller applies.
    """
    if resample not in RESAMPLES:
        raise ValueError(f"resample must be one of {', '.join(RESAMPLES)}, got {resample!r}")
    b, c, h, w = images.shape
    cutn, s = boxes.shape[1], cut_size
    flat = boxes.reshape(b * cutn, 4)
    # Positions and weights in bf16 would be off by up to a pixel (8-bit mantissa): fp32 here,
    # whatever autocast says; CLIP, which follows, is where reduced precision pays.
    with torch.autocast(images.device.type, enabled=False):
        images = images.float()
        if resample == "bilinear":
            thetas = boxes_to_theta(flat, h, w, flat[:, 3] > 0.5)
            grids = F.affine_grid(thetas.float(), [b * cutn, c, s, s], align_corners=False)
            # One image's grids stacked vertically: (B, cutn * s, s, 2) samples each image once.
            grids = grids.view(b, cutn * s, s, 2)
            out = F.grid_sample(images, grids, mode="bilinear", padding_mode="border", align_corners=False)
            return out.view(b, c, cutn, s, s).transpose(1, 2).reshape(b * cutn, c, s, s)
        rows = notebook_matrices(flat[:, 0], flat[:, 2], h, s).view(b, cutn * s, h)
        cols = notebook_matrices(flat[:, 0], flat[:, 1], w, s, flat[:, 3] > 0.5)  # (b*cutn, s, w)
        # Rows first, all cutouts of an image in one bmm: (B, cutn*s, H) @ (B, H, C*W).
        tall = torch.bmm(rows, images.permute(0, 2, 1, 3).reshape(b, h, c * w))
        tall = tall.view(b * cutn, s * c, w)
        out = torch.bmm(tall, cols.transpose(1, 2))  # (B*cutn, s*C, s)
        # Contiguous NCHW for CLIP: with the strided view, whole steps ran ~1.5x slower on a
        # CPU limited to AVX2 (measured, ViT-B-32 at 64 px); the copy costs far less.
        return out.view(b * cutn, s, c, s).transpose(1, 2).contiguous()
