"""``otpo``: optimal-transport token weights from the policy's final hidden states (Li et al. 2025).

Pair ``b`` is batch rows ``b`` (chosen) and ``B + b`` (rejected). Each row's completion positions (``loss_mask``,
shifted alignment, so each token is represented by the state that predicts it) are packed to the left (gathered
chunk by chunk inside the cost), the pairs
are weighted together by :func:`~tokenweight.weights.otpo.plan.otpo_weights`, and the weights are scattered back.
Settings (:class:`OTPOSettings`, the flags): ``otpo_reg`` (ε1, default 1.0) and ``otpo_reg_m`` (ε2, default 0.2,
or a ``[chosen, rejected]`` pair).

Host reads per step: one (packing widths and input checks) plus one per convergence check of the solver; the
metrics are 0-d tensors, read when the trainer logs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tokenweight.errors import UserError
from tokenweight.masks import pack_order
from tokenweight.metrics import Count
from tokenweight.weights.base import TokenWeights, WeightingInputs, WeightingScheme, register_scheme
from tokenweight.weights.otpo.cost import raise_response_problems
from tokenweight.weights.otpo.plan import otpo_weights
from tokenweight.weights.tooling import PaperClaim, SchemeTooling


@dataclass
class OTPOSettings:
    """OTPO's flags: the entropic regulariser ε1 and the marginal relaxation ε2 of the unbalanced Sinkhorn."""

    otpo_reg: float = field(default=1.0, metadata={"help": "OTPO entropic regulariser ε1 (POT `reg`)."})
    otpo_reg_m: list[float] = field(default_factory=lambda: [0.2], metadata={
        "help": "OTPO marginal relaxation ε2 (POT `reg_m`): one value, or two (rows, columns)."})

    def __post_init__(self):
        if not self.otpo_reg > 0:
            raise UserError(f"config key `otpo_reg` must be positive, got {self.otpo_reg}")
        if not all(value > 0 for value in self.otpo_reg_m):
            raise UserError(f"config key `otpo_reg_m` must be positive, got {self.otpo_reg_m}")
        if len(self.otpo_reg_m) not in (1, 2):
            raise UserError("config key `otpo_reg_m`: give one value or two (rows, columns)")


@register_scheme
class OTPOScheme(WeightingScheme):
    name = "otpo"
    tooling = SchemeTooling(claims=(
        PaperClaim("OTPO", "less verbosity drift than DPO (generated length)", "gen_len", -1, "verbosity"),
        PaperClaim("OTPO", "less verbosity drift than DPO (format failures)", "format_fail", -1, "verbosity"),
        PaperClaim("OTPO", "weights emphasise the tokens that differ (the key)", "key_weight_rel", +1)))
    needs_hidden_states = True
    settings_class = OTPOSettings

    def compute(self, inputs: WeightingInputs) -> TokenWeights:
        if inputs.hidden is None:
            raise ValueError("weighting='otpo' needs the policy's final hidden states (WeightingInputs.hidden)")
        reg, reg_m = self.settings.otpo_reg, self.settings.otpo_reg_m
        loss_mask = inputs.loss_mask.bool()
        pairs = loss_mask.shape[0] // 2
        chosen_width, rejected_width, flags = _widths_and_problems(inputs.hidden, loss_mask, pairs)
        raise_response_problems(flags)
        chosen_order, chosen_mask = pack_order(loss_mask[:pairs], chosen_width)
        rejected_order, rejected_mask = pack_order(loss_mask[pairs:], rejected_width)
        chosen_weights, rejected_weights, log = otpo_weights(
            inputs.hidden[:pairs], inputs.hidden[pairs:], chosen_mask, rejected_mask, reg=reg, reg_m=reg_m, log=True,
            check=False, with_plan=inputs.want_plan,  # training never needs the [B, N, M] plan
            chosen_positions=chosen_order, rejected_positions=rejected_order)  # gathered chunk by chunk
        weights = torch.zeros(loss_mask.shape, dtype=chosen_weights.dtype, device=loss_mask.device)
        weights[:pairs].scatter_(1, chosen_order, chosen_weights)
        weights[pairs:].scatter_(1, rejected_order, rejected_weights)
        metrics = {"otpo/mass_scale": log["mass_scale"].double().mean(),
                   "otpo/iterations": log["iterations"].double().mean(),
                   "otpo/unconverged_pairs": Count((~log["converged"]).sum().double())}
        return TokenWeights(weights=weights, metrics=metrics, plan=log.get("plan"))


def _widths_and_problems(hidden: torch.Tensor, loss_mask: torch.Tensor, pairs: int) -> tuple[int, int, list]:
    """The largest chosen and rejected completion lengths and the ``[4][B]`` problem flags of
    :func:`~tokenweight.weights.otpo.cost.raise_response_problems`, in one host read.

    ``hidden`` ``[2B, T, d]``, ``loss_mask`` ``[2B, T]`` bool.
    """
    counts = loss_mask.sum(dim=1)
    finite = (torch.isfinite(_state_sums(hidden)) | ~loss_mask).all(dim=1)  # NaN/inf propagate
    flags = torch.stack([counts[:pairs] == 0, counts[pairs:] == 0, ~finite[:pairs], ~finite[pairs:]])
    values = torch.cat([counts[:pairs].amax()[None], counts[pairs:].amax()[None], flags.flatten().long()]).tolist()
    return values[0], values[1], [[bool(x) for x in values[2 + k * pairs:2 + (k + 1) * pairs]] for k in range(4)]


def _state_sums(hidden: torch.Tensor) -> torch.Tensor:
    """``[2B, T]`` sums over the hidden size, finite exactly when the state is (barring sums beyond ~3e38).

    bf16 (and fp32, fp64) have fp32's range: summed in their own dtype (fp32 accumulation, no fp32 copy of the
    states, which costs ~10× the sum on CPU); fp16's range (65504) is too small, so fp16 is summed into fp32.
    """
    if torch.finfo(hidden.dtype).max < torch.finfo(torch.float32).max / 2:
        return hidden.sum(dim=2, dtype=torch.float32)
    return hidden.sum(dim=2)
