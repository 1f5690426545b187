"""Scorer unit tests on the tiny random CLIP: exactness against open_clip's own path, caches, bad input."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from engine.clip_model import load_clip
from engine.embeddings import LRUCache
from engine.scorer import (CaptionError, Scorer, ScorerClosedError, embedding_from_bytes, embedding_to_bytes,
                           validate_caption)
from engine.text_encoder import Job, TextEncoder
from engine.thread_clock import SCHEDSTAT

from tests.helpers.hard_captions import HARD_CAPTIONS

TOL = 1e-5


@pytest.fixture(scope="module")
def clip():
    return load_clip("test-tiny", "random")


@pytest.fixture
def scorer(clip):
    s = Scorer(clip, max_caption_chars=1000)
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


@pytest.mark.skipif(not os.path.exists(SCHEDSTAT), reason="no per-thread scheduler statistics here")
def test_stats_split_the_judges_computing_time_by_what_its_thread_did(clip, scorer):
    """on a core + waiting for one + blocked = the seconds computing (engine/thread_clock.py)."""
    for i in range(6):
        scorer.embed_text(f"a raccoon number {i} driving a tractor")
    stats = scorer.stats()
    assert stats["thread_times"] and stats["batches"] >= 1
    parts = [stats[f"compute_{state}_s"] for state in ("on_cpu", "waiting_for_cpu", "blocked")]
    assert all(p >= 0 for p in parts) and parts[0] > 0
    assert sum(parts) == pytest.approx(stats["compute_s"], rel=1e-6, abs=1e-9)


def test_a_checked_draft_is_tokenized_once(clip, scorer, monkeypatch):
    """Game.tokens checks a draft (validate_caption) and then scores it (embed_text): one tokenization."""
    calls = []
    real = scorer.encoder.key
    monkeypatch.setattr(scorer.encoder, "key", lambda text: calls.append(text) or real(text))
    text = scorer.validate_caption("  a raccoon driving a tractor ")
    got = scorer.embed_text(text)
    assert calls == ["a raccoon driving a tractor"]
    assert np.abs(got - reference(clip, [text])[0]).max() <= TOL
    with pytest.raises(CaptionError):  # a refused caption is refused again, not remembered as fine
        scorer.validate_caption("&nbsp;")
    with pytest.raises(CaptionError):
        scorer.validate_caption("&nbsp;")


def test_hard_captions_match_open_clip_on_every_path(clip, scorer):
    ref = reference(clip, HARD_CAPTIONS)
    assert np.abs(np.stack([scorer.embed_text(c) for c in HARD_CAPTIONS]) - ref).max() <= TOL
    fresh = Scorer(clip, max_caption_chars=1000)
    try:
        assert np.abs(fresh.embed_texts(HARD_CAPTIONS) - ref).max() <= TOL  # bulk, length-grouped
    finally:
        fresh.close()
    enc = scorer.encoder
    one_pass = enc.encode([Job(enc.key(c)) for c in HARD_CAPTIONS], grouping=False)  # ragged, one forward
    assert np.abs(torch.stack([r.embedding for r in one_pass]).numpy() - ref).max() <= TOL


def test_long_captions_are_truncated_like_the_tokenizer(clip, scorer):
    enc = scorer.encoder
    long = " ".join(f"w{i}" for i in range(120))
    row = clip.tokenizer([long])[0]
    assert row[-1].item() == clip.tokenizer.eot_token_id  # the tokenizer keeps the end token last
    assert enc.key(long) == tuple(row.tolist())
    longer = long + " and more words that are cut away"
    assert np.abs(scorer.embed_text(longer) - reference(clip, [long])[0]).max() <= TOL


def test_key_stops_at_the_pooled_token(clip, scorer):
    enc = scorer.encoder
    a = enc.key("a cat <end_of_text> and a dog")
    assert a == enc.key("a cat <end_of_text> or nothing at all")
    assert a[-1] == clip.tokenizer.eot_token_id and len(a) == 4  # start, a, cat, end
    assert enc.key("a  Cat ") == enc.key("a cat")  # the tokenizer folds case and spacing


def test_caption_cache_serves_repeats_and_same_token_captions(clip, scorer):
    first = scorer.embed_text("a red car")
    again = scorer.embed_text("  A   RED car ")
    assert np.array_equal(first, again)
    stats = scorer.stats()
    assert stats["cache_hits"] == 1 and stats["encoded"] == 1
    first[:] = 0  # callers get copies: the cached vector is untouched
    assert np.abs(scorer.embed_text("a red car") - reference(clip, ["a red car"])[0]).max() <= TOL


def test_caption_cache_is_bounded(clip):
    with Scorer(clip, cache_size=3) as s:
        for c in ["one", "two", "three", "four", "five"]:
            s.embed_text(c)
        assert s.stats()["caption_cache"] == 3


def test_score_is_cosine_with_reference(clip, scorer):
    picture = Image.new("RGB", (80, 60), "orange")
    image = scorer.embed_image(picture)
    ref_img = clip.encode_images([picture])[0].numpy()
    assert image.dtype == np.float32 and np.abs(image - ref_img).max() <= TOL
    caption = "an orange square"
    expected = float(reference(clip, [caption])[0] @ ref_img)
    assert abs(scorer.score(caption, image) - expected) <= TOL
    assert abs(scorer.score(caption, embedding_from_bytes(embedding_to_bytes(image))) - expected) <= TOL
    assert abs(scorer.score(caption, list(image * 3.0)) - expected) <= TOL  # any scale: cosine
    with pytest.raises(ValueError):
        scorer.score(caption, image[:-1])
    with pytest.raises(ValueError):
        scorer.score(caption, np.zeros_like(image))
    with pytest.raises(TypeError):
        scorer.embed_image(b"not an image")


def test_embedding_bytes_round_trip():
    vec = np.random.default_rng(0).standard_normal(512).astype(np.float32)
    data = embedding_to_bytes(vec)
    assert len(data) == 2048 and data[:4] == vec[:1].astype("<f4").tobytes()
    back = embedding_from_bytes(data)
    assert back.dtype == np.float32 and np.array_equal(back, vec)
    back[0] = 1  # writable copy
    with pytest.raises(ValueError):
        embedding_from_bytes(b"abc")
    with pytest.raises(ValueError):
        embedding_to_bytes(np.zeros((2, 2)))
    with pytest.raises(ValueError):
        embedding_to_bytes([float("nan")])


BAD = [None, 42, 3.5, b"bytes", ["a list"], "", "   \t\n ", "\u3000\u00a0", "a\x00b", "bell\x07", "a\x1bb",
       "del\x7f", "c1\x85control", "0\x85", "trailing unit separator\x1f", "\x1cleading",
       "lone \ud800 surrogate", "low \udfff", "x" * 1001, "&nbsp;", "&nbsp; &nbsp;"]


@pytest.mark.parametrize("bad", BAD)
def test_bad_captions_are_caption_errors(scorer, bad):
    for call in (scorer.embed_text, scorer.validate_caption, lambda c: scorer.score(c, np.ones(64))):
        with pytest.raises(CaptionError) as info:
            call(bad)
        assert isinstance(info.value, ValueError) and str(info.value)
    with pytest.raises(CaptionError, match="Caption 2"):
        scorer.embed_texts(["fine", bad])
    assert scorer.stats()["queue_depth"] == 0  # nothing bad was queued
    scorer.embed_text("still works")  # the batching thread is alive


def test_caption_error_messages_are_for_players():
    assert "too long" in str(pytest.raises(CaptionError, validate_caption, "x" * 201).value)
    assert "200" in str(pytest.raises(CaptionError, validate_caption, "x" * 201).value)
    assert "U+0000" in str(pytest.raises(CaptionError, validate_caption, "a\x00").value)
    assert validate_caption("  a cat\t") == "a cat"
    assert validate_caption("x" * 200) == "x" * 200
    assert validate_caption(" " * 50 + "x" * 200) == "x" * 200  # surrounding spaces do not count


def test_stream_must_be_a_string(scorer):
    with pytest.raises(TypeError):
        scorer.embed_text("a cat", stream=42)


def test_closed_scorer_refuses_work(clip):
    s = Scorer(clip)
    s.embed_text("before close")
    s.close()
    s.close()  # idempotent
    with pytest.raises(ScorerClosedError):
        s.embed_text("after close")
    assert s.embed_text("before close") is not None  # cached answers still served


def test_scorer_reports_its_model(clip, scorer):
    assert scorer.model_id == "test-tiny/random" and scorer.is_pretrained is False
    assert scorer.clip is clip and scorer.encoder.fast
    assert scorer.stats()["torch_threads"] >= 1


def test_lru_cache_bounds_entries_and_bytes():
    cache = LRUCache(3, max_bytes=10, size_of=len)
    cache.put("a", "1234")
    cache.put("b", "1234")
    assert cache.get("a") == "1234"  # a is now most recent
    cache.put("c", "1234")  # 12 bytes > 10: evicts b (least recent)
    assert "b" not in cache and "a" in cache and "c" in cache and cache.nbytes == 8
    cache.put("huge", "x" * 11)  # larger than the budget: not kept
    assert "huge" not in cache
    assert cache.pop("a") == "1234" and len(cache) == 1


def test_fallback_path_for_unsupported_text_towers_is_exact(clip, monkeypatch):
    import engine.text_encoder as te
    monkeypatch.setattr(te, "fast_path_problem", lambda model: "pretend the blocks are custom")
    enc = TextEncoder(clip)
    assert not enc.fast
    captions = HARD_CAPTIONS[:6]
    got = torch.stack([r.embedding for r in enc.encode([Job(enc.key(c)) for c in captions])]).numpy()
    assert np.abs(got - reference(clip, captions)).max() <= TOL


def test_quick_gelu_towers_like_openai_weights_are_exact():
    """OpenAI's ViT-B/32 weights run with QuickGELU (not fusable into oneDNN's GELU): still exact."""
    import open_clip
    from engine.clip_model import LoadedClip, _register_configs
    _register_configs()
    torch.manual_seed(1)
    model = open_clip.create_model("test-tiny", pretrained=None, force_quick_gelu=True).eval().requires_grad_(False)
    assert type(model.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    quick = LoadedClip(model=model, tokenizer=open_clip.get_tokenizer("test-tiny"), preprocess=None,
                       name="test-tiny", pretrained="random", model_id="test-tiny/quickgelu", is_pretrained=False,
                       device=torch.device("cpu"))
    with Scorer(quick, max_caption_chars=1000) as s:
        assert s.encoder.fast and not s.encoder._fuse_gelu
        ref = quick.encode_texts_reference(HARD_CAPTIONS).numpy()
        assert np.abs(s.embed_texts(HARD_CAPTIONS) - ref).max() <= TOL
        drafts = ["a quick", "a quick brown", "a quick brown fo", "a quick brown fox"]
        got = np.stack([s.embed_text(d, stream="q") for d in drafts])
        assert np.abs(got - quick.encode_texts_reference(drafts).numpy()).max() <= TOL


def test_plain_torch_matmuls_are_exact_too(clip, monkeypatch):
    """Where oneDNN is missing (or disagrees), the encoder uses F.linear: same results."""
    import torch.nn.functional as F
    import engine.text_encoder as te
    monkeypatch.setattr(te, "choose_linear", lambda device: (F.linear, "torch"))
    enc = TextEncoder(clip)
    assert enc.linear_backend == "torch" and not enc._fuse_gelu
    got = torch.stack([r.embedding for r in enc.encode([Job(enc.key(c)) for c in HARD_CAPTIONS])]).numpy()
    assert np.abs(got - reference(clip, HARD_CAPTIONS)).max() <= TOL


def test_onednn_is_chosen_on_cpu_when_available(clip):
    enc = TextEncoder(clip)
    expected = "onednn" if torch.backends.mkldnn.is_available() else "torch"
    assert enc.linear_backend == expected


def test_any_text_is_either_a_caption_error_or_exact(clip):
    """Property: whatever a player types, the scorer refuses it readably or scores it exactly."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    with Scorer(clip, max_caption_chars=120) as s:
        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.text(max_size=140)
               | st.text(alphabet=st.characters(categories=["Cs", "Cc", "Cf", "Zs", "Zl", "Ll", "Lu", "Lo",
                                                             "Mn", "So", "Sk", "Po", "Nd"]), max_size=60)
               | st.text(alphabet=" \t\n\u00a0a&;<>_|éü🦝\u200d\x00\x7f\ud83e", max_size=40))
        def check(text):
            try:
                got = s.embed_text(text, stream="fuzz")
            except CaptionError as exc:
                assert str(exc)
                return
            assert np.abs(got - reference(clip, [text.strip()])[0]).max() <= TOL
            assert np.abs(got - reference(clip, [text])[0]).max() <= TOL  # stripping changes nothing

        check()


