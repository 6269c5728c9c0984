"""Preference data: formats, validation, tokenization and the collator (sources: :mod:`tokenweight.sources`).

Formats (TRL-compatible):

- *standard*: ``prompt``, ``chosen``, ``rejected`` are strings;
- *conversational*: they are lists of ``{"role", "content"}`` messages, rendered with the tokenizer's chat template;
- *implicit prompt*: no ``prompt`` column, or (TRL's rule) a string ``prompt`` beside conversational ``chosen`` /
  ``rejected`` that repeat the user turn; the shared leading messages (conversational) or the shared leading
  text, cut back to a whitespace boundary (standard), are the prompt.

Every row of a dataset has one format. Messages have a known role (:data:`KNOWN_ROLES`); a completion starts with
an ``assistant`` message and the prompt does not end with one. A malformed row is a
:class:`~tokenweight.errors.UserError` naming the split, the row (0-based) and the column.

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
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import datasets
import torch

from tokenweight.errors import UserError
from tokenweight.masks import to_shifted
from tokenweight.sources import load_preference_split  # noqa: F401  (re-exported: the public loading entry)

logger = logging.getLogger(__name__)

WEIGHT_COLUMNS = ("chosen_weights", "rejected_weights")


# ----------------------------------------------------------------------------------------------- formats

#: Roles a message may have; a conversational completion starts with an ``assistant`` message.
KNOWN_ROLES = ("system", "developer", "user", "assistant", "tool", "ipython", "function")


def is_conversational(row: dict) -> bool:
    """True when ``chosen`` is a list of messages."""
    return isinstance(row.get("chosen"), list)


def _check_messages(value: Any, index: int, column: str) -> None:
    if not isinstance(value, list) or not value:
        raise UserError(f"row {index}, column {column!r}: expected a non-empty list of messages, "
                        f"got {_describe(value)}")
    for k, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise UserError(f"row {index}, column {column!r}, message {k}: expected a dict with 'role' and "
                            f"'content', got {_describe(message)}")
        if message["role"] not in KNOWN_ROLES:
            raise UserError(f"row {index}, column {column!r}, message {k}: unknown role {_describe(message['role'])}"
                            f" (known roles: {', '.join(KNOWN_ROLES)})")
        if not isinstance(message["content"], str):
            raise UserError(f"row {index}, column {column!r}, message {k}: 'content' must be a string, got "
                            f"{_describe(message['content'])}")


def _describe(value: Any) -> str:
    """A short, one-line description of a bad value for an error message."""
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return text if isinstance(value, (str, int, float, bool, type(None))) else f"{type(value).__name__} {text}"


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


def with_explicit_prompt(row: dict) -> dict:
    """TRL's prompt rules: a row without ``prompt``, or with a string ``prompt`` beside conversational
    ``chosen``/``rejected`` (which then repeat the user turn, as in ``HuggingFaceH4/ultrafeedback_binarized``),
    has an implicit prompt: the shared leading messages (:func:`split_implicit_prompt`). Other rows are kept."""
    if "chosen" not in row or "rejected" not in row:
        return row
    if "prompt" not in row:
        if isinstance(row["chosen"], (str, list)) and type(row["chosen"]) is type(row["rejected"]):
            return split_implicit_prompt(row)
        return row
    if isinstance(row["prompt"], str) and isinstance(row["chosen"], list) and isinstance(row["rejected"], list):
        return split_implicit_prompt(row)
    return row


def validate_row(row: dict, index: int) -> None:
    """Raise :class:`UserError` naming the row and column for any malformed preference row."""
    for column in ("prompt", "chosen", "rejected"):
        if column not in row:
            raise UserError(f"row {index}: missing column {column!r} (columns: {sorted(row)})")
    conversational = is_conversational(row)
    for column in ("prompt", "chosen", "rejected"):
        value = row[column]
        if conversational:
            if column == "prompt" and value == []:
                raise UserError(f"row {index}, column 'prompt': no prompt messages (chosen and rejected share "
                                "no leading message)")
            _check_messages(value, index, column)
            if column != "prompt" and not "".join(m["content"] for m in value).strip():
                raise UserError(f"row {index}, column {column!r}: empty completion")
        else:
            if not isinstance(value, str):
                raise UserError(f"row {index}, column {column!r}: expected a string (standard format) or a "
                                f"list of messages (conversational), got {_describe(value)}"
                                + (" while 'chosen' is a string" if isinstance(value, list) else ""))
            if column != "prompt" and not value.strip():
                raise UserError(f"row {index}, column {column!r}: empty completion")
    if conversational:
        _check_role_order(row, index)


def _check_role_order(row: dict, index: int) -> None:
    """A conversational completion answers the prompt: it starts with an ``assistant`` message, and the prompt
    does not end with one."""
    if row["prompt"][-1]["role"] == "assistant":
        raise UserError(f"row {index}, column 'prompt': the prompt ends with an 'assistant' message (roles "
                        f"{_roles(row['prompt'])}); the last prompt message must be the turn the completion answers "
                        "(user, system or tool)")
    for column in ("chosen", "rejected"):
        if row[column][0]["role"] != "assistant":
            raise UserError(f"row {index}, column {column!r}: a completion must start with an 'assistant' message, "
                            f"got roles {_roles(row[column])} after the prompt's {_roles(row['prompt'])}")


def _roles(messages: list[dict]) -> str:
    return "[" + ", ".join(str(m["role"]) for m in messages) + "]"


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


def _render(tokenizer, messages: list[dict], index: int, column: str, **kwargs) -> list[int]:
    """Chat-template token ids of ``messages``; a template error names the row and column."""
    try:
        return _as_ids(tokenizer.apply_chat_template(messages, tokenize=True, **kwargs))
    except Exception as error:  # jinja2 TemplateError (raise_exception in the template), missing template …
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"row {index}, column {column!r}: the chat template refused the messages (roles "
                        f"{_roles(messages)}): {message}") from error


def tokenize_row(row: dict, index: int, tokenizer) -> dict:
    """Token ids of one validated row: ``prompt_ids``, ``chosen_ids``, ``rejected_ids`` (TRL's tokenization)."""
    if is_conversational(row):
        prompt_ids = _render(tokenizer, row["prompt"], index, "prompt", add_generation_prompt=True)
        full = {c: _render(tokenizer, row["prompt"] + row[c], index, c) for c in ("chosen", "rejected")}
        for column, ids in full.items():
            if ids[:len(prompt_ids)] != prompt_ids:
                raise UserError(f"row {index}, column {column!r}: the chat template renders the prompt (roles "
                                f"{_roles(row['prompt'])}, with the generation prompt) differently when the "
                                f"completion (roles {_roles(row[column])}) follows, so the completion's tokens "
                                "cannot be told apart; fix the chat template or the messages")
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


def with_pair_lengths(dataset: datasets.Dataset, column: str) -> datasets.Dataset:
    """The tokenized ``dataset`` with ``column``: each pair's padded length in a batch, ``len(prompt) +
    max(len(chosen), len(rejected))`` (what transformers' ``group_by_length`` sampler groups by); unchanged when the
    column exists."""
    if column in dataset.column_names:
        return dataset
    lengths = [len(p) + max(len(c), len(r)) for p, c, r in
               zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"])]
    return dataset.add_column(column, lengths)


@dataclass
class TokenizeStats:
    """What tokenization did to a dataset (also logged, printed by the CLI and written to ``results.json``)."""

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

    def warnings(self, name: str) -> list[str]:
        """One ``warning: …`` line per non-zero count that changes what is trained on."""
        lines = []
        if self.dropped_too_long:
            shown = self.dropped_too_long[:10]
            lines.append(f"warning: {name}: {len(self.dropped_too_long)} of {self.rows} rows dropped because the "
                         f"prompt fills max_length (rows {shown}{' …' if len(self.dropped_too_long) > 10 else ''})")
        if self.prompt_truncated:
            lines.append(f"warning: {name}: {self.prompt_truncated} prompts cut on the left to max_prompt_length")
        if self.completion_truncated:
            lines.append(f"warning: {name}: {self.completion_truncated} pairs with a completion cut on the right "
                         "to max_length")
        if self.identical_pairs:
            lines.append(f"warning: {name}: {self.identical_pairs} pairs have identical chosen and rejected "
                         "completions (no preference signal; kept)")
        return lines

    def as_dict(self) -> dict:
        """The counts for ``results.json`` (``dropped`` is the count, ``dropped_rows`` the row indices)."""
        values = asdict(self)
        values["dropped_rows"] = values.pop("dropped_too_long")
        values["dropped"] = len(values["dropped_rows"])
        return values


def tokenize_preference_dataset(dataset: datasets.Dataset, tokenizer, max_length: int | None = None,
                                max_prompt_length: int | None = None, name: str = "train",
                                source_rows: Sequence[int] | None = None, signed_weights: bool = False,
                                ) -> tuple[datasets.Dataset, TokenizeStats]:
    """Validate and tokenize every row; returns the tokenized dataset and its :class:`TokenizeStats`.

    Added columns: ``prompt_ids``, ``chosen_ids``, ``rejected_ids`` (lists of ints), ``row_index`` (the row's
    index in ``dataset``); ``chosen_weights``/``rejected_weights`` are checked and truncated when present. Other
    columns are kept. Rows with no completion left after truncation are removed (their indices are in
    ``stats.dropped_too_long``). A malformed row is a :class:`UserError` naming ``name``, the row and the column;
    ``source_rows`` (when ``dataset`` is a subset of a file) maps row indices to the numbers errors show;
    ``signed_weights`` accepts negative weights (a scheme whose ``signed_weights`` is set, TGDPO).
    """
    try:
        return _tokenize(dataset, tokenizer, max_length, max_prompt_length, name, source_rows, signed_weights)
    except UserError as error:
        raise UserError(f"{name}: {error}") from error


def _tokenize(dataset, tokenizer, max_length, max_prompt_length, name, source_rows, signed_weights):
    if len(dataset) == 0:
        raise UserError("the dataset has no rows")
    columns = set(dataset.column_names)
    for column in ("chosen", "rejected"):
        if column not in columns:
            raise UserError(f"missing column {column!r} (columns: {sorted(columns)})")
    if (("chosen_weights" in columns) != ("rejected_weights" in columns)):
        raise UserError(f"only one of the columns {WEIGHT_COLUMNS} is present; give both")
    stats = TokenizeStats(rows=len(dataset))
    rows, first_format = [], None
    for index, row in enumerate(dataset):
        label = source_rows[index] if source_rows is not None else index
        row = with_explicit_prompt(row)
        validate_row(row, label)
        row_format = "conversational" if is_conversational(row) else "standard"
        first_format = first_format or (row_format, label)
        if row_format != first_format[0]:
            raise UserError(f"row {label}: a {row_format} row (chosen is "
                            f"{'a list of messages' if row_format == 'conversational' else 'a string'}) after "
                            f"{first_format[0]} rows (row {first_format[1]}); use one format for the whole dataset")
        if row["chosen"] == row["rejected"]:
            stats.identical_pairs += 1
        tokens = tokenize_row(row, label, tokenizer)
        for column in WEIGHT_COLUMNS:
            if column in row:
                tokens[column] = _checked_weights(row[column], len(tokens[column.replace("weights", "ids")]),
                                                  label, column, signed_weights)
        if not _truncate(tokens, max_length, max_prompt_length, stats):
            stats.dropped_too_long.append(index)
            continue
        rows.append({**row, **tokens, "row_index": index})
    if stats.identical_pairs:
        logger.warning("%s: %d pairs have identical chosen and rejected completions; they carry no preference "
                       "signal (kept, counted)", name, stats.identical_pairs)
    logger.info(stats.summary(name))
    if not rows:
        raise UserError(f"every row was dropped because its prompt fills max_length={max_length}; raise "
                        "max_length or set max_prompt_length")
    _check_column_types(rows, source_rows)
    return datasets.Dataset.from_list(rows), stats


def _check_column_types(rows: list[dict], source_rows: Sequence[int] | None) -> None:
    """Every extra column must hold one type (numbers and nulls mix with anything of their kind)."""
    kinds: dict[str, tuple[str, int]] = {}
    for k, row in enumerate(rows):
        for column, value in row.items():
            if value is None:
                continue
            kind = "number" if isinstance(value, (int, float)) and not isinstance(value, bool) else type(value).__name__
            label = source_rows[row["row_index"]] if source_rows is not None else row["row_index"]
            first = kinds.setdefault(column, (kind, label))
            if first[0] != kind:
                raise UserError(f"row {label}, column {column!r}: a {kind} where row {first[1]} has a {first[0]} "
                                "(a column holds one type)")


def print_data_summary(stats: TokenizeStats, name: str, file=None) -> None:
    """The CLI's one-line data summary of a split, then one ``warning:`` line per non-zero drop/truncation/identical
    count, on stderr (stdout carries the results)."""
    file = file or sys.stderr
    print(f"data {stats.summary(name)}", file=file)
    for line in stats.warnings(name):
        print(line, file=file)


def _checked_weights(weights: Any, expected: int, index: int, column: str, signed: bool = False) -> list[float]:
    if not isinstance(weights, (list, tuple)):
        raise UserError(f"row {index}, column {column!r}: expected a list of floats, got {_describe(weights)}")
    if len(weights) != expected:
        raise UserError(f"row {index}, column {column!r}: {len(weights)} weights for {expected} completion "
                        "tokens (one weight per completion token, EOS included)")
    if not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights):
        raise UserError(f"row {index}, column {column!r}: weights must be numbers")
    values = [float(w) for w in weights]
    if any(not (abs(w) < float("inf") if signed else 0 <= w < float("inf")) for w in values):
        raise UserError(f"row {index}, column {column!r}: weights must be finite"
                        f"{'' if signed else ' and non-negative'}")
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
#: completion token) and the ``[2B, L-1]`` (shifted) batch tensor the collator lays each out as.
TOKEN_COLUMNS = {"weights": "token_weights", "ref_logps": "ref_token_logps"}


@dataclass
class PreferenceCollator:
    """Stack ``B`` tokenized pairs into one right-padded ``[2B, L]`` batch: chosen rows, then rejected rows.

    Returns ``input_ids`` and ``attention_mask`` ``[2B, L]``, ``completion_mask`` ``[2B, L]`` (1 on completion
    tokens), ``loss_mask`` ``[2B, L-1]`` bool (``completion_mask`` in the shifted alignment of
    :func:`tokenweight.masks.to_shifted`: index ``t`` is token ``t + 1``) and ``row_index`` ``[B]``. Rows carrying
    per-token columns (:data:`TOKEN_COLUMNS`) also give ``token_weights`` (dataset or cached weights) and/or
    ``ref_token_logps`` (precomputed reference log-probs) ``[2B, L-1]``, shifted like ``loss_mask``: each
    completion token's value at the position that predicts it, 0 on prompt and padding (and the value of a
    completion token at position 0, which no position predicts, is dropped).
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
        batch["loss_mask"] = to_shifted(batch["completion_mask"]).bool()
        for name in present:
            batch[TOKEN_COLUMNS[name]] = to_shifted(_pad(values[name], length, 0.0, torch.float32))
        return batch


def _pad(rows: list[list], length: int, value, dtype: torch.dtype) -> torch.Tensor:
    out = torch.full((len(rows), length), value, dtype=dtype)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row, dtype=dtype)
    return out
