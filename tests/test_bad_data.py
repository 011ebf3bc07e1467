"""Bad data files: each malformed or hostile input ends in a clear error naming the file and the record (or in a
correct result), within bounded memory. Tiny REFER / Parquet copies come from tests/helpers.py's writers."""

from __future__ import annotations

import copy
import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import GREFS, REFCOCO_REFS, instances, write_jxu124_parquet, write_refer_copy
from metris_hf.data import FEATURES, UnsafePickleError, load_refer, load_refer_parquet, restricted_pickle_load

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------------------------
# Pickle bombs: small files that ask for huge memory, nesting or expansion
# --------------------------------------------------------------------------------------------------------------


def _shared_expansion(levels: int = 8, fanout: int = 10) -> bytes:
    """Under 1 KB whose lists of lists of references reach a 400-character string 10**8 times."""
    out = b"\x80\x02X\x90\x01\x00\x00" + b"x" * 400 + b"q\x00"
    for level in range(levels):
        out += b"(" + b"h" + bytes([level]) + (b"h" + bytes([level])) * (fanout - 1) + b"l" + b"q" + bytes([level + 1])
    ref = {"ref_id": 1, "ann_id": 11, "image_id": 1, "split": "train"}
    head = pickle.dumps(ref, protocol=2)[2:-1]  # the dict's opcodes, without PROTO and STOP
    return out + b"0" + head + b"X\x09\x00\x00\x00sentencesh" + bytes([levels]) + b"s."


BOMBS = {
    # bytearray(2_000_000_000), by the global and by protocol 5's opcode
    "bytearray_global": b"\x80\x02c__builtin__\nbytearray\nJ\x00\x94\x35\x77\x85R.",
    "bytearray_10_12": b"\x80\x02c__builtin__\nbytearray\n\x8a\x05\x00\x10\xa5\xd4\xe8\x85R.",
    "bytearray8_opcode": b"\x80\x05\x96\x00\x00\x00\x00\x00\x00\x00\x00.",
    "memo_index": b"\x80\x02]r\xff\xff\xff\x0f.",  # LONG_BINPUT 2**28 - 1: a 2 GB memo table
    "memo_index_text": b"(lp268435455\n.",
    "hex_codec": b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x03\x00\x00\x00hex\x86R.",
    "nesting_200000": b"\x80\x02" + b"]" * 200_000 + b"a" * 199_999 + b".",
    "nesting_by_memo": None,  # filled below (needs the helper)
    "shared_expansion": None,
}
BOMBS["nesting_by_memo"] = b"\x80\x02]q\x00" + b"]h\x00aq\x00" * 200_000 + b"."
BOMBS["shared_expansion"] = _shared_expansion()


def test_bomb_shapes_are_what_they_claim():
    """The bombs are what their names say (checked on the harmless ones with the plain unpickler)."""
    assert len(BOMBS["shared_expansion"]) < 1024
    nested = pickle.loads(b"\x80\x02]q\x00" + b"]h\x00aq\x00" * 50 + b".")
    depth = 0
    while nested:
        nested, depth = nested[0], depth + 1
    assert depth == 50
    expanded = pickle.loads(BOMBS["shared_expansion"])
    assert expanded["ref_id"] == 1 and len(expanded["sentences"]) == 10


