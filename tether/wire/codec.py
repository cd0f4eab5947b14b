"""Frames: versioned msgpack headers with tensors carried out of band as raw bytes.

Layout (all integers little-endian)::

    b"TT" | version u8 | reserved u8 | n_buffers u32 | header_len u32
    | n_buffers x u64 buffer lengths | header (msgpack) | padding to 64 | buffers, each padded to 64

In the header a tensor is a msgpack extension holding dtype code u8 | requires_grad u8 | ndim u8
| pad u8 | buffer index u32 | ndim x u64 dimensions; its bytes are that buffer. A reference to a
stored object is an extension holding its id as u64; among a Call's positional arguments it may
instead be the plain id, marked in the Call's `refs` bitmask (as pointers are sent).

Every length is checked against the frame before anything is allocated, so a decoder never
allocates more than the frame it was given justifies. Every failure is a `WireError`.

Long because the format and its checks against hostile input belong together: a reader of
this one file knows every byte a peer may send and how each is refused.
"""

from __future__ import annotations

import functools
import math
import operator
import struct
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import msgpack
import numpy as np
import torch

from tether.errors import WireError
from tether.wire import messages as m
from tether.wire import torchstate

MAGIC = b"TT"
# 4: a Call carries the torch state it was issued in (`Call.state`). Both sides must speak
# the same version: a frame of another is refused, saying which each side speaks.
VERSION = 4
_PREFIX = struct.Struct("<2sBBII")
_TENSOR_HEAD_SIZE = 8  # a tensor's extension payload before its dimensions (see _TENSOR_HEADS)
_MAX_DIMS = 64
_MAX_DIM = 2**62
_MAX_ID = 2**64 - 1
_MAX_WAIT = 24 * 3600.0

# msgpack extension codes
_TENSOR, _REF, _TUPLE, _SLICE, _DTYPE, _ELLIPSIS, _COMPLEX, _DEVICE, _MEMFMT = range(1, 10)
# Tuples travel as arrays whose first item is this (empty) extension, so that nesting stays
# inside msgpack's own bounded stack instead of recursing through extension payloads.
_TUPLE_MARK = msgpack.ExtType(_TUPLE, b"")
_TUPLE_MARK_BYTES = msgpack.packb(_TUPLE_MARK)
ALIGN = 64  # buffers start at multiples of this in a frame: no kernel meets misaligned data
# Containers a header may hold: one per three of its bytes (a reply of many `Done()`s, three
# bytes each, is the densest legitimate header; an empty container is one byte).
_BYTES_PER_CONTAINER = 3
# The bytes that can open a msgpack array or map (fix-, 16- and 32-bit forms), and the rest.
_OPENERS = frozenset((*range(0x80, 0xA0), 0xDC, 0xDD, 0xDE, 0xDF))
_NOT_OPENERS = bytes(b for b in range(256) if b not in _OPENERS)
MAX_FRAME_BYTES = 2**34
# Received tensors smaller than this are copied by numpy on the decoding thread; larger ones by
# torch on its thread pool, which pays there (256 MiB: 2.5x faster). Smaller copies keep off
# the pool: its threads spin for milliseconds after each parallel region, taking a core from
# the other processes on the machine (a split network's workers went 2x slower).
_THREADED_COPY_BYTES = 16 * 2**20
_DEVICE_TYPES = {"cpu", "cuda", "mps"}


_DTYPE_NAMES = (
    "bool",
    "uint8",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "complex32",
    "complex64",
    "complex128",
    "float8_e4m3fn",
    "float8_e4m3fnuz",
    "float8_e5m2",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
    "float4_e2m1fn_x2",
)


