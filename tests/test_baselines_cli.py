"""``tokenweight train --weighting S --max_steps 2`` on the built-in task for the baselines ``lddpo``, ``d2po`` and
``sampo`` (the small KeyFact model), WPO's ``--use_weighting`` with one of them, and ``tokenweight weights`` for
every scheme that runs on the built-in task."""

from __future__ import annotations

import json

import pytest
from workflow_runs import keyfact_cache, log_history  # noqa: F401  (keyfact_cache: the small model, built once)

from tokenweight.cli import main


def two_steps(weighting: str, output_dir, *flags: str) -> list[str]:
    return ["train", "--weighting", weighting, *flags, "--output_dir", str(output_dir), "--keyfact_model_size",
            "small", "--keyfact_train_size", "8", "--keyfact_eval_size", "2", "--per_device_train_batch_size", "2",
            "--max_steps", "2", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
            "--use_cpu", "true"]


#: weighting → (flags, a check of the logged steps that plain DPO's weights fail)
RUNS = {
    "lddpo": (["--ld_alpha", "0.25"], lambda steps: {e["weights/min"] for e in steps} == {0.25}),
    "d2po": (["--d2po_gamma", "0.9"], lambda steps: all(  # the first completion token weighs γ¹, as upstream
        abs(e["weights/first_token"] - 0.9) < 1e-6 and e["weights/first_token"] > e["weights/last_token"]
        for e in steps)),
    "sampo": (["--use_weighting", "true"], lambda steps: all(
        e["weights/min"] == 0.0 and 0 < e["sampo/kept_fraction"] == e["weights/mean"] < 1 and e["wpo/pair_weight"] > 0
        for e in steps)),
}


@pytest.mark.parametrize("weighting", sorted(RUNS))
def test_train_two_steps_on_the_built_in_task(keyfact_cache, tmp_path, weighting):  # noqa: F811
    flags, check = RUNS[weighting]
    out = tmp_path / "run"
    assert main(two_steps(weighting, out, *flags)) == 0
    steps = [entry for entry in log_history(out) if "loss" in entry]
    assert [entry["step"] for entry in steps] == [1, 2]
    assert all(entry["loss"] == entry["loss"] for entry in steps)  # finite
    assert check(steps), steps
    assert json.loads((out / "results.json").read_text())["weighting"] == weighting


def test_the_train_help_lists_the_baselines_flags(capsys):
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    assert "lddpo (--weighting lddpo):" in text and "--ld_alpha" in text
    assert "d2po (--weighting d2po):" in text and "--d2po_gamma" in text
    assert "--use_weighting" in text and "--wpo_clamp" in text and "--tisdpo_top_percent" in text


def _weights_rows():
    from tokenweight.keyfact.bench.rows import default_schemes
    from tokenweight.weights.base import scheme_class
    return [s for s in default_schemes() if not scheme_class(s).tooling.trained_models]


@pytest.mark.parametrize("weighting", _weights_rows())
def test_tokenweight_weights_shows_every_scheme_on_the_built_in_task(keyfact_cache, tmp_path, weighting):  # noqa: F811
    """Each scheme that runs on the built-in task has its row in ``tokenweight weights`` (TIS-DPO: its weights come
    from two models the user trains first, tests/test_tisdpo.py): one weight per completion token, finite, ≥ 0."""
    import re

    recipe = tmp_path / "small.yaml"
    recipe.write_text("keyfact_model_size: small\nkeyfact_train_size: 8\nkeyfact_eval_size: 2\n")
    report = tmp_path / "weights.html"
    assert main(["weights", "--config", str(recipe), "--weighting", weighting, "--num_pairs", "2",
                 "--output", str(report)]) == 0
    html = report.read_text()
    weights = [float(w) for w in re.findall(r'class="tok" data-weight="([^"]+)"', html)]
    assert len(weights) >= 8 and all(w >= 0 and w == w for w in weights), weights
    assert f"weighting</td><td>{weighting}" in html
