"""docs/ADDING_A_SCHEME.md works as written: its example scheme ``mine``, written from the page into a copy of the
package source where the page says and nothing else changed, appears in ``tokenweight train --help``, in
``tokenweight weights``, in the bench's rows and in ``benchmarks/step_overhead.py``'s; copied into a throw-away package
and registered by importing it (the page's plugin route), it gets its flags, help group and validation, and trains 2
steps through the CLI with its weights and its extra loss term used."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tokenweight.cli import main
from tokenweight.weights import SCHEMES, SchemeContext, WeightingInputs, build_scheme
from workflow_runs import keyfact_cache, log_history  # noqa: F401  (keyfact_cache: the small model, built once)

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "ADDING_A_SCHEME.md"
FOLDER = "src/tokenweight/weights/mine/"
#: The ``tokenweight`` command of this environment.
TOKENWEIGHT = Path(sys.executable).with_name("tokenweight")


def guide_files() -> dict[str, str]:
    """``path in the repository -> source`` of the guide's Python blocks that start with
    ``# src/tokenweight/weights/mine/…``."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)
    return {block.split("\n", 1)[0][len("# "):]: block for block in blocks if block.startswith("# " + FOLDER)}


@pytest.fixture(scope="module")
def source_with_mine(tmp_path_factory) -> Path:
    """The ``src`` folder of a copy of the package source with the guide's files written where the guide says;
    nothing else in it differs from this checkout (no list edited, the stored help as committed)."""
    root = tmp_path_factory.mktemp("checkout")
    shutil.copytree(REPO / "src" / "tokenweight", root / "src" / "tokenweight",
                    ignore=shutil.ignore_patterns("__pycache__"))
    files = guide_files()
    assert sorted(files) == [FOLDER + "__init__.py", FOLDER + "scheme.py"]
    for path, source in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(source)
    return root / "src"


def run_on(source: Path, cwd: Path, *command: str) -> subprocess.CompletedProcess:
    """``command`` in a fresh process that imports tokenweight from ``source`` (first on ``PYTHONPATH``)."""
    env = {**os.environ, "PYTHONPATH": str(source), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_the_guides_folder_alone_puts_the_scheme_in_help_and_weights(source_with_mine, tmp_path):
    text = run_on(source_with_mine, tmp_path, str(TOKENWEIGHT), "train", "--help").stdout
    group = text.split("mine (--weighting mine):\n", 1)[1].split("\n\n", 1)[0]
    assert "--mine_strength" in group and "--mine_sft" in group and "(default: 1.0)" in group
    assert ",lddpo,mine,otpo," in " ".join(text.split())  # a --weighting choice, in name order
    shown = run_on(source_with_mine, tmp_path, str(TOKENWEIGHT), "weights", "--weighting", "mine",
                   "--mine_strength", "2", "--num_pairs", "2", "--output", "mine.html").stdout
    assert str(source_with_mine) in shown  # the copy's shipped KeyFact model: the copy ran, not this checkout
    assert "weighting=mine" in shown and "mine_strength=2.0" in shown
    assert shown.count("weights from 2.000 (white) to 2.000 (red)") == 2  # both pairs weighed by the scheme
    assert "mine_strength" in (tmp_path / "mine.html").read_text()


def test_the_guides_folder_alone_puts_the_scheme_in_the_bench_and_the_step_benchmark(source_with_mine, tmp_path):
    code = ("import json, sys\nsys.path.insert(0, sys.argv[1])\nimport tokenweight\n"
            "from tokenweight.keyfact.bench import default_rows\nfrom step_overhead import VARIANTS\n"
            "print(json.dumps({'package': tokenweight.__file__, 'bench': default_rows(), 'steps': VARIANTS}))")
    found = json.loads(run_on(source_with_mine, tmp_path, sys.executable, "-c", code,
                              str(REPO / "benchmarks")).stdout.splitlines()[-1])
    assert found["package"].startswith(str(source_with_mine))
    assert "mine" in found["bench"]  # a row of `tokenweight bench keyfact`'s full table
    assert found["steps"]["mine"] == {"weighting": "mine"}  # and of the step-overhead table, at its defaults


@pytest.fixture
def mine(tmp_path, monkeypatch):
    """The guide's ``mine`` package written to ``tmp_path/mine`` and imported (which registers it); unregistered
    afterwards."""
    (tmp_path / "mine").mkdir()
    for path, source in guide_files().items():
        (tmp_path / "mine" / Path(path).name).write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        yield importlib.import_module("mine")
    finally:
        SCHEMES.pop("mine", None)
        for name in [name for name in sys.modules if name == "mine" or name.startswith("mine.")]:
            del sys.modules[name]


def small_run(output_dir: Path, *flags: str) -> list[str]:
    return ["train", "--weighting", "mine", *flags, "--output_dir", str(output_dir), "--keyfact_model_size",
            "small", "--keyfact_train_size", "8", "--keyfact_eval_size", "2", "--per_device_train_batch_size", "2",
            "--max_steps", "2", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
            "--use_cpu", "true"]


def test_the_guides_scheme_trains_two_steps_through_the_cli(mine, keyfact_cache, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    assert main(small_run(out, "--mine_strength", "2", "--mine_sft", "0.5")) == 0
    steps = [entry for entry in log_history(out) if "loss" in entry]
    assert [entry["step"] for entry in steps] == [1, 2]  # the run finished its 2 steps
    for entry in steps:  # the flag was parsed and the scheme's weights were the ones trained with
        assert entry["mine/strength"] == 2.0
        assert entry["weights/mean"] == 2.0 and entry["weights/max"] == 2.0 and entry["weights/min"] == 2.0
        assert entry["mine/sft_nll"] > 0  # the extra loss term ran
    assert (out / "results.json").exists() and (out / "model.safetensors").exists()
    assert json.loads((out / "results.json").read_text())["weighting"] == "mine"
    saved = torch.load(out / "training_args.bin", weights_only=False)  # the composed config pickles and loads back
    assert (saved.weighting, saved.mine_strength, saved.mine_sft) == ("mine", 2.0, 0.5)


def test_the_guides_scheme_has_a_help_group_and_checks_its_settings(mine, tmp_path, capsys):
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    group = text.split("mine (--weighting mine):\n", 1)[1].split("\n\n", 1)[0]
    assert "--mine_strength" in group and "--mine_sft" in group and "(default: 1.0)" in group
    assert main(small_run(tmp_path / "bad", "--mine_strength", "-1")) == 2
    assert capsys.readouterr().err == "tokenweight: error: config key `mine_strength` must be > 0, got -1.0\n"
    assert not (tmp_path / "bad").exists()


def test_the_guides_scheme_is_built_from_its_settings_alone(mine):
    scheme = mine.MineScheme(mine.MineSettings(mine_strength=3.0), SchemeContext(beta=0.2))
    loss_mask = torch.tensor([[False, True, True], [False, True, False]])
    inputs = WeightingInputs(input_ids=torch.zeros(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 4),
                             completion_mask=torch.zeros(2, 4), loss_mask=loss_mask, batch={})
    assert scheme.compute(inputs).weights.tolist() == [[0.0, 3.0, 3.0], [0.0, 3.0, 0.0]]
    assert not scheme.needs_hidden_for_loss and mine.MineScheme.default_beta() == 0.1
    default = build_scheme("mine")
    assert default.settings == mine.MineSettings(mine_strength=1.0, mine_sft=0.0) and default.context.beta == 0.1
