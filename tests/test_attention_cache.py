"""The attention weight cache: fingerprint refusal naming the part, resumable precompute, damaged files named and
recomputed (spec §8.1, issue 10 items 6–7)."""

import struct

import pytest
import torch
from attention_fixtures import CONVERSATIONAL_ROWS, STANDARD_ROWS, make_bpe_tokenizer, make_judge, tokenized

from tokenweight.weights.attention import (CacheDamagedError, CacheIncompleteError, CacheMismatchError,
                                           JudgeSettings, attention_weights, cache_fingerprint,
                                           load_attention_weights, precompute_attention_weights)
from tokenweight.weights.attention.cache import read_manifest, shard_path
from tokenweight.weights.attention.judge import default_template

# The cache judges shard by shard, the in-memory reference all rows at once: the judge batches differ, so each input
# is left-padded to another width and the fp32 projections reduce in another order (measured: 6e-7 relative, also
# between batch sizes 1 and 4 in memory); storing fp32 adds at most 6e-8. Weights scale with the answer length
# (mean 1), so the bound is relative: 2e-6 ≈ 16 fp32 ulps.
BATCHING_REL = 2e-6


@pytest.fixture(scope="module")
def setup():
    tokenizer = make_bpe_tokenizer()
    return tokenizer, make_judge(len(tokenizer)), tokenized(STANDARD_ROWS + CONVERSATIONAL_ROWS, tokenizer)


def _fingerprint(model, tokenizer, rows, **settings):
    return cache_fingerprint(model, tokenizer, rows, JudgeSettings(**settings).resolved(model))


def test_precompute_writes_shards_equal_to_in_memory_weights(setup, tmp_path):
    tokenizer, model, rows = setup
    result = precompute_attention_weights(model, tokenizer, rows, tmp_path, shard_size=2, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"] + [f"shard-0000{i}.safetensors"
                                                                              for i in range(3)]
    assert read_manifest(tmp_path)["complete"] and result.stats.pairs == len(rows)
    for row, got, want in zip(rows, zip(result.chosen_weights, result.rejected_weights),
                              attention_weights(model, tokenizer, rows)):
        assert len(got[0]) == len(row["chosen_ids"]) and len(got[1]) == len(row["rejected_ids"])
        assert got[0] == pytest.approx(want["chosen_weights"], rel=BATCHING_REL)
        assert got[1] == pytest.approx(want["rejected_weights"], rel=BATCHING_REL)
    loaded = load_attention_weights(tmp_path, _fingerprint(model, tokenizer, rows))
    assert loaded.chosen_weights == result.chosen_weights


def test_mismatched_fingerprint_is_refused_naming_the_part(setup, tmp_path):
    tokenizer, model, rows = setup
    precompute_attention_weights(model, tokenizer, rows, tmp_path, progress=False)
    other_tokenizer = make_bpe_tokenizer()
    other_tokenizer.chat_template = other_tokenizer.chat_template.replace("\n", "\n\n")
    changed = {
        "model": _fingerprint(make_judge(len(tokenizer), seed=1), tokenizer, rows),
        "tokenizer": _fingerprint(model, other_tokenizer, rows),
        "dataset": _fingerprint(model, tokenizer, rows[:-1] + [{**rows[-1], "chosen_ids": rows[-1]["chosen_ids"][1:]}]),
        "template": _fingerprint(model, tokenizer, rows, template=default_template().replace("impartial", "fair")),
        "layers": _fingerprint(model, tokenizer, rows, layers=[0]),
        "settings": _fingerprint(model, tokenizer, rows, eos_weight=1.0),
    }
    for part, expected in changed.items():
        with pytest.raises(CacheMismatchError, match=rf"computed for a different {part} \("):
            load_attention_weights(tmp_path, expected)
    with pytest.raises(CacheMismatchError, match="different layers"):
        precompute_attention_weights(model, tokenizer, rows, tmp_path, layers=[0], progress=False)
    load_attention_weights(tmp_path, _fingerprint(model, tokenizer, rows, layers=[-1], batch_size=1))  # same cache


