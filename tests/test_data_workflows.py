"""Data workflows driven through the command line on files the tests write: splits of a single file,
``--eval_fraction``, the per-split data summary, one-line data errors and where ``tokenweight eval`` writes."""

from __future__ import annotations

import json
import random

import pytest

from conftest import conversational_rows, standard_rows
from tokenweight.cli import main


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def one_error_line(stderr: str) -> str:
    """The error line, after asserting it is the only one and the last (progress bars may precede it)."""
    assert stderr.count("tokenweight: error: ") == 1 and "Traceback" not in stderr
    last = stderr.rstrip("\n").splitlines()[-1]
    assert last.startswith("tokenweight: error: ")
    return last


def train(model_dir, data, out, *extra) -> int:
    return main(["train", "--model_name_or_path", str(model_dir), "--dataset_name", str(data), "--output_dir",
                 str(out), "--max_steps", "1", "--per_device_train_batch_size", "2", "--max_length", "64",
                 "--report_to", "none", "--save_strategy", "no", *extra])


def test_a_single_file_has_only_the_split_train(tiny_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", standard_rows(4))
    assert train(tiny_model_dir, data, tmp_path / "run", "--eval_split", "test") == 2
    err = capsys.readouterr().err
    assert one_error_line(err).startswith(f"tokenweight: error: split 'test' not found in dataset file {data}")
    assert "(available: ['train'])" in err
    assert not (tmp_path / "run").exists()


def test_a_folder_names_the_splits_its_files_map_to(tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "pairs"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", standard_rows(4))
    write_jsonl(folder / "validation.jsonl", standard_rows(2))
    assert train(tiny_model_dir, folder, tmp_path / "run", "--eval_split", "test") == 2
    assert "split 'test' not found in " + str(folder) + " (available: ['train', 'validation'])" in \
        capsys.readouterr().err
    assert train(tiny_model_dir, folder, tmp_path / "run", "--eval_split", "validation") == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["eval_split"] == f"validation (folder {folder}, 2 rows)"
    assert results["data"]["eval"]["rows"] == 2 and results["data"]["train"]["rows"] == 4


def test_eval_fraction_holds_out_seeded_disjoint_rows_and_eval_finds_them(tiny_model_dir, tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # the results table's title on one line
    rows = standard_rows(8)
    for i, row in enumerate(rows):
        row["question_id"] = i
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    assert train(tiny_model_dir, data, tmp_path / "run", "--eval_fraction", "0.25", "--seed", "3") == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    expected = sorted(random.Random(3).sample(range(8), 2))
    name = f"train[eval_fraction 0.25, seed 3] (file {data}, 2 rows)"
    assert results["eval_rows"] == expected
    assert results["eval_split"] == name
    assert f"eval split: {name}" in out
    assert results["data"]["eval"]["rows"] == 2 and results["data"]["train"]["rows"] == 6
    assert results["data"]["train"]["split"] == f"train minus eval_fraction (file {data}, 6 rows)"
    # the same rows for `tokenweight eval`: the exports name each evaluated row by its question_id
    assert main(["eval", "--model_name_or_path", str(tiny_model_dir), "--dataset_name", data, "--eval_fraction",
                 "0.25", "--split_seed", "3", "--num_generations", "2", "--max_new_tokens", "2", "--export_dir",
                 str(tmp_path / "exports"), "--output", str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["split"] == name and evaluated["pairs"] == 2
    arena = [json.loads(line) for line in (tmp_path / "exports" / "arena_hard.jsonl").read_text().splitlines()]
    assert [int(a["question_id"]) for a in arena] == expected


def test_data_summary_warns_about_drops_truncations_and_identical_pairs(tiny_model_dir, tmp_path, capsys):
    rows = standard_rows(4)  # prompts of 7 words (tokens), completions of 12-16 tokens with EOS
    rows[1]["prompt"] = " ".join(["what is the capital of france ?"] * 3)  # 21 tokens: fills max_length 20
    rows[2]["chosen"] = " the capital of spain is madrid . " + " ".join(["it is big and old ."] * 3)  # cut
    rows[3]["rejected"] = rows[3]["chosen"]
    for row in (rows[0], rows[3]):
        row["chosen"] = row["rejected"] = " the capital is berlin ." if row is rows[3] else row["chosen"]
    rows[0]["chosen"], rows[0]["rejected"] = " the capital of france is paris .", " the capital of france is rome ."
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    assert train(tiny_model_dir, data, tmp_path / "run", "--max_length", "20") == 0
    err = capsys.readouterr().err
    name = f"train split train (file {data}, 4 rows)"
    assert (f"data {name}: 4 rows, 1 dropped (prompt fills max_length), 0 prompts cut on the left "
            "(max_prompt_length), 1 completions cut on the right (max_length), 1 pairs with identical chosen and "
            "rejected") in err
    assert f"warning: {name}: 1 of 4 rows dropped because the prompt fills max_length (rows [1])" in err
    assert f"warning: {name}: 1 pairs with a completion cut on the right to max_length" in err
    assert f"warning: {name}: 1 pairs have identical chosen and rejected completions" in err
    summary = json.loads((tmp_path / "run" / "results.json").read_text())["data"]["train"]
    assert summary == {"split": f"train (file {data}, 4 rows)", "rows": 4, "dropped": 1, "dropped_rows": [1],
                       "prompt_truncated": 0, "completion_truncated": 1, "identical_pairs": 1}


def test_a_clean_split_prints_its_summary_without_warnings(tiny_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", standard_rows(4))
    assert train(tiny_model_dir, data, tmp_path / "run") == 0
    err = capsys.readouterr().err
    assert f"data train split train (file {data}, 4 rows): 4 rows, 0 dropped" in err
    assert "warning:" not in err


CONVERSATION = conversational_rows(2)


@pytest.mark.parametrize("content, message", [
    ("", "dataset file {path} is empty"),
    ("\n".join(json.dumps(r) for r in standard_rows(2)) + '\n{"prompt": "what", chosen\n',
     "dataset file {path}, line 3: malformed JSON (Expecting property name enclosed in double quotes, column 20)"),
    (json.dumps(standard_rows(1)[0]) + "\n" + json.dumps(CONVERSATION[0]) + "\n",
     "train (file {path}, 2 rows): row 1: a conversational row (chosen is a list of messages) after standard rows "
     "(row 0); use one format for the whole dataset"),
    (json.dumps({**CONVERSATION[0], "chosen": [{"role": "robot", "content": "paris"}]}) + "\n",
     "row 0, column 'chosen', message 0: unknown role 'robot' (known roles: system, developer, user, assistant"),
    (json.dumps({**CONVERSATION[0], "chosen": [{"role": "user", "content": "paris"},
                                               {"role": "assistant", "content": "yes"}]}) + "\n",
     "row 0, column 'chosen': a completion must start with an 'assistant' message, got roles [user, assistant] "
     "after the prompt's [user]"),
    (json.dumps({**CONVERSATION[0], "prompt": CONVERSATION[0]["prompt"] + CONVERSATION[0]["chosen"]}) + "\n",
     "row 0, column 'prompt': the prompt ends with an 'assistant' message (roles [user, assistant])"),
], ids=["empty", "malformed", "mixed", "unknown_role", "completion_starts_with_user", "prompt_ends_with_assistant"])
def test_data_errors_are_one_line_naming_file_row_and_column(tiny_model_dir, tmp_path, capsys, content, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(content)
    assert train(tiny_model_dir, path, tmp_path / "run") == 2
    assert message.format(path=path) in one_error_line(capsys.readouterr().err)


def test_a_missing_local_path_is_refused_without_trying_the_hub(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import datasets

    def no_hub(*args, **kwargs):
        raise AssertionError("the hub was tried")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    monkeypatch.chdir(tmp_path)
    for missing in ("data/pairs.jsonl", "./pairs", "../elsewhere/pairs", "a/b/c"):
        assert train(tiny_model_dir, missing, tmp_path / "run") == 2
        assert f"tokenweight: error: config key `dataset_name`: {missing} does not exist" in capsys.readouterr().err


def test_eval_writes_next_to_the_model_and_never_overwrites_unasked(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # the results table's title on one line
    data = write_jsonl(tmp_path / "pairs.jsonl", standard_rows(4))
    command = ["eval", "--model_name_or_path", str(tiny_model_dir), "--dataset_name", data, "--num_generations", "0"]
    assert main(command) == 0
    written = tiny_model_dir / "eval.json"
    results = json.loads(written.read_text())
    assert results["split"] == f"train (file {data}, 4 rows)" and results["pairs"] == 4
    assert f"eval split: train (file {data}, 4 rows)" in capsys.readouterr().out
    before = (written.read_bytes(), written.stat().st_mtime_ns)
    assert main(command) == 2
    assert f"tokenweight: error: {written} exists; pass --overwrite" in capsys.readouterr().err
    assert (written.read_bytes(), written.stat().st_mtime_ns) == before
    other = tmp_path / "elsewhere" / "eval.json"
    assert main([*command, "--output", str(other)]) == 0 and other.exists()
    assert main([*command, "--output", str(other)]) == 2
    written.write_text("{}")
    assert main([*command, "--overwrite"]) == 0
    assert json.loads(written.read_text())["pairs"] == 4
    assert main([*command, "--eval_split", "test", "--overwrite"]) == 2
    assert "split 'test' not found in dataset file" in capsys.readouterr().err
