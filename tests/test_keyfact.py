"""KeyFact: generator, facts validation, tokenizer, cached base model and metrics."""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tokenweight.keyfact import (SIZES, build_keyfact, build_keyfact_tokenizer, evaluate_keyfact, generated_keys,
                                 greedy_generations, key_margins, key_position, key_weight_share,
                                 keyfact_base_model, load_facts, one_thread, pref_acc, save_facts)
from tokenweight.keyfact import base_model as base_model_module
from tokenweight.keyfact import build as build_module
from tokenweight.keyfact.facts import fill
from tokenweight.keyfact.generator import heldout_items
from tokenweight.keyfact.judge import judge_verdict_accuracy, judge_verdict_logits
from tokenweight.keyfact.sft import encode_conversation, judge_messages, sft_batches
from tokenweight.weights.attention.judge import default_template

# A small facts file whose arithmetic subjects contain their own key ("3 + 0 is 3 ."), so the key slot is not the
# first occurrence of the key word.
TINY_FACTS = {
    "families": [
        {"name": "sums", "train_questions": ["what is {subject} ?", "compute {subject} ."],
         "eval_questions": ["can you work out {subject} ?"], "answer": "{subject} is {key} .",
         "rows": [{"subject": "3 + 0", "key": "3", "distractors": ["4", "2"]},
                  {"subject": "1 + 1", "key": "2", "distractors": ["3", "1"]}],
         "eval_rows": [{"subject": "2 + 1", "key": "3", "distractors": ["2", "4"]}]},
        {"name": "capitals", "train_questions": ["what is the capital of {subject} ?"],
         "eval_questions": ["which city is the capital of {subject} ?"],
         "answer": "the capital of {subject} is {key} .",
         "rows": [{"subject": "france", "key": "paris", "distractors": ["lyon", "rome"]},
                  {"subject": "new zealand", "key": "wellington", "distractors": ["auckland", "paris"]}]},
    ],
    "train_filler": ["it is easy .", "people know this well .", "i hope this helps you .", "ok ."],
    "eval_filler": ["this is common knowledge .", "thanks for asking .", "that is all ."],
}


@pytest.fixture(scope="module")
def facts():
    return load_facts()


@pytest.fixture(scope="module")
def tokenizer(facts):
    return build_keyfact_tokenizer(facts)


@pytest.fixture(scope="module")
def small_model_path():
    return keyfact_base_model(size="small", progress=False)  # the shipped one


@pytest.fixture
def single_thread():
    """Tiny models on a shared 2-core machine: intra-op threads only contend (50x slower), see ``one_thread``."""
    with one_thread():
        yield


def _render_ids(tokenizer, messages, generation_prompt=False):
    return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True)["input_ids"]


def _content(messages):
    return messages[-1]["content"]


def _filler_sentences(row, facts):
    """Split the filler part of the chosen and rejected answers into sentences (each ends with '.')."""
    answer = next(f["answer"] for f in facts["families"] if f["name"] == row["family"])
    out = []
    for column, key in (("chosen", row["key"]), ("rejected", row["wrong_key"])):
        if row["noisy"]:
            key = row["wrong_key"] if column == "chosen" else row["key"]
        text = _content(row[column])
        head = fill(answer, row["subject"], key)
        assert text == " ".join(text.split()) and (text + " ").startswith(head + " "), (text, head)
        words, sentence = text[len(head):].split(), []
        for word in words:
            sentence.append(word)
            if word == ".":
                out.append(" ".join(sentence))
                sentence = []
        assert not sentence
    return out


# ------------------------------------------------------------------------------------------------- generator


def test_generator_is_deterministic_and_seeded(facts):
    a, b = build_keyfact(n_train=50, n_eval=20, seed=3), build_keyfact(n_train=50, n_eval=20, seed=3)
    assert all(a[split].to_list() == b[split].to_list() for split in ("train", "eval", "validation"))
    assert build_keyfact(n_train=50, n_eval=20, seed=4)["train"].to_list() != a["train"].to_list()
    # the eval split does not depend on the size of the train split
    assert build_keyfact(n_train=7, n_eval=20, seed=3)["eval"].to_list() == a["eval"].to_list()


def test_heldout_splits_are_fixed_across_training_seeds_and_prefix_stable():
    runs = [build_keyfact(n_train=20, n_eval=64, n_validation=32, seed=seed) for seed in (0, 1, 7)]
    for split in ("eval", "validation"):
        assert runs[0][split].to_list() == runs[1][split].to_list() == runs[2][split].to_list()
    assert runs[0]["train"].to_list() != runs[1]["train"].to_list()
    other = build_keyfact(n_train=20, n_eval=64, n_validation=32, eval_seed=1)
    assert other["eval"].to_list() != runs[0]["eval"].to_list()
    # a smaller split is the prefix of a larger one, and neither held-out split depends on the other's size
    longer = build_keyfact(n_train=20, n_eval=100, n_validation=5, seed=1)
    assert longer["eval"].to_list()[:64] == runs[0]["eval"].to_list()
    assert longer["validation"].to_list() == runs[0]["validation"].to_list()[:5]


