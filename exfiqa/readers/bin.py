"""insightface verification ``.bin`` files (LFW, AgeDB-30, CFP-FP, CALFW, CPLFW): read and write.

A ``.bin`` is never unpickled: :class:`_BinMachine`, a typed stack machine that knows only the
opcodes and the few constructors real files use, checks every opcode and builds inert values
itself (bytes, scalars, str, tuples, lists, and placeholders for numpy dtypes/arrays), so no code
from the file runs and memory stays proportional to the file size.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import pickletools
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from exfiqa.io import clip
from exfiqa.readers.benchmark import (
    Benchmark,
    DatasetFormatError,
    ImageFormat,
    decode_image,
    encode_image,
    write_bytes,
)
from exfiqa.readers.images import IMAGE_SIZE

__all__ = ["MIN_BIN_IMAGE_BYTES", "BinFormatError", "read_bin", "write_bin"]


class BinFormatError(DatasetFormatError):
    """An insightface ``.bin`` file that is unsafe or not a ``(bins, issame_list)`` pickle."""


_BIN_GLOBALS: dict[tuple[str, str], str] = {
    ("_codecs", "encode"): "encode",
    ("__builtin__", "bytes"): "bytes",
    ("builtins", "bytes"): "bytes",
    ("numpy", "dtype"): "dtype",
    ("numpy", "ndarray"): "ndarray",
    ("numpy.core.multiarray", "_reconstruct"): "_reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "_reconstruct",
    ("numpy.core.numeric", "_frombuffer"): "_frombuffer",
    ("numpy._core.numeric", "_frombuffer"): "_frombuffer",
}
"""The only globals a ``.bin`` may name, mapped to the call the machine stands in for."""

_BIN_CALLS = {
    "encode": "_codecs.encode(str, 'latin1')",
    "bytes": "bytes()",
    "dtype": "numpy.dtype('u1' or 'b1', False, True)",
    "ndarray": "none (numpy.ndarray is only an argument of _reconstruct)",
    "_reconstruct": "_reconstruct(numpy.ndarray, (0,), b'b')",
    "_frombuffer": "_frombuffer(bytes, dtype, (n,), 'C')",
}
"""The one form in which each global is called (``numpy.ndarray`` is only an argument)."""

_LATIN1 = ("latin1", "latin-1")
_MAX_LISTED_BYTES_PER_FILE_BYTE = 2  # the memo may list an image twice, not amplify the file
_MAX_MARK_DEPTH = 8  # real files open 2 MARKs at once, 4 with numpy arrays of protocol 0/1
_MAX_STACK = 4096  # values on the stack, MARK frames included; the pickler appends 1000 at a time
MIN_BIN_IMAGE_BYTES = 24
"""Shortest encoded image a ``.bin`` may hold (no 112x112 image Pillow reads is shorter: a GIF
with a 1x1 frame takes 29), so the number of samples is bounded by the file size."""
_MEMORY_PER_FILE_BYTE = 2
_MEMORY_FLOOR = 1 << 20
"""Budget of the values built, as estimated by :meth:`_BinMachine._charge`: ``_MEMORY_PER_FILE_BYTE``
bytes per file byte plus this floor, so a ``.bin`` is read in below about 4x its size."""

_OPCODES = {op.code.encode("latin-1"): op for op in pickletools.opcodes}
_SCALAR_OPS = frozenset({"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "UNICODE",
                         "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"})
# BINSTRING and SHORT_BINSTRING (a Python 2 str, which pickletools reads as latin-1) become bytes
_BYTES_OPS = frozenset({"STRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8",
                        "BINSTRING", "SHORT_BINSTRING"})
_CONSTANT_OPS: dict[str, Any] = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False, "EMPTY_TUPLE": ()}
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})


class _Refused(Exception):
    """A ``.bin`` pickle left the accepted grammar; the message says where and why."""


@dataclass(frozen=True)
class _Global:
    """A global of :data:`_BIN_GLOBALS`, as GLOBAL / STACK_GLOBAL push it."""

    name: str


@dataclass(eq=False)
class _Dtype:
    """``numpy.dtype(spec, False, True)``; an array may use it once BUILD set the plain state."""

    spec: str  # "u1" (uint8) or "b1" (bool)
    built: bool = False


@dataclass(eq=False, repr=False)
class _Array:
    """A 1-D uint8 or bool array, one data byte per element; ``spec`` is None until filled."""

    spec: str | None = None
    data: bytes = b""


def _is(value: Any, *options: object) -> bool:
    """``value`` equals one of ``options`` with its exact type (True is not 1, b"u1" not "u1")."""
    return any(type(value) is type(o) and value == o for o in options)


def _kind(value: Any) -> str:
    """The type of a machine value, for error messages."""
    if isinstance(value, _Array):
        return {"u1": "uint8 array", "b1": "bool array"}.get(value.spec or "", "unfilled array")
    if isinstance(value, _Dtype):
        return f"numpy dtype {value.spec}"
    if isinstance(value, _Global):
        return f"global {value.name}"
    if type(value) in (tuple, list):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__


def _describe(value: Any, depth: int = 0) -> str:
    """Short text for a machine value in an error message; never prints a payload."""
    if value is None or type(value) is bool or (type(value) is int and abs(value) < 2**63):
        return repr(value)
    if type(value) in (str, bytes) and len(value) <= 16:
        return repr(value)
    if type(value) is tuple and depth < 2 and len(value) <= 8:
        inner = ", ".join(_describe(v, depth + 1) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return _kind(value)


def _pickle_ops(data: bytes) -> Iterator[tuple[int, str, Any]]:
    """Yield (position, opcode name, argument) before STOP, like :func:`pickletools.genops`, but a
    protocol-0 ``STRING`` (Python 2 ``str``) comes back as bytes and data after STOP is an error."""
    f = io.BytesIO(data)
    while True:
        pos = f.tell()
        code = f.read(1)
        if not code:
            raise ValueError("the file ends before the pickle's STOP opcode")
        op = _OPCODES.get(code)
        if op is None:
            raise ValueError(f"byte {pos}: {code!r} is not a pickle opcode")
        if op.name == "STRING":
            arg = codecs.escape_decode(pickletools.read_stringnl(f, decode=False))[0]
        else:
            arg = None if op.arg is None else op.arg.reader(f)
        if op.name == "STOP":
            if f.read(1):
                raise ValueError(f"byte {pos + 1}: data after the pickle's STOP opcode")
            return
        yield pos, op.name, arg


def _bin_global(module: Any, name: Any) -> _Global:
    if type(module) is not str or type(name) is not str:
        raise _Refused(f"STACK_GLOBAL of {_kind(module)} and {_kind(name)}")
    kind = _BIN_GLOBALS.get((module, name))
    if kind is None:
        raise _Refused(f"refused global {clip(f'{module}.{name}')}: a verification .bin holds only (list of "
                       f"encoded images, list of bools); any other object could run code")
    return _Global(kind)


def _bin_call(fn: Any, args: Any) -> Any:
    """REDUCE: the value of ``fn(*args)`` for the accepted calls, built without calling it."""
    if not isinstance(fn, _Global) or type(args) is not tuple:
        raise _Refused(f"REDUCE of {_kind(fn)} with {_kind(args)}: only globals are called")
    n = len(args)
    if fn.name == "encode" and n == 2 and type(args[0]) is str and _is(args[1], *_LATIN1):
        try:
            return args[0].encode("latin-1")
        except UnicodeEncodeError:
            raise _Refused("_codecs.encode of a str that is not latin-1") from None
    if fn.name == "bytes" and n == 0:
        return b""
    if fn.name == "dtype" and n == 3 and _is(args[1], False, 0) and _is(args[2], True, 1):
        for spec in ("u1", "b1"):
            if _is(args[0], spec, spec.encode()):  # Python 2 wrote the spec as a str -> bytes
                return _Dtype(spec)
    if fn.name == "_reconstruct" and n == 3 and _is(args[0], _Global("ndarray")) and _is(args[2], b"b"):
        if type(args[1]) is tuple and len(args[1]) == 1 and _is(args[1][0], 0):
            return _Array()
    if fn.name == "_frombuffer" and n == 4 and type(args[0]) is bytes and _is(args[3], "C"):
        array = _Array()
        _bin_fill(array, args[1], args[2], args[0])
        return array
    shown = ", ".join(_describe(a, depth=1) for a in args[:8]) + ", ..." * (n > 8)
    raise _Refused(f"refused call {fn.name}({shown}): the only such call in a verification .bin is "
                   f"{_BIN_CALLS[fn.name]}")


def _bin_build(obj: Any, state: Any) -> None:
    """BUILD: set the state of a fresh dtype or array, accepting only the plain 1-D forms."""
    if isinstance(obj, _Dtype) and not obj.built:
        # (version, byte order, subarray, names, fields, itemsize, alignment, flags)
        if not (
            type(state) is tuple and len(state) == 8 and _is(state[0], 3) and _is(state[1], "|", b"|")
            and all(v is None for v in state[2:5]) and all(_is(v, -1, 1) for v in state[5:7])
            and _is(state[7], 0)  # flags: no object references
        ):
            raise _Refused(f"refused numpy dtype state {_describe(state)}: only the plain uint8/bool state "
                           f"(3, '|', None, None, None, -1, -1, 0) occurs in a .bin (names, fields, "
                           f"subarrays or flags could make the array's bytes object pointers)")
        obj.built = True
    elif isinstance(obj, _Array) and obj.spec is None:
        # (version, shape, dtype, Fortran order, data)
        if not (
            type(state) is tuple and len(state) == 5 and _is(state[0], 1) and _is(state[3], False, 0)
            and type(state[4]) is bytes
        ):
            raise _Refused(f"refused numpy array state {_describe(state)}: expected "
                           f"(1, (n,), dtype, False, n bytes)")
        _bin_fill(obj, state[2], state[1], state[4])
    else:
        raise _Refused(f"BUILD of {_kind(obj)}: only a new numpy dtype or array has a state")


def _bin_fill(array: _Array, dtype: Any, shape: Any, data: bytes) -> None:
    """Give ``array`` its dtype and data: 1-D, exactly one byte of ``data`` per element."""
    if not (isinstance(dtype, _Dtype) and dtype.built):
        raise _Refused(f"array dtype is {_kind(dtype)}, expected a built uint8 or bool dtype")
    if not (type(shape) is tuple and len(shape) == 1 and type(shape[0]) is int and shape[0] == len(data)):
        raise _Refused(f"array shape {_describe(shape)} does not fit its {len(data)} bytes of data: a .bin "
                       f"array is 1-D with one byte per element")
    if dtype.spec == "b1" and data.translate(None, b"\x00\x01"):
        raise _Refused("bool array holds bytes other than 0 and 1")
    array.spec, array.data = dtype.spec, data


class _BinMachine:
    """Evaluates a ``.bin`` pickle's opcodes with the grammar of :func:`_load_bin`; refuses more than
    :data:`_MAX_MARK_DEPTH` open MARKs, :data:`_MAX_STACK` values, more memo entries than values."""

    def __init__(self) -> None:
        self.stack: list[Any] = []
        self.marks: list[list[Any]] = []  # the stacks set aside by MARK
        self.below = 0  # values held in self.marks
        self.memo: dict[int, Any] = {}
        self.values = 0  # values pushed so far
        self.cost = 0  # estimated bytes of everything built so far (never decreases)
        self.budget = _MEMORY_FLOOR

    def _charge(self, nbytes: int) -> None:
        self.cost += nbytes
        if self.cost > self.budget:
            raise _Refused(f"the pickle builds more than {self.budget:,} bytes of values from a file of "
                           f"{(self.budget - _MEMORY_FLOOR) // _MEMORY_PER_FILE_BYTE:,} bytes: a verification "
                           f".bin holds little besides its images")

    def run(self, data: bytes) -> Any:
        """The pickle's top-level value (refused by :class:`_Refused` on the first violation)."""
        self.budget = _MEMORY_PER_FILE_BYTE * len(data) + _MEMORY_FLOOR
        for pos, op, arg in _pickle_ops(data):
            try:
                self._step(op, arg)
            except _Refused as exc:
                raise _Refused(f"byte {pos} ({op}): {exc}") from None
        if self.marks or len(self.stack) != 1:
            raise _Refused(f"STOP with {len(self.stack)} values and {len(self.marks)} open MARKs, "
                           f"expected one value")
        return self.stack[0]

    def _push(self, value: Any, size: int = 0) -> None:
        """Push ``value``; ``size`` is the estimated memory of a value made for it (0: shared)."""
        if len(self.stack) + self.below >= _MAX_STACK:
            raise _Refused(f"more than {_MAX_STACK} values on the stack; a real .bin holds about 1,000 "
                           f"(the pickler appends list items in batches of 1000)")
        self._charge(size + 8)
        self.values += 1
        self.stack.append(value)  # self.stack, not a bound method: MARK and TUPLE replace it

    def _pop(self, n: int) -> list[Any]:
        if len(self.stack) < n:
            raise _Refused("stack underflow")
        items = self.stack[len(self.stack) - n :]
        del self.stack[len(self.stack) - n :]
        return items

    def _pop_mark(self) -> list[Any]:
        if not self.marks:
            raise _Refused("no MARK")
        items, self.stack = self.stack, self.marks.pop()
        self.below -= len(self.stack)
        return items

    def _top(self) -> Any:
        if not self.stack:
            raise _Refused("stack underflow")
        return self.stack[-1]

    def _top_list(self) -> list[Any]:
        top = self._top()
        if type(top) is not list:
            raise _Refused(f"append to {_kind(top)}")
        return top

    def _step(self, op: str, arg: Any) -> None:
        if op == "PROTO":
            if arg > 5:
                raise _Refused(f"unknown pickle protocol {arg}")
        elif op == "FRAME":
            pass  # only groups the following opcodes
        elif op == "MARK":
            if len(self.marks) >= _MAX_MARK_DEPTH:
                raise _Refused(f"more than {_MAX_MARK_DEPTH} nested MARKs; a real .bin opens at most 2 "
                               f"(4 with numpy arrays pickled by protocol 0 or 1)")
            self._charge(64)
            self.below += len(self.stack)
            self.marks.append(self.stack)
            self.stack = []
        elif op in _CONSTANT_OPS:
            self._push(_CONSTANT_OPS[op])
        elif op in _SCALAR_OPS:
            self._push(arg, sys.getsizeof(arg))
        elif op in _BYTES_OPS:
            value = arg.encode("latin-1") if type(arg) is str else bytes(arg)
            self._push(value, sys.getsizeof(value))
        elif op in ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"):
            value = tuple(self._pop_mark() if op == "TUPLE" else self._pop(int(op[-1])))
            self._push(value, sys.getsizeof(value))
        elif op == "EMPTY_LIST":
            self._push([], 64)
        elif op == "LIST":
            self._push(self._pop_mark())  # the MARK frame, already charged, becomes the list
        elif op == "APPEND":
            (value,) = self._pop(1)
            self._charge(8)
            self._top_list().append(value)
        elif op == "APPENDS":
            items = self._pop_mark()
            self._charge(8 * len(items))
            self._top_list().extend(items)
        elif op in _PUT_OPS or op == "MEMOIZE":
            key = len(self.memo) if op == "MEMOIZE" else arg
            if key not in self.memo:
                if len(self.memo) >= self.values:
                    raise _Refused(f"{len(self.memo) + 1} memo entries for {self.values} values: a pickler "
                                   f"stores each value at most once")
                self._charge(64)
            self.memo[key] = self._top()
        elif op in _GET_OPS:
            if arg not in self.memo:
                raise _Refused(f"memo entry {_describe(arg)} was never stored")
            self._push(self.memo[arg])  # a reference to the stored value, never a copy
        elif op in ("GLOBAL", "STACK_GLOBAL"):
            module, name = arg.partition(" ")[::2] if op == "GLOBAL" else self._pop(2)
            self._push(_bin_global(module, name), 200)
        elif op == "REDUCE":
            fn, args = self._pop(2)
            value = _bin_call(fn, args)
            self._push(value, sys.getsizeof(value) if type(value) is bytes else 200)
        elif op == "BUILD":
            (state,) = self._pop(1)
            _bin_build(self._top(), state)
        else:
            raise _Refused(f"opcode {op} does not occur in a verification .bin, a pickled 2-tuple "
                           f"(bins, issame_list) of encoded images and bools")


