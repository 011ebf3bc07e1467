"""scripts/train.py, run_evaluation.py, init_checkpoint.py on the synthetic set and tiny models: no downloads."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
TRAIN = str(SCRIPTS / "train.py")

QUICK = [
    "--dataset",
    "synthetic",
    "--synthetic_size",
    "24",
    "8",
    "8",
    "--config_name",
    "tiny",
    "--image_size",
    "64",
    "--train_batch_size",
    "4",
    "--per_device_eval_batch_size",
    "8",
    "--learning_rate",
    "1e-3",
    "--seed",
    "7",
]


pytestmark = pytest.mark.usefixtures("datasets_cache")


def run(args, cwd=ROOT, env_extra=None, expect=0):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env_extra or {})}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if expect is not None:
        assert result.returncode == expect, (
            f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


def weights(folder):
    return load_file(str(Path(folder) / "model.safetensors"))


CPU_PROCESSES = {"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}


def launch_command(num_processes: int, script: str, *args: str, topology: tuple[str, ...] = ()) -> list[str]:
    # `--cpu --num_processes 2` starts ONE process (accelerate reads --cpu as "no distribution"); several CPU
    # processes need the multi-GPU launcher with ACCELERATE_USE_CPU, which then uses gloo.
    topology = topology or ("--multi_gpu" if num_processes > 1 else "--cpu", "--num_machines", "1")
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *topology,
        "--num_processes",
        str(num_processes),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        script,
        *args,
    ]


def accelerate_launch(num_processes: int, script: str, *args: str):
    return run(launch_command(num_processes, script, *args), env_extra=CPU_PROCESSES if num_processes > 1 else None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, datasets_cache) -> Path:
    """Two epochs of a tiny model through `accelerate launch` on one process, as a user would start it."""
    out = tmp_path_factory.mktemp("train") / "run"
    accelerate_launch(
        1,
        TRAIN,
        *QUICK,
        "--output_dir",
        str(out),
        "--num_train_epochs",
        "2",
        "--with_tracking",
        "--checkpointing_steps",
        "epoch",
    )
    return out


def test_train_saves_model_best_checkpoint_states_and_logs(trained):
    assert (trained / "model.safetensors").exists() and (trained / "processor_config.json").exists()
    best = json.loads((trained / "best" / "eval_results.json").read_text())
    assert set(best) >= {"oIoU", "mIoU", "P@0.5", "P@0.7", "P@0.9"}
    assert list(trained.rglob("events.out.tfevents*"))
    assert json.loads((trained / "epoch_1" / "progress.json").read_text())["completed_steps"] == 12  # 24 / 4 × 2

    from transformers import AutoModel

    import metris_hf  # noqa: F401

    assert type(AutoModel.from_pretrained(trained)).__name__ == "MetrisForReferringSegmentation"


def evaluate_args(model: Path, out: Path) -> list[str]:
    return [
        "--model_name_or_path",
        str(model),
        "--dataset",
        "synthetic",
        "--synthetic_size",
        "24",
        "8",
        "8",
        "--splits",
        "val",
        "test",
        "--per_device_eval_batch_size",
        "3",
        "--output_dir",
        str(out),
    ]


def test_evaluate_prints_and_writes_the_table(trained, tmp_path):
    result = run([sys.executable, str(SCRIPTS / "run_evaluation.py"), *evaluate_args(trained, tmp_path / "eval")])
    assert "| val |" in result.stdout and "| test |" in result.stdout and "oIoU" in result.stdout
    (results,) = (tmp_path / "eval").glob("results_synthetic_model_*.json")  # + the data's id
    table = json.loads(results.read_text())
    assert set(table["splits"]) == {"val", "test"}
    for row in table["splits"].values():
        assert 0.0 <= row["oIoU"] <= 1.0 and row["samples"] > 0
    assert results.with_suffix(".md").read_text().startswith("**")


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is refused on CPU only")
def test_evaluate_refuses_fp16_on_cpu(trained, tmp_path):
    args = [*evaluate_args(trained, tmp_path / "eval"), "--mixed_precision", "fp16"]
    result = run([sys.executable, str(SCRIPTS / "run_evaluation.py"), *args], expect=1)
    assert "--mixed_precision fp16 needs a GPU" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_evaluate_on_two_processes_gives_the_figures_of_one(trained, tmp_path):
    accelerate_launch(1, str(SCRIPTS / "run_evaluation.py"), *evaluate_args(trained, tmp_path / "one"))
    accelerate_launch(2, str(SCRIPTS / "run_evaluation.py"), *evaluate_args(trained, tmp_path / "two"))
    one = json.loads(next((tmp_path / "one").glob("results_synthetic_model_*.json")).read_text())
    two = json.loads(next((tmp_path / "two").glob("results_synthetic_model_*.json")).read_text())
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    one, two = one["splits"], two["splits"]
    assert one.keys() == two.keys()
    for split in one:
        assert one[split]["samples"] == two[split]["samples"]
        for key in ("oIoU", "mIoU", "P@0.5", "P@0.7", "P@0.9"):
            assert two[split][key] == pytest.approx(one[split][key], abs=1e-6), (split, key)


def kill_after_first_checkpoint(args: list[str], output_dir: Path, timeout: float = 300.0) -> None:
    """Starts a training run and SIGKILLs it as soon as its first `step_N` state is complete (its progress.json
    is written last): the run dies wherever it happens to be, as it would on a lost machine."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = output_dir.parent / f"{output_dir.name}.log"  # a file, not a pipe: a full pipe would stall the run
    with open(log, "w") as sink:
        process = subprocess.Popen(
            [*args, "--output_dir", str(output_dir)], cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + timeout
            while not list(output_dir.glob("step_*/progress.json")):
                assert process.poll() is None, (
                    f"exit {process.returncode} before any checkpoint\n{log.read_text()[-5000:]}"
                )
                assert time.monotonic() < deadline, f"no checkpoint after {timeout:.0f} s\n{log.read_text()[-5000:]}"
                time.sleep(0.02)
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()  # a no-op once it is dead; never leave a run behind a failed assertion
            process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, (
        f"the run ended on its own (exit {process.returncode}) before the kill"
    )


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted(tmp_path):
    # 12 steps, a state every 2: the kill comes after step 2, with 10 steps left to land in
    common = [
        sys.executable,
        TRAIN,
        *QUICK,
        "--max_train_steps",
        "12",
        "--eval_every",
        "0",
        "--checkpointing_steps",
        "2",
    ]
    run([*common, "--output_dir", str(tmp_path / "straight")])
    kill_after_first_checkpoint(common, tmp_path / "killed")
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    resumed_run = run([*common, "--output_dir", str(tmp_path / "killed"), "--resume_from_checkpoint", "latest"])
    assert "resuming from" in resumed_run.stdout  # from scratch would give the same weights, and prove nothing
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "killed")
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.slow
def test_gradient_checkpointing_trains_to_the_same_weights(tmp_path):
    common = [sys.executable, TRAIN, *QUICK, "--max_train_steps", "2", "--eval_every", "0"]
    run([*common, "--output_dir", str(tmp_path / "stored")])
    run([*common, "--output_dir", str(tmp_path / "recomputed"), "--gradient_checkpointing"])
    stored, recomputed = weights(tmp_path / "stored"), weights(tmp_path / "recomputed")
    assert stored.keys() == recomputed.keys()
    for name in stored:
        torch.testing.assert_close(recomputed[name], stored[name], rtol=0, atol=1e-5, msg=name)