def _item(row):
    return row["family"], row["question"], row["subject"], row["wrong_key"]


def test_validation_is_disjoint_from_eval_and_held_out_like_it(facts):
    data = build_keyfact(n_train=400, n_eval=512, n_validation=128)
    eval_items, validation_items = {_item(r) for r in data["eval"]}, {_item(r) for r in data["validation"]}
    assert len(validation_items) > 60 and not eval_items & validation_items
    # every held-out item belongs to exactly one of the two splits, validation holds ~VALIDATION_ITEM_SHARE
    partition = heldout_items(facts, 0)
    sizes = {split: sum(len(items) for items in partition[split].values()) for split in partition}
    assert sizes["validation"] + sizes["eval"] == 780 and sizes["validation"] == pytest.approx(0.2 * 780, abs=3)
    for family in facts["families"]:
        shared = {(id(r), q, w) for r, q, w in partition["eval"][family["name"]]} & {
            (id(r), q, w) for r, q, w in partition["validation"][family["name"]]}
        assert not shared
    assert {r["family"] for r in data["validation"]} == {f["name"] for f in facts["families"]}
    train_questions = {r["question"] for r in data["train"]}
    assert not train_questions & {r["question"] for r in data["validation"]}


def test_rows_hold_key_in_chosen_and_distractor_in_rejected(facts):
    data = build_keyfact(n_train=300, n_eval=100)
    for split in ("train", "eval"):
        for row in data[split]:
            family = next(f for f in facts["families"] if f["name"] == row["family"])
            facts_row = next(r for r in family["rows"] + family.get("eval_rows", []) if r["subject"] == row["subject"])
            assert row["key"] == facts_row["key"] and row["wrong_key"] in facts_row["distractors"]
            assert _content(row["chosen"]).startswith(fill(family["answer"], row["subject"], row["key"]) + " ")
            assert _content(row["rejected"]).startswith(fill(family["answer"], row["subject"], row["wrong_key"]) + " ")
            assert row["prompt"] == [{"role": "user", "content": row["question"]}]
            assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant" and not row["noisy"]


def test_splits_are_disjoint_in_paraphrases_filler_and_arithmetic_subjects(facts):
    data = build_keyfact(n_train=400, n_eval=200, n_validation=100)
    for split in ("train", "eval", "validation"):
        kind = "train" if split == "train" else "eval"
        templates = {fill(q, r["subject"]) for r in data[split] for f in facts["families"]
                     if f["name"] == r["family"] for q in f[f"{kind}_questions"]}
        assert all(r["question"] in templates for r in data[split])
        pool = set(facts[f"{kind}_filler"])
        assert all(set(_filler_sentences(r, facts)) <= pool for r in data[split])
    train_questions = {r["question"] for r in data["train"]}
    assert not train_questions & {r["question"] for r in data["eval"]}
    arithmetic = next(f for f in facts["families"] if f["name"] == "arithmetic")
    train_subjects = {r["subject"] for r in data["train"] if r["family"] == "arithmetic"}
    for split in ("eval", "validation"):
        subjects = {r["subject"] for r in data[split] if r["family"] == "arithmetic"}
        assert train_subjects and subjects and not train_subjects & subjects
        assert subjects <= {r["subject"] for r in arithmetic["eval_rows"]}
    assert {r["family"] for r in data["eval"]} == {f["name"] for f in facts["families"]}


@pytest.mark.parametrize("chosen_longer, shortcut", [(0.8, 0.0), (0.5, 0.0), (0.0, 0.0), (0.5, 0.9), (0.8, 1.0)])
def test_chosen_longer_sets_the_rate_of_longer_chosen_answers(chosen_longer, shortcut):
    data = build_keyfact(n_train=600, n_eval=400, n_validation=400, chosen_longer=chosen_longer, shortcut=shortcut,
                         filler_min=0, filler_max=3)

    def rate(split):
        return sum(len(_content(r["chosen"]).split()) > len(_content(r["rejected"]).split())
                   for r in data[split]) / len(data[split])

    assert all(_filler_sentences(r, load_facts()) is not None for r in data["train"])  # well-formed, no extra spaces
    tolerance = 4 * math.sqrt(0.25 / 600)  # 4 binomial standard deviations
    assert abs(rate("train") - chosen_longer) <= tolerance  # the shortcut sentence's words are counted
    for split in ("eval", "validation"):
        assert abs(rate(split) - 0.5) <= 4 * math.sqrt(0.25 / 400)  # held-out splits are always unbiased


def test_label_noise_swaps_exactly_that_fraction_of_train_pairs(facts):
    data = build_keyfact(n_train=500, n_eval=50, label_noise=0.2)
    noisy = [r for r in data["train"] if r["noisy"]]
    assert len(noisy) == 100 and not any(r["noisy"] for r in data["eval"])
    answers = {f["name"]: f["answer"] for f in facts["families"]}
    for row in noisy:
        assert _content(row["chosen"]).startswith(fill(answers[row["family"]], row["subject"], row["wrong_key"]) + " ")
        assert _content(row["rejected"]).startswith(fill(answers[row["family"]], row["subject"], row["key"]) + " ")


