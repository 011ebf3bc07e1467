"""Bad data files: each malformed or hostile input ends in a clear error naming the file and the record (or in a
correct result), within bounded memory. Tiny REFER / Parquet copies come from tests/test_data.py's writers."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from metris_hf.data import UnsafePickleError, restricted_pickle_load

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
    from metris_hf.data import UnsafePickleError, restricted_pickle_load
    vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
    headroom = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (vm + headroom, resource.getrlimit(resource.RLIMIT_AS)[1]))
    outcomes = {}
    for path in sys.argv[2:]:
        try:
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
    """Loads each file in a child process whose address space may grow by only `headroom` bytes."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", _BOMB_RUNNER, str(headroom), *map(str, paths)],
        capture_output=True, text=True, env=env, timeout=300,
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
