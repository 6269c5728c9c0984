"""Precomputed reference log-probs (``precompute_ref_log_probs``): one pass of the frozen reference over the data.

After it, every row carries ``chosen_ref_logps`` / ``rejected_ref_logps`` — one log-prob per completion token,
``log π_ref(y_t | x, y_<t)`` — the collator lays them out as ``ref_token_logps`` ``[2B, L-1]`` (shifted), and the
trainer needs no reference forward (nor the reference model in memory) during training. Schemes that need the
reference's hidden states at every step (TI-DPO's TDPO2 KL term) cannot use it.
"""

from __future__ import annotations

import datasets
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from tokenweight.data import PreferenceCollator
from tokenweight.logps import enable_token_scoring
from tokenweight.masks import from_shifted


@torch.no_grad()
def precompute_reference_logps(ref_model: nn.Module, dataset: datasets.Dataset, pad_token_id: int,
                               batch_size: int = 8, device: torch.device | str | None = None,
                               progress: bool = True, name: str = "train",
                               padding_free: bool = False) -> datasets.Dataset:
    """``dataset`` (tokenized) with the columns ``chosen_ref_logps`` and ``rejected_ref_logps``; only completion
    positions reach the head; ``padding_free``: the batches are scored packed (:mod:`tokenweight.logps`)."""
    device = device or next(ref_model.parameters()).device
    enable_token_scoring(ref_model).eval()
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=PreferenceCollator(pad_token_id=pad_token_id))
    chosen, rejected = [], []
    for batch in tqdm(loader, desc=f"reference log-probs ({name})", disable=not progress):
        logps = ref_model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                          score_tokens=True, score_mask=batch["loss_mask"].to(device),
                          padding_free=padding_free).token_logps.float().cpu()
        # Token alignment: a completion that starts at position 0 (empty prompt) gets 0.0 for its first token.
        rows = [row[m].tolist() for row, m in zip(from_shifted(logps), batch["completion_mask"].bool())]
        pairs = len(rows) // 2
        chosen.extend(rows[:pairs])
        rejected.extend(rows[pairs:])
    for column in ("chosen_ref_logps", "rejected_ref_logps"):
        if column in dataset.column_names:
            dataset = dataset.remove_columns(column)
    return dataset.add_column("chosen_ref_logps", chosen).add_column("rejected_ref_logps", rejected)