def test_interrupted_precompute_resumes_without_redoing_shards(setup, tmp_path):
    tokenizer, model, rows = setup
    reference = precompute_attention_weights(model, tokenizer, rows, tmp_path / "whole", shard_size=2,
                                             progress=False)

    def crash_after_first(index):
        if index == 0:
            raise KeyboardInterrupt("simulated interruption")

    folder = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        precompute_attention_weights(model, tokenizer, rows, folder, shard_size=2, progress=False,
                                     on_shard_written=crash_after_first)
    assert not read_manifest(folder)["complete"]
    with pytest.raises(CacheIncompleteError, match="unfinished"):
        load_attention_weights(folder, _fingerprint(model, tokenizer, rows))
    first_shard = shard_path(folder, 0).stat()
    written = []
    resumed = precompute_attention_weights(model, tokenizer, rows, folder, shard_size=5, progress=False,
                                           on_shard_written=written.append)
    assert written == [1, 2]  # shard 0 was kept (and the stored shard size of 2 was used)
    assert shard_path(folder, 0).stat().st_mtime_ns == first_shard.st_mtime_ns
    assert shard_path(folder, 0).stat().st_ino == first_shard.st_ino
    assert resumed.chosen_weights == reference.chosen_weights
    assert resumed.rejected_weights == reference.rejected_weights
    assert resumed.stats == reference.stats
    assert not [p for p in folder.iterdir() if ".tmp-" in p.name]


def test_ensure_attention_cache_computes_then_loads(setup, tmp_path):
    import datasets

    from tokenweight.weights.attention import ensure_attention_cache
    from tokenweight.config import TokenweightConfig
    from tokenweight.data import tokenize_preference_dataset

    tokenizer, model, _ = setup
    model.save_pretrained(tmp_path / "judge")
    dataset, _ = tokenize_preference_dataset(datasets.Dataset.from_list(STANDARD_ROWS), tokenizer)
    args = TokenweightConfig(output_dir=str(tmp_path / "run"), attention_weights=str(tmp_path / "weights"),
                             attention_layers=[0, 1], model_dtype="float32", report_to=[])
    computed = ensure_attention_cache(args, str(tmp_path / "judge"), tokenizer, dataset)
    assert [len(w) for w in computed.chosen_weights] == [len(ids) for ids in dataset["chosen_ids"]]
    want = attention_weights(model, tokenizer, list(dataset), layers=[0, 1])
    assert [w["rejected_weights"] for w in want] == [pytest.approx(w, rel=BATCHING_REL)
                                                     for w in computed.rejected_weights]
    loaded = ensure_attention_cache(args, str(tmp_path / "judge"), tokenizer, dataset)  # from the cache
    assert loaded.chosen_weights == computed.chosen_weights


def test_changed_middle_layer_is_refused_naming_the_parameter(setup, tmp_path):
    tokenizer, _, rows = setup
    judge = make_judge(len(tokenizer), layers=6)
    precompute_attention_weights(judge, tokenizer, rows, tmp_path, progress=False)
    name = "model.layers.3.self_attn.q_proj.weight"
    with torch.no_grad():
        judge.get_parameter(name).mul_(3)
    with pytest.raises(CacheMismatchError, match=rf"different model \(model: 1 parameter differs: {name} "
                                                 r"\(bytes differ\)\)"):
        precompute_attention_weights(judge, tokenizer, rows, tmp_path, progress=False)
    with pytest.raises(CacheMismatchError, match=r"model\.embed_tokens\.weight \(dtype float32 vs bfloat16\)"):
        load_attention_weights(tmp_path, _fingerprint(judge.to(torch.bfloat16), tokenizer, rows))


def test_changed_dataset_is_refused_naming_the_first_differing_row(setup, tmp_path):
    tokenizer, model, rows = setup
    precompute_attention_weights(model, tokenizer, rows, tmp_path, progress=False)
    changed = rows[:3] + [{**rows[3], "rejected_ids": rows[3]["rejected_ids"][:-2]}] + rows[4:]
    with pytest.raises(CacheMismatchError, match=r"dataset: 5 rows cached vs 5 now, first differing row 3\)"):
        load_attention_weights(tmp_path, _fingerprint(model, tokenizer, changed))
    with pytest.raises(CacheMismatchError, match=r"dataset: 5 rows cached vs 4 now, first differing row 4\)"):
        load_attention_weights(tmp_path, _fingerprint(model, tokenizer, rows[:4]))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-7])


