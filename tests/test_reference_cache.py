"""The on-disk reference log-prob cache: `tokenweight precompute reference --output DIR` writes it, training with
`--ref_log_probs DIR` loads one model only; a mismatched cache is refused naming what differs; an interrupted
precompute resumes with the missing shards; shards split across processes."""

from __future__ import annotations

import json
import shutil

import datasets
import pytest
import torch
from conftest import make_model, standard_rows

from tokenweight import reference_cache
from tokenweight.cli import main
from tokenweight.data import tokenize_preference_dataset
from tokenweight.errors import UserError
from tokenweight.logps import naive_token_logps
from tokenweight.models import load_causal_lm, load_tokenizer

KEYFACT = ["--keyfact_model_size", "small", "--keyfact_train_size", "16", "--keyfact_eval_size", "8"]


@pytest.fixture(autouse=True)
def keyfact_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENWEIGHT_CACHE", str(tmp_path.parent / "keyfact-cache"))


def refusal(argv: list[str], capsys) -> str:
    """The one-line error of a refused command: a UserError, or its printed form where the CLI wraps it (exit 2)."""
    try:
        status = main(argv)
    except UserError as error:
        return str(error)
    assert status == 2, f"{argv} was not refused"
    return capsys.readouterr().err


def keyfact_model_dir() -> str:
    from tokenweight.keyfact import keyfact_base_model
    return str(keyfact_base_model(size="small"))


