"""Random square cutouts of a batch of images, resized to CLIP's input, in one op.

The notebook cut `cutn` squares one at a time and resized each with its own
F.interpolate call: at small sizes that loop of tiny kernels, not arithmetic,
bounds the speed. Here every cutout of every image is one bilinear
`grid_sample`: each cutout's sampling grid is an affine map of the output
square onto its crop, and the grids of one image are stacked along the height
axis so the image itself is never repeated in memory (repeating it per cutout
is what made the first batched attempts slow at 1024 px).

The sampling positions equal those of `F.interpolate(crop, (s, s),
mode="bilinear", align_corners=False)`, so the maths is the notebook's;
only the pixels at a crop's edge differ (we read the neighbouring pixel
instead of clamping to the crop). Crop sizes follow the notebook:
size = rand ** cut_pow * (max - min) + min, truncated to whole pixels.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F


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


def boxes_to_theta(boxes: torch.Tensor, height: int, width: int, flip: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Affine matrices (cutn, 2, 3) mapping an output square in [-1, 1] onto each crop.

    With align_corners=False, pixel centres of a crop of `size` starting at
    `off` map exactly to interpolate's positions off + (i + 0.5) * size / s - 0.5.
    `flip` (cutn,) bool mirrors a cutout horizontally for free (negated x scale).
    """
    size, off_x, off_y = boxes.unbind(1)
    sx, sy = size / width, size / height
    cx = (2 * off_x + size) / width - 1
    cy = (2 * off_y + size) / height - 1
    if flip is not None:
        sx = torch.where(flip, -sx, sx)
    zero = torch.zeros_like(sx)
    return torch.stack([torch.stack([sx, zero, cx], 1), torch.stack([zero, sy, cy], 1)], 1)


def make_cutouts(images: torch.Tensor, thetas: torch.Tensor, cut_size: int) -> torch.Tensor:
    """Cut images (B, C, H, W) with thetas (B, cutn, 2, 3): (B * cutn, C, s, s), image-major order."""
    b, c, _, _ = images.shape
    cutn = thetas.shape[1]
    # Sampling positions in bf16 would be off by up to a pixel (8-bit mantissa): fp32 here,
    # whatever autocast says; CLIP, which follows, is where reduced precision pays.
    with torch.autocast(images.device.type, enabled=False):
        grids = F.affine_grid(thetas.reshape(b * cutn, 2, 3).float(), [b * cutn, c, cut_size, cut_size],
                              align_corners=False)
        # Stack one image's grids vertically: (B, cutn * s, s, 2) samples the image once per call.
        grids = grids.view(b, cutn * cut_size, cut_size, 2)
        out = F.grid_sample(images.float(), grids, mode="bilinear", padding_mode="border", align_corners=False)
    return out.view(b, c, cutn, cut_size, cut_size).transpose(1, 2).reshape(b * cutn, c, cut_size, cut_size)


def random_thetas(height: int, width: int, cutn: int, cut_size: int, cut_pow: float,
                  generators: Sequence[Optional[torch.Generator]], device: torch.device,
                  flip: bool = False) -> torch.Tensor:
    """Fresh cutout matrices for each image, one generator per image (B, cutn, 2, 3).

    One generator per image keeps a seed's trajectory independent of which other
    seeds share its batch: best-of-N's winner is the image a single run would make.
    """
    thetas = []
    for gen in generators:
        boxes = sample_boxes(height, width, cutn, cut_size, cut_pow, gen, device)
        flips = None
        if flip:
            flips = torch.rand(cutn, generator=gen, device=device) < 0.5
        thetas.append(boxes_to_theta(boxes, height, width, flips))
    return torch.stack(thetas)
