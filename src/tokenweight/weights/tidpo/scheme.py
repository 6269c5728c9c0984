"""``tidpo``: token-importance guided DPO (spec tidpo.md §9) — attribution weights, TDPO2 KL, triplet loss.

Contract with the trainer (one step, ``B`` pairs, ``2B`` rows):

1. :meth:`TIDPOScheme.compute` runs **before** the policy forward (``needs_hidden_states = False``): its own
   attribution pass (eval mode, input-embedding gradient only) gives the detached weights ``[2B, L-1]`` (mean 1
   over the span, 0 outside the completion), so the attribution graph is gone before the main graph exists.
2. ``needs_hidden_for_loss`` (True when the TDPO2 KL weight α > 0): the trainer fills ``LossContext.policy_hidden``
   (with grad) and ``LossContext.ref_hidden``.
3. :meth:`TIDPOScheme.margin_offset` returns ``(offset [B], metrics)`` with
   ``offset = α · (K(y_l) − stopgrad K(y_w))``; the objective **subtracts it from Δ** before the pair loss, giving
   TDPO2's ``−log σ(β · (Δ − offset))``. ``None`` when α = 0 (the paper's pure Eq. 12).
4. :meth:`TIDPOScheme.extra_loss` returns ``(γ · L_triplet, metrics)`` to **add** to the loss; ``None`` when
   γ = 0 (no anchor is generated). Pair ``b``'s anchor generator is seeded from ``(seed, LossContext.step,
   batch["row_index"][b])`` (``step`` is ``None`` in evaluation), so anchors never depend on the global RNG.

``loss_type=ipo`` is refused while α > 0: IPO length-normalises the margin, the KL offset is a sequence sum.

Failures (non-finite attribution, KL or triplet distances) raise :class:`FloatingPointError` naming the rows. With
``tidpo_on_failure = "count"`` they are instead counted in ``tidpo/{attribution,kl,triplet}_failures`` (logged
every step, 0 when nothing failed) and that part is dropped for the step: prior-only weights, no KL offset, no
triplet term.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel
from torch import nn

from tokenweight.errors import UserError
from tokenweight.masks import to_shifted
from tokenweight.metrics import Count
from tokenweight.weights.base import (LossContext, SchemeContext, TokenWeights, WeightingInputs, WeightingScheme,
                                      dataset_rows, register_scheme)
from tokenweight.weights.kl import sequence_kl, tdpo2_offset
from tokenweight.weights.tidpo.anchor import anchor_seeds, anchor_token_logps, sample_anchors
from tokenweight.weights.tidpo.attribution import tidpo_weights
from tokenweight.weights.tidpo.presets import TIDPOSettings, preset_beta, resolve_tidpo_settings
from tokenweight.weights.tidpo.triplet import left_align, triplet_loss
from tokenweight.weights.tooling import PaperClaim, SchemeTooling


def special_token_ids(model: nn.Module) -> tuple[int, int | list[int]]:
    """``(pad_token_id, eos_token_id)`` from the model's generation config or config (pad defaults to EOS)."""
    configs = [getattr(model, "generation_config", None), model.config]
    eos = next((c.eos_token_id for c in configs if getattr(c, "eos_token_id", None) is not None), None)
    if eos is None:
        raise UserError("TI-DPO anchors need the model's `eos_token_id` (set model.config.eos_token_id)")
    pad = next((c.pad_token_id for c in configs if getattr(c, "pad_token_id", None) is not None), None)
    return (eos if isinstance(eos, int) else eos[0]) if pad is None else pad, eos


