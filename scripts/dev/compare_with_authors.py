"""Our METRIS against the authors' own code, side by side in one process: same weights, same inputs.

    python scripts/dev/compare_with_authors.py --authors_src /path/to/their/code [--repeats 5]

`--authors_src` is a copy of the authors' released code (a LAVT fork) that runs on CPU: their `lib/`, `bert/`
and `args.py`, with stand-ins for the mmcv/mmseg imports and their BERT built from its config instead of
downloaded. Their model is built with their train.py's defaults and random weights; ours gets those weights
through `metris_hf.conversion`. The script prints the largest logit difference, then forward seconds (batch 1,
float32, 480², 20 tokens, median of `--repeats` after a warm-up) for both and for a plain Swin-B forward timed
between them: each model's time is divided by the Swin-B time of the same round, so the speed-up
(theirs / ours) does not move with what else the machine is doing. Flush-denormal is on for both: random
weights leave float32 subnormals in their Swin that a trained checkpoint does not have.

It also times a 4096³ float32 matrix product, the machine's limit: a forward of G GMACs cannot take less than
G ÷ (that product's GMAC/s), whoever wrote the code. The last lines say what share of that limit each model
reaches and the largest speed-up over theirs that the limit allows.

    python scripts/dev/compare_with_authors.py --authors_src /path/to/their/code --training_step [--output_json f]

`--training_step` instead compares one training step, in float64: their model and ours with the same weights
(theirs, every tensor perturbed so that no gate, bias or statistic sits at zero, converted), the same batch of
two 480² images with expressions of 21 and 9 tokens and their masks. Their step is rebuilt here from what their
`train.py` does, not imported (it calls CUDA): the loss 2 × cross-entropy (class weights 0.9, 1.1) on the
2-class logits at 480² + 0.4 × BCE on the [CLS] score map; their parameter groups (no weight decay on the
backbone's parameters named for norms, absolute position embeddings or relative-position tables, 0.01 on every
other parameter; their filter for frozen embeddings matches none); AdamW lr 3e-5; a LambdaLR of
(1 − it/N)^0.9 over N = `--iterations`. Ours is `scripts/train.py`'s: its parameter groups and its polynomial
scheduler, our model's own loss. Compared: the loss terms (relative difference), each parameter's gradient and
its AdamW update (‖ours − theirs‖ ÷ ‖theirs‖), the set of trained parameters, each one's weight decay, and the
learning rate after the scheduler step.

Dropout and stochastic depth are off in both (the two implementations draw their random masks in different
orders); BatchNorm uses batch statistics, as in training. The two models run one after the other, never side
by side: theirs first, its gradients and updates (converted to our names) written to `--work_dir`, then freed;
both recompute their blocks' activations in the backward pass (activation checkpointing, which leaves the
gradients unchanged) and AdamW steps one parameter at a time (a parameter's first AdamW step depends on it
alone), so the peak stays near 3 × the float64 weights (≈ 9 GB) rather than the ≈ 17 GB of their plain
float64 forward at this size.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import AutoBackbone, get_scheduler

from metris_hf import MetrisForReferringSegmentation
from metris_hf.conversion import authors_config, convert_authors_key, convert_authors_state_dict
from metris_hf.macs import flop_counter


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authors_src", required=True, help="a CPU-runnable copy of the authors' code")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds after one warm-up (default: 5)")
    parser.add_argument("--image_size", type=int, default=480, help="input size (default: 480)")
    parser.add_argument("--max_length", type=int, default=20, help="expression tokens (default: 20)")
    parser.add_argument("--training_step", action="store_true", help="compare one training step instead (float64)")
    parser.add_argument(
        "--iterations",
        type=int,
        default=106_040,
        help="N of the poly schedule (default: 40 epochs × 2,651 steps of 16 over RefCOCO's 42,404 training refs)",
    )
    parser.add_argument("--work_dir", default=None, help="where their gradients go between the two runs (a temp dir)")
    parser.add_argument("--output_json", default=None, help="also write the training step's figures here")
    return parser.parse_args(argv)


def build_authors_model(source: Path) -> torch.nn.Module:
    sys.path.insert(0, str(source))
    from args import get_parser
    from lib import segmentation

    args = get_parser().parse_args([])
    return segmentation.metris(pretrained=args.pretrained_swin_weights, args=args).eval()


def seconds(fn) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.training_step:
        return compare_training_step(args)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    theirs = build_authors_model(Path(args.authors_src))
    config = authors_config()
    ours = MetrisForReferringSegmentation(config).eval()
    ours.load_state_dict(convert_authors_state_dict(theirs.state_dict()), strict=True)
    swin = AutoBackbone.from_config(config.backbone_config).eval()

    size, length = args.image_size, args.max_length
    pixels = torch.randn(1, 3, size, size)
    input_ids = torch.randint(1000, 2000, (1, length))
    attention_mask = torch.ones(1, length, dtype=torch.long)
    runs = {
        "ours": lambda: ours(pixel_values=pixels, input_ids=input_ids, attention_mask=attention_mask),
        "theirs": lambda: theirs(pixels, input_ids, attention_mask, training=False),
        "swin": lambda: swin(pixels),
    }

    # Same weights, same answer: the comparison is of one architecture.
    with torch.no_grad():
        expected = theirs(pixels, input_ids, attention_mask, training=False)
        got = ours(pixel_values=pixels, input_ids=input_ids, attention_mask=attention_mask).logits
    got = torch.nn.functional.interpolate(got, size=(size, size), mode="bilinear", align_corners=True)[:, 0]
    difference = (got - (expected[:, 1] - expected[:, 0])).abs().max().item()

    # The limit is timed in every round too, beside the models, and its best round kept: one product timed
    # once after the rounds read 45 instead of 70 GMAC/s when something else briefly ran on the machine.
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    runs["gemm"] = lambda: a @ b
    for run in runs.values():  # warm-up
        seconds(run)
    times: dict[str, list[float]] = {name: [] for name in runs}
    ratios: dict[str, list[float]] = {"ours": [], "theirs": []}
    for _ in range(args.repeats):
        for name in ("ours", "swin", "theirs", "gemm"):
            times[name].append(seconds(runs[name]))
        swin_time = times["swin"][-1]
        ratios["ours"].append(times["ours"][-1] / swin_time)
        ratios["theirs"].append(times["theirs"][-1] / swin_time)

    gemm_gmacs_per_s = 4096**3 / min(times.pop("gemm")) / 1e9
    counter = flop_counter()
    with counter:
        seconds(runs["ours"])
    gmacs = counter.get_total_flops() / 2 / 1e9

    median = {name: statistics.median(values) for name, values in times.items()}
    speedup = statistics.median(ratios["theirs"]) / statistics.median(ratios["ours"])
    print(f"{torch.__version__}, {torch.get_num_threads()} threads, batch 1, float32, {size}², {length} tokens")
    print(f"max |ours - theirs| (mask logit): {difference:.2e}")
    print(f"{'model':<10}{'median s':>10}{'÷ Swin-B':>10}")
    for name in ("theirs", "ours", "swin"):
        ratio = statistics.median(ratios[name]) if name in ratios else 1.0
        print(f"{name:<10}{median[name]:>10.3f}{ratio:>10.2f}")
    print(f"speed-up of ours over theirs, each normalised by Swin-B: {speedup:.2f}×")
    bound = gmacs / gemm_gmacs_per_s
    print(
        f"the limit: 4096³ float32 matmul at {gemm_gmacs_per_s:.1f} GMAC/s; "
        f"{gmacs:.1f} GMACs take at least {bound:.2f} s"
    )
    for name in ("theirs", "ours"):
        print(f"  {name} reach {bound / median[name]:.0%} of it")
    print(f"  largest possible speed-up over theirs on this machine: {median['theirs'] / bound:.2f}×")
    return {
        "difference": difference,
        "seconds": median,
        "speedup": speedup,
        "gmacs": gmacs,
        "gemm_gmacs_per_second": gemm_gmacs_per_s,
        "bound_seconds": bound,
    }


# ------------------------------------------------------------------------------------------------------------
# One training step
# ------------------------------------------------------------------------------------------------------------
LEARNING_RATE, WEIGHT_DECAY = 3e-5, 0.01
# A gradient whose norm is below this share of the largest one is rounding noise: zero by construction.
ZERO_GRADIENT = 1e-10
# Their blocks, by class name, whose activations are recomputed in the backward pass (none holds a BatchNorm).
AUTHORS_BLOCKS = ("SwinTransformerBlock", "PWAM", "Block", "QLBlock", "TopKBlock", "BertLayer")
OUR_BLOCKS = ("SwinLayer", "MetrisPixelWordAttention", "MetrisAttentionBlock", "BertLayer")


def load_train_script():
    spec = importlib.util.spec_from_file_location("metris_train", Path(__file__).resolve().parents[1] / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def progress(what: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {what} (peak RSS so far {peak_gb():.1f} GB)", file=sys.stderr, flush=True)


def training_batch() -> dict[str, torch.Tensor]:
    """Two 480² images, expressions of 21 and 9 tokens ([CLS] … [SEP], then padding), two different masks."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 3, 480, 480, generator=generator, dtype=torch.float64)
    input_ids = torch.randint(1000, 2000, (2, 21), generator=generator)
    attention_mask = torch.ones(2, 21, dtype=torch.long)
    input_ids[:, 0] = 101
    input_ids[0, 20] = 102
    input_ids[1, 8], input_ids[1, 9:], attention_mask[1, 9:] = 102, 0, 0
    labels = torch.zeros(2, 480, 480, dtype=torch.long)
    labels[0, 100:300, 150:380] = 1
    rows, cols = torch.meshgrid(torch.arange(480), torch.arange(480), indexing="ij")
    labels[1] = ((rows - 330) ** 2 + (cols - 140) ** 2 < 90**2).long()
    return {"pixel_values": pixels, "input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def batch_statistics_only(model: torch.nn.Module) -> None:
    """Training mode for BatchNorm (batch statistics), evaluation mode (no dropout, no drop path) elsewhere."""
    model.eval()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.train()


def recompute_in_backward(model: torch.nn.Module, class_names: tuple[str, ...]) -> int:
    """Wraps the outermost modules of these classes in activation checkpointing; returns how many."""
    wrapped = []
    for name, module in model.named_modules():
        if type(module).__name__ in class_names and not any(name.startswith(f"{w}.") for w in wrapped):
            forward = module.forward
            module.forward = lambda *a, _forward=forward, **k: checkpoint(_forward, *a, use_reentrant=False, **k)
            wrapped.append(name)
    return len(wrapped)


def perturbed_authors_model(source: Path) -> torch.nn.Module:
    """Their model in float64 with their random init, every tensor then moved by N(0, 0.02²) (as the forward
    test does), τ at 0.07: zero gates would leave much of the network without a gradient to compare."""
    torch.manual_seed(1)
    theirs = build_authors_model(source).double()
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, tensor in theirs.state_dict().items():
            if tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype) * 0.02)
            if name.endswith("running_var"):
                tensor.abs_()
        theirs.net.VIS.tau.fill_(0.07)
    return theirs


