"""Prefix key/value reuse on the tiny random CLIP: every draft of a typing session is exact.

A typing player's drafts share a token prefix, whose keys/values the scorer
keeps per stream. These tests type realistic sessions (the last word's tokens
change as it grows, backspaces, edits in the middle, clearing, switching
streams, eviction) and hold every draft to open_clip's own path.
"""
import numpy as np
import pytest
import torch

from engine.clip_model import load_clip
from engine.scorer import Scorer
from engine.text_encoder import Job, TextEncoder

TOL = 1e-5


@pytest.fixture(scope="module")
def clip():
    return load_clip("test-tiny", "random")


def reference(clip, caption):
    return clip.encode_texts_reference([caption])[0].numpy()


def keystrokes(text, every=1):
    """Drafts sent while typing `text` one character at a time (every `every` keystrokes)."""
    return [text[:i] for i in range(1, len(text) + 1) if i % every == 0 or i == len(text)]


def typing_session():
    drafts = keystrokes("a raccoon driving a tractor through a wheat field")
    drafts += [drafts[-1][:-k] for k in range(1, 8)]  # backspaces into the last word and beyond
    drafts += keystrokes("a raccoon driving a tractor through a wheat")[-3:]
    drafts += ["a raccoon steering a tractor through a wheat field",  # edit in the middle
               "a racoon steering a tractor",  # edit near the start
               "the raccoon steering a tractor",  # first word changed: only the start token is shared
               "t", "th", "the", "the 🦝", "the 🦝🚜", "the 🦝🚜 at dusk",  # emoji grow token by token
               "THE 🦝🚜  AT   DUSK",  # same tokens: a cache hit, prefix kept
               "the cat", "the category", "the categorical imperative"]  # last word re-tokenised
    return drafts


def test_every_draft_of_a_typing_session_is_exact(clip):
    with Scorer(clip) as scorer:
        worst = 0.0
        for draft in typing_session():
            if not draft.strip():
                continue
            got = scorer.embed_text(draft, stream="player-1")
            worst = max(worst, float(np.abs(got - reference(clip, draft)).max()))
        stats = scorer.stats()
    assert worst <= TOL
    # The cache was really used: most tokens came from the stream's prefix.
    assert stats["tokens_reused"] > stats["tokens_computed"] / 2
    assert stats["stream_cache"] == 1


def test_only_the_identical_token_prefix_is_reused(clip):
    enc = TextEncoder(clip)
    first = enc.encode([Job(enc.key("a raccoon driving"), keep=True)])[0]
    assert first.prefix.tokens == enc.key("a raccoon driving")[:-1]  # end token never kept
    # "driv" and "driving" tokenise differently: only start, "a", "raccoon" are reusable.
    partial = enc.key("a raccoon driv")
    common = 0
    while first.prefix.tokens[common] == partial[common]:
        common += 1
    result = enc.encode([Job(partial, prefix=first.prefix, keep=True)])[0]
    assert result.reused == common == 3
    assert np.abs(result.embedding.numpy() - reference(clip, "a raccoon driv")).max() <= TOL
    # Extending by whole words reuses every earlier token; the end token is always recomputed.
    longer = enc.encode([Job(enc.key("a raccoon driving a tractor"), prefix=first.prefix)])[0]
    assert longer.reused == len(first.prefix.tokens)
    # Identical content: everything but the end token is reused.
    same = enc.encode([Job(enc.key("a raccoon driving"), prefix=first.prefix)])[0]
    assert same.reused == len(enc.key("a raccoon driving")) - 1
    assert (same.embedding - first.embedding).abs().max() <= TOL
    # A stale prefix from an unrelated caption only contributes the start token.
    other = enc.encode([Job(enc.key("zebra crossing"), prefix=first.prefix)])[0]
    assert other.reused == 1
    assert np.abs(other.embedding.numpy() - reference(clip, "zebra crossing")).max() <= TOL


def test_ragged_increments_of_many_streams_in_one_pass_are_exact(clip):
    """Different prefix lengths and different numbers of new tokens, padded into one forward pass."""
    enc = TextEncoder(clip)
    bases = ["a cat", "a photo of a very small dog", "🦝", "the quick brown fox jumps over the lazy",
             " ".join(f"w{i}" for i in range(40)), "x"]
    extended = ["a cat on a mat", "a photo of a very small dog sleeping", "🦝🚜 tractor",
                "the quick brown fox jumps over the lazy dog", " ".join(f"w{i}" for i in range(90)), "xy"]
    prefixes = [r.prefix for r in enc.encode([Job(enc.key(b), keep=True) for b in bases])]
    jobs = [Job(enc.key(e), prefix=p, keep=True) for e, p in zip(extended, prefixes)]
    jobs.append(Job(enc.key("no prefix at all")))
    results = enc.encode(jobs, grouping=False)
    assert len({r.reused for r in results}) > 3 and len({len(j.key) - r.reused for j, r in zip(jobs, results)}) > 3
    for caption, result in zip(extended + ["no prefix at all"], results):
        assert np.abs(result.embedding.numpy() - reference(clip, caption)).max() <= TOL
    # The kept prefixes of that pass are themselves exact to build on.
    again = enc.encode([Job(enc.key(e + " again"), prefix=r.prefix) for e, r in zip(extended, results)],
                       grouping=False)
    for caption, result in zip(extended, again):
        assert np.abs(result.embedding.numpy() - reference(clip, caption + " again")).max() <= TOL


