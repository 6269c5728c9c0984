"""``sepo``: SePO, a reference-free contrastive loss on the key tokens that a DPO-trained oracle selects.

Paper: Yang et al., "Selective Preference Optimization via Token-Level Reward Function Estimation" (EMNLP 2025,
arXiv 2408.13518); upstream code followed: https://github.com/SteveKGYang/SePO (``token_score.py`` scores and selects,
``utils_selective.py`` ``SelectiveRRHFLoss`` trains). Spec: ``shared/specs/related.md`` §9 and §11 decision 6.

1. An oracle π_o is trained with DPO from the run's base model on the same pairs (``trained_models``; the bench
   trains it inside a SePO row's run). Its token reward is r_t = log π_o(y_t|s_t) − log π_ref(y_t|s_t), π_ref the
   model the oracle started from (``sepo_oracle_reference``, default the run's model; upstream's ``ref_model_path``,
   and its scores carry no β). The scores are computed once per split and cached, fingerprinted (both models, the
   tokenizer, every row) as TIS-DPO's rewards are (:mod:`tokenweight.weights.tisdpo.rewards`).
2. Selection (:mod:`.selection`): the top ``int(k_w · (T−1))`` tokens of a chosen response by score, the bottom
   ``int(k_l · (T−1))`` of a rejected one (k 0.3: the paper's 30 %). :meth:`SePOScheme.prepare` adds them as 0/1
   ``chosen_weights`` / ``rejected_weights``.
3. Loss (``SelectiveRRHFLoss``, its ``SimPO`` branch): no reference, the mean log-prob over each selected set S,

       L = −log σ( β · mean_{t∈S_w} log π_θ(y_w,t) − β · mean_{t∈S_l} log π_θ(y_l,t) )

   with β 1 (upstream's loss takes no β: its ``--beta 0.1`` reaches only the unused DPO loss) and no margin. The
   weights are 1/|S| on the selected tokens that survive truncation. A response with no selected token (T ≤ 3 at
   k 0.3; upstream drops responses under 8 tokens before scoring, and its mean over an empty set would be NaN)
   zeroes its pair's loss (``TokenWeights.pair_weights``, as ConfPO), counted in ``sepo/zeroed_pairs``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import datasets

from tokenweight.errors import UserError
from tokenweight.weights.base import PrepareContext, TokenWeights, WeightingInputs, register_scheme
from tokenweight.weights.column import ColumnScheme
from tokenweight.weights.sepo.selection import selected_tokens
from tokenweight.weights.simpo import selected_token_weights
from tokenweight.weights.tisdpo.rewards import Contrast, split_rewards
from tokenweight.weights.tooling import SchemeTooling
from tokenweight.weights.uniform import UniformScheme

#: β of a SePO run that sets no ``beta``: upstream's selective loss has none.
SEPO_BETA = 1.0

CONTRAST = Contrast(models={"oracle_model": "sepo_oracle_model", "oracle_reference": "sepo_oracle_reference"},
                    batch_size_setting="sepo_batch_size", cache_setting="sepo_scores",
                    format="tokenweight-sepo-scores/1", label="SePO oracle score", scheme="sepo",
                    how="train it with DPO from the base model: tokenweight train --output_dir ORACLE",
                    models_name="SePO oracle and its reference")


@dataclass
class SePOSettings:
    """SePO's flags: the oracle, its reference, the score cache, the selection ratios."""

    sepo_oracle_model: str | None = field(default=None, metadata={
        "aliases": ["--oracle_model"], "help": "The oracle: a DPO-trained model (required)."})
    sepo_oracle_reference: str | None = field(default=None, metadata={
        "help": "The model the oracle was trained from (default: the run's model)."})
    sepo_scores: str | None = field(default=None, metadata={
        "help": "Folder of the cached oracle token scores (default output_dir/sepo-scores; computed there when "
                "missing, other splits in sub-folders)."})
    sepo_chosen_ratio: float = field(default=0.3, metadata={
        "help": "Share of a chosen response's tokens kept, highest oracle score first (the paper's 0.3)."})
    sepo_rejected_ratio: float = field(default=0.3, metadata={
        "help": "Share of a rejected response's tokens kept, lowest oracle score first (the paper's 0.3)."})
    sepo_batch_size: int = field(default=8, metadata={"help": "Pairs per oracle forward."})

    def __post_init__(self):
        for key in ("sepo_chosen_ratio", "sepo_rejected_ratio"):
            if not 0 < getattr(self, key) <= 1:
                raise UserError(f"config key `{key}` must be in (0, 1], got {getattr(self, key)}")
        if self.sepo_batch_size < 1:
            raise UserError(f"config key `sepo_batch_size` must be at least 1, got {self.sepo_batch_size}")