def authors_parameter_groups(theirs: torch.nn.Module) -> list[dict]:
    """Their optimizer's groups, from what their train.py does: backbone parameters whose name holds `norm`,
    `absolute_pos_embed` or `relative_position_bias_table` without weight decay; the rest of the backbone, the
    decoder (`net`) and the text encoder with the optimizer's 0.01. Their freezing filters (`.embeddings.` on the
    text encoder's own names, `QLformer.embeddings.` on the decoder's) match no parameter of the model."""
    frozen = [n for n, _ in theirs.text_encoder.named_parameters() if ".embeddings." in n]
    frozen += [n for n, _ in theirs.net.named_parameters() if "QLformer.embeddings." in n]
    assert not frozen, frozen
    exempt_names = ("norm", "absolute_pos_embed", "relative_position_bias_table")
    backbone = dict(theirs.backbone.named_parameters())
    no_decay = {f"backbone.{n}": p for n, p in backbone.items() if any(part in n for part in exempt_names)}
    groups = [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": {f"backbone.{n}": p for n, p in backbone.items() if f"backbone.{n}" not in no_decay}},
        {"params": {f"net.{n}": p for n, p in theirs.net.named_parameters() if p.requires_grad}},
        {"params": {f"text_encoder.{n}": p for n, p in theirs.text_encoder.named_parameters() if p.requires_grad}},
    ]
    for group in groups:
        group.setdefault("weight_decay", WEIGHT_DECAY)
    return groups


