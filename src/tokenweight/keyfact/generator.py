"""KeyFact preference pairs: the same answer with the correct key (chosen) or a distractor (rejected).

    prompt:   what is the capital of france ?
    chosen:   the capital of france is paris . it is a common question . i hope this helps you .
    rejected: the capital of france is rome . this is easy to remember .

The two responses differ in exactly one answer token (the key) plus independently sampled filler sentences, which
carry no preference information (unless the ``shortcut`` knob plants a sentence that does, in training only).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import datasets

from .facts import fill, resolve_facts

_MAX_LENGTH_DRAWS = 1000
#: Share of each family's held-out items (question paraphrase x subject x distractor) reserved for ``validation``.
VALIDATION_ITEM_SHARE = 0.2


def heldout_items(facts: dict[str, Any], eval_seed: int) -> dict[str, dict[str, list[tuple]]]:
    """The held-out items of every family, split into ``{"eval": {family: items}, "validation": {...}}``.

    An item is ``(row, question template, distractor)`` over the family's held-out subjects (``eval_rows`` when it
    has them, else ``rows``), its ``eval_questions`` and each row's distractors. Each family's items are shuffled
    by ``random.Random(f"keyfact-heldout-{eval_seed}")`` and ``max(1, round(VALIDATION_ITEM_SHARE * n))`` of them
    go to validation, the rest to eval: the two splits never share an item, whatever their sizes.
    """
    rng = random.Random(f"keyfact-heldout-{eval_seed}")
    out: dict[str, dict[str, list[tuple]]] = {"eval": {}, "validation": {}}
    for family in facts["families"]:
        items = [(row, question, wrong) for row in family.get("eval_rows") or family["rows"]
                 for question in family["eval_questions"] for wrong in row["distractors"]]
        if len(items) < 2:
            raise ValueError(f"family {family['name']!r} has {len(items)} held-out item (eval question x subject x "
                             "distractor); eval and validation need at least one each")
        rng.shuffle(items)
        n_validation = min(len(items) - 1, max(1, round(VALIDATION_ITEM_SHARE * len(items))))
        out["validation"][family["name"]], out["eval"][family["name"]] = items[:n_validation], items[n_validation:]
    return out


def _sides_filler(rng: random.Random, pool: list[str], filler_min: int, filler_max: int, chosen_longer: float,
                  planted: str | None, planted_side: str) -> tuple[str, str]:
    """``(chosen filler, rejected filler)``: independent draws of distinct sentences from ``pool``, with
    ``planted`` inserted at a random position on ``planted_side``; redrawn until the two full fillers differ in
    word count and the chosen one is the longer exactly when a ``chosen_longer`` coin says so."""
    chosen_is_longer = rng.random() < chosen_longer
    for _ in range(_MAX_LENGTH_DRAWS):
        sides = {side: rng.sample(pool, rng.randint(filler_min, filler_max)) for side in ("chosen", "rejected")}
        if planted is not None:
            sentences = sides[planted_side]
            sentences.insert(rng.randint(0, len(sentences)), planted)
        chosen, rejected = (" ".join(sides[side]) for side in ("chosen", "rejected"))
        n_chosen, n_rejected = len(chosen.split()), len(rejected.split())
        if n_chosen != n_rejected and (n_chosen > n_rejected) == chosen_is_longer:
            return chosen, rejected
    raise ValueError(f"could not draw chosen and rejected filler of different lengths with the chosen one "
                     f"{'longer' if chosen_is_longer else 'shorter'} in {_MAX_LENGTH_DRAWS} tries (filler_min="
                     f"{filler_min}, filler_max={filler_max}"
                     f"{', shortcut sentence on the ' + planted_side + ' side' if planted else ''}); widen the range")


def _pair(rng: random.Random, family: dict, row: dict, question: str, wrong_key: str, pool: list[str],
          chosen_longer: float, noisy: bool, shortcut: str | None, shortcut_side: str, filler_min: int,
          filler_max: int) -> dict[str, Any]:
    question = fill(question, row["subject"])
    good, bad = (fill(family["answer"], row["subject"], key) for key in (row["key"], wrong_key))
    chosen, rejected = (bad, good) if noisy else (good, bad)
    chosen_filler, rejected_filler = _sides_filler(rng, pool, filler_min, filler_max, chosen_longer,
                                                   shortcut if shortcut_side != "none" else None, shortcut_side)
    return {"prompt": [{"role": "user", "content": question}],
            "chosen": [{"role": "assistant", "content": " ".join(filter(None, (chosen, chosen_filler)))}],
            "rejected": [{"role": "assistant", "content": " ".join(filter(None, (rejected, rejected_filler)))}],
            "family": family["name"], "subject": row["subject"], "key": row["key"], "wrong_key": wrong_key,
            "question": question, "noisy": noisy, "shortcut": shortcut_side}


def _train_split(facts: dict[str, Any], n: int, seed: int, chosen_longer: float, label_noise: float,
                 shortcut: float, filler_min: int, filler_max: int) -> datasets.Dataset:
    rng = random.Random(f"keyfact-train-{seed}")
    noisy = set(rng.sample(range(n), round(label_noise * n)))
    sides = ["none"] * n
    if shortcut > 0:
        in_chosen = set(rng.sample(range(n), round(shortcut * n)))
        sides = ["chosen" if i in in_chosen else "rejected" for i in range(n)]
    rows = []
    for i in range(n):
        family = rng.choice(facts["families"])
        row = rng.choice(family["rows"])
        question = rng.choice(family["train_questions"])
        rows.append(_pair(rng, family, row, question, rng.choice(row["distractors"]), facts["train_filler"],
                          chosen_longer, i in noisy, facts.get("shortcut"), sides[i], filler_min, filler_max))
    return datasets.Dataset.from_list(rows)


def _heldout_split(facts: dict[str, Any], split: str, items: dict[str, list[tuple]], n: int, eval_seed: int,
                   filler_min: int, filler_max: int) -> datasets.Dataset:
    rng = random.Random(f"keyfact-{split}-{eval_seed}")
    rows = []
    for _ in range(n):
        family = rng.choice(facts["families"])
        row, question, wrong_key = rng.choice(items[family["name"]])
        rows.append(_pair(rng, family, row, question, wrong_key, facts["eval_filler"], 0.5, False, None, "none",
                          filler_min, filler_max))
    return datasets.Dataset.from_list(rows)


def build_keyfact(facts_path: str | Path | dict[str, Any] | None = None, n_train: int = 1000, n_eval: int = 512,
                  n_validation: int = 128, chosen_longer: float = 0.5, label_noise: float = 0.0,
                  shortcut: float = 0.0, seed: int = 0, eval_seed: int = 0, filler_min: int = 1,
                  filler_max: int = 3) -> datasets.DatasetDict:
    """The KeyFact preference dataset, splits ``train``, ``eval`` and ``validation`` (conversational TRL format).

    Args:
        facts_path: a facts JSON file, an already loaded facts dict, or ``None`` for the built-in facts.
        n_train, n_eval, n_validation: number of pairs per split.
        chosen_longer: probability that the chosen response has more filler words than the rejected one
            (0.5: no length bias; 0.8: the verbosity trap). Train split only.
        label_noise: fraction of train pairs (exactly ``round(label_noise * n_train)``) whose chosen and rejected
            answers are swapped (``noisy`` column True: the chosen answer holds ``wrong_key``).
        shortcut: 0 (off), or a value ``s`` in (0, 1]: every train pair gets the facts file's ``shortcut``
            sentence on exactly one side, the chosen side in exactly ``round(s * n_train)`` pairs and the rejected
            side in the others (``shortcut`` column ``"chosen"`` / ``"rejected"``; ``"none"`` when off). The side
            is the chosen *column* (after any label-noise swap), so the sentence predicts the training label with
            accuracy ``max(s, 1 - s)``: above 0.5 it marks the chosen answer, below 0.5 the rejected one (0.1: in
            90% of rejected answers), and 0.5 plants it without correlation. It goes at a random position among
            that side's filler sentences, and the ``chosen_longer`` rate counts its words. Train split only.
        seed: draws the train split, from ``random.Random(f"keyfact-train-{seed}")``.
        eval_seed: draws the held-out splits: the eval/validation item partition (:func:`heldout_items`) and
            ``random.Random(f"keyfact-eval-{eval_seed}")`` / ``f"keyfact-validation-{eval_seed}"``. The held-out
            splits therefore depend on neither ``seed`` nor the other splits' sizes, and a split of ``n`` pairs is
            the first ``n`` pairs of a longer one.
        filler_min, filler_max: each response gets a uniform number of filler sentences in this range (distinct
            sentences), drawn independently for chosen and rejected until their word counts differ.

    A train pair draws a family uniformly, then a row, a training paraphrase and a distractor (uniform over the
    row's ``distractors``). A held-out pair draws a family uniformly, then one of the family's items of its split
    (held-out paraphrase, subject — for families with ``eval_rows``, arithmetic, only those held-out subjects —
    and distractor) and held-out filler (``eval_filler``); ``eval`` and ``validation`` never share an item and are
    always clean and unbiased (``chosen_longer=0.5``, no label noise, no shortcut).

    Columns: ``prompt`` ``[{"role": "user", ...}]``, ``chosen`` / ``rejected`` ``[{"role": "assistant", ...}]``,
    ``family``, ``subject``, ``key`` (the correct key), ``wrong_key`` (the distractor in the pair), ``question``
    (the prompt text), ``noisy`` (bool) and ``shortcut`` (``"chosen"``, ``"rejected"`` or ``"none"``).
    """
    facts = resolve_facts(facts_path)
    for name, value in (("chosen_longer", chosen_longer), ("label_noise", label_noise)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if not 0.0 <= shortcut <= 1.0:
        raise ValueError(f"shortcut must be 0 (off) or in (0, 1] (the fraction of train pairs with the shortcut "
                         f"sentence on the chosen side; below 0.5 it marks rejected), got {shortcut}")
    if shortcut and not facts.get("shortcut"):
        raise ValueError("shortcut > 0 needs a 'shortcut' sentence in the facts file")
    for name, value in (("n_train", n_train), ("n_eval", n_eval), ("n_validation", n_validation)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    smallest_pool = min(len(facts["train_filler"]), len(facts["eval_filler"]))
    if not 0 <= filler_min <= filler_max or filler_max < 1 or filler_max > smallest_pool:
        raise ValueError(f"need 0 <= filler_min <= filler_max, 1 <= filler_max <= {smallest_pool} (the smaller "
                         f"filler pool); got filler_min={filler_min}, filler_max={filler_max}")
    items = heldout_items(facts, eval_seed)
    return datasets.DatasetDict({
        "train": _train_split(facts, n_train, seed, chosen_longer, label_noise, shortcut, filler_min, filler_max),
        **{split: _heldout_split(facts, split, items[split], n, eval_seed, filler_min, filler_max)
           for split, n in (("eval", n_eval), ("validation", n_validation))},
    })