@register_scheme
class SePOScheme(ColumnScheme):
    name = "sepo"
    settings_class = SePOSettings
    uses_reference = False
    loss_types = ("sigmoid",)
    #: the oracle = DPO on the run's pairs from the run's base model (its reference, the default oracle reference).
    tooling = SchemeTooling(trained_models={"sepo_oracle_model": {"weighting": UniformScheme.name}},
                            cache_setting="sepo_scores")

    @classmethod
    def default_beta(cls, settings=None) -> float:
        return SEPO_BETA

    def prepare(self, raw: datasets.Dataset, split: str, context: PrepareContext) -> datasets.Dataset:
        """``raw`` with 0/1 ``chosen_weights`` / ``rejected_weights`` (one per completion token): SePO's selection
        from the oracle scores, read from the cache in ``sepo_scores`` (default ``output_dir/sepo-scores``, another
        split in its sub-folder) or computed there first (in memory without ``context.output_dir``)."""
        from accelerate import PartialState

        from tokenweight.data import tokenize_preference_dataset

        full, _ = tokenize_preference_dataset(raw, context.tokenizer, name=f"{split} (SePO scoring)")
        folder = context.cache_folder(self.settings.sepo_scores, "sepo-scores", split)
        with PartialState().main_process_first():
            chosen_scores, rejected_scores, source = split_rewards(
                context.config, context.tokenizer, full, split, folder, CONTRAST,
                {"sepo_oracle_reference": context.model_path})
        chosen = [selected_tokens(s, self.settings.sepo_chosen_ratio, highest=True) for s in chosen_scores]
        rejected = [selected_tokens(s, self.settings.sepo_rejected_ratio, highest=False) for s in rejected_scores]
        weighted = raw.remove_columns([c for c in ("chosen_weights", "rejected_weights") if c in raw.column_names])
        weighted = weighted.add_column("chosen_weights", chosen).add_column("rejected_weights", rejected)
        stats = {"pairs": len(chosen), "tokens": sum(map(len, chosen)) + sum(map(len, rejected)),
                 "selected_chosen": sum(map(sum, chosen)), "selected_rejected": sum(map(sum, rejected)),
                 "empty_responses": sum(not any(row) for row in chosen + rejected)}
        if context.summary is not None:
            context.summary.setdefault(split, {})["sepo"] = stats
        print(f"data {split}: SePO selected {stats['selected_chosen']:.0f} chosen and {stats['selected_rejected']:.0f} "
              f"rejected of {stats['tokens']} tokens in {stats['pairs']} pairs ({stats['empty_responses']} responses "
              f"select none), oracle scores {source}", file=sys.stderr)
        return weighted

    def compute(self, inputs: WeightingInputs) -> TokenWeights:
        """``[2B, L-1]`` weights 1/|S| on each response's selected tokens S; ``[B]`` pair weights 0 where a
        response's S is empty (after truncation), else 1."""
        return selected_token_weights(super().compute(inputs).weights > 0, inputs.loss_mask, "sepo")
