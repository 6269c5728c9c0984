"""How well the KeyFact base model judges: its verdicts on AttentionPO's own judge inputs.

AttentionPO reads the judge's attention at the last position of a judge input (where the verdict would be
written), so it only carries the preference when the model, at that position, knows which answer is better. The
judge inputs here are built by AttentionPO's code (:func:`~tokenweight.weights.attention.judge.judge_pair_for_row`
on the trainer's tokenization of each row, with the default judge template), in both orders (answer A = chosen,
then answer A = rejected), so a verdict accuracy measured here is the accuracy of exactly what AttentionPO sees.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data import tokenize_preference_dataset
from ..weights.attention.judge import default_template, judge_pair_for_row, template_pieces
from .tokenizer import JUDGE_VERDICTS


def judge_verdict_logits(model, tokenizer, rows: Sequence[dict], batch_size: int = 32) -> torch.Tensor:
    """``[N, 2, 2]`` log-probabilities of the verdicts: ``[i, order, v]`` is log p(verdict ``JUDGE_VERDICTS[v]``)
    on row ``i``'s judge input ``order`` (0: answer A = chosen, 1: answer A = rejected), at its last position."""
    tokenized, _ = tokenize_preference_dataset(_as_dataset(rows), tokenizer, name="judge rows")
    if len(tokenized) != len(rows):
        raise ValueError(f"{len(rows) - len(tokenized)} judge rows were dropped by tokenization")
    pieces = template_pieces(tokenizer, default_template())
    inputs = [ids for index, row in enumerate(tokenized)
              for ids in judge_pair_for_row(row, index, tokenizer, pieces, None).inputs]
    verdict_ids = [_single_token(tokenizer, verdict) for verdict in JUDGE_VERDICTS]
    pad = tokenizer.pad_token_id
    out = []
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start:start + batch_size]
            width = max(len(ids) for ids in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for b, ids in enumerate(chunk):
                input_ids[b, :len(ids)] = torch.tensor(ids)
                mask[b, :len(ids)] = 1
            logits = model(input_ids=input_ids, attention_mask=mask).logits
            last = logits[torch.arange(len(chunk)), mask.sum(1) - 1].float()
            out.append(torch.log_softmax(last, dim=-1)[:, verdict_ids])
    return torch.cat(out).view(len(rows), 2, len(verdict_ids))


def judge_verdict_accuracy(model, tokenizer, rows: Sequence[dict], batch_size: int = 32) -> float:
    """Fraction of judge verdicts that name the chosen answer, over both orders of every row (``2 N`` verdicts;
    a tie counts ½). A verdict is the more probable of ``a`` / ``b`` at the judge input's last position.

    ``rows``: KeyFact rows (``prompt``, ``chosen``, ``rejected``; use held-out ones, e.g. the ``eval`` split).
    """
    logps = judge_verdict_logits(model, tokenizer, rows, batch_size)
    says_a = logps[..., 0] - logps[..., 1]              # [N, 2]
    right = torch.stack([says_a[:, 0], -says_a[:, 1]], dim=1)  # order 0 wants "a", order 1 wants "b"
    return ((right > 0).float() + 0.5 * (right == 0).float()).mean().item()


def _single_token(tokenizer, word: str) -> int:
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"judge verdict {word!r} is not a single token of this tokenizer: {ids}")
    return ids[0]


def _as_dataset(rows: Sequence[dict]):
    import datasets

    if isinstance(rows, datasets.Dataset):
        return rows.select_columns(["prompt", "chosen", "rejected"])
    return datasets.Dataset.from_list([{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in rows])
