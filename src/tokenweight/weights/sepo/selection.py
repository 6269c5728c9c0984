"""SePO's key-token selection from the oracle's token scores, as the authors select them (SteveKGYang/SePO
``token_score.py``, ``get_topK``).

A response of T completion tokens (EOS last) has scores s_1 … s_{T−1}: upstream slices the shifted log-probs from the
prompt's length, so its scores start at the second completion token and the first is never selected (kept here). Of
those N = T − 1 tokens, ``int(k · N)`` are selected: on a chosen response the highest scores, on a rejected one the
lowest; ties go to the earlier token (upstream's repeated ``argmax`` / ``argmin`` return the first).
"""

from __future__ import annotations


def selected_tokens(scores: list[float], ratio: float, highest: bool) -> list[float]:
    """0/1 per completion token (``len(scores)`` of them): the ``int(ratio · (T − 1))`` tokens among the 2nd … T-th
    with the highest (``highest``) or lowest scores, ties to the earlier token; the first token is 0."""
    eligible = list(range(1, len(scores)))
    count = int(ratio * len(eligible))
    order = sorted(eligible, key=lambda i: -scores[i] if highest else scores[i])  # stable: ties keep their order
    chosen = set(order[:count])
    return [1.0 if i in chosen else 0.0 for i in range(len(scores))]
