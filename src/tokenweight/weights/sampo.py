"""``sampo``: SamPO's length debiasing by down-sampling — random equal-count token subsets of each pair.

Paper: Lu et al. 2024, "Eliminating Biased Length Reliance of Direct Preference Optimization via Down-Sampled KL
Divergence", arXiv 2406.10957; upstream code https://github.com/LuJunru/SamPO (its DPO trainer's log-prob
function). Spec: ``specs/related.md`` §5.

With ``m = min(T_c, T_r)`` the completion lengths of a pair (EOS included), the longer response keeps ``m`` of its
completion tokens, drawn uniformly without replacement, and the shorter keeps all: 0/1 token weights with ``m`` ones
on each side, ``L = −log σ(β [Σ_{S_c} ρ_c − Σ_{S_r} ρ_r])``. Upstream redraws the sample in every log-prob call, so
the policy's and the reference's log-probs are summed over **independent** samples: this scheme returns the
policy's sample as :attr:`TokenWeights.weights` and the reference's as :attr:`TokenWeights.ref_weights`, and the
margin is ``Σ_{S_θ} ℓ_θ − Σ_{S_ref} ℓ_ref`` per response.

Reproducible draws: each pair's two samples come from their own ``torch.Generator`` s, seeded by
:func:`~tokenweight.weights.base.row_seeds` from the run's ``seed``, the global step and the pair's dataset row
(``row_index``), so a resumed run draws the same subsets, the draws do not depend on the global RNG or on the batch's
other rows, and evaluation (step ``None``) always draws the same ones. The draw runs on the host (one small
``randperm`` per longer response).
"""

from __future__ import annotations

import torch

from tokenweight.weights.base import (TokenWeights, WeightingInputs, WeightingScheme, dataset_rows, register_scheme,
                                      row_seeds)
from tokenweight.weights.tooling import PaperClaim, SchemeTooling


def equal_count_sample(loss_mask: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    """One SamPO sample: 0/1 weights ``[2B, T]`` (fp32, on ``loss_mask``'s device) with ``min(T_c, T_r)`` ones on
    each response of pair ``b`` — all of the shorter one's completion tokens, a uniform subset without replacement
    of the longer one's, drawn with ``torch.Generator().manual_seed(seeds[b])``.

    ``loss_mask`` is ``[2B, T]`` (rows ``[0, B)`` chosen, ``[B, 2B)`` rejected); ``seeds`` has ``B`` entries.
    """
    mask = loss_mask.bool().cpu()
    pairs = mask.shape[0] // 2
    if len(seeds) != pairs:
        raise ValueError(f"SamPO: {len(seeds)} seeds for {pairs} pairs")
    weights = mask.float()
    counts = mask.sum(dim=1).tolist()
    for b, seed in enumerate(seeds):
        chosen, rejected = counts[b], counts[pairs + b]
        if chosen == rejected:
            continue
        longer = b if chosen > rejected else pairs + b
        positions = mask[longer].nonzero().flatten()
        keep = positions[torch.randperm(len(positions), generator=torch.Generator().manual_seed(seed))
                         [:min(chosen, rejected)]]
        weights[longer] = 0.0
        weights[longer, keep] = 1.0
    return weights.to(loss_mask.device)


@register_scheme
class SamPOScheme(WeightingScheme):
    name = "sampo"
    tooling = SchemeTooling(claims=(PaperClaim(
        "SamPO", "down-sampled KL removes the length bias: shorter answers than DPO", "gen_len", -1, "verbosity"),))

    def compute(self, inputs: WeightingInputs) -> TokenWeights:
        """Policy weights and independent reference weights, each an :func:`equal_count_sample` ``[2B, L-1]``
        seeded from ``(seed, inputs.step, row)`` with the tags ``sampo policy`` / ``sampo reference``."""
        rows = dataset_rows(inputs, "SamPO")
        seed, step = self.context.seed, inputs.step
        policy = equal_count_sample(inputs.loss_mask, row_seeds("sampo policy", seed, rows, step))
        reference = equal_count_sample(inputs.loss_mask, row_seeds("sampo reference", seed, rows, step))
        kept = policy.sum() / inputs.loss_mask.sum().clamp(min=1)
        return TokenWeights(weights=policy, ref_weights=reference, metrics={"sampo/kept_fraction": kept})
