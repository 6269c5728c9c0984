"""Judge inputs: spliced answer spans are exactly the training completion ids (spec §8.4), the rendered text is
the filled chat-templated judge prompt, and the length cap cuts both orders alike."""

import pytest
from attention_fixtures import CONVERSATIONAL_ROWS, STANDARD_ROWS, make_bpe_tokenizer, tokenized

from tokenweight.errors import UserError
from tokenweight.weights.attention.judge import (build_judge_pair, check_template, default_template,
                                                 judge_pair_for_row, question_text, split_completion,
                                                 template_pieces)


@pytest.fixture(scope="module")
def tokenizer():
    return make_bpe_tokenizer()


def _answer_text(row, column):
    value = row[column]
    return value if isinstance(value, str) else value[-1]["content"]


def _filled_judge_text(tokenizer, question, answer_a, answer_b):
    """Independent oracle: fill the template as text and render it with the chat template."""
    text = (default_template().replace("{question}", question).replace("{answer_a}", answer_a)
            .replace("{answer_b}", answer_b))
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)


@pytest.mark.parametrize("rows", [STANDARD_ROWS, CONVERSATIONAL_ROWS], ids=["standard", "conversational"])
def test_spans_are_training_completion_ids(tokenizer, rows):
    pieces = template_pieces(tokenizer, default_template())
    for index, row in enumerate(tokenized(rows, tokenizer)):
        pair = judge_pair_for_row(row, index, tokenizer, pieces, max_length=None)
        for k, column in enumerate(("chosen", "rejected")):
            completion = row[f"{column}_ids"]
            n = pair.answer_lengths[k]
            assert pair.trailing[k] == len(completion) - n
            assert tokenizer.decode(completion[:n]) == _answer_text(row, column)  # the whole answer, no more
            for order in (0, 1):
                start, end = pair.spans[order][k]
                assert pair.inputs[order][start:end] == completion[:n]  # 1:1 with training tokens
        question = question_text(row["prompt"])
        chosen, rejected = _answer_text(row, "chosen"), _answer_text(row, "rejected")
        assert tokenizer.decode(pair.inputs[0]) == _filled_judge_text(tokenizer, question, chosen, rejected)
        assert tokenizer.decode(pair.inputs[1]) == _filled_judge_text(tokenizer, question, rejected, chosen)
        assert tokenizer.decode(pair.inputs[0]).endswith("your choice :\n<|im_end|>\n<|im_start|>assistant\n")


def test_answers_keep_leading_spaces_and_split_words(tokenizer):
    row = tokenized(STANDARD_ROWS[:1], tokenizer)[0]
    answer, trailing = split_completion(row["chosen_ids"], tokenizer)
    pieces = [tokenizer.decode([i]) for i in answer]
    assert pieces[0].startswith(" ") and trailing == 1
    word_tokens = next(k for k in range(1, len(pieces)) if "".join(pieces[:k]) == " paris")
    assert word_tokens > 1  # the first word spans several tokens


def test_split_completion_trailing_rules(tokenizer):
    eos, end = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    space = tokenizer(" ", add_special_tokens=False)["input_ids"]
    word = tokenizer(" paris", add_special_tokens=False)["input_ids"]
    assert split_completion(word + [end] + newline, tokenizer) == (word, 1 + len(newline))
    assert split_completion(word + [end, eos], tokenizer) == (word, 2)
    assert split_completion(word + space + [eos], tokenizer) == (word + space, 1)  # space before EOS is answer
    assert split_completion(word + newline, tokenizer) == (word + newline, 0)  # no special: nothing trails


def test_question_text_of_conversations():
    assert question_text("plain prompt") == "plain prompt"
    assert question_text(CONVERSATIONAL_ROWS[0]["prompt"]) == "what is the capital of italy ?"
    assert question_text(CONVERSATIONAL_ROWS[1]["prompt"]) == (
        "System: be concise .\n\nUser: what is two plus two ?\n\nAssistant: four .\n\nUser: and three plus three ?")


def test_cap_cuts_question_left_and_answers_alike():
    pieces = [[1, 2], [3], [4], [5, 6]]
    question, chosen, rejected = list(range(100, 130)), list(range(200, 220)), list(range(300, 305))
    pair = build_judge_pair(pieces, question, chosen, rejected, (1, 2), max_length=6 + 24, index=0)
    # budget 24 for question (30), chosen (20), rejected (5): common cap c = 9 → 9 + 9 + 5 = 23 ≤ 24 (c = 10: 25)
    assert pair.judged_lengths == (9, 5) and pair.answer_lengths == (20, 5)
    assert all(len(ids) == 29 for ids in pair.inputs)
    assert pair.inputs[0][2:11] == question[-9:]  # the question keeps its end
    for order in (0, 1):
        (cs, ce), (rs, re) = pair.spans[order]
        assert pair.inputs[order][cs:ce] == chosen[:9] and pair.inputs[order][rs:re] == rejected
    assert pair.inputs[0][:2] == [1, 2] and pair.inputs[1][-2:] == [5, 6]


def test_errors_name_the_row_and_the_template():
    with pytest.raises(ValueError, match="row 7: the rejected completion has no answer tokens"):
        build_judge_pair([[1], [2], [3], [4]], [9], [10], [], (0, 1), None, 7)
    with pytest.raises(ValueError, match="exactly once"):
        check_template("{question} {answer_a}")
    with pytest.raises(UserError, match="cannot hold the judge template .*raise --attention_max_length"):
        build_judge_pair([[1, 2], [3], [4], [5, 6]], [9], [10], [11], (0, 0), 7, 0)
