"""Reference-free schemes (``uses_reference = False``: simpo, confpo; sepo, which needs its oracle trained first, in
test_sepo.py) end to end: ``tokenweight train`` loads only the policy, the trainer holds no reference, held-out
metrics rank by the scheme's own reward, reference log-prob settings are refused in one line, and ``tokenweight
eval`` / ``bench`` / ``weights`` run without a reference."""

from __future__ import annotations

import json

import datasets
import pytest
from conftest import make_model, standard_rows

import tokenweight.models
import tokenweight.pipeline
from tokenweight.cli import main
from tokenweight.config import TokenweightConfig
from tokenweight.data import tokenize_preference_dataset
from tokenweight.errors import UserError
from tokenweight.evaluate import REWARD_DEFINITIONS, held_out_preference, score_pairs
from tokenweight.trainer import TokenweightTrainer
from tokenweight.weights import SCHEMES, build_scheme

#: The reference-free schemes that train alone (SePO, reference-free too, needs its oracle trained first:
#: tests/test_sepo.py runs its pipeline).
REFERENCE_FREE = sorted(name for name, scheme in SCHEMES.items()
                        if not scheme.uses_reference and not scheme.tooling.trained_models)
KEYFACT = ["--keyfact_model_size", "small", "--keyfact_train_size", "16", "--keyfact_eval_size", "8"]


def count_model_loads(monkeypatch, module) -> list[str]:
    """Patch ``module.load_causal_lm`` to record the path of every model it loads."""
    loads, load = [], module.load_causal_lm

    def recording(path, *args, **kwargs):
        loads.append(str(path))
        return load(path, *args, **kwargs)

    monkeypatch.setattr(module, "load_causal_lm", recording)
    return loads


def test_simpo_confpo_and_sepo_are_the_reference_free_schemes():
    assert REFERENCE_FREE == ["confpo", "simpo"]
    assert sorted(name for name, scheme in SCHEMES.items() if not scheme.uses_reference) == ["confpo", "sepo", "simpo"]


@pytest.mark.parametrize("weighting", REFERENCE_FREE)
def test_train_two_steps_loads_only_the_policy(tmp_path, monkeypatch, capsys, weighting):
    monkeypatch.setenv("TOKENWEIGHT_CACHE", str(tmp_path.parent / "keyfact-cache"))
    loads = count_model_loads(monkeypatch, tokenweight.pipeline)
    trainers, save_state = [], TokenweightTrainer.save_state

    def recording_save_state(self):
        trainers.append(self)
        return save_state(self)

    monkeypatch.setattr(TokenweightTrainer, "save_state", recording_save_state)
    out = tmp_path / "run"
    assert main(["train", *KEYFACT, "--weighting", weighting, "--max_steps", "2", "--per_device_train_batch_size",
                 "4", "--logging_steps", "1", "--output_dir", str(out)]) == 0
    assert len(loads) == 1  # the policy; no reference model
    assert trainers and trainers[0].ref_model is None
    assert f"weighting={weighting} is reference-free: no reference model is loaded" in capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["reward"] == REWARD_DEFINITIONS[False]
    for when in ("before", "after"):
        assert 0.0 <= results[when]["pref_acc"] <= 1.0 and results[when]["margin"] != 0.0  # the scheme's reward
    assert results["after"]["margin"] != results["before"]["margin"]  # it trained
    beta = build_scheme(weighting).context.beta  # the scheme's default: SimPO 2.0, ConfPO 1.5
    logged = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert len(logged) == 2
    for entry in logged:
        assert entry["rewards/chosen"] < 0 and "rewards/weighted_chosen" not in entry  # β · mean log-prob
        assert entry["logps/chosen"] == pytest.approx(entry["rewards/chosen"] / beta, rel=1e-6)
    if weighting == "confpo":
        assert 0 < logged[0]["confpo/selected_chosen"] < 1 and logged[0]["confpo/all_equal_rows"] == 0


def test_the_trainer_refuses_a_reference_model_for_a_reference_free_scheme(tokenizer):
    config = TokenweightConfig(output_dir="/tmp/tw-test", use_cpu=True, report_to="none", weighting="simpo")
    with pytest.raises(ValueError, match="weighting='simpo' is reference-free: pass ref_model=None"):
        TokenweightTrainer(make_model(len(tokenizer)), make_model(len(tokenizer)), config, processing_class=tokenizer)


@pytest.mark.parametrize("setting", [{"precompute_ref_log_probs": True}, {"ref_log_probs": "cache"}])
def test_reference_log_prob_settings_are_refused(setting):
    key = next(iter(setting))
    with pytest.raises(UserError, match=f"config key `{key}`: weighting=confpo is reference-free"):
        TokenweightConfig(output_dir="/tmp/tw", weighting="confpo", **setting)


