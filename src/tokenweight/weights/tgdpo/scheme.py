"""``tgdpo``: TGDPO, DPO with each token's log-ratio weighted by a token-level reward from a separately trained model.

Paper: Zhu et al., "TGDPO: Harnessing Token-Level Reward Guidance for Enhancing Direct Preference Optimization"
(ICML 2025, arXiv 2506.14574); upstream code followed: https://github.com/dvlab-research/TGDPO
(``src/llamafactory/train/tgdpo/trainer.py``, ``dpo_loss`` for ``pref_loss: sigmoid``; settings from
``examples/llama3_8b_instruct_tgdpo.yaml``). Spec: ``shared/specs/related.md`` §11 decision 6.

The guidance model π_r is a model trained with DPO (or SimPO) on the same pairs (``trained_models``: DPO from the run's
base model; the bench trains it inside a TGDPO row's run). Its token reward is taken against the run's reference,
as upstream does (the same ``ref_model`` scores both):

    r_t = log π_r(y_t|s_t) − log π_ref(y_t|s_t)

computed once per split and cached, fingerprinted (guidance model, reference, tokenizer, every row) through
:mod:`tokenweight.weights.tisdpo.rewards`; :meth:`TGDPOScheme.prepare` adds the rewards as the rows' weight columns and
:meth:`TGDPOScheme.compute` turns them into the token weights

    ω^w_t = 1 + α·β·r^w_t,      ω^l_t = 1 − α·β·r^l_t

of the weighted DPO loss L = −log σ(β [Σ_t ω^w_t ρ^w_t − Σ_t ω^l_t ρ^l_t]) (upstream's
``-logsigmoid((β(1 + αβ r_w) ρ_w).sum() − (β(1 − αβ r_l) ρ_l).sum())``), α 0.5 and β 0.1 (the released config).
Upstream does not clamp ω: a rejected token whose reward exceeds 1/(αβ) (20 nats at the defaults) weighs below 0, so
the scheme declares ``signed_weights``; such tokens are counted in ``tgdpo/negative_weights``. The rewards are scored
on the untruncated rows; a prompt cut on the left (``max_prompt_length``) changes the context they were scored in.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import datasets
import torch

from tokenweight.errors import UserError
from tokenweight.weights.base import PrepareContext, TokenWeights, WeightingInputs, register_scheme
from tokenweight.weights.column import ColumnScheme
from tokenweight.weights.tisdpo.rewards import Contrast, split_rewards
from tokenweight.weights.tooling import SchemeTooling
from tokenweight.weights.uniform import UniformScheme

CONTRAST = Contrast(models={"reward_model": "tgdpo_reward_model", "reference": "ref_model_name_or_path"},
                    batch_size_setting="tgdpo_batch_size", cache_setting="tgdpo_rewards",
                    format="tokenweight-tgdpo-rewards/1", label="TGDPO token reward", scheme="tgdpo",
                    how="train it with DPO from the base model: tokenweight train --output_dir GUIDE",
                    models_name="TGDPO guidance model and reference",
                    flags={"tgdpo_reward_model": "--tgdpo_reward_model"})


@dataclass
class TGDPOSettings:
    """TGDPO's flags: the guidance model, the reward cache, α."""

    tgdpo_reward_model: str | None = field(default=None, metadata={
        "help": "The token-level guidance model: a model trained with DPO (or SimPO) on the same pairs (required)."})
    tgdpo_alpha: float = field(default=0.5, metadata={
        "help": "α: token weights 1 + αβr on chosen, 1 − αβr on rejected tokens (the released config's 0.5)."})
    tgdpo_rewards: str | None = field(default=None, metadata={
        "help": "Folder of the cached token rewards (default output_dir/tgdpo-rewards; computed there when missing, "
                "other splits in sub-folders)."})
    tgdpo_batch_size: int = field(default=8, metadata={"help": "Pairs per guidance-model forward."})

    def __post_init__(self):
        if self.tgdpo_alpha < 0:
            raise UserError(f"config key `tgdpo_alpha` must be >= 0, got {self.tgdpo_alpha}")
        if self.tgdpo_batch_size < 1:
            raise UserError(f"config key `tgdpo_batch_size` must be at least 1, got {self.tgdpo_batch_size}")


