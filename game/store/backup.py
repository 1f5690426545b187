"""`targets export DIR` / `targets import DIR`: the game's Redis state as files, and back.

What is saved: every key under the store's `cap:` prefix (targets and their
settings, per-model embeddings, the ready pools, frozen puzzle days, schedules,
players, submission logs, puzzle and daily boards, reveals' data), except the
rate-limit buckets, locks and one-time carry codes (`cap:rl:`, `cap:lock:`, `cap:carry:`), which are ephemeral. The format is plain files
so a backup can be inspected and diffed:

  DIR/manifest.json   format, creation time, counts, and the sha256 of each file
  DIR/keys.jsonl      one JSON object per key: {"key", "type", "value"}; text is
                      kept as text, binary (embeddings) as {"b64": ...}
  DIR/images/*.png    target images, one file per target (`cap:target:{tid}:image`)

Import validates everything first (manifest, checksums, every line, every
image: known types, finite scores, unique keys, increasing stream ids; an error
names the line and key) and refuses a Redis that already holds game data unless
`--replace`. Then it writes every key under a staging name and one Lua script
(lua/swap_import.lua) renames them over the live keys and deletes the old ones:
a failure at any point leaves the live data exactly as it was.
Writing the export goes to a temporary folder renamed into place at the end.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import redis

from game.errors import AdminError

PREFIX = "cap:"
SKIP_PREFIXES = ("cap:rl:", "cap:lock:", "cap:carry:")  # buckets, locks, 10-minute codes: ephemeral
IMAGE_SUFFIX = ":image"
FORMAT = "captionary-export-1"
KEYS_FILE = "keys.jsonl"
MANIFEST = "manifest.json"
IMAGES = "images"
SCAN_COUNT = 500


def _enc(value: bytes):
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode("ascii")}


def _dec(value) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        return base64.b64decode(value["b64"], validate=True)
    raise ValueError(f"a value must be text or {{\"b64\": ...}}, not {value!r:.60}")


def _game_keys(client) -> list[bytes]:
    keys = [k for k in client.scan_iter(match=PREFIX + "*", count=SCAN_COUNT)]
    return sorted(k for k in keys if not k.decode().startswith(SKIP_PREFIXES))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _image_name(key: str) -> str:
    # cap:target:{tid}:image -> {tid}.png; target ids are the store's [0-9a-z] tokens
    tid = key[len("cap:target:"):-len(IMAGE_SUFFIX)]
    if not tid or not all(c.isalnum() or c in "-_" for c in tid):
        raise AdminError(f"unexpected target id in key {key!r}")
    return f"{tid}.png"


def _read_key(client, key: bytes) -> dict:
    kind = client.type(key).decode()
    name = key.decode()
    if kind == "string":
        value = _enc(client.get(key))
    elif kind == "hash":
        value = {k.decode(): _enc(v) for k, v in sorted(client.hgetall(key).items())}
    elif kind == "set":
        value = sorted(_enc(m) for m in client.smembers(key))
    elif kind == "zset":
        value = [[_enc(m), s] for m, s in client.zrange(key, 0, -1, withscores=True)]
    elif kind == "list":
        value = [_enc(v) for v in client.lrange(key, 0, -1)]
    elif kind == "stream":
        value = [[i.decode(), {k.decode(): _enc(v) for k, v in fields.items()}]
                 for i, fields in client.xrange(key, "-", "+")]
    else:
        raise AdminError(f"key {name} has type {kind}, which export does not know")
    return {"key": name, "type": kind, "value": value}


def export_all(client, directory: str | os.PathLike) -> str:
    """Write the game state to `directory` (new or empty); returns a one-line summary."""
    dest = Path(directory)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise AdminError(f"{dest} exists and is not an empty folder; export into a new folder")
    parent = dest.parent if str(dest.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=parent))
    except OSError as exc:
        raise AdminError(f"cannot write to {parent}: {exc.strerror or exc}") from exc
    try:
        (tmp / IMAGES).mkdir()
        counts = {"keys": 0, "images": 0, "targets": 0}
        # One snapshot would need a fork (BGSAVE); instead keys are read one by one.
        # Exports are meant for a quiet moment (admins), and a key read mid-game is
        # still internally consistent.
        with open(tmp / KEYS_FILE, "w", encoding="utf-8") as out:
            for key in _game_keys(client):
                name = key.decode()
                if name.startswith("cap:target:") and name.endswith(IMAGE_SUFFIX):
                    data = client.get(key)
                    if data is None:
                        continue
                    (tmp / IMAGES / _image_name(name)).write_bytes(data)
                    counts["images"] += 1
                    continue
                record = _read_key(client, key)
                if name.startswith("cap:target:") and record["type"] == "hash":
                    counts["targets"] += 1
                out.write(json.dumps(record, sort_keys=True) + "\n")
                counts["keys"] += 1
        files = {p.relative_to(tmp).as_posix(): _sha(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {"format": FORMAT, "created": time.time(), "counts": counts, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
        if dest.exists():
            dest.rmdir()
        os.replace(tmp, dest)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise AdminError(f"cannot write the export to {dest}: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return f"{counts['targets']} targets, {counts['images']} images, {counts['keys']} keys"


def _load(directory: Path) -> tuple[dict, list[dict], dict[str, bytes]]:
    """Read and check every file of an export; raise AdminError naming the first problem."""
    if not directory.is_dir():
        raise AdminError(f"{directory} is not a folder (give the folder `targets export` wrote)")
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdminError(f"{directory / MANIFEST} is missing: not a Captionary export") from None
    except (OSError, ValueError) as exc:
        raise AdminError(f"{directory / MANIFEST} is unreadable or not JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise AdminError(f"{directory / MANIFEST}: not a {FORMAT} manifest")
    for rel, digest in manifest["files"].items():
        path = directory / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise AdminError(f"manifest names a file outside the export: {rel!r}")
        if not path.is_file():
            raise AdminError(f"{path} is listed in the manifest but missing")
        try:
            actual = _sha(path)
        except OSError as exc:
            raise AdminError(f"{path} is unreadable: {exc.strerror or exc}") from exc
        if actual != digest:
            raise AdminError(f"{path} does not match its checksum in the manifest (changed or truncated)")
    if KEYS_FILE not in manifest["files"]:
        raise AdminError(f"the manifest does not list {KEYS_FILE}")
    records = []
    seen: dict[str, int] = {}
    with open(directory / KEYS_FILE, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            where = f"{directory / KEYS_FILE} line {number}"
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise AdminError(f"{where}: not JSON: {exc}") from exc
            if isinstance(record, dict) and isinstance(record.get("key"), str):
                where += f" (key {record['key']!r})"
            try:
                _check_record(record)
            except (ValueError, TypeError, KeyError) as exc:
                raise AdminError(f"{where}: {exc}") from exc
            # Two lines for one key would silently merge (or overwrite) on import.
            if record["key"] in seen:
                raise AdminError(f"{where}: duplicate key, already on line {seen[record['key']]}")
            seen[record["key"]] = number
            records.append(record)
    images = {}
    from PIL import Image
    import io
    for rel in manifest["files"]:
        if rel.startswith(IMAGES + "/"):
            data = (directory / rel).read_bytes()
            try:
                with Image.open(io.BytesIO(data)) as img:
                    img.verify()
            except Exception as exc:  # PIL raises many types for broken files
                raise AdminError(f"{directory / rel} is not a valid image: {exc}") from exc
            key = f"cap:target:{Path(rel).stem}{IMAGE_SUFFIX}"
            if key in seen:
                raise AdminError(f"{directory / rel}: its key {key} is also on line {seen[key]} of {KEYS_FILE}")
            images[key] = data
    return manifest, records, images


_TYPES = ("string", "hash", "set", "zset", "list", "stream")


def _check_record(record) -> None:
    if not isinstance(record, dict) or not isinstance(record.get("key"), str):
        raise ValueError("each line must be an object with a \"key\"")
    if not record["key"].startswith(PREFIX):
        raise ValueError(f"key {record['key']!r} is outside the game's {PREFIX} prefix")
    kind, value = record.get("type"), record.get("value")
    if kind not in _TYPES:
        raise ValueError(f"unknown type {kind!r}")
    # A target the store could not read back would break the pool and every page showing it.
    if record["key"].startswith("cap:target:") and record["key"].count(":") == 2:
        from game.store.targets import KINDS
        if kind != "hash" or not isinstance(value, dict) or value.get("kind") not in KINDS:
            raise ValueError(f"a target must be a hash whose kind is one of {', '.join(KINDS)}, "
                             f"not a {kind} with kind {value.get('kind') if isinstance(value, dict) else None!r}")
    # Decode everything now, so the write phase cannot fail on bad data.
    if kind == "string":
        _dec(value)
    elif kind == "hash":
        if not isinstance(value, dict) or not value:
            raise ValueError("a hash must be a non-empty object")
        [_dec(v) for v in value.values()]
    elif kind in ("set", "list"):
        if not isinstance(value, list) or not value:
            raise ValueError(f"a {kind} must be a non-empty array")
        [_dec(v) for v in value]
    elif kind == "zset":
        if not isinstance(value, list) or not value:
            raise ValueError("a zset must be a non-empty array")
        members = set()
        for pair in value:
            if not isinstance(pair, list) or len(pair) != 2:
                raise ValueError(f"a zset entry must be [member, score], not {pair!r:.60}")
            member, score = pair
            if isinstance(score, bool) or not isinstance(score, (int, float, str)):
                raise ValueError(f"zset member {member!r:.40} has a score that is not a number: {score!r:.40}")
            number = float(score)
            # NaN would be refused by ZADD halfway through the write; inf would poison every rank.
            if not math.isfinite(number):
                raise ValueError(f"zset member {member!r:.40} has a score that is not finite: {score!r}")
            if _dec(member) in members:
                raise ValueError(f"zset member {member!r:.40} appears twice")
            members.add(_dec(member))
    elif kind == "stream":
        if not isinstance(value, list) or not value:
            raise ValueError("a stream must be a non-empty array")
        last = (0, 0)
        for entry in value:
            if not isinstance(entry, list) or len(entry) != 2:
                raise ValueError(f"a stream entry must be [id, fields], not {entry!r:.60}")
            entry_id, fields = entry
            parsed = _stream_id(entry_id)
            if not isinstance(fields, dict) or not fields:
                raise ValueError(f"stream entry {entry_id!r} needs a non-empty object of fields")
            # XADD refuses an id not above the last one: checked here, not halfway through the write.
            if parsed <= last:
                raise ValueError(f"stream entry {entry_id!r} is not after the previous id "
                                 f"{last[0]}-{last[1]} (ids must increase)")
            last = parsed
            [_dec(v) for v in fields.values()]


def _stream_id(entry_id) -> tuple[int, int]:
    """`"<ms>-<seq>"` as a pair of integers; anything else is a ValueError."""
    if isinstance(entry_id, str):
        ms, sep, seq = entry_id.partition("-")
        if sep and ms.isdigit() and seq.isdigit() and int(ms) < 2 ** 64 and int(seq) < 2 ** 64:
            return int(ms), int(seq)
    raise ValueError(f"bad stream entry id {entry_id!r} (expected \"<ms>-<seq>\")")


STAGING_PREFIX = "capimport:"  # outside cap: so nothing else (export, scans) ever sees staged keys
STAGING_TTL_S = 3600  # an import killed mid-way leaves no litter for longer than this
MERGED_KEY = "cap:models"  # written by merely opening a Store; merged, not a sign of data
_SWAP = (Path(__file__).with_name("lua") / "swap_import.lua").read_text()


def _stage(pipe, staged: str, kind: str, value) -> None:
    if kind == "string":
        pipe.set(staged, _dec(value))
    elif kind == "hash":
        pipe.hset(staged, mapping={k: _dec(v) for k, v in value.items()})
    elif kind == "set":
        pipe.sadd(staged, *[_dec(v) for v in value])
    elif kind == "zset":
        pipe.zadd(staged, {_dec(m): float(s) for m, s in value})
    elif kind == "list":
        pipe.rpush(staged, *[_dec(v) for v in value])
    elif kind == "stream":
        for entry_id, fields in value:
            pipe.xadd(staged, {k: _dec(v) for k, v in fields.items()}, id=entry_id)
    pipe.expire(staged, STAGING_TTL_S)


def import_all(client, directory: str | os.PathLike, *, replace: bool = False) -> str:
    """Restore an export into a Redis holding no game data; everything or nothing.

    Every record is validated first. Then the keys are written under staging
    names (`capimport:<run>:<key>`), and one Lua script renames them over the
    live keys and, with `replace=True`, deletes the game data that was there.
    A failure before that script (bad data Redis refuses, out of memory)
    removes the staged keys and leaves the live data exactly as it was.
    """
    directory = Path(directory)
    manifest, records, images = _load(directory)
    existing = [k for k in _game_keys(client) if k != MERGED_KEY.encode()]
    if existing and not replace:
        raise AdminError(f"this Redis already holds game data ({len(existing)} keys, e.g. {existing[0].decode()}); "
                         "import restores into an empty Redis (point REDIS_URL at a fresh one, or pass --replace "
                         "to delete what is there first)")
    run = f"{STAGING_PREFIX}{secrets.token_hex(8)}:"
    live = [r["key"] for r in records] + list(images)
    staged = [run + key for key in live]
    try:
        pipe = client.pipeline(transaction=False)
        for record, name in zip(records, staged):
            _stage(pipe, name, record["type"], record["value"])
        for key, data in images.items():
            pipe.set(run + key, data, ex=STAGING_TTL_S)
        pipe.execute()
        new = set(live)
        old = [k.decode() for k in existing if k.decode() not in new]
        client.eval(_SWAP, len(staged) * 2 + len(old), *staged, *live, *old, len(staged), MERGED_KEY)
    except redis.exceptions.RedisError as exc:
        _drop(client, staged)
        if isinstance(exc, redis.exceptions.OutOfMemoryError) or "OOM" in str(exc):
            raise AdminError("import refused: Redis is out of memory (raise CAPTIONARY_REDIS_MAXMEMORY or free "
                             "space); the data already there is unchanged") from exc
        raise AdminError(f"import failed, the data already there is unchanged: {exc}") from exc
    except BaseException:
        _drop(client, staged)
        raise
    targets = sum(1 for r in records if r["key"].startswith("cap:target:") and r["type"] == "hash")
    return f"{targets} targets, {len(images)} images, {len(records)} keys"


def _drop(client, staged: list[str]) -> None:
    """Delete the staging keys of a failed import (the TTL is the fallback if even this fails)."""
    try:
        for start in range(0, len(staged), 500):
            client.delete(*staged[start:start + 500])
    except redis.exceptions.RedisError:
        pass