_BOMB_RUNNER = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    from metris_hf.data import UnsafePickleError, load_refer, restricted_pickle_load
    vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
    headroom = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (vm + headroom, resource.getrlimit(resource.RLIMIT_AS)[1]))
    outcomes = {}
    for path in sys.argv[2:]:
        try:
            if Path(path).is_dir():  # a REFER copy
                load_refer(path, "refcoco", cache_dir=Path(path) / "cache")
            else:
                restricted_pickle_load(path)
            outcomes[path] = "loaded"
        except UnsafePickleError as error:
            outcomes[path] = "UnsafePickleError" + (" naming the file" if path in str(error) else ": " + str(error))
        except ValueError as error:
            outcomes[path] = "ValueError" + (" naming the file" if path in str(error) else ": " + str(error))
        except BaseException as error:
            outcomes[path] = "other " + type(error).__name__ + ": " + str(error)[:200]
    print(json.dumps(outcomes))
    """
)


def run_under_memory_limit(paths: list[Path], headroom: int = 256 << 20) -> dict[str, str]:
    """Loads each refs file (or REFER copy, for a folder) in a child process whose address space may grow by only
    `headroom` bytes."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", _BOMB_RUNNER, str(headroom), *map(str, paths)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_pickle_bombs_are_refused_before_allocating(tmp_path):
    """Bound: a refs load uses the file plus a small multiple of it; 256 MB of headroom is far more than these
    files (< 1 MB each) may cost, and far less than any of them asks for."""
    paths = []
    for name, data in BOMBS.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "refs(unc).p").write_bytes(data)
        paths.append(folder / "refs(unc).p")
    outcomes = run_under_memory_limit(paths)
    assert outcomes == {str(p): "UnsafePickleError naming the file" for p in paths}


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", r"empty file"),
        (pickle.dumps([{"ref_id": 1}], protocol=2)[:-5], r"not a readable pickle"),  # truncated
        (json.dumps([{"ref_id": 1}]).encode(), r"not a readable pickle"),  # JSON saved as .p
        (b"\x80\x02K\x01", r"not a readable pickle"),  # no STOP
    ],
    ids=["empty", "truncated", "json", "no_stop"],
)
def test_unreadable_pickle_names_the_file(tmp_path, content, match):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as caught:
        restricted_pickle_load(path)
    assert str(path) in str(caught.value)
    assert not isinstance(caught.value, UnsafePickleError)


# --------------------------------------------------------------------------------------------------------------
# instances.json and refs: polygons, sizes, fields, consistency
# --------------------------------------------------------------------------------------------------------------


