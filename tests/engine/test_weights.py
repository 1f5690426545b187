"""Tests for the weights registry: resolving, offline messages, verified downloads over real HTTP."""
import hashlib
from pathlib import Path

import pytest

from engine import weights


@pytest.fixture
def entry_factory():
    created = []

    def make(urls, size=None, sha256=None, name="test-weights", format=None):
        entry = weights.register(weights.WeightsEntry(
            name=name, kind="clip", description="test weights",
            files=(weights.WeightsFile("model.bin", tuple(urls), size, sha256, format),)))
        created.append(name)
        return entry

    yield make
    for name in created:
        weights.REGISTRY.pop(name, None)


def test_download_verifies_and_renames(served, tmp_path, entry_factory):
    root, base = served
    payload = b"x" * 3_000_000
    (root / "model.bin").write_bytes(payload)
    entry_factory([f"{base}/model.bin"], len(payload), hashlib.sha256(payload).hexdigest())
    seen = []
    paths = weights.download("test-weights", tmp_path / "models", progress=lambda done, total: seen.append((done, total)))
    assert paths[0].read_bytes() == payload
    assert seen[-1] == (len(payload), len(payload))
    assert weights.resolve("test-weights", tmp_path / "models") == paths
    assert not list((tmp_path / "models").rglob("*.partial"))


def test_mirror_used_when_primary_fails(served, tmp_path, entry_factory):
    root, base = served
    (root / "mirror.bin").write_bytes(b"abc")
    entry_factory([f"{base}/missing.bin", f"{base}/mirror.bin"], 3, None)
    path = weights.download("test-weights", tmp_path)[0]
    assert path.read_bytes() == b"abc"


def test_checksum_mismatch_leaves_nothing_that_looks_complete(served, tmp_path, entry_factory):
    root, base = served
    (root / "model.bin").write_bytes(b"tampered")
    entry_factory([f"{base}/model.bin"], None, "0" * 64)
    with pytest.raises(weights.WeightsVerificationError, match="sha256"):
        weights.download("test-weights", tmp_path / "models")
    assert not any(p.is_file() for p in (tmp_path / "models").rglob("*"))
    with pytest.raises(weights.WeightsUnavailableError):
        weights.resolve("test-weights", tmp_path / "models")


def test_truncated_download_is_rejected(served, tmp_path, entry_factory):
    root, base = served
    (root / "model.bin").write_bytes(b"short")
    entry_factory([f"{base}/model.bin"], 1000, None)
    with pytest.raises(weights.WeightsVerificationError, match="size"):
        weights.download("test-weights", tmp_path / "models")
    assert not any(p.is_file() for p in (tmp_path / "models").rglob("*"))


def test_unreachable_everywhere_is_one_clear_error(tmp_path, entry_factory):
    entry_factory(["http://127.0.0.1:9/nothing.bin"])
    with pytest.raises(weights.WeightsUnavailableError) as info:
        weights.download("test-weights", tmp_path)
    assert "copy the file to" in str(info.value)
    assert str(tmp_path / "test-weights" / "model.bin") in str(info.value)


def test_env_override_points_at_a_copy(tmp_path, monkeypatch):
    copy = tmp_path / "elsewhere.bin"
    copy.write_bytes(b"weights")
    monkeypatch.setenv("CAPTIONARY_CLIP_WEIGHTS", str(copy))
    assert weights.resolve("clip-vit-b-32-openai", tmp_path / "empty") == [copy]


def test_unknown_name_lists_known_models():
    with pytest.raises(KeyError, match="clip-vit-b-32-openai"):
        weights.get_entry("nope")


def test_models_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTIONARY_MODELS_DIR", str(tmp_path / "env"))
    assert weights.models_dir() == Path(tmp_path / "env")
    assert weights.models_dir(tmp_path / "explicit") == Path(tmp_path / "explicit")


