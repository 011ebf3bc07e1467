"""What METRIS costs, measured in one run: a table on stdout and every figure in a JSON file.

    python scripts/dev/benchmark.py                              # everything, full-size model, 480², L = 20
    python scripts/dev/benchmark.py --parts inference --dtypes float32 --compile off
    python scripts/dev/benchmark.py --tiny --json out.json       # seconds; what the tests run

Parts:
  peak       the machine's own limit: a large square matrix product (CPU 4096³, GPU 8192³) per dtype,
             median of several, in GMAC/s: the best a model of matmuls and convolutions can do is that
             product's rate. Every model row is also given as a fraction of it (GMACs ÷ seconds ÷ GEMM rate), with
             the product timed again in the row's own process, alternating with the model round by round, so
             that a machine whose speed drifts (shared cores, clocks) moves both alike.
  inference  full METRIS forward (on CPU with the pipeline's `optimize_for_cpu_inference`), the plain Swin-B
             backbone alone and the text encoder alone, at each batch size, dtype and torch.compile setting:
             seconds per batch, GMACs (the counter of scripts/dev/count_macs.py), peak memory, the fraction of the
             GEMM peak, and the efficiency ratio (METRIS seconds per GMAC) / (Swin-B seconds per GMAC).
  train      forward + backward + AdamW step: samples/s, peak memory and fraction of the peak, counting the
             backward as twice the forward's MACs (CPU: batch 2, float32 and bfloat16 autocast, and float32 with
             gradient checkpointing; GPU: batch 16 bf16 with and without gradient checkpointing).
  onnx       the same full METRIS exported to ONNX and run by onnxruntime (CPU, float32, batch 1), timed in a
             process that never imports torch: seconds, peak memory, export time and file size. Needs the
             `[onnx]` extra; skipped with a message without it.
  data       train.py's own loader (`metris_hf.data.training_loader`: decode, draw a sentence, resize, tokenise,
             collate, shuffled) on the synthetic set (`--data_synthetic` refs, 128²) and on a REFER-format copy
             the script writes (`--data_images` 640×480 JPEGs, at `--image_size`): samples/s and start-up per
             `--data_workers` count, set against what a training step consumes (this run's fastest training
             row for the REFER set when there is one, else a figure measured on an H200, named in the output).
  metrics    memory held by the referring_iou metric ("refcoco") after 5,000 samples of 480².

On a CPU without bfloat16 instructions (AVX-512 BF16 or AMX), bfloat16 products take a slow reference path
(a 4096³ product ran at about 1 GMAC/s on a 2-core AVX2 EPYC, against 70 in float32): pass `--dtypes float32`
there.

On a GPU, float32 means TF32 matrix products (`torch.set_float32_matmul_precision("high")`), in the
peak and in the models alike; the report calls it tf32.

Each model measurement runs in a fresh process, so its peak memory (CPU: the process's max RSS; GPU:
`torch.cuda.max_memory_allocated`) is its own, less the GEMM's two operands timed beside the model.
Timings are the median of `--repeats` runs after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# --------------------------------------------------------------------------------------------------------------
# Models to measure
# --------------------------------------------------------------------------------------------------------------


def metris_config(tiny: bool):
    from metris_hf import MetrisConfig
    from metris_hf.presets import tiny_metris_config

    return tiny_metris_config() if tiny else MetrisConfig()


def build(kind: str, tiny: bool, device: str = "cpu") -> torch.nn.Module:
    """`metris`, `backbone` (the plain Swin of the config) or `text` (its text encoder), random weights, built
    on `device` (a full-size random init takes seconds on a CPU, none on a GPU)."""
    from transformers import AutoBackbone, AutoModel

    from metris_hf import MetrisForReferringSegmentation

    torch.manual_seed(0)
    config = metris_config(tiny)
    builders = {
        "metris": lambda: MetrisForReferringSegmentation(config),
        "backbone": lambda: AutoBackbone.from_config(config.backbone_config),
        "text": lambda: AutoModel.from_config(config.text_config),
    }
    if kind not in builders:
        raise ValueError(f"unknown model kind {kind!r}")
    with torch.device(device):
        return builders[kind]()


def make_inputs(kind: str, batch: int, image_size: int, length: int, device: str, dtype: torch.dtype) -> dict:
    pixel_values = torch.randn(batch, 3, image_size, image_size, device=device, dtype=dtype)
    input_ids = torch.randint(5, 250, (batch, length), device=device)
    attention_mask = torch.ones(batch, length, dtype=torch.long, device=device)
    if kind == "backbone":
        return {"pixel_values": pixel_values}
    if kind == "text":
        return {"input_ids": input_ids, "attention_mask": attention_mask}
    return {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}


def gmacs_per_sample(model: torch.nn.Module, inputs: dict) -> float:
    from metris_hf.macs import flop_counter

    one = {k: v[:1] for k, v in inputs.items()}
    counter = flop_counter()
    with counter, torch.no_grad():
        model(**one)
    return counter.get_total_flops() / 2 / 1e9


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def set_matmul_precision(device: str) -> None:
    """TF32 for float32 products on a GPU (its fast path for float32); CPUs keep full float32."""
    if device == "cuda":
        torch.set_float32_matmul_precision("high")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, device: str) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gemm_size(device: str, tiny: bool) -> int:
    return 512 if tiny else (8192 if device == "cuda" else 4096)


def peak_memory_beside_gemm_mb(device: str, after_warm_up_mb: float, size: int, dtype: torch.dtype) -> float:
    """The run's memory peak without the GEMM's two operands, which lived beside the model in the timed rounds.
    The later rounds count too: on CPU the resident set keeps growing after the first step (freed blocks the
    allocator keeps)."""
    operands_mb = 2 * size * size * torch.empty(0, dtype=dtype).element_size() / 2**20
    return max(after_warm_up_mb, peak_memory_mb(device) - operands_mb)


def timed_beside_gemm(fn, gmacs: float, repeats: int, device: str, dtype: torch.dtype, size: int) -> dict:
    """Times `fn` (already warmed up) and a size³ matrix product in alternation, round by round.

    A shared machine's speed drifts (another process, clock changes) by tens of percent within minutes; a peak
    timed minutes apart from the model put the same model at 75 % of it in one run and 109 % in the next. Timed in
    the same rounds, both move alike: the fraction is the median over rounds of (model GMAC/s) / (GEMM GMAC/s).
    """
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)
    times, rates = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        rates.append(size**3 / (time.perf_counter() - start) / 1e9)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return {
        "seconds": statistics.median(times),
        "gemm_gmacs_per_second": statistics.median(rates),
        "peak_fraction": statistics.median(gmacs / s / r for s, r in zip(times, rates)),
    }


# --------------------------------------------------------------------------------------------------------------
# Workers: one fresh process each
# --------------------------------------------------------------------------------------------------------------


def gemm_peak_worker(job: dict) -> dict:
    """GMAC/s of one large square matrix product: the machine's limit for this dtype."""
    device, dtype, n = job["device"], DTYPES[job["dtype"]], job["size"]
    set_matmul_precision(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = timed(lambda: torch.mm(a, b), job["repeats"], device)
    return {"size": n, "seconds": seconds, "gmacs_per_second": n**3 / seconds / 1e9}


def inference_worker(job: dict) -> dict:
    device, dtype = job["device"], DTYPES[job["dtype"]]
    set_matmul_precision(device)
    model = build(job["kind"], job["tiny"], device).to(dtype=dtype).eval()
    if job["kind"] == "metris" and device == "cpu":  # as the pipeline runs it
        from metris_hf.cpu_kernels import optimize_for_cpu_inference

        optimize_for_cpu_inference(model)
    inputs = make_inputs(job["kind"], max(job["batch_sizes"]), job["image_size"], job["max_length"], device, dtype)
    gmacs = gmacs_per_sample(model, inputs)
    runner = torch.compile(model) if job["compile"] else model
    forwards = {}
    for batch in job["batch_sizes"]:  # warm-up (and compilation) of every size first
        batch_inputs = {k: v[:batch] for k, v in inputs.items()}
        forwards[batch] = lambda batch_inputs=batch_inputs: runner(**batch_inputs)
        with torch.inference_mode():
            forwards[batch]()
        _sync(device)
    peak_mb = peak_memory_mb(device)
    rows = []
    for batch, forward in forwards.items():
        with torch.inference_mode():
            timing = timed_beside_gemm(forward, gmacs * batch, job["repeats"], device, dtype, job["gemm_size"])
        rows.append({"batch_size": batch, "gmacs": gmacs * batch, **timing})
    return {"rows": rows, "peak_memory_mb": peak_memory_beside_gemm_mb(device, peak_mb, job["gemm_size"], dtype)}


def train_worker(job: dict) -> dict:
    device, dtype = job["device"], DTYPES[job["dtype"]]
    set_matmul_precision(device)
    model = build("metris", job["tiny"], device).train()
    if job["gradient_checkpointing"]:
        # transformers 5 renamed it; the old name still works there but warns
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-5)
    batch = job["batch_size"]
    inputs = make_inputs("metris", batch, job["image_size"], job["max_length"], device, torch.float32)
    inputs["labels"] = (torch.rand(batch, job["image_size"], job["image_size"], device=device) > 0.5).long()
    forward_gmacs = gmacs_per_sample(model, {k: v for k, v in inputs.items() if k != "labels"})

    def step():
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: allocates the optimizer state
    _sync(device)
    peak_mb = peak_memory_mb(device)
    gmacs = 3 * forward_gmacs * batch  # backward = 2 × forward
    timing = timed_beside_gemm(step, gmacs, job["repeats"], device, dtype, job["gemm_size"])
    return {
        "seconds_per_step": timing["seconds"],
        "samples_per_second": batch / timing["seconds"],
        "peak_memory_mb": peak_memory_beside_gemm_mb(device, peak_mb, job["gemm_size"], dtype),
        "gmacs_per_step": gmacs,
        "gemm_gmacs_per_second": timing["gemm_gmacs_per_second"],
        "peak_fraction": timing["peak_fraction"],
    }


