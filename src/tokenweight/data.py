"""Preference data: sources, formats, validation, tokenization and the collator.

Formats (TRL-compatible):

- *standard*: ``prompt``, ``chosen``, ``rejected`` are strings;
- *conversational*: they are lists of ``{"role", "content"}`` messages, rendered with the tokenizer's chat template;
- *implicit prompt*: no ``prompt`` column; the shared leading messages (conversational) or the shared leading
  text, cut back to a whitespace boundary (standard), are the prompt.

Tokenization is TRL's for both formats, so that losses match TRL's DPOTrainer exactly: standard rows tokenize
``prompt`` and ``prompt + completion + eos_token``; conversational rows render ``prompt`` with the generation
prompt and ``prompt + completion`` without it; the completion ids start where the prompt ids end.

Truncation (done once here, never in the collator):

1. ``max_prompt_length``: a longer prompt keeps its **last** ``max_prompt_length`` tokens (cut on the left);
2. ``max_length``: a completion that does not fit after its prompt keeps its **first** tokens (cut on the right);
   a row whose prompt alone reaches ``max_length`` has no completion left and is **dropped**. The counts of
   truncated and dropped rows are logged and returned in :class:`TokenizeStats`.

Optional per-token weight columns ``chosen_weights`` / ``rejected_weights`` (one float per completion token,
EOS included) are validated against the tokenized completions and truncated with them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch

logger = logging.getLogger(__name__)

WEIGHT_COLUMNS = ("chosen_weights", "rejected_weights")
_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


# ----------------------------------------------------------------------------------------------- sources


def load_preference_split(source: Any, split: str = "train") -> datasets.Dataset:
    """One split of a preference dataset from a ``datasets.Dataset``/``DatasetDict``, a local file
    (``.json``, ``.jsonl``, ``.parquet``, ``.csv``), a local folder (``save_to_disk`` output or data files) or a
    hub dataset id."""
    if isinstance(source, datasets.Dataset):
        return source
    if isinstance(source, datasets.DatasetDict):
        return _pick_split(source, split, "the given DatasetDict")
    path = Path(os.path.expanduser(str(source)))
    if path.is_file():
        builder = _FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"dataset file {path}: unsupported extension {path.suffix!r} "
                             f"(supported: {sorted(_FILE_BUILDERS)})")
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            loaded = datasets.load_from_disk(str(path))
            return loaded if isinstance(loaded, datasets.Dataset) else _pick_split(loaded, split, str(path))
        return _pick_split(datasets.load_dataset(str(path)), split, str(path))
    return datasets.load_dataset(str(source), split=split)


def _pick_split(dataset_dict: datasets.DatasetDict, split: str, where: str) -> datasets.Dataset:
    if split not in dataset_dict:
        raise ValueError(f"split {split!r} not found in {where} (available: {sorted(dataset_dict)}); "
                         "set --dataset_split / --eval_split")
    return dataset_dict[split]


# ----------------------------------------------------------------------------------------------- formats


def is_conversational(row: dict) -> bool:
    """True when ``chosen`` is a list of messages."""
    return isinstance(row.get("chosen"), list)


def _check_messages(value: Any, index: int, column: str) -> None:
    if not isinstance(value, list) or not value:
        raise ValueError(f"row {index}, column {column!r}: expected a non-empty list of messages, "
                         f"got {type(value).__name__}")
    for k, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"row {index}, column {column!r}, message {k}: expected a dict with 'role' and "
                             f"'content', got {message!r:.80}")
        if not isinstance(message["content"], str):
            raise ValueError(f"row {index}, column {column!r}, message {k}: 'content' must be a string")


def split_implicit_prompt(row: dict) -> dict:
    """Return ``row`` with an explicit ``prompt``: the shared leading messages, or for strings the shared
    leading text cut back to the last whitespace (so the completion starts with the separating space)."""
    chosen, rejected = row["chosen"], row["rejected"]
    if isinstance(chosen, list):
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        return {**row, "prompt": chosen[:n], "chosen": chosen[n:], "rejected": rejected[n:]}
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    while n > 0 and not chosen[n - 1].isspace() and n < len(chosen) and not chosen[n].isspace():
        n -= 1
    while n > 0 and chosen[n - 1].isspace():
        n -= 1
    return {**row, "prompt": chosen[:n], "chosen": chosen[n:], "rejected": rejected[n:]}


def validate_row(row: dict, index: int) -> None:
    """Raise ``ValueError`` naming the row and column for any malformed preference row."""
    for column in ("prompt", "chosen", "rejected"):
        if column not in row:
            raise ValueError(f"row {index}: missing column {column!r} (columns: {sorted(row)})")
    conversational = is_conversational(row)
    for column in ("prompt", "chosen", "rejected"):
        value = row[column]
        if conversational:
            if column == "prompt" and value == []:
                raise ValueError(f"row {index}, column 'prompt': no prompt messages (chosen and rejected share "
                                 "no leading message)")
            _check_messages(value, index, column)
            if column != "prompt" and not "".join(m["content"] for m in value).strip():
                raise ValueError(f"row {index}, column {column!r}: empty completion")
        else:
            if not isinstance(value, str):
                raise ValueError(f"row {index}, column {column!r}: expected a string (standard format) or a "
                                 f"list of messages (conversational), got {type(value).__name__}")
            if column != "prompt" and not value.strip():
                raise ValueError(f"row {index}, column {column!r}: empty completion")


# ----------------------------------------------------------------------------------------------- tokenization


def _common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _as_ids(encoded: Any) -> list[int]:
    if isinstance(encoded, dict) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return list(encoded)


def tokenize_row(row: dict, index: int, tokenizer) -> dict:
    """Token ids of one validated row: ``prompt_ids``, ``chosen_ids``, ``rejected_ids`` (TRL's tokenization)."""
    if is_conversational(row):
        prompt_ids = _as_ids(tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True,
                                                           tokenize=True))
        full = {c: _as_ids(tokenizer.apply_chat_template(row["prompt"] + row[c], tokenize=True))
                for c in ("chosen", "rejected")}
        for column, ids in full.items():
            if ids[:len(prompt_ids)] != prompt_ids:
                raise ValueError(f"row {index}, column {column!r}: the chat template renders the prompt "
                                 "differently when a completion follows (the rendered prompt is not a prefix of "
                                 "the rendered conversation); fix the chat template or the messages")
        prompt_len = len(prompt_ids)
    else:
        eos = tokenizer.eos_token or ""
        prompt_ids = _as_ids(tokenizer(row["prompt"]))
        full = {}
        for column in ("chosen", "rejected"):
            text = row[column] if row[column].endswith(eos) else row[column] + eos
            full[column] = _as_ids(tokenizer(row["prompt"] + text))
        prompt_len = min(_common_prefix_length(prompt_ids, ids) for ids in full.values())
    return {"prompt_ids": prompt_ids[:prompt_len],
            "chosen_ids": full["chosen"][prompt_len:], "rejected_ids": full["rejected"][prompt_len:]}