def _as_bytes(value: Any, k: int) -> bytes:
    if type(value) is bytes:
        return value
    if isinstance(value, _Array) and value.spec == "u1":
        return value.data
    raise _Refused(f"bins[{k}] is {_kind(value)}, expected encoded bytes")


def _as_issame(value: Any) -> np.ndarray:
    if isinstance(value, _Array) and value.spec == "b1":
        return np.frombuffer(value.data, dtype=np.uint8).astype(bool)
    if type(value) is not list:
        raise _Refused(f"issame_list is {_kind(value)}, expected a list of bools or a bool array")
    for k, v in enumerate(value):
        if not _is(v, False, True, 0, 1):
            raise _Refused(f"issame_list[{k}] = {_describe(v)} is not a bool")
    return np.array(value, dtype=bool)


def _load_bin(path: Path) -> tuple[list[bytes], np.ndarray]:
    """The encoded images and issame labels of a ``.bin``, read without unpickling it.

    Accepted: a pickle (protocol 0-5) of ``(bins, issame_list)``: ``bins`` a list of encoded images
    (bytes, Python 2 ``str``, or 1-D uint8 arrays) of at least :data:`MIN_BIN_IMAGE_BYTES`, listing
    at most :data:`_MAX_LISTED_BYTES_PER_FILE_BYTE` times the file size; ``issame_list`` a list of
    bools (or 0/1 ints) or a 1-D bool array. Calls: :data:`_BIN_CALLS`; BUILD states: see
    :func:`_bin_build`."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f".bin file not found: {path}") from None
    try:
        top = _BinMachine().run(data)
        if type(top) is not tuple or len(top) != 2:
            raise _Refused(f"expected a pickled 2-tuple (bins, issame_list), got {_kind(top)}")
        bins_value, issame_value = top
        if type(bins_value) is not list:
            raise _Refused(f"bins is {_kind(bins_value)}, expected a list of encoded images")
        bins = [_as_bytes(v, k) for k, v in enumerate(bins_value)]
        issame = _as_issame(issame_value)
        listed = sum(len(b) for b in bins)
        if listed > _MAX_LISTED_BYTES_PER_FILE_BYTE * len(data):
            raise _Refused(f"bins lists {listed} bytes of images from a {len(data)}-byte file: memo "
                           f"references may repeat an image, but not amplify the file more than "
                           f"{_MAX_LISTED_BYTES_PER_FILE_BYTE}x")
    except _Refused as exc:
        raise BinFormatError(f"{path}: {exc}") from None
    except ValueError as exc:  # a truncated or garbled opcode argument
        raise BinFormatError(f"{path}: not a readable verification .bin pickle ({clip(exc, 200)})") from None
    if len(bins) % 2 or len(issame) != len(bins) // 2:
        raise BinFormatError(f"{path}: {len(bins)} images and {len(issame)} issame labels; expected "
                             f"2 images per label (pair k = images 2k, 2k+1)")
    short = next((k for k, b in enumerate(bins) if len(b) < MIN_BIN_IMAGE_BYTES), None)
    if short is not None:
        raise BinFormatError(f"{path}: bins[{short}] is {len(bins[short])} bytes; no encoded 112x112 image is "
                             f"shorter than {MIN_BIN_IMAGE_BYTES} bytes (exfiqa.readers.bin.MIN_BIN_IMAGE_BYTES)")
    return bins, issame


def read_bin(path: str | os.PathLike[str], name: str | None = None) -> Benchmark:
    """Read an insightface verification ``.bin`` (never unpickled; grammar in :func:`_load_bin`):
    2N encoded images and N booleans, pair k = images 2k, 2k+1, mated iff ``issame_list[k]``.
    ``name`` defaults to the file stem. Images decode to RGB uint8 (112, 112, 3).

    Raises:
        BinFormatError: anything outside that grammar (naming the file and, for an opcode, its
            byte position), or issame length != len(bins) / 2.
    """
    p = Path(path)
    bins, issame = _load_bin(p)
    n = len(bins)
    samples = pd.DataFrame({"sample_id": np.arange(n, dtype=np.int64), "path": [f"{p}#{k}" for k in range(n)]})
    comparisons = pd.DataFrame({"a": np.arange(0, n, 2, dtype=np.int64), "b": np.arange(1, n, 2, dtype=np.int64),
                                "mated": issame})

    def decode(k: int) -> np.ndarray:
        return decode_image(bins[k], source=f"{p}#{k}", size=(IMAGE_SIZE, IMAGE_SIZE))

    return Benchmark(name=p.stem if name is None else name, level="sample", samples=samples, comparisons=comparisons,
                     _decode=decode, _files=((p.name, p),), _protocol="bin")


def write_bin(path: str | os.PathLike[str], images_rgb_uint8: Sequence[np.ndarray] | np.ndarray,
              issame: Sequence[bool] | np.ndarray, fmt: ImageFormat = "jpeg", overwrite: bool = False,
              quality: int = 95) -> None:
    """Write a verification ``.bin`` like insightface's: a protocol-2 pickle of ``(list of encoded
    image bytes, list of bool)``. ``images_rgb_uint8`` holds 2N RGB uint8 112x112 images, pair k is
    images 2k, 2k+1, mated iff ``issame[k]``; ``fmt`` is ``"jpeg"`` (at ``quality``) or ``"png"``.
    An existing ``path`` is refused unless ``overwrite``."""
    images = list(images_rgb_uint8)
    labels = [bool(v) for v in np.asarray(issame, dtype=bool).ravel()]
    if len(images) != 2 * len(labels):
        raise ValueError(f"{len(images)} images for {len(labels)} issame labels; need 2 per label")
    bins = [encode_image(im, fmt, quality) for im in images]
    write_bytes(Path(path), pickle.dumps((bins, labels), protocol=2), overwrite)