# Every dtype CPU tensors have as plain bytes; quantized ones need scales and do not travel.
DTYPES: dict[str, torch.dtype] = {n: getattr(torch, n) for n in _DTYPE_NAMES if hasattr(torch, n)}
DTYPE_NAMES: dict[torch.dtype, str] = {d: n for n, d in DTYPES.items()}
# On the wire a dtype is its position in _DTYPE_NAMES (None: this torch lacks it).
_DTYPE_BY_CODE = tuple(DTYPES.get(n) for n in _DTYPE_NAMES)
_DTYPE_CODES: dict[torch.dtype, int] = {d: i for i, d in enumerate(_DTYPE_BY_CODE) if d}
# A tensor's extension payload, by its number of dimensions: dtype code, requires_grad, dims,
# (pad), buffer index, then each dimension as a u64.
_TENSOR_HEADS = tuple(struct.Struct(f"<BBBxI{n}Q") for n in range(_MAX_DIMS + 1))
# The dtypes numpy has too (under the same names): those tensors are made from numpy views.
_NUMPY_DTYPES: dict[torch.dtype, np.dtype] = {
    DTYPES[n]: np.dtype(n)
    for n in (
        "bool",
        "uint8",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
        "complex64",
        "complex128",
    )
}
# By dtype code (a u8): the dtype, its bytes per element, numpy's dtype (None: numpy lacks it)
# and whether it can require grad; None for codes no dtype has.
_DTYPE_FACTS = tuple(
    (d, d.itemsize, _NUMPY_DTYPES.get(d), d.is_floating_point or d.is_complex) if d else None
    for d in _DTYPE_BY_CODE
) + (None,) * (256 - len(_DTYPE_BY_CODE))
_MEMORY_FORMATS = {
    "contiguous_format": torch.contiguous_format,
    "channels_last": torch.channels_last,
    "channels_last_3d": torch.channels_last_3d,
    "preserve_format": torch.preserve_format,
}
_MEMFMT_NAMES = {v: k for k, v in _MEMORY_FORMATS.items()}

_TAGS: dict[type, int] = {cls: i for i, cls in enumerate(m.MESSAGE_TYPES)}
_FIELDS: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in m.MESSAGE_TYPES
}


def _row_maker(cls: type) -> Callable[[Any], list]:
    """A message as the row that travels: its tag, then its fields in order."""
    tag, fields = _TAGS[cls], _FIELDS[cls]
    get = operator.attrgetter(*fields)
    if len(fields) == 1:
        return lambda msg: [tag, get(msg)]
    return lambda msg: [tag, *get(msg)]


_ROWS: dict[type, Callable[[Any], list]] = {cls: _row_maker(cls) for cls in m.MESSAGE_TYPES}
# msgpack.ExtType without its argument checks (ours are always an int code and bytes).
_ext = functools.partial(tuple.__new__, msgpack.ExtType)


# ---- encoding -------------------------------------------------------------------------------


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's elements as contiguous bytes (zero-copy when already contiguous on CPU)."""
    t = tensor.detach() if tensor.requires_grad else tensor
    try:  # numpy() refuses other devices and layouts, quantized, conj/neg bits, exotic dtypes
        array = t.numpy()
    except (TypeError, RuntimeError):
        return _converted_bytes(t)
    if not array.flags.c_contiguous:
        return _converted_bytes(t)
    try:
        return memoryview(array).cast("B")  # type: ignore[arg-type]  # numpy's stubs give ndarray __buffer__ on Python >= 3.12 only
    except TypeError:  # zeros in its shape or strides: empty, or size-1 dims expanded
        return memoryview(array.reshape(-1).view(np.uint8))  # type: ignore[arg-type]  # numpy's stubs give ndarray __buffer__ on Python >= 3.12 only


def _converted_bytes(t: torch.Tensor) -> memoryview:
    """tensor_bytes for what numpy cannot view as it is: strided, lazily negated or conjugated,
    on another device, or of a dtype numpy lacks."""
    if t.layout != torch.strided:
        raise TypeError(f"only dense tensors travel; got layout {t.layout}")
    if t.is_quantized:
        raise TypeError(f"quantized tensors ({t.dtype}) do not travel; dequantize first")
    if t.device.type == "meta":
        raise TypeError("a meta tensor has no data to send")
    t = t.cpu().resolve_conj().resolve_neg().contiguous()
    if t.numel() <= 1:  # contiguous() keeps odd strides on these; bytes need stride 1
        t = t.as_strided((t.numel(),), (1,))
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]  # numpy's stubs give ndarray __buffer__ on Python >= 3.12 only