@dataclass
class TokenizeStats:
    """What tokenization did to a dataset (also logged)."""

    rows: int = 0
    dropped_too_long: list[int] = field(default_factory=list)
    prompt_truncated: int = 0
    completion_truncated: int = 0
    identical_pairs: int = 0

    def summary(self, name: str) -> str:
        return (f"{name}: {self.rows} rows, {len(self.dropped_too_long)} dropped (prompt fills max_length), "
                f"{self.prompt_truncated} prompts cut on the left (max_prompt_length), "
                f"{self.completion_truncated} completions cut on the right (max_length), "
                f"{self.identical_pairs} pairs with identical chosen and rejected")


def tokenize_preference_dataset(dataset: datasets.Dataset, tokenizer, max_length: int | None = None,
                                max_prompt_length: int | None = None, name: str = "train",
                                ) -> tuple[datasets.Dataset, TokenizeStats]:
    """Validate and tokenize every row; returns the tokenized dataset and its :class:`TokenizeStats`.

    Added columns: ``prompt_ids``, ``chosen_ids``, ``rejected_ids`` (lists of ints), ``row_index`` (the row's
    index in ``dataset``); ``chosen_weights``/``rejected_weights`` are checked and truncated when present. Other
    columns are kept. Rows with no completion left after truncation are removed (their indices are in
    ``stats.dropped_too_long``).
    """
    if len(dataset) == 0:
        raise ValueError(f"{name} dataset is empty")
    columns = set(dataset.column_names)
    for column in ("chosen", "rejected"):
        if column not in columns:
            raise ValueError(f"{name} dataset is missing column {column!r} (columns: {sorted(columns)})")
    if (("chosen_weights" in columns) != ("rejected_weights" in columns)):
        raise ValueError(f"{name} dataset has only one of the columns {WEIGHT_COLUMNS}; give both")
    stats = TokenizeStats(rows=len(dataset))
    rows = []
    for index, row in enumerate(dataset):
        if "prompt" not in row:
            row = split_implicit_prompt(row)
        validate_row(row, index)
        if row["chosen"] == row["rejected"]:
            stats.identical_pairs += 1
        tokens = tokenize_row(row, index, tokenizer)
        for column in WEIGHT_COLUMNS:
            if column in row:
                tokens[column] = _checked_weights(row[column], len(tokens[column.replace("weights", "ids")]),
                                                  index, column)
        if not _truncate(tokens, max_length, max_prompt_length, stats):
            stats.dropped_too_long.append(index)
            continue
        rows.append({**row, **tokens, "row_index": index})
    if stats.identical_pairs:
        logger.warning("%s: %d pairs have identical chosen and rejected completions; they carry no preference "
                       "signal (kept, counted)", name, stats.identical_pairs)
    logger.info(stats.summary(name))
    if not rows:
        raise ValueError(f"{name} dataset: every row was dropped because its prompt fills max_length="
                         f"{max_length}; raise max_length or set max_prompt_length")
    return datasets.Dataset.from_list(rows), stats


