"""The insightface ``.bin`` reader accepts exactly what real files hold, and refuses the rest.

Legitimate files are made with the real pickler (protocols 0-5; images as bytes or as
``np.frombuffer(..., np.uint8)`` arrays; labels as bools or a bool array) or hand-assembled the
way Python 2 wrote them. Hostile files smuggle object pointers through a numpy dtype state, or
allocate far more memory than the file holds; those are read in a subprocess under an address
space limit, so that a regression fails the test instead of crashing or exhausting the runner.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from exfiqa.readers import BinFormatError, encode_image, read_bin, write_bin
from exfiqa.readers import bin as ds

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]


def _faces(n: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth random 112x112 RGB uint8 images."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        big = Image.fromarray(small).resize((112, 112), Image.BICUBIC)
        out.append(np.asarray(big, dtype=np.uint8).copy())
    return out


def _gray_png(level: int) -> bytes:
    """A 112x112 grayscale PNG under 256 bytes (Python 2 wrote it as SHORT_BINSTRING)."""
    buf = io.BytesIO()
    Image.new("L", (112, 112), level).save(buf, format="PNG", optimize=True)
    assert len(buf.getvalue()) < 256
    return buf.getvalue()


def _check_bench(path: Path, encoded: list[bytes], labels: list[bool]) -> None:
    bins, issame = ds._load_bin(path)
    assert [type(b) for b in bins] == [bytes] * len(encoded) and bins == encoded
    assert issame.dtype == bool and issame.tolist() == labels
    bench = read_bin(path)
    assert bench.comparisons["mated"].tolist() == labels
    for k, data in enumerate(encoded):
        np.testing.assert_array_equal(bench.image(k), ds.decode_image(data))


# ------------------------------------------------------------------- legitimate files load


@pytest.mark.parametrize("issame_as", ["list", "array"])
@pytest.mark.parametrize("bins_as", ["bytes", "frombuffer", "writable_array"])
@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_real_pickler_variants_load(
    tmp_path: Path, protocol: int, bins_as: str, issame_as: str
) -> None:
    imgs = _faces(4, seed=protocol)
    encoded = [encode_image(im, "png" if k < 2 else "jpeg") for k, im in enumerate(imgs)]
    labels = [True, False]
    bins: list[Any] = {
        "bytes": list(encoded),
        "frombuffer": [np.frombuffer(b, dtype=np.uint8) for b in encoded],
        # writable arrays travel as BYTEARRAY8 in protocol 5
        "writable_array": [np.frombuffer(b, dtype=np.uint8).copy() for b in encoded],
    }[bins_as]
    issame: Any = labels if issame_as == "list" else np.array(labels)
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps((bins, issame), protocol=protocol))
    _check_bench(path, encoded, labels)
    np.testing.assert_array_equal(read_bin(path).image(0), imgs[0])  # PNG is lossless


@pytest.mark.parametrize("protocol", [2, 3])
def test_numpy_1_module_names_load(tmp_path: Path, protocol: int) -> None:
    encoded = [encode_image(im, "png") for im in _faces(2, seed=7)]
    raw = pickle.dumps(([np.frombuffer(b, np.uint8) for b in encoded], np.array([True])), protocol)
    old = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert old != raw
    path = tmp_path / "agedb_30.bin"
    path.write_bytes(old)
    _check_bench(path, encoded, [True])


def test_write_bin_output_loads(tmp_path: Path) -> None:
    imgs = _faces(6, seed=3)
    path = tmp_path / "calfw.bin"
    write_bin(path, imgs, [True, False, True], fmt="jpeg")
    _check_bench(path, [encode_image(im, "jpeg") for im in imgs], [True, False, True])


def test_image_referenced_twice_through_the_memo_loads(tmp_path: Path) -> None:
    a, b = (encode_image(im, "png") for im in _faces(2, seed=4))
    path = tmp_path / "same_pairs.bin"
    for protocol in (3, 4):
        raw = pickle.dumps(([a, a, b, b], [True, True]), protocol=protocol)
        assert raw.count(a) == 1  # the second listing is a memo GET
        path.write_bytes(raw)
        _check_bench(path, [a, a, b, b], [True, True])


def test_many_images_span_several_append_batches(tmp_path: Path) -> None:
    items = [b"img%06d" % k * 3 for k in range(2002)]  # the pickler appends in batches of 1000
    labels = [k % 3 == 0 for k in range(1001)]
    path = tmp_path / "big.bin"
    for protocol in (0, 2, 4):
        path.write_bytes(pickle.dumps((items, labels), protocol=protocol))
        bins, issame = ds._load_bin(path)
        assert bins == items and issame.tolist() == labels
    path.write_bytes(_py2_protocol2(items, labels))
    bins, issame = ds._load_bin(path)
    assert bins == items and issame.tolist() == labels


# Python 2 files, assembled opcode by opcode the way Python 2's (c)Pickle wrote them: a str is
# SHORT_BINSTRING (< 256 bytes) or BINSTRING in protocol 2 and a quoted repr (STRING) in
# protocol 0; every str, list and tuple is memoized (BINPUT/LONG_BINPUT, or PUT); lists are
# filled by MARK ... APPENDS in batches of 1000, a lone item by APPEND; True/False are
# NEWTRUE/NEWFALSE in protocol 2 and INT "01"/"00" in protocol 0.


class _Py2Writer:
    def __init__(self) -> None:
        self.out = bytearray()
        self.memo = 0

    def put(self) -> None:
        if self.memo < 256:
            self.out += b"q" + bytes([self.memo])  # BINPUT
        else:
            self.out += b"r" + struct.pack("<I", self.memo)  # LONG_BINPUT
        self.memo += 1

    def string(self, data: bytes) -> None:
        if len(data) < 256:
            self.out += b"U" + bytes([len(data)]) + data  # SHORT_BINSTRING
        else:
            self.out += b"T" + struct.pack("<i", len(data)) + data  # BINSTRING
        self.put()

    def batched_list(self, items: list[Any], save: Any) -> None:
        self.out += b"]"  # EMPTY_LIST
        self.put()
        for start in range(0, len(items), 1000):
            batch = items[start : start + 1000]
            if len(batch) == 1:
                save(batch[0])
                self.out += b"a"  # APPEND
            else:
                self.out += b"("  # MARK
                for item in batch:
                    save(item)
                self.out += b"e"  # APPENDS


def _py2_bool(w: _Py2Writer, value: bool) -> None:
    w.out += b"\x88" if value else b"\x89"  # NEWTRUE / NEWFALSE


def _py2_protocol2(items: list[bytes], labels: list[bool]) -> bytes:
    w = _Py2Writer()
    w.out += b"\x80\x02"  # PROTO 2
    w.batched_list(items, w.string)
    w.batched_list(labels, lambda v: _py2_bool(w, v))
    w.out += b"\x86"  # TUPLE2
    w.put()
    return bytes(w.out) + b"."


def _py2_repr(data: bytes) -> bytes:
    """Python 2 ``repr(str)``: single quotes, \\\\ \\' \\t \\n \\r escaped, other
    non-printables as \\xNN."""
    named = {0x5C: b"\\\\", 0x27: b"\\'", 0x09: b"\\t", 0x0A: b"\\n", 0x0D: b"\\r"}
    out = bytearray(b"'")
    for c in data:
        out += named.get(c, bytes([c]) if 32 <= c < 127 else b"\\x%02x" % c)
    return bytes(out + b"'")


def _py2_protocol0(items: list[bytes], labels: list[bool]) -> bytes:
    out = bytearray(b"((lp0\n")  # MARK (the tuple), MARK LIST, PUT 0
    memo = 1
    for item in items:
        out += b"S" + _py2_repr(item) + b"\np%d\na" % memo  # STRING, PUT, APPEND
        memo += 1
    out += b"(lp%d\n" % memo
    memo += 1
    for v in labels:
        out += b"I01\na" if v else b"I00\na"  # INT True/False, APPEND
    out += b"tp%d\n." % memo  # TUPLE, PUT, STOP
    return bytes(out)


def _py2_numpy_array(w: _Py2Writer, data: bytes, spec: bytes) -> None:
    """A 1-D array as Python 2 numpy pickled it with protocol 2."""
    w.out += b"cnumpy.core.multiarray\n_reconstruct\n"
    w.put()
    w.out += b"cnumpy\nndarray\n"
    w.put()
    w.out += b"K\x00\x85"  # BININT1 0, TUPLE1
    w.put()
    w.string(b"b")
    w.out += b"\x87"  # TUPLE3
    w.put()
    w.out += b"R"  # REDUCE
    w.put()
    w.out += b"(K\x01" + b"J" + struct.pack("<i", len(data)) + b"\x85"  # MARK 1 (n,)
    w.put()
    w.out += b"cnumpy\ndtype\n"
    w.put()
    w.string(spec)
    w.out += b"K\x00K\x01\x87"  # (spec, 0, 1): Python 2 numpy wrote ints, not bools
    w.put()
    w.out += b"R"
    w.put()
    w.out += b"(K\x03"
    w.string(b"|")
    w.out += b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"  # the dtype state
    w.put()
    w.out += b"b\x89"  # BUILD, NEWFALSE (not Fortran)
    w.string(data)
    w.out += b"t"
    w.put()
    w.out += b"b"  # BUILD


def _py2_numpy_pickle(items: list[bytes], labels: list[bool]) -> bytes:
    w = _Py2Writer()
    w.out += b"\x80\x02"
    w.batched_list(items, lambda data: _py2_numpy_array(w, data, b"u1"))
    _py2_numpy_array(w, bytes(labels), b"b1")
    w.out += b"\x86"
    w.put()
    return bytes(w.out) + b"."


@pytest.mark.parametrize("writer", [_py2_protocol2, _py2_protocol0, _py2_numpy_pickle])
def test_python2_files_load(tmp_path: Path, writer: Any) -> None:
    encoded = [_gray_png(40), encode_image(_faces(1, seed=5)[0], "jpeg"), _gray_png(200)]
    encoded.append(encode_image(_faces(1, seed=6)[0], "png"))
    assert len(encoded[0]) < 256 < len(encoded[1])  # SHORT_BINSTRING and BINSTRING
    assert any(c in encoded[1] for c in b"\\'\n\r\t")  # protocol 0 escapes are exercised
    labels = [False, True]
    path = tmp_path / "cplfw.bin"
    path.write_bytes(writer(encoded, labels))
    _check_bench(path, encoded, labels)


# ------------------------------------------------------------------- hostile files: helpers


class _Reduce:
    """Pickles as ``reduce[0](*reduce[1])``, then BUILD with ``reduce[2]`` if given."""

    def __init__(self, *reduce: Any) -> None:
        self.reduce = reduce

    def __reduce__(self) -> tuple[Any, ...]:
        return self.reduce


_PLAIN_STATE = (3, "|", None, None, None, -1, -1, 0)


def _dtype(spec: str, state: tuple[Any, ...] = _PLAIN_STATE) -> _Reduce:
    return _Reduce(np.dtype, (spec, False, True), state)


def _array(dtype: Any, shape: tuple[int, ...], data: bytes, fortran: bool = False) -> _Reduce:
    """What ``ndarray.__reduce__`` returns, with any dtype, shape and data."""
    return _Reduce(_reconstruct, (np.ndarray, (0,), b"b"), (1, shape, dtype, fortran, data))


def _object_pointer_dtype() -> bytes:
    # bins as an object array whose dtype state claims "no object references": numpy takes each
    # 8 data bytes for a PyObject* (the old reader segfaulted iterating over bins)
    dt = _dtype("O8", (3, "|", None, None, None, -1, -1, 0))
    return pickle.dumps((_array(dt, (2,), b"\x41" * 16), [True]), protocol=2)


def _void_dtype_object_field() -> bytes:
    obj = _dtype("O8", (3, "|", None, None, None, -1, -1, 63))
    dt = _dtype("V8", (3, "|", None, ("f0",), {"f0": (obj, 0)}, 8, 1, 0))
    return pickle.dumps(([_array(dt, (1,), b"\x41" * 8)] * 2, [True]), protocol=2)


def _uint8_dtype_hasobject_flags() -> bytes:
    dt = _dtype("u1", (3, "|", None, None, None, -1, -1, 63))  # NPY_ITEM_HASOBJECT and more
    return pickle.dumps(([_array(dt, (8,), b"\x41" * 8)] * 2, [True]), protocol=4)


def _zero_stride() -> bytes:
    view = _Reduce(np.ndarray, ((10**9,), _dtype("u1"), b"x", 0, (0,)))
    return pickle.dumps(([view, view], [True]), protocol=2)


def _shape_larger_than_data() -> bytes:
    empty = _Reduce(np.ndarray, ((10**9,), _dtype("u1")))
    return pickle.dumps(([empty, empty], [True]), protocol=2)


def _state_shape_larger_than_data() -> bytes:
    return pickle.dumps(([_array(_dtype("u1"), (10**9,), b"x")] * 2, [True]), protocol=3)


def _huge_shape_reconstruct() -> bytes:
    big = _Reduce(_reconstruct, (np.ndarray, (10**9,), b"B"))  # no BUILD: 1 GB uninitialized
    return pickle.dumps(([big, big], [True]), protocol=2)


def _memo_bytes_repeated() -> bytes:
    return pickle.dumps(([b"\xff" * 10**5] * 10**4, [True] * (5 * 10**3)), protocol=4)


def _memo_array_repeated() -> bytes:
    arr = np.frombuffer(b"\xff" * 10**5, dtype=np.uint8)
    return pickle.dumps(([arr] * 10**4, [True] * (5 * 10**3)), protocol=2)


def _declared_length_bomb() -> bytes:
    return b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"x."  # BINBYTES8 of 2**62 bytes


_CHILD = r"""
import json, resource, sys, tracemalloc
from exfiqa.readers import read_bin

