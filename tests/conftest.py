"""Shared fixtures: everything is built in code or on local disk, nothing is downloaded."""

import os

# Under pytest-xdist every worker is a process of its own: two workers of two torch threads each on a 2-core
# machine spin against each other (measured: 10× slower). One thread per worker, inherited by the scripts the
# tests start; set before torch is imported.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
