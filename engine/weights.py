"""Weights registry: model names -> download URLs, sizes, checksums, local paths.

Nothing here downloads at import or load time. Loading code asks `resolve()`
for a local file; when the file is absent it raises `WeightsUnavailableError`
with a message that names the file, where it is expected and how to provide
it. Downloads happen only when an admin asks (`flask models download NAME`),
into a temporary name that is verified and then renamed, so a partial
download never looks complete.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

MODELS_DIR_ENV = "CAPTIONARY_MODELS_DIR"
DOWNLOAD_CHUNK = 1 << 20


class WeightsUnavailableError(RuntimeError):
    """Model weights are not on this machine (and were not downloaded)."""


class WeightsVerificationError(RuntimeError):
    """A downloaded or provided file does not match the registry's size or sha256."""


@dataclass(frozen=True)
class WeightsFile:
    """One file of a model's weights."""

    filename: str  # name under <models dir>/<entry name>/
    urls: tuple[str, ...]  # primary first, then mirrors
    size: Optional[int] = None  # exact bytes when known; verified after download
    sha256: Optional[str] = None  # verified after download when known


@dataclass(frozen=True)
class WeightsEntry:
    """A named model whose weights an admin can download or provide by hand."""

    name: str  # registry key, e.g. "clip-vit-b-32-openai"
    kind: str  # "clip" or "vqgan"
    description: str
    files: tuple[WeightsFile, ...]
    env_override: Optional[str] = None  # env var that may point at the main file instead
    approx_size_mb: Optional[int] = None  # shown in `models list` when exact size is unknown
    extra: dict = field(default_factory=dict)  # loader hints, e.g. open_clip arch + tag


REGISTRY: dict[str, WeightsEntry] = {}


def register(entry: WeightsEntry) -> WeightsEntry:
    REGISTRY[entry.name] = entry
    return entry


register(WeightsEntry(
    name="clip-vit-b-32-openai",
    kind="clip",
    description="CLIP ViT-B/32, OpenAI weights (the judge of paint.wtf and the 2021 write-up)",
    files=(WeightsFile(
        filename="open_clip_pytorch_model.bin",
        urls=(
            "https://huggingface.co/timm/vit_base_patch32_clip_224.openai/resolve/main/open_clip_pytorch_model.bin",
        ),
    ),),
    env_override="CAPTIONARY_CLIP_WEIGHTS",
    approx_size_mb=605,
    extra={"arch": "ViT-B-32", "tag": "openai"},
))


# VQGANs from taming-transformers, as the 2021 notebooks fetched them: the authors'
# heibox links first, then the community mirrors those notebooks used. Each entry is a
# model.yaml + Lightning last.ckpt pair; sizes and sha256 are not pinned because we have
# not been able to verify them here (the files are ~1 GB and cannot be fetched offline).
def _heibox(share: str, path: str) -> str:
    return f"https://heibox.uni-heidelberg.de/d/{share}/files/?p={path}&dl=1"


def _vqgan_entry(name: str, description: str, yaml_urls: tuple, ckpt_urls: tuple) -> WeightsEntry:
    return WeightsEntry(
        name=name, kind="vqgan", description=description,
        files=(WeightsFile(filename="model.yaml", urls=yaml_urls),
               WeightsFile(filename="last.ckpt", urls=ckpt_urls)),
        extra={"format": "taming-model.yaml+lightning-ckpt"},
    )


register(_vqgan_entry(
    "vqgan_imagenet_f16_16384", "VQGAN ImageNet f16, 16384 codes (the 2021 notebook's default)",
    (_heibox("a7530b09fed84f80a887", "%2Fconfigs%2Fmodel.yaml"),
     "http://mirror.io.community/blob/vqgan/vqgan_imagenet_f16_16384.yaml",
     "https://github.com/mehdidc/feed_forward_vqgan_clip/releases/download/0.1/vqgan_imagenet_f16_16384.yaml"),
    (_heibox("a7530b09fed84f80a887", "%2Fckpts%2Flast.ckpt"),
     "http://mirror.io.community/blob/vqgan/vqgan_imagenet_f16_16384.ckpt",
     "https://github.com/mehdidc/feed_forward_vqgan_clip/releases/download/0.1/vqgan_imagenet_f16_16384.ckpt"),
))
register(_vqgan_entry(
    "vqgan_imagenet_f16_1024", "VQGAN ImageNet f16, 1024 codes",
    (_heibox("8088892a516d4e3baf92", "%2Fconfigs%2Fmodel.yaml"),
     "http://mirror.io.community/blob/vqgan/vqgan_imagenet_f16_1024.yaml"),
    (_heibox("8088892a516d4e3baf92", "%2Fckpts%2Flast.ckpt"),
     "http://mirror.io.community/blob/vqgan/vqgan_imagenet_f16_1024.ckpt"),
))
register(_vqgan_entry(
    "wikiart_16384", "VQGAN WikiArt f16, 16384 codes (the write-up's painterly model)",
    ("http://eaidata.bmk.sh/data/Wikiart_16384/wikiart_f16_16384_8145600.yaml",
     "http://mirror.io.community/blob/vqgan/wikiart_16384.yaml"),
    ("http://eaidata.bmk.sh/data/Wikiart_16384/wikiart_f16_16384_8145600.ckpt",
     "http://mirror.io.community/blob/vqgan/wikiart_16384.ckpt"),
))


