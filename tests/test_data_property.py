"""Property test of data validation: any preference rows — empty, huge, unicode and control characters, wrong
types, nested or missing messages, unknown roles, mixed formats — are either tokenized, and then their collated
ids decode back to the row's prompt and completions, or refused with the documented one-line ``UserError`` naming
the row (or, for the whole dataset, the column or setting). Never another exception."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenweight.data import KNOWN_ROLES, PreferenceCollator, tokenize_preference_dataset, with_explicit_prompt
from tokenweight.errors import UserError

EOS = "<eos>"
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
#: The documented messages: a row-level error names the row; a dataset-level one names the column or setting.
ERROR = re.compile(r"^train: (row \d+[:,]|missing column '|only one of the columns|every row was dropped|"
                   r"the dataset has no rows)")


def byte_level_tokenizer():
    """One token per UTF-8 byte (no merges), so every string round-trips; ``<pad>`` and ``<eos>`` special."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": 0, EOS: 1, **{ch: i + 2 for i, ch in enumerate(sorted(alphabet))}}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token=EOS,
                                        clean_up_tokenization_spaces=False)
    tokenizer.chat_template = TEMPLATE
    return tokenizer


TOKENIZER = byte_level_tokenizer()

texts = st.one_of(st.text(max_size=12), st.text(alphabet=st.characters(codec="utf-8"), max_size=30),
                  st.sampled_from(["", " ", "\n", "\x00", "\r\n\t", EOS, "<pad>", "é", "🙂", "<|end|>"]),
                  st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=4), st.integers(200, 800)))
wrong = st.one_of(st.none(), st.integers(), st.floats(allow_nan=True), st.booleans(),
                  st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.lists(st.integers(), max_size=2))
roles = st.one_of(st.sampled_from(KNOWN_ROLES), st.sampled_from(["robot", "", "USER", "user "]), st.integers())
messages_good = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]), "content": texts}),
                         min_size=1, max_size=2)
message = st.one_of(st.fixed_dictionaries({"role": roles, "content": st.one_of(texts, wrong)}),
                    st.fixed_dictionaries({"content": texts}), st.fixed_dictionaries({"role": roles}), texts,
                    st.lists(st.fixed_dictionaries({"role": roles, "content": texts}), max_size=2))
messages_any = st.lists(message, max_size=3)
assistant = st.lists(st.fixed_dictionaries({"role": st.just("assistant"), "content": texts}), min_size=1,
                     max_size=2)


@st.composite
def preference_row(draw) -> dict:
    """A row of one of the shapes users meet (mostly valid ones) or a broken variant."""
    shape = draw(st.sampled_from(["standard", "conversational", "implicit", "string_prompt", "broken"]))
    if shape == "standard":
        row = {"prompt": draw(texts), "chosen": draw(texts), "rejected": draw(texts)}
    elif shape == "conversational":
        row = {"prompt": draw(messages_good), "chosen": draw(assistant), "rejected": draw(assistant)}
    elif shape in ("implicit", "string_prompt"):
        turn = draw(messages_good)
        row = {"chosen": turn + draw(assistant), "rejected": turn + draw(assistant)}
        if shape == "string_prompt":  # ultrafeedback_binarized's shape
            row["prompt"] = turn[-1]["content"]
    else:
        values = st.one_of(texts, wrong, messages_any, assistant)
        row = {column: draw(values) for column in ("prompt", "chosen", "rejected")}
    for column in ("prompt", "chosen", "rejected"):
        if draw(st.integers(0, 19)) == 0:
            row.pop(column, None)
    return row


def expected_texts(row: dict) -> tuple[str, str, str]:
    """(prompt, prompt + chosen, prompt + rejected) as the token ids must decode: the chat template's rendering
    for conversational rows, the strings plus EOS for standard rows."""
    row = with_explicit_prompt(row)
    if isinstance(row["chosen"], list):
        render = TOKENIZER.apply_chat_template
        return (render(row["prompt"], add_generation_prompt=True, tokenize=False),
                render(row["prompt"] + row["chosen"], tokenize=False),
                render(row["prompt"] + row["rejected"], tokenize=False))
    ends = [row[c] if row[c].endswith(EOS) else row[c] + EOS for c in ("chosen", "rejected")]
    return row["prompt"], row["prompt"] + ends[0], row["prompt"] + ends[1]


class Rows(list):
    """Rows as a JSON-lines file gives them (``datasets`` keeps mixed types in one column as JSON values)."""

    def __init__(self, rows):
        super().__init__(rows)
        self.column_names = sorted({key for row in rows for key in row})


def decode(ids) -> str:
    return TOKENIZER.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


@settings(max_examples=2000, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rows=st.lists(preference_row(), min_size=1, max_size=3), max_length=st.sampled_from([None, None, 8, 64]))
def test_rows_are_tokenized_and_decode_back_or_refused_naming_the_row(rows, max_length):
    try:
        dataset, stats = tokenize_preference_dataset(Rows(rows), TOKENIZER, max_length=max_length)
    except UserError as error:
        message = str(error)
        assert "\n" not in message and ERROR.match(message), message
        return
    assert stats.rows == len(rows)
    tokenized = list(dataset)
    batch = PreferenceCollator(pad_token_id=TOKENIZER.pad_token_id)(tokenized)
    n = len(tokenized)
    for i, tokens in enumerate(tokenized):
        prompt, full_chosen, full_rejected = expected_texts(rows[tokens["row_index"]])
        assert TOKENIZER(prompt, add_special_tokens=False)["input_ids"][:len(tokens["prompt_ids"])] == \
            tokens["prompt_ids"] or max_length is not None
        for k, (side, full) in enumerate((("chosen", full_chosen), ("rejected", full_rejected))):
            length = int(batch["attention_mask"][i + k * n].sum())
            ids = batch["input_ids"][i + k * n, :length]
            completion = batch["completion_mask"][i + k * n, :length].bool()
            assert ids.tolist() == tokens["prompt_ids"] + tokens[f"{side}_ids"]
            assert ids[completion].tolist() == tokens[f"{side}_ids"]
            if max_length is None:
                assert decode(ids.tolist()) == full
            else:  # a cut may split a multi-byte character: compare ids with the full text's
                assert length <= max_length
                assert ids.tolist() == TOKENIZER(full, add_special_tokens=False)["input_ids"][:length]
