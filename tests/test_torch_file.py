"""tinygrad_char.interop.torch_file, the torch.save format without torch, against torch itself:
files torch.save wrote (every float dtype, views with offsets and strides, shared storages,
nested plain data) read to torch's values; files it writes loaded by
torch.load(weights_only=True) to the same values; hostile and legacy files refused in one
line. Torch is the oracle here, so these tests are skipped, with the reason, without it,
except those that need no torch file."""

import collections
import io
import pickle
import sys
import zipfile

import numpy as np
import pytest

from tinygrad_char.interop import torch_file

try:
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed: it is the "
                                                       "oracle of the torch.save format")


def as_numpy(t):
    """A tensor as the array torch_file gives for it (bfloat16 widened to float32)."""
    return (t.float() if t.dtype == torch.bfloat16 else t).detach().numpy()


def assert_same(ours, theirs, where="obj"):
    """ours (torch_file's, arrays) equals theirs (torch's, tensors), structure and values."""
    if isinstance(theirs, torch.Tensor):
        expected = as_numpy(theirs)
        assert isinstance(ours, np.ndarray), (where, type(ours))
        assert ours.dtype == expected.dtype and ours.shape == expected.shape, \
            (where, ours.dtype, ours.shape, expected.dtype, expected.shape)
        assert np.array_equal(ours, expected, equal_nan=True), where
        assert ours.flags.c_contiguous, where
    elif isinstance(theirs, dict):
        assert type(ours) is type(theirs) and list(ours) == list(theirs), (where, ours)
        for key in theirs:
            assert_same(ours[key], theirs[key], f"{where}[{key!r}]")
    elif isinstance(theirs, (list, tuple)):
        assert type(ours) is type(theirs) and len(ours) == len(theirs), (where, ours)
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert type(ours) is type(theirs) and ours == theirs, (where, ours, theirs)


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16", "int64",
                                   "int32", "uint8", "bool"])
def test_reads_what_torch_saves(tmp_path, dtype):
    g = torch.Generator().manual_seed(0)
    base = (torch.randn(5, 7, generator=g, dtype=torch.float64) * 50).to(getattr(torch, dtype))
    obj = {
        "whole": base,
        "transposed": base.t(),  # strides (1, 7)
        "offset": base[2:, 3:6],  # storage offset 17, strides (7, 1)
        "every_other": base[::2, 1::3],
        "row": base[4],
        "scalar": base[1, 1],  # 0-d
        "empty": base[:0],
        "same_again": base,  # one tensor twice
        "nested": collections.OrderedDict(
            layer={"w": base[1:3], "n": 3, "x": 2.5, "s": "héllo", "none": None,
                   "flags": (True, False), "big": 2 ** 70, "neg": -12345678901,
                   "list": [1, "a", (2, 3.0)], "bytes": b"\x00\xff"}),
    }
    path = tmp_path / "t.pt"
    torch.save(obj, path)
    ours = torch_file.load(path)
    assert_same(ours, obj)


@needs_torch
def test_reads_parameters_and_unaligned_storages(tmp_path):
    """nn.Parameter (_rebuild_parameter) and a state_dict of a real module."""
    layer = torch.nn.Linear(3, 4)
    path = tmp_path / "m.pt"
    torch.save({"param": layer.weight, "sd": layer.state_dict()}, path)
    ours = torch_file.load(path)
    assert_same(ours["param"], layer.weight.detach())
    assert_same(ours["sd"], layer.state_dict())


@needs_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int64, np.int32,
                                   np.uint8, np.bool_])
