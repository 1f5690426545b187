"""`flask models list/download/check` through the CLI runner, with a local HTTP server as the mirror."""
from __future__ import annotations

import hashlib
import pytest

from engine import weights
from harness.settings import SETTINGS


@pytest.fixture
def app(redis_client, redis_url, tmp_path):
    from game import create_app
    return create_app(dict(SETTINGS, TESTING=True, REDIS_URL=redis_url, MODELS_DIR=str(tmp_path / "models")))


@pytest.fixture
def cli(app):
    runner = app.test_cli_runner()
    return lambda *args, input=None: runner.invoke(args=list(args), input=input, catch_exceptions=False)


@pytest.fixture
def entry(served):
    root, base = served
    data = b"pretend weights " * 5000
    (root / "w.bin").write_bytes(data)
    made = weights.register(weights.WeightsEntry(
        name="cli-test-weights", kind="clip", description="weights served by the test",
        files=(weights.WeightsFile("w.bin", (f"{base}/w.bin",), size=len(data),
                                   sha256=hashlib.sha256(data).hexdigest()),)))
    yield made, data
    weights.REGISTRY.pop(made.name, None)


def test_models_list_shows_registry_and_presence(cli, entry):
    result = cli("models", "list")
    assert result.exit_code == 0
    assert "clip-vit-b-32-openai" in result.output and "cli-test-weights" in result.output
    assert "test-tiny" in result.output
    line = next(l for l in result.output.splitlines() if l.startswith("cli-test-weights"))
    assert " no " in line


def test_models_download_verifies_then_check_shows_present(cli, entry, tmp_path):
    made, data = entry
    result = cli("models", "download", "cli-test-weights")
    assert result.exit_code == 0, result.output
    dest = tmp_path / "models" / "cli-test-weights" / "w.bin"
    assert dest.read_bytes() == data and f"ok  {dest}" in result.output
    assert "downloading cli-test-weights" in result.output  # the progress bar's label
    check = cli("models", "check")
    line = next(l for l in check.output.splitlines() if l.startswith("cli-test-weights"))
    assert "present" in line and str(dest) in line
    missing = next(l for l in check.output.splitlines() if l.startswith("clip-vit-b-32-openai"))
    assert "MISSING" in missing and str(tmp_path / "models" / "clip-vit-b-32-openai") in missing
    listed = next(l for l in cli("models", "list").output.splitlines() if l.startswith("cli-test-weights"))
    assert " yes " in listed


def test_models_download_checksum_mismatch_leaves_nothing(cli, served, tmp_path):
    root, base = served
    (root / "bad.bin").write_bytes(b"not what was promised")
    made = weights.register(weights.WeightsEntry(
        name="cli-bad-weights", kind="clip", description="wrong bytes",
        files=(weights.WeightsFile("bad.bin", (f"{base}/bad.bin",), sha256="0" * 64),)))
    try:
        result = cli("models", "download", made.name)
    finally:
        weights.REGISTRY.pop(made.name, None)
    assert result.exit_code == 1 and "sha256" in result.output
    assert not list((tmp_path / "models" / "cli-bad-weights").glob("*"))


def test_models_download_force_replaces_a_page_saved_as_the_checkpoint(cli, served, tmp_path):
    import torch
    root, base = served
    torch.save({"w": torch.ones(10)}, root / "last.ckpt")
    made = weights.register(weights.WeightsEntry(
        name="cli-healing-weights", kind="vqgan", description="a checkpoint",
        files=(weights.WeightsFile("last.ckpt", (f"{base}/last.ckpt",), format="torch"),)))
    dest = tmp_path / "models" / made.name / "last.ckpt"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"<html><body>Sign in to continue</body></html>")
    try:
        refused = cli("models", "download", made.name)
        forced = cli("models", "download", made.name, "--force")
    finally:
        weights.REGISTRY.pop(made.name, None)
    assert refused.exit_code == 1 and str(dest) in refused.output and "--force" in refused.output
    assert forced.exit_code == 0, forced.output
    assert dest.read_bytes() == (root / "last.ckpt").read_bytes()


def test_models_download_offline_is_a_clear_error(cli, tmp_path):
    made = weights.register(weights.WeightsEntry(
        name="cli-offline-weights", kind="vqgan", description="unreachable",
        files=(weights.WeightsFile("model.ckpt", ("http://127.0.0.1:9/model.ckpt",)),)))
    try:
        result = cli("models", "download", made.name)
    finally:
        weights.REGISTRY.pop(made.name, None)
    assert result.exit_code == 1
    assert "could not download model.ckpt" in result.output and "copy the file to" in result.output


def test_models_download_errors(cli, tmp_path, app):
    result = cli("models", "download", "no-such-model")
    assert result.exit_code == 1 and "unknown model 'no-such-model'" in result.output
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    app.config["MODELS_DIR"] = str(blocker / "models")
    result = cli("models", "download", "clip-vit-b-32-openai")
    assert result.exit_code == 1 and "cannot write to the models folder" in result.output


def test_models_commands_run_without_the_app(tmp_path):
    # `python -m game.cli models ...` needs no Redis and no CLIP (production downloads weights first).
    import os
    import subprocess
    import sys
    env = dict(os.environ, CAPTIONARY_MODELS_DIR=str(tmp_path / "m"), CAPTIONARY_ENV="production")
    out = subprocess.run([sys.executable, "-m", "game.cli", "models", "check"], capture_output=True, text=True,
                         env=env, timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.returncode == 0, out.stderr
    assert "MISSING" in out.stdout and str(tmp_path / "m" / "clip-vit-b-32-openai") in out.stdout