def first_adamw_step(param: torch.nn.Parameter, lr: float, weight_decay: float) -> torch.Tensor:
    """The update of one AdamW step of this parameter alone (its first step depends on nothing else); frees
    the optimizer state at once."""
    before = param.detach().clone()
    optimizer = torch.optim.AdamW([param], lr=lr, weight_decay=weight_decay, foreach=False)
    optimizer.step()
    del optimizer
    return param.detach() - before


def learning_rates(iterations: int) -> dict[str, list[float]]:
    """The lr of the step and after one scheduler step: their LambdaLR, and train.py's transformers scheduler."""
    dummy = [torch.nn.Parameter(torch.zeros(1))]
    theirs_opt = torch.optim.AdamW(dummy, lr=LEARNING_RATE)
    theirs = torch.optim.lr_scheduler.LambdaLR(theirs_opt, lambda x: (1 - x / iterations) ** 0.9)
    ours_opt = torch.optim.AdamW(dummy, lr=LEARNING_RATE)
    ours = get_scheduler(
        "polynomial",
        optimizer=ours_opt,
        num_warmup_steps=0,
        num_training_steps=iterations,
        scheduler_specific_kwargs={"power": 0.9, "lr_end": 0.0},
    )
    rates = {"theirs": [theirs.get_last_lr()[0]], "ours": [ours.get_last_lr()[0]]}
    theirs_opt.step(), ours_opt.step()
    theirs.step(), ours.step()
    rates["theirs"].append(theirs.get_last_lr()[0])
    rates["ours"].append(ours.get_last_lr()[0])
    return rates