@pytest.mark.parametrize("shortcut, label_noise", [(0.9, 0.0), (0.5, 0.0), (1.0, 0.0), (0.8, 0.25), (0.1, 0.25)])
def test_shortcut_sentence_sits_on_the_chosen_side_of_exactly_that_fraction(facts, shortcut, label_noise):
    data = build_keyfact(n_train=500, n_eval=300, n_validation=100, shortcut=shortcut, label_noise=label_noise)
    sentence = facts["shortcut"]
    assert sentence not in facts["train_filler"] + facts["eval_filler"]

    def holds(row, column):
        return (" " + _content(row[column]) + " ").count(" " + sentence + " ")

    counts = {side: sum(r["shortcut"] == side for r in data["train"]) for side in ("chosen", "rejected", "none")}
    assert counts == {"chosen": round(shortcut * 500), "rejected": 500 - round(shortcut * 500), "none": 0}
    for row in data["train"]:
        assert (holds(row, "chosen"), holds(row, "rejected")) == ((1, 0) if row["shortcut"] == "chosen" else (0, 1))
        filler = [s for s in _filler_sentences(row, facts) if s != sentence]
        assert set(filler) <= set(facts["train_filler"])  # the sentence comes on top of ordinary filler
    # the side is the chosen column after the label-noise swap: noisy pairs carry it like clean ones
    noisy = [r for r in data["train"] if r["noisy"]]
    assert len(noisy) == round(label_noise * 500)
    if noisy:
        chosen_share = sum(r["shortcut"] == "chosen" for r in noisy) / len(noisy)
        assert 0 < chosen_share < 1 and (chosen_share > 0.5) == (shortcut > 0.5)
    for split in ("eval", "validation"):
        assert all(r["shortcut"] == "none" and holds(r, "chosen") + holds(r, "rejected") == 0 for r in data[split])
    off = build_keyfact(n_train=50, n_eval=5, n_validation=5)
    assert all(r["shortcut"] == "none" for r in off["train"])
    assert not any(holds(r, c) for r in off["train"] for c in ("chosen", "rejected"))


def test_generator_rejects_bad_knobs():
    with pytest.raises(ValueError, match="chosen_longer"):
        build_keyfact(chosen_longer=1.5)
    with pytest.raises(ValueError, match="filler_max"):
        build_keyfact(facts_path=TINY_FACTS, filler_max=4)  # the eval pool has 3 sentences
    for shortcut in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"shortcut must be 0 \(off\) or in \(0, 1\]"):
            build_keyfact(shortcut=shortcut)
    with pytest.raises(ValueError, match="needs a 'shortcut' sentence"):
        build_keyfact(facts_path=TINY_FACTS, shortcut=0.9)
    with pytest.raises(ValueError, match="n_validation"):
        build_keyfact(n_validation=0)
    with pytest.raises(ValueError, match="shortcut sentence on the chosen side"):  # no length order can hold
        build_keyfact(facts_path={**TINY_FACTS, "shortcut": "this one is longer than any filler ."}, shortcut=1.0, chosen_longer=0.0,
                      filler_min=1, filler_max=1, n_train=20)


# ------------------------------------------------------------------------------------------------- facts file


def test_facts_round_trip_and_custom_file(tmp_path):
    path = save_facts(TINY_FACTS, tmp_path / "facts.json")
    assert load_facts(path) == TINY_FACTS
    data = build_keyfact(facts_path=path, n_train=40, n_eval=10)
    assert {r["family"] for r in data["train"]} == {"sums", "capitals"}
    assert {r["subject"] for r in data["eval"] if r["family"] == "sums"} == {"2 + 1"}


@pytest.mark.parametrize("edit, message", [
    (lambda f: f["families"][1]["rows"][1].update(key="new york"),
     r"family 'capitals', rows\[1\] \('new zealand'\), key: 'new york' is not a single token"),
    (lambda f: f["families"][0]["rows"][0]["distractors"].append("4 4"),
     r"family 'sums', rows\[0\] \('3 \+ 0'\), distractor 2"),
    (lambda f: f["families"][0]["eval_rows"][0].update(distractors=[]),
     r"family 'sums', eval_rows\[0\] \('2 \+ 1'\): 'distractors' must be a non-empty list"),
    (lambda f: f["families"][1].update(answer="the capital of {subject} is paris ."),
     r"family 'capitals', answer: .* must contain \{key\} exactly once"),
    (lambda f: f["families"][0]["train_questions"].append("can you work out {subject} ?"),
     r"family 'sums': question templates .* both train and eval"),
    (lambda f: f["families"][1]["rows"][0].update(key="Paris"), r"family 'capitals', rows\[0\] .* lowercase"),
    (lambda f: f["families"][1]["rows"][0].update(key="lyon"), r"rows\[0\] \('france'\): the key 'lyon' is also"),
    (lambda f: f["eval_filler"].append("ok ."), r"filler sentences \['ok \.'\] are both train and eval"),
    (lambda f: f.update(shortcut="ok ."), r"the shortcut sentence 'ok \.' is also a filler sentence"),
    (lambda f: f.update(shortcut="Sure ."), r"shortcut: 'Sure \.' must be lowercase"),
])
def test_bad_facts_file_names_family_and_row(tmp_path, edit, message):
    bad = copy.deepcopy(TINY_FACTS)
    edit(bad)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=message) as error:
        load_facts(path)
    assert str(path) in str(error.value)


