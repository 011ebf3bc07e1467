"""Train METRIS with 🤗 Accelerate, in the style of transformers' `*_no_trainer.py` examples.

    # the authors' recipe (RefCOCO, 40 epochs, 16 images per step over all processes, 480², float32)
    accelerate launch scripts/train.py --dataset refcoco --data_root data --model_name_or_path metris-swinb \\
        --output_dir runs/refcoco
    # a quick CPU run on the synthetic set, tiny model
    python scripts/train.py --dataset synthetic --config_name small --image_size 128 --output_dir runs/small

With no extra flag this trains what the authors' code trains: AdamW (lr 3e-5, weight decay 0.01 on every
parameter but the backbone's norms and position tables), polynomial decay (power 0.9) to 0 over the run, a
global batch of 16, float32, nothing frozen, SyncBatchNorm across GPU processes, REFER's `sent` text cut to 21
tokens ([SEP] kept); the loss (2 × weighted cross-entropy + 0.4 × contrastive BCE, τ stored as τ) and the
initialisation come from the checkpoint's config. Each departure is named: `--mixed_precision bf16`,
`--freeze_text_embeddings word`, `--weight_decay_exempt norms_and_biases`, `--max_length 20`,
`--sentence_field raw`, and `--config_overrides "mask_loss=bce,temperature_parametrization=log_tau"` (for a
fresh model also `weight_init=trunc_normal`). Any config field can be overridden the same way.

A loss that is not finite stops the run at once, naming the step and the batch's ref ids; the states and
models saved before it are kept, nothing is written after it, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, DistributedType, ProjectConfiguration, set_seed, str_to_bool
from datasets.utils import logging as datasets_logging
from huggingface_hub.errors import StrictDataclassError
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModel, AutoProcessor, get_scheduler
from transformers.trainer_pt_utils import get_parameter_names
from transformers.utils import logging as transformers_logging

from metris_hf import MetrisConfig, MetrisForReferringSegmentation, MetrisProcessor
from metris_hf.configuration_metris import parse_config_overrides
from metris_hf.data import add_dataset_arguments, load_dataset_from_args, training_loader
from metris_hf.data.schema import SENTENCE_FIELDS
from metris_hf.evaluation import RESOLUTIONS, evaluate_split
from metris_hf.folders import check_model_source, check_training_state
from metris_hf.presets import PRESETS, preset_config

logger = get_logger("metris.train")

# The authors exempt from weight decay only the backbone's parameters whose name holds one of these (their Swin's
# norms, absolute position embedding and relative-position tables); in our names the backbone is the vision
# encoder (Swin + pixel-word attention) and the stage-4 block and projection, and HF Swin's norms all hold "norm".
AUTHORS_BACKBONE_PREFIXES = ("metris.vision_encoder.", "metris.stage4_")
AUTHORS_NO_DECAY_NAMES = ("norm", "absolute_pos_embed", "position_embeddings", "relative_position_bias_table")


def bounded(convert: type, minimum: int = 0, strict: bool = False):
    """An argparse `type`: an integer (`convert=int`) or a finite number >= `minimum` (> with `strict`), else
    argparse's one-line usage error."""
    what = "an integer" if convert is int else "a number"
    bound = f"at least {minimum}" if convert is int else f"a finite number {'>' if strict else '>='} {minimum}"

    def parse(text: str) -> int | float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not (math.isfinite(value) and (value > minimum if strict else value >= minimum)):
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


