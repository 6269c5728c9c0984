"""Where preference rows come from: local files and folders, hub datasets, in-memory datasets; their splits.

A single local file is one split, ``train``; a folder of data files has the splits its file names map to
(``train.jsonl``, ``test.jsonl`` …); a ``save_to_disk`` folder and a hub dataset have their own. Asking for a split
that does not exist is a :class:`~tokenweight.errors.UserError` naming the available ones. A held-out subset of
the training split is :func:`carve_eval_fraction` (seeded, disjoint, its row indices recorded).

Unreadable files are user errors naming the file and, for JSON lines, the line: an empty file, malformed JSON.
A source that looks like a local path (``./``, ``../``, ``/``, ``~``, a data-file extension, or more than one
``/``) and does not exist is refused at once instead of being tried on the hub.
"""

from __future__ import annotations

import codecs
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from tokenweight.errors import UserError

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def looks_like_local_path(name: str) -> bool:
    """True when ``name`` can only mean a local file or folder, not a hub id (``name`` or ``namespace/name``):
    it starts with ``./``, ``../``, ``/`` or ``~``, ends in a data-file suffix, has more than one ``/`` (or an
    ``os.sep`` other than ``/``), or its first component is a folder here."""
    if name.startswith(("./", "../", "/", "~")) or name.lower().endswith(tuple(FILE_BUILDERS)):
        return True
    if name.count("/") > 1 or (os.sep != "/" and os.sep in name):
        return True
    return "/" in name and Path(name.split("/")[0]).is_dir()


def describe_source(source: Any) -> str:
    """How a results table names a source: ``file x.jsonl``, ``folder data/``, ``hub owner/name``, …"""
    if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        return "in-memory dataset"
    path = Path(os.path.expanduser(str(source)))
    if path.is_file():
        return f"file {source}"
    if path.is_dir():
        return f"folder {source}"
    return f"hub {source}"


def load_preference_split(source: Any, split: str = "train") -> datasets.Dataset:
    """One split of a preference dataset from a ``datasets.Dataset``/``DatasetDict``, a local file
    (``.json``, ``.jsonl``, ``.parquet``, ``.csv``: the split ``train`` only), a local folder (``save_to_disk``
    output or data files) or a hub dataset id. A missing split or file is a :class:`UserError`."""
    if isinstance(source, datasets.Dataset):
        return source
    if isinstance(source, datasets.DatasetDict):
        return _pick_split(source, split, "the given DatasetDict")
    path = Path(os.path.expanduser(str(source)))
    if path.is_file():
        if split != "train":
            raise UserError(f"split {split!r} not found in dataset file {source}: a single file is the one split "
                            "'train' (available: ['train']); hold rows out with --eval_fraction F, or give a "
                            f"folder or hub dataset that has a {split!r} split")
        return load_data_file(path)
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.Dataset):
                if split != "train":
                    raise UserError(f"split {split!r} not found in {source}: a saved single Dataset is the one "
                                    "split 'train' (available: ['train'])")
                return loaded
            return _pick_split(loaded, split, str(source))
        try:
            loaded = datasets.load_dataset(str(path))
        except (FileNotFoundError, ValueError, datasets.exceptions.DatasetGenerationError) as error:
            raise UserError(f"dataset folder {source}: no data `datasets` can read "
                            f"({type(error).__name__}: {str(error).splitlines()[0][:200]})") from error
        return _pick_split(loaded, split, str(source))
    if looks_like_local_path(str(source)):  # checked already for config keys; kept for Python callers
        raise UserError(f"dataset {source}: no such file or folder ({path.absolute()})")
    try:
        return datasets.load_dataset(str(source), split=split)
    except ValueError as error:
        if "Unknown split" in str(error):
            raise UserError(f"split {split!r} not found in hub dataset {source}: {error}") from error
        raise


def _pick_split(dataset_dict: datasets.DatasetDict, split: str, where: str) -> datasets.Dataset:
    if split not in dataset_dict:
        raise UserError(f"split {split!r} not found in {where} (available: {sorted(dataset_dict)}); "
                        "set --dataset_split / --eval_split")
    return dataset_dict[split]


def load_data_file(path: Path) -> datasets.Dataset:
    """The rows of one ``.json``/``.jsonl``/``.parquet``/``.csv`` file; unreadable files name the file (and line)."""
    builder = FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise UserError(f"dataset file {path}: unsupported extension {path.suffix!r} "
                        f"(supported: {sorted(FILE_BUILDERS)})")
    if path.stat().st_size == 0:
        raise UserError(f"dataset file {path} is empty")
    if builder in ("json", "csv"):
        check_utf8(path)
    try:
        loaded = datasets.load_dataset(builder, data_files=str(path), split="train")
    except (StopIteration, datasets.exceptions.DatasetGenerationError, ValueError) as error:
        raise UserError(_unreadable_file_message(path, builder, error)) from error
    if len(loaded) == 0:
        raise UserError(f"dataset file {path} has no rows")
    return loaded