def run_in_fresh_process(worker, job: dict) -> dict:
    context = mp.get_context("spawn")
    with context.Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(worker, (job,))


# --------------------------------------------------------------------------------------------------------------
# Parts
# --------------------------------------------------------------------------------------------------------------


def bench_peak(args, device: str) -> dict[str, dict]:
    size = gemm_size(device, args.tiny)
    return {
        dtype: run_in_fresh_process(
            gemm_peak_worker, {"device": device, "dtype": dtype, "size": size, "repeats": max(args.repeats, 5)}
        )
        for dtype in args.dtypes
    }


def bench_inference(args, device: str) -> list[dict]:
    results = []
    for dtype in args.dtypes:
        for compiled in args.compile:
            per_kind = {}
            for kind in ("metris", "backbone", "text"):
                job = {
                    "kind": kind,
                    "tiny": args.tiny,
                    "device": device,
                    "dtype": dtype,
                    "compile": compiled == "on",
                    "batch_sizes": args.batch_sizes,
                    "image_size": args.image_size,
                    "max_length": args.max_length,
                    "repeats": args.repeats,
                    "gemm_size": gemm_size(device, args.tiny),
                }
                per_kind[kind] = run_in_fresh_process(inference_worker, job)
            for index, batch in enumerate(args.batch_sizes):
                metris, backbone, text = (per_kind[k]["rows"][index] for k in ("metris", "backbone", "text"))
                ratio = (metris["seconds"] / metris["gmacs"]) / (backbone["seconds"] / backbone["gmacs"])
                results.append(
                    {
                        "dtype": dtype,
                        "compile": compiled,
                        "batch_size": batch,
                        "metris_s": metris["seconds"],
                        "metris_gmacs": metris["gmacs"],
                        "backbone_s": backbone["seconds"],
                        "backbone_gmacs": backbone["gmacs"],
                        "text_s": text["seconds"],
                        "text_gmacs": text["gmacs"],
                        "efficiency_ratio": ratio,
                        "metris_peak_fraction": metris["peak_fraction"],
                        "metris_gemm_gmacs_per_second": metris["gemm_gmacs_per_second"],
                        "backbone_peak_fraction": backbone["peak_fraction"],
                        "backbone_gemm_gmacs_per_second": backbone["gemm_gmacs_per_second"],
                        "metris_peak_mb": per_kind["metris"]["peak_memory_mb"],
                        "backbone_peak_mb": per_kind["backbone"]["peak_memory_mb"],
                    }
                )
    return results


