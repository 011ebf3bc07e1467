"""transformers' own common test suites (`ModelTesterMixin` and the rest), run on METRIS.

transformers checks every in-tree model with the mixins of its `tests/` folder (`ModelTesterMixin`,
`ConfigTester`, `ImageProcessingTestMixin`, `ProcessorTesterMixin`). They are not part of the installed wheel,
but its source release on PyPI ships them, so `load_common_tests()` fetches that release of the *installed*
version once (`pip download`, only the `tests/` tree is kept) into a cache folder and imports it as the package
`transformers_tests`: our own `tests/` folder has no `__init__.py` and is not a package, but with the repository
root on `sys.path` (`python -m pytest`) it would be found as a namespace package named `tests`, so the alias
keeps the two apart. Nothing of transformers' test code is copied into this repository.

The cache is `$METRIS_TRANSFORMERS_SRC` if set (a folder holding `tests/`: an extracted release, or a clone of the
transformers repository, which also has the helper folders the release leaves out), else
`~/.cache/metris-hf/transformers-src/<version>/` (under `$XDG_CACHE_HOME` when that is set). Without network
access the download fails, and the test modules that need it are skipped with the reason.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
import unittest
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

ALIAS = "transformers_tests"
SOURCE_ENV = "METRIS_TRANSFORMERS_SRC"
_MARKER = "test_modeling_common.py"  # present once the tests/ tree is complete
_DOWNLOAD_TIMEOUT_S = 600


class TransformersTestsUnavailable(RuntimeError):
    """The source release of transformers (and so its common tests) could not be obtained."""


def transformers_source_dir() -> Path:
    """Where the `tests/` tree of the installed transformers version is (or will be) kept."""
    override = os.environ.get(SOURCE_ENV)
    if override:
        return Path(override).expanduser()
    import transformers

    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache_home / "metris-hf" / "transformers-src" / transformers.__version__


def ensure_transformers_source(directory: Path | None = None) -> Path:
    """The folder holding transformers' `tests/`, downloading the source release into it on first use.

    A file lock makes parallel workers (pytest-xdist) download once; the tree is staged next to its final place
    and moved in whole, so an interrupted download never leaves a half tree behind.
    """
    import transformers
    from filelock import FileLock

    directory = directory or transformers_source_dir()
    if (directory / "tests" / _MARKER).is_file():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory) + ".lock"):
        if (directory / "tests" / _MARKER).is_file():
            return directory
        with tempfile.TemporaryDirectory(dir=directory.parent, prefix=".download-") as scratch:
            archive = _download_sdist(transformers.__version__, Path(scratch))
            staged = Path(scratch) / "tests"
            _extract_tests(archive, staged)
            if not (staged / _MARKER).is_file():
                raise TransformersTestsUnavailable(f"{archive.name} has no tests/{_MARKER}")
            # `direct_transformers_import(tests/)` in test_configuration_common.py reads tests/__init__.py
            (staged / "__init__.py").touch()
            directory.mkdir(exist_ok=True)
            shutil.rmtree(directory / "tests", ignore_errors=True)
            os.replace(staged, directory / "tests")
    return directory


def _download_sdist(version: str, destination: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", f"transformers=={version}", "-d", str(destination)]
    command += ["--no-deps", "--no-binary", ":all:", "--disable-pip-version-check", "--no-input", "--quiet"]
    command += ["--retries", "1", "--timeout", "20"]  # offline, fail in seconds rather than minutes
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=_DOWNLOAD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise TransformersTestsUnavailable(f"`pip download transformers=={version}` did not run: {error}") from error
    archives = sorted(destination.glob("transformers-*.tar.gz"))
    if result.returncode != 0 or not archives:
        last_lines = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise TransformersTestsUnavailable(
            f"could not download the source release of transformers {version} "
            f"(`pip download` exit {result.returncode}: {last_lines or 'no output'})"
        )
    return archives[0]


def _extract_tests(archive: Path, target: Path) -> None:
    """Extracts `<top>/tests/**` (regular files only, no path escapes) into `target`."""
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            parts = PurePosixPath(member.name).parts
            if len(parts) < 3 or parts[1] != "tests" or not member.isfile():
                continue
            relative = PurePosixPath(*parts[2:])
            if relative.is_absolute() or ".." in relative.parts:
                continue
            destination = target.joinpath(*relative.parts)
            destination.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            if source is not None:
                with source, open(destination, "wb") as out:
                    shutil.copyfileobj(source, out)


# ----------------------------------------------------------------------------------------------------------------
# Stand-ins for the helper modules the source release leaves out
# ----------------------------------------------------------------------------------------------------------------


class _NotShipped:
    """Stands for an object of a helper module the release does not ship: a test that reads it is skipped."""

    def __init__(self, what: str):
        self.what = what

    def _skip(self, *args: Any, **kwargs: Any) -> Any:
        raise unittest.SkipTest(f"{self.what} is not in transformers' source release")

    __deepcopy__ = __iter__ = __getitem__ = __len__ = items = keys = _skip


def _fixture_image(url: str) -> str:
    """A local stand-in for a Hub fixture picture: a smooth 640×480 scene saved in the same format.

    The common tests read the COCO "two cats" photo and similar from the Hub, which is out of reach here (and in
    CI); transformers' own CI pre-fetches them through the same `url_to_local_path` hook. The stand-in is smooth
    (gradients, discs, a stripe) like a photo, so tolerances meant for photos hold; it is made once per cache.
    """
    import PIL.Image

    name = PurePosixPath(url.split("?")[0]).name
    path = transformers_source_dir() / "fixtures" / name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        y, x = np.mgrid[0:480, 0:640].astype(np.float32)
        image = np.stack([x / 639 * 200 + 30, y / 479 * 180 + 40, (x + y) / 1118 * 120 + 60], axis=-1)
        for cx, cy, r, colour in ((200, 260, 90, (230, 150, 60)), (450, 220, 110, (90, 90, 200))):
            inside = (x - cx) ** 2 + (y - cy) ** 2 < r**2
            image[inside] = colour
        image[40:70] = (240, 240, 230)
        staged = path.with_name(f".{os.getpid()}-{name}")
        PIL.Image.fromarray(image.round().clip(0, 255).astype(np.uint8)).save(staged)
        os.replace(staged, path)
    return str(path)


def _url_to_local_path(url: str) -> str:
    """Hub fixture images → local stand-ins; anything else (videos, audio) is returned as given."""
    if url.lower().split("?")[0].endswith((".jpg", ".jpeg", ".png")):
        return _fixture_image(url)
    return url


def _install_stand_ins(tests_dir: Path) -> None:
    """Registers modules for the imports of the common tests that the release cannot satisfy.

    A clone of the repository has the real ones, and they are then left alone.
    """

    def module(name: str, is_package: bool = False, **attributes: Any) -> None:
        if name in sys.modules:
            return
        stand_in = types.ModuleType(name)
        if is_package:
            stand_in.__path__ = []
        stand_in.__dict__.update(attributes)
        sys.modules[name] = stand_in

    if not (tests_dir / "utils" / "test_configuration_utils.py").is_file():
        # only read by ConfigTester.check_config_arguments_init for configs without sub-configs
        module(f"{ALIAS}.utils", is_package=True)
        module(
            f"{ALIAS}.utils.test_configuration_utils",
            config_common_kwargs=_NotShipped("tests/utils/test_configuration_utils.py"),
        )
    if not (tests_dir / "exporters" / "test_export.py").is_file():
        # the export tests (ONNX, dynamo, ExecuTorch...) are left out with it
        module(f"{ALIAS}.exporters", is_package=True)
        module(f"{ALIAS}.exporters.test_export", ExportTesterMixin=type("ExportTesterMixin", (), {}))
    if not (tests_dir / "generation" / "test_utils.py").is_file():
        # only used in issubclass checks, for models that can generate
        module(f"{ALIAS}.generation", is_package=True)
        module(f"{ALIAS}.generation.test_utils", GenerationTesterMixin=type("GenerationTesterMixin", (), {}))
    if not (tests_dir.parent / "utils" / "fetch_hub_objects_for_ci.py").is_file():
        module("fetch_hub_objects_for_ci", url_to_local_path=_url_to_local_path)


def import_transformers_tests() -> types.ModuleType:
    """transformers' `tests/` as the package `transformers_tests` (downloaded on first use).

    Raises `TransformersTestsUnavailable` when the source release cannot be had.
    """
    if ALIAS in sys.modules:
        return sys.modules[ALIAS]
    tests_dir = ensure_transformers_source() / "tests"
    init = tests_dir / "__init__.py"
    if not init.is_file():
        init.touch()
    _install_stand_ins(tests_dir)
    spec = importlib.util.spec_from_file_location(ALIAS, init, submodule_search_locations=[str(tests_dir)])
    if spec is None or spec.loader is None:
        raise TransformersTestsUnavailable(f"cannot import {tests_dir} as a package")
    package = importlib.util.module_from_spec(spec)
    sys.modules[ALIAS] = package
    try:
        spec.loader.exec_module(package)
    except BaseException:
        del sys.modules[ALIAS]
        raise
    return package


def load_common_tests(*modules: str) -> list[types.ModuleType]:
    """Imports `transformers_tests.<module>` for each name, or skips the calling test module with the reason.

    Call it at module level in a test module: without the source release (no network on first use), pytest
    reports that module as skipped and runs the rest of the suite.
    """
    import pytest

    try:
        import_transformers_tests()
        return [importlib.import_module(f"{ALIAS}.{name}") for name in modules]
    except (TransformersTestsUnavailable, ImportError, OSError) as error:  # OSError: an unwritable cache folder
        pytest.skip(f"transformers' common tests are unavailable: {error}", allow_module_level=True)