@pytest.mark.parametrize("command, message", [
    (["train", "--ref_model_name_or_path", "MODEL"], "config key `ref_model_name_or_path`: weighting=simpo is "
                                                     "reference-free"),
    (["train", "--precompute_ref_log_probs", "true"], "config key `precompute_ref_log_probs`: weighting=simpo is "
                                                      "reference-free"),
    (["precompute", "reference", "--output", "DIR"], "precompute reference: weighting=simpo is reference-free")])
def test_reference_settings_are_one_line_errors_on_the_command_line(tmp_path, tiny_model_dir, capsys, command,
                                                                     message):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in standard_rows(4)))
    words = [str(tiny_model_dir) if w == "MODEL" else str(tmp_path / "out") if w == "DIR" else w for w in command]
    capsys.readouterr()
    status = main([*words, "--weighting", "simpo", "--model_name_or_path", str(tiny_model_dir), "--dataset_name",
                   str(data), "--output_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith(f"tokenweight: error: {message}"), err


def test_held_out_preference_of_simpo_ranks_by_the_length_normalised_log_likelihood(tokenizer):
    dataset, _ = tokenize_preference_dataset(datasets.Dataset.from_list(standard_rows(8)), tokenizer)
    model = make_model(len(tokenizer), seed=5)
    scheme = build_scheme("simpo")
    report = held_out_preference(model, None, scheme, dataset, tokenizer.pad_token_id, beta=2.0, batch_size=3,
                                 progress=False)
    scores = score_pairs(model, None, dataset, tokenizer.pad_token_id, batch_size=3, progress=False)
    reward_c = 2.0 * scores.policy_chosen / scores.chosen_len
    reward_r = 2.0 * scores.policy_rejected / scores.rejected_len
    won = ((reward_c > reward_r).float() + 0.5 * (reward_c == reward_r).float()).mean().item()
    assert report["pref_acc"] == pytest.approx(won) and 0 < won < 1
    assert report["margin"] == pytest.approx((reward_c - reward_r).mean().item(), abs=1e-6)
    assert report["logp_acc"] == (scores.policy_chosen > scores.policy_rejected).float().mean().item()
    with pytest.raises(ValueError, match="reference-free: its held-out metrics take no reference model"):
        held_out_preference(model, model, scheme, dataset, tokenizer.pad_token_id, beta=2.0, progress=False)


def test_eval_with_a_reference_free_scheme_needs_no_reference(tmp_path, tiny_model_dir, monkeypatch):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in standard_rows(4)))
    loads = count_model_loads(monkeypatch, tokenweight.models)
    output = tmp_path / "eval.json"
    assert main(["eval", "--model_name_or_path", str(tiny_model_dir), "--dataset_name", str(data), "--eval_split",
                 "train", "--weighting", "confpo", "--num_generations", "0", "--output", str(output)]) == 0
    assert loads == [str(tiny_model_dir)]
    results = json.loads(output.read_text())
    assert results["reference"] is None and set(results["preference"]) == {"logp_acc"}
    assert results["weighted"]["reward"] == REWARD_DEFINITIONS[False]
    assert 0 <= results["weighted"]["weighted_pref_acc"] <= 1 and results["weighted"]["weighted_margin"] != 0


def test_bench_run_of_a_reference_free_scheme_trains_without_a_reference(tmp_path, monkeypatch):
    """The bench loads the base model once more only to *measure* (pref_acc, KL to the reference); the trainer of
    a reference-free scheme gets no reference model."""
    import tokenweight.trainer
    from tokenweight.keyfact.bench import BenchSettings, quick_settings
    from tokenweight.keyfact.bench.runs import run_one
    from tokenweight.keyfact import keyfact_base_model

    monkeypatch.setenv("TOKENWEIGHT_CACHE", str(tmp_path.parent / "keyfact-cache"))
    settings = quick_settings(BenchSettings(rows=["simpo"], seeds=[0]))
    settings.train_size, settings.curve_eval_size = 16, 4
    base = str(keyfact_base_model(seed=0, size="small"))
    given = []
    original = tokenweight.trainer.TokenweightTrainer.__init__

    def recording_init(self, model, ref_model, *args, **kwargs):
        given.append(ref_model)
        original(self, model, ref_model, *args, **kwargs)

    monkeypatch.setattr(tokenweight.trainer.TokenweightTrainer, "__init__", recording_init)
    run = run_one(settings, base, 0, "small@test", "simpo", "base", 0, str(tmp_path / "run"), settings.learning_rate,
                  "eval", 4)
    assert given == [None]
    assert run["steps"] == 2 and 0 <= run["metrics"]["pref_acc"] <= 1