def bench_train(args, device: str) -> list[dict]:
    if device == "cuda":
        settings = [("bfloat16", 16, False), ("bfloat16", 16, True)]
    else:  # float32 with checkpointing: its memory saving, measured on CPU
        settings = [("float32", 2, False), ("bfloat16", 2, False), ("float32", 2, True)]
    settings = [setting for setting in settings if setting[0] in args.dtypes]  # --dtypes float32: no bf16 rows
    if args.tiny:
        settings = [(dtype, 2, ckpt) for dtype, _, ckpt in settings]
    results = []
    for dtype, batch, checkpointing in settings:
        job = {
            "tiny": args.tiny,
            "device": device,
            "dtype": dtype,
            "batch_size": batch,
            "gradient_checkpointing": checkpointing,
            "image_size": args.image_size,
            "max_length": args.max_length,
            "repeats": args.repeats,
            "gemm_size": gemm_size(device, args.tiny),
        }
        result = run_in_fresh_process(train_worker, job)
        results.append({"dtype": dtype, "batch_size": batch, "gradient_checkpointing": checkpointing, **result})
    return results


def bench_onnxruntime(args) -> list[dict]:
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxscript") is None:
        print("onnxruntime row skipped: pip install -e '.[onnx]'")
        return []
    from metris_hf.onnx_backend import onnxruntime_benchmark_worker

    job = {
        "tiny": args.tiny,
        "batch_sizes": [1],
        "image_size": args.image_size,
        "max_length": args.max_length,
        "repeats": args.repeats,
    }
    result = run_in_fresh_process(onnxruntime_benchmark_worker, job)
    return [
        {
            "backend": "onnxruntime",
            "dtype": "float32",
            "batch_size": row["batch_size"],
            "metris_s": row["seconds"],
            "peak_mb": result["peak_memory_mb"],
            "startup_s": result["startup_seconds"],
            "export_s": result["export_seconds"],
            "onnx_mb": result["onnx_mb"],
        }
        for row in result["rows"]
    ]


