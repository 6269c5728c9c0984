"""Helpers of the workflow tests: the small KeyFact model, CLI runs in a subprocess stopped at a known step,
and the outcome of a run (saved parameters, logged history)."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

DRIVER = Path(__file__).with_name("train_driver.py")
#: Logged values that measure wall-clock time, not the run.
TIMING_KEYS = {"train_runtime", "train_samples_per_second", "train_steps_per_second"}


@pytest.fixture(scope="module")
def keyfact_cache(tmp_path_factory):
    """The small KeyFact base model (shipped with the package); TOKENWEIGHT_CACHE is an empty folder of the module."""
    from tokenweight.keyfact import keyfact_base_model

    cache = tmp_path_factory.mktemp("keyfact-cache")
    path = keyfact_base_model(cache_dir=cache, size="small", progress=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TOKENWEIGHT_CACHE", str(cache))
        yield path


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def with_token_weights(rows: list[dict], model_path, weight) -> list[dict]:
    """``rows`` with ``chosen_weights``/``rejected_weights`` columns: ``weight(side, row number, token index)``
    for each completion token of the tokenizer at ``model_path``."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    from tokenweight.data import tokenize_preference_dataset

    tokenized, _ = tokenize_preference_dataset(Dataset.from_list(rows), AutoTokenizer.from_pretrained(model_path))
    out = []
    for number, (row, tokens) in enumerate(zip(rows, tokenized)):
        out.append({**row, **{f"{side}_weights": [weight(side, number, i) for i in range(len(tokens[f"{side}_ids"]))]
                              for side in ("chosen", "rejected")}})
    return out


def small_keyfact_args(weighting: str, output_dir: Path, *extra: str) -> list[str]:
    """``tokenweight train`` flags of a 6-step run of the small KeyFact model with a checkpoint every 2 steps."""
    return ["--weighting", weighting, "--output_dir", str(output_dir), "--keyfact_model_size", "small",
            "--keyfact_train_size", "16", "--keyfact_eval_size", "2", "--per_device_train_batch_size", "2",
            "--max_steps", "6", "--save_strategy", "steps", "--save_steps", "2", "--logging_steps", "1",
            "--report_to", "none", *extra]


def start_stopped_run(args: list[str], stop_step: int, marker: Path) -> subprocess.Popen:
    """A ``tokenweight train`` subprocess that hangs inside step ``stop_step + 1`` (see ``train_driver.py``)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(DRIVER), str(stop_step), str(marker), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def fork_stopped_run(args: list[str], stop_step: int, marker: Path) -> multiprocessing.Process:
    """The same run in a forked copy of this process (no second start-up of Python, torch and transformers)."""
    from train_driver import train_hanging

    process = multiprocessing.get_context("fork").Process(target=train_hanging, args=(stop_step, marker, args))
    process.start()
    return process


def wait_for(marker: Path, process, timeout: float = 300) -> None:
    """Wait until ``marker`` exists; fail (killing ``process``) if it exits or times out first."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        ended = process.poll() is not None if hasattr(process, "poll") else not process.is_alive()
        if ended or time.monotonic() > deadline:
            process.kill()
            output = process.communicate() if hasattr(process, "communicate") else ""
            raise AssertionError(f"run never reached {marker.name}: {output}")
        time.sleep(0.05)


def log_history(output_dir: Path) -> list[dict]:
    """``trainer_state.json``'s log history without the wall-clock timings."""
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [{k: v for k, v in entry.items() if k not in TIMING_KEYS} for entry in history]


def saved_parameters(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / "model.safetensors")
