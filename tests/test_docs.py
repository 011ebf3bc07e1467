"""Every fenced ```python and ```bash block of README.md and docs/*.md runs here, so the docs cannot drift.

Each block runs in a fresh folder that holds what the docs take for granted: `scene.png` (written by the README's
own `scripts/demo.py --write_scene` command, the one a reader types before the Quick start),
`data/` (a tiny REFER copy with its COCO images), `downloads/refcoco/data` (a tiny Parquet copy),
`runs/{refcoco,grefcoco}/best` (copies of the embedded checkpoint), and links to the repository's `scripts/`,
`src/`, `pyproject.toml` and `Makefile`. Python blocks run in this process, bash blocks in `bash -euo pipefail`
with the interpreter's `bin/` first on PATH. A command with no entry in RULES runs exactly as written. RULES says, per
command (bash) or block (python), what is changed and why: a skip (network, real RefCOCO, GPUs), a dry run, an
appended set of small arguments for a long run (argparse: the last occurrence wins), or names the prose defines
before the block. `test_every_rule_matches_the_docs` fails when a rule's snippet no longer matches exactly one
command or block, so the list cannot rot.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import REFCOCO_REFS, write_jxu124_parquet, write_refer_copy
from metris_hf import embedded_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(python|bash)\n(.*?)^```", re.M | re.S)
SCENE_SIZE = 128

pytestmark = pytest.mark.usefixtures("datasets_cache")


@dataclass(frozen=True)
class Block:
    file: str  # relative to the repository
    line: int  # of the opening fence
    language: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"

    def units(self) -> list[str]:
        """What a rule applies to: each command of a bash block (continuation lines joined, comment lines
        dropped), or a python block whole."""
        if self.language == "python":
            return [self.code]
        joined = re.sub(r"\s*\\\n\s*", " ", self.code)
        return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def doc_blocks() -> list[Block]:
    blocks = []
    for name in DOC_FILES:
        text = (ROOT / name).read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            blocks.append(Block(name, line, match.group(1), match.group(2)))
    return blocks


@dataclass(frozen=True)
class Rule:
    file: str
    snippet: str  # a stable piece of the one command (bash) or block (python) the rule is for
    why: str = ""
    skip: bool = False
    same_as: str = ""  # another doc file holds the same command and runs it
    replace: tuple[tuple[str, str], ...] = ()
    append: str = ""  # arguments added at the end of the command: small sizes for a long run
    setup: str = ""  # python run before the block, in its namespace: the names the prose around it defines
    slow: bool = False
    expect: tuple[str, ...] = ()  # files the command must leave in the working folder
    check: Callable[[dict], None] | None = None  # called with a python block's namespace


def check_quick_start(namespace: dict) -> None:
    result = namespace["result"]
    assert set(result) == {"mask", "score"}
    assert result["mask"].mode == "L" and result["mask"].size == (SCENE_SIZE, SCENE_SIZE)
    assert len(namespace["results"]) == 1
    assert np.asarray(result["mask"]).any() and result["score"] > 0.9  # the expression fits the scene
    with Image.open("mask.png") as saved:
        assert saved.mode == "L" and saved.size == (SCENE_SIZE, SCENE_SIZE)
    by_hand = namespace["mask"].numpy()  # the processor → model → post-processing path agrees with the pipeline
    assert (by_hand != (np.asarray(result["mask"]) > 0)).mean() <= 1e-4


def check_paper_model(namespace: dict) -> None:
    import torch

    out = namespace["out"]
    assert out.logits.shape == (1, 1, 120, 120) and torch.isfinite(out.loss)


def check_parquet(namespace: dict) -> None:
    assert list(namespace["data"]) == ["train", "val", "testA", "testB"]


NOT_OFFLINE_INIT = "downloads Swin-B (ImageNet-22K) and BERT-base from the Hub"
NOT_OFFLINE_TRAIN = (
    "40 epochs of Swin-B + BERT-base on RefCOCO on two GPUs, from the checkpoint the line "
    "before downloads; tests/test_scripts.py trains with accelerate on CPU"
)

RULES = [
    # README.md
    Rule(
        "README.md",
        "make demo",
        "dry run: the target pip-installs into .venv; test_demo.py runs scripts/demo.py",
        replace=(("make demo", "make --dry-run demo"),),
    ),
    Rule(
        "README.md",
        "make test",
        "dry run: the target runs the whole suite, this test included",
        replace=(("make test", "make --dry-run test"),),
    ),
    Rule(
        "README.md",
        "make app",
        "dry run: the target pip-installs the [app] extra and serves until stopped; "
        "test_app.py and test_app_browser.py cover the page",
        replace=(("make app", "make --dry-run app"),),
    ),
    Rule(
        "README.md",
        "source .venv/bin/activate",
        "what activating does, the test does: the interpreter's bin/ (its venv) comes first on PATH",
        skip=True,
    ),
    Rule("README.md", "--write_scene scene.png", expect=("scene.png",)),
    Rule("README.md", "segmenter = pipeline(", check=check_quick_start),
    Rule("README.md", 'metris-segment --image scene.png --text "the red circle" --output', expect=("mask.png",)),
    Rule("README.md", "--dtype bf16", expect=("mask.png",)),
    Rule("README.md", "scripts/visualize.py", expect=("outputs/visualize.png",)),
    Rule(
        "README.md",
        "scripts/export_onnx.py",
        "the export takes about two minutes on 2 cores",
        slow=True,
        expect=("exported/model.onnx",),
    ),
    Rule("README.md", "scripts/init_checkpoint.py --vision microsoft/", NOT_OFFLINE_INIT, skip=True),
    Rule("README.md", "scripts/train.py --dataset refcoco", NOT_OFFLINE_TRAIN, skip=True),
    Rule("README.md", "scripts/run_evaluation.py --model_name_or_path runs/refcoco/best", same_as="docs/training.md"),
    # docs/ablations.md
    Rule(
        "docs/ablations.md",
        "scripts/ablate.py",
        "ten rows of 1,000 steps take 50 min: one row of 2 steps, tiny model",
        slow=True,
        append="--rows full --config_name tiny --synthetic_size 16 4 8 --image_size 64 "
        "--max_train_steps 2 --train_batch_size 4",
        expect=("runs/ablate/results.md",),
    ),
    # docs/app.md
    Rule("docs/app.md", "scripts/export_onnx.py", same_as="README.md"),
    Rule("docs/app.md", "metris-segment --backend onnx", same_as="README.md"),
    Rule(
        "docs/app.md",
        'OnnxReferringSegmenter("exported/")',
        "needs an export (two minutes); tests/test_onnx.py runs this class on one, in a venv without torch too",
        skip=True,
    ),
    # docs/data.md
    Rule(
        "docs/data.md",
        "--image_root /coco/train2014",
        "the tiny copy's images are under data/; slow: two "
        "processes, 20 s (test_data.py runs prepare_data.py in-process)",
        replace=(("/coco/train2014", "data/images/mscoco/images/train2014"),),
        slow=True,
    ),
    Rule(
        "docs/data.md",
        "load_refer_parquet(",
        "a Hub id needs the network; the local copy runs",
        replace=(('data = load_refer_parquet("jxu124/refcoco"', '# data = load_refer_parquet("jxu124/refcoco"'),),
        check=check_parquet,
    ),
    # docs/evaluation.md
    Rule(
        "docs/evaluation.md",
        "--dataset grefcoco",
        "three evaluation processes, 35 s",
        slow=True,
        expect=("runs/grefcoco/best/results_grefcoco-*.json",),
    ),
    Rule(
        "docs/evaluation.md",
        "metric.add_batch(",
        "the names the prose leaves to the reader",
        setup="""
