"""On-disk cache of attention weights: fingerprint, manifest, checksummed shards (spec §8.1).

Layout of a cache folder::

    manifest.json            fingerprint, row count, shard size, completion flag, and per written shard its
                             SHA-256 and statistics
    shard-00000.safetensors  rows [0, S): flat fp32 weights + per-row lengths
    shard-00001.safetensors  …

Every file is written to a temporary name and renamed; a shard counts as written once its checksum is in the
manifest. An interrupted run resumes with the shards that are missing or whose bytes do not match their checksum
and never rewrites intact ones. A cache is only read when its fingerprint equals the expected one, part by part
(model, tokenizer, dataset, template, layers, settings: see :mod:`.fingerprint`), and every shard's bytes match.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from safetensors import SafetensorError

from tokenweight.cache_files import (decode_pair_rows, encode_pair_rows, read_json_manifest, write_atomic,
                                     write_json_manifest)
from tokenweight.errors import UserError
from tokenweight.fingerprint import fingerprint_differences
from tokenweight.weights.attention.fingerprint import PARTS
from tokenweight.weights.attention.normalize import WeightStats

FORMAT = "tokenweight-attention-weights/2"
MANIFEST = "manifest.json"


class CacheMismatchError(UserError):
    """A cache folder holds weights computed for something else; the message names the differing parts."""


class CacheDamagedError(UserError):
    """A cache file is missing, unreadable or not the bytes its checksum says; the message names file and folder."""


class CacheIncompleteError(UserError):
    """A cache folder has no manifest, or its precompute has not finished."""


def check_fingerprint(stored: dict, expected: dict, folder: Path) -> None:
    """Raise :class:`CacheMismatchError` naming every part where ``stored`` differs from ``expected`` and how."""
    differing, details = fingerprint_differences(stored, expected, PARTS)
    if differing:
        raise CacheMismatchError(
            f"attention weight cache {folder} was computed for a different {', '.join(differing)} ({details}); "
            "delete the folder or choose another one to recompute")


@dataclass
class CachedWeights:
    """Per-row weights of a cache, in dataset order: one float per completion token."""

    chosen_weights: list[list[float]]
    rejected_weights: list[list[float]]
    stats: WeightStats


def write_manifest(folder: Path, manifest: dict) -> None:
    write_json_manifest(Path(folder) / MANIFEST, manifest)


def read_manifest(folder: Path) -> dict | None:
    """The folder's manifest, ``None`` when there is none.

    Raises :class:`CacheDamagedError` for a manifest that is not JSON, :class:`CacheMismatchError` for another
    format (another program's folder, or a cache written by an older tokenweight).
    """
    path = Path(folder) / MANIFEST
    return read_json_manifest(
        path, FORMAT,
        damaged=lambda error: CacheDamagedError(f"attention weight cache {path.parent}: {MANIFEST} is damaged "
                                                f"({error}); delete the folder or run the precompute again to "
                                                "rebuild it"),
        mismatch=lambda found: CacheMismatchError(f"{path} is not a tokenweight attention weight cache of format "
                                                  f"{FORMAT!r} (found {found!r}); delete the folder or choose "
                                                  "another one to recompute"))


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def shard_path(folder: Path, index: int) -> Path:
    return Path(folder) / shard_name(index)


def write_shard(folder: Path, manifest: dict, index: int, chosen: list[list[float]], rejected: list[list[float]],
                stats: WeightStats) -> None:
    """Write one shard atomically, then record its checksum and statistics in ``manifest`` (rewritten)."""
    data = encode_pair_rows(chosen, rejected)
    write_atomic(shard_path(folder, index), data)
    manifest["shards"][shard_name(index)] = {"sha256": hashlib.sha256(data).hexdigest(), "rows": len(chosen),
                                             "stats": asdict(stats)}
    write_manifest(folder, manifest)


def _problem(data: bytes | None, entry: dict | None) -> str | None:
    if data is None:
        return "is missing"
    if entry is None:
        return "has no checksum in the manifest (written by an interrupted run)"
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        return "is damaged (its bytes do not match the checksum in the manifest)"
    return None


def shard_problem(folder: Path, manifest: dict, index: int) -> str | None:
    """Why shard ``index`` cannot be used (missing, no checksum recorded, bytes differ), ``None`` if intact."""
    path = shard_path(folder, index)
    return _problem(path.read_bytes() if path.exists() else None, manifest["shards"].get(shard_name(index)))


def read_shard(folder: Path, manifest: dict, index: int) -> tuple[list[list[float]], list[list[float]]]:
    """The (chosen, rejected) weight lists of shard ``index`` after checking its bytes against the manifest."""
    path, entry = shard_path(folder, index), manifest["shards"].get(shard_name(index))
    data = path.read_bytes() if path.exists() else None
    problem = _problem(data, entry)
    if problem is not None:
        raise CacheDamagedError(f"attention weight cache {folder}: {path.name} {problem}; run the precompute "
                                "again (same settings) to recompute it")
    try:
        chosen, rejected = decode_pair_rows(data)
    except (SafetensorError, KeyError, RuntimeError) as error:
        raise CacheDamagedError(f"attention weight cache {folder}: {path.name} is unreadable ({error})") from None
    if not len(chosen) == len(rejected) == entry["rows"]:
        raise CacheDamagedError(f"attention weight cache {folder}: {path.name} holds {len(chosen)} rows, the "
                                f"manifest says {entry['rows']}")
    return chosen, rejected


def load_attention_weights(output_dir: str | os.PathLike, expected_fingerprint: dict) -> CachedWeights:
    """Read a complete cache whose fingerprint equals ``expected_fingerprint`` (see :func:`.fingerprint`).

    Raises :class:`CacheMismatchError` naming the differing parts, :class:`CacheIncompleteError` for a missing or
    unfinished cache, :class:`CacheDamagedError` naming a damaged file.
    """
    folder = Path(output_dir)
    manifest = read_manifest(folder)
    if manifest is None:
        raise CacheIncompleteError(f"no attention weight cache in {folder} (missing {MANIFEST})")
    check_fingerprint(manifest["fingerprint"], expected_fingerprint, folder)
    if not manifest["complete"]:
        raise CacheIncompleteError(f"attention weight cache {folder} is unfinished; run the precompute again to "
                                   "resume")
    return read_shards(folder, manifest)


def finish_cache(output_dir: str | os.PathLike, manifest: dict) -> CachedWeights:
    """Read the shards of a cache whose shards are all written, then mark its manifest complete."""
    folder = Path(output_dir)
    weights = read_shards(folder, manifest)
    write_manifest(folder, {**manifest, "complete": True, "stats": asdict(weights.stats)})
    return weights


def read_shards(folder: Path, manifest: dict) -> CachedWeights:
    """All rows of the cache in ``folder``, every shard checked against its checksum."""
    chosen, rejected, stats = [], [], WeightStats()
    for index in range(manifest["num_shards"]):
        shard_chosen, shard_rejected = read_shard(folder, manifest, index)
        chosen += shard_chosen
        rejected += shard_rejected
        stats.add(WeightStats(**manifest["shards"][shard_name(index)]["stats"]))
    if len(chosen) != manifest["num_rows"]:
        raise CacheDamagedError(f"attention weight cache {folder} holds {len(chosen)} rows, its manifest says "
                                f"{manifest['num_rows']}")
    return CachedWeights(chosen_weights=chosen, rejected_weights=rejected, stats=stats)