def logged_losses(output_dir: Path) -> list[float]:
    """`train/loss` of each step, as `--with_tracking` logged it (TensorBoard)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = output_dir.glob("metris/events.out.tfevents*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    return [event.value for event in accumulator.Scalars("train/loss")]


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory) -> list[str]:
    """Two steps of the global batch of 4, logged, on the tiny model without dropout or drop-path (each process
    draws its own masks: with them no two process counts could agree)."""
    from metris_hf.presets import tiny_bert_config, tiny_metris_config, tiny_swin_config

    config = tmp_path_factory.mktemp("no_dropout")
    tiny_metris_config(
        drop_path_rate=0.0,
        backbone_config=tiny_swin_config(drop_path_rate=0.0),
        text_config=tiny_bert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
    ).save_pretrained(config)
    return [*QUICK, "--config_name", str(config), "--max_train_steps", "2", "--eval_every", "0", "--with_tracking"]


@pytest.fixture(scope="module")
def one_process_losses(two_steps, tmp_path_factory) -> list[float]:
    """The same global batch on one process, as two accumulated batches of 2: BatchNorm normalises over each
    forward's batch and the class-weighted cross-entropy over each forward's pixels, so 2 processes × 2 must
    equal this, not one batch of 4 (which differs by ~5e-3)."""
    out = tmp_path_factory.mktemp("one") / "run"
    run([sys.executable, TRAIN, *two_steps, "--gradient_accumulation_steps", "2", "--output_dir", str(out)])
    losses = logged_losses(out)
    assert len(losses) == 2 and losses[0] != losses[1]
    return losses


@pytest.mark.slow
def test_two_processes_with_accelerate(tmp_path, two_steps, one_process_losses):
    out = tmp_path / "ddp"
    # --sync_batchnorm is GPU-only: on CPU each process keeps its own statistics, with a warning
    result = accelerate_launch(2, TRAIN, *two_steps, "--output_dir", str(out), "--eval_every", "1", "--sync_batchnorm")
    assert "SyncBatchNorm runs on GPUs only: each of the 2 cpu processes normalises over its own batch of 2" in (
        result.stderr
    )
    assert result.stderr.count("loading the cached build") <= 1  # the data's log: the main process's alone
    assert logged_losses(out) == pytest.approx(one_process_losses, abs=1e-5)
    assert (out / "model.safetensors").exists()
    assert json.loads((out / "best" / "eval_results.json").read_text())["oIoU"] >= 0.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_machines_on_loopback(tmp_path, two_steps, one_process_losses):
    """Two `accelerate launch`es of one process each, machine ranks 0 and 1, meeting on 127.0.0.1."""
    out, port = tmp_path / "run", free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **CPU_PROCESSES}
    logs = [tmp_path / f"machine_{rank}.log" for rank in (0, 1)]
    machines = []
    try:
        for rank, log in enumerate(logs):
            topology = ("--multi_gpu", "--num_machines", "2", "--machine_rank", str(rank))
            topology += ("--main_process_ip", "127.0.0.1", "--main_process_port", str(port))
            command = launch_command(2, TRAIN, *two_steps, "--output_dir", str(out), topology=topology)
            with open(log, "w") as sink:  # a file, not a pipe: a full pipe would stall the run
                machines.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT))
        codes = [machine.wait(timeout=600) for machine in machines]
    finally:
        for machine in machines:
            machine.kill()  # a no-op once it has ended
            machine.wait(timeout=60)
    assert codes == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs)
    assert logged_losses(out) == pytest.approx(one_process_losses, abs=1e-5)


@pytest.mark.slow
def test_fsdp_on_cpu_is_refused_or_runs_as_ddp(tmp_path, two_steps, one_process_losses):
    def launch(version: str, env: dict[str, str], out: str):
        topology = ("--use_fsdp", "--fsdp_version", version, "--num_machines", "1")
        topology += ("--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP")
        topology += ("--fsdp_transformer_layer_cls_to_wrap", "SwinLayer,BertLayer")
        command = launch_command(2, TRAIN, *two_steps, "--output_dir", str(tmp_path / out), topology=topology)
        return run(command, env_extra=env, expect=None)

    # FSDP1: the launcher's default efficient loading broadcasts the weights from one process, refused on CPU
    refused = launch("1", CPU_PROCESSES, "fsdp1")
    assert refused.returncode != 0
    assert "FSDP parameter initialization with `sync_module_states=True` is not supported on cpu." in refused.stderr
    # FSDP2 under ACCELERATE_USE_CPU: Accelerate runs DDP instead, which train.py says
    ddp = launch("2", CPU_PROCESSES, "fsdp2")
    assert ddp.returncode == 0, ddp.stderr[-5000:]
    assert "FSDP was asked for, but Accelerate runs MULTI_CPU" in ddp.stderr
    assert logged_losses(tmp_path / "fsdp2") == pytest.approx(one_process_losses, abs=1e-5)
    # without it, Accelerate would run each process alone on the whole data: train.py stops them
    alone = launch("2", {"OMP_NUM_THREADS": "1"}, "alone")
    assert alone.returncode != 0
    assert "error: launched as 2 processes, but Accelerate runs each alone (distributed type NO)" in alone.stderr
    assert not (tmp_path / "alone" / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        "contrastive_loss_weight=0",  # Table 8a: τ must not wait for a gradient that never comes
        "guidance=pure_le",
        "guidance=enhanced_le",
        "guidance=ve_only",
        "guidance=all_pixels",
        "no_target_head=True,mask_loss=weighted_ce",
        "use_refinement=False,use_relation=False,linguistic_cues=local",
    ],
)
def test_every_configuration_trains_under_two_process_ddp(tmp_path, datasets_cache, overrides):
    """DDP fails at the second step when a parameter gets no gradient: three steps on two processes prove none."""
    out = tmp_path / "ddp"
    accelerate_launch(
        2,
        TRAIN,
        *QUICK,
        "--output_dir",
        str(out),
        "--max_train_steps",
        "3",
        "--eval_every",
        "0",
        "--config_overrides",
        overrides,
    )
    assert (out / "model.safetensors").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "imagenet"], "invalid choice"),
        (["--dataset", "refcoco", "--data_root", "/no/such/folder"], "is not a folder"),
        (["--dataset", "refcoco"], "--data_root is required"),
        (
            ["--dataset", "synthetic", "--config_name", "tiny", "--config_overrides", "no_such_field=1"],
            "no_such_field",
        ),
        (["--dataset", "synthetic", "--config_name", "tiny", "--config_overrides", "curation_ratio"], "field=value"),
        (["--dataset", "synthetic"], "--model_name_or_path"),
        (["--dataset", "synthetic", "--config_name", "tiny", "--checkpointing_steps", "often"], "checkpointing_steps"),
    ],
)
def test_bad_arguments_fail_fast(tmp_path, args, message):
    result = run([sys.executable, TRAIN, *args, "--output_dir", str(tmp_path / "x")], expect=2)
    assert message in result.stderr
    assert not (tmp_path / "x").exists()  # nothing was written before the check


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is refused on CPU only")
def test_train_refuses_fp16_on_cpu(tmp_path):
    args = ["--dataset", "synthetic", "--config_name", "tiny", "--mixed_precision", "fp16"]
    result = run([sys.executable, TRAIN, *args, "--output_dir", str(tmp_path / "x")], expect=1)
    assert "--mixed_precision fp16 needs a GPU" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()


def test_train_set_smaller_than_a_batch_is_refused(tmp_path):
    args = ["--dataset", "synthetic", "--synthetic_size", "8", "4", "4", "--config_name", "tiny"]
    args += ["--max_train_samples", "3", "--train_batch_size", "4", "--output_dir", str(tmp_path / "x")]
    result = run([sys.executable, TRAIN, *args], expect=1)
    assert "3 training objects make no batch of 4 per process" in result.stderr and "Traceback" not in result.stderr


def test_bad_override_value_names_the_field(tmp_path):
    result = run(
        [
            sys.executable,
            TRAIN,
            "--dataset",
            "synthetic",
            "--config_name",
            "tiny",
            "--config_overrides",
            "curation_ratio=3",
            "--output_dir",
            str(tmp_path / "x"),
        ],
        expect=None,
    )
    assert result.returncode != 0 and "curation_ratio" in result.stderr


@pytest.fixture(scope="module")
def initialised(tmp_path_factory) -> tuple[Path, torch.nn.Module, torch.nn.Module]:
    """scripts/init_checkpoint.py's output from a local tiny Swin and BERT, with those two."""
    from transformers import BertModel, SwinModel

    from helpers import build_tiny_tokenizer
    from metris_hf.testing_utils import tiny_bert_config, tiny_swin_config

    tmp_path = tmp_path_factory.mktemp("init")
    torch.manual_seed(0)
    swin = SwinModel(tiny_swin_config())
    swin.save_pretrained(tmp_path / "swin")
    bert = BertModel(tiny_bert_config())
    bert.save_pretrained(tmp_path / "bert")
    build_tiny_tokenizer().save_pretrained(tmp_path / "bert")
    run(
        [
            sys.executable,
            str(SCRIPTS / "init_checkpoint.py"),
            "--vision",
            str(tmp_path / "swin"),
            "--text",
            str(tmp_path / "bert"),
            "--output_dir",
            str(tmp_path / "init"),
            "--image_size",
            "64",
            "--config_overrides",
            "hidden_size=32,num_attention_heads=4,joint_dim=16",
        ]
    )
    return tmp_path / "init", swin, bert