def write_refer_copy(root: Path, num_images: int, width: int = 640, height: int = 480) -> Path:
    """A RefCOCO-format copy of COCO-sized JPEGs (photo-like noise, quality 90), one polygon object per image
    with three sentences: what the data part reads."""
    import pickle

    import numpy as np
    from PIL import Image

    image_dir = root / "images" / "mscoco" / "images" / "train2014"
    image_dir.mkdir(parents=True)
    (root / "refcoco").mkdir()
    rng = np.random.default_rng(0)
    images, annotations, refs = [], [], []
    smooth = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    for image_id in range(1, num_images + 1):
        noise = rng.normal(0, 25, (height, width, 3)).astype(np.float32)
        pixels = np.clip(smooth * rng.uniform(0.3, 1.0, 3) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(image_dir / f"COCO_train2014_{image_id:012d}.jpg", quality=90)
        images.append(
            {"id": image_id, "file_name": f"COCO_train2014_{image_id:012d}.jpg", "width": width, "height": height}
        )
        x, y = rng.uniform(50, width - 250), rng.uniform(50, height - 200)
        polygon = [x, y, x + 200, y + 20, x + 180, y + 150, x + 10, y + 140]
        annotations.append(
            {
                "id": image_id,
                "image_id": image_id,
                "category_id": 1,
                "iscrowd": 0,
                "segmentation": [polygon],
                "area": 26000.0,
                "bbox": [x, y, 200.0, 150.0],
            }
        )
        refs.append(
            {
                "ref_id": image_id,
                "ann_id": image_id,
                "image_id": image_id,
                "split": "train",
                "category_id": 1,
                "sent_ids": [3 * image_id + k for k in range(3)],
                "sentences": [
                    {"raw": text, "sent": text, "tokens": text.split(), "sent_id": 3 * image_id + k}
                    for k, text in enumerate(
                        ["the man on the left in a red shirt", "left guy", "person holding the blue umbrella"]
                    )
                ],
            }
        )
    instances = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "person"}]}
    (root / "refcoco" / "instances.json").write_text(json.dumps(instances))
    with open(root / "refcoco" / "refs(unc).p", "wb") as handle:
        pickle.dump(refs, handle, protocol=2)
    return root


