"""Tests for the weights registry: resolving, offline messages, verified downloads over real HTTP."""
import hashlib
from pathlib import Path

import pytest

from engine import weights


@pytest.fixture
def entry_factory():
    created = []

    def make(urls, size=None, sha256=None, name="test-weights"):
        entry = weights.register(weights.WeightsEntry(
            name=name, kind="clip", description="test weights",
            files=(weights.WeightsFile("model.bin", tuple(urls), size, sha256),)))
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
