"""``cdpo``: cDPO, DPO whose rejected tokens weigh 1 − p_t, p_t the contrastive estimate that token t is not critical.

Paper: Lin et al., "Critical Tokens Matter: Token-Level Contrastive Estimation Enhances LLM's Reasoning Capability"
(arXiv 2411.19943); upstream code followed: https://github.com/chenzhiling9954/Critical-Tokens-Matter
(``src/pipeline.py`` ``calculate_ce_score``, ``src/train/train_cdpo.py`` ``CDPOTrainer.dpo_loss``,
``src/configs/train_config.py`` ``get_cdpo_config``). Spec: ``shared/specs/related.md`` §11 decision 6.

Two models contrast each token: π₊ trained on the correct (chosen) answers and π₋ on the incorrect (rejected) ones.
Upstream fine-tunes them with SFT (LoRA); tokenweight has no SFT trainer, so the declared models (``trained_models``,
trained by the bench inside a cDPO row's run) are TIS-DPO's pair, DPO and DPO on the swapped pairs; with ``tokenweight
train`` any two models of the same vocabulary can be given. The score of completion token t is
p_t = softmax((1 + c)·z₊ − c·z₋)[y_t] (:mod:`.scores`, c = ``cdpo_contrast``, upstream's 1), computed once and cached.
Weights, as ``dpo_loss``: a rejected token weighs 1 − p_t (low p: a critical token that the incorrect model
prefers), a chosen token 1 (upstream's default ``only_neg``; ``cdpo_only_rejected false``: p_t); the EOS that ends a
completion weighs 1 on both sides (upstream appends ``[1]`` / ``1 − [0]`` for the EOS the trainer adds). The loss is
the weighted DPO L = −log σ(β [Σ ω^w ρ^w − Σ ω^l ρ^l]), β 0.1 (``get_cdpo_config``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import datasets

from tokenweight.errors import UserError
from tokenweight.weights.base import PrepareContext, register_scheme
from tokenweight.weights.cdpo.scores import split_scores
from tokenweight.weights.column import ColumnScheme
from tokenweight.weights.tooling import SchemeTooling
from tokenweight.weights.uniform import UniformScheme


@dataclass
class CDPOSettings:
    """cDPO's flags: the two contrasted models, the score cache, the contrast strength, which side is weighted."""

    cdpo_positive_model: str | None = field(default=None, metadata={
        "help": "π₊: a model trained on the correct (chosen) answers (required)."})
    cdpo_negative_model: str | None = field(default=None, metadata={
        "help": "π₋: a model trained on the incorrect (rejected) answers (required)."})
    cdpo_scores: str | None = field(default=None, metadata={
        "help": "Folder of the cached token scores (default output_dir/cdpo-scores; computed there when missing, "
                "other splits in sub-folders)."})
    cdpo_contrast: float = field(default=1.0, metadata={
        "help": "c in softmax((1 + c) z+ − c z−) (upstream's 1)."})
    cdpo_only_rejected: bool = field(default=True, metadata={
        "help": "Weigh only the rejected tokens (upstream's only_neg, its default); false: chosen tokens weigh p_t."})
    cdpo_batch_size: int = field(default=8, metadata={"help": "Pairs per forward of the two models."})

    def __post_init__(self):
        if self.cdpo_contrast < 0:
            raise UserError(f"config key `cdpo_contrast` must be >= 0, got {self.cdpo_contrast}")
        if self.cdpo_batch_size < 1:
            raise UserError(f"config key `cdpo_batch_size` must be at least 1, got {self.cdpo_batch_size}")


def side_weights(probs: list[float], chosen: bool, only_rejected: bool, ends_with_eos: bool) -> list[float]:
    """One response's weights from its scores ``probs``: rejected 1 − p, chosen 1 (``only_rejected``) or p; a final
    EOS 1."""
    weights = [1.0 if chosen and only_rejected else (p if chosen else 1.0 - p) for p in probs]
    if ends_with_eos and weights:
        weights[-1] = 1.0
    return weights


@register_scheme
class CDPOScheme(ColumnScheme):
    name = "cdpo"
    settings_class = CDPOSettings
    #: π₊ and π₋ (upstream: SFT on correct / incorrect answers; here DPO and DPO on the swapped pairs).
    tooling = SchemeTooling(trained_models={"cdpo_positive_model": {"weighting": UniformScheme.name},
                                            "cdpo_negative_model": {"weighting": UniformScheme.name,
                                                                    "swap_pairs": True}},
                            cache_setting="cdpo_scores")

    def prepare(self, raw: datasets.Dataset, split: str, context: PrepareContext) -> datasets.Dataset:
        """``raw`` with cDPO's ``chosen_weights`` / ``rejected_weights`` (one per completion token), from the scores
        cached in ``cdpo_scores`` (default ``output_dir/cdpo-scores``, another split in its sub-folder) or computed
        there first (in memory without ``context.output_dir``)."""
        from accelerate import PartialState

        from tokenweight.data import tokenize_preference_dataset

        full, _ = tokenize_preference_dataset(raw, context.tokenizer, name=f"{split} (cDPO scoring)")
        folder = context.cache_folder(self.settings.cdpo_scores, "cdpo-scores", split)
        with PartialState().main_process_first():
            chosen_probs, rejected_probs, source = split_scores(context.config, context.tokenizer, full, split, folder)
        eos, only = context.tokenizer.eos_token_id, self.settings.cdpo_only_rejected
        chosen = [side_weights(p, True, only, row["chosen_ids"][-1] == eos) for p, row in zip(chosen_probs, full)]
        rejected = [side_weights(p, False, only, row["rejected_ids"][-1] == eos)
                    for p, row in zip(rejected_probs, full)]
        weighted = raw.remove_columns([c for c in ("chosen_weights", "rejected_weights") if c in raw.column_names])
        weighted = weighted.add_column("chosen_weights", chosen).add_column("rejected_weights", rejected)
        flat = [w for row in rejected for w in row]
        stats = {"pairs": len(chosen), "mean_weight_rejected": sum(flat) / max(len(flat), 1),
                 "mean_weight_chosen": sum(w for row in chosen for w in row) / max(sum(map(len, chosen)), 1)}
        if context.summary is not None:
            context.summary.setdefault(split, {})["cdpo"] = stats
        print(f"data {split}: cDPO weights of {stats['pairs']} pairs (mean chosen {stats['mean_weight_chosen']:.3f}, "
              f"rejected {stats['mean_weight_rejected']:.3f}), scores {source}", file=sys.stderr)
        return weighted