@dataclass(frozen=True)
class Parts:
    """An encoded frame before it is joined: `head` (prefix, buffer lengths, msgpack header)
    and the tensors' bytes as views of the sender's memory. A transport that can write several
    buffers at once sends these without joining them; in-process decoding copies each tensor
    once, straight out of the sender's memory."""

    head: bytes
    buffers: list[memoryview]

    @property
    def nbytes(self) -> int:
        return (
            len(self.head)
            + _pad(len(self.head))
            + sum(b.nbytes + _pad(b.nbytes) for b in self.buffers)
        )

    def pieces(self) -> list[bytes | memoryview]:
        """The frame's pieces in order, padding included: writing them one after the other
        writes the joined frame without building it."""
        pieces: list[bytes | memoryview] = [self.head]
        pos = len(self.head)
        for buf in self.buffers:
            if gap := _pad(pos):
                pieces.append(bytes(gap))
                pos += gap
            pieces.append(buf)
            pos += buf.nbytes
        if tail := _pad(pos):
            pieces.append(bytes(tail))
        return pieces

    def join(self) -> memoryview:
        """The contiguous frame (a writable, 64-byte aligned buffer, so the tensors decoded
        from it use it in place)."""
        out = aligned_bytes(self.nbytes)  # not zeroed: every byte is set below
        pos = 0
        for piece in self.pieces():
            size = len(piece) if isinstance(piece, bytes) else piece.nbytes
            out[pos : pos + size] = np.frombuffer(piece, dtype=np.uint8)
            pos += size
        return memoryview(out)  # type: ignore[arg-type]  # numpy's stubs give ndarray __buffer__ on Python >= 3.12 only


def aligned_bytes(n: int) -> np.ndarray:
    """`n` uninitialized bytes starting at a multiple of ALIGN, as a frame's tensors are laid
    out: tensors decoded from a frame received or joined there use it in place."""
    raw = np.empty(n + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start : start + n]


def encode(messages: list) -> memoryview:
    """Encode a list of messages into one contiguous frame."""
    return encode_parts(messages).join()


def encode_parts(messages: list) -> Parts:
    """Encode a list of messages, leaving the tensors' bytes where they are."""
    buffers: list[memoryview] = []

    def default(obj: Any) -> msgpack.ExtType:
        if type(obj) is m.Ref:  # rarer than tensors: pointers travel as plain ids, marked
            return _ext((_REF, obj.id.to_bytes(8, "little")))
        if isinstance(obj, torch.Tensor):
            shape = obj.shape
            ndim = len(shape)
            if ndim > _MAX_DIMS:
                raise TypeError(
                    f"a tensor of {ndim} dimensions cannot be sent (at most {_MAX_DIMS})"
                )
            buffers.append(tensor_bytes(obj))
            return _ext(
                (
                    _TENSOR,
                    _TENSOR_HEADS[ndim].pack(
                        _DTYPE_CODES[obj.dtype], obj.requires_grad, ndim, len(buffers) - 1, *shape
                    ),
                )
            )
        if isinstance(obj, tuple):  # torch.Size too: an array led by the tuple mark
            return [_TUPLE_MARK, *obj]
        if isinstance(obj, slice):
            bounds = [obj.start, obj.stop, obj.step]
            if not all(b is None or type(b) is int for b in bounds):
                raise TypeError(f"{obj} cannot be sent: a slice's bounds must be integers or None")
            return msgpack.ExtType(_SLICE, msgpack.packb(bounds))
        if isinstance(obj, torch.dtype):
            return msgpack.ExtType(_DTYPE, DTYPE_NAMES[obj].encode())
        if obj is Ellipsis:
            return msgpack.ExtType(_ELLIPSIS, b"")
        if isinstance(obj, complex):
            return msgpack.ExtType(_COMPLEX, struct.pack("<dd", obj.real, obj.imag))
        if isinstance(obj, torch.device):
            if obj.type not in _DEVICE_TYPES:
                raise TypeError(f"device {obj} does not travel (only {sorted(_DEVICE_TYPES)})")
            return msgpack.ExtType(_DEVICE, str(obj).encode())
        if isinstance(obj, torch.memory_format):
            return msgpack.ExtType(_MEMFMT, _MEMFMT_NAMES[obj].encode())
        tag = _TAGS.get(type(obj))
        if tag is not None:
            raise TypeError(f"{type(obj).__name__} may only appear at the top of a frame")
        if type(obj) is int:  # msgpack hands over the integers it cannot hold
            raise TypeError(f"the integer {obj} does not fit in 64 bits")
        raise TypeError(f"a value of type {type(obj).__name__} cannot be sent to a worker")

    body = [_ROWS[type(msg)](msg) for msg in messages]
    header = msgpack.packb(body, default=default, use_bin_type=True, strict_types=True)
    lengths = struct.pack(f"<{len(buffers)}Q", *(b.nbytes for b in buffers))
    return Parts(
        _PREFIX.pack(MAGIC, VERSION, 0, len(buffers), len(header)) + lengths + header, buffers
    )


