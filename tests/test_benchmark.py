"""scripts/dev/benchmark.py runs on tiny sizes and produces every figure (never a timing bound)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # `make test-fast` leaves it out

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_produces_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "dev" / "benchmark.py"),
            "--tiny",
            "--compile",
            "off",
            "--parts",
            "inference",
            "train",
            "data",
            "metrics",
            "--dtypes",
            "float32",
            "bfloat16",
            "--json",
            str(out),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["machine"]["cores"] and report["machine"]["cpu"]
    assert set(report["peak"]) == {"float32", "bfloat16"}
    assert all(peak["gmacs_per_second"] > 0 and peak["size"] == 512 for peak in report["peak"].values())

    inference = report["inference"]
    assert {(r["dtype"], r["batch_size"]) for r in inference} == {
        (d, b) for d in ("float32", "bfloat16") for b in (1, 8)
    }
    for row in inference:
        for key in (
            "metris_s",
            "metris_gmacs",
            "backbone_s",
            "backbone_gmacs",
            "text_s",
            "text_gmacs",
            "efficiency_ratio",
            "metris_peak_mb",
            "metris_peak_fraction",
            "backbone_peak_fraction",
        ):
            assert math.isfinite(row[key]) and row[key] > 0, (key, row)
        assert row["metris_gmacs"] > row["backbone_gmacs"] > 0
        # --tiny runs one round: the fraction is that round's model rate over the GEMM rate timed beside it
        beside = row["metris_gmacs"] / row["metris_s"] / row["metris_gemm_gmacs_per_second"]
        assert math.isclose(row["metris_peak_fraction"], beside, rel_tol=1e-9), row
    assert {(r["dtype"], r["gradient_checkpointing"]) for r in report["train"]} == {
        ("float32", False),
        ("bfloat16", False),
        ("float32", True),
    }
    assert all(
        r["samples_per_second"] > 0 and r["peak_memory_mb"] > 0 and r["peak_fraction"] > 0 for r in report["train"]
    )
    assert [(r["dataset"], r["num_workers"]) for r in report["data"]] == [
        (name, workers) for name in ("synthetic", "refer") for workers in (0, 1, 2, 4)
    ]
    assert all(r["samples_per_second"] > 0 and r["samples"] > 0 for r in report["data"])
    metrics = report["metrics"]
    assert metrics["num_samples"] == 200 and 0 < metrics["bytes_per_sample"] < metrics["mask_bytes_per_sample"]
    assert "GEMM peak" in result.stdout and "%peak" in result.stdout
    assert "ratio" in result.stdout and "samples/s" in result.stdout and "bytes per sample" in result.stdout


def test_data_part_rows(tmp_path):
    """`--parts data`: one row per set and worker count, every figure positive, what training consumes beside it."""
    out = tmp_path / "bench.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, str(ROOT / "scripts" / "dev" / "benchmark.py"), "--tiny", "--parts", "data"]
    command += ["--dtypes", "float32", "--data_workers", "0", "2", "--json", str(out)]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(out.read_text())
    rows = report["data"]
    assert [(r["dataset"], r["num_workers"]) for r in rows] == [
        ("synthetic", 0),
        ("synthetic", 2),
        ("refer", 0),
        ("refer", 2),
    ]
    for row in rows:
        assert row["rows"] > 0 and row["samples"] > 0 and row["samples"] % row["batch_size"] == 0, row
        assert math.isfinite(row["samples_per_second"]) and row["samples_per_second"] > 0, row
        assert math.isfinite(row["startup_s"]) and row["startup_s"] > 0, row
    assert {r["image_size"] for r in rows} == {128, 64}  # synthetic at its 128², REFER at --image_size (tiny: 64)
    assert set(report["data_consumption"]) == {"synthetic", "refer"}
    assert all(need["samples_per_second"] > 0 and need["source"] for need in report["data_consumption"].values())
    lines = [line.split() for line in result.stdout.splitlines()]
    printed = [line for line in lines if line and line[0] in ("synthetic", "refer") and len(line) == 8]
    assert [(line[0], int(line[3])) for line in printed] == [(r["dataset"], r["num_workers"]) for r in rows]
    assert all(float(line[5]) > 0 and float(line[7]) > 0 for line in printed)
    assert result.stdout.count("a training step takes") == 2