# Samples/s a training step consumes, measured elsewhere: what the data rows are set against when this run has
# no training row of the same model and size (the synthetic set trains the small config at 128², not METRIS).
STATED_CONSUMPTION = {
    "synthetic": (1523.0, "stage 9 of model_cards/metris-tiny-synthetic: 11.9 steps/s of 128 on an H200, 128²"),
    "refer": (54.6, "docs/performance.md: full METRIS, batch 16, bf16 autocast on an H200, 480²"),
}


def data_sets(args, scratch: Path) -> dict[str, tuple]:
    """`{name: (train split, image size)}`: the synthetic set as `train.py --dataset synthetic` loads it (128²,
    `--data_synthetic` refs) and a REFER-format copy (`--data_images` COCO-sized JPEGs, at `--image_size`)."""
    from metris_hf.data import load_dataset_by_name

    refer_root = write_refer_copy(scratch / "refer", args.data_images)
    synthetic = load_dataset_by_name("synthetic", synthetic_size=(args.data_synthetic, 0, 0), cache_dir=scratch)
    refer = load_dataset_by_name("refcoco", data_root=refer_root, cache_dir=scratch)
    return {"synthetic": (synthetic["train"], 128), "refer": (refer["train"], args.image_size)}


def bench_data(args) -> list[dict]:
    """Samples/s of `train.py`'s own loader (`metris_hf.data.training_loader`: rows decoded by `datasets`, one
    sentence drawn, resized and tokenised by the processor, collated), one epoch per worker count.

    `startup_s` is the wait for the first batch (workers forked, first rows decoded: paid again every epoch);
    `samples_per_second` counts the batches after it, the rate a training loop is fed at once running.
    """
    import tempfile

    from metris_hf import MetrisProcessor
    from metris_hf.data import build_synthetic_tokenizer, training_loader

    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, (data, image_size) in data_sets(args, Path(scratch)).items():
            processor = MetrisProcessor(tokenizer=build_synthetic_tokenizer())
            processor.image_processor.size = {"height": image_size, "width": image_size}
            processor.max_length = args.max_length
            for workers in args.data_workers:
                loader, _ = training_loader(data, processor, args.data_batch_size, num_workers=workers)
                start = time.perf_counter()
                batches = iter(loader)
                next(batches)
                startup = time.perf_counter() - start
                start, count = time.perf_counter(), 0
                for batch in batches:
                    count += batch["pixel_values"].shape[0]
                seconds = time.perf_counter() - start
                results.append(
                    {
                        "dataset": name,
                        "rows": len(data),
                        "image_size": image_size,
                        "num_workers": workers,
                        "batch_size": args.data_batch_size,
                        "samples": count,
                        "startup_s": startup,
                        "samples_per_second": count / seconds,
                    }
                )
    return results


def data_consumption(report: dict) -> dict[str, dict]:
    """What a training step consumes, per data set: on a GPU, the fastest training row of this run for the REFER
    set (same input size); else the stated figures (the question is whether the loader keeps a GPU fed)."""
    consumption = {
        name: {"samples_per_second": rate, "source": source} for name, (rate, source) in STATED_CONSUMPTION.items()
    }
    if report.get("train") and report["device"] == "cuda" and not report["tiny"]:
        best = max(report["train"], key=lambda r: r["samples_per_second"])
        source = f"this run's training row ({best['dtype']}, batch {best['batch_size']}, {report['image_size']}²)"
        consumption["refer"] = {"samples_per_second": best["samples_per_second"], "source": source}
    return consumption


