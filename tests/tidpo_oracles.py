"""Independent oracles and batch builders for the TI-DPO tests (naive, one row / one backward at a time)."""

from __future__ import annotations

import math

import torch

PAD, EOS = 0, 3
VOCAB = 60
UNIQUE_TOKEN = VOCAB - 1  # placed only where a test puts it (NaN injection)


def make_batch(prompt_lens: list[int], completion_lens: list[int], seed: int = 0):
    """Right-padded rows (prompt, completion ending with EOS): ``(input_ids, attention_mask, completion_mask)``."""
    gen = torch.Generator().manual_seed(seed)
    width = max(p + c for p, c in zip(prompt_lens, completion_lens))
    rows = len(prompt_lens)
    ids = torch.full((rows, width), PAD, dtype=torch.long)
    attention = torch.zeros(rows, width, dtype=torch.long)
    completion = torch.zeros(rows, width, dtype=torch.long)
    for r, (p, c) in enumerate(zip(prompt_lens, completion_lens)):
        ids[r, : p + c] = torch.randint(4, UNIQUE_TOKEN, (p + c,), generator=gen)
        ids[r, p + c - 1] = EOS
        attention[r, : p + c] = 1
        completion[r, p: p + c] = 1
    return ids, attention, completion


def attribution_one_row(model, ids: torch.Tensor) -> torch.Tensor:
    """``[n]`` L1 attribution of one unpadded row ``[n]``: a fresh leaf, a full forward, one backward."""
    embeds = model.get_input_embeddings()(ids[None]).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds).logits[0, -1]
    (grad,) = torch.autograd.grad(logits.max(), embeds)
    return grad[0].abs().sum(-1)


def gaussian_prior_list(length: int, sigma_div: float) -> list[float]:
    """The normalised prior of Eq. 7 over ``length`` positions, in plain Python."""
    mu, sigma = (length - 1) / 2, max(1.0, length / sigma_div)
    values = [math.exp(-0.5 * ((t - mu) / sigma) ** 2) for t in range(length)]
    return [v / sum(values) for v in values]


def naive_kl(policy_logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[N]`` Σ_t KL(softmax(ref) ‖ softmax(policy)) from full ``[N, T, V]`` logits, positions in ``mask``."""
    p_ref = torch.softmax(ref_logits.double(), -1)
    kl = (p_ref * (p_ref.log() - torch.softmax(policy_logits.double(), -1).log())).sum(-1)
    return (kl * mask).sum(-1)


def naive_triplet(anchor: list[torch.Tensor], chosen: list[torch.Tensor], rejected: list[torch.Tensor],
                  margin: float) -> torch.Tensor:
    """Mean hinge over pairs of per-row variable-length log-ratio vectors, in a Python loop."""
    losses = []
    for a, w, l in zip(anchor, chosen, rejected):
        kw, kl = min(len(a), len(w)), min(len(a), len(l))
        pos = sum(((a[k] - w[k]) ** 2 for k in range(kw)), torch.zeros((), dtype=a.dtype))
        neg = sum(((a[k] - l[k]) ** 2 for k in range(kl)), torch.zeros((), dtype=a.dtype))
        losses.append(torch.relu(pos - neg + margin))
    return torch.stack(losses).mean()
