"""The README's single-GPU command (``--model_dtype bfloat16 --bf16 true --learning_rate 5e-7``) really trains:
float32 master weights by default move every trained weight; pure bfloat16 weights are an explicit choice, and at
that learning rate most of their updates round away, which a warning says. A tiny model on CPU (bf16 autocast)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tokenweight.cli import main
from tokenweight.keyfact import build_keyfact, keyfact_base_model

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_single_gpu_command() -> list[str]:
    """The first ``tokenweight train`` command of the README's real-use block, as argv."""
    text = re.sub(r"\\\n\s*", " ", README.read_text(encoding="utf-8"))
    line = next(line.strip() for line in text.splitlines() if line.strip().startswith("tokenweight train --model_name"))
    return line.split()[1:]


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bf16")
    data = root / "data"
    data.mkdir()
    pairs = build_keyfact(n_train=8, n_eval=4, n_validation=1)
    for split, name in (("train", "train"), ("eval", "test")):
        rows = [{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in pairs[split]]
        (data / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root, str(keyfact_base_model(size="small")), str(data)


def trained_fraction(tiny_world, tmp_path, *extra: str) -> float:
    """Fraction of the weights (embedding rows of tokens the batches hold no gradient for excluded: the layers
    only) that 2 steps of the README command changed, measured against the bfloat16-rounded start."""
    _, model, data = tiny_world
    argv = readme_single_gpu_command()
    assert argv[argv.index("--bf16") + 1] == "true" and argv[argv.index("--model_dtype") + 1] == "bfloat16"
    assert argv[argv.index("--learning_rate") + 1] == "5e-7"
    values = {"--model_name_or_path": model, "--dataset_name": data, "--max_length": "64",
              "--per_device_train_batch_size": "2", "--gradient_accumulation_steps": "1",
              "--output_dir": str(tmp_path / "run")}
    argv = [values.get(argv[i - 1], word) for i, word in enumerate(argv)]
    assert main([*argv, "--max_steps", "2", "--use_cpu", "true", "--report_to", "none", "--save_strategy", "no",
                 *extra]) == 0
    start = load_file(Path(model) / "model.safetensors")
    end = load_file(tmp_path / "run" / "model.safetensors")
    layers = [key for key in start if ".layers." in key]
    changed = sum((end[k].float() != start[k].to(torch.bfloat16).float()).sum().item() for k in layers)
    return changed / sum(start[k].numel() for k in layers)


def test_the_readme_bf16_command_moves_the_weights(tiny_world, tmp_path, capsys):
    assert trained_fraction(tiny_world, tmp_path) > 0.95
    assert "warning: learning_rate" not in capsys.readouterr().err


def test_pure_bf16_weights_are_explicit_and_warn_that_the_updates_round_away(tiny_world, tmp_path, capsys):
    fraction = trained_fraction(tiny_world, tmp_path, "--fp32_master_weights", "false")
    assert fraction < 0.05
    assert "warning: learning_rate 5e-07 is below what bfloat16 weights can take" in capsys.readouterr().err
