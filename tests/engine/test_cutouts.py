"""Batched cutouts equal the 2021 notebook's per-cutout resample (and the bilinear option its interpolate).

The oracle below is the notebook's `resample` written out on its own (separable
Lanczos-2 low-pass with reflect padding on each shrinking axis, then bicubic with
align_corners=True), one crop at a time, as the notebook called it. Where the
shared reference is on disk (../shared/reference), it is checked against that too.
"""
import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine import cutouts

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "notebook_reference.py"


def lanczos_taps(ratio):
    n = math.ceil(2 / ratio + 1)
    ramp = torch.arange(n, dtype=torch.float64) * ratio
    x = torch.cat([-ramp[1:].flip(0), ramp])[1:-1]
    k = torch.where(x.abs() < 2, torch.sinc(x) * torch.sinc(x / 2), x.new_zeros([]))
    return (k / k.sum()).float()


def notebook_resample(x, size):
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)
    if size < h:
        k = lanczos_taps(size / h)
        p = (k.numel() - 1) // 2
        y = F.conv2d(F.pad(y, (0, 0, p, p), "reflect"), k.view(1, 1, -1, 1))
    if size < w:
        k = lanczos_taps(size / w)
        p = (k.numel() - 1) // 2
        y = F.conv2d(F.pad(y, (p, p, 0, 0), "reflect"), k.view(1, 1, 1, -1))
    return F.interpolate(y.reshape(n, c, h, w), (size, size), mode="bicubic", align_corners=True)


def per_cutout(images, boxes, cut_size, resize):
    out = []
    for b in range(images.shape[0]):
        for size, ox, oy, flip in boxes[b].tolist():
            size, ox, oy = int(size), int(ox), int(oy)
            one = resize(images[b:b + 1, :, oy:oy + size, ox:ox + size], cut_size)
            out.append(one.flip(3) if flip else one)
    return torch.cat(out)


# sizes: odd crops, crops smaller than and equal to cut_size, the whole image, 1 px crops.
BOXES = [[45.0, 0, 0, 0], [40, 16, 0, 1], [24, 5, 9, 0], [17, 3, 2, 1], [39, 17, 1, 0], [1, 55, 39, 0],
         [33, 23, 7, 1], [25, 31, 15, 0]]


@pytest.mark.parametrize("cut_size", [24, 31])
def test_notebook_resample_matches_one_resample_per_cutout(cut_size):
    torch.manual_seed(0)
    images = torch.rand(2, 3, 40, 56)
    boxes = torch.tensor([[b for b in BOXES if b[0] <= 40 and b[1] + b[0] <= 56 and b[2] + b[0] <= 40]] * 2)
    batched = cutouts.make_cutouts(images, boxes, cut_size)
    expected = per_cutout(images, boxes, cut_size, notebook_resample)
    assert batched.shape == expected.shape == (2 * boxes.shape[1], 3, cut_size, cut_size)
    assert (batched - expected).abs().max() <= 1e-5


def test_notebook_resample_at_game_sizes_and_gradients():
    # 224 px CLIP input from a 256 px image (the weakest prefilter) and from 512 px crops (a wide one).
    torch.manual_seed(1)
    for side, sizes in ((256, [224, 255, 256, 231]), (512, [512, 301, 224, 479])):
        image = torch.rand(1, 3, side, side, dtype=torch.float32)
        gen = torch.Generator().manual_seed(side)
        boxes = []
        for k, size in enumerate(sizes):
            ox = int(torch.randint(0, side - size + 1, (), generator=gen))
            oy = int(torch.randint(0, side - size + 1, (), generator=gen))
            boxes.append([size, ox, oy, k % 2])
        boxes = torch.tensor([boxes], dtype=torch.float32)
        a = image.clone().requires_grad_(True)
        b = image.clone().requires_grad_(True)
        batched = cutouts.make_cutouts(a, boxes, 224)
        expected = per_cutout(b, boxes, 224, notebook_resample)
        assert (batched - expected).abs().max() <= 1e-5
        weights = torch.rand_like(expected)
        (batched * weights).sum().backward()
        (expected * weights).sum().backward()
        assert (a.grad - b.grad).abs().max() <= 1e-4 * b.grad.abs().max()


def test_bilinear_option_matches_interpolate():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 40, 56)
    boxes = torch.tensor([[[32.0, 0, 0, 0], [40, 16, 0, 0], [24, 5, 9, 1]]] * 2)  # sizes >= the 24 px output
    batched = cutouts.make_cutouts(images, boxes, 24, resample="bilinear")
    resize = lambda crop, s: F.interpolate(crop, (s, s), mode="bilinear", align_corners=False)
    assert (batched - per_cutout(images, boxes, 24, resize)).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="resample must be one of notebook, bilinear"):
        cutouts.make_cutouts(images, boxes, 24, resample="lanczos")


def test_sampled_boxes_stay_inside_the_image():
    sampled = cutouts.sample_boxes(40, 56, 1000, 24, 1.0, torch.Generator().manual_seed(0), torch.device("cpu"))
    size, ox, oy = sampled.unbind(1)
    assert size.min() >= 24 and size.max() <= 40
    assert (ox >= 0).all() and (ox + size <= 56).all() and (oy >= 0).all() and (oy + size <= 40).all()
    boxes = cutouts.random_boxes(40, 56, 500, 24, 1.0, [torch.Generator().manual_seed(0)], torch.device("cpu"),
                                 flip=True)
    assert boxes.shape == (1, 500, 4) and 150 < boxes[0, :, 3].sum() < 350


@pytest.mark.skipif(not REFERENCE.exists(), reason="the shared reference is not on this machine")
def test_oracle_equals_the_shared_reference():
    spec = importlib.util.spec_from_file_location("notebook_reference", REFERENCE)
    try:
        reference = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(reference)
    except ImportError as exc:
        pytest.skip(f"reference needs {exc.name}")
    torch.manual_seed(2)
    for h, w, size in ((40, 56, 24), (33, 33, 31), (300, 301, 224), (20, 20, 24)):
        x = torch.rand(1, 3, h, w)
        assert (reference.resize_like_notebook(x, size) - notebook_resample(x, size)).abs().max() <= 1e-6
