"""Shared fixtures: everything is built in code or on local disk, nothing is downloaded."""

import os

import pytest

from transformers_common import build_tiny_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