def test_cached_log_probs_equal_the_live_reference_per_token(tmp_path):
    assert main(["precompute", "reference", "--output", str(tmp_path / "ref"), "--shard_size", "5", *KEYFACT]) == 0
    manifest = json.loads((tmp_path / "ref" / "train" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_rows"] == 16 and manifest["num_shards"] == 4
    assert json.loads((tmp_path / "ref" / "eval" / "manifest.json").read_text())["num_rows"] == 8

    path = keyfact_model_dir()
    tokenizer, reference = load_tokenizer(path), load_causal_lm(path).eval()
    from tokenweight.keyfact import build_keyfact
    raw = build_keyfact(n_train=16, n_eval=8)["train"]
    rows, _ = tokenize_preference_dataset(raw, tokenizer, max_length=128)
    expected = reference_cache.reference_fingerprint(reference, tokenizer, rows, 128, None)
    chosen, rejected = reference_cache.load_reference_logps(tmp_path / "ref" / "train", expected)
    worst = 0.0
    for row, cached in zip(rows, zip(chosen, rejected)):
        for side, values in zip(("chosen", "rejected"), cached):
            ids = torch.tensor([row["prompt_ids"] + row[f"{side}_ids"]])
            with torch.no_grad():  # oracle: log-softmax of eager full logits, one unpadded row at a time
                live = naive_token_logps(reference(ids).logits, ids)[0, len(row["prompt_ids"]) - 1:]
            assert len(values) == len(row[f"{side}_ids"]) == len(live)
            # fp32 log-probs of magnitude up to ~10, batched (padded) vs one row: within 1e-6 relative to max(1, |l|)
            worst = max(worst, ((torch.tensor(values) - live).abs() / live.abs().clamp(min=1)).max().item())
    assert worst < 1e-6, worst


def test_training_with_the_cache_loads_one_model_and_matches_the_live_reference(tmp_path, monkeypatch):
    import tokenweight.pipeline
    train = ["train", *KEYFACT, "--per_device_train_batch_size", "4", "--num_train_epochs", "1"]
    assert main([*train, "--output_dir", str(tmp_path / "live")]) == 0
    assert main(["precompute", "reference", *KEYFACT, "--output", str(tmp_path / "ref")]) == 0

    loads = []
    monkeypatch.setattr(tokenweight.pipeline, "load_causal_lm", lambda *a, **k: loads.append(a) or load_causal_lm(*a, **k))
    assert main([*train, "--output_dir", str(tmp_path / "cached"), "--ref_log_probs", str(tmp_path / "ref")]) == 0
    assert len(loads) == 1  # the policy only: no reference model in memory

    live, cached = (json.loads((tmp_path / run / "results.json").read_text()) for run in ("live", "cached"))
    assert abs(cached["after"]["margin"]) > 1e-3  # training moved the policy away from the reference
    for phase in ("before", "after"):
        for metric in ("margin", "pref_acc", "logp_acc"):
            assert cached[phase][metric] == pytest.approx(live[phase][metric], abs=1e-5), (phase, metric)


def test_a_changed_truncation_setting_is_refused_naming_it(tmp_path, capsys):
    assert main(["precompute", "reference", *KEYFACT, "--output", str(tmp_path / "ref"), "--max_length", "96"]) == 0
    message = refusal(["train", *KEYFACT, "--max_steps", "1", "--output_dir", str(tmp_path / "run"),
                       "--ref_log_probs", str(tmp_path / "ref"), "--max_length", "80"], capsys)
    assert "truncation" in message and "'max_length': 96" in message and "'max_length': 80" in message
    assert "model" not in message.split("(")[0] and "tokenizer" not in message.split("(")[0]
    assert not (tmp_path / "run" / "results.json").exists()


def test_a_changed_tokenizer_is_refused_naming_it(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in standard_rows(6)))
    flags = ["--dataset_name", str(data), "--max_length", "64", "--per_device_train_batch_size", "2"]
    assert main(["precompute", "reference", "--output", str(tmp_path / "ref"), "--model_name_or_path",
                 str(tiny_model_dir), *flags]) == 0
    changed = tmp_path / "changed-tokenizer"
    shutil.copytree(tiny_model_dir, changed)
    tokenizer = load_tokenizer(str(changed))
    tokenizer.add_tokens(["zebra"])  # a new vocabulary entry: same ids for these rows, another tokenizer
    tokenizer.save_pretrained(changed)
    message = refusal(["train", "--model_name_or_path", str(changed), *flags, "--max_steps", "1",
                       "--output_dir", str(tmp_path / "run"), "--ref_log_probs", str(tmp_path / "ref")], capsys)
    assert "a different tokenizer (" in message, message


def test_an_interrupted_precompute_resumes_with_the_missing_shards(tmp_path, monkeypatch, capsys):
    precompute = ["precompute", "reference", *KEYFACT, "--shard_size", "3"]
    assert main([*precompute, "--output", str(tmp_path / "whole")]) == 0

    write_shard = reference_cache._write_shard
    written = []

    def killed_after_two(folder, index, chosen, rejected):
        if len(written) == 2:
            raise KeyboardInterrupt  # the process dies while scoring the third shard
        written.append(index)
        write_shard(folder, index, chosen, rejected)

    monkeypatch.setattr(reference_cache, "_write_shard", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        main([*precompute, "--output", str(tmp_path / "ref")])
    train_dir = tmp_path / "ref" / "train"
    assert written == [0, 1] and not json.loads((train_dir / "manifest.json").read_text())["complete"]
    assert "unfinished" in refusal(["train", *KEYFACT, "--max_steps", "1", "--output_dir", str(tmp_path / "run"),
                                    "--ref_log_probs", str(tmp_path / "ref")], capsys)
    before = {i: reference_cache.shard_path(train_dir, i).stat().st_mtime_ns for i in (0, 1)}

    written.clear()
    monkeypatch.setattr(reference_cache, "_write_shard", lambda *a: written.append(a[1]) or write_shard(*a))
    assert main([*precompute, "--output", str(tmp_path / "ref")]) == 0
    assert written == [2, 3, 4, 5] + [0, 1, 2]  # train: the four missing shards of six; eval: all three
    assert {i: reference_cache.shard_path(train_dir, i).stat().st_mtime_ns for i in (0, 1)} == before
    for split in ("train", "eval"):
        fingerprint = json.loads((tmp_path / "whole" / split / "manifest.json").read_text())["fingerprint"]
        resumed = reference_cache.load_reference_logps(tmp_path / "ref" / split, fingerprint)
        assert resumed == reference_cache.load_reference_logps(tmp_path / "whole" / split, fingerprint)


def test_each_process_writes_its_shards_and_the_main_process_finishes(tmp_path, tokenizer):
    rows, _ = tokenize_preference_dataset(datasets.Dataset.from_list(standard_rows(7)), tokenizer)
    model = make_model(len(tokenizer), seed=3)
    fingerprint = reference_cache.reference_fingerprint(model, tokenizer, rows, None, None)
    manifest = reference_cache.open_cache(tmp_path / "two", fingerprint, len(rows), 2, is_main_process=True)
    assert reference_cache.open_cache(tmp_path / "two", fingerprint, len(rows), 5, is_main_process=False) == manifest
    by_rank = [reference_cache.write_missing_shards(tmp_path / "two", manifest, model, rows, tokenizer.pad_token_id,
                                                    batch_size=2, rank=rank, world_size=2, progress=False)
               for rank in (0, 1)]
    assert by_rank == [[0, 2], [1, 3]]
    reference_cache.finish_cache(tmp_path / "two", manifest)
    one = reference_cache.open_cache(tmp_path / "one", fingerprint, len(rows), 2)
    reference_cache.write_missing_shards(tmp_path / "one", one, model, rows, tokenizer.pad_token_id, 2, progress=False)
    reference_cache.finish_cache(tmp_path / "one", one)
    assert (reference_cache.load_reference_logps(tmp_path / "two", fingerprint)
            == reference_cache.load_reference_logps(tmp_path / "one", fingerprint))
    other = reference_cache.reference_fingerprint(make_model(len(tokenizer), seed=4), tokenizer, rows, None, None)
    with pytest.raises(UserError, match=r"different model \("):
        reference_cache.load_reference_logps(tmp_path / "two", other)


@pytest.mark.parametrize("order", ["what --output flags", "--output what flags", "what flags --output"])
def test_precompute_takes_output_and_train_flags_in_any_order(tmp_path, order, capsys):
    out = tmp_path / "weights"
    parts = {"what": ["attention"], "--output": ["--output", str(out)], "flags": ["--max_length", "96", *KEYFACT]}
    assert main(["precompute", *[arg for part in order.split() for arg in parts[part]]]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_rows"] == 16  # the KeyFact train split, judged once
    assert manifest["fingerprint"]["settings"]  # the attention cache, not anything else
    assert "--output DIR is required" in refusal(["precompute", "reference", *KEYFACT], capsys)


def test_precompute_resolves_max_length_as_train_does_and_prints_the_same_data_summary(tmp_path, tiny_model_dir,
                                                                                         capsys):
    """The documented workflow with identical flags and no --max_length (issue 22): precompute resolved none and
    train refused the cache (cached None vs 128); both now take the model's context and print the same summary."""
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in standard_rows(6)))
    flags = ["--model_name_or_path", str(tiny_model_dir), "--dataset_name", str(data), "--per_device_train_batch_size",
             "2"]
    capsys.readouterr()
    assert main(["precompute", "reference", "--output", str(tmp_path / "ref"), *flags]) == 0
    summary = f"data train split train (file {data}, 6 rows): 6 rows, 0 dropped (prompt fills max_length)"
    assert any(line.startswith(summary) for line in capsys.readouterr().err.splitlines())
    assert main(["train", *flags, "--max_steps", "1", "--output_dir", str(tmp_path / "run"), "--report_to", "none",
                 "--ref_log_probs", str(tmp_path / "ref")]) == 0
    assert any(line.startswith(summary) for line in capsys.readouterr().err.splitlines())


def test_a_damaged_shard_or_manifest_is_refused_in_one_line_and_precompute_repairs_it(tmp_path, capsys):
    cache = tmp_path / "ref"
    assert main(["precompute", "reference", "--output", str(cache), "--shard_size", "5", *KEYFACT]) == 0
    shard = cache / "train" / "shard-00001.safetensors"
    good = shard.read_bytes()
    shard.write_bytes(good[:-8] + bytes(8))  # the same size, other bytes
    train = ["train", *KEYFACT, "--max_steps", "1", "--output_dir", str(tmp_path / "run"), "--report_to", "none",
             "--ref_log_probs", str(cache)]
    capsys.readouterr()
    assert main(train) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"tokenweight: error: reference log-prob cache: {shard} is damaged (its bytes do not match the checksum in "
        "the manifest); run `tokenweight precompute reference` again with the run's flags to repair it")
    assert main(["precompute", "reference", "--output", str(cache), "--shard_size", "5", *KEYFACT]) == 0
    assert shard.read_bytes() == good  # rewritten, the same log-probs
    manifest = cache / "eval" / "manifest.json"
    manifest.write_text(manifest.read_text()[:40])
    capsys.readouterr()
    assert main(train) == 2
    line = capsys.readouterr().err.splitlines()[-1]
    assert line.startswith(f"tokenweight: error: {manifest} is damaged (")
    assert line.endswith(f"delete {cache / 'eval'} and run `tokenweight precompute reference` again with the run's "
                         "flags")