with open("/proc/self/status") as fh:
    vm_kb = next(int(line.split()[1]) for line in fh if line.startswith("VmSize:"))
limit = (vm_kb + int(sys.argv[2])) * 1024
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if len(sys.argv) > 3:
    tracemalloc.start()
try:
    bench = read_bin(sys.argv[1])
    outcome = {"error": None, "n": len(bench)}
except BaseException as exc:
    outcome = {"error": type(exc).__name__, "message": str(exc)[:2000]}
outcome["grew_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
if len(sys.argv) > 3:
    outcome["peak_bytes"] = tracemalloc.get_traced_memory()[1]  # Python and numpy allocations
print(json.dumps(outcome))
"""

_HEADROOM_KB = 512 * 1024  # address space the child may add; the attacks want gigabytes
_MAX_GROWTH_KB = 100 * 1024  # resident memory the child may add reading a <3 MB file


def _read_in_child(path: Path, traced: bool = False) -> dict[str, Any]:
    """read_bin(path) in a child process; ``traced`` adds the peak of traced allocations."""
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(_HEADROOM_KB), *(["traced"] * traced)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, f"reader died with {proc.returncode}: {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------- hostile files: pointers and bombs


_ATTACKS = [
    (_object_pointer_dtype, r"refused call dtype\('O8'"),
    (_void_dtype_object_field, r"refused call dtype\('V8'"),
    (
        _uint8_dtype_hasobject_flags,
        r"refused numpy dtype state \(3, '\|', None, None, None, -1, -1, 63\)",
    ),
    (_zero_stride, r"refused call ndarray\(\(1000000000,\), numpy dtype u1, b'x', 0, \(0,\)\)"),
    (_shape_larger_than_data, r"refused call ndarray\(\(1000000000,\)"),
    (
        _state_shape_larger_than_data,
        r"array shape \(1000000000,\) does not fit its 1 bytes of data",
    ),
    (_huge_shape_reconstruct, r"refused call _reconstruct\(global ndarray, \(1000000000,\)"),
    (_memo_bytes_repeated, r"bins lists 1000000000 bytes of images from a \d+-byte file"),
    (_memo_array_repeated, r"bins lists 1000000000 bytes of images from a \d+-byte file"),
    (
        _declared_length_bomb,
        r"not a readable verification \.bin pickle \(expected 4611686018427387904 bytes",
    ),
]


@pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="needs Linux /proc and RLIMIT_AS"
)
@pytest.mark.parametrize(
    ("make", "refused"), _ATTACKS, ids=[make.__name__.strip("_") for make, _ in _ATTACKS]
)
def test_pointer_and_allocation_attacks_refused_in_bounded_memory(
    tmp_path: Path, make: Any, refused: str
) -> None:
    path = tmp_path / "evil.bin"
    path.write_bytes(make())
    assert path.stat().st_size < 3 * 2**20
    outcome = _read_in_child(path)
    assert outcome["error"] == "BinFormatError", outcome
    assert outcome["message"].startswith(f"{path}: "), outcome
    assert re.search(refused, outcome["message"]), outcome
    assert outcome["grew_kb"] < _MAX_GROWTH_KB, outcome


# --------------------------------------------------------------- hostile files: the rest


def _refused(path: Path, data: bytes, pattern: str) -> None:
    path.write_bytes(data)
    with pytest.raises(BinFormatError) as err:
        read_bin(path)
    assert str(err.value).startswith(f"{path}: "), err.value
    assert re.search(pattern, str(err.value)), err.value


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_code_execution_refused(tmp_path: Path, protocol: int) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    command = f"touch {target}"
    system = _Reduce(os.system, (command,))
    _refused(path, pickle.dumps(([system], [True]), protocol), r"refused global (posix|nt)\.system")
    _refused(path, b"cos\nsystem\n(V" + command.encode() + b"\ntR.", r"refused global os\.system")
    code = f"__import__('pathlib').Path({str(target)!r}).touch()"
    _refused(
        path,
        pickle.dumps(([_Reduce(eval, (code,))], [True]), protocol),
        r"refused global (__builtin__|builtins)\.eval",
    )
    assert not target.exists()


_U1 = np.dtype(np.uint8)


@pytest.mark.parametrize(
    ("obj", "protocol", "refused"),
    [
        # dtypes other than the plain uint8/bool
        (([np.zeros(2, dtype=[("a", "u1")])] * 2, [True]), 2, r"refused call dtype\('V1'"),
        (
            ([_array(_dtype("u1", (3, "|", None, ("a",), None, 1, 1, 0)), (1,), b"x")] * 2, [True]),
            2,
            r"refused numpy dtype state \(3, '\|', None, \('a',\), None, 1, 1, 0\)",
        ),
        (
            (
                [
                    _array(
                        _dtype("u1", (3, "|", None, ("a",), {"a": (_U1, 0)}, 1, 1, 0)), (1,), b"x"
                    )
                ],
                [],
            ),
            4,
            r"opcode EMPTY_DICT does not occur",
        ),
        (
            ([_array(_dtype("u1", (3, ">", None, None, None, -1, -1, 0)), (1,), b"x")] * 2, [True]),
            3,
            r"refused numpy dtype state",
        ),
        (([np.frombuffer(b"ab", np.int8)] * 2, [True]), 2, r"refused call dtype\('i1'"),
        (([np.array([b"a", b"b"], dtype=object)], []), 2, r"refused call dtype\('O8'"),
        (
            ([_array(_Reduce(np.dtype, ("u1", False, True)), (1,), b"x")] * 2, [True]),
            2,
            r"array dtype is numpy dtype u1, expected a built",
        ),
        # array shapes, layouts and contents
        (
            ([np.zeros((2, 3), np.uint8)] * 2, [True]),
            2,
            r"array shape \(2, 3\) does not fit its 6 bytes of data",
        ),
        (
            ([np.zeros((2, 3), np.uint8)] * 2, [True]),
            5,
            r"array shape \(2, 3\) does not fit its 6 bytes of data",
        ),
        (
            ([_array(_U1, (3,), b"xy")] * 2, [True]),
            3,
            r"array shape \(3,\) does not fit its 2 bytes of data",
        ),
        (
            ([_array(_U1, (0,), b"xy")] * 2, [True]),
            3,
            r"array shape \(0,\) does not fit its 2 bytes of data",
        ),
        (([_array(_U1, (2,), b"xy", fortran=True)] * 2, [True]), 3, r"refused numpy array state"),
        ((np.frombuffer(b"abcd", np.uint8), [True]), 2, r"bins is uint8 array"),
        (([b"a", b"b"], np.frombuffer(b"\x01", np.uint8)), 2, r"issame_list is uint8 array"),
        (([b"a", b"b"], np.frombuffer(b"\x02", np.uint8).view(bool)), 4, r"bool array holds"),
        (([b"a", b"b"], [2]), 2, r"issame_list\[0\] = 2 is not a bool"),
        (([b"a", b"b"], [np.True_]), 2, r"refused global numpy.*scalar"),
        (
            ([b"a", np.frombuffer(b"\x01", np.uint8).view(bool)], [True]),
            2,
            r"bins\[1\] is bool array",
        ),
        # the top level
        ([[b"a", b"b"], [True]], 2, r"expected a pickled 2-tuple \(bins, issame_list\), got list"),
        (([b"a", b"b"], [True], [True]), 4, r"2-tuple \(bins, issame_list\), got tuple of 3"),
        ({"bins": [b"a", b"b"], "issame": [True]}, 2, r"opcode EMPTY_DICT"),
        ("(bins, issame)", 4, r"2-tuple \(bins, issame_list\), got str"),
        # other calls of the admitted globals
        (([_Reduce(bytes, (5,))] * 2, [True]), 2, r"refused call bytes\(5\)"),
        (
            ([_Reduce(__import__("_codecs").encode, ("ab", "utf-8"))] * 2, [True]),
            2,
            r"refused call encode\('ab', 'utf-8'\)",
        ),
        (
            ([_Reduce(__import__("_codecs").encode, ("\u20ac", "latin1"))] * 2, [True]),
            2,
            r"not latin-1",
        ),
    ],
)
def test_structures_outside_the_grammar_refused(
    tmp_path: Path, obj: Any, protocol: int, refused: str
) -> None:
    _refused(tmp_path / "bad.bin", pickle.dumps(obj, protocol=protocol), refused)


def test_out_of_band_buffers_refused(tmp_path: Path) -> None:
    buffers: list[Any] = []
    raw = pickle.dumps(
        ([np.frombuffer(b"ab", np.uint8)] * 2, [True]), protocol=5, buffer_callback=buffers.append
    )
    assert buffers
    _refused(tmp_path / "oob.bin", raw, r"opcode (NEXT_BUFFER|READONLY_BUFFER) does not occur")


def test_memo_and_stack_misuse_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.bin"
    u1 = b"cnumpy\ndtype\nX\x02\x00\x00\x00u1\x89\x88\x87R"  # dtype('u1', False, True)
    u1 += b"(K\x03X\x01\x00\x00\x00|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    array = b"cnumpy._core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87Rq\x01"
    image = b"xy" * 12  # MIN_BIN_IMAGE_BYTES
    state = b"(K\x01K\x18\x85" + u1 + b"\x89C\x18" + image + b"tb"  # (1, (24,), u1, False, image)
    labels = b"]\x88a"  # [True]
    path.write_bytes(b"\x80\x03]" + array + state + b"ah\x01a" + labels + b"\x86.")
    assert ds._load_bin(path)[0] == [image, image]  # the hand-assembled form is accepted
    # a second BUILD of the memoized array would swap its data after it was checked
    rebuild = b"\x80\x03]" + array + state + b"ah\x01(K\x01K\x03\x85" + u1
    rebuild += b"\x89C\x03abctba" + labels + b"\x86."
    _refused(path, rebuild, r"BUILD of uint8 array")
    _refused(path, b"\x80\x02]h\x07\x86.", r"memo entry 7 was never stored")
    _refused(path, b"\x80\x02K\x01K\x02\x93.", r"STACK_GLOBAL of int and int")
    _refused(path, b"\x80\x02]a.", r"stack underflow")
    _refused(path, b"\x80\x02e.", r"no MARK")
    _refused(path, b"\x80\x02]]]\x86.", r"STOP with 2 values")
    _refused(path, b"\x80\x02](].", r"STOP with 1 values and 1 open MARKs")


def test_truncated_empty_and_trailing_data_refused(tmp_path: Path) -> None:
    path = tmp_path / "lfw.bin"
    write_bin(path, _faces(2), [True], fmt="png")
    good = path.read_bytes()
    for cut in (1, 3, len(good) // 2, len(good) - 1):
        _refused(path, good[:cut], r"not a readable verification \.bin pickle")
    _refused(path, b"", r"not a readable .* ends before the pickle's STOP opcode")
    _refused(path, good + b"\x00", r"data after the pickle's STOP opcode")
    _refused(path, b"\xff\x00", r"b'\\xff' is not a pickle opcode")
    _refused(path, b"\x80\x09.", r"unknown pickle protocol 9")


# ------------------------------------------------- hostile files: floods of one-byte opcodes

_FLOOD_BYTES = 4 * 2**20


def _flood(unit: bytes, head: bytes = b"\x80\x04") -> bytes:
    return head + unit * (_FLOOD_BYTES // len(unit)) + b"."


_FLOODS = {
    "EMPTY_LIST": (_flood(b"]"), r"more than 4096 values on the stack"),
    "MARK": (_flood(b"("), r"more than 8 nested MARKs"),
    "MEMOIZE": (_flood(b"\x94", b"\x80\x04N"), r"memo entries for 1 values"),
    "LONG_BINPUT": (
        b"\x80\x02N" + b"".join(b"r" + struct.pack("<I", k) for k in range(_FLOOD_BYTES // 5)) + b".",
        r"memo entries for 1 values",
    ),
    "TUPLE1": (_flood(b"\x85", b"\x80\x04N"), r"builds more than [\d,]+ bytes of values"),
    "EMPTY_LIST_APPEND": (_flood(b"]a", b"\x80\x04]"), r"builds more than [\d,]+ bytes of values"),
    "NEWTRUE_APPEND": (_flood(b"\x88a", b"\x80\x04]"), r"builds more than [\d,]+ bytes of values"),
    "MARK_LIST_APPEND": (_flood(b"(la", b"\x80\x02]"), r"builds more than [\d,]+ bytes of values"),
    "BINGET_APPEND": (_flood(b"h\x00a", b"\x80\x02]q\x00"), r"builds more than [\d,]+ bytes of values"),
    "SHORT_BINBYTES_APPENDS": (
        _flood(b"(" + b"C\x00" * 999 + b"e", b"\x80\x04]"),
        r"builds more than [\d,]+ bytes of values",
    ),
}


@pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="needs Linux /proc and RLIMIT_AS"
)
@pytest.mark.parametrize("name", list(_FLOODS))
def test_opcode_floods_refused_below_4x_the_file(tmp_path: Path, name: str) -> None:
    data, refused = _FLOODS[name]
    path = tmp_path / "flood.bin"
    path.write_bytes(data)
    outcome = _read_in_child(path, traced=True)
    assert outcome["error"] == "BinFormatError", outcome
    assert outcome["message"].startswith(f"{path}: "), outcome
    assert re.search(refused, outcome["message"]), outcome
    assert outcome["peak_bytes"] < 4 * len(data), (outcome, len(data))


def test_tiny_images_refused_and_sample_count_bounded(tmp_path: Path) -> None:
    path = tmp_path / "tiny.bin"
    path.write_bytes(pickle.dumps(([b"x" * 23, b"y" * 30], [True]), protocol=4))
    with pytest.raises(BinFormatError, match=r"bins\[0\] is 23 bytes; no encoded 112x112 image"):
        read_bin(path)
    # the smallest 112x112 image we know of, a GIF with a 1x1 frame, is accepted and decodes
    gif = b"GIF89a" + struct.pack("<HH", 112, 112) + b"\x00\x00\x00,"
    gif += struct.pack("<HHHH", 0, 0, 1, 1) + b"\x00\x02\x02\x44\x01\x00;"
    assert len(gif) == 29 >= ds.MIN_BIN_IMAGE_BYTES
    path.write_bytes(pickle.dumps(([gif, gif], [True]), protocol=2))
    assert read_bin(path).image(1).shape == (112, 112, 3)


@pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="needs Linux /proc and RLIMIT_AS"
)
@pytest.mark.parametrize("size", [ds.MIN_BIN_IMAGE_BYTES, 200])
def test_many_small_images_cost_below_4x_the_file(tmp_path: Path, size: int) -> None:
    # read (200-byte images) or refused by the memory budget (24-byte ones: Python's per-object
    # overhead would be 5x the file), but below 4x the file either way, data frames included
    n = _FLOOD_BYTES // (size + 4) // 2 * 2
    images = [b"%0*d" % (size, k) for k in range(n)]
    path = tmp_path / "many.bin"
    path.write_bytes(pickle.dumps((images, [True] * (n // 2)), protocol=4))
    outcome = _read_in_child(path, traced=True)
    if size == 200:
        assert outcome["error"] is None and outcome["n"] == n, outcome
    else:
        assert outcome["error"] == "BinFormatError", outcome
        assert "builds more than" in outcome["message"], outcome
    assert outcome["peak_bytes"] < 4 * path.stat().st_size, (outcome, path.stat().st_size)
