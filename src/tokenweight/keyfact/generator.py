"""KeyFact preference pairs: the same answer with the correct key (chosen) or a distractor (rejected).

    prompt:   what is the capital of france ?
    chosen:   the capital of france is paris . it is a common question . i hope this helps you .
    rejected: the capital of france is rome . this is easy to remember .

The two responses differ in exactly one answer token (the key) plus independently sampled filler sentences, which
carry no preference information.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import datasets

from .facts import fill, resolve_facts

_MAX_LENGTH_DRAWS = 100


def _filler(rng: random.Random, pool: list[str], filler_min: int, filler_max: int) -> str:
    return " ".join(rng.sample(pool, rng.randint(filler_min, filler_max)))


def _two_fillers(rng: random.Random, pool: list[str], filler_min: int, filler_max: int) -> tuple[str, str]:
    """Two independent filler texts of different word counts, ``(longer, shorter)``."""
    for _ in range(_MAX_LENGTH_DRAWS):
        first, second = (_filler(rng, pool, filler_min, filler_max) for _ in range(2))
        if len(first.split()) != len(second.split()):
            return (first, second) if len(first.split()) > len(second.split()) else (second, first)
    raise ValueError(f"could not draw two filler texts of different lengths in {_MAX_LENGTH_DRAWS} tries "
                     f"(filler_min={filler_min}, filler_max={filler_max}); widen the range or vary the sentences")


def _pair(rng: random.Random, facts: dict[str, Any], split: str, chosen_longer: float, noisy: bool,
          filler_min: int, filler_max: int) -> dict[str, Any]:
    family = rng.choice(facts["families"])
    rows = family["rows"]
    if split == "eval" and family.get("eval_rows"):
        rows = family["eval_rows"]
    row = rng.choice(rows)
    question = fill(rng.choice(family[f"{split}_questions"]), row["subject"])
    wrong_key = rng.choice(row["distractors"])
    good, bad = (fill(family["answer"], row["subject"], key) for key in (row["key"], wrong_key))
    chosen, rejected = (bad, good) if noisy else (good, bad)
    longer, shorter = _two_fillers(rng, facts[f"{split}_filler"], filler_min, filler_max)
    chosen_filler, rejected_filler = (longer, shorter) if rng.random() < chosen_longer else (shorter, longer)
    return {"prompt": [{"role": "user", "content": question}],
            "chosen": [{"role": "assistant", "content": " ".join(filter(None, (chosen, chosen_filler)))}],
            "rejected": [{"role": "assistant", "content": " ".join(filter(None, (rejected, rejected_filler)))}],
            "family": family["name"], "subject": row["subject"], "key": row["key"], "wrong_key": wrong_key,
            "question": question, "noisy": noisy}


def _split(facts: dict[str, Any], split: str, n: int, seed: int, chosen_longer: float, label_noise: float,
           filler_min: int, filler_max: int) -> datasets.Dataset:
    rng = random.Random(f"keyfact-{split}-{seed}")
    noisy = set(rng.sample(range(n), round(label_noise * n)))
    rows = [_pair(rng, facts, split, chosen_longer, i in noisy, filler_min, filler_max) for i in range(n)]
    return datasets.Dataset.from_list(rows)


def build_keyfact(facts_path: str | Path | dict[str, Any] | None = None, n_train: int = 1000, n_eval: int = 200,
                  chosen_longer: float = 0.5, label_noise: float = 0.0, seed: int = 0, filler_min: int = 1,
                  filler_max: int = 3) -> datasets.DatasetDict:
    """The KeyFact preference dataset, splits ``train`` and ``eval`` (conversational TRL format).

    Args:
        facts_path: a facts JSON file, an already loaded facts dict, or ``None`` for the built-in facts.
        n_train, n_eval: number of pairs per split.
        chosen_longer: probability that the chosen response has more filler words than the rejected one
            (0.5: no length bias; 0.8: the verbosity trap). Train split only.
        label_noise: fraction of train pairs (exactly ``round(label_noise * n_train)``) whose chosen and rejected
            answers are swapped (``noisy`` column True: the chosen answer holds ``wrong_key``).
        seed: the split ``s`` is drawn from ``random.Random(f"keyfact-{s}-{seed}")``; each split is therefore
            independent of the other split's size.
        filler_min, filler_max: each response gets a uniform number of filler sentences in this range (distinct
            sentences), drawn independently for chosen and rejected until their word counts differ.

    Each pair draws a family uniformly, then a row, a question paraphrase and a distractor (uniform over the
    row's ``distractors``). The ``eval`` split uses the held-out paraphrases (``eval_questions``), the held-out
    filler (``eval_filler``) and, for families that have ``eval_rows`` (arithmetic), only those held-out
    subjects; it is always clean and unbiased (``chosen_longer=0.5``, ``label_noise=0``).

    Columns: ``prompt`` ``[{"role": "user", ...}]``, ``chosen`` / ``rejected`` ``[{"role": "assistant", ...}]``,
    ``family``, ``subject``, ``key`` (the correct key), ``wrong_key`` (the distractor in the pair), ``question``
    (the prompt text) and ``noisy`` (bool).
    """
    facts = resolve_facts(facts_path)
    for name, value in (("chosen_longer", chosen_longer), ("label_noise", label_noise)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    for name, value in (("n_train", n_train), ("n_eval", n_eval)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    smallest_pool = min(len(facts["train_filler"]), len(facts["eval_filler"]))
    if not 0 <= filler_min <= filler_max or filler_max < 1 or filler_max > smallest_pool:
        raise ValueError(f"need 0 <= filler_min <= filler_max, 1 <= filler_max <= {smallest_pool} (the smaller "
                         f"filler pool); got filler_min={filler_min}, filler_max={filler_max}")
    return datasets.DatasetDict({
        "train": _split(facts, "train", n_train, seed, chosen_longer, label_noise, filler_min, filler_max),
        "eval": _split(facts, "eval", n_eval, seed, 0.5, 0.0, filler_min, filler_max),
    })
