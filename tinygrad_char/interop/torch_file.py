"""PyTorch's `torch.save` file format, read and written with NumPy alone (no torch).

The format (PyTorch >= 1.6, the zip format) is a zip archive (entries stored, not
compressed) whose entries share one top-level folder, `<name>/`:

    <name>/data.pkl                a pickle (protocol 2) of the saved object
    <name>/data/<key>              one storage: its raw element bytes, no header
    <name>/byteorder               "little" or "big" (missing: little)
    <name>/version                 "3\\n"; also .format_version, .storage_alignment,
    <name>/.data/serialization_id  ... which a reader may ignore

In data.pkl a tensor is a call of the global `torch._utils._rebuild_tensor_v2(storage,
storage_offset, size, stride, requires_grad, backward_hooks)`, its storage a persistent id
`("storage", torch.FloatStorage, key, location, numel)` naming `data/<key>`; tensors that
view one storage name the same key. A view is (offset, size, stride) in elements of that
storage.

- `load(path)` reads such a file into the same object with every tensor a contiguous NumPy
  array (bfloat16, which NumPy lacks, becomes float32). It unpickles with a restricted
  Unpickler that builds only what `torch.load(weights_only=True)` builds: tensors, and
  plain data (dict, OrderedDict, list, tuple, set, str, bytes, int, float, bool, None).
  Any other class or function in the file is refused (UnsupportedObject) before it
  is called; `allow_pickle=True` lifts that for classes outside torch (it runs code from
  the file).
- `save(obj, f)` writes a dict (list, tuple) of plain data and NumPy arrays so that
  `torch.load(f, weights_only=True)` gives the same values with the arrays as tensors;
  arrays that are one object stay one tensor.

What it is not: a general torch unpickler. It rebuilds no nn.Module, optimizer or tensor
subclass (quantized, sparse, nested), and does not read torch.save's legacy format (a
bare pickle stream, PyTorch < 1.6): such a file is refused with a line asking to re-save
it with a newer PyTorch. Every refusal is a TorchFileError of one line.
"""

import builtins
import codecs
import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np

from tinygrad_char.errors import UserError

# torch's typed storage classes (the GLOBAL in a persistent id) and their element types
STORAGE_DTYPES = {
    "DoubleStorage": "f8", "FloatStorage": "f4", "HalfStorage": "f2",
    "BFloat16Storage": "bfloat16",  # no NumPy dtype: read as uint16, widened to float32
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
    "ComplexDoubleStorage": "c16", "ComplexFloatStorage": "c8",
}
_WRITE_STORAGE = {np.dtype(code): name for name, code in STORAGE_DTYPES.items()
                  if code != "bfloat16"}
# torch dtypes as plain values (e.g. a dtype in a run's config), as NumPy dtypes
TORCH_DTYPES = {"float64": "f8", "float32": "f4", "float16": "f2", "int64": "i8",
                "int32": "i4", "int16": "i2", "int8": "i1", "uint8": "u1", "bool": "?",
                "complex64": "c8", "complex128": "c16"}
# the pickle that begins a legacy (PyTorch < 1.6) torch.save file: PROTO 2, then its magic
# number 0x1950a86a20f9469cfc6c as a LONG1
LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950a86a20f9469cfc6c).to_bytes(10, "little")
STORAGE_ALIGNMENT = 64  # torch aligns each data/<key> entry's bytes to 64 in the zip
ARCHIVE_NAME = "archive"  # the top-level folder torch.save uses when writing to a file object


class TorchFileError(UserError, ValueError):
    """The file cannot be read (or the object cannot be written) as a torch.save file."""


class UnsupportedObject(TorchFileError):
    """The pickle names a class or function beyond tensors and plain data; `name` is its
    "module.qualname"."""

    def __init__(self, name):
        super().__init__(f"holds a Python object beyond tensors and plain data ({name})")
        self.name = name


class LegacyFormat(TorchFileError):
    """torch.save's legacy format (a bare pickle stream, PyTorch < 1.6)."""

    def __init__(self):
        super().__init__("torch.save's legacy format (PyTorch < 1.6), which is not read "
                         "here; re-save it with PyTorch >= 1.6: "
                         "torch.save(torch.load(path), path)")


# -- reading ------------------------------------------------------------------------------
class _StorageType:
    """What the unpickler returns for the global torch.<Type>Storage: its element type."""

    def __init__(self, name):
        self.name, self.code = name, STORAGE_DTYPES[name]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    """The tensor that views `storage` (1-D NumPy array) at `storage_offset` with `size` and
    `stride` (in elements), as a new contiguous array: torch._utils' function of the
    same name, for NumPy."""
    if not isinstance(storage, np.ndarray):
        raise TorchFileError(f"a tensor's storage is a {type(storage).__name__}, not a "
                             f"storage of the file")
    size, stride = tuple(size), tuple(stride)
    if not all(isinstance(n, int) and n >= 0 for n in (storage_offset, *size, *stride)) \
            or len(size) != len(stride):
        raise TorchFileError(f"a tensor view (offset {storage_offset!r}, size {size!r}, "
                             f"stride {stride!r}) is malformed")
    if 0 in size:
        return np.empty(size, dtype=storage.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise TorchFileError(f"a tensor view (offset {storage_offset}, size {size}, stride "
                             f"{stride}) reaches past its storage of {storage.size} elements")
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:], shape=size,
        strides=tuple(s * storage.itemsize for s in stride), writeable=False)
    return np.array(view, dtype=storage.dtype.newbyteorder("="), order="C")  # a copy


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    """torch._utils._rebuild_parameter: an nn.Parameter is its data here."""
    return data


