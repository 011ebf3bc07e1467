"""metris_hf.data on tiny copies of the real formats written here: REFER pickles/JSON, jxu124 Parquet, synthetic."""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from pycocotools import mask as mask_utils

from helpers import (
    ANNOTATIONS,
    IMAGE_SIZES,
    REFCOCO_REFS,
    REFCOCOG_REFS,
    crowd_mask,
    instances,
    load_script,
    write_jpeg,
    write_jxu124_parquet,
    write_refer_copy,
)
from metris_hf.data import (
    DATASET_NAMES,
    FEATURES,
    RefTrainTransform,
    UnsafePickleError,
    build_synthetic_tokenizer,
    iter_synthetic,
    load_dataset_by_name,
    load_refer,
    load_refer_parquet,
    make_synthetic,
    matching_objects,
    sentence_rows,
    synthetic_vocabulary,
)
from metris_hf.data import refer as refer_module
from metris_hf.data.schema import clean_sentences

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------------------------
# A tiny REFER copy (written by helpers.write_refer_copy)
# --------------------------------------------------------------------------------------------------------------

EXPECTED_REFCOCO = {"train": [100, 101], "val": [200, 201], "testA": [300], "testB": [400]}


@pytest.fixture(scope="module")
def refer_root(tmp_path_factory) -> Path:
    return write_refer_copy(tmp_path_factory.mktemp("refer"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def refcoco(refer_root, cache):
    return load_refer(refer_root, "refcoco", cache_dir=cache)


def expected_mask(ann_ids: list[int]) -> np.ndarray:
    """pycocotools' own decode of the annotations (polygons of one object merged), unioned over objects."""
    by_id = {a["id"]: a for a in ANNOTATIONS}
    width, height = IMAGE_SIZES[by_id[ann_ids[0]]["image_id"]]
    mask = np.zeros((height, width), dtype=bool)
    for ann_id in ann_ids:
        rles = mask_utils.frPyObjects(by_id[ann_id]["segmentation"], height, width)
        decoded = mask_utils.decode(rles)
        mask |= decoded.any(axis=2) if decoded.ndim == 3 else decoded.astype(bool)
    return mask


# --------------------------------------------------------------------------------------------------------------
# REFER
# --------------------------------------------------------------------------------------------------------------


def test_refcoco_splits_counts_and_membership(refcoco):
    assert list(refcoco) == ["train", "val", "testA", "testB"]
    assert refcoco["train"].features == FEATURES
    for split, ref_ids in EXPECTED_REFCOCO.items():
        assert refcoco[split]["ref_id"] == ref_ids
        assert set(refcoco[split]["image_id"]) == {r["image_id"] for r in REFCOCO_REFS if r["ref_id"] in ref_ids}
    train = refcoco["train"]
    assert train[0]["sentences"] == ["the big box", "left thing", "man in red"]
    assert train[1]["sentences"] == ["small triangle", "the triangle top right"]  # blank raw → sent; blank dropped
    assert train[0]["ann_ids"] == [11] and train[0]["category_id"] == 1 and train[0]["bbox"] == [5, 5, 50, 35]
    assert not any(train["no_target"])


def test_masks_equal_pycocotools_decode(refcoco):
    for split in refcoco.values():
        for row in split:
            mask = np.asarray(row["mask"])
            assert mask.dtype == bool and mask.shape == (row["image"].height, row["image"].width)
            np.testing.assert_array_equal(mask, expected_mask(row["ann_ids"]))
    first = np.asarray(refcoco["train"][0]["mask"])
    assert first[20, 25] and first[25, 30]  # inside both polygons: the union keeps the overlap
    crowd = np.asarray(refcoco["val"][0]["mask"])  # RLE iscrowd annotation
    np.testing.assert_array_equal(crowd, crowd_mask().astype(bool))


def test_images_are_lazy_paths(refcoco, refer_root):
    stored = refcoco["train"].data.column("image").to_pylist()[0]
    assert stored["bytes"] is None and stored["path"].endswith("COCO_train2014_000000000001.jpg")
    assert Path(stored["path"]).is_absolute() and Path(stored["path"]).is_file()
    assert refcoco["train"][0]["image"].size == IMAGE_SIZES[1]


def test_sentence_field_picks_sent_by_default_and_raw_on_request(refer_root, cache):
    entries = [
        {"raw": "The man, on the LEFT!", "sent": "the man on the left"},
        {"raw": "  ", "sent": "blank raw"},
        {"raw": "blank sent", "sent": ""},
    ]
    assert clean_sentences(entries) == ["the man on the left", "blank raw", "blank sent"]
    assert clean_sentences(entries, "raw") == ["The man, on the LEFT!", "blank raw", "blank sent"]
    with pytest.raises(ValueError, match="sentence_field"):
        clean_sentences(entries, "tokens")
    with pytest.raises(ValueError, match="sentence_field"):
        load_refer(refer_root, "refcoco", cache_dir=cache, sentence_field="tokens")
    raw = load_refer(refer_root, "refcoco", cache_dir=cache, sentence_field="raw")  # a build of its own
    assert raw["train"][1]["sentences"] == ["small triangle", "the triangle top right"]


def test_sentence_rows(refcoco):
    rows = sentence_rows(refcoco["val"])
    assert rows.column_names == ["sentence", "image", "mask", "ref_id", "image_id", "no_target", "sent_index"]
    assert len(rows) == 5
    assert rows["sentence"] == ["the crowd", "people in the middle", "small square", "top left corner", "the tiny box"]
    assert rows["sent_index"] == [0, 1, 0, 1, 2] and rows["ref_id"] == [200, 200, 201, 201, 201]
    assert rows.data.column("image").to_pylist()[0]["bytes"] is None  # still a path
    row = rows[3]
    assert isinstance(row["image"], PIL.Image.Image)
    np.testing.assert_array_equal(np.asarray(row["mask"]), expected_mask([22]))
    total = sum(len(s) for split in refcoco.values() for s in split["sentences"])
    assert sum(len(sentence_rows(split)) for split in refcoco.values()) == total == 14


def test_refcocog_umd_and_google(refer_root, cache):
    umd = load_refer(refer_root, "refcocog", cache_dir=cache)
    assert {split: len(d) for split, d in umd.items()} == {"train": 1, "val": 1, "test": 2}
    google = load_refer(refer_root, "refcocog", "google", cache_dir=cache)
    assert list(google) == ["train", "val"] and len(google["val"]) == 3
    assert list(load_refer(refer_root, "refcoco+", cache_dir=cache)) == ["train", "val", "testA", "testB"]


def test_grefcoco_multi_target_and_no_target(refer_root, cache):
    data = load_refer(refer_root, "grefcoco", cache_dir=cache)
    assert {split: len(d) for split, d in data.items()} == {"train": 2, "val": 1, "testA": 1, "testB": 2}
    multi, none = data["train"][0], data["train"][1]
    assert multi["ann_ids"] == [11, 12] and not multi["no_target"] and multi["category_id"] == -1
    np.testing.assert_array_equal(np.asarray(multi["mask"]), expected_mask([11, 12]))
    assert multi["bbox"] == [5, 2, 55, 38]
    assert none["no_target"] and none["ann_ids"] == [] and none["category_id"] == -1
    assert not np.asarray(none["mask"]).any() and np.asarray(none["mask"]).shape == (48, 64)
    rows = sentence_rows(data["testB"])
    assert rows["no_target"] == [True, False, False]


class _RunsCommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _OpensFile:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("payload", ["system", "open"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, payload):
    root = write_refer_copy(tmp_path / "data")
    marker = tmp_path / "pwned"
    evil = _RunsCommand(f"touch {marker}") if payload == "system" else _OpensFile(str(marker))
    refs = [dict(REFCOCO_REFS[0], sentences=[evil])]
    with open(root / "refcoco" / "refs(unc).p", "wb") as handle:
        pickle.dump(refs, handle, protocol=2)
    with pytest.raises(
        UnsafePickleError, match=r"refused to unpickle .*(system|open).*nothing from this file was executed"
    ):
        load_refer(root, "refcoco", cache_dir=tmp_path / "cache")
    assert not marker.exists()
    assert isinstance(UnsafePickleError("x"), pickle.UnpicklingError)


def test_restricted_unpickler_reads_plain_data(tmp_path):
    data = [{"a": [1, 2.5, None, True], "b": ("x", "ü"), "c": {1, 2}, "d": b"raw"}]
    path = tmp_path / "plain.p"
    path.write_bytes(pickle.dumps(data, protocol=2))
    assert refer_module.restricted_pickle_load(path) == data


def test_error_messages(tmp_path, refer_root, cache):
    with pytest.raises(ValueError, match=r"unknown REFER dataset 'refclef'.*refcoco, refcoco\+, refcocog, grefcoco"):
        load_refer(refer_root, "refclef")
    with pytest.raises(ValueError, match=r"unknown split_by 'umd' for refcoco: choose one of unc, google"):
        load_refer(refer_root, "refcoco", "umd")
    with pytest.raises(ValueError, match=r"unknown split_by 'google' for refcoco\+: choose one of unc"):
        load_refer(refer_root, "refcoco+", "google")
    empty = tmp_path / "empty"
    (empty / "refcoco").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"refs file not found: looked for .*empty/refcoco/refs\(unc\)\.p"):
        load_refer(empty, "refcoco")
    (empty / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(REFCOCO_REFS, protocol=2))
    with pytest.raises(
        FileNotFoundError, match=r"instances file not found: looked for .*empty/refcoco/instances\.json"
    ):
        load_refer(empty, "refcoco")
    (empty / "refcoco" / "instances.json").write_text(json.dumps(instances()))
    with pytest.raises(FileNotFoundError, match=r"image folder not found: .*train2014"):
        load_refer(empty, "refcoco")
    with pytest.raises(
        FileNotFoundError, match=r"refs file not found: looked for .*empty/grefcoco/grefs\(unc\)\.json"
    ):
        load_refer(empty, "grefcoco")


def test_missing_and_corrupt_images(tmp_path, caplog):
    root = write_refer_copy(tmp_path / "data")
    image_dir = root / "images" / "mscoco" / "images" / "train2014"
    (image_dir / "COCO_train2014_000000000003.jpg").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"1 referenced image\(s\) missing, e\.g\. .*COCO_train2014_000000000003\.jpg"
    ):
        load_refer(root, "refcoco", cache_dir=tmp_path / "cache")
    with caplog.at_level("WARNING"):
        skipped = load_refer(root, "refcoco", cache_dir=tmp_path / "cache", skip_missing_images=True)
    assert list(skipped) == ["train", "val", "testB"]  # testA had only image 3
    assert "1 ref(s) skipped" in caplog.text and "000000000003.jpg" in caplog.text

    write_jpeg(image_dir / "COCO_train2014_000000000003.jpg", *IMAGE_SIZES[3], seed=3)  # back again
    corrupt = image_dir / "COCO_train2014_000000000004.jpg"
    corrupt.write_bytes(corrupt.read_bytes()[: len(corrupt.read_bytes()) // 2])  # a truncated download
    with pytest.raises(ValueError, match=r"corrupt or unreadable image .*COCO_train2014_000000000004\.jpg"):
        load_refer(root, "refcoco", cache_dir=tmp_path / "cache", verify_images=True)
    unchecked = load_refer(root, "refcoco", cache_dir=tmp_path / "cache")
    assert list(unchecked) == ["train", "val", "testA", "testB"]  # without verification only absence is checked
    with caplog.at_level("WARNING"):
        kept = load_refer(root, "refcoco", cache_dir=tmp_path / "cache", skip_missing_images=True, verify_images=True)
    assert list(kept) == ["train", "val", "testA"]  # testB had only image 4
    assert "0 missing, 1 unreadable" in caplog.text


def test_cache_hit_and_invalidation(tmp_path, monkeypatch):
    root = write_refer_copy(tmp_path / "data")
    start = time.perf_counter()
    first = load_refer(root, "refcoco", cache_dir=tmp_path / "cache")
    first_seconds = time.perf_counter() - start
    builds = []
    original = refer_module.build_tasks
    monkeypatch.setattr(refer_module, "build_tasks", lambda *a, **k: builds.append(1) or original(*a, **k))
    start = time.perf_counter()
    second = load_refer(root, "refcoco", cache_dir=tmp_path / "cache")
    assert time.perf_counter() - start < first_seconds
    assert builds == [] and second["train"]["ref_id"] == first["train"]["ref_id"]
    assert str(tmp_path / "cache" / "refer") in second["train"].cache_files[0]["filename"]
    refs = root / "refcoco" / "refs(unc).p"
    os.utime(refs, ns=(refs.stat().st_atime_ns, refs.stat().st_mtime_ns + 10**9))  # the file changed
    load_refer(root, "refcoco", cache_dir=tmp_path / "cache")
    assert builds == [1]


def test_num_proc_gives_the_same_rows(refer_root, refcoco, tmp_path):
    parallel = load_refer(refer_root, "refcoco", cache_dir=tmp_path, num_proc=2)
    for split in refcoco:
        assert parallel[split]["ref_id"] == refcoco[split]["ref_id"]
        assert parallel[split].data.column("mask").to_pylist() == refcoco[split].data.column("mask").to_pylist()


# --------------------------------------------------------------------------------------------------------------
# Parquet (jxu124 layout)
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_split_column", [True, False])
def test_parquet_layout_matches_refer(tmp_path, refer_root, refcoco, with_split_column):
    files = write_jxu124_parquet(tmp_path / "jxu124_refcoco", REFCOCO_REFS, with_split_column)
    image_root = refer_root / "images" / "mscoco" / "images" / "train2014"
    data = load_refer_parquet(files, image_root, cache_dir=tmp_path / "cache")
    assert list(data) == list(refcoco) == ["train", "val", "testA", "testB"]  # validation → val, test → testA
    for split in refcoco:
        assert data[split].features == FEATURES
        for got, want in zip(data[split], refcoco[split]):
            for key in ("sentences", "ref_id", "image_id", "ann_ids", "category_id", "bbox", "no_target"):
                assert got[key] == want[key], (split, key)
            np.testing.assert_array_equal(np.asarray(got["mask"]), np.asarray(want["mask"]))
        assert data[split].data.column("image").to_pylist() == refcoco[split].data.column("image").to_pylist()


def test_parquet_refcocog_and_data_files_dict(tmp_path, refer_root):
    files = write_jxu124_parquet(tmp_path / "jxu124_refcocog", REFCOCOG_REFS, with_split_column=False)
    image_root = refer_root / "images" / "mscoco" / "images" / "train2014"
    data = load_refer_parquet(
        {s: str(files / f"{s}-00000-of-00001.parquet") for s in ("train", "validation", "test")},
        image_root,
        cache_dir=tmp_path / "cache",
    )
    assert {split: len(d) for split, d in data.items()} == {"train": 1, "val": 1, "test": 2}  # no testB: test stays
    with pytest.raises(FileNotFoundError, match=r"missing, e\.g\. .*COCO_train2014_000000000001\.jpg"):
        load_refer_parquet(files, tmp_path, cache_dir=tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="parquet source not found"):
        load_refer_parquet(tmp_path / "nope", image_root)


def test_parquet_skips_a_split_whose_images_are_all_missing(tmp_path):
    """As `load_refer` does; it used to fail on the emptied split (KeyError '_degenerate')."""
    image_root = write_refer_copy(tmp_path / "refer") / "images" / "mscoco" / "images" / "train2014"
    files = write_jxu124_parquet(tmp_path / "jxu124_refcoco", REFCOCO_REFS)
    (image_root / "COCO_train2014_000000000003.jpg").unlink()
    data = load_refer_parquet(files, image_root, cache_dir=tmp_path / "cache", skip_missing_images=True)
    assert list(data) == ["train", "val", "testB"]  # testA had only image 3


def test_load_dataset_by_name(tmp_path, refer_root, cache):
    with pytest.raises(ValueError, match=r"unknown dataset 'coco'.*refcoco, refcoco\+, refcocog, grefcoco, synthetic"):
        load_dataset_by_name("coco")
    with pytest.raises(ValueError, match="needs data_root"):
        load_dataset_by_name("refcoco")
    with pytest.raises(ValueError, match="unknown split_by 'unc' for refcocog"):
        load_dataset_by_name("refcocog", data_root=refer_root, split_by="unc")
    assert DATASET_NAMES == ("refcoco", "refcoco+", "refcocog", "grefcoco", "synthetic")
    data = load_dataset_by_name("refcoco", data_root=refer_root, cache_dir=cache)
    assert list(data) == ["train", "val", "testA", "testB"]

    parquet_root = tmp_path / "pq"
    write_jxu124_parquet(parquet_root / "refcoco", REFCOCO_REFS)
    via_parquet = load_dataset_by_name(
        "refcoco",
        data_root=parquet_root,
        cache_dir=cache,
        image_root=refer_root / "images" / "mscoco" / "images" / "train2014",
    )
    assert {s: len(d) for s, d in via_parquet.items()} == {s: len(d) for s, d in data.items()}

    synthetic = load_dataset_by_name("synthetic", synthetic_size=(6, 0, 3), synthetic_seed=1, cache_dir=cache)
    assert {s: len(d) for s, d in synthetic.items()} == {"train": 6, "test": 3}
    folder = cache / "synthetic" / "6-0-3-128px-seed1-nt0-v1"
    assert (folder / "splits.json").is_file() and (folder / "train.arrow").is_file()
    assert str(folder) in synthetic["train"].cache_files[0]["filename"]
    again = load_dataset_by_name("synthetic", synthetic_size=(6, 0, 3), synthetic_seed=1, cache_dir=cache)
    assert again["train"].cache_files == synthetic["train"].cache_files


def test_prepare_data_script(refer_root, tmp_path, capsys):
    module = load_script("prepare_data")
    results = module.main(["--data_root", str(refer_root), "--cache_dir", str(tmp_path), "--verify_images"])
    assert set(results) == {
        "refcoco (unc)",
        "refcoco (google)",
        "refcoco+ (unc)",
        "refcocog (umd)",
        "refcocog (google)",
        "grefcoco (unc)",
    }
    assert results["refcoco (unc)"] == [("train", 2, 5, 1), ("val", 2, 5, 1), ("testA", 1, 2, 1), ("testB", 1, 2, 1)]
    assert "| testB    |        1 |         2 |       1 |" in capsys.readouterr().out
    synthetic = module.main(["--synthetic", "--synthetic_size", "4", "2", "2", "--cache_dir", str(tmp_path)])
    assert [row[:2] for row in next(iter(synthetic.values()))] == [("train", 4), ("val", 2), ("test", 2)]
    with pytest.raises(SystemExit):
        module.main(["--data_root", str(tmp_path / "missing")])


# --------------------------------------------------------------------------------------------------------------
# Synthetic
# --------------------------------------------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_splits_differ(tmp_path):
    a = make_synthetic(12, 6, 6, image_size=64, seed=3)
    b = make_synthetic(12, 6, 6, image_size=64, seed=3)
    c = make_synthetic(12, 6, 6, image_size=64, seed=4)
    assert list(a) == ["train", "val", "test"]
    for split in a:
        assert a[split].data.to_pylist() == b[split].data.to_pylist()  # the same bytes
    assert a["train"].data.column("image").to_pylist() != c["train"].data.column("image").to_pylist()
    images = {split: {row["bytes"] for row in a[split].data.column("image").to_pylist()} for split in a}
    assert (
        not images["train"] & images["val"]
        and not images["train"] & images["test"]
        and not images["val"] & images["test"]
    )
    ids = {split: set(a[split]["image_id"]) for split in a}
    assert not ids["train"] & ids["val"] and not ids["val"] & ids["test"]
    assert len({r for split in a.values() for r in split["ref_id"]}) == 24
    only_test = make_synthetic(0, 0, 5, image_size=64, seed=3, save_dir=tmp_path / "saved")  # as scripts/demo.py
    assert list(only_test) == ["test"] and len(only_test["test"]) == 5
    assert (tmp_path / "saved" / "dataset_dict.json").is_file() and only_test["test"][0]["image"].size == (64, 64)
    with pytest.raises(ValueError):
        make_synthetic(0, 0, 0)


def test_synthetic_expressions_are_unique_by_construction():
    checked = 0
    kinds = set()
    for scene, row in iter_synthetic(150, image_size=64, seed=5, split="train", no_target_fraction=0.2):
        assert len(row["sentences"]) >= 2 and len(set(row["sentences"])) == len(row["sentences"])
        for sentence in row["sentences"]:
            matched = [scene.objects[i].ann_id for i in matching_objects(sentence, scene.objects, 64)]
            assert matched == row["ann_ids"], (sentence, scene.objects)
            checked += 1
            words = sentence.split()
            kinds.add(
                "relation"
                if {"of", "above", "below"} & set(words)
                else "superlative"
                if {"leftmost", "rightmost", "highest", "lowest"} & set(words)
                else "region"
                if {"on", "at"} & set(words)
                else "attributes"
            )
        mask = np.asarray(PIL.Image.open(__import__("io").BytesIO(row["mask"]["bytes"])))
        if row["no_target"]:
            assert row["ann_ids"] == [] and not mask.any()
        else:
            target = [o.ann_id for o in scene.objects].index(row["ann_ids"][0])
            assert mask.any()
            np.testing.assert_array_equal(mask, scene.masks[target])
    assert checked > 300 and kinds == {"relation", "superlative", "region", "attributes"}


def test_synthetic_scenes_and_no_target_rows():
    data = make_synthetic(60, 0, 0, image_size=64, seed=0, no_target_fraction=0.3)["train"]
    no_target = sum(data["no_target"])
    assert 5 < no_target < 35
    by_image: dict[int, list[int]] = {}
    for row in data:
        by_image.setdefault(row["image_id"], []).append(row["ref_id"])
        assert row["image"].size == (64, 64) and row["image"].mode == "RGB"
        mask = np.asarray(row["mask"])
        assert mask.shape == (64, 64) and mask.any() != row["no_target"]
        if not row["no_target"]:
            x, y, w, h = row["bbox"]
            ys, xs = np.nonzero(mask)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
    assert max(len(refs) for refs in by_image.values()) >= 3  # refs of one scene share its image_id
    # masks of different objects in one scene never overlap
    scene, _ = next(iter_synthetic(1, image_size=64, seed=0))
    assert sum(m.astype(int) for m in scene.masks).max() == 1


def test_synthetic_tokenizer_covers_every_word():
    tokenizer = build_synthetic_tokenizer()
    vocab = synthetic_vocabulary()
    assert len(vocab) < 256 and len(tokenizer) == len(vocab)
    assert tokenizer.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "an"]) == list(
        range(8)
    )
    sentences = [
        s for _, row in iter_synthetic(200, image_size=64, seed=9, no_target_fraction=0.2) for s in row["sentences"]
    ]
    for sentence in sentences:
        ids = tokenizer(sentence)["input_ids"]
        assert tokenizer.unk_token_id not in ids, sentence
        assert all(not token.startswith("##") for token in tokenizer.tokenize(sentence)), sentence
    assert tokenizer.unk_token_id not in tokenizer("the dogs near a zebra")["input_ids"]


# --------------------------------------------------------------------------------------------------------------
# RefTrainTransform
# --------------------------------------------------------------------------------------------------------------


def make_processor(side: int = 32, max_length: int = 12):
    from metris_hf import MetrisProcessor

    processor = MetrisProcessor(tokenizer=build_synthetic_tokenizer())
    processor.image_processor.size = {"height": side, "width": side}
    processor.max_length = max_length
    return processor


@pytest.fixture(scope="module")
def processor():
    return make_processor()


@pytest.fixture(scope="module")
def synthetic_train():
    return make_synthetic(16, 0, 0, image_size=64, seed=2)["train"]


def test_train_transform_shapes_and_collate(processor, synthetic_train):
    transform = RefTrainTransform(processor, seed=0)
    data = synthetic_train.with_transform(transform)
    row = data[0]
    assert row["pixel_values"].shape == (3, 32, 32) and row["pixel_values"].dtype == torch.float32
    assert row["input_ids"].shape == row["attention_mask"].shape == (12,)
    assert row["labels"].shape == (32, 32) and set(row["labels"].unique().tolist()) <= {0, 1}
    loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=False, collate_fn=transform.collate)
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (4, 3, 32, 32) and batch["input_ids"].shape == (4, 12)
    assert batch["labels"].shape == (4, 32, 32) and batch["labels"].sum() > 0
    assert batch["ref_ids"].tolist() == synthetic_train.select(range(4))["ref_id"]
    text = processor.tokenizer.decode(row["input_ids"], skip_special_tokens=True)
    assert text in synthetic_train[0]["sentences"]