def _pad(n: int) -> int:
    return -n % ALIGN


# ---- decoding -------------------------------------------------------------------------------


def decode(frame: bytes | bytearray | memoryview) -> list:
    """Decode one frame into its messages, or raise `WireError` saying what was wrong.
    Tensors share the frame's memory when it is writable and aligned (no copy): a transport
    must hand each frame a buffer of its own."""
    view = memoryview(frame).cast("B")
    if len(view) > MAX_FRAME_BYTES:
        raise WireError(f"frame of {len(view)} bytes is over the {MAX_FRAME_BYTES}-byte limit")
    return _guarded(_decode_frame, view)


def decode_parts(parts: Parts) -> list:
    """Decode a frame that was never joined (in-process). Tensors are copied out: the sender's
    memory is the sender's."""
    return _guarded(_decode_parts, parts)


def _guarded(decoder: Callable[..., list], *args: Any) -> list:
    try:
        return decoder(*args)
    except WireError:
        raise
    except (
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        OverflowError,
        struct.error,
        RecursionError,
        msgpack.UnpackException,
        RuntimeError,
        AttributeError,
    ) as exc:
        detail = str(exc) or ("nested too deeply" if isinstance(exc, msgpack.StackError) else "")
        raise WireError(f"malformed frame: {type(exc).__name__}: {detail}") from None


def _read_prefix(view: memoryview) -> tuple[tuple[int, ...], int, int]:
    """Check the prefix; the buffer lengths, and where the header starts and ends."""
    if len(view) < _PREFIX.size:
        raise WireError(f"frame of {len(view)} bytes is shorter than the prefix ({_PREFIX.size})")
    magic, version, _, n_buffers, header_len = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise WireError("not a tether frame (bad magic bytes)")
    if version != VERSION:
        raise WireError(
            f"frame version {version} is not supported (this side speaks {VERSION}): "
            "run the same tether version on both sides"
        )
    pos = _PREFIX.size
    if n_buffers * 8 + header_len > len(view) - pos:
        raise WireError("frame announces more buffers or header than it holds")
    lengths = struct.unpack_from(f"<{n_buffers}Q", view, pos)
    pos += n_buffers * 8
    return lengths, pos, pos + header_len


def _decode_frame(view: memoryview) -> list:
    lengths, start, end = _read_prefix(view)
    pos = end + _pad(end)
    offsets = []
    for n in lengths:
        offsets.append(pos)
        pos += n + _pad(n)
    if pos != len(view):
        raise WireError(f"buffer lengths add up to {pos} bytes but the frame has {len(view)}")
    buffers = [view[o : o + n] for o, n in zip(offsets, lengths, strict=True)]
    return _decode_body(view[start:end], buffers, copy=False)


def _decode_parts(parts: Parts) -> list:
    head = memoryview(parts.head).cast("B")
    lengths, start, end = _read_prefix(head)
    if end != len(head) or list(lengths) != [b.nbytes for b in parts.buffers]:
        raise WireError("frame head does not match its buffers")
    return _decode_body(head[start:end], [b.cast("B") for b in parts.buffers], copy=True)