def models_dir(explicit: Optional[os.PathLike | str] = None) -> Path:
    """The cache directory for weights: explicit > $CAPTIONARY_MODELS_DIR > ~/.cache/captionary/models."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        return Path(env)
    return Path.home() / ".cache" / "captionary" / "models"


def get_entry(name: str) -> WeightsEntry:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY)) or "none"
        raise KeyError(f"unknown model {name!r}; known models: {known}") from None


def expected_path(entry: WeightsEntry, file: WeightsFile, directory: Optional[os.PathLike | str] = None) -> Path:
    return models_dir(directory) / entry.name / file.filename


def offline_message(entry: WeightsEntry, missing: list[Path]) -> str:
    lines = [f"Weights for {entry.name} ({entry.description}) are not on this machine."]
    for path in missing:
        lines.append(f"  expected file: {path}")
    lines.append(f"  download them:  flask --app game models download {entry.name}")
    lines.append(f"    (where the app itself cannot start: python -m game.cli models download {entry.name})")
    lines.append(f"  or copy the file(s) there by hand (set {MODELS_DIR_ENV} to use another folder)")
    if entry.env_override:
        lines.append(f"  or point {entry.env_override}=/path/to/{entry.files[0].filename} at a copy")
    for file in entry.files:
        lines.append(f"  source: {file.urls[0]}")
    return "\n".join(lines)


def resolve(name: str, directory: Optional[os.PathLike | str] = None) -> list[Path]:
    """Local paths of every file of `name`; raises WeightsUnavailableError if any is missing."""
    entry = get_entry(name)
    paths, missing = [], []
    for index, file in enumerate(entry.files):
        override = os.environ.get(entry.env_override) if (entry.env_override and index == 0) else None
        path = Path(override) if override else expected_path(entry, file, directory)
        (paths if path.is_file() else missing).append(path)
    if missing:
        raise WeightsUnavailableError(offline_message(entry, missing))
    return paths


def status(name: str, directory: Optional[os.PathLike | str] = None) -> list[tuple[WeightsFile, Path, bool]]:
    """(file, expected path, present?) for each file of an entry; never raises for missing files."""
    entry = get_entry(name)
    return [(f, expected_path(entry, f, directory), expected_path(entry, f, directory).is_file()) for f in entry.files]


def sha256_of(path: os.PathLike | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(DOWNLOAD_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(file: WeightsFile, path: os.PathLike | str) -> None:
    actual_size = os.path.getsize(path)
    if file.size is not None and actual_size != file.size:
        raise WeightsVerificationError(f"{path}: size {actual_size} bytes, expected {file.size} (truncated or wrong file)")
    if file.sha256 is not None:
        actual = sha256_of(path)
        if actual != file.sha256:
            raise WeightsVerificationError(f"{path}: sha256 {actual}, expected {file.sha256}")


ProgressFn = Callable[[int, Optional[int]], None]  # (bytes so far, total or None)


def download_file(file: WeightsFile, dest: Path, progress: Optional[ProgressFn] = None, timeout: float = 30.0) -> Path:
    """Download `file` to `dest` via a temporary name, trying each URL in turn; verify; rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in file.urls:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                total = response.length if response.length is not None else file.size
                done = 0
                for chunk in iter(lambda: response.read(DOWNLOAD_CHUNK), b""):
                    out.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
                out.flush()
                os.fsync(out.fileno())
            verify(file, tmp_name)
            os.replace(tmp_name, dest)
            return dest
        except WeightsVerificationError:
            os.unlink(tmp_name)
            raise
        except Exception as exc:  # network errors: try the next mirror
            errors.append(f"{url}: {exc}")
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
    raise WeightsUnavailableError(
        f"could not download {dest.name}:\n  " + "\n  ".join(errors)
        + f"\nOn an offline machine, copy the file to {dest} by hand."
    )


def download(name: str, directory: Optional[os.PathLike | str] = None, progress: Optional[ProgressFn] = None) -> list[Path]:
    """Download every missing file of `name`; files already present are verified, not fetched again."""
    entry = get_entry(name)
    paths = []
    for file in entry.files:
        dest = expected_path(entry, file, directory)
        if dest.is_file():
            verify(file, dest)
        else:
            download_file(file, dest, progress)
        paths.append(dest)
    return paths