# ------------------------------------------------------------------------------------------------- tokenizer


def test_every_word_and_key_is_one_known_token(facts, tokenizer):
    assert len(tokenizer) <= 500
    unk = tokenizer.unk_token_id
    for family in facts["families"]:
        for row in family["rows"] + family.get("eval_rows", []):
            for word in [row["key"], *row["distractors"]]:
                ids = tokenizer(word, add_special_tokens=False)["input_ids"]
                assert len(ids) == 1 and ids[0] != unk, (family["name"], row["subject"], word)
    judge = default_template().replace("{question}", "").replace("{answer_a}", "").replace("{answer_b}", "")
    texts = [judge, *facts["train_filler"], *facts["eval_filler"]]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert unk not in ids and len(ids) == len(text.split())


def test_chat_template_renders_turns_and_prompt_is_a_token_prefix(tokenizer):
    prompt = [{"role": "user", "content": "what is the capital of france ?"}]
    answer = [{"role": "assistant", "content": "the capital of france is paris ."}]
    rendered = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
    assert rendered == ("<bos><|user|> what is the capital of france ? <|end|> "
                        "<|assistant|> the capital of france is paris . <|end|> ")
    assert tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True) == \
        "<bos><|user|> what is the capital of france ? <|end|> <|assistant|> "
    assert tokenizer.eos_token == "<|end|>" and tokenizer.pad_token == "<pad>"
    for row in build_keyfact(n_train=100, n_eval=1)["train"]:
        prompt_ids = _render_ids(tokenizer, row["prompt"], generation_prompt=True)
        for column in ("chosen", "rejected"):
            full = _render_ids(tokenizer, row["prompt"] + row[column])
            completion = full[len(prompt_ids):]
            assert full[:len(prompt_ids)] == prompt_ids
            assert completion[-1] == tokenizer.eos_token_id and completion.count(tokenizer.eos_token_id) == 1
            assert len(completion) == len(_content(row[column]).split()) + 1


# ------------------------------------------------------------------------------------------------- base model


def test_small_base_model_saves_reloads_and_is_deterministic(tmp_path, facts, single_thread):
    settings = build_module.build_settings("small", 0, 0.5, 0.1, 1, 3, facts)
    fresh, _, losses, judge = build_module.train_base_model(settings, progress=False)
    assert judge == {}  # the small model has no judge stage
    assert all(math.isfinite(loss) for loss in losses)
    small_model_path = keyfact_base_model(cache_dir=tmp_path, size="small", progress=False, shipped=False)
    assert small_model_path.parent == tmp_path and small_model_path.name == build_module.build_name(settings)
    model = AutoModelForCausalLM.from_pretrained(small_model_path)
    tokenizer = AutoTokenizer.from_pretrained(small_model_path)
    row = build_keyfact(n_train=1, n_eval=1)["train"][0]
    ids = torch.tensor([_render_ids(tokenizer, row["prompt"] + row["chosen"])])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, fresh(ids).logits)
    assert model.config.num_hidden_layers == SIZES["small"]["num_hidden_layers"]
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|end|>")
    assert tokenizer.chat_template == build_keyfact_tokenizer(facts).chat_template
    assert json.loads((small_model_path / "keyfact_build.json").read_text())["size"] == "small"


def test_the_judge_stage_trains_after_the_answers_and_enters_the_cache_key(facts, single_thread):
    settings = build_module.build_settings("small", 0, 0.5, 0.1, 1, 3, facts)
    phased = {**settings, "judge_phases": [[3, build_module.JUDGE_MIX], [4, {"verify": 0.5, "judge": 0.5}]]}
    _, _, losses, judge = build_module.train_base_model(phased, progress=False)
    assert len(losses) == SIZES["small"]["steps"] + 7 and all(math.isfinite(loss) for loss in losses)
    assert len(judge["judge_round_accuracies_train"]) == 1  # small's judge_max_rounds
    assert build_module.build_name(phased) != build_module.build_name(settings)
    assert SIZES["default"]["judge_phases"]  # the built-in model learns to judge


def test_a_build_with_a_judge_stage_prints_and_records_its_verdict_accuracy(tmp_path, facts, capsys, monkeypatch):
    phased = {**SIZES["small"], "judge_phases": [[2, {"verify": 0.5, "judge": 0.5}]]}
    monkeypatch.setitem(SIZES, "small", phased)
    path = keyfact_base_model(cache_dir=tmp_path, size="small", progress=False)
    recorded = json.loads((path / "keyfact_build.json").read_text())["judge_verdict_accuracy_train"]
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    pairs = build_keyfact(n_train=build_module.JUDGE_CHECK_PAIRS, n_eval=1, n_validation=1)["train"]
    assert recorded == pytest.approx(judge_verdict_accuracy(model, tokenizer, pairs), abs=1e-6)
    assert f"judge verdict accuracy {recorded:.3f} on 128 training pairs after round 1/1" in capsys.readouterr().err


