"""Exactness on the full ViT-B-32 architecture (seeded random weights): every scorer path
against open_clip's own `model.encode_text(tokenizer([c]))`. Marked slow; CI runs it."""
import threading

import numpy as np
import pytest
import torch

from engine.clip_model import load_clip
from engine.scorer import Scorer
from engine.text_encoder import Job
from tests.helpers.hard_captions import HARD_CAPTIONS

pytestmark = pytest.mark.slow
TOL = 1e-5


@pytest.fixture(scope="module")
def clip():
    return load_clip("ViT-B-32", "random")


@pytest.fixture(scope="module")
def scorer(clip):
    s = Scorer(clip, max_caption_chars=1000)
    yield s
    s.close()


def test_hard_captions_bulk_live_and_one_pass(clip, scorer):
    ref = clip.encode_texts_reference(HARD_CAPTIONS).numpy()
    assert np.abs(scorer.embed_texts(HARD_CAPTIONS) - ref).max() <= TOL
    enc = scorer.encoder
    one_pass = enc.encode([Job(enc.key(c)) for c in HARD_CAPTIONS], grouping=False)
    assert np.abs(torch.stack([r.embedding for r in one_pass]).numpy() - ref).max() <= TOL
    image = np.random.default_rng(0).standard_normal(clip.embed_dim)
    for caption, expected in zip(HARD_CAPTIONS[:5], ref[:5] @ (image / np.linalg.norm(image))):
        assert abs(scorer.score(caption, image) - expected) <= TOL


def test_concurrent_typing_players_with_stream_prefixes(clip, scorer):
    texts = ["a raccoon driving a tractor through a wheat field at sunset",
             "an oil painting of a lighthouse in a storm 🌊⚡",
             "la tour eiffel sous la neige, photographie argentique"]
    drafts = {p: [t[:i] for i in range(3, len(t) + 1, 4)] + [t, t[:-5], t[:-5] + " ok"]
              for p, t in enumerate(texts)}
    got, errors = {}, []

    def play(p):
        try:
            for d in drafts[p]:
                got[d] = scorer.embed_text(d, stream=f"vit-player-{p}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=play, args=(p,)) for p in drafts]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    captions = sorted(got)
    ref = clip.encode_texts_reference(captions).numpy()
    assert np.abs(np.stack([got[c] for c in captions]) - ref).max() <= TOL
    stats = scorer.stats()
    assert stats["tokens_reused"] > stats["tokens_computed"]
