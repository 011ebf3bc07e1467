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


@pytest.fixture(scope="module")
def datasets_cache(tmp_path_factory):
    """A module's datasets (synthetic sets, REFER builds) go to a temporary cache, not the user's; the scripts
    the module starts inherit it through the environment."""
    saved = os.environ.get("HF_DATASETS_CACHE")
    os.environ["HF_DATASETS_CACHE"] = str(tmp_path_factory.getbasetemp() / "hf_datasets")
    yield
    if saved is None:
        del os.environ["HF_DATASETS_CACHE"]
    else:
        os.environ["HF_DATASETS_CACHE"] = saved