def _overwrite_with_float_max(path):
    """The last 8 bytes (the end of the rejected weights) become two float32 3.4e38."""
    data = bytearray(path.read_bytes())
    data[-8:] = struct.pack("<2f", 3.4e38, 3.4e38)
    path.write_bytes(bytes(data))


DAMAGE = {"truncated shard": (lambda folder: _truncate(shard_path(folder, 1)), "shard-00001", "is damaged"),
          "overwritten shard": (lambda folder: _overwrite_with_float_max(shard_path(folder, 2)), "shard-00002",
                                "is damaged"),
          "deleted shard": (lambda folder: shard_path(folder, 0).unlink(), "shard-00000", "is missing"),
          "corrupt manifest": (lambda folder: _truncate(folder / "manifest.json"), "manifest.json", "is damaged")}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_cache_is_named_then_repaired_by_precompute(setup, tmp_path, damage, caplog):
    tokenizer, model, rows = setup
    clean = precompute_attention_weights(model, tokenizer, rows, tmp_path / "clean", shard_size=2, progress=False)
    folder = tmp_path / "damaged"
    precompute_attention_weights(model, tokenizer, rows, folder, shard_size=2, progress=False)
    harm, file_name, problem = DAMAGE[damage]
    harm(folder)
    with pytest.raises(CacheDamagedError, match=rf"^attention weight cache {folder}: {file_name}\S* {problem}"):
        load_attention_weights(folder, _fingerprint(model, tokenizer, rows))
    written = []
    repaired = precompute_attention_weights(model, tokenizer, rows, folder, shard_size=2, progress=False,
                                            on_shard_written=written.append)
    assert written == ([0, 1, 2] if file_name == "manifest.json" else [int(file_name[-1])])
    assert file_name in caplog.text
    assert repaired.chosen_weights == clean.chosen_weights and repaired.rejected_weights == clean.rejected_weights
    assert repaired.stats == clean.stats
    for index in range(3):
        assert shard_path(folder, index).read_bytes() == shard_path(tmp_path / "clean", index).read_bytes()
    loaded = load_attention_weights(folder, _fingerprint(model, tokenizer, rows))
    assert loaded.chosen_weights == clean.chosen_weights and loaded.rejected_weights == clean.rejected_weights


def test_cli_precompute_repairs_an_overwritten_shard_and_refuses_a_changed_judge(setup, tmp_path, caplog,
                                                                                 monkeypatch):
    import json

    from tokenweight import cli

    tokenizer, _, _ = setup
    judge = make_judge(len(tokenizer), layers=4)
    judge.save_pretrained(tmp_path / "judge")
    tokenizer.save_pretrained(tmp_path / "judge")
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in STANDARD_ROWS), encoding="utf-8")
    folder = tmp_path / "weights"
    argv = ["precompute", "--output", str(folder), "attention", "--model_name_or_path", str(tmp_path / "judge"),
            "--dataset_name", str(data), "--output_dir", str(tmp_path / "run"), "--report_to", "none"]
    assert cli.main(argv) == 0
    clean = shard_path(folder, 0).read_bytes()
    _overwrite_with_float_max(shard_path(folder, 0))
    assert cli.main(argv) == 0
    assert f"{folder}: shard-00000.safetensors is damaged" in caplog.text
    assert shard_path(folder, 0).read_bytes() == clean

    with torch.no_grad():
        judge.get_parameter("model.layers.2.self_attn.q_proj.weight").mul_(3)
    judge.save_pretrained(tmp_path / "judge")
    monkeypatch.setenv("TOKENWEIGHT_DEBUG", "1")  # the CLI re-raises the UserError it would print as one line
    with pytest.raises(CacheMismatchError, match=r"model: 1 parameter differs: "
                                                 r"model\.layers\.2\.self_attn\.q_proj\.weight \(bytes differ\)"):
        cli.main(argv)
    assert shard_path(folder, 0).read_bytes() == clean