def test_switching_streams_and_eviction_stay_exact(clip):
    sessions = {
        "alice": keystrokes("a lighthouse in a storm at night", every=3),
        "bob": keystrokes("two owls reading a newspaper", every=2),
        "carol": keystrokes("an astronaut riding a horse on mars", every=4),
    }
    # Room for two streams only: interleaving three players evicts constantly.
    with Scorer(clip, stream_cache_size=2) as scorer:
        worst = 0.0
        longest = max(len(d) for d in sessions.values())
        for i in range(longest):
            for player, drafts in sessions.items():
                if i < len(drafts) and drafts[i].strip():
                    got = scorer.embed_text(drafts[i], stream=player)
                    worst = max(worst, float(np.abs(got - reference(clip, drafts[i])).max()))
        stats = scorer.stats()
        assert worst <= TOL
        assert stats["stream_cache"] == 2 and stats["stream_evictions"] > 0
        # A player whose stream was evicted just starts over from the start token.
        scorer.forget_stream("alice")
        got = scorer.embed_text("a lighthouse in a storm at dawn", stream="alice")
        assert np.abs(got - reference(clip, "a lighthouse in a storm at dawn")).max() <= TOL


def test_stream_memory_budget_is_respected(clip):
    with Scorer(clip, stream_cache_mb=0.02) as scorer:  # 20 KB: a handful of tiny prefixes
        for i in range(30):
            caption = f"stream {i} caption with several words in it"
            got = scorer.embed_text(caption, stream=f"s{i}")
            assert np.abs(got - reference(clip, caption)).max() <= TOL
        stats = scorer.stats()
        assert 0 < stats["stream_cache_bytes"] <= 0.02 * 2 ** 20
        assert stats["stream_cache"] < 30