def bench_metrics(args) -> dict:
    """Python heap (tracemalloc) and Arrow cache bytes the metric holds once `num_samples` masks are added.

    The masks themselves are freed batch by batch, so what remains is the metric's own state.
    """
    import tempfile
    import tracemalloc

    import numpy as np

    from metris_hf import metrics

    size = args.image_size
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as cache_dir:
        tracemalloc.start()
        metric = metrics.load("refcoco", cache_dir=cache_dir)
        baseline = tracemalloc.get_traced_memory()[0]
        added = 0
        while added < args.metric_samples:
            batch = min(100, args.metric_samples - added)
            predictions = [rng.random((size, size)) > 0.5 for _ in range(batch)]
            references = [rng.random((size, size)) > 0.5 for _ in range(batch)]
            metric.add_batch(predictions=predictions, references=references)
            added += batch
            del predictions, references
        heap = tracemalloc.get_traced_memory()[0] - baseline
        tracemalloc.stop()
        disk = sum(f.stat().st_size for f in Path(cache_dir).rglob("*") if f.is_file())
        result = metric.compute()
    one_mask = size * size  # bytes of one bool mask: what keeping the masks would cost per sample
    return {
        "num_samples": added,
        "size": size,
        "heap_bytes": heap,
        "cache_bytes": disk,
        "bytes_per_sample": (heap + disk) / added,
        "mask_bytes_per_sample": 2 * one_mask,
        "oIoU_of_random_masks": float(result["oIoU"]),
    }


# --------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__}