bounded_int = partial(bounded, int)
positive_float, non_negative_float = bounded(float, strict=True), bounded(float)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every argument's default in `--help`."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)

    data = parser.add_argument_group("data", "Which dataset, which splits, how images and expressions are prepared")
    add_dataset_arguments(data)
    data.add_argument("--train_split", default="train", help="split to train on")
    data.add_argument("--validation_split", default="val", help="split to validate on (checkpoint selection)")
    data.add_argument(
        "--max_train_samples", type=bounded_int(1), default=None, help="train on the first N objects only"
    )
    data.add_argument(
        "--max_eval_samples", type=bounded_int(1), default=None, help="validate on the first N expressions only"
    )
    data.add_argument("--image_size", type=bounded_int(1), default=480, help="square input size of the processor")
    data.add_argument(
        "--max_length",
        type=bounded_int(2),
        default=21,
        help="expression tokens, [CLS] and [SEP] included (padded / truncated; the authors': 21; 20 the peers')",
    )
    data.add_argument(
        "--sentence_field",
        default="sent",
        choices=SENTENCE_FIELDS,
        help="REFER's text to train on: 'sent' (cleaned, lowercased; the authors') or 'raw' (as typed; LAVT's)",
    )
    data.add_argument(
        "--dataloader_num_workers", type=bounded_int(0), default=0, help="data loading processes per GPU/CPU process"
    )

    model = parser.add_argument_group("model", "A checkpoint to start from, or a config for a fresh model")
    model.add_argument("--model_name_or_path", default=None, help="a checkpoint folder or Hub id to start from")
    model.add_argument(
        "--config_name",
        default=None,
        help="when no checkpoint is given: config.json / folder, or 'default' (full size), "
        "or a preset of metris_hf.presets: 'small' (the embedded checkpoint's shape) or 'tiny'",
    )
    model.add_argument("--processor_name", default=None, help="processor folder / Hub id (None: the model's)")
    model.add_argument(
        "--config_overrides", default=None, help='config fields, e.g. "curation_ratio=0.1,guidance=enhanced_le"'
    )
    model.add_argument(
        "--freeze_text_embeddings",
        default="none",
        choices=["none", "word", "all"],
        help="text-encoder embeddings kept fixed: none (what the authors' code trains: its filter for them "
        "matches no parameter), word (the word embeddings), all (word, position, type and their LayerNorm)",
    )
    model.add_argument(
        "--gradient_checkpointing",
        action="store_true",
        help="recompute the Swin, BERT and METRIS blocks in the backward pass (less memory, more time)",
    )

    optim = parser.add_argument_group(
        "optimisation", "The paper's recipe by default (AdamW 3e-5, polynomial decay, 16 images per step)"
    )
    optim.add_argument(
        "--num_train_epochs", type=bounded_int(1), default=40, help="epochs (ignored with --max_train_steps)"
    )
    optim.add_argument(
        "--max_train_steps", type=bounded_int(1), default=None, help="optimizer steps (None: from the epochs)"
    )
    optim.add_argument(
        "--train_batch_size",
        type=bounded_int(1),
        default=16,
        help="objects per optimizer step over all processes (the paper's 16); each process takes "
        "train_batch_size ÷ processes ÷ gradient_accumulation_steps per forward",
    )
    optim.add_argument(
        "--per_device_eval_batch_size", type=bounded_int(1), default=16, help="expressions per validation batch"
    )
    optim.add_argument("--learning_rate", type=positive_float, default=3e-5, help="peak learning rate of AdamW")
    optim.add_argument("--weight_decay", type=non_negative_float, default=0.01, help="AdamW weight decay")
    optim.add_argument(
        "--weight_decay_exempt",
        default="backbone_norms",
        choices=["backbone_norms", "norms_and_biases"],
        help="parameters without weight decay: backbone_norms (the authors': the backbone's norms, position "
        "embeddings and relative-position tables) or norms_and_biases (every norm and bias and Swin's tables)",
    )
    optim.add_argument("--lr_scheduler_type", default="polynomial", help="any transformers scheduler name")
    optim.add_argument("--lr_power", type=positive_float, default=0.9, help="power of the polynomial decay")
    optim.add_argument("--num_warmup_steps", type=bounded_int(0), default=0, help="linear warm-up steps")
    optim.add_argument(
        "--gradient_accumulation_steps", type=bounded_int(1), default=1, help="forwards accumulated per update"
    )
    optim.add_argument(
        "--max_grad_norm", type=positive_float, default=None, help="gradient clipping norm (None: no clipping)"
    )
    optim.add_argument("--seed", type=bounded_int(0), default=42, help="seed of initialisation, data order, sentences")
    optim.add_argument(
        "--mixed_precision",
        default="no",
        choices=["no", "bf16", "fp16"],
        help="no: float32, as the authors train; bf16: autocast (rounds the cosine scores the top-30%% curation "
        "ranks to ~0.004)",
    )
    optim.add_argument(
        "--sync_batchnorm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with several GPU processes, normalise the decoder's BatchNorm over the global batch, as the "
        "authors do (torch's SyncBatchNorm runs on GPUs only: CPU processes each normalise over their own batch)",
    )
    optim.add_argument(
        "--torch_compile",
        nargs="?",
        const="inductor",
        default=None,
        choices=["inductor", "aot_eager", "eager", "cudagraphs"],
        help="torch.compile the whole model through Accelerate (no value: inductor; aot_eager traces the forward "
        "and backward graphs without generating code); None: what `accelerate config` says",
    )

    run = parser.add_argument_group("run", "Where results go, checkpoints, validation, tracking, the Hub")
    run.add_argument("--output_dir", required=True, help="final model, best/, step_N/ or epoch_N/ states, logs")
    run.add_argument("--checkpointing_steps", default=None, help="save the training state every N steps, or 'epoch'")
    run.add_argument("--resume_from_checkpoint", default=None, help="a step_N/ or epoch_N/ folder, or 'latest'")
    run.add_argument("--eval_every", type=bounded_int(0), default=1, help="validate every N epochs (0: never)")
    run.add_argument(
        "--logging_steps", type=bounded_int(1), default=10, help="log the loss and each of its terms every N steps"
    )
    run.add_argument(
        "--eval_resolution",
        default="model",
        choices=RESOLUTIONS,
        help="compare masks at the model's input size (the paper's protocol) or the image's own",
    )
    run.add_argument("--with_tracking", action="store_true", help="log loss, learning rate and validation figures")
    run.add_argument("--report_to", default="tensorboard", help="tracker for --with_tracking")
    run.add_argument("--push_to_hub", action="store_true", help="upload the final model and processor")
    run.add_argument("--hub_model_id", default=None, help="Hub repository for --push_to_hub")
    args = parser.parse_args(argv)
    validate_args(args, parser)
    return args