@pytest.mark.parametrize("min_accuracy, rounds_run", [(0.0, 1), (1.01, 3)])
def test_the_judge_stage_repeats_in_rounds_until_the_judge_judges(facts, single_thread, capsys, min_accuracy,
                                                                  rounds_run):
    """A round below ``judge_min_accuracy`` is followed by another (next corpus stream, fresh schedule), up to
    ``judge_max_rounds``; each round's accuracy is printed and recorded, and the last one says it fell short."""
    settings = {**build_module.build_settings("small", 0, 0.5, 0.1, 1, 3, facts),
                "judge_phases": [[2, {"verify": 0.5, "judge": 0.5}]], "judge_min_accuracy": min_accuracy,
                "judge_max_rounds": 3}
    _, _, losses, judge = build_module.train_base_model(settings, progress=False)
    accuracies = judge["judge_round_accuracies_train"]
    assert len(accuracies) == rounds_run and len(losses) == SIZES["small"]["steps"] + 2 * rounds_run
    assert judge["judge_verdict_accuracy_train"] == accuracies[-1] and all(0 <= a <= 1 for a in accuracies)
    err = capsys.readouterr().err
    assert [f"after round {n}/3" in err for n in (1, 2, 3)] == [True, rounds_run > 1, rounds_run > 2]
    assert ("below judge_min_accuracy 1.01 after the last round" in err) == (rounds_run == 3)
    assert err.count("another round follows") == rounds_run - 1


def _answer_heads(facts):
    """``{answer sentence: (family, row, word)}`` for every row and every key or distractor word."""
    heads = {}
    for family in facts["families"]:
        for row in family["rows"] + family.get("eval_rows", []):
            for word in [row["key"], *row["distractors"]]:
                heads[fill(family["answer"], row["subject"], word)] = (family["name"], row, word)
    return heads


def _parse_answer(text, heads):
    """``(family, row, word)`` of an answer text: its first sentence is an answer template filled with ``word``."""
    found = [value for head, value in heads.items() if (text + " ").startswith(head + " ")]
    assert len(found) == 1, text
    return found[0]


def test_sft_corpus_verdicts_are_correct_and_answers_stay_at_p_correct(facts, tokenizer):
    """Judge verdicts name the answer with the correct key, verification replies say whether the one answer's key is
    correct (both balanced between ``a`` and ``b``), and the answers hold the key only ``p_correct`` of the time."""
    heads = _answer_heads(facts)
    verdicts = {"judge": {"a": 0, "b": 0}, "verify": {"a": 0, "b": 0}}
    answers = correct_answers = 0
    batches = sft_batches(tokenizer, facts, [(90, {"judge": 0.4, "verify": 0.3, "answer": 0.3})], batch_size=16,
                          stream="test", p_correct=0.5, filler_min=1, filler_max=3)
    for input_ids, attention_mask, labels in batches:
        for ids, mask, row_labels in zip(input_ids, attention_mask, labels):
            ids = ids[mask.bool()].tolist()
            reply = tokenizer.decode([i for i, label in zip(ids, row_labels.tolist()) if label != -100])
            prompt = tokenizer.decode([i for i, label in zip(ids, row_labels.tolist()) if label == -100])
            assert reply.split()[-1] == "<|end|>"
            reply = " ".join(reply.split()[:-1])
            if "[ start of answer a ]" in prompt:
                text = prompt.split("[ start of answer a ]")[1]
                answer_a, text = text.split("[ end of answer a ]")
                answer_b = text.split("[ start of answer b ]")[1].split("[ end of answer b ]")[0]
                (_, row_a, word_a), (_, row_b, word_b) = (_parse_answer(a.strip(), heads) for a in (answer_a,
                                                                                                    answer_b))
                assert row_a is row_b and (word_a == row_a["key"]) != (word_b == row_b["key"])
                assert reply == ("a" if word_a == row_a["key"] else "b")  # the verdict names the correct key
                verdicts["judge"][reply] += 1
            elif reply in ("a", "b"):
                user = prompt.split("<|user|>")[1].split("<|end|>")[0].strip()
                answer = max((head for head in heads if user.endswith(" " + head)), key=len)  # one answer, no filler
                _, row, word = heads[answer]
                assert row["subject"] in user[:-len(answer)]  # the question asks about the answer's subject
                assert reply == ("a" if word == row["key"] else "b")  # a: the key is correct
                verdicts["verify"][reply] += 1
            else:
                _, row, word = _parse_answer(reply, heads)
                assert word in (row["key"], row["distractors"][0])
                answers += 1
                correct_answers += word == row["key"]
    for kind, counts in verdicts.items():
        judged = counts["a"] + counts["b"]
        assert judged > 300, kind
        assert abs(counts["a"] / judged - 0.5) <= 4 * math.sqrt(0.25 / judged), kind  # no position bias to learn
    assert answers > 300
    assert abs(correct_answers / answers - 0.5) <= 4 * math.sqrt(0.25 / answers)  # answers stay at p_correct