def print_report(report: dict) -> None:
    m = report["machine"]
    print(f"\nmachine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}, torch {m['torch']}")
    print(
        f"input {report['image_size']}², L = {report['max_length']}, {'tiny' if report['tiny'] else 'full-size'} model"
    )
    label = {"float32": "tf32" if m["gpu"] and report["device"] == "cuda" else "float32", "bfloat16": "bfloat16"}
    print("\nGEMM peak (the limit; every row's fraction is of the same product timed in its own rounds)")
    for dtype, peak in report["peak"].items():
        print(f"  {label[dtype]:<9} {peak['size']}³ matmul: {peak['gmacs_per_second']:.0f} GMAC/s")
    if "inference" in report:
        print("\ninference (seconds per batch; GMACs per batch; % of the GEMM rate timed beside it)")
        header = (
            f"{'dtype':<9}{'compile':<8}{'batch':>6}{'METRIS s':>10}{'GMACs':>9}{'%peak':>7}{'Swin s':>9}{'GMACs':>9}"
            f"{'%peak':>7}{'text s':>9}{'GMACs':>8}{'ratio':>7}{'peak MB':>9}"
        )
        print(header)
        for r in report["inference"]:
            print(
                f"{label[r['dtype']]:<9}{r['compile']:<8}{r['batch_size']:>6}{r['metris_s']:>10.3f}{r['metris_gmacs']:>9.1f}"
                f"{100 * r['metris_peak_fraction']:>7.1f}{r['backbone_s']:>9.3f}{r['backbone_gmacs']:>9.1f}"
                f"{100 * r['backbone_peak_fraction']:>7.1f}{r['text_s']:>9.4f}{r['text_gmacs']:>8.2f}"
                f"{r['efficiency_ratio']:>7.2f}{r['metris_peak_mb']:>9.0f}"
            )
    for r in report.get("onnxruntime", []):
        print(
            f"\nonnxruntime {r['dtype']} batch {r['batch_size']}: {r['metris_s']:.3f} s, peak {r['peak_mb']:.0f} MB, "
            f"start-up {r['startup_s']:.1f} s (a process without torch or transformers); "
            f"export {r['export_s']:.0f} s, {r['onnx_mb']:.0f} MB file"
        )
    if "train" in report:
        print("\ntraining step (forward + backward + AdamW)")
        for r in report["train"]:
            print(
                f"  {label[r['dtype']]:<9} batch {r['batch_size']:>2}"
                f"  checkpointing {'on ' if r['gradient_checkpointing'] else 'off'}"
                f"  {r['samples_per_second']:.2f} samples/s  {r['seconds_per_step']:.2f} s/step"
                f"  peak {r['peak_memory_mb']:.0f} MB"
                f"  {100 * r['peak_fraction']:.1f} % of the GEMM peak"
            )
    if "data" in report:
        print("\ndata pipeline (train.py's loader: decode, draw a sentence, resize, tokenise, collate)")
        print(
            f"{'set':<10}{'rows':>6}{'size':>6}{'workers':>8}{'start s':>9}{'samples/s':>11}{'per worker':>11}"
            f"{'÷ need':>8}"
        )
        for r in report["data"]:
            need = report["data_consumption"][r["dataset"]]["samples_per_second"]
            per_worker = f"{r['samples_per_second'] / r['num_workers']:.1f}" if r["num_workers"] else "—"
            print(
                f"{r['dataset']:<10}{r['rows']:>6}{r['image_size']:>6}{r['num_workers']:>8}{r['startup_s']:>9.2f}"
                f"{r['samples_per_second']:>11.1f}{per_worker:>11}{r['samples_per_second'] / need:>8.2f}"
            )
        for name, need in report["data_consumption"].items():
            rate = need["samples_per_second"]
            print(f"  need ({name}): a training step takes {rate:.1f} samples/s, {need['source']}")
    if "metrics" in report:
        r = report["metrics"]
        print(
            f"\nmetrics: after {r['num_samples']} samples of {r['size']}²: {r['heap_bytes'] / 2**20:.3f} MB heap + "
            f"{r['cache_bytes'] / 2**20:.3f} MB Arrow cache = {r['bytes_per_sample']:.0f} bytes per sample "
            f"(keeping the two masks would be {r['mask_bytes_per_sample']} bytes per sample)"
        )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["inference", "onnx", "train", "data", "metrics"],
        choices=["inference", "onnx", "train", "data", "metrics"],
    )
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--image_size", type=int, default=480)
    parser.add_argument("--max_length", type=int, default=20)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=list(DTYPES))
    parser.add_argument("--compile", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data_images", type=int, default=256, help="images in the REFER copy (data part)")
    parser.add_argument("--data_synthetic", type=int, default=2400, help="refs in the synthetic set (data part)")
    parser.add_argument("--data_workers", nargs="+", type=int, default=[0, 1, 2, 4], help="DataLoader workers")
    parser.add_argument("--data_batch_size", type=int, default=16, help="batch size of the data part's loader")
    parser.add_argument("--metric_samples", type=int, default=5000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny model and sizes: checks the script, not the model")
    parser.add_argument("--json", default="benchmark.json")
    args = parser.parse_args(argv)
    if args.tiny:
        args.image_size = min(args.image_size, 64)
        args.data_images, args.metric_samples, args.repeats = min(args.data_images, 24), 200, 1
        args.data_synthetic, args.data_batch_size = min(args.data_synthetic, 48), min(args.data_batch_size, 4)

    report: dict = {
        "machine": machine(),
        "device": args.device,
        "image_size": args.image_size,
        "max_length": args.max_length,
        "tiny": args.tiny,
    }
    report["peak"] = bench_peak(args, args.device)
    if "inference" in args.parts:
        report["inference"] = bench_inference(args, args.device)
    if "onnx" in args.parts:
        report["onnxruntime"] = bench_onnxruntime(args)
    if "train" in args.parts:
        report["train"] = bench_train(args, args.device)
    if "data" in args.parts:
        report["data"] = bench_data(args)
        report["data_consumption"] = data_consumption(report)
    if "metrics" in args.parts:
        report["metrics"] = bench_metrics(args)
    print_report(report)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.json}")
    return report


if __name__ == "__main__":
    main()
