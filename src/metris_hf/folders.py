"""What a folder given on a command line is, named before anything loads: transformers reads a missing local folder
as a Hub id ("Repo id must be in the form …") and one without `config.json` as an unknown model, and Accelerate a
model folder given as a training state as a wall of missing keys. Also `run_command`, every command's error exit."""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODEL = "a model checkpoint (config.json + weights, written by save_pretrained)"
TRAINING_STATE = (
    "an Accelerate training state (written by scripts/train.py --checkpointing_steps: step_<N>/ or epoch_<N>/)"
)


def folder_kind(path: str | os.PathLike) -> str:
    """'missing', 'model', 'training_state' or 'other' (a folder that is neither)."""
    folder = Path(path)
    if not folder.is_dir():
        return "missing"
    if (folder / "config.json").is_file():
        return "model"
    state_files = ((folder / "progress.json").is_file(), (folder / "optimizer.bin").is_file())
    return "training_state" if any(state_files) or any(folder.glob("random_states_*.pkl")) else "other"


def _looks_local(name: str) -> bool:
    """A Hub id is `name` or `owner/name`; anything with more slashes, a leading `.`, `/` or `~` is a path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or os.path.exists(name)


def check_model_source(name_or_path: str, what: str = "--model") -> None:
    """Raises FileNotFoundError / ValueError when `name_or_path` is a local path but not a model checkpoint folder;
    a Hub id (`owner/name`) passes unchecked."""
    if not _looks_local(name_or_path):
        return
    kind = folder_kind(os.path.expanduser(name_or_path))
    if kind == "missing":
        if Path(name_or_path).is_file():
            raise ValueError(f"{what} {name_or_path} is a file; expected {MODEL} folder")
        raise FileNotFoundError(f"{what} {name_or_path}: no such folder (expected {MODEL})")
    if kind == "training_state":
        raise ValueError(
            f"{what} {name_or_path} is {TRAINING_STATE}, not {MODEL}; evaluate the model folder the run saved "
            "(the output_dir itself, or best/), or resume training from this folder with --resume_from_checkpoint"
        )
    if kind == "other":
        raise ValueError(f"{what} {name_or_path} has no config.json: it is not {MODEL}")


def check_training_state(path: str, what: str = "--resume_from_checkpoint") -> None:
    """Raises FileNotFoundError / ValueError unless `path` is an Accelerate training state folder."""
    kind = folder_kind(path)
    if kind == "missing":
        raise FileNotFoundError(f"{what} {path}: no such folder (expected {TRAINING_STATE})")
    if kind == "model":
        raise ValueError(
            f"{what} {path} is {MODEL}, not {TRAINING_STATE}; to start from its weights pass it as "
            "--model_name_or_path, to resume a run pass one of its step_<N>/ folders (or 'latest')"
        )
    if kind == "other":
        raise ValueError(f"{what} {path} is not {TRAINING_STATE} (no progress.json, optimizer.bin or random states)")


def bad_input_errors() -> tuple[type[BaseException], ...]:
    """The error classes docs/errors.md promises for bad input: bad values and malformed files (`ValueError`), a
    config field of the wrong type or value (huggingface_hub's strict-dataclass errors, which `MetrisConfig`'s
    own classes derive from), missing or unreadable files (`OSError`, which holds `FileNotFoundError`) and unsafe
    pickles (`UnpicklingError`, which holds `UnsafePickleError`)."""
    from huggingface_hub.errors import StrictDataclassClassValidationError, StrictDataclassFieldValidationError

    return (
        ValueError,
        OSError,
        pickle.UnpicklingError,
        StrictDataclassFieldValidationError,
        StrictDataclassClassValidationError,
    )


def run_command(main: Callable[[list[str] | None], Any], prog: str, argv: list[str] | None = None) -> int:
    """Runs a command line's `main`; bad input (`bad_input_errors`) ends in one line on stderr and exit status 2,
    never a traceback. Anything else (a bug) still raises with its traceback; `SystemExit` passes through."""
    try:
        result = main(argv)
    except bad_input_errors() as error:
        lines = [line.strip() for line in str(error).strip().splitlines()] or [type(error).__name__]
        # a first line ending in ':' announces the cause on the next (the config's strict-validation errors)
        shown = 2 if len(lines) > 1 and lines[0].endswith(":") else 1
        print(f"{prog}: error: {' '.join(lines[:shown])}{' …' if len(lines) > shown else ''}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) and not isinstance(result, bool) else 0
