"""Per-token reference log-probs cached on disk: written once (``tokenweight precompute reference --output DIR``),
read by every training run that names the folder (``--ref_log_probs DIR``), which then loads no reference model.

Layout of a cache folder (one sub-folder per split the trainer sees)::

    DIR/train/manifest.json           fingerprint (model, tokenizer, rows, truncation), row count, shard size, complete
    DIR/train/shard-00000.safetensors rows [0, S): flat fp32 log-probs of chosen and rejected + per-row lengths
    DIR/eval/…

Every file is written to a temporary name and renamed, so a shard exists complete or not at all. Shard ``i`` is
written by process ``i mod world_size``; the main process writes the manifest (first unfinished, then complete).
A run started again with the same fingerprint writes only the missing shards; a cache whose fingerprint differs is
refused, naming the parts that differ. The complete manifest holds every shard's SHA-256: a damaged shard or
manifest is refused in one line naming the file, and ``precompute reference`` run again rewrites the damaged shards.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import datasets
from safetensors import safe_open
from torch import nn

from tokenweight.cache_files import (encode_pair_rows, read_json_manifest, unflatten_rows, write_atomic,
                                     write_json_manifest)
from tokenweight.fingerprint import (dataset_fingerprint, fingerprint_differences, model_fingerprint,
                                     tokenizer_fingerprint)
from tokenweight.errors import UserError
from tokenweight.reference import precompute_reference_logps

FORMAT = "tokenweight-reference-logps/1"
MANIFEST = "manifest.json"
FINGERPRINT_PARTS = ("model", "tokenizer", "dataset", "truncation")
SPLITS = ("train", "eval")


def reference_fingerprint(model: nn.Module, tokenizer, rows, max_length: int | None,
                          max_prompt_length: int | None) -> dict:
    """The cache key of reference ``model`` scoring the tokenized ``rows``: one entry per :data:`FINGERPRINT_PARTS`
    (``model``: configuration and parameter bytes; ``dataset``: every row's prompt and token ids)."""
    return {"model": model_fingerprint(model), "tokenizer": tokenizer_fingerprint(tokenizer),
            "dataset": dataset_fingerprint(rows),
            "truncation": {"max_length": max_length, "max_prompt_length": max_prompt_length}}


def _check_fingerprint(stored: dict, expected: dict, folder: Path) -> None:
    differing, details = fingerprint_differences(stored, expected, FINGERPRINT_PARTS)
    if differing:
        raise UserError(f"reference log-prob cache {folder} was computed for a different {', '.join(differing)} "
                        f"({details}); delete the folder or choose another one to recompute")


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The manifest of the cache ``folder`` (one split), ``None`` when there is none; one that is not JSON or not
    this format is a :class:`UserError` naming it."""
    path = Path(folder) / MANIFEST
    return read_json_manifest(
        path, FORMAT,
        damaged=lambda error: UserError(f"{path} is damaged ({error}); delete {Path(folder)} and run `tokenweight "
                                        "precompute reference` again with the run's flags"),
        mismatch=lambda found: UserError(f"{path} is not a tokenweight reference log-prob cache (format {found!r})"))


def shard_problem(folder: Path, index: int, manifest: dict) -> str | None:
    """``None`` when shard ``index`` exists with the bytes its checksum in ``manifest`` names (no checksum yet: it
    exists), else what is wrong with it."""
    path = shard_path(folder, index)
    if not path.is_file():
        return "is missing"
    checksum = manifest.get("checksums", {}).get(path.name)
    if checksum is not None and hashlib.sha256(path.read_bytes()).hexdigest() != checksum:
        return "is damaged (its bytes do not match the checksum in the manifest)"
    return None


def _write_manifest(folder: Path, manifest: dict) -> None:
    write_json_manifest(folder / MANIFEST, manifest)


def shard_path(folder: str | os.PathLike, index: int) -> Path:
    return Path(folder) / f"shard-{index:05d}.safetensors"


def open_cache(folder: str | os.PathLike, fingerprint: dict, num_rows: int, shard_size: int,
               is_main_process: bool = True) -> dict:
    """The manifest of ``folder`` for ``fingerprint``: the existing one (its shard size wins, so a resumed run
    fills the same shards), else a new unfinished one, written by the main process. A differing fingerprint is
    refused (:class:`UserError` naming the parts)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is not None:
        _check_fingerprint(manifest["fingerprint"], fingerprint, folder)
        damaged = [i for i in range(manifest["num_shards"]) if shard_problem(folder, i, manifest) is not None]
        if damaged and manifest["complete"]:  # repair: the damaged shards are written again
            manifest = {**manifest, "complete": False}
            if is_main_process:
                for index in damaged:
                    shard_path(folder, index).unlink(missing_ok=True)
                _write_manifest(folder, manifest)
        return manifest
    if shard_size < 1:
        raise UserError(f"--shard_size must be at least 1, got {shard_size}")
    manifest = {"format": FORMAT, "fingerprint": fingerprint, "num_rows": num_rows, "shard_size": shard_size,
                "num_shards": -(-num_rows // shard_size), "complete": False}
    if is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        _write_manifest(folder, manifest)
    return manifest


def write_missing_shards(folder: str | os.PathLike, manifest: dict, ref_model: nn.Module, dataset: datasets.Dataset,
                         pad_token_id: int, batch_size: int, rank: int = 0, world_size: int = 1,
                         progress: bool = True) -> list[int]:
    """Score and write this process's shards (``index % world_size == rank``) that do not exist yet; returns the
    indices written. ``dataset`` is the tokenized split the manifest was opened for."""
    folder, size, written = Path(folder), manifest["shard_size"], []
    for index in range(rank, manifest["num_shards"], world_size):
        if shard_path(folder, index).exists():
            continue
        rows = dataset.select(range(index * size, min((index + 1) * size, len(dataset))))
        scored = precompute_reference_logps(ref_model, rows, pad_token_id, batch_size, progress=progress,
                                            name=f"{folder.name} shard {index + 1}/{manifest['num_shards']}")
        _write_shard(folder, index, scored["chosen_ref_logps"], scored["rejected_ref_logps"])
        written.append(index)
    return written


def _write_shard(folder: Path, index: int, chosen: list[list[float]], rejected: list[list[float]]) -> None:
    write_atomic(shard_path(folder, index), encode_pair_rows(chosen, rejected))


def finish_cache(folder: str | os.PathLike, manifest: dict) -> None:
    """Mark the cache complete once every shard exists (main process, after all processes wrote theirs)."""
    folder = Path(folder)
    missing = [shard_path(folder, i).name for i in range(manifest["num_shards"]) if not shard_path(folder, i).exists()]
    if missing:
        raise RuntimeError(f"reference log-prob cache {folder} lacks {missing[:5]} after every process finished")
    checksums = {shard_path(folder, i).name: hashlib.sha256(shard_path(folder, i).read_bytes()).hexdigest()
                 for i in range(manifest["num_shards"])}
    _write_manifest(folder, {**manifest, "complete": True, "checksums": checksums})


def load_reference_logps(folder: str | os.PathLike, fingerprint: dict) -> tuple[list[list[float]], list[list[float]]]:
    """Per-row reference log-probs ``(chosen, rejected)`` of a complete cache whose fingerprint equals
    ``fingerprint``; a missing, unfinished or mismatched cache is a :class:`UserError` naming the folder."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        raise UserError(f"no reference log-prob cache in {folder} (missing {MANIFEST}); write it with "
                        f"`tokenweight precompute reference --output {folder.parent}` and the run's flags")
    _check_fingerprint(manifest["fingerprint"], fingerprint, folder)
    if not manifest["complete"]:
        raise UserError(f"reference log-prob cache {folder} is unfinished; run `tokenweight precompute reference` "
                        "again with the same flags to resume it")
    chosen, rejected = [], []
    for index in range(manifest["num_shards"]):
        problem = shard_problem(folder, index, manifest)
        if problem is not None:
            raise UserError(f"reference log-prob cache: {shard_path(folder, index)} {problem}; run `tokenweight "
                            "precompute reference` again with the run's flags to repair it")
        with safe_open(str(shard_path(folder, index)), framework="pt") as handle:
            chosen += unflatten_rows(handle.get_tensor("chosen"), handle.get_tensor("chosen_lengths"))
            rejected += unflatten_rows(handle.get_tensor("rejected"), handle.get_tensor("rejected_lengths"))
    return chosen, rejected


def with_cached_reference_logps(cache_dir: str, reference: nn.Module, tokenizer, splits: dict, max_length: int | None,
                                max_prompt_length: int | None) -> dict:
    """``splits`` (name → tokenized dataset or ``None``; names from :data:`SPLITS`) with the columns
    ``chosen_ref_logps``/``rejected_ref_logps`` read from ``cache_dir/<name>``, after checking each split's
    fingerprint against ``reference`` (the reference model's weights, e.g. the policy before training)."""
    out = {}
    for name, dataset in splits.items():
        if dataset is not None:
            expected = reference_fingerprint(reference, tokenizer, dataset, max_length, max_prompt_length)
            chosen, rejected = load_reference_logps(Path(cache_dir, name), expected)
            dataset = dataset.add_column("chosen_ref_logps", chosen).add_column("rejected_ref_logps", rejected)
        out[name] = dataset
    return out
