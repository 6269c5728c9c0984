"""``tisdpo``: TIS-DPO token weights from two contrastive models, computed once and cached (specs/related.md §4).

Paper: Liu et al., ICLR 2025, arXiv 2410.04350; upstream code https://github.com/exlaw/TIS-DPO. The weights come
from the token rewards r̂ = log π₊ − log π₋ (:mod:`.rewards`, cached by :mod:`.cache`) through a transform
(:mod:`.transforms`: upstream's rounding, EOS weight 0, ``rank_based`` by default). :meth:`TISDPOScheme.prepare` adds
them to the raw rows as ``chosen_weights`` /
``rejected_weights``, so they reach the batch as dataset-supplied weights do (the ``column`` path); the loss is the
weighted DPO L = −log σ(β [Σ_t w^w_t ρ^w_t − Σ_t w^l_t ρ^l_t]) (β 0.1). Upstream's optional token-level KL term
(``token_level``, off by default) is left out.

The pipeline (README "TIS-DPO pipeline"): π₊ = DPO on the data, π₋ = DPO on the swapped pairs (``--swap_pairs
true``), ``tokenweight precompute tisdpo --positive_model P --negative_model N --output DIR``, then ``tokenweight
train --weighting tisdpo --positive_model P --negative_model N --tisdpo_weights DIR``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import datasets

from tokenweight.errors import UserError
from tokenweight.weights.base import PrepareContext, register_scheme
from tokenweight.weights.column import ColumnScheme
from tokenweight.weights.tisdpo.rewards import MODEL_KEYS, split_rewards
from tokenweight.weights.tisdpo.transforms import PRESETS, TRANSFORMS, Transform, response_weights
from tokenweight.weights.tooling import SchemeTooling
from tokenweight.weights.uniform import UniformScheme


@dataclass
class TISDPOSettings:
    """TIS-DPO's flags: the contrastive models, the cache folder, the transform."""

    tisdpo_positive_model: str | None = field(default=None, metadata={
        "aliases": ["--positive_model"], "help": "The positive contrastive model pi+ (DPO-trained; required)."})
    tisdpo_negative_model: str | None = field(default=None, metadata={
        "aliases": ["--negative_model"],
        "help": "The negative contrastive model pi- (DPO on swapped pairs, --swap_pairs true; required)."})
    tisdpo_weights: str | None = field(default=None, metadata={
        "help": "Folder of the cached token rewards (default output_dir/tisdpo-weights; computed there when "
                "missing, other splits in sub-folders)."})
    tisdpo_transform: str = field(default="rank_based", metadata={
        "help": "Scores -> weights, as upstream defines them: rank_based (default, upstream's README command; "
                "stable ranks onto the weight range), threshold_and_scale or binary (the top --tisdpo_top_percent "
                "percent of a response's tokens 1, the rest 0); EOS weighs 0."})
    tisdpo_preset: str = field(default="default", metadata={
        "help": "Upstream's ranges: default ([-1.5, 1.5] -> [0.7, 1.3], top 100 percent) or aggressive ([-2, 2] "
                "-> [0.5, 1.5], top 50 percent)."})
    tisdpo_score_min: float | None = field(default=None, metadata={"help": "Lower clip of the scores (preset's)."})
    tisdpo_score_max: float | None = field(default=None, metadata={"help": "Upper clip of the scores (preset's)."})
    tisdpo_weight_min: float | None = field(default=None, metadata={"help": "Smallest weight (preset's)."})
    tisdpo_weight_max: float | None = field(default=None, metadata={"help": "Largest weight (preset's)."})
    tisdpo_top_percent: float | None = field(default=None, metadata={
        "help": "binary: the percentage of a response's tokens (by score) that weigh 1, the rest 0 (preset's: 100, "
                "aggressive 50)."})
    tisdpo_batch_size: int = field(default=8, metadata={"help": "Pairs per contrastive-model forward."})

    def __post_init__(self):
        if self.tisdpo_transform not in TRANSFORMS:
            raise UserError(f"config key `tisdpo_transform`: {self.tisdpo_transform!r} is not one of "
                            f"{', '.join(TRANSFORMS)}")
        if self.tisdpo_preset not in PRESETS:
            raise UserError(f"config key `tisdpo_preset`: {self.tisdpo_preset!r} is not one of {', '.join(PRESETS)}")
        if self.tisdpo_batch_size < 1:
            raise UserError(f"config key `tisdpo_batch_size` must be at least 1, got {self.tisdpo_batch_size}")
        transform = resolve_transform(self)
        if not transform.score_min < transform.score_max:
            raise UserError(f"config keys `tisdpo_score_min` < `tisdpo_score_max` needed, got {transform.score_min} "
                            f"and {transform.score_max}")
        if not 0 <= transform.weight_min <= transform.weight_max:
            raise UserError(f"config keys 0 <= `tisdpo_weight_min` <= `tisdpo_weight_max` needed, got "
                            f"{transform.weight_min} and {transform.weight_max}")
        if not 0 <= transform.top_percent <= 100:
            raise UserError(f"config key `tisdpo_top_percent` must be in [0, 100], got {transform.top_percent}")


