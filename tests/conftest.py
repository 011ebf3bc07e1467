"""Shared fixtures: everything is built in code or on local disk, nothing is downloaded."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_WORDS = (
    "the a an of on in to and is left right top bottom middle big small large red green blue yellow "
    "purple orange white black circle square triangle star shape man woman dog cat shirt near next "
    "above below behind front biggest smallest"
).split()


def build_tiny_tokenizer():
    """A BERT WordPiece tokenizer over a few dozen words, built offline."""
    from transformers import BertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = ["##s", "##es", "##er", "##est", "##ing", ",", ".", "'", "-"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["##" + chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(specials + TINY_WORDS + pieces + letters))}
    return BertTokenizer(vocab=vocab)


@pytest.fixture
def tiny_tokenizer():
    return build_tiny_tokenizer()