@register_scheme
class TIDPOScheme(WeightingScheme):
    """TI-DPO built from its flags (:class:`TIDPOSettings`) and the run's ``loss_type``, ``max_length``, ``seed`` and
    β (:class:`SchemeContext`); ``self.settings`` holds the resolved
    :class:`~tokenweight.weights.tidpo.presets.TIDPOParameters` (preset + explicit flags, the run's β and seed)."""

    name = "tidpo"
    needs_hidden_states = False
    settings_class = TIDPOSettings
    #: ``weights``: attribution × prior weights, no TDPO2 KL, no triplet; ``kl``: the TDPO2 KL alone on uniform
    #: weights (λ 0 and σ = T / 1e-9: the Gaussian prior is flat, so every weight is 1 to float precision).
    tooling = SchemeTooling(ablations={"weights": {"tidpo_kl_alpha": 0.0, "tidpo_gamma": 0.0},
                                       "kl": {"tidpo_lambda": 0.0, "tidpo_sigma_div": 1e-9, "tidpo_gamma": 0.0}},
                            claims=(PaperClaim("TI-DPO", "robust to label noise (key accuracy falls less than DPO's)",
                                               "key_acc", +1, noise=True),
                                    PaperClaim("TI-DPO", "… carried by its token weights", "key_acc", +1, noise=True,
                                               ablation="weights"),
                                    PaperClaim("TI-DPO", "… carried by its TDPO2 KL term", "key_acc", +1, noise=True,
                                               ablation="kl")))

    def __init__(self, settings: TIDPOSettings | None = None, context: SchemeContext | None = None):
        super().__init__(settings, context)
        resolved = resolve_tidpo_settings(self.settings)
        self.settings = dataclasses.replace(resolved, beta=self.context.beta, seed=self.context.seed)
        if self.context.loss_type == "ipo" and self.settings.kl_alpha > 0:
            raise UserError(
                f"weighting=tidpo with loss_type=ipo needs tidpo_kl_alpha=0 (got {self.settings.kl_alpha}): IPO "
                "divides the weighted margin by the completion lengths, while the TDPO2 KL offset is a sum over the "
                "sequence, and the TI-DPO spec defines that offset inside the sigmoid loss only; use loss_type "
                "sigmoid, or set tidpo_kl_alpha 0")

    @property
    def needs_hidden_for_loss(self) -> bool:
        """True when the TDPO2 KL weight α > 0: the KL term needs both models' final hidden states."""
        return self.settings.kl_alpha > 0

    @classmethod
    def default_beta(cls, settings: Any = None) -> float:
        """The scheme's default β: that of the preset ``settings.tidpo_preset`` (``paper`` when unset), used when
        the run leaves ``beta`` unset (precedence: explicit ``beta`` > preset > built-in default)."""
        return preset_beta(getattr(settings, "tidpo_preset", None) or "paper")

    def _count_or_raise(self, error: FloatingPointError) -> float:
        if self.settings.on_failure == "raise":
            raise error
        return 1.0

    def compute(self, inputs: WeightingInputs) -> TokenWeights:
        """Weights ``[2B, L-1]`` (shifted: the weight of token ``t + 1`` at index ``t``) and ``tidpo/`` metrics."""
        s = self.settings
        model = extract_model_from_parallel(inputs.model)
        batch = (model, inputs.input_ids, inputs.attention_mask, inputs.completion_mask)
        failures = 0.0
        try:
            weights, metrics = tidpo_weights(*batch, lam=s.lam, sigma_div=s.sigma_div, span=s.span, log=True)
        except FloatingPointError as error:
            failures = self._count_or_raise(error)
            weights, metrics = tidpo_weights(*batch, lam=0.0, sigma_div=s.sigma_div, span=s.span, log=True)
        metrics["tidpo/attribution_failures"] = Count(failures)
        return TokenWeights(weights=to_shifted(weights) * inputs.loss_mask, metrics=metrics)

    def margin_offset(self, ctx: LossContext) -> tuple[torch.Tensor, dict[str, float]] | None:
        """``(α · (K(y_l) − sg K(y_w)) [B], metrics)``, to be subtracted from Δ; ``None`` when α = 0."""
        alpha = self.settings.kl_alpha
        if alpha == 0:
            return None
        try:
            kl = sequence_kl(ctx, "`tidpo_kl_alpha` > 0")
        except FloatingPointError as error:
            failures = self._count_or_raise(error)
            zeros = torch.zeros(ctx.policy_hidden.shape[0] // 2, device=ctx.policy_hidden.device)
            return zeros, {"tidpo/kl_chosen": 0.0, "tidpo/kl_rejected": 0.0, "tidpo/kl_term": 0.0,
                           "tidpo/kl_failures": Count(failures)}
        kl_chosen, kl_rejected = kl.chunk(2)
        offset = tdpo2_offset(kl, alpha)
        return offset, {"tidpo/kl_chosen": kl_chosen.mean().item(), "tidpo/kl_rejected": kl_rejected.mean().item(),
                        "tidpo/kl_term": offset.mean().item(), "tidpo/kl_failures": Count(0.0)}

    def extra_loss(self, ctx: LossContext) -> tuple[torch.Tensor, dict[str, float]] | None:
        """``(γ · L_triplet, metrics)`` with an anchor sampled from the current policy; ``None`` when γ = 0.

        Pair ``b``'s anchor is drawn with a generator seeded from ``(seed, ctx.step, row_index[b])``; in evaluation
        (``ctx.step is None``) from ``(seed, row_index[b])``, so every evaluation of a row sees the same anchor.
        """
        s = self.settings
        if s.gamma == 0:
            return None
        if ctx.ref_model is None:
            raise UserError("TI-DPO's triplet loss (`tidpo_gamma` > 0) needs a reference model to score anchors "
                            "(not precompute_ref_log_probs; or set tidpo_gamma 0)")
        policy = extract_model_from_parallel(ctx.model)
        reference = extract_model_from_parallel(ctx.ref_model)
        inputs = ctx.inputs
        pairs = inputs.input_ids.shape[0] // 2
        pad_token_id, eos_token_id = special_token_ids(policy)
        rows = dataset_rows(inputs, "TI-DPO's triplet loss")
        anchor = sample_anchors(
            policy, inputs.input_ids[:pairs], inputs.attention_mask[:pairs], inputs.completion_mask[:pairs],
            seeds=anchor_seeds(s.seed, rows, ctx.step), pad_token_id=pad_token_id,
            eos_token_id=eos_token_id, top_k=s.anchor_top_k, top_p=s.anchor_top_p,
            temperature=s.anchor_temperature, max_new_tokens=s.anchor_max_new_tokens,
            max_length=self.context.max_length)
        policy_anchor = anchor_token_logps(policy, anchor)
        with torch.no_grad():
            ref_anchor = anchor_token_logps(reference, anchor)
        anchor_ratios, anchor_len = left_align(policy_anchor - ref_anchor, to_shifted(anchor.completion_mask))
        ratios, lengths = left_align(ctx.policy_logps - ctx.ref_logps, inputs.loss_mask)
        metrics = {"tidpo/anchor_len": anchor.anchor_lengths.float().mean().item()}
        try:
            loss, dist_pos, dist_neg = triplet_loss(anchor_ratios, ratios[:pairs], ratios[pairs:], anchor_len,
                                                    lengths[:pairs], lengths[pairs:], s.margin)
        except FloatingPointError as error:
            metrics["tidpo/triplet_failures"] = Count(self._count_or_raise(error))
            metrics.update({"tidpo/triplet_loss": 0.0, "tidpo/dist_pos": 0.0, "tidpo/dist_neg": 0.0})
            return torch.zeros((), device=policy_anchor.device), metrics
        metrics.update({"tidpo/triplet_loss": loss.item(), "tidpo/dist_pos": dist_pos.mean().item(),
                        "tidpo/dist_neg": dist_neg.mean().item(), "tidpo/triplet_failures": Count(0.0)})
        return s.gamma * loss, metrics
