"""The KeyFact facts file: loading, validation, writing and the text it renders.

Schema (JSON)::

    {"families": [{"name": "capitals",
                   "train_questions": ["what is the capital of {subject} ?", ...],
                   "eval_questions":  ["which city serves as the capital of {subject} ?", ...],
                   "answer": "the capital of {subject} is {key} .",
                   "rows": [{"subject": "france", "key": "paris", "distractors": ["lyon", "rome", ...]}, ...],
                   "eval_rows": [...]},   # optional: subjects seen only by the eval split
                  ...],
     "train_filler": ["this is a well known fact .", ...],
     "eval_filler":  ["it is a classic example .", ...],
     "shortcut": "this is a fact i know well ."}   # optional: the sentence of the shortcut variant

All text is lowercase words and punctuation separated by single spaces, so the word-level KeyFact tokenizer gives
one token per word. ``key`` and every distractor are single words (single tokens). ``distractors[0]`` is the row's
*lure*: the base model's SFT corpus answers the lure instead of the key with probability ``1 - p_correct``, so the
reference model hesitates between exactly those two words. ``shortcut`` is never filler of a preference pair: the
generator plants it on one side of each training pair when asked to (``build_keyfact(shortcut=...)``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

DEFAULT_FACTS_PATH = Path(__file__).with_name("facts.json")

_PLACEHOLDER = re.compile(r"\{[^}]*\}")


def load_facts(path: str | Path | None = None) -> dict[str, Any]:
    """Read and validate a facts file (``None``: the built-in :data:`DEFAULT_FACTS_PATH`)."""
    path = Path(path) if path is not None else DEFAULT_FACTS_PATH
    try:
        facts = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"facts file {path}: invalid JSON ({error})") from error
    validate_facts(facts, source=str(path))
    return facts


def resolve_facts(facts: str | Path | dict[str, Any] | None) -> dict[str, Any]:
    """A validated facts dict from a path, an already loaded dict, or ``None`` (the built-in file)."""
    if isinstance(facts, dict):
        validate_facts(facts)
        return facts
    return load_facts(facts)


def save_facts(facts: dict[str, Any], path: str | Path) -> Path:
    """Validate ``facts`` and write them as JSON to ``path``; returns the path."""
    validate_facts(facts, source=str(path))
    path = Path(path)
    path.write_text(json.dumps(facts, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _check_text(text: Any, where: str, allowed: set[str]) -> None:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: expected a non-empty string, got {text!r}")
    if text != " ".join(text.split()):
        raise ValueError(f"{where}: {text!r} must be words separated by single spaces (no leading, trailing or "
                         "repeated whitespace)")
    if text != text.lower():
        raise ValueError(f"{where}: {text!r} must be lowercase")
    unknown = set(_PLACEHOLDER.findall(text)) - allowed
    if unknown:
        raise ValueError(f"{where}: unknown placeholder(s) {sorted(unknown)} in {text!r} (allowed: {sorted(allowed)})")


def _check_word(word: Any, where: str) -> None:
    _check_text(word, where, set())
    if len(word.split()) != 1:
        raise ValueError(f"{where}: {word!r} is not a single token (keys and distractors must be one word, "
                         "without spaces)")


def _check_row(row: Any, where: str) -> None:
    if not isinstance(row, dict) or set(row) != {"subject", "key", "distractors"}:
        raise ValueError(f"{where}: expected an object with exactly the keys 'subject', 'key', 'distractors', "
                         f"got {row!r:.120}")
    _check_text(row["subject"], f"{where}, subject", set())
    _check_word(row["key"], f"{where} ({row['subject']!r}), key")
    distractors = row["distractors"]
    if not isinstance(distractors, list) or not distractors:
        raise ValueError(f"{where} ({row['subject']!r}): 'distractors' must be a non-empty list of words")
    for k, word in enumerate(distractors):
        _check_word(word, f"{where} ({row['subject']!r}), distractor {k}")
    if row["key"] in distractors:
        raise ValueError(f"{where} ({row['subject']!r}): the key {row['key']!r} is also listed as a distractor")
    if len(set(distractors)) != len(distractors):
        raise ValueError(f"{where} ({row['subject']!r}): repeated distractors {distractors}")


def _check_family(family: Any, index: int) -> None:
    if not isinstance(family, dict) or not isinstance(family.get("name"), str) or not family["name"]:
        raise ValueError(f"family {index}: expected an object with a non-empty 'name'")
    where = f"family {family['name']!r}"
    required = {"name", "train_questions", "eval_questions", "answer", "rows"}
    missing, extra = required - set(family), set(family) - required - {"eval_rows"}
    if missing or extra:
        raise ValueError(f"{where}: missing keys {sorted(missing)}, unknown keys {sorted(extra)}")
    for split in ("train_questions", "eval_questions"):
        questions = family[split]
        if not isinstance(questions, list) or not questions:
            raise ValueError(f"{where}: {split!r} must be a non-empty list of question templates")
        for k, question in enumerate(questions):
            _check_text(question, f"{where}, {split}[{k}]", {"{subject}"})
            if "{subject}" not in question:
                raise ValueError(f"{where}, {split}[{k}]: {question!r} has no {{subject}} placeholder")
    shared = set(family["train_questions"]) & set(family["eval_questions"])
    if shared:
        raise ValueError(f"{where}: question templates {sorted(shared)} are both train and eval (must be held out)")
    _check_text(family["answer"], f"{where}, answer", {"{subject}", "{key}"})
    if family["answer"].split().count("{key}") != 1 or family["answer"].count("{key}") != 1:
        raise ValueError(f"{where}, answer: {family['answer']!r} must contain {{key}} exactly once, as a word")
    for split in ("rows", "eval_rows"):
        rows = family.get(split, [])
        if not isinstance(rows, list) or (split == "rows" and not rows):
            raise ValueError(f"{where}: {split!r} must be a {'non-empty ' if split == 'rows' else ''}list of rows")
        for k, row in enumerate(rows):
            _check_row(row, f"{where}, {split}[{k}]")
    subjects = [row["subject"] for row in family["rows"] + family.get("eval_rows", [])]
    repeated = sorted({s for s in subjects if subjects.count(s) > 1})
    if repeated:
        raise ValueError(f"{where}: subjects listed more than once (rows and eval_rows together): {repeated}")


def validate_facts(facts: Any, source: str = "facts") -> None:
    """Raise ``ValueError`` naming the family, row and field of the first problem found in ``facts``."""
    if not isinstance(facts, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(facts).__name__}")
    missing, extra = {"families", "train_filler", "eval_filler"} - set(facts), set(facts) - {
        "families", "train_filler", "eval_filler", "shortcut"}
    if missing or extra:
        raise ValueError(f"{source}: missing keys {sorted(missing)}, unknown keys {sorted(extra)}")
    families = facts["families"]
    if not isinstance(families, list) or not families:
        raise ValueError(f"{source}: 'families' must be a non-empty list")
    try:
        for index, family in enumerate(families):
            _check_family(family, index)
        names = [family["name"] for family in families]
        if len(set(names)) != len(names):
            raise ValueError(f"family names must be unique, got {names}")
        for split in ("train_filler", "eval_filler"):
            pool = facts[split]
            if not isinstance(pool, list) or not pool:
                raise ValueError(f"{split!r} must be a non-empty list of sentences")
            for k, sentence in enumerate(pool):
                _check_text(sentence, f"{split}[{k}]", set())
        shared = set(facts["train_filler"]) & set(facts["eval_filler"])
        if shared:
            raise ValueError(f"filler sentences {sorted(shared)} are both train and eval (must be held out)")
        if "shortcut" in facts:
            _check_text(facts["shortcut"], "shortcut", set())
            if facts["shortcut"] in facts["train_filler"] + facts["eval_filler"]:
                raise ValueError(f"the shortcut sentence {facts['shortcut']!r} is also a filler sentence")
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def fill(template: str, subject: str, key: str | None = None) -> str:
    """``template`` with ``{subject}`` (and ``{key}`` when given) substituted."""
    text = template.replace("{subject}", subject)
    return text if key is None else text.replace("{key}", key)


def key_char_offset(answer_template: str, subject: str) -> int:
    """Character offset of the key in ``fill(answer_template, subject, key)`` (it does not depend on the key)."""
    return len(fill(answer_template.split("{key}")[0], subject))


def family_by_name(facts: dict[str, Any], name: str) -> dict[str, Any]:
    for family in facts["families"]:
        if family["name"] == name:
            return family
    raise KeyError(f"family {name!r} is not in the facts file (families: {[f['name'] for f in facts['families']]})")


def find_row(facts: dict[str, Any], family: str, subject: str) -> dict[str, Any]:
    """The facts row (train or eval) of ``subject`` in ``family``."""
    entry = family_by_name(facts, family)
    for row in entry["rows"] + entry.get("eval_rows", []):
        if row["subject"] == subject:
            return row
    raise KeyError(f"subject {subject!r} is not a row of family {family!r}")


def facts_words(facts: dict[str, Any]) -> set[str]:
    """Every word of every template, row, filler and shortcut sentence (placeholders excluded)."""
    texts = list(facts["train_filler"]) + list(facts["eval_filler"]) + [facts.get("shortcut", "")]
    for family in facts["families"]:
        texts += family["train_questions"] + family["eval_questions"] + [family["answer"]]
        for row in family["rows"] + family.get("eval_rows", []):
            texts += [row["subject"], row["key"], *row["distractors"]]
    return {word for text in texts for word in text.split() if not _PLACEHOLDER.fullmatch(word)}
