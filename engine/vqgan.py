"""VQGAN adapter: the only module that imports taming-transformers.

Only `taming.modules` is imported (Encoder, Decoder, VectorQuantizer): never
`taming.models`, which drags in pytorch-lightning and downloads an LPIPS/VGG
loss at construction. Checkpoints are read in the format taming published:
  * `model.yaml`: model.params.{embed_dim, n_embed, ddconfig} (target VQModel);
  * a Lightning `last.ckpt`: {"state_dict": {encoder.*, decoder.*,
    quantize.embedding.weight, quant_conv.*, post_quant_conv.*, loss.*}, "epoch",
    "global_step", "optimizer_states", "callbacks", ...}. `loss.*` (the
    discriminator and LPIPS) and the trainer entries are ignored.

Safe loading: `torch.load(weights_only=True)` first. Lightning 1.x pickled
trainer objects next to the tensors (the ModelCheckpoint callback class as a
dict key, sometimes hyper-parameter containers), which weights_only refuses.
For those we list the file's globals without running anything
(`torch.serialization.get_unsafe_globals_in_checkpoint`); if every one lives in
a trainer-side namespace (TRAINER_NAMESPACES) we load again with weights_only
still on, standing an inert placeholder class in for exactly those names: it
records whatever state the pickle hands it and never runs the real class's
code, so nothing in the file can execute. Any other global (os.system, eval,
an unknown class) refuses the file with its name. weights_only=False is never used.

`load_vqgan("test-tiny")` is a tiny seeded random model for tests and offline
development; `load_vqgan(name, random_weights=True)` builds a published
architecture with seeded random weights (benchmarks). Both are marked
`is_pretrained=False`.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

from engine import weights

log = logging.getLogger(__name__)

TINY_MODEL = "test-tiny"
RANDOM_SEED = 0
_CONFIG_DIR = Path(__file__).with_name("model_configs")
# Architectures shipped as model.yaml copies, for random-weight builds and the tiny test model.
SHIPPED_CONFIGS = {
    TINY_MODEL: "vqgan-test-tiny.yaml",
    "vqgan_imagenet_f16_1024": "vqgan-imagenet-f16-1024.yaml",
    "vqgan_imagenet_f16_16384": "vqgan-imagenet-f16-16384.yaml",
    "wikiart_16384": "vqgan-imagenet-f16-16384.yaml",  # same architecture, trained on WikiArt
}
SUPPORTED_TARGETS = ("taming.models.vqgan.VQModel",)
# taming's other autoencoders quantize differently; we implement VectorQuantizer (nearest code) only.
OTHER_QUANTIZERS = {
    "taming.models.vqgan.GumbelVQ": "Gumbel quantizer (GumbelQuantize: Gumbel-softmax over codes)",
    "taming.models.vqgan.EMAVQ": "EMA quantizer (EMAVectorQuantizer)",
}
# Keys that give a quantizer away in a state dict whose YAML was lost or mislabelled.
_QUANTIZER_KEYS = {"quantize.proj.weight": "Gumbel quantizer (GumbelQuantize)",
                   "quantize.embed.weight": "Gumbel quantizer (GumbelQuantize)",
                   "quantize.embedding.cluster_size": "EMA quantizer (EMAVectorQuantizer)"}
# Where the objects Lightning pickles next to the weights live: callbacks, hyper-parameter
# containers (argparse / OmegaConf, which mention typing.Any), numpy scalars in callback state.
TRAINER_NAMESPACES = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "omegaconf.",
                      "argparse.Namespace", "typing.Any", "numpy.", "collections.defaultdict", "torch.optim.")
MODEL_PREFIXES = ("encoder.", "decoder.", "quantize.", "quant_conv.", "post_quant_conv.")
REQUIRED_DDCONFIG = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels",
                     "resolution", "in_channels", "out_ch")


class VQGANCheckpointError(ValueError):
    """A VQGAN config or checkpoint is missing, truncated, unsafe or does not match."""


def _unsupported_quantizer(where: str, quantizer: str) -> VQGANCheckpointError:
    working = ", ".join(sorted(n for n, e in weights.REGISTRY.items() if e.kind == "vqgan"))
    return VQGANCheckpointError(
        f"{where}: the {quantizer} is not supported; the engine runs taming's VQModel with its "
        f"nearest-code VectorQuantizer (target {SUPPORTED_TARGETS[0]}). Checkpoints that work: {working} "
        f"(e.g. vqgan_imagenet_f16_16384), or any VQModel model.yaml + last.ckpt")


@dataclass(frozen=True)
class VQGANConfig:
    """What model.yaml says about the autoencoder (model.params)."""

    embed_dim: int  # width of each codebook vector
    n_embed: int  # number of codebook vectors
    ddconfig: dict  # Encoder/Decoder arguments, as in taming

    @property
    def factor(self) -> int:
        """Pixels per latent token along each side (16 for the published f16 models)."""
        return 2 ** (len(self.ddconfig["ch_mult"]) - 1)


def read_config(path: os.PathLike | str) -> VQGANConfig:
    """Parse and check a taming model.yaml; VQGANCheckpointError says what is wrong."""
    try:
        with open(path, "r", encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except FileNotFoundError:
        raise VQGANCheckpointError(f"VQGAN config not found: {path}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise VQGANCheckpointError(f"VQGAN config {path} is not valid YAML: {exc}") from None
    model = data.get("model") if isinstance(data, dict) else None
    params = model.get("params") if isinstance(model, dict) else None
    if not isinstance(params, dict):
        raise VQGANCheckpointError(f"{path}: expected model.params (a taming model.yaml)")
    target = model.get("target", SUPPORTED_TARGETS[0])
    if target in OTHER_QUANTIZERS:
        raise _unsupported_quantizer(f"{path} (model.target {target})", OTHER_QUANTIZERS[target])
    if target not in SUPPORTED_TARGETS:
        raise VQGANCheckpointError(f"{path}: model.target {target!r} is not supported (only {SUPPORTED_TARGETS})")
    dd = params.get("ddconfig")
    missing = [k for k in REQUIRED_DDCONFIG if not isinstance(dd, dict) or k not in dd]
    if missing:
        raise VQGANCheckpointError(f"{path}: model.params.ddconfig lacks {', '.join(missing)}")
    for key in ("embed_dim", "n_embed"):
        if not isinstance(params.get(key), int) or params[key] < 1:
            raise VQGANCheckpointError(f"{path}: model.params.{key} must be a positive integer")
    if dd.get("double_z", False):
        raise VQGANCheckpointError(f"{path}: ddconfig.double_z is true; a VQGAN encoder has double_z: false")
    return VQGANConfig(embed_dim=params["embed_dim"], n_embed=params["n_embed"], ddconfig=dict(dd))


class _ReplaceGrad(torch.autograd.Function):
    """Forward `x_forward` exactly; send the gradient to `x_backward` (the notebook's straight-through)."""

    @staticmethod
    def forward(ctx, x_forward, x_backward):
        ctx.shape = x_backward.shape
        return x_forward

    @staticmethod
    def backward(ctx, grad_in):
        return None, grad_in.sum_to_size(ctx.shape)


class VQGAN(nn.Module):
    """taming's VQModel without its loss, trainer or data code: the parts generation needs."""

    def __init__(self, config: VQGANConfig):
        super().__init__()
        from taming.modules.diffusionmodules.model import Decoder, Encoder
        from taming.modules.vqvae.quantize import VectorQuantizer

        self.config = config
        dd = config.ddconfig
        with contextlib.redirect_stdout(io.StringIO()):  # taming's Decoder prints the z shape
            self.encoder = Encoder(**dd)
            self.decoder = Decoder(**dd)
        self.quantize = VectorQuantizer(config.n_embed, config.embed_dim, beta=0.25)
        self.quant_conv = nn.Conv2d(dd["z_channels"], config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, dd["z_channels"], 1)

    @property
    def codebook(self) -> torch.Tensor:
        return self.quantize.embedding.weight

    def codebook_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel min and max of the codebook, shaped (1, E, 1, 1): z is clamped into it."""
        cb = self.codebook
        return cb.min(dim=0).values[None, :, None, None], cb.max(dim=0).values[None, :, None, None]

    def nearest_indices(self, z: torch.Tensor) -> torch.Tensor:
        """Codebook index nearest to each latent vector of z (B, E, h, w) -> (B, h, w)."""
        with torch.autocast(z.device.type, enabled=False):  # argmin over 16384 needs fp32
            zf = z.float().movedim(1, 3)
            cb = self.codebook.float()
            d = zf.pow(2).sum(-1, keepdim=True) + cb.pow(2).sum(1) - 2 * zf @ cb.T
            return d.argmin(-1)

    def quantize_st(self, z: torch.Tensor) -> torch.Tensor:
        """Straight-through vector quantisation: nearest codes forward, identity gradient to z."""
        zq = F.embedding(self.nearest_indices(z), self.codebook).movedim(3, 1).to(z.dtype)
        return _ReplaceGrad.apply(zq, z)

    def decode(self, zq: torch.Tensor) -> torch.Tensor:
        """Quantised latents -> images in about [-1, 1]."""
        return self.decoder(self.post_quant_conv(zq))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (B, 3, H, W) -> quantised latents (B, E, H/f, W/f), as VQModel.encode."""
        h = self.quant_conv(self.encoder(x))
        return F.embedding(self.nearest_indices(h), self.codebook).movedim(3, 1)

    def tokens_to_latents(self, indices: torch.Tensor) -> torch.Tensor:
        """Codebook indices (B, h, w) -> latents (B, E, h, w)."""
        return F.embedding(indices, self.codebook).movedim(3, 1)


@dataclass
class LoadedVQGAN:
    """A VQGAN ready for generation, with where its weights came from."""

    model: VQGAN  # eval mode, grads off
    name: str  # registry name, "test-tiny", or a file path
    model_id: str  # stable id written into PNG metadata, e.g. "vqgan_imagenet_f16_16384"
    is_pretrained: bool  # False: random weights, images are noise-like
    device: torch.device

    @property
    def factor(self) -> int:
        return self.model.config.factor

    @property
    def embed_dim(self) -> int:
        return self.model.config.embed_dim

    @property
    def n_embed(self) -> int:
        return self.model.config.n_embed

    def describe(self) -> str:
        kind = "pretrained" if self.is_pretrained else "RANDOM WEIGHTS - images are not real"
        return f"VQGAN {self.model_id} on {self.device} ({kind})"


class _Placeholder:
    """Stands in for a trainer-side class while unpickling: stores state, runs no code."""

    qualified_name = "?"

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<placeholder for {self.qualified_name}>"


def _placeholder_for(name: str) -> type:
    return type(name.rsplit(".", 1)[-1], (_Placeholder,), {"qualified_name": name})


def load_checkpoint(path: os.PathLike | str) -> dict:
    """Read a Lightning or plain checkpoint with weights_only on; see the module docstring."""
    path = str(path)
    if not os.path.isfile(path):
        raise VQGANCheckpointError(f"VQGAN checkpoint not found: {path}")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            refused = [n for n in names if not n.startswith(TRAINER_NAMESPACES)]
            if refused or not names:
                raise VQGANCheckpointError(
                    f"{path}: refusing to load; the checkpoint references code outside the trainer's "
                    f"bookkeeping: {', '.join(refused) or 'unknown globals'}") from None
            log.info("loading %s with inert placeholders for %s", path, ", ".join(names))
            with torch.serialization.safe_globals([(_placeholder_for(n), n) for n in names]):
                return torch.load(path, map_location="cpu", weights_only=True)
    except VQGANCheckpointError:
        raise
    except (RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError, OSError) as exc:
        raise VQGANCheckpointError(
            f"{path} is truncated or not a PyTorch checkpoint ({type(exc).__name__}: {str(exc)[:200]}); "
            f"download it again") from None


def _model_state(ckpt: Any, path: str) -> dict[str, torch.Tensor]:
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise VQGANCheckpointError(f"{path}: no state_dict of tensors inside (not a taming checkpoint)")
    for key, quantizer in _QUANTIZER_KEYS.items():
        if key in state:
            raise _unsupported_quantizer(f"{path} (holds {key})", quantizer)
    kept = {k: v for k, v in state.items() if k.startswith(MODEL_PREFIXES)}
    other = [k for k in state if not k.startswith(MODEL_PREFIXES) and not k.startswith("loss.")]
    if other:
        log.info("%s: ignoring %d non-model keys such as %s", path, len(other), other[0])
    return kept


def _apply_state(model: VQGAN, state: dict[str, torch.Tensor], path: str, config_path: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            details.append(f"{len(shapes)} with other shapes (e.g. {shapes[0]})")
        raise VQGANCheckpointError(
            f"{path} does not match {config_path}: " + "; ".join(details)
            + ". Use the model.yaml published with this checkpoint.")
    model.load_state_dict(state, strict=True)


def _finish(model: VQGAN, name: str, model_id: str, is_pretrained: bool, device) -> LoadedVQGAN:
    model = model.to(device).eval().requires_grad_(False)
    loaded = LoadedVQGAN(model=model, name=name, model_id=model_id, is_pretrained=is_pretrained,
                         device=torch.device(device))
    (log.info if is_pretrained else log.warning)("loaded %s", loaded.describe())
    return loaded


def build_random(config: VQGANConfig, seed: int = RANDOM_SEED) -> VQGAN:
    """An architecture with seeded random weights (identical in every process)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VQGAN(config)
        # taming's codebook init is uniform(+-1/n): spread it so random images show structure.
        model.quantize.embedding.weight.data.uniform_(-1.0, 1.0)
    return model


def load_files(config_path: os.PathLike | str, ckpt_path: os.PathLike | str, device="cpu",
               model_id: Optional[str] = None) -> LoadedVQGAN:
    """Load a model.yaml + last.ckpt pair in taming's published layout."""
    config = read_config(config_path)
    ckpt = load_checkpoint(ckpt_path)
    state = _model_state(ckpt, str(ckpt_path))
    model = VQGAN(config)
    _apply_state(model, state, str(ckpt_path), str(config_path))
    return _finish(model, str(ckpt_path), model_id or f"file:{Path(ckpt_path).name}", True, device)


def load_vqgan(name: str, device: str | torch.device = "cpu", models_dir: Optional[os.PathLike | str] = None,
               random_weights: bool = False) -> LoadedVQGAN:
    """Load VQGAN `name`: "test-tiny", a registry name, or a folder holding model.yaml + last.ckpt.

    Registry names read their files from the weights cache and raise
    `weights.WeightsUnavailableError` (with where to put the files) when absent.
    `random_weights=True` builds the named architecture with seeded random
    weights instead, marked non-pretrained (benchmarks).
    """
    if name == TINY_MODEL or random_weights:
        if name not in SHIPPED_CONFIGS:
            raise ValueError(f"no shipped architecture for {name!r}; known: {', '.join(SHIPPED_CONFIGS)}")
        config = read_config(_CONFIG_DIR / SHIPPED_CONFIGS[name])
        return _finish(build_random(config), name, f"{name}/random", False, device)
    if os.path.isdir(name):
        folder = Path(name)
        return load_files(folder / "model.yaml", folder / "last.ckpt", device, f"dir:{folder.name}")
    entry = weights.REGISTRY.get(name)
    if entry is None or entry.kind != "vqgan":
        known = sorted(n for n, e in weights.REGISTRY.items() if e.kind == "vqgan")
        raise ValueError(f"unknown VQGAN {name!r}; known: {TINY_MODEL}, {', '.join(known) or 'none registered'}, "
                         f"or a folder with model.yaml and last.ckpt")
    paths = weights.resolve(name, models_dir)  # raises WeightsUnavailableError with the how-to
    by_name = {p.name: p for p in paths}
    config_path = by_name.get("model.yaml", paths[0])
    ckpt_path = by_name.get("last.ckpt", paths[-1])
    try:
        return load_files(config_path, ckpt_path, device, name)
    except VQGANCheckpointError as exc:
        # A registry file that fails to load is a bad download (or a hand copy gone wrong): the
        # message already names the path; say how to replace it, since deleting it by hand is not obvious.
        raise VQGANCheckpointError(f"{exc}\n{weights.force_hint(name)}") from None