def refer_copy(
    root: Path, refs: list[dict] | None = None, edit_instances=None, instances_text: str | None = None
) -> Path:
    """tests/helpers.py's tiny REFER copy, with refcoco's refs and/or instances.json replaced."""
    write_refer_copy(root)
    folder = root / "refcoco"
    if refs is not None:
        (folder / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    if edit_instances is not None:
        data = copy.deepcopy(instances())  # the helpers' annotations are module constants
        edit_instances(data)
        (folder / "instances.json").write_text(json.dumps(data))
    if instances_text is not None:
        (folder / "instances.json").write_text(instances_text)
    return root


def set_annotation(ann_id: int, **fields):
    def edit(data: dict) -> None:
        for ann in data["annotations"]:
            if ann["id"] == ann_id:
                ann.update(fields)
                for key, value in fields.items():
                    if value is DELETE:
                        del ann[key]

    return edit


def set_image(image_id: int, **fields):
    def edit(data: dict) -> None:
        for image in data["images"]:
            if image["id"] == image_id:
                image.update(fields)
                for key, value in fields.items():
                    if value is DELETE:
                        del image[key]

    return edit


DELETE = object()
NAN, INF = float("nan"), float("inf")


def test_non_finite_polygons_are_refused_within_bounded_memory(tmp_path):
    """A NaN / inf / far-away polygon point sent pycocotools into rasterising without end; now it is a ValueError
    naming the refs file, the ref and the annotation, in a process that may not grow by more than 256 MB."""
    roots = []
    for name, polygon in {
        "nan": [5, 5, NAN, 5, 35, 30],
        "inf": [5, 5, 35, INF, 35, 30],
        "far": [5, 5, 1e18, 5, 35, 30],
    }.items():
        roots.append(refer_copy(tmp_path / name, edit_instances=set_annotation(11, segmentation=[polygon])))
    # json writes NaN and Infinity, which Python's json reads back: the file is what a buggy exporter writes
    assert "NaN" in (roots[0] / "refcoco" / "instances.json").read_text()
    outcomes = run_under_memory_limit(roots)
    assert outcomes == {str(root): "ValueError naming the file" for root in roots}
    with pytest.raises(
        ValueError, match=r"refs\(unc\)\.p: ref 100: annotation 11: polygon 0 holds a coordinate .*nan"
    ):
        load_refer(roots[0], "refcoco", cache_dir=tmp_path / "cache")


BAD_INSTANCES = {
    "image_without_height": (set_image(1, height=DELETE), r"ref 100: image 1 lacks \['height'\]"),
    "negative_size": (set_image(1, width=-64), r"ref 100: image 1: image width must lie in \[1, 16384\], got -64"),
    "huge_size": (set_image(1, width=10**6), r"ref 100: image 1: image width must lie in \[1, 16384\]"),
    "float_height": (set_image(1, height=47.5), r"ref 100: image 1: image height must be a whole number"),
    "no_segmentation": (set_annotation(11, segmentation=DELETE), r"ref 100: annotation 11 lacks \['segmentation'\]"),
    "no_bbox": (set_annotation(11, bbox=DELETE), r"ref 100: annotation 11 lacks \['bbox'\]"),
    "no_category": (set_annotation(11, category_id=DELETE), r"ref 100: annotation 11 lacks \['category_id'\]"),
    "nan_bbox": (set_annotation(11, bbox=[1, 2, NAN, 4]), r"ref 100: annotation 11: bbox must be 4 finite numbers"),
    "odd_polygon": (set_annotation(11, segmentation=[[1, 2, 3, 4, 5, 6, 7]]), r"annotation 11: polygon 0 has an odd"),
    "polygon_of_strings": (set_annotation(11, segmentation=[["1", 2, 3, 4, 5, 6]]), r"annotation 11: polygon 0 holds"),
    "garbage_rle": (
        set_annotation(21, segmentation={"size": [40, 56], "counts": "\x01\x02garbage"}),
        r"ref 200: annotation 21: compressed RLE counts are garbled",
    ),
    "rle_runs_too_long": (
        set_annotation(21, segmentation={"size": [40, 56], "counts": [0, 5000]}),
        r"ref 200: annotation 21: RLE runs add up to 5000 pixels .*not 40×56",
    ),
    "rle_wrong_size": (
        set_annotation(21, segmentation={"size": [41, 56], "counts": [0, 2296]}),
        r"ref 200: annotation 21: RLE size \[41, 56\] differs",
    ),
    "ann_of_other_image": (
        set_annotation(11, image_id=2),
        r"ref 100: annotation 11 belongs to image 2, not to the ref's image 1",
    ),
}


@pytest.mark.parametrize("name", list(BAD_INSTANCES))
def test_bad_instances_name_the_ref_and_record(tmp_path, name):
    edit, match = BAD_INSTANCES[name]
    root = refer_copy(tmp_path / "data", edit_instances=edit)
    with pytest.raises(ValueError, match=match) as caught:
        load_refer(root, "refcoco", cache_dir=tmp_path / "cache")
    assert str(root / "refcoco" / "refs(unc).p") in str(caught.value)


@pytest.mark.parametrize(
    "text, match",
    [
        (json.dumps([1, 2]), r"instances\.json: expected a COCO instances dict .* got a list"),
        (json.dumps(instances())[:-40], r"instances\.json: not readable JSON"),
        ("", r"instances\.json: not readable JSON"),
        (json.dumps({"images": {}, "annotations": []}), r"instances\.json: 'images' must be a list, got dict"),
        (
            json.dumps({"images": [{"id": "1"}], "annotations": []}),
            r"instances\.json: images\[0\] is not a dict with an integer 'id'",
        ),
    ],
    ids=["list", "truncated", "empty", "images_dict", "string_id"],
)
def test_malformed_instances_file_names_it(tmp_path, text, match):
    root = refer_copy(tmp_path / "data", instances_text=text)
    with pytest.raises(ValueError, match=match):
        load_refer(root, "refcoco", cache_dir=tmp_path / "cache")


BAD_REFS = {
    "sentences_string": ({"sentences": "the big box"}, r"ref 100: `sentences` must be a list of sentences, got str"),
    "sentences_numbers": (
        {"sentences": [1, 2]},
        r"ref 100: sentence 0 must be a dict with `raw`/`sent` or a string, got int",
    ),
    "sentences_none": ({"sentences": None}, r"ref 100: `sentences` must be a list of sentences, got NoneType"),
    "raw_not_text": ({"sentences": [{"raw": 5, "sent": "x"}]}, r"ref 100: sentence 0: `raw` must be text, got int"),
    "image_unlisted": ({"image_id": 99}, r"ref 100: names image 99, which .*instances\.json does not list"),
    "ann_unlisted": ({"ann_id": 999}, r"ref 100: names annotation\(s\) \[999\], absent from"),
    "ann_id_string": ({"ann_id": "11"}, r"ref 100: ann_id\(s\) must be integers, got '11'"),
    "ref_id_string": ({"ref_id": "100"}, r"ref '100': ref_id must be an integer"),
    "split_none": ({"split": None}, r"ref 100: split must be a name"),
}


@pytest.mark.parametrize("name", list(BAD_REFS))
def test_bad_refs_name_the_file_and_ref(tmp_path, name):
    change, match = BAD_REFS[name]
    refs = [dict(REFCOCO_REFS[0], **change), *REFCOCO_REFS[1:]]
    root = refer_copy(tmp_path / "data", refs=refs)
    with pytest.raises(ValueError, match=match) as caught:
        load_refer(root, "refcoco", cache_dir=tmp_path / "cache")
    assert str(root / "refcoco" / "refs(unc).p") in str(caught.value)


def test_empty_refs_list_says_no_refs(tmp_path):
    root = refer_copy(tmp_path / "data", refs=[])
    with pytest.raises(ValueError, match=r"refs\(unc\)\.p: no refs \(the file holds an empty list\)"):
        load_refer(root, "refcoco", cache_dir=tmp_path / "cache")


def test_declared_size_differs_from_the_file(tmp_path):
    root = refer_copy(tmp_path / "data", edit_instances=set_image(3, width=50))
    with pytest.raises(
        ValueError, match=r"COCO_train2014_000000000003\.jpg is 48×48 .* image 3 \(ref 300\) declares it 50×48"
    ):
        load_refer(root, "refcoco", cache_dir=tmp_path / "cache")


def test_degenerate_targets_are_counted_warned_and_kept_out_of_training(tmp_path, caplog):
    """Ref 100 (train) loses its polygons to < 3 points, ref 200 (val) to a polygon wholly outside its image."""

    def edit(data: dict) -> None:
        set_annotation(11, segmentation=[[5, 5, 35, 5], []])(data)
        set_annotation(21, segmentation=[[100, 100, 120, 100, 120, 120]])(data)  # image 2 is 56×40

    root = refer_copy(tmp_path / "data", edit_instances=edit)
    with caplog.at_level("WARNING"):
        data = load_refer(root, "refcoco", cache_dir=tmp_path / "cache")
    assert "2 ref(s) have an empty target mask" in caplog.text and "ref_id 100, 200" in caplog.text
    assert data["train"]["ref_id"] == [101]  # 100 left out of training
    assert data["val"]["ref_id"] == [200, 201]  # evaluation keeps its samples
    kept = load_refer(root, "refcoco", cache_dir=tmp_path / "cache", keep_degenerate=True)
    assert kept["train"]["ref_id"] == [100, 101]
    assert not kept["train"][0]["no_target"] and not np.asarray(kept["train"][0]["mask"]).any()


# --------------------------------------------------------------------------------------------------------------
# Parquet copies (jxu124 layout)
# --------------------------------------------------------------------------------------------------------------


def parquet_copy(
    tmp_path: Path, drop: tuple[str, ...] = (), refs: tuple[int, ...] = (100,), **row_changes
) -> tuple[Path, Path]:
    """tests/helpers.py's jxu124 files for RefCOCO with columns dropped and/or the rows of `refs` changed."""
    files = write_jxu124_parquet(tmp_path / "jxu124", REFCOCO_REFS)
    for file in files.glob("*.parquet"):
        rows = pq.read_table(file).to_pylist()
        for row in rows:
            if row["ref_id"] in refs:
                row.update(row_changes)
        table = pa.Table.from_pylist(rows)
        pq.write_table(table.drop_columns([c for c in drop if c in table.column_names]), file)
    image_root = write_refer_copy(tmp_path / "refer") / "images" / "mscoco" / "images" / "train2014"
    return files, image_root


@pytest.mark.parametrize("drop", [("sentences",), ("ref_id", "image_id"), ("raw_anns",)])
def test_parquet_missing_columns_are_named_up_front(tmp_path, drop):
    files, image_root = parquet_copy(tmp_path, drop=drop)
    with pytest.raises(
        ValueError, match=r"-00000-of-00001\.parquet: missing column\(s\) " + re.escape(str(list(drop)))
    ):
        load_refer_parquet(files, image_root, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize(
    "change, match",
    [
        (
            {"raw_anns": json.dumps({"id": 11, "segmentation": [[5, 5, NAN, 5, 35, 30]], "bbox": [5, 5, 50, 35]})},
            r"ref 100: annotation 11: polygon 0 holds a coordinate",
        ),
        ({"raw_anns": None}, r"ref 100: raw_anns is empty but ann_id is 11"),
        (
            {"raw_image_info": json.dumps({"id": 1, "height": -48, "width": 64})},
            r"ref 100: image 1: image height must lie in",
        ),
        ({"raw_anns": "[1, 2]"}, r"ref 100: raw_anns must hold COCO annotation dicts"),
        (
            {
                "raw_anns": json.dumps(
                    {"id": 11, "image_id": 7, "segmentation": [[5, 5, 40, 5, 35, 30]], "bbox": [5, 5, 35, 25]}
                )
            },
            r"ref 100: annotation 11 belongs to image 7, not to the ref's image 1",
        ),
    ],
    ids=["nan_polygon", "null_raw_anns", "negative_height", "anns_not_dicts", "annotation_of_another_image"],
)
def test_parquet_bad_rows_name_the_file_and_ref(tmp_path, change, match):
    files, image_root = parquet_copy(tmp_path, refs=(100, 101), **change)  # both rows of image 1 agree
    with pytest.raises(ValueError, match=match) as caught:
        load_refer_parquet(files, image_root, cache_dir=tmp_path / "cache")
    assert str(files) in str(caught.value)


def test_parquet_file_that_is_not_parquet_names_it(tmp_path):
    files, image_root = parquet_copy(tmp_path)
    (files / "testB-00000-of-00001.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ValueError, match=r"testB-00000-of-00001\.parquet: not a readable Parquet file"):
        load_refer_parquet(files, image_root, cache_dir=tmp_path / "cache")


def test_parquet_degenerate_targets_are_counted_warned_and_kept_out_of_training(tmp_path, caplog):
    """As for REFER files: ref 100 (train) loses its polygons to < 3 points, ref 200 (val) to a polygon wholly
    outside its image; neither is marked no_target, so each would be an empty training mask."""
    files, image_root = parquet_copy(tmp_path)
    segmentations = {100: [[5, 5, 35, 5], []], 200: [[100, 100, 120, 100, 120, 120]]}  # image 2 is 56×40
    for file in files.glob("*.parquet"):
        rows = pq.read_table(file).to_pylist()
        for row in rows:
            if row["ref_id"] in segmentations:
                row["raw_anns"] = json.dumps(
                    dict(json.loads(row["raw_anns"]), segmentation=segmentations[row["ref_id"]])
                )
        pq.write_table(pa.Table.from_pylist(rows), file)
    for attempt in ("build", "cache hit"):  # the cached build warns again
        caplog.clear()
        with caplog.at_level("WARNING"):
            data = load_refer_parquet(files, image_root, cache_dir=tmp_path / "cache")
        assert "2 ref(s) have an empty target mask" in caplog.text and "ref_id 100, 200" in caplog.text, attempt
        assert "left out of the train split(s)" in caplog.text
        assert data["train"]["ref_id"] == [101]  # 100 left out of training
        assert data["val"]["ref_id"] == [200, 201]  # evaluation keeps its samples
        assert not np.asarray(data["val"][0]["mask"]).any() and not data["val"][0]["no_target"]
    assert data["train"].features == data["val"].features == FEATURES  # the build-time flag column is gone
    caplog.clear()
    with caplog.at_level("WARNING"):
        kept = load_refer_parquet(files, image_root, cache_dir=tmp_path / "cache", keep_degenerate=True)
    assert "ref_id 100, 200" in caplog.text and "kept (keep_degenerate=True)" in caplog.text
    assert kept["train"]["ref_id"] == [100, 101]
    assert not kept["train"][0]["no_target"] and not np.asarray(kept["train"][0]["mask"]).any()


# --------------------------------------------------------------------------------------------------------------
# Records that contradict each other, blank refs, paths out of the data root, nesting
# --------------------------------------------------------------------------------------------------------------

BAD_RECORDS = {
    "ann_id_minus_one": ({"ann_id": -1}, r"ref 100: ann_id is -1, naming no annotation, but the ref is not marked"),
    "ann_id_none": ({"ann_id": None}, r"ref 100: ann_id is None, naming no annotation"),
    "ann_id_empty": ({"ann_id": []}, r"ref 100: ann_id is \[\], naming no annotation"),
    "all_blank": (
        {"sentences": [{"raw": " ", "sent": ""}, "  "]},
        r"ref 100: all 2 of its sentences are blank",
    ),
}


@pytest.mark.parametrize("name", list(BAD_RECORDS))
def test_refs_that_name_nothing_or_say_nothing_are_refused(tmp_path, name):
    change, match = BAD_RECORDS[name]
    root = refer_copy(tmp_path / "data", refs=[dict(REFCOCO_REFS[0], **change), *REFCOCO_REFS[1:]])
    with pytest.raises(ValueError, match=match):
        load_refer(root, "refcoco", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("ann_id", [[11, 12], [-1, 12], 12])
def test_a_no_target_ref_that_names_annotations_is_refused(tmp_path, ann_id):
    """gRefCOCO marks a ref that refers to nothing with no_target: true and ann_id [-1] (the copy's refs 1001 and
    4000 load); the flag beside real annotations would have made an empty ann_ids with a mask drawn from them."""
    root = write_refer_copy(tmp_path / "data")
    refs = [dict(r, ann_id=ann_id) if r["ref_id"] == 1001 else r for r in GREFS]
    (root / "grefcoco" / "grefs(unc).json").write_text(json.dumps(refs))
    ids = re.escape(str([a for a in ([ann_id] if isinstance(ann_id, int) else ann_id) if a >= 0]))
    match = r"grefs\(unc\)\.json: ref 1001: is marked as referring to nothing \(no_target is true\) but names "
    match += rf"annotation\(s\) {ids}: contradictory"
    with pytest.raises(ValueError, match=match):
        load_refer(root, "grefcoco", cache_dir=tmp_path / "cache")


def _duplicate(key: str, **changes):
    def edit(data: dict) -> None:
        data[key].append(dict(data[key][0], **changes))

    return edit


@pytest.mark.parametrize(
    "edit, match",
    [
        (_duplicate("images", width=999), r"instances\.json: images\[\d+\] repeats the id 1 .* different content"),
        (_duplicate("annotations", bbox=[0, 0, 1, 1]), r"annotations\[\d+\] repeats the id 11 .* different content"),
    ],
    ids=["image", "annotation"],
)
def test_duplicate_ids_with_different_content_are_refused(tmp_path, edit, match):
    root = refer_copy(tmp_path / "data", edit_instances=edit)
    with pytest.raises(ValueError, match=match):
        load_refer(root, "refcoco", cache_dir=tmp_path / "cache")


def test_an_identical_duplicate_is_harmless(tmp_path):
    root = refer_copy(tmp_path / "data", edit_instances=_duplicate("images"))
    assert len(load_refer(root, "refcoco", cache_dir=tmp_path / "cache")["train"]) > 0


@pytest.mark.parametrize("file_name", ["/etc/passwd", "../../../../etc/passwd", "a/../../x.jpg"])
def test_image_paths_out_of_the_data_root_are_refused(tmp_path, file_name):
    root = refer_copy(tmp_path / "data", edit_instances=set_image(1, file_name=file_name))
    with pytest.raises(ValueError, match=r"ref 100: the image path .* is not inside the image folder"):
        load_refer(root, "refcoco", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("image_path", ["/etc/passwd", "../../../etc/hostname"])
def test_parquet_image_paths_out_of_the_root_are_refused(tmp_path, image_path):
    files, image_root = parquet_copy(tmp_path, image_path=image_path)
    with pytest.raises(ValueError, match=r"ref 100: the image path .* is not inside the image folder"):
        load_refer_parquet(files, image_root, cache_dir=tmp_path / "cache")


def _ann(ann_id: int, **changes) -> str:
    return json.dumps(dict(next(a for a in instances()["annotations"] if a["id"] == ann_id), **changes))


@pytest.mark.parametrize(
    "change, match",
    [
        (  # ref 101 (the next row) gives image 1 as 64×48
            {"raw_image_info": json.dumps({"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": 999})},
            r"\(train\): ref 101: raw_image_info gives image 1 content that differs from ref 100's: which one is",
        ),
        (  # ref 101 (the next row) names annotation 12 with its own bbox
            {"ann_id": 12, "raw_anns": _ann(12, bbox=[0, 0, 1, 1])},
            r"\(train\): ref 101: raw_anns gives annotation 12 content that differs from ref 100's",
        ),
    ],
    ids=["image_info", "annotation"],
)
def test_parquet_duplicate_ids_with_different_content_are_refused(tmp_path, change, match):
    files, image_root = parquet_copy(tmp_path, **change)
    with pytest.raises(ValueError, match=match) as caught:
        load_refer_parquet(files, image_root, cache_dir=tmp_path / "cache")
    assert str(files) in str(caught.value)


def test_parquet_identical_duplicates_are_harmless(tmp_path):
    """Ref 100 names annotation 12 as ref 101 does, and gives image 1's info with its keys in another order."""
    info = dict(reversed(instances()["images"][0].items()))
    files, image_root = parquet_copy(tmp_path, ann_id=12, raw_anns=_ann(12), raw_image_info=json.dumps(info))
    train = load_refer_parquet(files, image_root, cache_dir=tmp_path / "cache")["train"]
    assert train["ann_ids"] == [[12], [12]]


@pytest.mark.parametrize(
    "change, match",
    [
        ({"ann_id": -1}, r"ref 100: is marked as referring to nothing \(ann_id -1\) but names annotation\(s\) \[11\]"),
        (
            {"sentences": [{"raw": " ", "sent": "", "sent_id": 1, "tokens": []}]},
            r"ref 100: all 1 of its sentences are blank",
        ),
        ({"raw_anns": "[" * 100_000 + "]" * 100_000}, r"ref 100: a JSON column is nested deeper"),
    ],
    ids=["ann_id_minus_one", "all_blank", "deep_json"],
)
def test_parquet_records_that_contradict_are_refused(tmp_path, change, match):
    files, image_root = parquet_copy(tmp_path, **change)
    with pytest.raises(ValueError, match=match):
        load_refer_parquet(files, image_root, cache_dir=tmp_path / "cache")


def test_parquet_no_target_column_beside_raw_anns_is_refused(tmp_path):
    """A `no_target` column (a gRefCOCO-style copy) is read as REFER's flag: true beside annotations is refused."""
    files, image_root = parquet_copy(tmp_path, refs=tuple(r["ref_id"] for r in REFCOCO_REFS), no_target=True)
    match = r"ref \d+: is marked as referring to nothing \(no_target is true\) but names annotation\(s\) \[\d+\]"
    with pytest.raises(ValueError, match=match):
        load_refer_parquet(files, image_root, cache_dir=tmp_path / "cache")


def test_deeply_nested_json_is_our_error(tmp_path):
    root = refer_copy(tmp_path / "data", instances_text="[" * 200_000 + "]" * 200_000)
    with pytest.raises(ValueError, match=r"instances\.json: not readable JSON \(nested deeper"):
        load_refer(root, "refcoco", cache_dir=tmp_path / "cache")