import numpy as np
masks = [np.eye(8, dtype=bool), np.tri(8, dtype=bool)]
loader = [{"masks": masks}]
predicted_masks = [np.eye(8, dtype=bool), np.ones((8, 8), dtype=bool)]
probabilities = [np.where(m, 0.9, 0.1) for m in masks]
""",
    ),
    # docs/model.md
    Rule(
        "docs/model.md",
        "config = MetrisConfig()",
        "the full-size model (365 M parameters) at 480², with the inputs the prose leaves to the reader",
        slow=True,
        check=check_paper_model,
        setup="""
import torch
pixel_values = torch.randn(1, 3, 480, 480)
input_ids = torch.randint(1000, 2000, (1, 20))
attention_mask = torch.ones(1, 20, dtype=torch.long)
masks = torch.zeros(1, 480, 480, dtype=torch.long)
masks[:, 100:300, 150:350] = 1
""",
    ),
    Rule(
        "docs/model.md",
        "TimmBackboneConfig(",
        "imported by the page's first block",
        setup="from metris_hf import MetrisConfig",
    ),
    # docs/performance.md
    Rule(
        "docs/performance.md",
        "scripts/dev/benchmark.py --json",
        "the full run takes an hour: tiny sizes, eager float32, no ONNX export (test_onnx.py exports)",
        slow=True,
        append="--tiny --compile off --dtypes float32 --parts inference train data metrics",
        expect=("benchmark.json",),
    ),
    Rule(
        "docs/performance.md",
        "scripts/dev/benchmark.py --parts data",
        "a minute and a half on 2 cores: tiny sets, workers 0 and 2",
        slow=True,
        append="--tiny --data_workers 0 2",
        expect=("benchmark.json",),
    ),
    Rule(
        "docs/performance.md",
        "scripts/dev/compare_with_authors.py",
        "needs a CPU-runnable copy of the authors' code, which is not distributed",
        skip=True,
    ),
    # docs/training.md
    Rule("docs/training.md", "scripts/init_checkpoint.py --vision microsoft/", NOT_OFFLINE_INIT, skip=True),
    Rule("docs/training.md", "scripts/train.py --dataset refcoco", NOT_OFFLINE_TRAIN, skip=True),
    Rule(
        "docs/training.md",
        "scripts/run_evaluation.py --model_name_or_path runs/refcoco/best",
        "two processes on CPU, on the tiny copy, with the embedded checkpoint as runs/refcoco/best",
        slow=True,
        expect=("runs/refcoco/best/results_refcoco-*.json",),
    ),
    Rule(
        "docs/training.md",
        "scripts/train.py --dataset synthetic",
        "10,000 steps take 42 min: 2 steps on 24 objects",
        slow=True,
        append="--synthetic_size 24 6 6 --max_train_steps 2 --train_batch_size 4 --max_eval_samples 8",
        expect=("runs/small-synthetic/best/model.safetensors",),
    ),
    Rule(
        "docs/training.md",
        "--model_name_or_path runs/small-synthetic/best",
        "the data of the shortened run",
        slow=True,
        append="--synthetic_size 24 6 6",
    ),
    Rule(
        "docs/training.md",
        "--output_dir runs/ab-authors",
        "400 steps take 12 min: 2 steps on 24 objects",
        slow=True,
        append="--synthetic_size 24 6 6 --max_train_steps 2 --train_batch_size 4",
        expect=("runs/ab-authors/model.safetensors",),
    ),
    Rule(
        "docs/training.md",
        "--model_name_or_path runs/ab-authors ",
        "the data of the shortened run",
        slow=True,
        append="--synthetic_size 24 6 6",
    ),
    Rule(
        "docs/training.md",
        "--output_dir runs/ab-old",
        "400 steps take 12 min: 2 steps on 24 objects",
        slow=True,
        append="--synthetic_size 24 6 6 --max_train_steps 2 --train_batch_size 4",
        expect=("runs/ab-old/model.safetensors",),
    ),
    Rule(
        "docs/training.md",
        "--model_name_or_path runs/ab-old ",
        "the data of the shortened run",
        slow=True,
        append="--synthetic_size 24 6 6",
    ),
]

BLOCKS = doc_blocks()


def rules_for(file: str, unit: str) -> list[Rule]:
    return [rule for rule in RULES if rule.file == file and rule.snippet in unit]


def plan(block: Block) -> list[tuple[str, Rule | None]]:
    """Each unit of the block with its rule (None: runs as written)."""
    planned = []
    for unit in block.units():
        found = rules_for(block.file, unit)
        assert len(found) <= 1, f"{block.id}: several rules match {unit!r}"
        planned.append((unit, found[0] if found else None))
    return planned


def without_comment(command: str) -> str:
    return re.sub(r"\s+#\s.*$", "", command).strip()


def prepared(block: Block, unit: str, rule: Rule | None) -> str:
    code = unit
    for old, new in rule.replace if rule else ():
        assert old in code, f"{block.id}: {old!r} not in {code!r}"
        code = code.replace(old, new)
    if block.language == "bash":
        code = without_comment(code)
        if rule and rule.append:
            code = f"{code} {rule.append}"
    return code


def is_slow(block: Block) -> bool:
    return any(rule is not None and rule.slow for _, rule in plan(block))


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """What the docs take for granted, built once; each block gets a copy."""
    root = tmp_path_factory.mktemp("docs-template")
    for name in ("Makefile", "pyproject.toml", "scripts", "src"):
        (root / name).symlink_to(ROOT / name)
    # the scene comes from the README's own command, as it does for a reader
    (command,) = [u for b in BLOCKS if b.file == "README.md" for u in b.units() if "--write_scene" in u]
    run_bash([command], root, slow=False)
    write_refer_copy(root / "data")
    write_jxu124_parquet(root / "downloads" / "refcoco", REFCOCO_REFS)
    for run in ("refcoco", "grefcoco"):  # copies: run_evaluation.py writes its tables beside the model
        shutil.copytree(embedded_checkpoint(), root / "runs" / run / "best")
    return root


@pytest.fixture
def workdir(template, tmp_path, monkeypatch) -> Path:
    work = tmp_path / "work"
    shutil.copytree(template, work, symlinks=True)
    monkeypatch.chdir(work)
    return work


def run_bash(commands: list[str], cwd: Path, slow: bool) -> None:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "MPLBACKEND": "Agg",
    }
    script = "\n".join(["set -euo pipefail", *commands])
    result = subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=1800 if slow else 300
    )
    assert result.returncode == 0, (
        f"exit {result.returncode}\n{script}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    )


@pytest.mark.parametrize(
    "block", [pytest.param(b, id=b.id, marks=[pytest.mark.slow] if is_slow(b) else []) for b in BLOCKS]
)
def test_doc_block_runs(block: Block, workdir: Path) -> None:
    planned = [(unit, rule) for unit, rule in plan(block) if not (rule and (rule.skip or rule.same_as))]
    if not planned:
        reasons = {rule.why or f"run in {rule.same_as}" for _, rule in plan(block)}
        pytest.skip(f"{block.id}: " + "; ".join(sorted(reasons)))
    if block.language == "python":
        ((unit, rule),) = planned
        namespace: dict = {"__name__": "__doc_block__"}
        if rule and rule.setup:
            exec(compile(rule.setup, f"{block.id} (setup)", "exec"), namespace)
        # padded with newlines so that a traceback's line numbers are the .md file's
        exec(compile("\n" * block.line + prepared(block, unit, rule), str(ROOT / block.file), "exec"), namespace)
        if rule and rule.check:
            rule.check(namespace)
    else:
        run_bash([prepared(block, unit, rule) for unit, rule in planned], workdir, is_slow(block))
    for _, rule in planned:
        for path in rule.expect if rule else ():
            assert list(workdir.glob(path)), f"{block.id}: {path} was not written"


def test_every_fence_is_found() -> None:
    for name in DOC_FILES:
        text = (ROOT / name).read_text(encoding="utf-8")
        fences = len(re.findall(r"^```(?:python|bash)$", text, re.M))
        assert fences == sum(b.file == name for b in BLOCKS), name
    assert len(BLOCKS) >= 15


def test_every_rule_matches_the_docs() -> None:
    """A rule whose snippet no longer matches exactly one command or block fails here: edit RULES with the docs."""
    units = {name: [(b, u) for b in BLOCKS if b.file == name for u in b.units()] for name in DOC_FILES}
    run_anywhere = {
        without_comment(u) for b in BLOCKS for u, rule in plan(b) if not (rule and (rule.skip or rule.same_as))
    }
    for rule in RULES:
        matches = [(b, u) for b, u in units.get(rule.file, []) if rule.snippet in u]
        assert len(matches) == 1, f"{rule.file}: {rule.snippet!r} matches {len(matches)} commands/blocks"
        block, unit = matches[0]
        assert rule.skip + bool(rule.same_as) + bool(rule.replace or rule.append or rule.setup) <= 1, rule
        if rule.skip or rule.replace or rule.append or rule.setup or rule.slow:
            assert rule.why, f"{rule.file}: {rule.snippet!r} needs its reason"
        for old, _ in rule.replace:
            assert old in unit, f"{rule.file}: {old!r} is not in {unit!r}"
        if rule.append:
            assert block.language == "bash"
        if rule.same_as:
            assert without_comment(unit) in run_anywhere, f"{rule.file}: {unit!r} is not run in {rule.same_as}"
            assert any(without_comment(unit) == without_comment(u) for _, u in units[rule.same_as]), rule