def validate_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Fail fast, before anything heavy runs."""
    if args.dataset != "synthetic":
        if args.data_root is None:
            parser.error(f"--data_root is required for --dataset {args.dataset}")
        if not Path(args.data_root).is_dir():
            parser.error(f"--data_root {args.data_root} is not a folder")
    if args.model_name_or_path is None and args.config_name is None:
        parser.error("give --model_name_or_path (a checkpoint) or --config_name (a fresh model)")
    if args.checkpointing_steps not in (None, "epoch") and not (
        str(args.checkpointing_steps).isdigit() and int(args.checkpointing_steps) > 0
    ):
        parser.error(f"--checkpointing_steps must be a positive integer or 'epoch', got {args.checkpointing_steps!r}")
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id")
    try:
        args.config_overrides = parse_config_overrides(args.config_overrides)
        if args.model_name_or_path:
            check_model_source(args.model_name_or_path, "--model_name_or_path")
        if args.resume_from_checkpoint not in (None, "latest"):
            check_training_state(args.resume_from_checkpoint)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))


def build_model_and_processor(args):
    config = build_config_checked(args)
    if args.model_name_or_path:
        model = AutoModel.from_pretrained(args.model_name_or_path, config=config)
        processor = AutoProcessor.from_pretrained(args.processor_name or args.model_name_or_path)
    else:
        model = MetrisForReferringSegmentation(config)
        if args.processor_name:
            processor = AutoProcessor.from_pretrained(args.processor_name)
        elif args.dataset == "synthetic":
            from metris_hf.data import build_synthetic_tokenizer

            processor = MetrisProcessor(tokenizer=build_synthetic_tokenizer())
        else:
            raise SystemExit("a fresh model on a real dataset needs --processor_name (image processor + tokenizer)")
    processor.image_processor.size = {"height": args.image_size, "width": args.image_size}
    processor.max_length = args.max_length
    return model, processor


def build_config_checked(args):
    """The model's config, checked against --image_size before any data is loaded (see `check_input_size`)."""
    try:  # a wrong type or value in --config_overrides: one line naming the field, not a traceback
        if args.model_name_or_path:
            config = AutoConfig.from_pretrained(args.model_name_or_path, **args.config_overrides)
        elif args.config_name in PRESETS:
            config = preset_config(args.config_name, **args.config_overrides)
        elif args.config_name == "default":
            config = MetrisConfig(**args.config_overrides)
        else:
            config = MetrisConfig.from_pretrained(args.config_name, **args.config_overrides)
    except (TypeError, ValueError, StrictDataclassError) as error:  # strict's message spans two lines
        raise SystemExit(f"--config_overrides: {' '.join(str(error).split())}") from None
    try:
        config.check_input_size(args.image_size)
    except ValueError as error:
        raise SystemExit(f"--image_size {args.image_size}: {error}") from None
    return config


