"""Data pipeline: formats, TRL-identical tokenization, truncation, weight columns, and every bad-row error."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
from conftest import conversational_rows, standard_rows

from tokenweight.errors import UserError
from tokenweight.data import (PreferenceCollator, load_preference_split, split_implicit_prompt,
                              tokenize_preference_dataset)


def tokenize(rows, tokenizer, **kwargs):
    return tokenize_preference_dataset(datasets.Dataset.from_list(rows), tokenizer, **kwargs)


def test_standard_tokenization_is_prompt_then_completion_then_eos(tokenizer):
    row = standard_rows(1)[0]
    ds, stats = tokenize([row], tokenizer)
    expected_prompt = tokenizer(row["prompt"])["input_ids"]
    expected_chosen = tokenizer(row["prompt"] + row["chosen"] + tokenizer.eos_token)["input_ids"]
    assert ds[0]["prompt_ids"] == expected_prompt
    assert ds[0]["prompt_ids"] + ds[0]["chosen_ids"] == expected_chosen
    assert ds[0]["chosen_ids"][-1] == tokenizer.eos_token_id
    assert ds[0]["chosen_ids"][:5] == tokenizer.convert_tokens_to_ids("the capital of france is".split())
    assert stats.rows == 1 and not stats.dropped_too_long


def test_conversational_tokenization_uses_chat_template(tokenizer):
    row = conversational_rows(1)[0]
    ds, _ = tokenize([row], tokenizer)
    prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True)
    full = tokenizer.apply_chat_template(row["prompt"] + row["chosen"], tokenize=True)
    prompt, full = list(prompt["input_ids"] if "input_ids" in prompt else prompt), list(
        full["input_ids"] if "input_ids" in full else full)
    assert ds[0]["prompt_ids"] == prompt
    assert ds[0]["prompt_ids"] + ds[0]["chosen_ids"] == full
    assert tokenizer.convert_ids_to_tokens(ds[0]["chosen_ids"][-1]) == "<|end|>"


def test_implicit_prompt_conversational_and_standard(tokenizer):
    conv = conversational_rows(1)[0]
    implicit = {"chosen": conv["prompt"] + conv["chosen"], "rejected": conv["prompt"] + conv["rejected"]}
    explicit_ds, _ = tokenize([conv], tokenizer)
    implicit_ds, _ = tokenize([implicit], tokenizer)
    for column in ("prompt_ids", "chosen_ids", "rejected_ids"):
        assert implicit_ds[0][column] == explicit_ds[0][column]
    split = split_implicit_prompt({"chosen": "what is it ? yes good", "rejected": "what is it ? yes bad"})
    assert split == {"prompt": "what is it ? yes", "chosen": " good", "rejected": " bad"}
    split = split_implicit_prompt({"chosen": "a city big", "rejected": "a city bad"})
    assert split["prompt"] == "a city" and split["chosen"] == " big"


def test_truncation_rules_and_counts(tokenizer):
    rows = standard_rows(4)
    full, _ = tokenize(rows, tokenizer)
    ds, stats = tokenize(rows, tokenizer, max_length=12, max_prompt_length=4)
    for cut, whole in zip(ds, full):
        assert cut["prompt_ids"] == whole["prompt_ids"][-4:]                     # prompt keeps its end
        assert cut["chosen_ids"] == whole["chosen_ids"][:12 - 4]                 # completion keeps its start
        assert len(cut["prompt_ids"]) + len(cut["chosen_ids"]) == 12
    assert stats.prompt_truncated == 4 and stats.completion_truncated == 4
    ds, stats = tokenize(rows + [{"prompt": "what is " * 10, "chosen": " yes", "rejected": " no"}], tokenizer,
                         max_length=12)
    assert stats.dropped_too_long == [4] and len(ds) == 4
    with pytest.raises(UserError, match="every row was dropped"):
        tokenize(rows, tokenizer, max_length=3)


def test_weight_columns_are_checked_truncated_and_collated(tokenizer):
    rows = standard_rows(2)
    base, _ = tokenize(rows, tokenizer)
    for row, tok in zip(rows, base):
        row["chosen_weights"] = [float(i) for i in range(len(tok["chosen_ids"]))]
        row["rejected_weights"] = [1.0] * len(tok["rejected_ids"])
    ds, _ = tokenize(rows, tokenizer, max_length=12)
    room = 12 - len(ds[0]["prompt_ids"])
    assert ds[0]["chosen_weights"] == [float(i) for i in range(room)]
    batch = PreferenceCollator(pad_token_id=tokenizer.pad_token_id)([ds[0], ds[1]])
    p = len(ds[0]["prompt_ids"])
    assert batch["input_ids"].shape == (4, 12) and batch["token_weights"].shape == (4, 11)  # shifted alignment
    assert batch["token_weights"][0, :p - 1].abs().sum() == 0
    assert batch["token_weights"][0, p - 1:].tolist() == [float(i) for i in range(room)]
    rows[1]["rejected_weights"] = rows[1]["rejected_weights"][:-1]
    with pytest.raises(UserError, match=r"row 1, column 'rejected_weights': \d+ weights for \d+ completion"):
        tokenize(rows, tokenizer)
    rows[1]["rejected_weights"] = [-1.0] * len(base[1]["rejected_ids"])
    with pytest.raises(UserError, match="row 1, column 'rejected_weights': weights must be finite"):
        tokenize(rows, tokenizer)


def _token_aligned(rows: list[dict], name: str, length: int) -> torch.Tensor:
    """``[2B, length]``: each completion token's value of column ``<side>_<name>`` at its token position."""
    out = torch.zeros(2 * len(rows), length)
    for i, (row, side) in enumerate([(r, "chosen") for r in rows] + [(r, "rejected") for r in rows]):
        start, values = len(row["prompt_ids"]), row[f"{side}_{name}"]
        out[i, start:start + len(values)] = torch.tensor(values)
    return out


