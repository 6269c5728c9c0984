"""What the commands and the bench read about a scheme, kept apart from what training needs
(:class:`~tokenweight.weights.base.WeightingScheme`): a scheme sets ``tooling = SchemeTooling(...)``; the trainer
and evaluation never read it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PaperClaim:
    """A claim of a scheme's paper, tested on KeyFact as the scheme's row (or its ``ablation`` row) minus plain DPO on
    ``metric``, on ``variant`` or, with ``noise``, as the slope over the label-noise variants; ``direction``: +1 when
    the paper claims the row above plain DPO, -1 below."""

    paper: str
    claim: str
    metric: str
    direction: int
    variant: str = "base"
    noise: bool = False
    ablation: str | None = None


@dataclass(frozen=True)
class SchemeTooling:
    """A scheme's declaration for ``tokenweight train``'s data check, ``precompute`` and ``bench keyfact``.

    Attributes:
        needs_weight_columns: the weights come with the dataset (columns ``chosen_weights``/``rejected_weights``), so
            the scheme cannot run on data without them: ``tokenweight train`` refuses such data, and the KeyFact
            bench (whose data has none) has no row of the scheme.
        trained_models: the models the scheme needs trained first, ``{settings key: run-config overrides}``: each
            entry is a model trained with tokenweight itself from the same base model on the same training data
            under those overrides (TIS-DPO: ``tisdpo_positive_model`` ← ``{"weighting": "uniform"}``,
            ``tisdpo_negative_model`` ← the same with ``"swap_pairs": True``), whose folder the settings key names.
            Non-empty: the scheme cannot run alone; ``tokenweight bench keyfact`` trains each model inside the
            scheme's run, then runs it.
        cache_setting: the config key naming the folder of the cache the scheme's ``prepare`` writes
            (``tokenweight precompute <scheme> --output DIR`` sets it); ``None`` for a scheme without a prepare hook.
        ablations: named settings overrides that isolate one part of the scheme (its weights alone, its extra loss
            terms alone), reported by ``tokenweight bench keyfact`` as rows ``<name>:<ablation>``; empty: nothing to
            separate.
        claims: the claims of the scheme's paper that ``tokenweight bench keyfact`` tests (its "Paper claims" table).
    """

    needs_weight_columns: bool = False
    trained_models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    cache_setting: str | None = None
    ablations: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    claims: tuple[PaperClaim, ...] = ()
