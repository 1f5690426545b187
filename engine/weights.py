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
import zipfile
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
    format: Optional[str] = None  # "torch" or "yaml": content checked after download (see verify_content)


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
        format="torch",
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
        files=(WeightsFile(filename="model.yaml", urls=yaml_urls, format="yaml"),
               WeightsFile(filename="last.ckpt", urls=ckpt_urls, format="torch")),
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


# torch.save writes a zip archive (since torch 1.6); older releases wrote a pickle that
# opens with protocol 2 and torch's magic number. Anything else is not a checkpoint.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def _describe_start(head: bytes) -> str:
    text = head.lstrip().lower()
    if not head:
        return "the file is empty"
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")) or b"<html" in text[:512]:
        return "it is an HTML/XML page (an error or login page saved in place of the file)"
    if text.startswith((b"{", b"[")):
        return "it is JSON text (an error response?)"
    return f"it starts with {head[:16]!r}"


def verify_content(file: WeightsFile, path: os.PathLike | str) -> None:
    """Check that `path` holds what `file.format` promises; WeightsVerificationError says what it holds instead.

    Cheap by design (the zip directory at the end of the file, not every tensor):
    it runs on every download and on every `models download` of a present file.
    """
    if file.format is None:
        return
    with open(path, "rb") as handle:
        head = handle.read(1024)
    if file.format == "torch":
        if head.startswith(b"PK\x03\x04"):
            try:
                with zipfile.ZipFile(path) as archive:  # reads the central directory at the end
                    names = archive.namelist()
            except (zipfile.BadZipFile, OSError) as exc:
                raise WeightsVerificationError(
                    f"{path}: truncated or damaged torch checkpoint ({exc})") from None
            if not any(n.endswith("data.pkl") for n in names):
                raise WeightsVerificationError(f"{path}: a zip archive but not a torch checkpoint (no data.pkl)")
            return
        if head.startswith(_LEGACY_TORCH_MAGIC):
            return
        raise WeightsVerificationError(f"{path}: not a torch checkpoint: {_describe_start(head)}")
    if file.format == "yaml":
        import yaml
        try:
            with open(path, "r", encoding="utf-8") as handle:
                data = yaml.safe_load(handle)
        except (yaml.YAMLError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict):
            raise WeightsVerificationError(f"{path}: not a YAML config: {_describe_start(head)}")
        return
    raise ValueError(f"unknown weights format {file.format!r}")


def verify(file: WeightsFile, path: os.PathLike | str) -> None:
    """Size, sha256 and content checks of a downloaded or provided file (WeightsVerificationError)."""
    actual_size = os.path.getsize(path)
    if file.size is not None and actual_size != file.size:
        raise WeightsVerificationError(f"{path}: size {actual_size} bytes, expected {file.size} (truncated or wrong file)")
    verify_content(file, path)
    if file.sha256 is not None:
        actual = sha256_of(path)
        if actual != file.sha256:
            raise WeightsVerificationError(f"{path}: sha256 {actual}, expected {file.sha256}")


def force_hint(name: str) -> str:
    """How an admin replaces a bad file of registry entry `name` (one wording everywhere)."""
    return (f"replace it with a verified download: flask --app game models download {name} --force "
            f"(or python -m game.cli models download {name} --force)")


ProgressFn = Callable[[int, Optional[int]], None]  # (bytes so far, total or None)


def download_file(file: WeightsFile, dest: Path, progress: Optional[ProgressFn] = None, timeout: float = 30.0) -> Path:
    """Download `file` to `dest` via a temporary name, trying each URL in turn; verify; rename.

    A mirror whose answer fails verification (an HTML page, a truncated body, the
    wrong size or checksum) is skipped like an unreachable one; if every mirror
    fails and at least one answered with a bad file, WeightsVerificationError
    lists them all. `dest` is only ever replaced by a file that passed.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors, bad_content = [], False
    for url in file.urls:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                announced = response.length  # http.client counts .length down as the body is read
                total = announced if announced is not None else file.size
                done = 0
                for chunk in iter(lambda: response.read(DOWNLOAD_CHUNK), b""):
                    out.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
                out.flush()
                os.fsync(out.fileno())
            if announced is not None and done != announced:
                raise WeightsVerificationError(f"{url}: got {done} of {announced} bytes (connection cut)")
            verify(file, tmp_name)
            os.replace(tmp_name, dest)
            return dest
        except WeightsVerificationError as exc:
            bad_content = True
            errors.append(f"{url}: {str(exc).replace(tmp_name, 'download')}")
        except Exception as exc:  # network errors: try the next mirror
            errors.append(f"{url}: {exc}")
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
    kind = WeightsVerificationError if bad_content else WeightsUnavailableError
    raise kind(
        f"could not download {dest.name}:\n  " + "\n  ".join(errors)
        + f"\nOn an offline machine, copy the file to {dest} by hand."
    )


def download(name: str, directory: Optional[os.PathLike | str] = None, progress: Optional[ProgressFn] = None,
             force: bool = False) -> list[Path]:
    """Download every missing file of `name`; files already present are verified, not fetched again.

    A present file that fails verification raises WeightsVerificationError naming
    its path and the `--force` command; `force=True` fetches every file again
    (each replaced only once its verified download is complete).
    """
    entry = get_entry(name)
    paths = []
    for file in entry.files:
        dest = expected_path(entry, file, directory)
        if dest.is_file() and not force:
            try:
                verify(file, dest)
            except WeightsVerificationError as exc:
                raise WeightsVerificationError(f"{exc}\n{force_hint(name)}") from None
        else:
            download_file(file, dest, progress)
        paths.append(dest)
    return paths