def torch_bytes(tmp_path, name="good.ckpt"):
    import torch
    path = tmp_path / name
    torch.save({"state_dict": {"w": torch.arange(4000, dtype=torch.float32)}}, path)
    return path.read_bytes()


HTML = b"<!DOCTYPE html>\n<html><head><title>Link expired</title></head><body>Please log in</body></html>\n"


def test_html_page_never_lands_and_the_next_mirror_is_used(served, tmp_path, entry_factory):
    root, base = served
    good = torch_bytes(tmp_path)
    (root / "expired.ckpt").write_bytes(HTML)
    (root / "mirror.ckpt").write_bytes(good)
    entry_factory([f"{base}/expired.ckpt", f"{base}/mirror.ckpt"], format="torch")
    path = weights.download("test-weights", tmp_path / "models")[0]
    assert path.read_bytes() == good
    (root / "mirror.ckpt").write_bytes(HTML)  # now every mirror answers with the page
    with pytest.raises(weights.WeightsVerificationError, match="HTML") as info:
        weights.download("test-weights", tmp_path / "other")
    assert "expired.ckpt" in str(info.value) and "mirror.ckpt" in str(info.value)
    assert not any(p.is_file() for p in (tmp_path / "other").rglob("*"))


@pytest.mark.parametrize("damage, fragment", [
    (lambda good: good[: len(good) // 2], "truncated or damaged"),
    (lambda good: b"", "empty"),
    (lambda good: b"PK\x03\x04" + b"\0" * 100, "truncated or damaged"),
    (lambda good: b'{"error": "rate limited"}', "JSON"),
])
def test_damaged_checkpoints_are_refused_by_content(served, tmp_path, entry_factory, damage, fragment):
    root, base = served
    (root / "model.bin").write_bytes(damage(torch_bytes(tmp_path)))
    entry_factory([f"{base}/model.bin"], format="torch")
    with pytest.raises(weights.WeightsVerificationError, match=fragment):
        weights.download("test-weights", tmp_path / "models")
    assert not any(p.is_file() for p in (tmp_path / "models").rglob("*"))


def test_bad_file_in_place_is_reported_and_force_replaces_it(served, tmp_path, entry_factory):
    root, base = served
    good = torch_bytes(tmp_path)
    (root / "model.bin").write_bytes(good)
    entry_factory([f"{base}/model.bin"], format="torch")
    dest = tmp_path / "models" / "test-weights" / "model.bin"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(HTML)  # what an old downloader left behind
    with pytest.raises(weights.WeightsVerificationError) as info:
        weights.download("test-weights", tmp_path / "models")
    assert str(dest) in str(info.value) and "models download test-weights --force" in str(info.value)
    assert dest.read_bytes() == HTML  # not deleted behind the admin's back
    (root / "model.bin").write_bytes(HTML)  # a forced download that fails keeps the old file
    with pytest.raises(weights.WeightsVerificationError):
        weights.download("test-weights", tmp_path / "models", force=True)
    assert dest.read_bytes() == HTML
    (root / "model.bin").write_bytes(good)
    assert weights.download("test-weights", tmp_path / "models", force=True) == [dest]
    assert dest.read_bytes() == good
    assert not list(dest.parent.glob("*.partial"))


def test_yaml_format_refuses_a_page(tmp_path):
    file = weights.WeightsFile("model.yaml", ("http://unused",), format="yaml")
    (tmp_path / "model.yaml").write_bytes(HTML)
    with pytest.raises(weights.WeightsVerificationError, match="not a YAML config"):
        weights.verify(file, tmp_path / "model.yaml")
    (tmp_path / "model.yaml").write_text("model:\n  params: {embed_dim: 4}\n")
    weights.verify(file, tmp_path / "model.yaml")


def test_registry_files_declare_their_format():
    for entry in weights.REGISTRY.values():
        for file in entry.files:
            assert file.format == ("yaml" if file.filename.endswith(".yaml") else "torch"), (entry.name, file)