def test_bf16_path_is_opt_in_close_and_says_so(clip):
    """bf16 matmuls: not exact, but close; the fp32 default stays exact and the model untouched."""
    captions = ["a raccoon driving a tractor", "two owls reading a newspaper at dawn", "🦝"]
    ref = reference(clip, captions)
    with Scorer(clip, precision="bf16") as scorer:
        got = np.stack([scorer.embed_text(c, stream="p") for c in captions])
        stats = scorer.stats()
    assert stats["precision"] == "bf16" and stats["device"] == "cpu"
    err = float(np.abs(got - ref).max())
    assert 1e-6 < err < 5e-2  # measurably rounded, still the same embedding
    assert all(p.dtype == torch.float32 for p in clip.model.parameters())
    with Scorer(clip) as scorer:
        assert scorer.stats()["precision"] == "fp32"
        assert np.abs(scorer.embed_text(captions[0]) - ref[0]).max() <= 1e-5
    with pytest.raises(ValueError, match="precision"):
        TextEncoder(clip, precision="fp8")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_packed_typing_batches_on_cuda_are_exact_and_bf16_is_close():
    """The GPU judge: a ragged batch of typing drafts (one packed forward, KV slab on the GPU)
    equals open_clip's own CUDA path; the opt-in bf16 path stays close."""
    gpu = load_clip("test-tiny", "random", device="cuda")
    bases = ["a cat", "the quick brown fox jumps over", "🦝", "two owls reading"]
    drafts = [b + " " + w for b, w in zip(bases, ["on a mat", "the lazy dog", "🚜 tractor", "a paper"])]
    ref = gpu.encode_texts_reference(drafts).cpu().numpy()
    for precision, tol in (("fp32", 1e-5), ("bf16", 5e-2)):
        with Scorer(gpu, precision=precision) as scorer:
            for i, b in enumerate(bases):
                scorer.embed_text(b, stream=f"p{i}")
            got = np.stack([scorer.embed_text(d, stream=f"p{i}") for i, d in enumerate(drafts)])
            assert scorer.stats()["device"].startswith("cuda")
        assert np.abs(got - ref).max() <= tol
    assert not torch.backends.cuda.matmul.allow_tf32
