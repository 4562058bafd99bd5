"""Label masking against golden token/label pairs: only assistant answers (and their </s>) are supervised."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from rsvlm.data.template import IGNORE_INDEX, VICUNA_V1, ChatTemplate, conversation_segments, tokenize_conversation

WORDS = ["<unk>", "<s>", "</s>", "<pad>", "<image>", "SYS", "USER:", "ASSISTANT:", "Is", "it?", "yes", "no", "More?"]
IDS = {word: index for index, word in enumerate(WORDS)}
TEMPLATE = ChatTemplate(name="test", system="SYS", roles=("USER", "ASSISTANT"), sep=" ")
_ = IGNORE_INDEX


@pytest.fixture(scope="module")
def tokenizer():
    core = Tokenizer(models.WordLevel(vocab=IDS, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", extra_special_tokens={"image_token": "<image>"})


def ids(*words):
    return [IDS[w] for w in words]


def test_segments_follow_vicuna_v1():
    turns = [{"from": "human", "value": "<image>\nIs it?"}, {"from": "gpt", "value": "yes"}]
    segments = conversation_segments(turns, VICUNA_V1, "</s>")
    assert segments == [(f"{VICUNA_V1.system} USER: <image>\nIs it? ASSISTANT:", False), (" yes</s>", True)]


def test_two_turns_golden(tokenizer):
    turns = [{"from": "human", "value": "<image>\nIs it?"}, {"from": "gpt", "value": "yes"},
             {"from": "human", "value": "More?"}, {"from": "gpt", "value": "no"}]
    sample = tokenize_conversation(turns, tokenizer, TEMPLATE, image_token_count=3, max_length=64)
    assert sample.input_ids == ids("<s>", "SYS", "USER:", "<image>", "<image>", "<image>", "Is", "it?",
                                   "ASSISTANT:", "yes", "</s>", "USER:", "More?", "ASSISTANT:", "no", "</s>")
    assert sample.labels == [_] * 9 + ids("yes", "</s>") + [_] * 3 + ids("no", "</s>")
    assert not sample.fully_masked and not sample.truncated


def test_image_placeholder_moves_to_the_front(tokenizer):
    turns = [{"from": "human", "value": "Is it? <image>"}, {"from": "gpt", "value": "no"}]
    sample = tokenize_conversation(turns, tokenizer, TEMPLATE, image_token_count=2, max_length=64)
    assert sample.input_ids[:6] == ids("<s>", "SYS", "USER:", "<image>", "<image>", "Is")


def test_truncation_that_cuts_every_answer_is_reported(tokenizer):
    turns = [{"from": "human", "value": "<image>\nIs it?"}, {"from": "gpt", "value": "yes"}]
    sample = tokenize_conversation(turns, tokenizer, TEMPLATE, image_token_count=3, max_length=9)
    assert sample.truncated and sample.fully_masked
    assert len(sample.input_ids) == len(sample.labels) == 9


def test_truncation_keeping_part_of_an_answer_still_supervises(tokenizer):
    turns = [{"from": "human", "value": "<image>\nIs it?"}, {"from": "gpt", "value": "yes"}]
    sample = tokenize_conversation(turns, tokenizer, TEMPLATE, image_token_count=3, max_length=10)
    assert sample.truncated and not sample.fully_masked
    assert sample.labels[-1] == IDS["yes"]


def test_cutting_through_image_tokens_is_an_error(tokenizer):
    turns = [{"from": "human", "value": "<image>\nIs it?"}, {"from": "gpt", "value": "yes"}]
    with pytest.raises(ValueError, match="image tokens"):
        tokenize_conversation(turns, tokenizer, TEMPLATE, image_token_count=3, max_length=5)


def test_generation_prompt_ends_with_the_assistant_tag(tokenizer):
    turns = [{"from": "human", "value": "<image>\nIs it?"}]
    sample = tokenize_conversation(turns, tokenizer, TEMPLATE, image_token_count=1, max_length=64,
                                   for_generation=True)
    assert sample.input_ids == ids("<s>", "SYS", "USER:", "<image>", "Is", "it?", "ASSISTANT:")
    assert sample.fully_masked  # nothing to supervise in a prompt