def test_collator_shifts_the_loss_mask_and_token_columns_once():
    rows = [{"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10, 11, 12], "row_index": 0,
             "chosen_weights": [0.5, 2.0], "rejected_weights": [1.0, 3.0, 4.0],
             "chosen_ref_logps": [-1.0, -2.0], "rejected_ref_logps": [-3.0, -4.0, -5.0]},
            {"prompt_ids": [], "chosen_ids": [8, 9, 10, 11], "rejected_ids": [12], "row_index": 1,  # empty prompt
             "chosen_weights": [6.0, 7.0, 8.0, 9.0], "rejected_weights": [7.5],
             "chosen_ref_logps": [-6.0, -7.0, -8.0, -9.0], "rejected_ref_logps": [-7.5]}]
    for multiple, length in ((None, 6), (8, 8)):
        batch = PreferenceCollator(pad_token_id=0, pad_to_multiple_of=multiple)(rows)
        assert batch["input_ids"].shape == (4, length)
        assert batch["loss_mask"].dtype == torch.bool and batch["loss_mask"].shape == (4, length - 1)
        # equal to the old slices of the token-aligned layout
        assert torch.equal(batch["loss_mask"], batch["completion_mask"][:, 1:].bool())
        for name, column in (("weights", "token_weights"), ("ref_logps", "ref_token_logps")):
            assert batch[column].shape == (4, length - 1)
            assert torch.equal(batch[column], _token_aligned(rows, name, length)[:, 1:]), name
    assert batch["loss_mask"][:, :5].int().tolist() == [[0, 0, 1, 1, 0], [1, 1, 1, 0, 0],
                                                        [0, 0, 1, 1, 1], [0, 0, 0, 0, 0]]
    # index t holds token t + 1's value; the empty prompt's first completion token is predicted by no position
    assert batch["token_weights"][:, :5].tolist() == [[0, 0, 0.5, 2.0, 0], [7.0, 8.0, 9.0, 0, 0],
                                                      [0, 0, 1.0, 3.0, 4.0], [0, 0, 0, 0, 0]]
    assert batch["ref_token_logps"][1, :3].tolist() == [-7.0, -8.0, -9.0]


