"""What several test modules share: the tiny tokenizer, test images and expressions, a tiny saved checkpoint,
and tiny copies of the REFER and jxu124 Parquet formats.

Test modules import from here and never from each other or from `conftest.py` (pytest puts `tests/` on
`sys.path`), so each test module can change without breaking another.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from hypothesis import strategies as st
from PIL import Image

from metris_hf import MetrisForReferringSegmentation
from metris_hf.image_processing_metris import MetrisImageProcessor
from metris_hf.processing_metris import MetrisProcessor
from metris_hf.testing_utils import tiny_metris_config

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str) -> ModuleType:
    """scripts/<name>.py as a module (the scripts are not a package), for calling its `main` / `parse_args`."""
    spec = importlib.util.spec_from_file_location(f"_script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------------------------
# Tokenizer and models
# --------------------------------------------------------------------------------------------------------------

TINY_WORDS = (
    "the a an of on in to and is left right top bottom middle big small large red green blue yellow "
    "purple orange white black circle square triangle star shape man woman dog cat shirt near next "
    "above below behind front biggest smallest"
).split()


def build_tiny_tokenizer() -> Any:
    """A BERT WordPiece tokenizer over a few dozen words, built offline (every word spells out in letters)."""
    from transformers import BertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = ["##s", "##es", "##er", "##est", "##ing", ",", ".", "'", "-"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["##" + chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(specials + TINY_WORDS + pieces + letters))}
    return BertTokenizer(vocab=vocab)


def register_auto_classes() -> None:
    """What users do: `import metris_hf` registers the Auto classes (a fresh import in a subprocess is tested too)."""
    import metris_hf  # noqa: F401


CHECKPOINT_SIZE = 64


def save_tiny_checkpoint(folder: Path, tokenizer: Any = None, poison: bool = False) -> Path:
    """A tiny METRIS (seed 0) and its processor (64², the tiny tokenizer) saved as training would leave them;
    `poison` puts NaNs in the first weights."""
    register_auto_classes()
    torch.manual_seed(0)
    model = MetrisForReferringSegmentation(tiny_metris_config())
    if poison:
        with torch.no_grad():
            next(iter(model.parameters())).view(-1)[:3] = float("nan")
    model.save_pretrained(folder)
    MetrisProcessor(
        image_processor=MetrisImageProcessor(size={"height": CHECKPOINT_SIZE, "width": CHECKPOINT_SIZE}),
        tokenizer=tokenizer or build_tiny_tokenizer(),
    ).save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------------------------------------------
# Images and expressions
# --------------------------------------------------------------------------------------------------------------


def natural_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients, a sharp-edged disc and mild noise: a stand-in for a photo."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    red = 127 + 100 * np.sin(xx / 23) * np.cos(yy / 31)
    green = 255 * xx / max(width - 1, 1)
    blue = np.where((yy - height / 2) ** 2 + (xx - width / 3) ** 2 < (min(height, width) / 4) ** 2, 230, 30)
    image = np.stack([red, green, blue], -1) + rng.normal(0, 4, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


KINDS = ["RGB", "L", "LA", "RGBA", "P", "1", "CMYK", "I;16", "I", "F", "np-gray", "np-rgba", "np-float", "tensor"]


def make_image(kind: str, height: int, width: int, seed: int):
    """An image of `kind` with random content."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if kind == "np-gray":
        return rgb[..., 0]
    if kind == "np-rgba":
        return np.concatenate([rgb, rng.integers(0, 256, (height, width, 1), dtype=np.uint8)], -1)
    if kind == "np-float":
        return rgb.astype(np.float32) / 255
    if kind == "tensor":
        return torch.from_numpy(rgb).permute(2, 0, 1)
    if kind == "I;16":  # wide modes holding 8-bit values (beyond 255 is refused: tests/test_processor.py)
        return Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint16))
    if kind == "I":
        return Image.fromarray(rng.integers(0, 256, (height, width)).astype(np.int32))
    if kind == "F":
        return Image.fromarray(rng.random((height, width), dtype=np.float32))
    return Image.fromarray(rgb).convert("RGBA").convert(kind)


expressions = st.one_of(
    st.text(min_size=0, max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=300, max_size=2000),  # very long, any script
    st.sampled_from(["the dog on the left", "  ", "\n", "ça, c'est le chat 🐈 à gauche", "左边的狗", "\u200b"]),
)


