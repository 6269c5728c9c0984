"""Defaults a user can trust: explicit flag > recipe > preset > built-in default for β; ``max_length`` from the
model's context; a grouped ``train --help`` that lists the schemes; a light ``tokenweight --help``; a quiet CPU run."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tokenweight.cli import main
from tokenweight.recipe import parse_train_config
from tokenweight.config import DEFAULT_MAX_LENGTH, resolve_max_length
from tokenweight.errors import UserError
from tokenweight.weights import SCHEMES

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.mark.parametrize("flags, beta", [
    (["--weighting", "tidpo", "--tidpo_preset", "upstream"], 0.2),            # the preset beats the default
    (["--weighting", "tidpo", "--tidpo_preset", "upstream", "--beta", "0.3"], 0.3),  # the flag beats the preset
    (["--weighting", "tidpo", "--tidpo_preset", "paper"], 0.1),
    (["--weighting", "otpo"], 0.1),                                           # the built-in default
])
def test_beta_precedence_on_the_built_in_task(flags, beta):
    assert parse_train_config(["--use_cpu", "true", *flags]).effective_beta == beta


def test_a_recipe_beta_beats_the_preset_and_a_flag_beats_the_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("weighting: tidpo\ntidpo_preset: upstream\nbeta: 0.05\n")
    assert parse_train_config(["--config", str(recipe)]).effective_beta == 0.05
    assert parse_train_config(["--config", str(recipe), "--beta", "0.4"]).effective_beta == 0.4
    named = ["--model_name_or_path", "m", "--dataset_name", "d", "--weighting", "tidpo", "--tidpo_preset", "upstream"]
    assert parse_train_config(named).effective_beta == 0.2


def _config_only_model(path: Path, positions: int) -> str:
    from transformers import LlamaConfig
    LlamaConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=positions).save_pretrained(path)
    return str(path)


def test_max_length_defaults_to_the_shorter_of_1024_and_the_model_context(tmp_path):
    long_context = _config_only_model(tmp_path / "long", 4096)
    short_context = _config_only_model(tmp_path / "short", 512)
    assert resolve_max_length(None, long_context) == DEFAULT_MAX_LENGTH == 1024
    assert resolve_max_length(None, short_context) == 512
    assert resolve_max_length(300, short_context) == 300
    assert resolve_max_length(4096, long_context) == 4096
    with pytest.raises(UserError, match="`max_length`: 513 is more than the 512 positions of .*short"):
        resolve_max_length(513, short_context)


def _help_sections(text: str) -> dict[str, str]:
    """``title -> body`` of each argparse section of a help text."""
    parts = re.split(r"^(\S[^\n]*):\n", text, flags=re.MULTILINE)
    return {title: body for title, body in zip(parts[1::2], parts[2::2])}


def test_train_help_groups_flags_shows_defaults_and_lists_the_schemes(capsys):
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    sections = _help_sections(text)
    titles = list(sections)
    expected = ["model", "data", "objective", *[f"{s} (--weighting {s})" for s in sorted(SCHEMES) if
                                               f"{s} (--weighting {s})" in sections],
                "built-in KeyFact task (used when neither a model nor a dataset is named)"]
    assert [t for t in titles if t in expected] == expected
    assert {"otpo (--weighting otpo)", "tidpo (--weighting tidpo)", "attention (--weighting attention)"} <= set(titles)
    assert "--model_name_or_path" in sections["model"] and "--lora_r" in sections["model"]
    assert "--dataset_name" in sections["data"] and "--max_length" in sections["data"]
    assert "min(1024, the model's context)" in " ".join(sections["data"].split())
    assert "--otpo_reg_m" in sections["otpo (--weighting otpo)"]
    assert "--tidpo_preset" in sections["tidpo (--weighting tidpo)"]
    assert "all transformers.TrainingArguments" not in sections and "--help-all" in text
    assert "--learning_rate" not in sections["objective"] and "--otpo_reg " not in sections["objective"]
    objective = " ".join(sections["objective"].split())
    assert f"--weighting {{{','.join(sorted(SCHEMES))}}}" in objective
    assert "(default: uniform)" in objective and "(default: sigmoid)" in objective
    assert "examples:" in text and "tokenweight train --weighting otpo" in text
    assert text.startswith("usage: tokenweight train [--config RECIPE] [--weighting SCHEME] [--FLAG VALUE ...]\n")


def test_train_help_all_shows_every_training_arguments_flag_after_tokenweights_groups(capsys):
    from transformers import TrainingArguments

    assert main(["train", "--help-all"]) == 0
    text = capsys.readouterr().out
    titles = list(_help_sections(text))
    assert titles.index("all transformers.TrainingArguments") > titles.index("model")
    flags = set(re.findall(r"--\w+", _help_sections(text)["all transformers.TrainingArguments"]))
    expected = {f"--{item.name}" for item in dataclasses.fields(TrainingArguments) if item.init}
    assert expected <= flags and "--learning_rate" in flags


def test_train_help_is_the_stored_rendering_and_imports_neither_torch_nor_transformers():
    from tokenweight.commands.train_help import STORED_HELP, STORED_MODULES, render_help
    from tokenweight.discovery import weights_modules

    stale = "train --help is stale: run `python -m tokenweight.commands.train_help`"
    assert STORED_HELP.read_text(encoding="utf-8") == render_help(), stale
    assert STORED_MODULES.read_text(encoding="utf-8").split() == weights_modules(), stale
    code = ("import sys\nfrom tokenweight.cli import main\nassert main(['train', '--help']) == 0\n"
            "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": SRC})
    assert done.returncode == 0, done.stderr
    assert "--otpo_reg_m" in done.stdout and "--keyfact_model_size" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "HEAVY []"


def test_top_level_help_imports_neither_torch_nor_transformers():
    code = ("import sys\nfrom tokenweight.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": SRC})
    assert done.returncode == 0, done.stderr
    assert "COMMAND" in done.stdout and "train" in done.stdout and "bench" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "HEAVY []"


def test_a_cpu_run_prints_no_pin_memory_warning_and_no_shard_bars(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "tokenweight.cli", "train", "--keyfact_model_size", "small", "--max_steps", "2",
         "--keyfact_train_size", "16", "--keyfact_eval_size", "4", "--per_device_train_batch_size", "8",
         "--save_strategy", "steps", "--save_steps", "1", "--output_dir", str(out), "--use_cpu", "true"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": SRC})
    assert done.returncode == 0, done.stderr
    assert (out / "checkpoint-1").is_dir() and (out / "checkpoint-2").is_dir() and (out / "results.json").exists()
    assert "pin_memory" not in done.stderr
    assert "Writing model shards" not in done.stderr
    assert "2/2" in done.stderr  # the training bar is still drawn
