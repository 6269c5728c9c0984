"""The KeyFact base models shipped with the package: present, built by the current build code and settings, found
without training whatever the torch/transformers versions, and rebuilt by the documented command."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers
from safetensors.torch import load_file

from tokenweight.keyfact import base_model, build, keyfact_base_model
from tokenweight.keyfact.base_model import SETTINGS_FILE, SHIPPED_DIR
from tokenweight.keyfact.shipped import BASE_REPLICA_SEEDS, EVERYDAY_FACTS_PATH, SHIPPED_BUILDS, main, replica_seeds

REBUILD = "python -m tokenweight.keyfact.shipped"


@pytest.mark.parametrize("shipped", SHIPPED_BUILDS, ids=lambda b: b.label)
def test_every_shipped_model_is_the_build_of_the_current_code_and_settings(shipped):
    folder = SHIPPED_DIR / shipped.name()
    assert folder.is_dir(), (f"{shipped.label}: no shipped model {folder.name} for the current build code/settings; "
                             f"run `{REBUILD} --only {shipped.label}` (or `{REBUILD}` for all)")
    record = json.loads((folder / SETTINGS_FILE).read_text())
    assert record["build_code"] == build.build_code_digest() and record["name"] == folder.name
    assert (record["size"], record["seed"]) == (shipped.size, shipped.seed)
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in folder.iterdir()}
    stale = sorted({p.name for p in SHIPPED_DIR.glob("keyfact-*")} - {b.name() for b in SHIPPED_BUILDS})
    assert stale == [], f"folders of builds no longer shipped: {stale} (`{REBUILD}` removes them)"
    if shipped.size == "default":  # the judge stage reached its bar (AttentionPO's premise holds)
        assert record["judge_verdict_accuracy_train"] >= record["judge_min_accuracy"]


def test_the_shipped_builds_are_the_replicas_and_the_second_facts_file():
    assert BASE_REPLICA_SEEDS == replica_seeds("default") == (0, 1)
    assert replica_seeds("default", EVERYDAY_FACTS_PATH) == (0, 1)  # the second facts file has replicas too
    assert replica_seeds("small") == (0, 1)  # `bench keyfact --quick` runs on two base models
    assert replica_seeds("default", "no_such_facts.json") == ()
    assert [b.label for b in SHIPPED_BUILDS if b.facts == EVERYDAY_FACTS_PATH] == ["everyday", "everyday-seed1"]
    total = sum(p.stat().st_size for p in SHIPPED_DIR.rglob("*") if p.is_file())
    assert total < 5e6, f"the shipped models take {total / 1e6:.1f} MB"


def test_an_edit_to_the_build_code_or_settings_renames_the_build(tmp_path, monkeypatch):
    shipped = SHIPPED_BUILDS[0]
    name = shipped.name()
    for module in build.BUILD_MODULES:
        shutil.copy(build.__file__.replace("build.py", module), tmp_path / module)
    (tmp_path / "sft.py").write_text((tmp_path / "sft.py").read_text() + "\n# a comment\n")
    monkeypatch.setattr(build, "__file__", str(tmp_path / "build.py"))
    assert shipped.name() != name  # the recorded build_code no longer matches: the test above fails
    monkeypatch.undo()
    monkeypatch.setitem(build.SIZES, "small", {**build.SIZES["small"], "lr": 2e-2})
    assert shipped.name() != name


def test_the_shipped_default_loads_without_training_under_other_torch_and_transformers(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    monkeypatch.setattr(transformers, "__version__", "99.0.0")
    monkeypatch.setattr(base_model, "train_base_model", lambda *a, **k: pytest.fail("trained a shipped model"))
    monkeypatch.setenv("TOKENWEIGHT_CACHE", str(tmp_path))
    for shipped in SHIPPED_BUILDS:
        path = keyfact_base_model(seed=shipped.seed, size=shipped.size, facts_path=shipped.facts)
        assert path == SHIPPED_DIR / shipped.name()
    assert list(tmp_path.iterdir()) == []


def test_the_rebuild_command_rebuilds_the_shipped_small_model(tmp_path, capsys):
    (tmp_path / "keyfact-small-0000000000000000").mkdir()  # a build no longer shipped
    main(["--only", "small", "--output", str(tmp_path)])
    name = SHIPPED_BUILDS[0].name()
    assert [p.name for p in tmp_path.iterdir()] == [name]
    rebuilt, shipped = load_file(tmp_path / name / "model.safetensors"), load_file(SHIPPED_DIR / name / "model.safetensors")
    assert rebuilt.keys() == shipped.keys()
    for key in shipped:  # the same build; a CPU with other floating-point kernels drifts a little over 100 steps
        torch.testing.assert_close(rebuilt[key], shipped[key], atol=1e-3, rtol=0)
    assert "removing" in capsys.readouterr().out