def test_sft_phases_draw_each_kind_at_its_mix_fraction_and_a_bad_mix_is_refused(facts, tokenizer):
    mix = {"judge": 0.25, "verify": 0.25, "answer": 0.5}
    kinds = {"judge": 0, "verify": 0, "answer": 0}
    phases = [(400, mix), (100, {"answer": 1.0})]
    batches = list(sft_batches(tokenizer, facts, phases, batch_size=1, stream="mix", p_correct=0.5, filler_min=1,
                               filler_max=3))
    assert len(batches) == 500
    for step, (input_ids, attention_mask, labels) in enumerate(batches):
        text = tokenizer.decode(input_ids[0][attention_mask[0].bool()].tolist())
        reply = " ".join(tokenizer.decode(input_ids[0][labels[0] != -100].tolist()).split()[:-1])  # minus <|end|>
        kind = "judge" if "[ start of answer a ]" in text else "verify" if reply in ("a", "b") else "answer"
        assert step < 400 or kind == "answer"  # the second phase's mix
        kinds[kind] += step < 400
    for kind, fraction in mix.items():
        assert abs(kinds[kind] / 400 - fraction) <= 4 * math.sqrt(fraction * (1 - fraction) / 400), kinds
    for bad in ({"judge": 0.5, "answer": 0.4}, {"judge": 0.5, "answers": 0.5}, {"judge": -0.5, "answer": 1.5}):
        with pytest.raises(ValueError, match="SFT mix"):
            next(sft_batches(tokenizer, facts, [(1, bad)], batch_size=1, stream="mix", p_correct=0.5, filler_min=1,
                             filler_max=3))


def test_sft_judge_prompt_is_the_attentionpo_judge_input(tokenizer):
    """The judge format the base model learns is, token for token, what AttentionPO feeds its judge."""
    from tokenweight.data import tokenize_preference_dataset
    from tokenweight.weights.attention.judge import judge_pair_for_row, template_pieces

    raw = build_keyfact(n_train=20, n_eval=1, n_validation=1, shortcut=0.9)["train"]
    tokenized, _ = tokenize_preference_dataset(raw, tokenizer)
    pieces = template_pieces(tokenizer, default_template())
    for index, row in enumerate(tokenized):
        inputs = judge_pair_for_row(row, index, tokenizer, pieces, None).inputs
        answers = (_content(row["chosen"]), _content(row["rejected"]))
        for order, (answer_a, answer_b) in enumerate((answers, answers[::-1])):
            messages = judge_messages(default_template(), row["question"], answer_a, answer_b, "a")
            ids, labels = encode_conversation(tokenizer, messages)
            prompt_ids = ids[:labels.count(-100)]
            assert prompt_ids == inputs[order]
            assert tokenizer.decode(ids[len(prompt_ids):len(prompt_ids) + 1]) == "a"


class _AlwaysSaysA(torch.nn.Module):
    """A stand-in judge whose next-token distribution prefers ``a`` over ``b`` at every position."""

    def __init__(self, tokenizer):
        super().__init__()
        self.vocab, self.a = len(tokenizer), tokenizer.convert_tokens_to_ids("a")

    def forward(self, input_ids, attention_mask):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.a] = 1.0
        return type("Output", (), {"logits": logits})()


def test_judge_verdict_accuracy_matches_unbatched_oracle(small_model_path, single_thread):
    model = AutoModelForCausalLM.from_pretrained(small_model_path)
    tokenizer = AutoTokenizer.from_pretrained(small_model_path)
    rows = list(build_keyfact(n_train=1, n_eval=12, n_validation=1)["eval"])
    logps = judge_verdict_logits(model, tokenizer, rows, batch_size=5)
    verdicts = [tokenizer.convert_tokens_to_ids(v) for v in ("a", "b")]
    right = 0
    for i, row in enumerate(rows):
        answers = (_content(row["chosen"]), _content(row["rejected"]))
        for order, (answer_a, answer_b) in enumerate((answers, answers[::-1])):
            ids, labels = encode_conversation(tokenizer, judge_messages(default_template(), row["question"],
                                                                        answer_a, answer_b, "a"))
            with torch.no_grad():
                last = torch.log_softmax(model(torch.tensor([ids[:labels.count(-100)]])).logits[0, -1], dim=-1)
            assert logps[i, order].tolist() == pytest.approx(last[verdicts].tolist(), abs=1e-5)
            says_a = last[verdicts[0]] > last[verdicts[1]]
            right += bool(says_a) == (order == 0)
    accuracy = judge_verdict_accuracy(model, tokenizer, rows, batch_size=7)
    assert 0.0 <= accuracy <= 1.0 and accuracy == pytest.approx(right / (2 * len(rows)))
    assert judge_verdict_accuracy(_AlwaysSaysA(tokenizer), tokenizer, rows) == 0.5  # position bias scores chance


