"""A causal LM's output head as tokenweight applies it: ``z = softcap(scale · (h Wᵀ + b))``, read from the model's
config, and checked at load time against the model's own forward.

Architectures differ in the last step from final hidden states to logits. The transforms known here, all read
generically from the (text) config:

    logit_scale               z = a · logit_scale              (Cohere, Cohere2)
    logits_scaling            z = a / logits_scaling           (Granite, GraniteMoe, GraniteMoeHybrid)
    lm_head_multiplier        z = a · lm_head_multiplier       (Falcon-H1)
    final_logit_softcapping   z = c · tanh(z / c)              (Gemma 2, Gemma 3)

Anything else a model does after its output embedding is caught by :func:`verify_output_head`, which compares this
head with ``model(...).logits`` on a few tokens and refuses the model in one line instead of training it on wrong
log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from tokenweight.errors import UserError

SCALE_ATTRIBUTES = {"logit_scale": 1, "lm_head_multiplier": 1, "logits_scaling": -1}  # name → exponent of the factor
PROBE_TOKENS = 8


@dataclass(frozen=True)
class OutputHead:
    """How a model turns final hidden states ``h`` ``[..., d]`` into fp32 logits: ``softcap(scale · module(h))``.

    ``module`` is the output embedding (an ``nn.Linear`` ``[V, d]`` weight, optional bias); the tiled head reads its
    weight and bias directly, slice by slice of the vocabulary. Under FSDP2 a parameter read while its unit is
    sharded (a frozen reference's head in a backward) is gathered whole first.
    """

    module: nn.Module
    logit_scale: float = 1.0
    softcap: float | None = None

    @property
    def weight(self) -> torch.Tensor:
        """``[V, d]`` output embedding."""
        return _whole(self.module.weight)

    @property
    def bias(self) -> torch.Tensor | None:
        """``[V]`` or ``None``."""
        return _whole(getattr(self.module, "bias", None))

    def gather(self) -> None:
        """Under FSDP2, have the head's unit hold its whole parameters again (the tiled head's backward runs outside
        the module's own forward/backward hooks, possibly after the unit was resharded: TI-DPO's own passes, a frozen
        reference); a no-op otherwise."""
        if isinstance(self.module, FSDPModule):
            self.module.unshard()

    def transform(self, pre: torch.Tensor) -> torch.Tensor:
        """fp32 pre-logits ``a = h Wᵀ + b`` → logits ``z`` (same shape)."""
        if self.logit_scale != 1.0:
            pre = pre * self.logit_scale
        if self.softcap is not None:
            pre = torch.tanh(pre / self.softcap) * self.softcap
        return pre

    def transform_grad(self, logits: torch.Tensor) -> torch.Tensor | float:
        """``dz/da`` from the logits ``z`` themselves (elementwise): ``scale · (1 − (z/c)²)`` with softcapping."""
        if self.softcap is None:
            return self.logit_scale
        return self.logit_scale * (1 - (logits / self.softcap).square())

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., d]`` hidden → ``[..., V]`` fp32 logits over the whole vocabulary (for a few positions only)."""
        return self.transform(self.module(hidden).float())

    def slice_logits(self, hidden: torch.Tensor, start: int, stop: int, weight: torch.Tensor | None = None,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
        """``[k, d]`` hidden → ``[k, stop − start]`` fp32 logits of the vocabulary entries ``start..stop-1`` (the
        matmul in the model's dtype, as the model's own head does); ``weight``/``bias``: the head's, as read
        earlier (default: read now)."""
        if weight is None:
            weight, bias = self.weight, self.bias
        pre = F.linear(hidden, weight[start:stop], None if bias is None else bias[start:stop])
        return self.transform(pre.float())


def _whole(parameter: torch.Tensor | None) -> torch.Tensor | None:
    """A sharded FSDP2 parameter (a ``DTensor``) gathered whole; other tensors as they are.

    Raises:
        UserError: a DeepSpeed ZeRO-3 partitioned output head (its gradient must reach the partitions through
            DeepSpeed's own module hooks, which the tiled head bypasses; not supported yet).
    """
    if isinstance(parameter, DTensor):
        return parameter.full_tensor()
    if parameter is not None and hasattr(parameter, "ds_id"):
        raise UserError("DeepSpeed ZeRO-3 partitions the output head, which tokenweight's tiled head cannot read yet; "
                        "use FSDP2 (accelerate_configs/fsdp.yaml) or ZeRO-2, or cache the reference with "
                        "--ref_log_probs and train LoRA")
    return parameter


def _text_config(model: nn.Module):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def output_head(model: nn.Module) -> OutputHead:
    """The output head of a Hugging Face causal LM with the final-logit transforms of its config (module docstring).

    Raises:
        UserError: the output embedding is not a plain ``nn.Linear`` (e.g. an adapter on ``lm_head``).
    """
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    module = model.get_output_embeddings()
    if not isinstance(module, nn.Linear):
        raise UserError(f"{type(model).__name__}: the output head is a {type(module).__name__}, not a plain Linear "
                        "layer; tokenweight's tiled head reads its weight directly (do not put adapters on lm_head)")
    config = _text_config(model)
    scale = 1.0
    for name, exponent in SCALE_ATTRIBUTES.items():
        value = getattr(config, name, None)
        if value is not None:
            scale *= float(value) ** exponent
    return OutputHead(module=module, logit_scale=scale, softcap=getattr(config, "final_logit_softcapping", None))


def verify_output_head(model: nn.Module, backbone_forward, tokens: int = PROBE_TOKENS) -> None:
    """Check that :func:`output_head` reproduces ``model(...).logits`` on ``tokens`` tokens of one row.

    ``backbone_forward(input_ids)`` returns the final (post-norm) hidden states ``[1, tokens, d]``; the model is
    run in eval mode (no dropout) and put back in its mode.

    Raises:
        UserError: one line naming the model type, when the logits differ beyond round-off of the model's dtype.
    """
    head = output_head(model)
    config = _text_config(model)
    vocab = head.weight.shape[0]
    input_ids = (torch.arange(tokens, device=head.weight.device) * 7919 % vocab)[None, :]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model(input_ids=input_ids, use_cache=False).logits.float()
            ours = head.logits(backbone_forward(input_ids))
    finally:
        model.train(was_training)
    tolerance = (1e-4 if head.weight.dtype == torch.float32 else 2e-2) * max(1.0, expected.abs().max().item())
    error = (ours - expected).abs().max().item()
    if not error <= tolerance:
        raise UserError(f"model type {getattr(config, 'model_type', type(model).__name__)!r}: tokenweight's output "
                        f"head differs from the model's own logits by {error:.3g} (a final-logit transform it does "
                        f"not know; it knows {', '.join(SCALE_ATTRIBUTES)} and final_logit_softcapping): refusing to "
                        "train on wrong log-probs; add the transform to tokenweight.head.output_head")
