"""The rows of the KeyFact table: a label names a scheme with settings overrides, and optionally oracle weights.

- a registered scheme, by its name (``uniform``, ``otpo`` …), at its defaults;
- ``<scheme>:<ablation>``: the scheme with one of its declared :attr:`~tokenweight.weights.tooling.SchemeTooling.ablations`
  (TI-DPO's weights alone, its KL alone), so weighting and regularisation are reported apart;
- ``oracle`` / ``oracle-unit``: the ``column`` scheme fed key-only weights built from the key slot of every pair,
  on chosen and rejected alike: ``oracle`` puts the completion's whole uniform total ``n`` (its token count) on the
  key, ``oracle-unit`` weight 1 (which has the same gradient at the key as plain DPO).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tokenweight.errors import UserError

ORACLE_ROWS = {"oracle": "total", "oracle-unit": "unit"}


@dataclass(frozen=True)
class BenchRow:
    """One table row: ``scheme`` with config ``overrides``; ``oracle`` ``total``/``unit`` adds key-only weight
    columns (:func:`oracle_weights`)."""

    label: str
    scheme: str
    overrides: dict[str, Any] = field(default_factory=dict)
    oracle: str | None = None


def _column_scheme() -> str:
    from tokenweight.weights.column import ColumnScheme
    return ColumnScheme.name


def baseline_label() -> str:
    """The row every other row is compared with: plain DPO."""
    from tokenweight.weights.uniform import UniformScheme
    return UniformScheme.name


def bench_row(label: str) -> BenchRow:
    """The :class:`BenchRow` named ``label``; an unknown scheme or ablation is a :class:`UserError` listing the
    known ones."""
    from tokenweight.weights import SCHEMES

    if label in ORACLE_ROWS:
        return BenchRow(label, _column_scheme(), oracle=ORACLE_ROWS[label])
    name, _, ablation = label.partition(":")
    if name not in SCHEMES:
        raise UserError(f"--schemes: unknown row {label!r}; registered schemes: {sorted(SCHEMES)}, plus "
                        f"{sorted(ORACLE_ROWS)} and <scheme>:<ablation>")
    if SCHEMES[name].tooling.needs_weight_columns and not ablation:
        raise UserError(f"--schemes: {label!r} needs dataset-supplied weight columns, which KeyFact does not have "
                        f"(the oracle rows {sorted(ORACLE_ROWS)} feed it key-only weights)")
    if not ablation:
        return BenchRow(label, name)
    ablations = SCHEMES[name].tooling.ablations
    if ablation not in ablations:
        raise UserError(f"--schemes: scheme {name!r} has no ablation {ablation!r}; it declares "
                        f"{sorted(ablations) or 'none'}")
    return BenchRow(label, name, dict(ablations[ablation]))


def default_schemes() -> list[str]:
    """Every registered scheme that can run on KeyFact: not those needing dataset-supplied weight columns (a scheme
    that needs models trained first, ``trained_models``, gets them trained inside its run:
    :mod:`~tokenweight.keyfact.bench.trained_models`)."""
    from tokenweight.weights import SCHEMES
    return [name for name, scheme in SCHEMES.items() if not scheme.tooling.needs_weight_columns]


def ablation_labels(schemes: list[str]) -> list[str]:
    """``<scheme>:<ablation>`` for every ablation the given schemes declare."""
    from tokenweight.weights import SCHEMES
    return [f"{name}:{ablation}" for name in schemes if name in SCHEMES for ablation in SCHEMES[name].tooling.ablations]


def default_rows() -> list[str]:
    """The full table: every scheme that runs on KeyFact, both oracle rows and every declared ablation."""
    schemes = default_schemes()
    return [*schemes, *ORACLE_ROWS, *ablation_labels(schemes)]


def oracle_weights(tokenizer, row: dict, facts: Any, mode: str) -> dict[str, list[float]]:
    """``{"chosen_weights", "rejected_weights"}``: one weight per completion token (EOS included), 0 except at the
    key slot, which gets the completion's token count (``total``) or 1 (``unit``)."""
    from tokenweight.keyfact import key_slot

    return {f"{side}_weights": oracle_column(*key_slot(tokenizer, row, facts, side), mode)
            for side in ("chosen", "rejected")}


def oracle_column(index: int, length: int, mode: str) -> list[float]:
    """``length`` weights, 0 except at ``index``: ``length`` (``total``) or 1 (``unit``)."""
    weights = [0.0] * length
    weights[index] = float(length) if mode == "total" else 1.0
    return weights