def _checked_weights(weights: Any, expected: int, index: int, column: str) -> list[float]:
    if not isinstance(weights, (list, tuple)):
        raise ValueError(f"row {index}, column {column!r}: expected a list of floats, got {type(weights).__name__}")
    if len(weights) != expected:
        raise ValueError(f"row {index}, column {column!r}: {len(weights)} weights for {expected} completion "
                         "tokens (one weight per completion token, EOS included)")
    values = [float(w) for w in weights]
    if any(not (w >= 0 and w < float("inf")) for w in values):
        raise ValueError(f"row {index}, column {column!r}: weights must be finite and non-negative")
    return values


def _truncate(tokens: dict, max_length: int | None, max_prompt_length: int | None, stats: TokenizeStats) -> bool:
    """Apply the truncation rules in place; False when the row has no completion left."""
    if max_prompt_length is not None and len(tokens["prompt_ids"]) > max_prompt_length:
        tokens["prompt_ids"] = tokens["prompt_ids"][-max_prompt_length:]
        stats.prompt_truncated += 1
    if max_length is None:
        return True
    room = max_length - len(tokens["prompt_ids"])
    if room <= 0:
        return False
    cut = False
    for side in ("chosen", "rejected"):
        if len(tokens[f"{side}_ids"]) > room:
            cut = True
            tokens[f"{side}_ids"] = tokens[f"{side}_ids"][:room]
            if f"{side}_weights" in tokens:
                tokens[f"{side}_weights"] = tokens[f"{side}_weights"][:room]
    stats.completion_truncated += cut
    return True


# ----------------------------------------------------------------------------------------------- collator


#: Per-completion-token float columns a row may carry (``chosen_<name>`` / ``rejected_<name>``, one value per
#: completion token) and the ``[2B, L]`` batch tensor the collator lays each out as.
TOKEN_COLUMNS = {"weights": "token_weights", "ref_logps": "ref_token_logps"}


@dataclass
class PreferenceCollator:
    """Stack ``B`` tokenized pairs into one right-padded ``[2B, L]`` batch: chosen rows, then rejected rows.

    Returns ``input_ids`` and ``attention_mask`` ``[2B, L]``, ``completion_mask`` ``[2B, L]`` (1 on completion
    tokens) and ``row_index`` ``[B]``. Rows carrying per-token columns (:data:`TOKEN_COLUMNS`) also give
    ``token_weights`` (dataset or cached weights) and/or ``ref_token_logps`` (precomputed reference log-probs)
    ``[2B, L]``: each completion token's value at its position, 0 on prompt and padding.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        present = [name for name in TOKEN_COLUMNS if f"chosen_{name}" in rows[0]]
        sequences, completion = [], []
        values = {name: [] for name in present}
        for side in ("chosen", "rejected"):
            for row in rows:
                prompt, answer = row["prompt_ids"], row[f"{side}_ids"]
                sequences.append(list(prompt) + list(answer))
                completion.append([0] * len(prompt) + [1] * len(answer))
                for name in present:
                    values[name].append([0.0] * len(prompt) + list(row[f"{side}_{name}"]))
        length = max(len(s) for s in sequences)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {
            "input_ids": _pad(sequences, length, self.pad_token_id, torch.long),
            "attention_mask": _pad([[1] * len(s) for s in sequences], length, 0, torch.long),
            "completion_mask": _pad(completion, length, 0, torch.long),
            "row_index": torch.tensor([row.get("row_index", -1) for row in rows], dtype=torch.long),
        }
        for name in present:
            batch[TOKEN_COLUMNS[name]] = _pad(values[name], length, 0.0, torch.float32)
        return batch


def _pad(rows: list[list], length: int, value, dtype: torch.dtype) -> torch.Tensor:
    out = torch.full((len(rows), length), value, dtype=dtype)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row, dtype=dtype)
    return out