# --------------------------------------------------------------------------------------------------------------
# A tiny REFER copy (refs, instances.json, JPEGs) and its jxu124 Parquet form
# --------------------------------------------------------------------------------------------------------------

IMAGE_SIZES = {1: (64, 48), 2: (56, 40), 3: (48, 48), 4: (40, 64), 5: (64, 64)}  # id → (width, height)


def rle_uncompressed(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (iscrowd annotations): run lengths in column-major order, starting with zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    return {"size": list(mask.shape), "counts": counts}


def crowd_mask() -> np.ndarray:
    mask = np.zeros((40, 56), dtype=np.uint8)
    mask[5:30, 10:25] = 1
    mask[20:35, 30:50] = 1
    return mask


ANNOTATIONS = [
    # two overlapping polygons of one object: the mask is their union
    {
        "id": 11,
        "image_id": 1,
        "category_id": 1,
        "iscrowd": 0,
        "bbox": [5, 5, 50, 35],
        "segmentation": [[5, 5, 35, 5, 35, 30, 5, 30], [20, 15, 55, 15, 55, 40, 20, 40]],
    },
    {
        "id": 12,
        "image_id": 1,
        "category_id": 2,
        "iscrowd": 0,
        "bbox": [40, 2, 20, 10],
        "segmentation": [[40, 2, 60, 2, 50, 12]],
    },
    {
        "id": 21,
        "image_id": 2,
        "category_id": 1,
        "iscrowd": 1,
        "bbox": [10, 5, 40, 30],
        "segmentation": rle_uncompressed(crowd_mask()),
    },
    {
        "id": 22,
        "image_id": 2,
        "category_id": 3,
        "iscrowd": 0,
        "bbox": [2, 2, 10, 10],
        "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]],
    },
    {
        "id": 31,
        "image_id": 3,
        "category_id": 1,
        "iscrowd": 0,
        "bbox": [10, 10, 20, 25],
        "segmentation": [[10, 10, 30, 12, 25, 35, 12, 30]],
    },
    {
        "id": 41,
        "image_id": 4,
        "category_id": 4,
        "iscrowd": 0,
        "bbox": [5, 20, 30, 30],
        "segmentation": [[5, 20, 35, 20, 20, 50]],
    },
    {
        "id": 51,
        "image_id": 5,
        "category_id": 2,
        "iscrowd": 0,
        "bbox": [30, 30, 20, 20],
        "segmentation": [[30, 30, 50, 30, 50, 50, 30, 50]],
    },
]


def sentence(raw: str, sent: str | None = None, sent_id: int = 0) -> dict:
    sent = raw.lower().strip() if sent is None else sent
    return {"raw": raw, "sent": sent, "sent_id": sent_id, "tokens": sent.split()}


def ref(ref_id, ann_id, image_id, split, raws, **extra) -> dict:
    return {
        "ref_id": ref_id,
        "ann_id": ann_id,
        "image_id": image_id,
        "split": split,
        "sentences": [sentence(r, sent_id=ref_id * 10 + i) if isinstance(r, str) else r for i, r in enumerate(raws)],
        "sent_ids": [ref_id * 10 + i for i in range(len(raws))],
        "category_id": 1,
        "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
        **extra,
    }


REFCOCO_REFS = [
    ref(100, 11, 1, "train", ["the big box", "left thing", "man in red"]),
    # a blank raw falls back to sent; an entirely blank sentence is dropped
    ref(101, 12, 1, "train", [sentence("   ", "small triangle"), sentence("", ""), "the triangle top right"]),
    ref(200, 21, 2, "val", ["the crowd", "people in the middle"]),
    ref(201, 22, 2, "val", ["small square", "top left corner", "the tiny box"]),
    ref(300, 31, 3, "testA", ["a person", "the guy"]),
    ref(400, 41, 4, "testB", ["the triangle", "pointy thing"]),
]
REFCOCOG_REFS = [
    ref(100, 11, 1, "train", ["the big box made of two parts", "the shape on the left"]),
    ref(200, 21, 2, "val", ["the crowd of people in the picture", "people"]),
    ref(300, 31, 3, "test", ["a person standing", "the guy"]),
    ref(400, 41, 4, "test", ["the triangle pointing down", "pointy thing"]),
]
GREFS = [
    ref(1000, [11, 12], 1, "train", ["both shapes", "everything at the top"]),
    ref(1001, [-1], 1, "train", ["the green dog", "a cat"], no_target=True),
    ref(2000, [21], 2, "val", ["the crowd", "people"]),
    ref(3000, [31], 3, "testA", ["a person", "the guy"]),
    ref(4000, [-1], 4, "testB", ["the purple car"], no_target=True),
    ref(4001, [51], 5, "testB", ["the square", "box"]),
]


def write_jpeg(path: Path, width: int, height: int, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(path, quality=90)


def instances() -> dict:
    """A fresh instances.json content (its annotations are the module's `ANNOTATIONS`, not copies)."""
    images = [
        {"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "width": w, "height": h}
        for i, (w, h) in IMAGE_SIZES.items()
    ]
    categories = [{"id": c, "name": f"c{c}", "supercategory": "thing"} for c in (1, 2, 3, 4)]
    return {"images": images, "annotations": ANNOTATIONS, "categories": categories}


def write_refer_copy(root: Path) -> Path:
    """refcoco, refcoco+, refcocog and grefcoco in the REFER layout under `root`, with their JPEGs."""
    image_dir = root / "images" / "mscoco" / "images" / "train2014"
    image_dir.mkdir(parents=True)
    for image_id, (width, height) in IMAGE_SIZES.items():
        write_jpeg(image_dir / f"COCO_train2014_{image_id:012d}.jpg", width, height, image_id)
    for dataset, files in {
        "refcoco": {
            "refs(unc).p": REFCOCO_REFS,
            "refs(google).p": [dict(r, split="train" if r["split"] == "train" else "val") for r in REFCOCO_REFS],
        },
        "refcoco+": {"refs(unc).p": REFCOCO_REFS},
        "refcocog": {
            "refs(umd).p": REFCOCOG_REFS,
            "refs(google).p": [dict(r, split="train" if r["split"] == "train" else "val") for r in REFCOCOG_REFS],
        },
        "grefcoco": {"grefs(unc).json": GREFS},
    }.items():
        folder = root / dataset
        folder.mkdir()
        (folder / "instances.json").write_text(json.dumps(instances()))
        for name, refs in files.items():
            if name.endswith(".json"):
                (folder / name).write_text(json.dumps(refs))
            else:
                with open(folder / name, "wb") as handle:
                    pickle.dump(refs, handle, protocol=2)  # REFER's pickles are protocol 2 (Python 2 era)
    return root


def write_jxu124_parquet(folder: Path, refs: list[dict], with_split_column: bool = True) -> Path:
    """One row per ref, files named <split>-00000-of-00001.parquet with jxu124's split names."""
    by_id = {a["id"]: a for a in ANNOTATIONS}
    infos = {image["id"]: image for image in instances()["images"]}
    to_parquet = {"train": "train", "val": "validation", "testA": "test", "testB": "testB", "test": "test"}
    tables: dict[str, list[dict]] = {}
    for r in refs:
        ann = by_id[r["ann_id"]]
        row = {
            "sent_ids": r["sent_ids"],
            "file_name": r["file_name"],
            "ann_id": r["ann_id"],
            "ref_id": r["ref_id"],
            "image_id": r["image_id"],
            "split": r["split"],
            "sentences": r["sentences"],
            "category_id": ann["category_id"],
            "raw_anns": json.dumps(ann),
            "raw_image_info": json.dumps(infos[r["image_id"]]),
            "raw_sentences": json.dumps(r["sentences"]),
            "image_path": f"coco/train2014/COCO_train2014_{r['image_id']:012d}.jpg",
            "bbox": [float(v) for v in ann["bbox"]],
            "captions": [s["raw"] for s in r["sentences"]],
            "global_image_id": f"coco.{r['image_id']}",
            "anns_id": str(r["ann_id"]),
        }
        if not with_split_column:
            del row["split"]
        tables.setdefault(to_parquet[r["split"]], []).append(row)
    (folder / "data").mkdir(parents=True)
    for split, rows in tables.items():
        pq.write_table(pa.Table.from_pylist(rows), folder / "data" / f"{split}-00000-of-00001.parquet")
    return folder / "data"