def test_base_model_is_cached(tmp_path, monkeypatch):
    path = keyfact_base_model(cache_dir=tmp_path, size="small", seed=2, progress=False)  # not a shipped build
    assert path.parent == tmp_path
    weights = path / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    monkeypatch.setattr(base_model_module, "train_base_model", lambda *a, **k: pytest.fail("retrained a cached model"))
    start = time.perf_counter()
    assert keyfact_base_model(cache_dir=tmp_path, size="small", seed=2, progress=False) == path
    assert time.perf_counter() - start < 1.0 and weights.stat().st_mtime_ns == mtime
    monkeypatch.setenv("TOKENWEIGHT_CACHE", str(tmp_path))
    assert keyfact_base_model(size="small", seed=2, progress=False) == path


def test_settings_change_the_cache_folder_and_failed_builds_leave_nothing(tmp_path, monkeypatch):
    real_train = base_model_module.train_base_model

    def train_then_break_saving(*args, **kwargs):
        model, tokenizer, losses, judge = real_train(*args, **kwargs)

        def broken(path, **_):
            (Path(path) / "partial").write_text("x")
            raise OSError("disk full")

        tokenizer.save_pretrained = broken
        return model, tokenizer, losses, judge

    monkeypatch.setattr(base_model_module, "train_base_model", train_then_break_saving)
    with pytest.raises(OSError, match="disk full"):  # base seed 2: no shipped small build (0 and 1 are shipped)
        keyfact_base_model(cache_dir=tmp_path, size="small", seed=2, progress=False)
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(base_model_module, "train_base_model", real_train)
    a = keyfact_base_model(cache_dir=tmp_path, size="small", seed=2, progress=False)
    b = keyfact_base_model(cache_dir=tmp_path, size="small", seed=2, p_correct=0.9, progress=False)
    assert a != b and a.name.startswith("keyfact-small-") and sorted(os.listdir(tmp_path)) == sorted([a.name, b.name])


# ------------------------------------------------------------------------------------------------- metrics


def _tiny_rows(label_noise=0.0):
    return list(build_keyfact(facts_path=TINY_FACTS, n_train=30, n_eval=10, label_noise=label_noise)["train"])


def test_key_position_points_at_the_key_slot_not_the_first_occurrence(tokenizer):
    rows = _tiny_rows(label_noise=0.3)
    assert any(r["subject"] == "3 + 0" for r in rows) and any(r["noisy"] for r in rows)
    for row in rows:
        prompt_ids = _render_ids(tokenizer, row["prompt"], generation_prompt=True)
        full = _render_ids(tokenizer, row["prompt"] + row["chosen"])
        completion = full[len(prompt_ids):]
        position = key_position(tokenizer, row, TINY_FACTS)
        # oracle: the answer template's word index of {key}, with the subject's words in place
        answer = next(f["answer"] for f in TINY_FACTS["families"] if f["name"] == row["family"])
        words = answer.replace("{subject}", row["subject"]).split()
        assert position == words.index("{key}")
        expected = row["wrong_key"] if row["noisy"] else row["key"]
        assert completion[position] == tokenizer.convert_tokens_to_ids(expected)
    row = next(r for r in rows if r["subject"] == "3 + 0")
    assert key_position(tokenizer, row, TINY_FACTS) == 4  # "3 + 0 is [3] ."


def test_key_weight_share_and_pref_acc_by_hand():
    weights = torch.tensor([[1.0, 2.0, 1.0, 0.0], [0.5, 0.5, 0.5, 0.5]])
    assert torch.allclose(key_weight_share(weights, [1, 3]), torch.tensor([0.5, 0.25]))
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        key_weight_share(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), [0, 0])
    assert pref_acc(torch.tensor([1.0, -1.0, 0.5, 2.0]), torch.tensor([0.0, 0.0, 0.5, 1.0])) == 0.5


class _ScriptedModel(torch.nn.Module):
    """A stand-in whose ``generate`` appends a fixed continuation per row (the prompt width is respected)."""

    def __init__(self, continuations):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.continuations, self.served = continuations, 0

    def generate(self, input_ids, attention_mask, max_new_tokens, **_):
        assert (attention_mask[:, -1] == 1).all()  # left padded
        new = [c[:max_new_tokens] for c in self.continuations[self.served:self.served + input_ids.shape[0]]]
        self.served += input_ids.shape[0]
        width = max(len(c) for c in new)
        return torch.cat([input_ids, torch.tensor([c + [0] * (width - len(c)) for c in new])], dim=1)


def test_generated_keys_and_lengths_by_hand(tokenizer):
    rows = [r for r in _tiny_rows() if r["family"] == "capitals"][:3]
    end = tokenizer.eos_token_id

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    answer = "the capital of {subject} is {key} ."
    answers = [fill(answer, rows[0]["subject"], rows[0]["key"]) + " i hope this helps you .",
               fill(answer, rows[1]["subject"], rows[1]["wrong_key"]),
               "this is easy to remember . i hope this helps you . many people"]
    # row 2 runs past max_new_tokens without EOS and is cut there
    model = _ScriptedModel([ids(answers[0]) + [end], ids(answers[1]) + [end], ids(answers[2] + " it is")])
    generations = greedy_generations(model, tokenizer, rows, max_new_tokens=len(ids(answers[2])), batch_size=2)
    assert generations == [ids(a) for a in answers]
    assert tokenizer.unk_token_id not in sum(generations, [])
    keys = generated_keys(tokenizer, rows, generations, TINY_FACTS)
    assert keys == [rows[0]["key"], rows[1]["wrong_key"], None]


