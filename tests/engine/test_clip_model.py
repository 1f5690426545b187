"""Tests for CLIP loading: sources, the non-pretrained flag, offline errors."""
import pytest
import torch
from PIL import Image

from engine import weights
from engine.clip_model import load_clip


def test_tiny_model_is_marked_random_and_deterministic():
    first = load_clip("test-tiny", "random")
    second = load_clip("test-tiny", "random")
    assert first.is_pretrained is False
    assert "RANDOM" in first.describe()
    assert first.model_id == "test-tiny/random"
    a = first.encode_texts_reference(["a raccoon driving a tractor"])
    b = second.encode_texts_reference(["a raccoon driving a tractor"])
    assert torch.equal(a, b)
    assert abs(a.norm().item() - 1) < 1e-5


def test_tiny_model_embeds_images():
    clip = load_clip("test-tiny", "random")
    emb = clip.encode_images([Image.new("RGB", (120, 90), "red"), Image.new("L", (30, 30))])
    assert emb.shape == (2, clip.embed_dim)


def test_missing_pretrained_weights_give_a_how_to_message(tmp_path, monkeypatch):
    monkeypatch.delenv("CAPTIONARY_CLIP_WEIGHTS", raising=False)
    with pytest.raises(weights.WeightsUnavailableError) as info:
        load_clip("ViT-B-32", "openai", models_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "clip-vit-b-32-openai" / "open_clip_pytorch_model.bin") in message
    assert "models download clip-vit-b-32-openai" in message
    assert "CAPTIONARY_CLIP_WEIGHTS" in message


def test_local_checkpoint_file_loads_as_pretrained(tmp_path):
    source = load_clip("test-tiny", "random")
    with torch.no_grad():
        for p in source.model.parameters():
            p.add_(0.01)
    path = tmp_path / "tiny.bin"
    torch.save(source.model.state_dict(), path)
    loaded = load_clip("test-tiny", str(path))
    assert loaded.is_pretrained and loaded.model_id == "test-tiny/file:tiny.bin"
    caption = ["a photo of a cat"]
    assert torch.allclose(loaded.encode_texts_reference(caption), source.encode_texts_reference(caption), atol=1e-6)
    assert not torch.allclose(loaded.encode_texts_reference(caption),
                              load_clip("test-tiny", "random").encode_texts_reference(caption), atol=1e-3)


def test_registered_tag_reads_file_from_models_dir(tmp_path):
    # A file in open_clip's state-dict format at the expected place loads as pretrained.
    import open_clip
    model = open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True)
    entry = weights.get_entry("clip-vit-b-32-openai")
    dest = weights.expected_path(entry, entry.files[0], tmp_path)
    dest.parent.mkdir(parents=True)
    torch.save(model.state_dict(), dest)
    loaded = load_clip("ViT-B-32", "openai", models_dir=tmp_path)
    assert loaded.is_pretrained and loaded.model_id == "ViT-B-32/openai"
    ids = loaded.tokenizer(["a dog"])
    with torch.no_grad():
        assert torch.allclose(loaded.model.encode_text(ids), model.encode_text(ids), atol=1e-5)


def test_unknown_model_and_tag_are_value_errors():
    with pytest.raises(ValueError, match="unknown CLIP model"):
        load_clip("no-such-model", "random")
    with pytest.raises(ValueError, match="no weights known"):
        load_clip("ViT-B-32", "no-such-tag")
    with pytest.raises(ValueError, match="random weights only"):
        load_clip("test-tiny", "openai")


def test_truncated_or_mismatched_checkpoint_is_one_clear_error(tmp_path):
    from engine.clip_model import ClipCheckpointError
    tiny = load_clip("test-tiny", "random")
    good = tmp_path / "tiny.bin"
    torch.save(tiny.model.state_dict(), good)
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ClipCheckpointError, match="truncated.bin as test-tiny"):
        load_clip("test-tiny", str(truncated))
    # A test-tiny state dict is not a ViT-B-32: shapes differ.
    with pytest.raises(ClipCheckpointError, match="tiny.bin as ViT-B-32"):
        load_clip("ViT-B-32", str(good))


def test_tokenizer_word_cache_stays_bounded_and_exact():
    """open_clip's BPE cache grew by one entry per distinct word forever; ours is bounded."""
    import random
    import string

    import open_clip
    from engine.clip_model import bound_tokenizer_cache
    bounded = bound_tokenizer_cache(open_clip.get_tokenizer("test-tiny"), max_words=100)
    reference = open_clip.get_tokenizer("test-tiny")
    rng = random.Random(7)
    for i in range(2000):
        caption = " ".join("".join(rng.choices(string.ascii_lowercase, k=9)) for _ in range(3))
        if i % 100 == 0:
            caption += " <start_of_text> a cat"  # special tokens keep their own (pinned) entry
        assert torch.equal(bounded([caption]), reference([caption]))
    assert bounded.bpe.cache_info().currsize <= 100
    assert len(bounded.cache) == 2  # only the special tokens remain in the dict
    assert len(reference.cache) > 5000  # what upstream keeps: every word ever seen


def test_loaded_clip_has_a_bounded_tokenizer():
    clip = load_clip("test-tiny", "random")
    assert clip.tokenizer.bpe.cache_info().maxsize is not None