def _decode_body(header: memoryview, buffers: list[memoryview], copy: bool) -> list:
    used: set[int] = set()
    body = _unpack(header, _ext_hook(buffers, used, copy), len(header) // _BYTES_PER_CONTAINER + 64)
    if len(used) != len(buffers):
        raise WireError("frame carries buffers that no tensor uses")
    if not isinstance(body, list):
        raise WireError("frame body is not a list of messages")
    return [_message(item) for item in body]


class _Tuple:
    """What the tuple mark decodes to, until the array it leads becomes a tuple."""


_TUPLE_START = _Tuple()


def _unpack(data: memoryview | bytes, ext_hook: Callable, containers: int) -> Any:
    """msgpack's unpackb, refusing more than `containers` arrays and maps and turning arrays
    led by the tuple mark into tuples."""
    data = bytes(data)
    if len(data.translate(None, _NOT_OPENERS)) <= containers and _TUPLE_MARK_BYTES not in data:
        # Too few bytes that could open a container to break the budget, and no tuples: no
        # per-container hooks needed (the common case; a 200-command frame decodes 16% faster).
        return msgpack.unpackb(
            data, ext_hook=ext_hook, raw=False, strict_map_key=True, use_list=True
        )
    budget = [containers]

    def count(container: Any) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise WireError(f"frame header holds more than {containers} containers")
        return container

    def array(items: list) -> list | tuple:
        count(items)
        if items and items[0] is _TUPLE_START:
            return tuple(items[1:])
        return items

    return msgpack.unpackb(
        data,
        ext_hook=ext_hook,
        raw=False,
        strict_map_key=True,
        use_list=True,
        list_hook=array,
        object_hook=count,
    )


def _no_extensions(code: int, data: bytes) -> Any:
    raise WireError(f"extension type {code} cannot appear here")


def _ext_hook(buffers: list[memoryview], used: set[int], copy: bool) -> Callable[[int, bytes], Any]:
    def hook(code: int, data: bytes) -> Any:
        if code == _TENSOR:
            return _tensor(data, buffers, used, copy)
        if code == _REF:
            if len(data) != 8:
                raise WireError("a reference must be 8 bytes")
            return m.Ref(int.from_bytes(data, "little"))
        if code == _TUPLE:
            if data:
                raise WireError("the tuple mark carries no payload")
            return _TUPLE_START
        if code == _SLICE:
            parts = _unpack(data, _no_extensions, 1)
            if not (
                isinstance(parts, list)
                and len(parts) == 3
                and all(p is None or type(p) is int for p in parts)
            ):
                raise WireError("a slice must be three integers or nulls")
            return slice(*parts)
        if code == _DTYPE:
            return _lookup(DTYPES, data, "dtype")
        if code == _ELLIPSIS:
            if data:
                raise WireError("Ellipsis carries no payload")
            return Ellipsis
        if code == _COMPLEX:
            return complex(*struct.unpack("<dd", data))
        if code == _DEVICE:
            name = data.decode()
            if name.split(":")[0] not in _DEVICE_TYPES:
                raise WireError(f"unknown device {name!r}")
            return torch.device(name)
        if code == _MEMFMT:
            return _lookup(_MEMORY_FORMATS, data, "memory format")
        raise WireError(f"unknown extension type {code}")

    return hook


def _lookup(table: dict, data: bytes, what: str) -> Any:
    name = data.decode(errors="replace")
    if name not in table:
        raise WireError(f"unknown {what} {name!r}")
    return table[name]


def _tensor(head: bytes, buffers: list[memoryview], used: set[int], copy: bool) -> torch.Tensor:
    ndim = head[2] if len(head) >= _TENSOR_HEAD_SIZE else -1
    if not 0 <= ndim <= _MAX_DIMS or len(head) != _TENSOR_HEAD_SIZE + 8 * ndim:
        raise WireError(f"a tensor header of {len(head)} bytes does not match its dimensions")
    code, requires_grad, _, index, *shape = _TENSOR_HEADS[ndim].unpack(head)
    facts = _DTYPE_FACTS[code]
    if facts is None:
        raise WireError(f"unknown tensor dtype (code {code})")
    dtype, itemsize, numpy_dtype, gradable = facts
    if requires_grad > 1:
        raise WireError(f"requires_grad must be 0 or 1, got {requires_grad}")
    if index >= len(buffers) or index in used:
        raise WireError(f"tensor names buffer {index}, which is missing or used twice")
    used.add(index)
    buf = buffers[index]
    numel = math.prod(shape)
    if numel * itemsize != buf.nbytes:  # so no dimension is larger than the frame
        raise WireError(
            f"tensor of shape {shape} and dtype {DTYPE_NAMES[dtype]} needs "
            f"{numel * itemsize} bytes, its buffer has {buf.nbytes}"
        )
    if numel == 0:
        if max(shape) >= _MAX_DIM:
            raise WireError(f"bad tensor shape {shape}")
        t = torch.empty(shape, dtype=dtype)
    elif copy or buf.readonly:  # no aliasing read-only memory, nor an in-process sender's
        t = _copied(buf, dtype, shape)
    else:  # a view, through numpy where it has the dtype: that is faster
        t = (
            torch.from_numpy(np.frombuffer(buf, numpy_dtype).reshape(shape))
            if numpy_dtype
            else torch.frombuffer(buf, dtype=dtype, count=numel).view(shape)
        )
        if t.data_ptr() % ALIGN:  # kernels cannot meet misaligned data
            t = _copied(buf, dtype, shape)
    if requires_grad and gradable:
        t.requires_grad_(True)
    return t


def _copied(buf: memoryview, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    """The bytes as a tensor in memory of its own, from torch's allocator (so aligned, and
    lendable in process: see `tether.node.policy.lendable`). Copied as bytes: the buffer may be
    misaligned for the dtype, which kernels cannot meet."""
    if buf.nbytes < _THREADED_COPY_BYTES or buf.readonly:  # torch warns viewing read-only memory
        raw = torch.empty(buf.nbytes, dtype=torch.uint8)
        raw.numpy()[:] = np.frombuffer(buf, dtype=np.uint8)
    else:
        raw = torch.frombuffer(buf, dtype=torch.uint8).clone()
    return raw.view(dtype).view(shape)


def _message(item: Any) -> Any:
    if type(item) is list and item:
        tag = item[0]
        if type(tag) is int and 0 <= tag < len(_BY_TAG):
            reader, size = _BY_TAG[tag]
            if len(item) == size:
                return reader(*item[1:])
    raise WireError(_not_a_message(item))


def _not_a_message(item: Any) -> str:
    if not (type(item) is list and item and type(item[0]) is int):
        return "a message must be [tag, fields...]"
    if not 0 <= item[0] < len(m.MESSAGE_TYPES):
        return f"unknown message tag {item[0]}"
    cls = m.MESSAGE_TYPES[item[0]]
    return f"{cls.__name__} needs {len(_FIELDS[cls])} fields, got {len(item) - 1}"


def _is_id(x: Any) -> bool:
    return type(x) is int and 0 <= x <= _MAX_ID


def _is_ids(x: Any) -> bool:
    """A non-empty list of distinct ids."""
    return type(x) is list and bool(x) and all(map(_is_id, x)) and len(set(x)) == len(x)


def _put(obj_id: Any, value: Any) -> m.Put:
    if not _is_id(obj_id):
        raise WireError("Put.id must be an unsigned 64-bit integer")
    return m.Put(obj_id, value)


def _call(op: Any, args: Any, kwargs: Any, out: Any, refs: Any, state: Any) -> m.Call:
    if not (
        type(op) is str
        and type(args) is list
        and type(kwargs) is dict
        and (out is None or _is_id(out) or _is_ids(out))
        and type(refs) is int
        and refs >= 0
        and not refs >> len(args)
        and type(state) is int
        and 0 <= state < torchstate.STATES
    ):
        raise WireError(
            "Call needs op: str, args: list, kwargs: map, out: id, ids or null, "
            f"refs: a bitmask of the args, state: a torch state code (0 to {torchstate.STATES - 1})"
        )
    return m.Call(op, args, kwargs, out, refs, state)


def _get(ids: Any, name: Any, reason: Any, wait: Any) -> m.Get:
    if not (
        type(ids) is list
        and all(map(_is_id, ids))
        and type(name) is str
        and type(reason) is str
        and type(wait) in (int, float)
        and 0 <= wait <= _MAX_WAIT
    ):
        raise WireError(
            f"Get needs ids: a list of ids, name: str, reason: str, wait: 0 to {_MAX_WAIT} seconds"
        )
    return m.Get(ids, name, reason, wait)


def _delete(ids: Any) -> m.Delete:
    if not (type(ids) is list and all(map(_is_id, ids))):
        raise WireError("Delete needs a list of ids")
    return m.Delete(ids)


def _done(meta: Any) -> m.Done:
    if not (meta is None or type(meta) is list):
        raise WireError("Done.meta must be a list or null")
    return m.Done(meta)


def _failure(kind: Any, message: Any, details: Any) -> m.Failure:
    if not (type(kind) is str and type(message) is str and type(details) is dict):
        raise WireError("Failure needs kind: str, message: str, details: map")
    return m.Failure(kind, message, details)


# Each message type from its fields, checked (any field may be anything a peer sent).
_READERS: dict[type, Callable[..., Any]] = {
    m.Put: _put,
    m.Call: _call,
    m.Get: _get,
    m.Delete: _delete,
    m.Done: _done,
    m.Value: m.Value,
    m.Failure: _failure,
}
# By tag: the reader, and the length of the row (the tag and the fields).
_BY_TAG = tuple((_READERS[cls], len(_FIELDS[cls]) + 1) for cls in m.MESSAGE_TYPES)