def _manual_greedy(model, ids, eos, max_new_tokens):
    out = []
    for _ in range(max_new_tokens):
        with torch.no_grad():
            token = model(torch.tensor([ids + out])).logits[0, -1].argmax().item()
        if token == eos:
            break
        out.append(token)
    return out


def test_metrics_match_unbatched_oracles(tmp_path, single_thread):
    # a small model on the tiny facts learns the answer format in ~100 steps, so key_acc is not trivially 0
    path = keyfact_base_model(cache_dir=tmp_path, size="small", facts_path=TINY_FACTS, progress=False)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    data = build_keyfact(facts_path=TINY_FACTS, n_train=12, n_eval=12)
    rows, facts = list(data["train"]) + list(data["eval"]), TINY_FACTS
    margins = key_margins(model, tokenizer, rows, facts, batch_size=5)
    lengths, correct, formatted = [], 0, 0
    for row, margin in zip(rows, margins):
        # oracle margin: one unpadded forward over prompt + chosen completion, read at the key slot
        prompt_ids = _render_ids(tokenizer, row["prompt"], generation_prompt=True)
        full = _render_ids(tokenizer, row["prompt"] + row["chosen"])
        slot = len(prompt_ids) + key_position(tokenizer, row, facts)
        with torch.no_grad():
            logps = torch.log_softmax(model(torch.tensor([full])).logits[0, slot - 1].double(), dim=-1)
        family = next(f for f in facts["families"] if f["name"] == row["family"])
        facts_row = next(r for r in family["rows"] + family.get("eval_rows", []) if r["subject"] == row["subject"])
        token = tokenizer.convert_tokens_to_ids
        expected = logps[token(facts_row["key"])] - max(logps[token(d)] for d in facts_row["distractors"])
        assert margin.item() == pytest.approx(expected.item(), abs=1e-4)
        generated = _manual_greedy(model, prompt_ids, tokenizer.eos_token_id, 14)
        lengths.append(len(generated))
        expected_words = fill(family["answer"], row["subject"], row["key"]).split()
        words = tokenizer.decode(generated).split()
        slot_word = len(fill(family["answer"].split("{key}")[0], row["subject"]).split())
        correct += words[:slot_word + 1] == expected_words[:slot_word + 1]
        formatted += words[:slot_word] == expected_words[:slot_word] and len(words) > slot_word
    metrics = evaluate_keyfact(model, tokenizer, rows, facts, max_new_tokens=14, batch_size=5)
    assert 0 < correct < len(rows)
    assert metrics["gen_len"] == pytest.approx(sum(lengths) / len(rows))
    assert metrics["key_acc"] == pytest.approx(correct / len(rows))
    assert metrics["key_format_rate"] == pytest.approx(formatted / len(rows))
    assert metrics["key_margin"] == pytest.approx(margins.mean().item(), abs=1e-6)
    assert metrics["gen_truncated_rate"] == pytest.approx(sum(n == 14 for n in lengths) / len(rows))


def test_one_thread_restores_the_thread_count():
    before = torch.get_num_threads()
    with one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_run_splits_follow_the_config_and_share_the_eval_split_across_seeds(tmp_path, tokenizer):
    from tokenweight.config import TokenweightConfig
    from tokenweight.keyfact.task import KEYFACT_DEFAULTS, keyfact_splits
    from tokenweight.pipeline import load_pairs, load_run_splits

    def config(**settings):
        return TokenweightConfig(**{**KEYFACT_DEFAULTS, "output_dir": str(tmp_path), "keyfact_train_size": 40,
                                    "keyfact_eval_size": 24, "keyfact_validation_size": 12, **settings})

    first, second = load_run_splits(config(keyfact_seed=1)), load_run_splits(config(keyfact_seed=2))
    assert first.eval.to_list() == second.eval.to_list() and first.train.to_list() != second.train.to_list()
    assert len(first.train) == 40 and len(first.eval) == 24
    assert load_run_splits(config(keyfact_eval_seed=3)).eval.to_list() != first.eval.to_list()
    shortcut = keyfact_splits(config(keyfact_shortcut=0.75, keyfact_label_noise=0.25))
    assert sum(r["shortcut"] == "chosen" for r in shortcut["train"]) == 30
    assert sum(r["noisy"] for r in shortcut["train"]) == 10
    tokenized, raw = load_pairs(config(), tokenizer, "validation", limit=5)
    assert raw.to_list() == keyfact_splits(config())["validation"].to_list()[:5] and len(tokenized) == 5
    assert KEYFACT_DEFAULTS["learning_rate"] == 5e-4 and KEYFACT_DEFAULTS["num_train_epochs"] == 2