# (module, name) in data.pkl -> what the restricted unpickler gives for it
_SAFE_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch", "Size"): tuple,
    ("torch", "device"): str,
    ("_codecs", "encode"): codecs.encode,  # how protocol 2 pickles bytes
    **{("builtins", name): getattr(builtins, name)
       for name in ("set", "frozenset", "complex", "slice", "bytearray")},
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
    **{("torch", name): np.dtype(code) for name, code in TORCH_DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
    """data.pkl's unpickler: globals from _SAFE_GLOBALS only (others refused, or with
    allow_pickle imported as pickle does, torch's excepted), storages from the zip."""

    def __init__(self, file, read_storage, allow_pickle):
        super().__init__(file)
        self._read_storage, self._allow_pickle = read_storage, allow_pickle

    def find_class(self, module, name):
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[module, name]
        if not self._allow_pickle or module == "torch" or module.startswith("torch."):
            raise UnsupportedObject(f"{module}.{name}")
        return super().find_class(module, name)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and isinstance(pid[4], int)):
            raise TorchFileError(f"data.pkl names a storage as {pid!r:.80}, not as "
                                 f"('storage', torch.<Type>Storage, key, location, numel)")
        return self._read_storage(pid[1], pid[2], pid[4])


def _archive_prefix(names):
    """'<name>/' of the archive's data.pkl entry."""
    pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    if not pickles:
        raise TorchFileError("a zip archive but not a torch.save file (no data.pkl inside)")
    return min(pickles, key=len)[:-len("data.pkl")]


def _storage_array(raw, code, byteorder, numel):
    """The 1-D array of a storage's raw bytes."""
    order = ">" if byteorder == "big" else "<"
    itemsize = 2 if code == "bfloat16" else np.dtype(code).itemsize
    if len(raw) < numel * itemsize:
        raise TorchFileError(f"a storage holds {len(raw)} bytes, {numel} elements need "
                             f"{numel * itemsize}")
    raw = raw[:numel * itemsize]
    if code == "bfloat16":  # the upper 16 bits of a float32: widen exactly
        bits = np.frombuffer(raw, dtype=order + "u2").astype(np.uint32) << 16
        return bits.view(np.float32)
    return np.frombuffer(raw, dtype=np.dtype(code).newbyteorder(order))


