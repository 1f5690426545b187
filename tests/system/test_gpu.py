"""GPU checks (marker `gpu`): skipped on machines without CUDA, which includes CI.

They pin down what only a GPU can show: the scorer stays exact to open_clip's
own path on CUDA (TF32 or reduced-precision matmuls would break that), and the
generation loop's bf16 path runs, is reproducible for a seed, and reports a
finite self-score. Run them where a GPU is available: `python -m pytest -m gpu`.
"""
import math

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CAPTIONS = ["a raccoon driving a tractor", "an espresso in a red cup", "🦝 " * 3 + "x" * 300,
            "tabs\tand  spaces", "a photo of a man wearing a denim jacket that says born this way"]


def test_scorer_on_cuda_matches_open_clip_exactly():
    from engine.clip_model import load_clip
    from engine.scorer import Scorer
    clip = load_clip("ViT-B-32", "random", device="cuda")
    reference = clip.encode_texts_reference(CAPTIONS).cpu().numpy()
    with Scorer(clip, max_caption_chars=1000) as scorer:
        batched = scorer.embed_texts(CAPTIONS)
        typed = [scorer.embed_text(c[:n], stream="p1") for c in CAPTIONS[:1] for n in (5, 12, len(c))]
    assert np.abs(batched - reference).max() <= 1e-5
    assert np.abs(typed[-1] - reference[0]).max() <= 1e-5


def test_bf16_generation_runs_and_is_reproducible_on_cuda():
    from engine.clip_model import load_clip
    from engine.generate import GenerationConfig, generate
    from engine.vqgan import load_vqgan
    clip, vqgan = load_clip("test-tiny", "random", device="cuda"), load_vqgan("test-tiny", device="cuda")
    config = GenerationConfig("a red barn", size=64, iterations=8, cutn=8, seed=3, seeds=2, checkpoint_step=4,
                              score_every=0)
    first, second = generate(config, clip, vqgan), generate(config, clip, vqgan)
    assert math.isfinite(first.self_score) and first.seed == second.seed
    assert np.array_equal(np.asarray(first.image), np.asarray(second.image))
