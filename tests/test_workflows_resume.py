"""Resume: a CLI run SIGKILLed after a checkpoint and resumed ends bit-identical to an uninterrupted run, for every
scheme (issue 9, item 1); a checkpoint that does not exist is a one-line error."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from conftest import standard_rows
from tokenweight.cli import main
from tokenweight.data import tokenize_preference_dataset
from tokenweight.keyfact import keyfact_base_model
from workflow_runs import log_history, saved_parameters, small_keyfact_args, fork_stopped_run, wait_for


@pytest.fixture(scope="module")
def keyfact_cache(tmp_path_factory):
    """The small KeyFact base model, built once for the module; the runs find it through TOKENWEIGHT_CACHE."""
    cache = tmp_path_factory.mktemp("keyfact-cache")
    path = keyfact_base_model(cache_dir=cache, size="small", progress=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TOKENWEIGHT_CACHE", str(cache))
        yield path


def weight_column_file(model_path, folder) -> str:
    """A JSONL file of 16 pairs with a per-token ``chosen_weights``/``rejected_weights`` column (0.5 … 2)."""
    from transformers import AutoTokenizer

    from datasets import Dataset

    rows = standard_rows(16)
    tokenized, _ = tokenize_preference_dataset(Dataset.from_list(rows), AutoTokenizer.from_pretrained(model_path))
    path = folder / "weighted.jsonl"
    with path.open("w") as out:
        for row, tokens in zip(rows, tokenized):
            row["chosen_weights"] = [0.5 + (i % 4) / 2 for i in range(len(tokens["chosen_ids"]))]
            row["rejected_weights"] = [2.0 - (i % 3) / 2 for i in range(len(tokens["rejected_ids"]))]
            out.write(json.dumps(row) + "\n")
    return str(path)


SCHEMES = {
    "uniform": [],
    "column": None,  # the data file and model are named in the test
    "otpo": [],
    "tidpo": ["--tidpo_gamma", "0.1"],
    "attention": [],
}


@pytest.mark.parametrize("weighting", list(SCHEMES))
def test_killed_run_resumes_bit_identical_to_uninterrupted_run(weighting, keyfact_cache, tmp_path):
    extra = SCHEMES[weighting]
    if extra is None:
        extra = ["--model_name_or_path", str(keyfact_cache), "--dataset_name",
                 weight_column_file(keyfact_cache, tmp_path)]
    marker = tmp_path / "at-step-5"
    killed = fork_stopped_run(small_keyfact_args(weighting, tmp_path / "run", *extra), stop_step=4, marker=marker)
    wait_for(marker, killed)
    os.kill(killed.pid, signal.SIGKILL)
    killed.join(timeout=30)
    assert killed.exitcode == -signal.SIGKILL
    assert main(["train", *small_keyfact_args(weighting, tmp_path / "reference", *extra)]) == 0
    run = tmp_path / "run"
    assert (run / "checkpoint-4" / "trainer_state.json").is_file() and not (run / "results.json").exists()

    resume = "true" if weighting in ("uniform", "otpo", "attention") else str(run / "checkpoint-4")
    assert main(["train", *small_keyfact_args(weighting, run, *extra), "--resume_from_checkpoint", resume]) == 0

    reference, resumed = log_history(tmp_path / "reference"), log_history(run)
    losses = [entry["loss"] for entry in reference if "loss" in entry]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    assert [entry["loss"] for entry in resumed if "loss" in entry] == losses
    assert resumed[:-1] == reference[:-1]  # every per-step metric, exactly
    want, got = saved_parameters(tmp_path / "reference"), saved_parameters(run)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[name], got[name]) for name in want)
    initial = saved_parameters(keyfact_cache)
    assert any(not torch.equal(initial[name], want[name]) for name in want)  # the run did train


def test_resume_from_a_missing_checkpoint_is_a_one_line_error(keyfact_cache, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "checkpoint-4"
    args = small_keyfact_args("uniform", tmp_path / "run")
    assert main(["train", *args, "--resume_from_checkpoint", str(missing)]) == 2
    assert capsys.readouterr().err == (f"tokenweight: error: --resume_from_checkpoint {missing}: no such "
                                       "checkpoint folder\n")
    assert main(["train", *args, "--resume_from_checkpoint", "true"]) == 2
    assert capsys.readouterr().err == ("tokenweight: error: --resume_from_checkpoint true: no checkpoint-* folder "
                                       f"in output_dir {tmp_path / 'run'}\n")
    assert not (tmp_path / "run").exists()
