"""Tests for the VQGAN adapter: taming's published checkpoint layout, safe loading, bad files.

Checkpoints are written here in the layout taming-transformers published
(a model.yaml, and a Lightning last.ckpt holding the model next to loss.*
weights, optimizer states and a pickled ModelCheckpoint callback), with a tiny
architecture, then loaded through the real code path.
"""
import os
import sys
import types

import pytest
import torch
import yaml

from engine import weights
from engine.vqgan import (VQGAN, VQGANCheckpointError, build_random, load_checkpoint, load_files, load_vqgan,
                          read_config)

TINY_DD = dict(double_z=False, z_channels=32, resolution=64, in_channels=3, out_ch=3, ch=32,
               ch_mult=[1, 1, 1, 1, 1], num_res_blocks=1, attn_resolutions=[], dropout=0.0)


def write_yaml(path, dd=TINY_DD, embed_dim=4, n_embed=256, target="taming.models.vqgan.VQModel"):
    config = {"model": {"base_learning_rate": 4.5e-06, "target": target, "params": {
        "embed_dim": embed_dim, "n_embed": n_embed, "monitor": "val/rec_loss", "ddconfig": dict(dd),
        "lossconfig": {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                       "params": {"disc_start": 250001, "disc_weight": 0.8, "codebook_weight": 1.0}}}},
        "data": {"target": "main.DataModuleFromConfig", "params": {"batch_size": 12}}}
    path.write_text(yaml.safe_dump(config))
    return path


class _PLCallbackStandIn:
    """Pickled under pytorch_lightning's name, as Lightning 1.x stored ModelCheckpoint."""

    def __init__(self):
        self.best_model_score = torch.tensor(0.1)
        self.best_model_path = "/logs/checkpoints/epoch=4.ckpt"


