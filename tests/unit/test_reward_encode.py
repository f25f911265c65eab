"""What a reward model reads: multi-turn responses as real turns, long encoder prompts keep their latest turns."""

from __future__ import annotations

import pytest

from align.preferences.rankings import split_hh
from align.preferences.reward_model import encode, encode_pair, format_for_reward


@pytest.fixture(scope="module")
def bert_tokenizer():
    """A small WordPiece tokenizer built offline (fast, with offsets), like an encoder's."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    words = [f"w{i}" for i in range(60)] + ["human", "assistant", "start", "end", "answer", "question", ":"]
    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train_from_iterator([" ".join(words)] * 4, vocab_size=200)
    return BertTokenizerFast(tokenizer_object=trainer._tokenizer, cls_token="[CLS]", sep_token="[SEP]",
                             pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]")


def segments(tokenizer, ids: list[int]) -> tuple[str, str]:
    text = tokenizer.decode(ids)
    _, prompt, response, _ = [part.strip() for part in text.replace("[CLS]", "[SEP]").split("[SEP]")]
    return prompt, response


def test_long_prompt_keeps_its_latest_turns_and_the_response_whole(bert_tokenizer):
    prompt = "start " + " ".join(f"w{i}" for i in range(50)) + " end"
    enc = encode_pair(bert_tokenizer, prompt, "answer w1 w2", max_length=20)
    assert len(enc["input_ids"]) == 20 and len(enc["token_type_ids"]) == 20
    kept_prompt, response = segments(bert_tokenizer, enc["input_ids"])
    assert kept_prompt.endswith("w49 end") and "start" not in kept_prompt
    assert response == "answer w1 w2"
    earliest = encode_pair(bert_tokenizer, prompt, "answer w1 w2", max_length=20, keep="earliest")
    assert segments(bert_tokenizer, earliest["input_ids"])[0].startswith("start w0")


def test_long_response_keeps_its_start_and_half_the_room(bert_tokenizer):
    response = "answer " + " ".join(f"w{i}" for i in range(40))
    enc = encode_pair(bert_tokenizer, "question " + " ".join(f"w{i}" for i in range(40)), response, max_length=23)
    kept_prompt, kept_response = segments(bert_tokenizer, enc["input_ids"])
    assert len(kept_prompt.split()) == 10 and len(kept_response.split()) == 10  # (23 - 3) / 2 each
    assert kept_response.startswith("answer w0") and kept_prompt.endswith("w39")


def test_short_pairs_are_unchanged(bert_tokenizer):
    enc = encode_pair(bert_tokenizer, "question w1", "answer w2", max_length=64)
    assert enc["input_ids"] == bert_tokenizer("question w1", "answer w2")["input_ids"]


def test_multi_turn_response_is_read_as_turns_by_both_formats(tiny_model_dir, bert_tokenizer):
    from align.models import load_tokenizer

    prompt, chosen, _ = split_hh("\n\nHuman: w1\n\nAssistant: w2\n\nHuman: w3\n\nAssistant: w4",
                                 "\n\nHuman: w1\n\nAssistant: w5\n\nHuman: w6\n\nAssistant: w7", "x:1")
    tokenizer = load_tokenizer(tiny_model_dir)
    expected = tokenizer.apply_chat_template([
        {"role": "user", "content": "w1"}, {"role": "assistant", "content": "w2"},
        {"role": "user", "content": "w3"}, {"role": "assistant", "content": "w4"}], tokenize=False)
    assert format_for_reward(tokenizer, prompt, chosen) == expected
    assert "Human:" not in expected
    enc = encode(bert_tokenizer, prompt, chosen, "pair", max_length=64)
    assert segments(bert_tokenizer, enc["input_ids"]) == ("w1", "assistant : w2 human : w3 assistant : w4")