def test_two_drafts_of_one_stream_in_the_same_batch(clip):
    """Fast typing can put two drafts of one stream in one batch; the later one is kept."""
    import threading
    with Scorer(clip, batch_window_ms=50) as scorer:
        scorer.embed_text("a small", stream="p")
        out = {}
        drafts = ["a small boat", "a small boat on a lake"]

        def send(d):
            out[d] = scorer.embed_text(d, stream="p")

        threads = [threading.Thread(target=send, args=(d,)) for d in drafts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for d in drafts:
            assert np.abs(out[d] - reference(clip, d)).max() <= TOL
        final = scorer.embed_text("a small boat on a lake at sunset", stream="p")
        assert np.abs(final - reference(clip, "a small boat on a lake at sunset")).max() <= TOL


def test_kept_prefix_matches_a_from_scratch_computation(clip):
    enc = TextEncoder(clip)
    a = enc.encode([Job(enc.key("a raccoon"), keep=True)])[0].prefix
    b = enc.encode([Job(enc.key("a raccoon driving"), prefix=a, keep=True)])[0].prefix
    scratch = enc.encode([Job(enc.key("a raccoon driving"), keep=True)])[0].prefix
    assert b.tokens == scratch.tokens
    assert b.kv.shape == (enc.layers, 2, enc.heads, len(b.tokens), enc.head_dim)
    assert torch.allclose(b.kv, scratch.kv, atol=1e-5)


def test_one_packed_forward_equals_chunked_forwards_and_open_clip(clip, monkeypatch):
    """Ragged batch: uniform and padded query blocks, chunking at the memory bounds, and a
    KV slab buffer reused after a larger batch (stale slots must stay invisible)."""
    import engine.text_encoder as te
    enc = TextEncoder(clip)
    rng = np.random.default_rng(3)
    words = "a red fox on the hill under stars eating bread with two old dogs".split()
    bases = [" ".join(rng.choice(words, size=rng.integers(1, 12))) for _ in range(24)]
    drafts = [b + " " + " ".join(rng.choice(words, size=rng.integers(1, 4))) for b in bases]
    prefixes = [r.prefix for r in enc.encode([Job(enc.key(b), keep=True) for b in bases])]
    jobs = [Job(enc.key(d), prefix=p, keep=True) for d, p in zip(drafts, prefixes)]
    jobs += [Job(enc.key("a long caption " * 12))]  # no prefix, many new rows
    captions = drafts + ["a long caption " * 12]
    one = enc.encode(jobs, grouping=False)
    monkeypatch.setattr(te, "MAX_GROUP_ROWS", 7)
    monkeypatch.setattr(te, "MAX_SLAB_SLOTS", 40)
    chunked = enc.encode(jobs)
    monkeypatch.undo()
    uniform = enc.encode([Job(enc.key(d + " dog"), prefix=r.prefix) for d, r in zip(drafts[:5], one)])
    for caption, a, b in zip(captions, one, chunked):
        ref = reference(clip, caption)
        assert np.abs(a.embedding.numpy() - ref).max() <= TOL
        assert np.abs(b.embedding.numpy() - ref).max() <= TOL
        if a.prefix is not None:
            assert torch.allclose(a.prefix.kv, b.prefix.kv, atol=1e-5)
    for d, r in zip(drafts[:5], uniform):
        assert r.reused == len(enc.key(d)) - 1
        assert np.abs(r.embedding.numpy() - reference(clip, d + " dog")).max() <= TOL


def test_a_family_of_edits_is_exact_and_starts_from_the_base(clip):
    """embed_family: the base, then each variant from the base's shared tokens; open_clip's numbers."""
    base = "a small raccoon, driving a red tractor through muddy fields at dawn!"
    words = base.split()
    variants = [" ".join(words[:i] + words[i + 1:]) for i in range(len(words))] + ["entirely different words"]
    with Scorer(clip) as scorer:
        computed = []
        encode = scorer.encoder.encode

        def counting(jobs, *args, **kwargs):
            results = encode(jobs, *args, **kwargs)
            computed.append(sum(len(job.key) - r.reused for job, r in zip(jobs, results)))
            return results
        scorer.encoder.encode = counting
        got = scorer.embed_family(base, variants)
        with pytest.raises(Exception, match="Caption 3"):
            scorer.embed_family(base, ["fine", "  ", "also fine"])
    ref = clip.encode_texts_reference([base, *variants]).numpy()
    assert got.shape == ref.shape and float(np.abs(got - ref).max()) <= TOL
    from_scratch = sum(len(TextEncoder(clip).key(c)) - 1 for c in [base, *variants])  # all but the start token
    assert sum(computed) < 0.7 * from_scratch  # variants reuse the base's prefix


@pytest.mark.parametrize("variant", ["gelu fused (oneDNN)", "gelu (torch matmuls)", "quick gelu"])
def test_the_scripted_blocks_equal_the_eager_loop_bit_for_bit(variant):
    """The GIL-free TorchScript blocks compute exactly what the eager loop computes, prefixes included."""
    import open_clip

    from engine.clip_model import LoadedClip, _register_configs
    from engine.text_encoder import scripted_blocks
    _register_configs()
    torch.manual_seed(3)
    model = open_clip.create_model("test-tiny", pretrained=None, force_quick_gelu=variant == "quick gelu").eval()
    base = load_clip("test-tiny", "random")
    clip = LoadedClip(model=model, tokenizer=base.tokenizer, preprocess=base.preprocess, name="test-tiny",
                      pretrained="random", model_id="test-tiny/variant", is_pretrained=False, device=base.device)
    enc = TextEncoder(clip)
    if variant == "gelu (torch matmuls)":
        enc._linear, enc.linear_backend, enc._fuse_gelu = torch.nn.functional.linear, "torch", False
        enc._scripted, enc._script_weights = scripted_blocks(enc.blocks, "torch", False)
    assert enc._scripted is not None, enc._script_weights
    assert enc._script_weights["act"] == {"gelu fused (oneDNN)": 0, "gelu (torch matmuls)": 1, "quick gelu": 2}[variant]
    captions = ["a red barn", "a red barn in a snowy field at dusk", "two dogs", "x", "a red barn in a field"]
    with torch.inference_mode():
        kept = enc.encode([Job(enc.key(c), keep=True) for c in captions])
        jobs = [Job(enc.key(c + " with cows"), prefix=k.prefix, keep=True) for c, k in zip(captions, kept)]
        jobs += [Job(enc.key(c)) for c in captions]  # ragged: prefixes and from scratch in one batch
        scripted = enc.encode(jobs)
        enc._scripted = None
        eager = enc.encode(jobs)
    for s, e in zip(scripted, eager):
        assert torch.equal(s.embedding, e.embedding)
        assert (s.prefix is None) == (e.prefix is None) and (s.prefix is None or torch.equal(s.prefix.kv, e.prefix.kv))
    ref = clip.encode_texts_reference([c + " with cows" for c in captions] + captions)
    assert float((torch.stack([s.embedding for s in scripted]) - ref).abs().max()) <= TOL
