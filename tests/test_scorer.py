"""Scorer unit tests on the tiny random CLIP: exactness against open_clip's own path, caches, bad input."""
import numpy as np
import pytest
from PIL import Image

from engine.clip_model import load_clip
from engine.scorer import CaptionError, Scorer, embedding_from_bytes, embedding_to_bytes

TOL = 1e-5


@pytest.fixture(scope="module")
def clip():
    return load_clip("test-tiny", "random")


@pytest.fixture
def scorer(clip):
    s = Scorer(clip)
    yield s
    s.close()


def reference(clip, captions):
    return clip.encode_texts_reference(captions).numpy()


def test_embed_text_matches_open_clip(clip, scorer):
    captions = ["a raccoon driving a tractor", "a photo of a cat", "x"]
    got = np.stack([scorer.embed_text(c) for c in captions])
    assert got.dtype == np.float32 and got.shape == (3, clip.embed_dim)
    assert np.abs(got - reference(clip, captions)).max() <= TOL
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)


def test_score_is_cosine_with_reference(clip, scorer):
    image = scorer.embed_image(Image.new("RGB", (80, 60), "orange"))
    ref_img = clip.encode_images([Image.new("RGB", (80, 60), "orange")])[0].numpy()
    assert np.abs(image - ref_img).max() <= TOL
    caption = "an orange square"
    expected = float(reference(clip, [caption])[0] @ ref_img)
    assert abs(scorer.score(caption, image) - expected) <= TOL
    assert abs(scorer.score(caption, embedding_from_bytes(embedding_to_bytes(image))) - expected) <= TOL


@pytest.mark.parametrize("bad", [None, 42, b"bytes", "", "   \t\n ", "a\x00b", "bell\x07", "a\x7f",
                                 "lone \ud800 surrogate", "x" * 201, "&nbsp;"])
def test_bad_captions_are_caption_errors(scorer, bad):
    with pytest.raises(CaptionError) as info:
        scorer.embed_text(bad)
    assert isinstance(info.value, ValueError) and str(info.value)
    scorer.embed_text("still works")  # the batching thread is alive