def resolve_transform(settings) -> Transform:
    """The :class:`Transform` of ``settings`` (the preset's values unless a ``tisdpo_score_*`` /
    ``tisdpo_weight_*`` / ``tisdpo_top_percent`` key is set)."""
    keys = ("score_min", "score_max", "weight_min", "weight_max", "top_percent")
    preset = dict(zip(keys, PRESETS[settings.tisdpo_preset]))
    explicit = {key: getattr(settings, f"tisdpo_{key}") for key in preset}
    values = {key: preset[key] if value is None else float(value) for key, value in explicit.items()}
    return Transform(name=settings.tisdpo_transform, **values)


@register_scheme
class TISDPOScheme(ColumnScheme):
    name = "tisdpo"
    settings_class = TISDPOSettings
    #: π₊ = DPO on the data, π₋ = DPO on the swapped pairs (the README's pipeline), both from the run's base model.
    tooling = SchemeTooling(trained_models={
        MODEL_KEYS["positive_model"]: {"weighting": UniformScheme.name},
        MODEL_KEYS["negative_model"]: {"weighting": UniformScheme.name, "swap_pairs": True},
    }, cache_setting="tisdpo_weights")

    def prepare(self, raw: datasets.Dataset, split: str, context: PrepareContext) -> datasets.Dataset:
        """``raw`` with the TIS-DPO ``chosen_weights`` / ``rejected_weights`` (one per completion token).

        The token rewards of the untruncated pairs come from the cache in ``tisdpo_weights`` (default
        ``output_dir/tisdpo-weights``; the train split there, any other in its sub-folder ``<split>``), computed there
        first when missing (main process first); without ``context.output_dir`` they are computed in memory. The
        counts go to stderr and to ``context.summary[split]["tisdpo"]``.
        """
        from accelerate import PartialState

        from tokenweight.data import tokenize_preference_dataset

        full, _ = tokenize_preference_dataset(raw, context.tokenizer, name=f"{split} (TIS-DPO scoring)")
        folder = context.cache_folder(self.settings.tisdpo_weights, "tisdpo-weights", split)
        with PartialState().main_process_first():
            chosen_rewards, rejected_rewards, source = split_rewards(context.config, context.tokenizer, full, split,
                                                                     folder)
        transform = resolve_transform(self.settings)
        eos = context.tokenizer.eos_token_id
        chosen = [response_weights(r, True, transform, [t == eos for t in row["chosen_ids"]])
                  for r, row in zip(chosen_rewards, full)]
        rejected = [response_weights(r, False, transform, [t == eos for t in row["rejected_ids"]])
                    for r, row in zip(rejected_rewards, full)]
        weighted = raw.remove_columns([c for c in ("chosen_weights", "rejected_weights") if c in raw.column_names])
        weighted = weighted.add_column("chosen_weights", chosen).add_column("rejected_weights", rejected)
        stats = weight_summary(chosen, rejected, chosen_rewards, rejected_rewards, transform)
        if context.summary is not None:
            context.summary.setdefault(split, {})["tisdpo"] = stats
        clipped = f"; {stats['clipped_tokens']} tokens clipped" if transform.name == "threshold_and_scale" else ""
        print(f"data {split}: TIS-DPO weights of {stats['pairs']} pairs, {stats['tokens']} tokens "
              f"({transform.describe()}; mean weight chosen {stats['mean_weight_chosen']:.3f}, rejected "
              f"{stats['mean_weight_rejected']:.3f}{clipped}), rewards {source}", file=sys.stderr)
        return weighted


def weight_summary(chosen: list[list[float]], rejected: list[list[float]], chosen_rewards: list[list[float]],
                   rejected_rewards: list[list[float]], transform: Transform) -> dict:
    """Counts of a split's TIS-DPO weights: pairs, tokens, mean weight per side, tokens whose score lies outside
    ``[score_min, score_max]`` (clipped by ``threshold_and_scale``)."""
    scores = [s for row in chosen_rewards for s in row] + [-s for row in rejected_rewards for s in row]
    chosen_flat, rejected_flat = [w for row in chosen for w in row], [w for row in rejected for w in row]
    clipped = sum(not transform.score_min <= s <= transform.score_max for s in scores)
    return {"pairs": len(chosen), "tokens": len(scores), "transform": transform.describe(),
            "mean_weight_chosen": sum(chosen_flat) / max(len(chosen_flat), 1),
            "mean_weight_rejected": sum(rejected_flat) / max(len(rejected_flat), 1),
            "clipped_tokens": clipped}