def test_train_transform_follows_its_processor(synthetic_train):
    """The sizes have one source: a processor changed after the transform was made is what the rows follow."""
    processor = make_processor()
    transform = RefTrainTransform(processor)
    processor.image_processor.size = {"height": 48, "width": 40}
    processor.max_length = 9
    row = synthetic_train.with_transform(transform)[0]
    assert row["pixel_values"].shape == (3, 48, 40) and row["labels"].shape == (48, 40)
    assert row["input_ids"].shape == (9,)
    with pytest.raises(ValueError, match="seed"):
        RefTrainTransform(processor, seed=-1)


def test_train_transform_is_deterministic_and_varies_by_epoch(processor, synthetic_train):
    def sentences(seed: int, epoch: int) -> list[str]:
        transform = RefTrainTransform(processor, seed=seed)
        transform.set_epoch(epoch)
        batch = synthetic_train.with_transform(transform)[:]
        return [processor.tokenizer.decode(ids, skip_special_tokens=True) for ids in batch["input_ids"]]

    assert sentences(0, 1) == sentences(0, 1)  # a resumed run sees the same sentences
    by_epoch = [sentences(0, epoch) for epoch in range(4)]
    assert len({tuple(s) for s in by_epoch}) > 1
    assert sentences(1, 1) != sentences(0, 1)
    for epoch, chosen in enumerate(by_epoch):
        for row, text in zip(synthetic_train, chosen):
            assert text in row["sentences"], epoch
    transform = RefTrainTransform(processor)
    assert transform.sentence_index(7, 3) == transform.sentence_index(7, 3)
    with pytest.raises(ValueError):
        transform.sentence_index(7, 0)
