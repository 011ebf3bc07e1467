"""No command prints a traceback for bad input: the converter on broken checkpoints, and `run_command`, the
top-level handler every command line goes through (one line, exit status 2)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import SCRIPTS, load_script
from metris_hf import MetrisForReferringSegmentation, embedded_checkpoint
from metris_hf.folders import run_command
from metris_hf.testing_utils import tiny_metris_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def convert():
    return load_script("convert_authors_checkpoint")


def truncated(path: Path) -> Path:
    torch.save({"model": {"net.cross1.attn.kv.weight": torch.zeros(64, 64)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


CHECKPOINTS = {
    "empty": (lambda path: path.write_bytes(b""), r"the file is empty \(not a PyTorch checkpoint\)"),
    "truncated": (truncated, r"not a readable PyTorch checkpoint \(truncated, or another format\)"),
    "a PNG": (
        lambda path: path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100)),
        r"not a PyTorch checkpoint \(it starts",
    ),
    "a list": (lambda path: torch.save([torch.zeros(2)], path), r"holds no state dict"),
    "NaN tensors": (
        lambda path: torch.save({"model": {"net.a": torch.tensor([1.0, float("nan")])}}, path),
        r"1 tensor\(s\) hold NaN or infinite values \(net.a\): the source checkpoint is corrupt",
    ),
    "an unknown key": (
        lambda path: torch.save({"net.extra_head.weight": torch.zeros(2, 2)}, path),
        r"no METRIS-HF name for the authors' checkpoint key 'net.extra_head.weight'",
    ),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINTS))
def test_the_converter_names_a_broken_checkpoint_in_one_line(convert, tmp_path, capsys, case):
    write, message = CHECKPOINTS[case]
    path = tmp_path / "model_best.pth"
    write(path)
    argv = ["--checkpoint", str(path), "--tokenizer", "unused", "--output_dir", str(tmp_path / "out")]
    assert run_command(convert.main, "convert_authors_checkpoint.py", argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err
    assert err.startswith("convert_authors_checkpoint.py: error: ")
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "out").exists()


def test_the_converter_names_wrong_shapes(convert, tmp_path):
    model = MetrisForReferringSegmentation(tiny_metris_config())
    state = dict(model.state_dict())
    key = next(k for k, v in state.items() if v.ndim == 2)
    state[key] = torch.zeros(3, 5)
    with pytest.raises(ValueError, match=rf"1 tensor\(s\) have shapes .*{key} \(3, 5\) \(expected"):
        convert.check_fits(model, state, tmp_path / "x.pth")
    del state[key]
    with pytest.raises(ValueError, match=rf"does not fit: missing \['{key}'\]"):
        convert.check_fits(model, state, tmp_path / "x.pth")


def test_run_command_turns_bad_input_into_one_line_and_lets_bugs_raise(capsys):
    def bad(argv):
        raise ValueError("first line\nsecond line")

    assert run_command(bad, "prog", []) == 2
    assert capsys.readouterr().err == "prog: error: first line …\n"
    assert run_command(lambda argv: None, "prog", []) == 0

    def bug(argv):
        raise RuntimeError("a bug keeps its traceback")

    with pytest.raises(RuntimeError):
        run_command(bug, "prog", [])


@pytest.mark.parametrize(
    "script, args, message",
    [
        (
            "convert_authors_checkpoint.py",
            ["--checkpoint", "EMPTY", "--tokenizer", "x", "--output_dir", "OUT"],
            "empty",
        ),
        ("export_onnx.py", ["--model", "MISSING", "--output", "OUT"], "no such folder"),
        (  # an existing but empty data root passes the argument checks; the loader then names what is missing
            "run_evaluation.py",
            ["--model_name_or_path", "EMBEDDED", "--dataset", "refcoco", "--data_root", "EMPTY_DIR"],
            "run_evaluation.py: error: ",
        ),
    ],
)
def test_scripts_print_one_line_not_a_traceback(tmp_path, script, args, message):
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    names = {
        "EMPTY": str(tmp_path / "empty.pth"),
        "EMPTY_DIR": str(tmp_path / "empty"),
        "EMBEDDED": str(embedded_checkpoint()),
        "OUT": str(tmp_path / "out"),
        "MISSING": str(tmp_path / "nope"),
    }
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / script), *[names.get(a, a) for a in args]],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and message in done.stderr.strip().splitlines()[-1]