def test_torch_loads_what_it_writes(tmp_path, dtype):
    a = (np.random.default_rng(0).standard_normal((4, 6)) * 30).astype(dtype)
    obj = {"model": {"a": a, "tied": a, "t": a.T, "view": a[1:, ::2], "zero_d": a[0, 0, ...],
                     "empty": a[:0], "wide": np.arange(3, dtype=np.float64)},
           "model_args": {"n": 2, "bias": True, "dropout": 0.0, "name": "x", "none": None,
                          "shape": (1, 2), "big": -2 ** 80, "np_int": np.int64(7),
                          "list": [1.5, "b"]},
           "iter_num": 250}
    path = tmp_path / "ours.pt"
    with open(path, "wb") as f:
        torch_file.save(obj, f)
    theirs = torch.load(path, weights_only=True)
    sd = theirs["model"]
    for key, value in obj["model"].items():
        value = np.asarray(value)
        assert sd[key].numpy().dtype == value.dtype and sd[key].shape == value.shape, key
        assert np.array_equal(sd[key].numpy(), value), key
    assert sd["tied"] is sd["a"]  # one array, one tensor (nanoGPT's tied head)
    args = dict(obj["model_args"], np_int=7)
    assert theirs["model_args"] == args and theirs["iter_num"] == 250
    assert_same(torch_file.load(path), theirs)  # and it reads its own files


def test_writes_and_reads_back_without_torch(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    buf = io.BytesIO()
    torch_file.save({"a": a, "b": a.T, "c": {"n": (1, None)}}, buf)
    path = tmp_path / "x.pt"
    path.write_bytes(buf.getvalue())
    back = torch_file.load(path)
    assert np.array_equal(back["a"], a) and np.array_equal(back["b"], a.T)
    assert back["c"] == {"n": (1, None)}
    with zipfile.ZipFile(path) as z:  # torch's layout, storages aligned to 64 bytes
        assert z.namelist()[0] == "archive/data.pkl"
        assert {"archive/version", "archive/byteorder"} <= set(z.namelist())
    with open(path, "rb") as f:
        raw = f.read()
    assert raw.index(a.tobytes()) % torch_file.STORAGE_ALIGNMENT == 0


def test_cannot_write_other_objects():
    with pytest.raises(torch_file.TorchFileError, match="cannot write a object"):
        torch_file.save({"x": object()}, io.BytesIO())
    with pytest.raises(torch_file.TorchFileError, match="cannot write an array of <U1"):
        torch_file.save({"x": np.array(["a"])}, io.BytesIO())


def _zip_with(tmp_path, data_pkl):
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/version", b"3\n")
    return path


def test_refuses_code_in_the_pickle(tmp_path, capfd):
    """GLOBAL os.system, REDUCE: refused before the call, in one line."""
    evil = pickle.dumps(0, protocol=2)[:2] + b"cos\nsystem\nX\x0b\x00\x00\x00echo pwned!\x85R."
    with pytest.raises(torch_file.UnsupportedObject) as e:
        torch_file.load(_zip_with(tmp_path, evil))
    assert str(e.value) == "holds a Python object beyond tensors and plain data (os.system)"
    assert e.value.name == "os.system" and "pwned" not in capfd.readouterr().out
    # a torch global other than the tensor's is refused too, even when pickle is allowed
    other = b"\x80\x02ctorch.nn.modules.linear\nLinear\n)R."
    with pytest.raises(torch_file.UnsupportedObject, match=r"\(torch.nn.modules.linear.Linear\)"):
        torch_file.load(_zip_with(tmp_path, other), allow_pickle=True)


@needs_torch
def test_refuses_python_objects_unless_allowed(tmp_path):
    import argparse

    path = tmp_path / "ns.pt"
    torch.save({"config": argparse.Namespace(a=1), "w": torch.ones(2)}, path)
    with pytest.raises(torch_file.UnsupportedObject, match=r"\(argparse.Namespace\)"):
        torch_file.load(path)
    back = torch_file.load(path, allow_pickle=True)
    assert back["config"] == argparse.Namespace(a=1) and np.array_equal(back["w"], np.ones(2))


@needs_torch
def test_refuses_the_legacy_format(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(torch_file.LegacyFormat, match=r"re-save it with PyTorch >= 1.6"):
        torch_file.load(path)


@needs_torch
def test_refuses_a_view_past_its_storage(tmp_path):
    """A damaged size in data.pkl must not read memory past the storage."""
    path = tmp_path / "t.pt"
    torch.save({"w": torch.arange(6.0)}, path)
    with zipfile.ZipFile(path) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in entries if n.endswith("data.pkl"))
    entries[pkl] = entries[pkl].replace(b"K\x06\x85", b"K\x60\x85")  # size (6,) -> (96,)
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    with pytest.raises(torch_file.TorchFileError, match="reaches past its storage"):
        torch_file.load(path)