def authors_step(source: Path, batch: dict, lr: float, work_dir: Path) -> dict:
    """Their forward, loss, backward and AdamW step; gradients and updates saved under our names."""
    theirs = perturbed_authors_model(source)
    batch_statistics_only(theirs)
    recompute_in_backward(theirs, AUTHORS_BLOCKS)
    target = batch["labels"]
    progress("theirs built")
    logits, scores = theirs(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])  # training=True
    progress("theirs: forward done")
    weight = torch.tensor([0.9, 1.1], dtype=torch.float64)
    terms = {
        "mask": F.cross_entropy(logits, target, weight=weight),
        "contrastive": F.binary_cross_entropy_with_logits(scores, target.double()),
    }
    loss = 2 * terms["mask"] + 0.4 * terms["contrastive"]
    del logits, scores
    loss.backward()
    progress("theirs: backward done")
    decay, index, norms = {}, {}, {}
    for group in authors_parameter_groups(theirs):
        for name, param in group["params"].items():
            grad = param.grad
            update = first_adamw_step(param, lr, group["weight_decay"])
            grads, updates = convert_authors_key(name, grad), convert_authors_key(name, update)
            for ours_name in grads:
                decay[ours_name] = group["weight_decay"]
                norms[ours_name] = grads[ours_name].norm().item()
                index[ours_name] = f"{len(index)}.pt"
                torch.save(
                    {"grad": grads[ours_name].clone(), "update": updates[ours_name].clone()},
                    work_dir / index[ours_name],
                )
            param.grad = None
    result = {
        "loss": loss.item(),
        "terms": {k: v.item() for k, v in terms.items()},
        "weight_decay": decay,
        "index": index,
        "gradient_norms": norms,
        "tau": theirs.net.VIS.tau.item(),
    }
    del theirs, loss, terms
    gc.collect()
    return result