@register_scheme
class TGDPOScheme(ColumnScheme):
    name = "tgdpo"
    settings_class = TGDPOSettings
    signed_weights = True
    loss_types = ("sigmoid",)
    #: the guidance model = DPO on the run's pairs from the run's base model.
    tooling = SchemeTooling(trained_models={"tgdpo_reward_model": {"weighting": UniformScheme.name}},
                            cache_setting="tgdpo_rewards")

    def prepare(self, raw: datasets.Dataset, split: str, context: PrepareContext) -> datasets.Dataset:
        """``raw`` with the token rewards r as ``chosen_weights`` / ``rejected_weights`` (one per completion token),
        read from the cache in ``tgdpo_rewards`` (default ``output_dir/tgdpo-rewards``, another split in its
        sub-folder) or computed there first (in memory without ``context.output_dir``); the reference is the run's
        (``ref_model_name_or_path``, else the run's model)."""
        from accelerate import PartialState

        from tokenweight.data import tokenize_preference_dataset

        full, _ = tokenize_preference_dataset(raw, context.tokenizer, name=f"{split} (TGDPO scoring)")
        folder = context.cache_folder(self.settings.tgdpo_rewards, "tgdpo-rewards", split)
        with PartialState().main_process_first():
            chosen, rejected, source = split_rewards(context.config, context.tokenizer, full, split, folder, CONTRAST,
                                                     {"ref_model_name_or_path": context.model_path})
        weighted = raw.remove_columns([c for c in ("chosen_weights", "rejected_weights") if c in raw.column_names])
        weighted = weighted.add_column("chosen_weights", chosen).add_column("rejected_weights", rejected)
        flat_chosen, flat_rejected = [r for row in chosen for r in row], [r for row in rejected for r in row]
        stats = {"pairs": len(chosen), "tokens": len(flat_chosen) + len(flat_rejected),
                 "mean_reward_chosen": sum(flat_chosen) / max(len(flat_chosen), 1),
                 "mean_reward_rejected": sum(flat_rejected) / max(len(flat_rejected), 1)}
        if context.summary is not None:
            context.summary.setdefault(split, {})["tgdpo"] = stats
        print(f"data {split}: TGDPO token rewards of {stats['pairs']} pairs, {stats['tokens']} tokens (mean chosen "
              f"{stats['mean_reward_chosen']:.3f}, rejected {stats['mean_reward_rejected']:.3f}), {source}",
              file=sys.stderr)
        return weighted

    def compute(self, inputs: WeightingInputs) -> TokenWeights:
        """``[2B, L-1]`` weights 1 + αβr on the chosen rows ``[0, B)``, 1 − αβr on the rejected rows, 0 off the
        completion."""
        rewards = super().compute(inputs).weights
        pairs = rewards.shape[0] // 2
        sign = torch.ones_like(rewards[:, :1])
        sign[pairs:] = -1
        mask = inputs.loss_mask.float()
        weights = (1 + sign * self.settings.tgdpo_alpha * self.context.beta * rewards) * mask
        chosen_mask, rejected_mask = mask[:pairs], mask[pairs:]
        return TokenWeights(weights=weights, metrics={
            "tgdpo/reward_chosen": (rewards[:pairs] * chosen_mask).sum() / chosen_mask.sum().clamp(min=1),
            "tgdpo/reward_rejected": (rewards[pairs:] * rejected_mask).sum() / rejected_mask.sum().clamp(min=1),
            "tgdpo/negative_weights": ((weights < 0) & inputs.loss_mask.bool()).sum()})