def load(path, allow_pickle=False):
    """The object torch.save wrote to `path` (zip format), its tensors as NumPy arrays.
    Raises TorchFileError (UnsupportedObject for a class beyond tensors and plain data);
    zipfile.BadZipFile, EOFError, pickle.UnpicklingError and the like on damaged bytes."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(len(LEGACY_MAGIC))
    if head == LEGACY_MAGIC:
        raise LegacyFormat()
    if not head.startswith(b"PK\x03\x04"):
        raise TorchFileError("not the zip archive torch.save writes")
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        prefix = _archive_prefix(names)
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = z.read(prefix + "byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise TorchFileError(f"byteorder is {byteorder!r}, not 'little' or 'big'")
        storages = {}

        def read_storage(storage_type, key, numel):
            if key not in storages:
                name = f"{prefix}data/{key}"
                if name not in names:
                    raise TorchFileError(f"data.pkl names the storage {key!r} but the "
                                         f"archive has no {name}")
                storages[key] = (storage_type.name,
                                 _storage_array(z.read(name), storage_type.code, byteorder,
                                                numel))
            if storages[key][0] != storage_type.name:  # torch.save refuses this too
                raise TorchFileError(f"the storage {key!r} is read as {storages[key][0]} and "
                                     f"as {storage_type.name}")
            return storages[key][1]

        with z.open(prefix + "data.pkl") as f:
            return _Unpickler(io.BytesIO(f.read()), read_storage, allow_pickle).load()


# -- writing ------------------------------------------------------------------------------
class _PickleWriter:
    """Writes data.pkl's opcodes (protocol 2) for plain data and NumPy arrays: the subset of
    pickle that torch.load(weights_only=True) reads, with the globals that it allows. The
    opcodes are written here rather than by pickle.Pickler because pickling a global by
    reference makes pickle import its module (torch), which the library never does."""

    def __init__(self):
        self.out = io.BytesIO()
        self.storages = []  # contiguous arrays, storage key = index
        self._memo = {}  # id(array) -> memo index of its tensor, so one array is one tensor
        self._keep = []  # the arrays memoised, alive so that their ids stay theirs

    def dump(self, obj):
        self.out.write(pickle.PROTO + b"\x02")
        self._save(obj)
        self.out.write(pickle.STOP)
        return self.out.getvalue()

    def _global(self, module, name):
        self.out.write(pickle.GLOBAL + f"{module}\n{name}\n".encode("ascii"))

    def _save(self, obj):
        w = self.out.write
        if isinstance(obj, np.generic):
            obj = obj.item()
        if obj is None:
            w(pickle.NONE)
        elif obj is True or obj is False:
            w(pickle.NEWTRUE if obj else pickle.NEWFALSE)
        elif isinstance(obj, int):
            if 0 <= obj < 256:
                w(pickle.BININT1 + bytes([obj]))
            elif -2**31 <= obj < 2**31:
                w(pickle.BININT + struct.pack("<i", obj))
            else:
                data = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
                w(pickle.LONG1 + bytes([len(data)]) + data)
        elif isinstance(obj, float):
            w(pickle.BINFLOAT + struct.pack(">d", obj))
        elif isinstance(obj, str):
            data = obj.encode("utf-8", "surrogatepass")
            w(pickle.BINUNICODE + struct.pack("<I", len(data)) + data)
        elif isinstance(obj, tuple):
            w(pickle.MARK)
            for item in obj:
                self._save(item)
            w(pickle.TUPLE)
        elif isinstance(obj, list):
            w(pickle.EMPTY_LIST + pickle.MARK)
            for item in obj:
                self._save(item)
            w(pickle.APPENDS)
        elif isinstance(obj, dict):  # an OrderedDict too: a dict keeps its order
            w(pickle.EMPTY_DICT + pickle.MARK)
            for key, value in obj.items():
                self._save(key)
                self._save(value)
            w(pickle.SETITEMS)
        elif isinstance(obj, np.ndarray):
            self._save_array(obj)
        else:
            raise TorchFileError(f"cannot write a {type(obj).__name__}: a torch file written "
                                 f"here holds dicts, lists, tuples, str, int, float, bool, "
                                 f"None and NumPy arrays")

    def _save_array(self, array):
        """_rebuild_tensor_v2(('storage', torch.<Type>Storage, key, 'cpu', numel), 0,
        shape, contiguous strides, False, OrderedDict()), memoised by the array's id."""
        w = self.out.write
        if id(array) in self._memo:
            w(pickle.LONG_BINGET + struct.pack("<I", self._memo[id(array)]))
            return
        if array.dtype.newbyteorder("=") not in _WRITE_STORAGE:
            raise TorchFileError(f"cannot write an array of {array.dtype}: torch has no "
                                 f"storage for it")
        data = np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C")  # 0-d kept
        key = str(len(self.storages))
        self.storages.append(data)
        strides = tuple(int(np.prod(data.shape[i + 1:])) for i in range(data.ndim))  # C order
        self._global("torch._utils", "_rebuild_tensor_v2")
        w(pickle.MARK + pickle.MARK)
        self._save("storage")
        self._global("torch", _WRITE_STORAGE[data.dtype.newbyteorder("=")])
        self._save(key)
        self._save("cpu")
        self._save(int(data.size))
        w(pickle.TUPLE + pickle.BINPERSID)
        self._save(0)
        self._save(tuple(int(n) for n in data.shape))
        self._save(strides)
        self._save(False)
        self._global("collections", "OrderedDict")
        w(pickle.EMPTY_TUPLE + pickle.REDUCE)
        w(pickle.TUPLE + pickle.REDUCE)
        self._memo[id(array)] = len(self._memo)
        self._keep.append(array)
        w(pickle.LONG_BINPUT + struct.pack("<I", self._memo[id(array)]))


def _write_entry(z, f, name, data, align=1):
    """One stored zip entry; with `align`, its bytes start at a multiple of it in the file
    (padding in the local header's extra field, as torch does; f.tell() is the header's
    offset because zipfile writes sequentially)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    if align > 1:
        pad = -(f.tell() + 30 + len(name.encode("utf-8")) + 4) % align
        info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    z.writestr(info, data)


def save(obj, f):
    """torch.save's zip format of `obj` (plain data and NumPy arrays) into the binary file
    `f` (seekable, opened for writing, at the start), so that
    torch.load(f, weights_only=True) gives `obj` with each array a tensor."""
    writer = _PickleWriter()
    data_pkl = writer.dump(obj)
    prefix = ARCHIVE_NAME + "/"
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
        _write_entry(z, f, prefix + "data.pkl", data_pkl)
        _write_entry(z, f, prefix + ".format_version", b"1")
        _write_entry(z, f, prefix + ".storage_alignment", str(STORAGE_ALIGNMENT).encode())
        _write_entry(z, f, prefix + "byteorder", b"little")
        for key, array in enumerate(writer.storages):
            _write_entry(z, f, f"{prefix}data/{key}", array.reshape(-1).view(np.uint8),
                         STORAGE_ALIGNMENT)
        _write_entry(z, f, prefix + "version", b"3\n")
        _write_entry(z, f, prefix + ".data/serialization_id",
                     str(int.from_bytes(os.urandom(16), "little")).encode())