def test_init_checkpoint_from_local_encoders(initialised):
    folder, swin, bert = initialised
    from PIL import Image
    from transformers import AutoModel, AutoProcessor

    import metris_hf  # noqa: F401

    model = AutoModel.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    loaded = model.state_dict()  # compared after loading: transformers may rename keys in the file
    vision = {name: value for name, value in swin.state_dict().items() if not name.startswith("layernorm.")}
    for name, value in vision.items():  # every Swin tensor but the classifier's final norm is carried over
        torch.testing.assert_close(loaded[f"metris.vision_encoder.backbone.swin.{name}"], value, msg=name)
    torch.testing.assert_close(
        loaded["metris.text_encoder.embeddings.word_embeddings.weight"],
        bert.state_dict()["embeddings.word_embeddings.weight"],
    )
    inputs = processor(images=[Image.new("RGB", (50, 70))], text=["the red circle"], return_tensors="pt")
    assert inputs["pixel_values"].shape[-1] == 64
    assert model(**inputs).logits.shape == (1, 1, 16, 16)


def test_init_checkpoint_gates_are_open_and_learn_in_train(initialised, tmp_path):
    """The language gates of a fresh init are not zero (two zero layers would never get a gradient) and one
    step of train.py moves every one of them (no weight decay: only a gradient can)."""
    folder, _, _ = initialised
    out = tmp_path / "run"
    run(
        [
            sys.executable,
            TRAIN,
            *QUICK,
            "--model_name_or_path",
            str(folder),
            "--max_train_steps",
            "1",
            "--eval_every",
            "0",
            "--weight_decay",
            "0",
            "--output_dir",
            str(out),
        ]
    )
    before, after = weights(folder), weights(out)
    gates = [name for name in before if ".gate." in name and name.endswith(".weight")]
    assert len(gates) == 2 * 3  # Linear, ReLU, Linear, Tanh after each of the first three stages
    for name in gates:
        assert before[name].abs().max() > 0, name
        assert (after[name] - before[name]).abs().max() > 0, name