def write_lightning_ckpt(path, model, monkeypatch, extra_state=None, extra=None):
    """A Lightning 1.x style last.ckpt: model + loss.* weights, trainer bookkeeping, a pickled callback."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4)
    state["loss.perceptual_loss.lin0.model.1.weight"] = torch.randn(1, 64, 1, 1)
    state.update(extra_state or {})
    # Pickle the callback under Lightning's module path, then remove the fake module again:
    # the loader below runs without pytorch_lightning, as on a real install.
    name = "pytorch_lightning.callbacks.model_checkpoint"
    module = types.ModuleType(name)
    _PLCallbackStandIn.__module__, _PLCallbackStandIn.__qualname__ = name, "ModelCheckpoint"
    module.ModelCheckpoint = _PLCallbackStandIn
    with monkeypatch.context() as patch:
        for parent in ("pytorch_lightning", "pytorch_lightning.callbacks"):
            patch.setitem(sys.modules, parent, types.ModuleType(parent))
        patch.setitem(sys.modules, name, module)
        ckpt = {"epoch": 4, "global_step": 123456, "pytorch-lightning_version": "1.0.8",
                "state_dict": state,
                "callbacks": {_PLCallbackStandIn: {"best_model_score": torch.tensor(0.1)}},
                "checkpoint_callback_best": _PLCallbackStandIn(),
                "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}},
                                      "param_groups": [{"lr": 4.5e-06, "params": [0]}]}],
                "lr_schedulers": []}
        ckpt.update(extra or {})
        torch.save(ckpt, path)
    return path


def tiny_source(tmp_path):
    config = read_config(write_yaml(tmp_path / "model.yaml"))
    return build_random(config, seed=123)


def test_published_layout_loads_encodes_and_decodes(tmp_path, monkeypatch):
    source = tiny_source(tmp_path)
    write_lightning_ckpt(tmp_path / "last.ckpt", source, monkeypatch)
    assert "pytorch_lightning.callbacks.model_checkpoint" not in sys.modules
    loaded = load_files(tmp_path / "model.yaml", tmp_path / "last.ckpt")
    assert loaded.is_pretrained is True
    assert loaded.factor == 16 and loaded.n_embed == 256 and loaded.embed_dim == 4
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        z = loaded.model.encode(x)
        assert z.shape == (1, 4, 4, 4)
        # encode returns codebook vectors, as taming's VQModel.encode does
        codes = loaded.model.nearest_indices(z)
        assert torch.equal(loaded.model.tokens_to_latents(codes), z)
        image = loaded.model.decode(z)
        assert image.shape == (1, 3, 64, 64)
        assert torch.allclose(image, source.eval().decode(source.encode(x)), atol=1e-5)


def test_folder_and_registry_names_resolve(tmp_path, monkeypatch):
    folder = tmp_path / "vqgan_imagenet_f16_16384"
    folder.mkdir()
    source = build_random(read_config(write_yaml(folder / "model.yaml")), seed=5)
    write_lightning_ckpt(folder / "last.ckpt", source, monkeypatch)
    by_folder = load_vqgan(str(folder))
    by_name = load_vqgan("vqgan_imagenet_f16_16384", models_dir=tmp_path)
    assert by_name.model_id == "vqgan_imagenet_f16_16384" and by_name.is_pretrained
    assert torch.equal(by_folder.model.codebook, by_name.model.codebook)


def test_missing_weights_say_where_to_put_them(tmp_path):
    with pytest.raises(weights.WeightsUnavailableError) as info:
        load_vqgan("wikiart_16384", models_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "wikiart_16384" / "last.ckpt") in message
    assert "models download wikiart_16384" in message
    with pytest.raises(ValueError, match="unknown VQGAN"):
        load_vqgan("vqgan_nonexistent")
    with pytest.raises(VQGANCheckpointError, match="not found"):
        load_files(tmp_path / "model.yaml", tmp_path / "last.ckpt")


def test_registry_lists_the_published_vqgans():
    for name in ("vqgan_imagenet_f16_1024", "vqgan_imagenet_f16_16384", "wikiart_16384"):
        entry = weights.get_entry(name)
        assert entry.kind == "vqgan"
        assert [f.filename for f in entry.files] == ["model.yaml", "last.ckpt"]
        assert all(f.urls and f.sha256 is None for f in entry.files)  # never invented


def test_truncated_checkpoint_is_a_clear_error(tmp_path, monkeypatch):
    source = tiny_source(tmp_path)
    path = write_lightning_ckpt(tmp_path / "last.ckpt", source, monkeypatch)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VQGANCheckpointError, match="truncated or not a PyTorch checkpoint"):
        load_files(tmp_path / "model.yaml", path)
    (tmp_path / "junk.ckpt").write_bytes(b"<html>404 not found</html>")
    with pytest.raises(VQGANCheckpointError, match="truncated or not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "junk.ckpt")


def test_checkpoint_that_does_not_match_its_yaml(tmp_path, monkeypatch):
    source = tiny_source(tmp_path)
    write_lightning_ckpt(tmp_path / "last.ckpt", source, monkeypatch)
    write_yaml(tmp_path / "other.yaml", n_embed=512)
    with pytest.raises(VQGANCheckpointError, match=r"does not match .*quantize.embedding.weight"):
        load_files(tmp_path / "other.yaml", tmp_path / "last.ckpt")
    wider = dict(TINY_DD, ch=64)
    write_yaml(tmp_path / "wider.yaml", dd=wider)
    with pytest.raises(VQGANCheckpointError, match="other shapes"):
        load_files(tmp_path / "wider.yaml", tmp_path / "last.ckpt")
    torch.save({"state_dict": {"encoder.conv_in.weight": torch.zeros(1)}}, tmp_path / "partial.ckpt")
    with pytest.raises(VQGANCheckpointError, match="missing"):
        load_files(tmp_path / "model.yaml", tmp_path / "partial.ckpt")


def test_bad_yaml_is_a_clear_error(tmp_path):
    (tmp_path / "bad.yaml").write_text("model: [unclosed")
    with pytest.raises(VQGANCheckpointError, match="not valid YAML"):
        read_config(tmp_path / "bad.yaml")
    (tmp_path / "empty.yaml").write_text("model:\n  params: {}\n")
    with pytest.raises(VQGANCheckpointError, match="ddconfig lacks"):
        read_config(tmp_path / "empty.yaml")
    write_yaml(tmp_path / "other.yaml", target="taming.models.vqgan.VQSegmentationModel")
    with pytest.raises(VQGANCheckpointError, match="not supported"):
        read_config(tmp_path / "other.yaml")


def test_gumbel_checkpoints_are_refused_by_name_with_the_ones_that_work(tmp_path, monkeypatch):
    write_yaml(tmp_path / "gumbel.yaml", target="taming.models.vqgan.GumbelVQ")
    with pytest.raises(VQGANCheckpointError) as info:
        read_config(tmp_path / "gumbel.yaml")
    message = str(info.value)
    assert "Gumbel quantizer" in message and "GumbelVQ" in message
    assert "vqgan_imagenet_f16_16384" in message and "wikiart_16384" in message
    # A Gumbel state dict under a VQModel yaml (a mislabelled copy) is named too, not "missing keys".
    source = tiny_source(tmp_path)
    write_lightning_ckpt(tmp_path / "last.ckpt", source, monkeypatch,
                         extra_state={"quantize.proj.weight": torch.zeros(256, 32, 1, 1),
                                      "quantize.embed.weight": torch.zeros(256, 4)})
    with pytest.raises(VQGANCheckpointError, match=r"quantize.proj.weight.*Gumbel quantizer.*vqgan_imagenet"):
        load_files(tmp_path / "model.yaml", tmp_path / "last.ckpt")


def test_bad_registry_checkpoint_names_its_path_and_the_force_download(tmp_path):
    folder = tmp_path / "vqgan_imagenet_f16_16384"
    folder.mkdir()
    write_yaml(folder / "model.yaml")
    (folder / "last.ckpt").write_bytes(b"<!DOCTYPE html><html><body>Link expired</body></html>")
    with pytest.raises(VQGANCheckpointError) as info:
        load_vqgan("vqgan_imagenet_f16_16384", models_dir=tmp_path)
    message = str(info.value)
    assert str(folder / "last.ckpt") in message
    assert "models download vqgan_imagenet_f16_16384 --force" in message


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path, monkeypatch):
    source = tiny_source(tmp_path)
    marker = str(tmp_path / "pwned")
    path = write_lightning_ckpt(tmp_path / "last.ckpt", source, monkeypatch, extra={"hparams": _Exploit(marker)})
    with pytest.raises(VQGANCheckpointError, match="refusing to load.*mkdir"):
        load_files(tmp_path / "model.yaml", path)
    assert not os.path.exists(marker)


def test_plain_state_dict_checkpoints_load_too(tmp_path):
    source = tiny_source(tmp_path)
    torch.save(source.state_dict(), tmp_path / "slim.ckpt")  # the "slim" mirrors ship only the weights
    loaded = load_files(tmp_path / "model.yaml", tmp_path / "slim.ckpt")
    assert torch.equal(loaded.model.codebook, source.codebook)


def test_tiny_model_is_random_seeded_and_marked():
    first, second = load_vqgan("test-tiny"), load_vqgan("test-tiny")
    assert first.is_pretrained is False and "RANDOM" in first.describe()
    assert first.model_id == "test-tiny/random"
    assert torch.equal(first.model.codebook, second.model.codebook)
    big = load_vqgan("vqgan_imagenet_f16_16384", random_weights=True)
    assert big.is_pretrained is False and big.n_embed == 16384 and big.embed_dim == 256


def test_straight_through_quantisation():
    model = load_vqgan("test-tiny").model
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    zq = model.quantize_st(z)
    expected = model.tokens_to_latents(model.nearest_indices(z))
    assert torch.equal(zq, expected)  # forward: exactly the nearest codes
    (zq * torch.arange(zq.numel()).view_as(zq)).sum().backward()
    assert torch.equal(z.grad, torch.arange(zq.numel()).view_as(zq).float())  # backward: identity
    low, high = model.codebook_range()
    assert torch.all(low <= expected) and torch.all(expected <= high)


def test_vqgan_module_imports_only_taming_modules():
    source = open(os.path.join(os.path.dirname(__file__), "..", "..", "engine", "vqgan.py")).read()
    imports = [line.strip() for line in source.splitlines() 
               if line.strip().startswith(("from taming", "import taming"))]
    assert imports and all(line.startswith("from taming.modules.") for line in imports)
    assert isinstance(load_vqgan("test-tiny").model, VQGAN)
    assert "pytorch_lightning" not in sys.modules