def freeze_text_embeddings(model: torch.nn.Module, which: str) -> None:
    """`none` (the authors' code trains everything), `word` (the word embeddings) or `all` the text embeddings."""
    if which == "word":
        model.get_input_embeddings().requires_grad_(False)
    elif which == "all":
        model.metris.text_encoder.embeddings.requires_grad_(False)


def parameter_groups(model: torch.nn.Module, weight_decay: float, exempt: str = "backbone_norms") -> list[dict]:
    """AdamW groups of the trained parameters: `weight_decay` on all but the exempt ones.

    `backbone_norms` (the authors'): exempt only the backbone's parameters named for norms, position embeddings
    and relative-position tables; every other parameter, BERT's and the decoder's norms and biases and τ
    included, decays. `norms_and_biases`: exempt every norm layer's parameters, every bias and Swin's tables.
    """
    names = [name for name, _ in model.named_parameters()]
    if exempt == "backbone_norms":
        no_decay = {
            n for n in names if n.startswith(AUTHORS_BACKBONE_PREFIXES) and any(p in n for p in AUTHORS_NO_DECAY_NAMES)
        }
    else:
        norms = [torch.nn.LayerNorm, torch.nn.BatchNorm2d, torch.nn.SyncBatchNorm, torch.nn.GroupNorm]
        no_decay = set(names) - set(
            get_parameter_names(model, norms, [r"(^|\.)bias$", "relative_position_bias_table"])
        )
    decay, plain = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (plain if name in no_decay else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def set_cpu_threads() -> int:
    """Threads per process = the cores this process may use ÷ processes on this machine, unless the user set
    OMP_NUM_THREADS (`accelerate launch` sets it from `--num_cpu_threads_per_process`): 2 processes of 2 threads
    each on 2 cores ran 7–12× slower than 2 of 1."""
    if "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, cores // max(1, local)))
    return torch.get_num_threads()


def check_finite(
    accelerator: Accelerator, losses: torch.Tensor, ref_ids: torch.Tensor, step: int, output_dir: str
) -> torch.Tensor:
    """Stops every process at the first non-finite loss of any of them, naming the step and the batch's ref ids
    (all processes' batches) and the last state or model saved, which nothing will overwrite. `losses` holds
    the loss then its terms; returns their mean over the processes (one collective for both jobs)."""
    losses = accelerator.gather(losses.detach().float().reshape(1, -1))
    if torch.isfinite(losses[:, 0]).all():
        return losses.mean(0)
    ref_ids = accelerator.gather(ref_ids).tolist()
    value = losses[~torch.isfinite(losses[:, 0]), 0][0].item()
    kept = latest_checkpoint(output_dir)
    best = Path(output_dir) / "best" / "model.safetensors"
    saved = [path for path in (kept, str(best.parent) if best.exists() else None) if path]
    raise SystemExit(
        f"error: the loss is {value} at step {step} (batch of ref ids {ref_ids}); training stopped. "
        + (f"Last good checkpoint: {', '.join(saved)}" if saved else "No checkpoint was saved before it.")
    )


def check_distribution(accelerator: Accelerator) -> None:
    """Accelerate falls back quietly where it cannot distribute as launched (measured with accelerate 1.16 on CPU):
    FSDP becomes DDP under ACCELERATE_USE_CPU, and processes launched without it on a machine with no GPU each
    train alone on the whole data, writing the same files. The first is worth a warning, the second an error; so is
    fp16 on CPU, where Accelerate's autocast has no float16 and the run would silently be float32."""
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise SystemExit("--mixed_precision fp16 needs a GPU; on CPU use bf16 (or no)")
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes == 1:
        raise SystemExit(
            f"error: launched as {launched} processes, but Accelerate runs each alone (distributed type "
            f"{accelerator.distributed_type.value}); on CPU set ACCELERATE_USE_CPU=true"
        )
    fsdp_asked = str_to_bool(os.environ.get("ACCELERATE_USE_FSDP", "false"))
    if fsdp_asked and accelerator.distributed_type != DistributedType.FSDP:
        logger.warning(
            "FSDP was asked for, but Accelerate runs %s (DDP: each process holds the whole model); FSDP needs GPUs",
            accelerator.distributed_type.value,
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    threads = set_cpu_threads()
    project = ProjectConfiguration(project_dir=args.output_dir, automatic_checkpoint_naming=False)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        dynamo_backend=args.torch_compile,
        log_with=args.report_to if args.with_tracking else None,
        project_config=project,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    # errors only from the other processes: their logs (the script's, the data's, the libraries') repeat the main's
    level = logging.INFO if accelerator.is_local_main_process else logging.ERROR
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level)
    if not accelerator.is_local_main_process:
        transformers_logging.set_verbosity_error()
        datasets_logging.set_verbosity_error()
    check_distribution(accelerator)
    per_forward = args.gradient_accumulation_steps * accelerator.num_processes
    if args.train_batch_size % per_forward:
        raise SystemExit(
            f"error: --train_batch_size {args.train_batch_size} is not divisible by {accelerator.num_processes} "
            f"process(es) × {args.gradient_accumulation_steps} accumulation step(s)"
        )
    per_device_batch = args.train_batch_size // per_forward
    set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)

    build_config_checked(args)  # a wrong --image_size fails now, not after the data is built
    with accelerator.main_process_first():
        datasets = load_dataset_from_args(args, sentence_field=args.sentence_field)
    for split in (args.train_split, args.validation_split):
        if (args.eval_every or split == args.train_split) and split not in datasets:
            raise SystemExit(f"split {split!r} is not in {args.dataset}: it has {sorted(datasets)}")
    train_data = datasets[args.train_split]
    if args.max_train_samples:
        train_data = train_data.select(range(min(args.max_train_samples, len(train_data))))

    model, processor = build_model_and_processor(args)
    freeze_text_embeddings(model, args.freeze_text_embeddings)
    if model.config.contrastive_loss_weight == 0:  # nothing trains τ then: DDP refuses a parameter with no gradient
        for name, param in model.named_parameters():
            if name.rsplit(".", 1)[-1] in ("temperature", "log_temperature"):
                param.requires_grad_(False)
    sync_batchnorm = (
        args.sync_batchnorm
        and accelerator.distributed_type == DistributedType.MULTI_GPU
        and accelerator.device.type == "cuda"
    )
    if sync_batchnorm:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif args.sync_batchnorm and accelerator.num_processes > 1:
        logger.warning(
            "SyncBatchNorm runs on GPUs only: each of the %d %s processes normalises over its own batch of %d",
            accelerator.num_processes,
            accelerator.device.type,
            per_device_batch,
        )
    if args.gradient_checkpointing:
        # transformers 5 renamed it; the old name still works there but warns
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()

    # --image_size / --max_length are in the processor
    train_loader, transform = training_loader(
        train_data, processor, per_device_batch, num_workers=args.dataloader_num_workers, seed=args.seed
    )
    if not len(train_loader):  # the loader drops an incomplete last batch
        raise SystemExit(f"error: {len(train_data)} training objects make no batch of {per_device_batch} per process")
    optimizer = torch.optim.AdamW(
        parameter_groups(model, args.weight_decay, args.weight_decay_exempt), lr=args.learning_rate
    )

    steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps / accelerator.num_processes)
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * steps_per_epoch
    args.num_train_epochs = math.ceil(args.max_train_steps / steps_per_epoch)
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=args.num_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
        scheduler_specific_kwargs={"power": args.lr_power, "lr_end": 0.0}
        if args.lr_scheduler_type == "polynomial"
        else None,
    )
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)

    if args.with_tracking:
        accelerator.init_trackers(
            "metris", {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        )

    completed_steps, start_epoch, resume_batches = 0, 0, 0
    if args.resume_from_checkpoint:
        path = (
            latest_checkpoint(args.output_dir)
            if args.resume_from_checkpoint == "latest"
            else args.resume_from_checkpoint
        )
        if path is None:
            logger.info("no checkpoint in %s: starting from scratch", args.output_dir)
        else:
            accelerator.print(f"resuming from {path}")
            accelerator.load_state(path)
            completed_steps = json.loads((Path(path) / "progress.json").read_text())["completed_steps"]
            start_epoch = completed_steps // steps_per_epoch
            resume_batches = (completed_steps % steps_per_epoch) * args.gradient_accumulation_steps

    config = accelerator.unwrap_model(model).config
    logger.info(
        f"{len(train_data)} samples, {args.num_train_epochs} epochs, {args.max_train_steps} steps of "
        f"{args.train_batch_size} objects = {per_device_batch} × {accelerator.num_processes} process(es) × "
        f"{args.gradient_accumulation_steps} accumulation; {threads} CPU thread(s) per process"
    )
    logger.info(
        f"recipe: mask loss {config.mask_loss_weight} × {config.mask_loss}, contrastive × "
        f"{config.contrastive_loss_weight}, τ as {getattr(config, 'temperature_parametrization', 'log_tau')}, "
        f"precision {accelerator.mixed_precision}, frozen text embeddings: {args.freeze_text_embeddings}, no weight "
        f"decay on: {args.weight_decay_exempt}, SyncBatchNorm: {'yes' if sync_batchnorm else 'no'}, REFER text "
        f"{args.sentence_field!r}, {processor.max_length} tokens"
    )
    progress = tqdm(
        range(args.max_train_steps), initial=completed_steps, disable=not accelerator.is_local_main_process
    )
    best_oiou = -1.0
    best_path = Path(args.output_dir) / "best"
    if (best_path / "eval_results.json").exists():
        best_oiou = json.loads((best_path / "eval_results.json").read_text()).get("oIoU", -1.0)

    logged_sum: torch.Tensor | None = None
    with progress:  # closed before an error, whose message is the last line
        for epoch in range(start_epoch, args.num_train_epochs):
            model.train()
            transform.set_epoch(epoch)
            train_loader.set_epoch(epoch)
            loader = train_loader
            if epoch == start_epoch and resume_batches:
                loader = accelerator.skip_first_batches(train_loader, resume_batches)
            for batch in loader:
                ref_ids = batch.pop("ref_ids")
                with accelerator.accumulate(model):
                    outputs = model(**batch)
                    loss = outputs.loss
                    terms = getattr(outputs, "loss_terms", None) or {}
                    losses = torch.stack([loss, *terms.values()])
                    means = check_finite(accelerator, losses, ref_ids, completed_steps + 1, args.output_dir)
                    # what is logged: the mean over the processes and the accumulated batches of the global batch
                    logged_sum = means if logged_sum is None else logged_sum + means
                    accelerator.backward(loss)
                    if args.max_grad_norm and accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                if not accelerator.sync_gradients:
                    continue
                completed_steps += 1
                progress.update(1)
                lr = scheduler.get_last_lr()[0]
                step_loss, *step_terms = (logged_sum / args.gradient_accumulation_steps).tolist()
                logged_sum = None
                terms = dict(zip(terms, step_terms))
                progress.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
                if completed_steps % args.logging_steps == 0 or completed_steps == 1:
                    logger.info(
                        "step %d: loss %.4f (%s), lr %.3e",
                        completed_steps,
                        step_loss,
                        ", ".join(f"{name} {value:.4f}" for name, value in terms.items()),
                        lr,
                    )
                if args.with_tracking:
                    logged = {"train/loss": step_loss, "train/lr": lr, "epoch": epoch}
                    logged.update({f"train/loss_{name}": value for name, value in terms.items()})
                    accelerator.log(logged, step=completed_steps)
                if (
                    args.checkpointing_steps
                    and args.checkpointing_steps.isdigit()
                    and completed_steps % int(args.checkpointing_steps) == 0
                ):
                    save_checkpoint(accelerator, args.output_dir, f"step_{completed_steps}", completed_steps)
                if completed_steps >= args.max_train_steps:
                    break
            if args.checkpointing_steps == "epoch":
                save_checkpoint(accelerator, args.output_dir, f"epoch_{epoch}", completed_steps)
            if args.eval_every and ((epoch + 1) % args.eval_every == 0 or completed_steps >= args.max_train_steps):
                results = evaluate_split(
                    accelerator.unwrap_model(model),
                    processor,
                    datasets[args.validation_split],
                    args.dataset,
                    args.max_eval_samples,
                    resolution=args.eval_resolution,
                    batch_size=args.per_device_eval_batch_size,
                    accelerator=accelerator,
                )
                if results is not None:  # the main process's
                    results.setdefault("oIoU", results.get("cIoU"))  # gRefCOCO keeps the best by cIoU
                    figures = {k: v for k, v in results.items() if isinstance(v, float)}
                    accelerator.print(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in figures.items()))
                    if args.with_tracking:
                        accelerator.log({f"eval/{k}": v for k, v in figures.items()}, step=completed_steps)
                    if results["oIoU"] > best_oiou:
                        best_oiou = results["oIoU"]
                        write_model(accelerator, model, processor, best_path, results)  # main process only
            if completed_steps >= args.max_train_steps:
                break

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_model(accelerator, model, processor, Path(args.output_dir))
    accelerator.wait_for_everyone()
    if args.push_to_hub and accelerator.is_main_process:
        accelerator.unwrap_model(model).push_to_hub(args.hub_model_id)
        processor.push_to_hub(args.hub_model_id)
    # last: it also ends the process group, which the save's barrier needs (several processes with --with_tracking
    # failed there with "Default process group has not been initialized")
    accelerator.end_training()


def save_checkpoint(accelerator: Accelerator, output_dir: str, name: str, completed_steps: int) -> None:
    path = Path(output_dir) / name
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        # progress.json marks the state complete (`latest_checkpoint` skips a folder without it); written whole
        # or not at all, so a kill at any moment never leaves a truncated one for the resumed run to choke on
        staged = path / "progress.json.tmp"
        staged.write_text(json.dumps({"completed_steps": completed_steps}))
        os.replace(staged, path / "progress.json")
    accelerator.wait_for_everyone()


def latest_checkpoint(output_dir: str) -> str | None:
    states = [p / "progress.json" for p in Path(output_dir).glob("*_*") if (p / "progress.json").exists()]
    steps = {str(state.parent): json.loads(state.read_text())["completed_steps"] for state in states}
    return max(steps, key=steps.get) if steps else None


def write_model(accelerator: Accelerator, model, processor, path: Path, results: dict | None = None) -> None:
    """The model folder (weights, processor, figures); called by the main process alone."""
    path.mkdir(parents=True, exist_ok=True)
    accelerator.unwrap_model(model).save_pretrained(path)
    processor.save_pretrained(path)
    if results is not None:
        (path / "eval_results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