def relative(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    scale = theirs.norm().item()
    difference = (ours - theirs).norm().item()
    return difference / scale if scale > 0 else difference


def our_step(source: Path, batch: dict, lr: float, theirs: dict, work_dir: Path, zero: set[str]) -> dict:
    """Our model with their weights (their model rebuilt with the same seed, converted, freed), train.py's
    parameter groups; each gradient and update compared at once with theirs, read back from `work_dir`.

    `zero` names the parameters whose gradient is zero by construction (e.g. attention key biases: softmax ignores
    a shift shared by a query's scores): rounding noise in both, so their relative difference means nothing and
    AdamW's first update (≈ lr · g / (|g| + ε)) magnifies the noise. Their gradient norms are kept instead."""
    authors = perturbed_authors_model(source)
    ours = MetrisForReferringSegmentation(authors_config()).double()
    ours.load_state_dict(convert_authors_state_dict(authors.state_dict()), strict=True)
    del authors
    gc.collect()
    train = load_train_script()
    train.freeze_text_embeddings(ours, "none")
    batch_statistics_only(ours)
    recompute_in_backward(ours, OUR_BLOCKS)
    progress("ours built")
    outputs = ours(**batch)
    progress("ours: forward done")
    terms = {name: value.item() for name, value in outputs.loss_terms.items()}
    loss = outputs.loss
    del outputs
    loss.backward()
    progress("ours: backward done")
    names = {id(param): name for name, param in ours.named_parameters()}
    decay, gradients, updates, zero_norms = {}, {}, {}, {}
    for group in train.parameter_groups(ours, WEIGHT_DECAY):
        for param in group["params"]:
            name = names[id(param)]
            decay[name] = group["weight_decay"]
            grad = param.grad
            update = first_adamw_step(param, lr, group["weight_decay"])
            if name in zero:
                zero_norms[name] = grad.norm().item()
            elif name in theirs["index"]:
                reference = torch.load(work_dir / theirs["index"][name])
                gradients[name] = relative(grad, reference["grad"])
                updates[name] = relative(update, reference["update"])
            param.grad = None
    return {
        "loss": loss.item(),
        "terms": terms,
        "weight_decay": decay,
        "gradients": gradients,
        "updates": updates,
        "zero_gradient_norms": zero_norms,
    }


def compare_training_step(args: argparse.Namespace) -> dict:
    torch.set_flush_denormal(True)
    source = Path(args.authors_src)
    batch = training_batch()
    rates = learning_rates(args.iterations)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
        start = time.perf_counter()
        theirs = authors_step(source, batch, rates["theirs"][0], Path(work))
        theirs_seconds, theirs_peak = time.perf_counter() - start, peak_gb()
        largest = max(theirs["gradient_norms"].values())
        zero = {name for name, norm in theirs["gradient_norms"].items() if norm <= ZERO_GRADIENT * largest}
        ours = our_step(source, batch, rates["ours"][0], theirs, Path(work), zero)
        ours_seconds = time.perf_counter() - start - theirs_seconds
    term_differences = {name: abs(ours["terms"][name] - value) / abs(value) for name, value in theirs["terms"].items()}
    term_differences["total"] = abs(ours["loss"] - theirs["loss"]) / abs(theirs["loss"])
    trained = {"only_theirs": sorted(set(theirs["weight_decay"]) - set(ours["weight_decay"]))}
    trained["only_ours"] = sorted(set(ours["weight_decay"]) - set(theirs["weight_decay"]))
    decay_mismatch = sorted(
        name
        for name in set(theirs["weight_decay"]) & set(ours["weight_decay"])
        if theirs["weight_decay"][name] != ours["weight_decay"][name]
    )
    worst_gradient = max(ours["gradients"], key=ours["gradients"].get)
    worst_update = max(ours["updates"], key=ours["updates"].get)
    lr_difference = max(abs(a - b) / b for a, b in zip(rates["ours"], rates["theirs"]))
    report = {
        "loss_terms": {"theirs": theirs["terms"], "ours": ours["terms"]},
        "loss": {"theirs": theirs["loss"], "ours": ours["loss"]},
        "relative_loss_differences": term_differences,
        "trained_parameters": len(ours["weight_decay"]),
        "trained_only_by": trained,
        "weight_decay_mismatches": decay_mismatch,
        "no_decay_parameters": sum(1 for v in ours["weight_decay"].values() if v == 0.0),
        "max_gradient_difference": [worst_gradient, ours["gradients"][worst_gradient]],
        "max_update_difference": [worst_update, ours["updates"][worst_update]],
        # zero by construction: their gradient norm and ours, each ÷ the largest gradient norm of theirs
        "zero_gradient_parameters": {
            name: [theirs["gradient_norms"][name] / largest, norm / largest]
            for name, norm in ours["zero_gradient_norms"].items()
        },
        "learning_rates": rates,
        "max_learning_rate_difference": lr_difference,
        "seconds": {"theirs": theirs_seconds, "ours": ours_seconds},
        "peak_rss_gb": {"after_theirs": theirs_peak, "after_ours": peak_gb()},
    }
    print(f"float64, batch of 2 at 480², expressions of 21 and 9 tokens, N = {args.iterations}")
    for name, value in term_differences.items():
        print(f"loss {name}: ours {ours['terms'].get(name, ours['loss'])!r}, relative difference {value:.2e}")
    print(
        f"trained parameters: {len(ours['weight_decay'])} (only theirs: {len(trained['only_theirs'])}, "
        f"only ours: {len(trained['only_ours'])}); weight decay differs on {len(decay_mismatch)}"
    )
    print(f"largest gradient difference: {ours['gradients'][worst_gradient]:.2e} ({worst_gradient})")
    print(f"largest update difference: {ours['updates'][worst_update]:.2e} ({worst_update})")
    zero_report = report["zero_gradient_parameters"]
    worst_zero = max((max(norms) for norms in zero_report.values()), default=0.0)
    print(f"zero by construction: {len(zero_report)} gradients, largest norm {worst_zero:.1e} of the largest gradient")
    print(f"learning rates {rates['ours']} vs {rates['theirs']}: largest relative difference {lr_difference:.2e}")
    print(f"{theirs_seconds:.0f} s theirs, {ours_seconds:.0f} s ours; peak RSS {peak_gb():.1f} GB")
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