def test_collator_layout(tokenizer):
    ds, _ = tokenize(standard_rows(3), tokenizer)
    batch = PreferenceCollator(pad_token_id=tokenizer.pad_token_id)([ds[i] for i in range(3)])
    assert batch["input_ids"].shape[0] == 6
    for i in range(3):
        for side, offset in (("chosen", 0), ("rejected", 3)):
            ids = ds[i]["prompt_ids"] + ds[i][f"{side}_ids"]
            row = batch["input_ids"][i + offset]
            assert row[:len(ids)].tolist() == ids
            assert (row[len(ids):] == tokenizer.pad_token_id).all()
            assert batch["attention_mask"][i + offset].sum() == len(ids)
            assert batch["completion_mask"][i + offset].tolist()[:len(ids)] == (
                [0] * len(ds[i]["prompt_ids"]) + [1] * len(ds[i][f"{side}_ids"]))
    assert batch["row_index"].tolist() == [0, 1, 2]
    padded = PreferenceCollator(pad_token_id=0, pad_to_multiple_of=8)([ds[0]])
    assert padded["input_ids"].shape[1] % 8 == 0


@pytest.mark.parametrize("bad, message", [
    ({"prompt": "what is it ?", "chosen": " yes"}, "row 1: missing column 'rejected'"),
    ({"prompt": "what is it ?", "chosen": 3, "rejected": " no"}, "row 1, column 'chosen': expected a string"),
    ({"prompt": "what is it ?", "chosen": " yes", "rejected": "  "}, "row 1, column 'rejected': empty completion"),
])
def test_bad_standard_rows_name_row_and_column(tokenizer, bad, message):
    rows = [standard_rows(1)[0], bad]
    with pytest.raises(UserError, match=message):
        tokenize_preference_dataset(_listing(rows), tokenizer)


def _listing(rows):
    """A dataset-like list (datasets would reject mixed column types before we could name the row)."""
    class Rows(list):
        column_names = sorted({k for r in rows for k in r})
    return Rows(rows)


def test_bad_conversational_rows(tokenizer):
    good = conversational_rows(1)[0]
    bad_role = {**good, "chosen": [{"content": "yes"}]}
    with pytest.raises(UserError, match="row 1, column 'chosen', message 0: expected a dict with 'role'"):
        tokenize_preference_dataset(_listing([good, bad_role]), tokenizer)
    empty = {**good, "rejected": [{"role": "assistant", "content": " "}]}
    with pytest.raises(UserError, match="row 1, column 'rejected': empty completion"):
        tokenize_preference_dataset(_listing([good, empty]), tokenizer)
    tokenizer.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
                               "{% if add_generation_prompt %}<|user|> {% endif %}")  # renders the prompt differently
    with pytest.raises(UserError, match=r"row 0, column 'chosen': the chat template renders the prompt "
                                        r"\(roles \[user\], with the generation prompt\) differently"):
        tokenize_preference_dataset(_listing([good]), tokenizer)


def test_identical_pairs_are_counted(tokenizer, caplog):
    rows = standard_rows(3)
    rows[2]["rejected"] = rows[2]["chosen"]
    _, stats = tokenize(rows, tokenizer)
    assert stats.identical_pairs == 1
    assert "1 pairs have identical chosen and rejected" in caplog.text


def test_sources_files_folders_and_objects(tmp_path):
    rows = standard_rows(4)
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    datasets.Dataset.from_list(rows).to_csv(str(tmp_path / "d.csv"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "saved"))
    for source in ("d.jsonl", "d.parquet", "d.csv", "saved"):
        loaded = load_preference_split(str(tmp_path / source), "train")
        assert [r["chosen"] for r in loaded] == [r["chosen"] for r in rows]
    assert len(load_preference_split(datasets.Dataset.from_list(rows))) == 4
    with pytest.raises(UserError, match=r"split 'test' not found .* \['train'\]"):
        load_preference_split(str(tmp_path / "saved"), "test")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(UserError, match="unsupported extension '.txt'"):
        load_preference_split(str(tmp_path / "d.txt"))
