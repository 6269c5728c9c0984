"""On-disk cache of per-token log-ratios of two models (TIS-DPO's r̂ = log π₊ − log π₋; SePO's oracle scores), one
folder per split. Which models, which format name and which flag name the messages come from the
:class:`Contrast` (TIS-DPO's by default).

Layout::

    manifest.json         format, fingerprint (positive model, negative model, tokenizer, dataset rows), row count,
                          SHA-256 of the rewards file
    rewards.safetensors   flat fp32 r̂ of every chosen and rejected completion token + per-row lengths

The rewards, not the weights, are cached, so another transform (``tisdpo_transform``, ``tisdpo_preset`` …) reuses
them without a model pass. The rewards file is written first and the manifest last (both atomically), so a folder
with a manifest is complete; a manifest whose fingerprint differs from the run's (other contrastive models, another
tokenizer, other data) is refused naming the file and the differing parts. One file, not resumable shards: the pass
costs two forwards per response (the attention cache's shards exist for a judge pass that may run for hours).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError

from tokenweight.cache_files import (decode_pair_rows, encode_pair_rows, read_json_manifest, write_atomic,
                                     write_json_manifest)
from tokenweight.errors import UserError
from tokenweight.fingerprint import fingerprint_differences

FORMAT = "tokenweight-tisdpo-rewards/1"
MANIFEST = "manifest.json"
REWARDS = "rewards.safetensors"
PARTS = ("positive_model", "negative_model", "tokenizer", "dataset")


#: The config keys of the two contrastive models, in the order they are loaded.
MODEL_KEYS = {"positive_model": "tisdpo_positive_model", "negative_model": "tisdpo_negative_model"}


@dataclass(frozen=True)
class Contrast:
    """What a per-token log-ratio ``log π_a − log π_b`` is made of.

    ``models``: ``{fingerprint part: config key}`` of π_a then π_b; ``batch_size_setting``: the config
    key of the pairs per forward; ``cache_setting``: the flag of the cache folder; ``format``: the cache format name;
    ``label``: the words that name it in messages (its first word the method); ``models_name``: the two models, in
    messages; ``flags``: ``{config key: flag}`` named when a model is missing (default ``--`` + the key without the
    scheme's prefix, the settings' alias); ``scheme``: the ``weighting`` value, for messages; ``how``: where
    the user learns to make the models (appended to a missing-model error)."""

    models: dict
    batch_size_setting: str
    cache_setting: str
    format: str
    label: str
    scheme: str
    how: str
    models_name: str
    flags: dict | None = None
    settings: tuple = ()

    @property
    def parts(self) -> tuple[str, ...]:
        """The fingerprint parts of a cache: both models, the tokenizer, the rows, and the config keys in
        ``settings`` that change the scores (cDPO's contrast strength)."""
        return (*self.models, "tokenizer", "dataset", *self.settings)


TISDPO_CONTRAST = Contrast(models=MODEL_KEYS, batch_size_setting="tisdpo_batch_size",
                           cache_setting="tisdpo_weights", format=FORMAT, label="TIS-DPO reward", scheme="tisdpo",
                           how="see the TIS-DPO pipeline in the README",
                           models_name="TIS-DPO contrastive models")


def read_manifest(folder: Path, contrast=None) -> dict | None:
    """The manifest of the cache ``folder``, ``None`` when there is none; another format is a :class:`UserError`."""
    contrast = contrast or TISDPO_CONTRAST
    path = Path(folder) / MANIFEST
    return read_json_manifest(
        path, contrast.format,
        damaged=lambda error: UserError(f"{contrast.label} cache {path} is damaged ({error}); delete the folder to "
                                        "recompute"),
        mismatch=lambda found: UserError(f"{path} is not a tokenweight {contrast.label} cache of format "
                                         f"{contrast.format!r}; delete the folder or choose another "
                                         f"--{contrast.cache_setting}"))


def check_fingerprint(manifest: dict, expected: dict, folder: Path, parts: tuple[str, ...] | None = None,
                      contrast=None) -> None:
    """Raise :class:`UserError` naming the manifest and every part of ``parts`` (default: all of the contrast's) where
    it differs from ``expected``."""
    contrast = contrast or TISDPO_CONTRAST
    differing, details = fingerprint_differences(manifest["fingerprint"], expected, parts or contrast.parts)
    if differing:
        raise UserError(f"{contrast.label} cache {Path(folder) / MANIFEST} is stale: computed for a different "
                        f"{', '.join(differing)} ({details}); delete the folder or choose another "
                        f"--{contrast.cache_setting} to recompute")


def write_rewards(folder: Path, fingerprint: dict, chosen: list[list[float]], rejected: list[list[float]],
                  contrast=None) -> None:
    """Write the rewards file, then the manifest naming its checksum."""
    contrast = contrast or TISDPO_CONTRAST
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = encode_pair_rows(chosen, rejected)
    write_atomic(folder / REWARDS, data)
    manifest = {"format": contrast.format, "fingerprint": fingerprint, "num_rows": len(chosen),
                "sha256": hashlib.sha256(data).hexdigest()}
    write_json_manifest(folder / MANIFEST, manifest)


def read_rewards(folder: Path, manifest: dict, contrast=None) -> tuple[list[list[float]], list[list[float]]]:
    """Per-row ``(chosen, rejected)`` rewards of a cache whose fingerprint was checked; a missing or damaged rewards
    file is a :class:`UserError` naming it."""
    label = (contrast or TISDPO_CONTRAST).label
    path = Path(folder) / REWARDS
    data = path.read_bytes() if path.exists() else None
    if data is None or hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        raise UserError(f"{label} cache {path} is {'missing' if data is None else 'damaged'} (checksum in "
                        f"{MANIFEST}); delete the folder to recompute")
    try:
        chosen, rejected = decode_pair_rows(data)
    except (SafetensorError, KeyError, RuntimeError) as error:
        raise UserError(f"{label} cache {path} is unreadable ({error})") from None
    return chosen, rejected
