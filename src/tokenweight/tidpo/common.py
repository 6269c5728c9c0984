"""Small helpers shared by the TI-DPO modules: position ids, last-token indices, eval mode."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[N, L]`` 0/1 mask → ``[N, L]`` position ids counting real tokens only (0 on leading padding)."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """``[N, L]`` 0/1 mask → ``[N]`` index of the last set position (-1 for an empty row)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, -1).max(dim=1).values


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode; on exit restore every submodule's own ``training`` flag."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode
