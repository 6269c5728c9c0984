"""Held-out preference evaluation: implicit-reward accuracy and margins of a policy against its reference.

The implicit reward of a response is r = β·Σ_t (log π_θ − log π_ref)(y_t) over its completion tokens
(unweighted, so that every scheme is judged by the same yardstick). ``pref_acc`` counts a pair as won when
r(chosen) > r(rejected) and half won on a tie, so a policy equal to its reference scores exactly 0.5.
``logp_acc`` ranks by the policy's own log-likelihood Σ_t log π_θ(y_t) (meaningful for the reference too).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from tokenweight.data import PreferenceCollator
from tokenweight.logps import enable_token_scoring


@dataclass
class PairScores:
    """Per-pair sums over completion tokens, each ``[P]``: policy and reference log-probs of both responses,
    and completion lengths."""

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    chosen_len: torch.Tensor
    rejected_len: torch.Tensor


@torch.no_grad()
def score_pairs(model: nn.Module, ref_model: nn.Module | None, dataset, pad_token_id: int, batch_size: int = 8,
                progress: bool = True) -> PairScores:
    """Score every tokenized pair of ``dataset`` under ``model`` and ``ref_model`` (``None``: the policy itself)."""
    collator = PreferenceCollator(pad_token_id=pad_token_id)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collator)
    device = next(model.parameters()).device
    models = [model] if ref_model is None else [model, ref_model]
    training = [m.training for m in models]
    for m in models:
        enable_token_scoring(m).eval()
    sums = {"policy": [], "ref": [], "len": []}
    for batch in tqdm(loader, desc="scoring pairs", disable=not progress, leave=False):
        batch = {k: v.to(device) for k, v in batch.items()}
        mask = batch["completion_mask"][:, 1:].float()
        for name, m in zip(("policy", "ref"), models):
            out = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], score_tokens=True)
            sums[name].append((out.token_logps * mask).sum(dim=1).cpu())
        sums["len"].append(mask.sum(dim=1).cpu())
    for m, was_training in zip(models, training):
        m.train(was_training)
    policy, lengths = torch.cat(sums["policy"]), torch.cat(sums["len"])
    ref = torch.cat(sums["ref"]) if ref_model is not None else policy

    def halves(x):  # each batch is [chosen rows; rejected rows]: undo that interleaving per batch
        chosen, rejected = [], []
        for start in range(0, len(x), 2 * batch_size):
            block = x[start:start + 2 * batch_size]
            c, r = block.chunk(2)
            chosen.append(c)
            rejected.append(r)
        return torch.cat(chosen), torch.cat(rejected)

    (pc, pr), (rc, rr), (lc, lr) = halves(policy), halves(ref), halves(lengths)
    return PairScores(pc, pr, rc, rr, lc, lr)


def preference_report(scores: PairScores, beta: float) -> dict[str, float]:
    """``pref_acc``, ``logp_acc`` and mean implicit-reward ``margin`` (β units) from :class:`PairScores`."""
    reward_c = beta * (scores.policy_chosen - scores.ref_chosen)
    reward_r = beta * (scores.policy_rejected - scores.ref_rejected)
    won = (reward_c > reward_r).float() + 0.5 * (reward_c == reward_r).float()
    return {
        "pref_acc": won.mean().item(),
        "logp_acc": (scores.policy_chosen > scores.policy_rejected).float().mean().item(),
        "margin": (reward_c - reward_r).mean().item(),
    }
