"""Logged metrics with declared kinds, kept as tensors until the logging step, and their reduction.

Every metric says what it is where it is recorded; its name plays no part:

- a **mean**, a plain value (a 0-d tensor or a Python float): averaged over processes and micro-steps
  (``rewards/*``, ``weights/*``, ``otpo/iterations``, ``tgdpo/negative_weights`` …);
- a :class:`Count` (``Count(value)``): **summed** over processes and micro-steps, so it reads as the number of events
  since the previous log (``otpo/unconverged_pairs``, ``tidpo/kl_failures``, ``confpo/zeroed_pairs``,
  ``num_tokens``, which the trainer turns into a running total as TRL logs it);
- a :class:`TokenMean` (Σ over tokens, token count): per micro-step Σ/Σ over processes, then averaged over
  micro-steps, exactly as TRL averages ``entropy``, ``logits/chosen``, ``logits/rejected`` and
  ``mean_token_accuracy``.

The metric functions of the library return detached 0-d tensors on the batch's device and never call ``.item()``.
The trainer keeps every micro-step's values (:func:`record_metrics`) and, at the logging step, combines them with
:func:`reduce_metrics`: one stack, one sum over processes, one device-to-host transfer. Schemes may return Python
floats (kept on the host until the logging step, no device round trip) or tensors. Every process must record the
same metric names, each always of the same kind, at every micro-step (the cross-process sum is elementwise).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import NamedTuple

import torch


class TokenMean(NamedTuple):
    """A per-token mean kept as its parts (0-d tensors or floats), so processes combine as ``Σ total / Σ tokens``."""

    total: torch.Tensor | float
    tokens: torch.Tensor | float


class Count(NamedTuple):
    """A number of events (a 0-d tensor or a float), summed over processes and micro-steps when logged."""

    value: torch.Tensor | float


MetricValue = torch.Tensor | float | TokenMean | Count

#: The kind of each recorded value, by its class; a plain value is a mean.
_KINDS = {TokenMean: "token mean", Count: "count"}


def metric_kind(value: MetricValue) -> str:
    """``"token mean"``, ``"count"`` or ``"mean"`` (a plain tensor or float)."""
    return _KINDS.get(type(value), "mean")


def record_metrics(recorded: defaultdict[str, list], metrics: dict[str, MetricValue]) -> None:
    """Append one micro-step's ``metrics`` to ``recorded`` (name → values): tensors detached, no host sync."""
    for name, value in metrics.items():
        recorded[name].append(type(value)(*(_scalar(name, part) for part in value)) if metric_kind(value) != "mean"
                              else _scalar(name, value))


def _scalar(name: str, value) -> torch.Tensor | float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"metric {name!r} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        return value.detach().reshape(())
    if isinstance(value, (bool, int, float)):
        return float(value)
    raise TypeError(f"metric {name!r} must be a tensor, a float, a Count or a TokenMean, got {type(value).__name__}")


def reduce_metrics(recorded: dict[str, list], device: torch.device,
                   sum_over_processes: Callable[[torch.Tensor], torch.Tensor],
                   num_processes: int) -> dict[str, float]:
    """Combine the values recorded since the last logging step into one number per name, by their declared kind
    (module docstring); a name recorded as two kinds is an error.

    The values on ``device`` are stacked (the host floats appended with one copy), summed over processes with
    ``sum_over_processes`` (``[K]`` → ``[K]``, e.g. ``accelerator.reduce(·, "sum")``) and moved to the host once.
    """
    names = sorted(name for name, values in recorded.items() if values)
    on_device, on_host, layout = [], [], []
    for name in names:
        for value in recorded[name]:
            kind = metric_kind(value)
            slots = []
            for part in (value if kind != "mean" else (value,)):
                if isinstance(part, torch.Tensor) and part.device == device:
                    slots.append(len(on_device))
                    on_device.append(part)
                else:
                    slots.append(~len(on_host))  # negative: an index into the host values
                    on_host.append(float(part))
            layout.append((name, kind, slots))
    if not layout:
        return {}
    dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    flat = torch.stack(on_device).to(dtype) if on_device else torch.zeros(0, dtype=dtype, device=device)
    if on_host:
        flat = torch.cat([flat, torch.tensor(on_host, dtype=dtype).to(device)])
    totals = sum_over_processes(flat).tolist()
    entries: dict[str, list[list[float]]] = defaultdict(list)
    kinds: dict[str, set[str]] = defaultdict(set)
    for name, kind, slots in layout:
        entries[name].append([totals[s] if s >= 0 else totals[len(on_device) + ~s] for s in slots])
        kinds[name].add(kind)
    reduced = {}
    for name, values in entries.items():
        if len(kinds[name]) > 1:
            raise ValueError(f"metric {name!r} was recorded as more than one kind: {', '.join(sorted(kinds[name]))}")
        kind = kinds[name].pop()
        if kind == "token mean":
            reduced[name] = sum(total / tokens if tokens else 0.0 for total, tokens in values) / len(values)
        elif kind == "count":
            reduced[name] = sum(value for value, in values)
        else:
            reduced[name] = sum(value for value, in values) / (len(values) * num_processes)
    return reduced