def check_utf8(path: Path, chunk_size: int = 1 << 20) -> None:
    """Refuse a text data file that is not UTF-8, naming the line and byte offset (read in chunks; ``datasets``
    would load it and fail on the first row read)."""
    decoder, offset, lines = codecs.getincrementaldecoder("utf-8")(), 0, 1
    with open(path, "rb") as file:
        while True:
            chunk = file.read(chunk_size)
            pending = decoder.getstate()[0]  # the bytes of a character split across chunks
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as bad:
                start = offset - len(pending) + bad.start
                line = lines + (pending + chunk)[:bad.start].count(b"\n")
                raise UserError(f"dataset file {path}, line {line}: not UTF-8 text (byte 0x{bad.object[bad.start]:02x} "
                                f"at offset {start}); save it as UTF-8") from None
            if not chunk:
                return
            offset, lines = offset + len(chunk), lines + chunk.count(b"\n")


def _unreadable_file_message(path: Path, builder: str, error: BaseException) -> str:
    """Name what is wrong with a file that ``datasets`` could not read: empty, or the first malformed JSON line."""
    if builder == "json":
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            return f"dataset file {path} is empty"
        try:
            json.loads(text)
        except json.JSONDecodeError:
            for number, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    json.loads(line)
                except json.JSONDecodeError as bad:
                    return f"dataset file {path}, line {number}: malformed JSON ({bad.msg}, column {bad.colno})"
    cause = error.__cause__ or error.__context__ or error
    return f"dataset file {path} could not be read: {type(cause).__name__}: {str(cause).splitlines()[0][:200]}"


#: The columns :func:`swap_pairs` exchanges, side by side.
SWAPPED_COLUMNS = {"chosen": "rejected", "rejected": "chosen", "chosen_weights": "rejected_weights",
                   "rejected_weights": "chosen_weights"}


def swap_pairs(dataset: datasets.Dataset) -> datasets.Dataset:
    """``dataset`` with ``chosen`` and ``rejected`` exchanged in every row (and their weight columns, when present):
    the data of TIS-DPO's negative model, DPO-trained to prefer the rejected answers."""
    return dataset.rename_columns({old: new for old, new in SWAPPED_COLUMNS.items() if old in dataset.column_names})


@dataclass
class PreferenceSplits:
    """The raw train and eval rows of a run and how results name them.

    ``eval_rows`` / ``train_rows``: with ``eval_fraction``, the row indices (into the source's training split)
    held out for evaluation and the ones left for training.
    """

    train: datasets.Dataset
    eval: datasets.Dataset | None
    train_name: str
    eval_name: str | None
    eval_rows: list[int] | None = field(default=None)
    train_rows: list[int] | None = field(default=None)
    #: ``{split: pairs}`` whose chosen and rejected were exchanged (``swap_pairs``); empty otherwise.
    swapped_pairs: dict[str, int] = field(default_factory=dict)


def load_splits(source: Any, train_split: str, eval_split: str | None, eval_fraction: float | None = None,
                seed: int = 0) -> PreferenceSplits:
    """Train and eval rows of ``source``: ``eval_split`` from the source, or a seeded ``eval_fraction`` of the
    training split (never both)."""
    if eval_split and eval_fraction:
        raise UserError(f"--eval_split {eval_split} and --eval_fraction {eval_fraction}: give one of them")
    where = describe_source(source)
    held_out = load_preference_split(source, eval_split) if eval_split else None  # a missing split fails first
    train = load_preference_split(source, train_split)
    if eval_fraction:
        train, held_out, eval_rows, train_rows = carve_eval_fraction(train, eval_fraction, seed)
        return PreferenceSplits(train, held_out, f"{train_split} minus eval_fraction ({where}, {len(train)} rows)",
                                fraction_split_name(train_split, eval_fraction, seed, where, len(held_out)),
                                eval_rows, train_rows)
    train_name = f"{train_split} ({where}, {len(train)} rows)"
    if not eval_split:
        return PreferenceSplits(train, None, train_name, None)
    return PreferenceSplits(train, held_out, train_name, f"{eval_split} ({where}, {len(held_out)} rows)")


def fraction_split_name(split: str, fraction: float, seed: int, where: str, rows: int) -> str:
    """``train[eval_fraction 0.1, seed 0] (file x.jsonl, 12 rows)``."""
    return f"{split}[eval_fraction {fraction:g}, seed {seed}] ({where}, {rows} rows)"


def carve_eval_fraction(dataset: datasets.Dataset, fraction: float, seed: int,
                        ) -> tuple[datasets.Dataset, datasets.Dataset, list[int], list[int]]:
    """Split ``dataset`` into ``(train, eval, eval_rows, train_rows)``: ``round(fraction·n)`` (at least 1) rows
    drawn with ``random.Random(seed)`` for eval, the rest (in order) for training; the row lists are sorted."""
    if not 0 < fraction < 1:
        raise UserError(f"--eval_fraction {fraction}: must be between 0 and 1 (exclusive)")
    n = len(dataset)
    count = max(1, round(fraction * n))
    if count >= n:
        raise UserError(f"--eval_fraction {fraction}: leaves no training rows out of {n}")
    eval_rows = sorted(random.Random(seed).sample(range(n), count))
    held = set(eval_rows)
    train_rows = [i for i in range(n) if i not in held]
    return dataset.select(train_rows), dataset.select(eval_rows), eval_rows, train_rows
