"""Run the kernels of kernels/*.cu on the CPU, so their indexing, barriers and math can be
checked against the xp twins on a machine without a GPU.

    from benchmarks.kernel_lab.cuda_emulator import EmulatedModule
    mod = EmulatedModule("kernels/layernorm.cu")          # compiled with g++, cached
    mod.launch("layernorm_forward", grid, block, args)    # args: NumPy arrays / scalars

Each .cu file is compiled as C++ together with cuda_emulator.h (threads become fibers,
__shared__ a static, barriers and warp shuffles cooperative switches) and a launch stub
per extern "C" __global__ function, generated from its signature. Array arguments are
copied into buffers with guard zones (NaN for floats, 0 for integers) that are checked
after the launch, so an out-of-bounds write fails loudly and an out-of-bounds float read
turns into NaN in the result.

What it is not: a GPU. It checks the kernels' logic (indices, tiling, causal masks,
barriers, reductions) and nothing about the memory model, warp timing, NVRTC, register
or shared-memory limits, or speed. The GPU tests in tests/test_kernels.py stay the oracle;
tinygrad_char/fused/cuda.py is exercised here by pointing its `_launch` at `launch` below.
"""

import ctypes
import hashlib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

HEADER = Path(__file__).resolve().with_name("cuda_emulator.h")
GUARD = 4096  # guard elements before and after every array argument
_SIGNATURE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', re.S)
_SCALARS = {
    "int": ctypes.c_int, "unsigned": ctypes.c_uint, "unsigned int": ctypes.c_uint,
    "long long": ctypes.c_longlong, "unsigned long long": ctypes.c_ulonglong,
    "float": ctypes.c_float, "double": ctypes.c_double, "bool": ctypes.c_bool,
}


class EmulatorError(RuntimeError):
    """The emulated kernel deadlocked, wrote out of bounds, or failed to build."""


def compiler():
    """Path of g++, or None (the emulator is unavailable then)."""
    return shutil.which("g++")


def kernel_signatures(source):
    """{name: [(declaration, parameter name), ...]} of the extern "C" __global__ functions."""
    out = {}
    for name, params in _SIGNATURE.findall(source):
        decls = [p.strip() for p in params.split(",") if p.strip()]
        out[name] = [(d, re.findall(r"\w+", d)[-1]) for d in decls]
    return out


def _ctype(declaration):
    if "*" in declaration:
        return ctypes.c_void_p
    words = [w for w in declaration.split()[:-1] if w != "const" and not w.startswith("__")]
    return _SCALARS[" ".join(words)]


class EmulatedModule:
    """One .cu file compiled for the CPU emulator; `launch` runs one of its kernels."""

    def __init__(self, cu_path, build_dir=None):
        cu_path = Path(cu_path).resolve()
        source = cu_path.read_text()
        self.name = cu_path.name
        self.signatures = kernel_signatures(source)
        stubs = []
        for name, params in self.signatures.items():
            decl = ", ".join(d for d, _ in params)
            call = ", ".join(n for _, n in params)
            stubs.append(
                f'extern "C" int emu_launch_{name}(unsigned gx, unsigned gy, unsigned gz, '
                f"unsigned bx, unsigned by, unsigned bz, {decl}) {{\n"
                f"    return emu::launch({{gx, gy, gz}}, {{bx, by, bz}},\n"
                f"                       [&]() {{ {name}({call}); }});\n"
                f"}}\n")
        unit = (f'#include "{HEADER}"\n#include "{cu_path}"\n'
                'extern "C" const char* emu_last_error() { return emu::g_error.c_str(); }\n'
                + "".join(stubs))
        digest = hashlib.sha256((unit + source + HEADER.read_text()).encode()).hexdigest()[:16]
        build = Path(build_dir or Path(tempfile.gettempdir()) / "tinygrad_char_cuda_emulator")
        build.mkdir(parents=True, exist_ok=True)
        lib_path = build / f"{cu_path.stem}-{digest}.so"
        if not lib_path.exists():
            cpp = build / f"{cu_path.stem}-{digest}.cpp"
            cpp.write_text(unit)
            tmp = build / f"{cu_path.stem}-{digest}.{id(self)}.tmp.so"
            cmd = [compiler() or "g++", "-std=c++17", "-O1", "-shared", "-fPIC",
                   "-Wno-unknown-pragmas", "-o", str(tmp), str(cpp)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise EmulatorError(f"{self.name}: g++ failed:\n{done.stderr[-4000:]}")
            tmp.replace(lib_path)  # atomic: parallel test workers may build the same file
        self.lib = ctypes.CDLL(str(lib_path))
        self.lib.emu_last_error.restype = ctypes.c_char_p

    def launch(self, name, grid, block, args):
        """Run kernel `name` over `grid` x `block` (tuples of up to 3) with `args` (C-contiguous
        NumPy arrays, passed by address, or NumPy scalars). Arrays are updated in place."""
        params = self.signatures[name]
        if len(args) != len(params):
            raise EmulatorError(f"{self.name}:{name} takes {len(params)} arguments, "
                                f"got {len(args)}")
        grid = tuple(grid) + (1,) * (3 - len(grid))
        block = tuple(block) + (1,) * (3 - len(block))
        c_args, guarded = [], []
        for (decl, pname), a in zip(params, args):
            if isinstance(a, np.ndarray):
                if "*" not in decl:
                    raise EmulatorError(f"{name}: argument {pname} ({decl}) got an array")
                if not a.flags.c_contiguous:
                    raise EmulatorError(f"{name}: argument {pname} is not C-contiguous")
                fill = np.nan if a.dtype.kind == "f" else 0
                buf = np.full(a.size + 2 * GUARD, fill, dtype=a.dtype)
                buf[GUARD:GUARD + a.size] = a.reshape(-1)
                guards = buf.view(np.uint8).copy()
                guarded.append((pname, a, buf, guards))
                c_args.append(ctypes.c_void_p(buf[GUARD:].ctypes.data))
            else:
                ctype = _ctype(decl)
                if ctype is ctypes.c_void_p:
                    raise EmulatorError(f"{name}: argument {pname} ({decl}) needs an array")
                c_args.append(ctype(a.item() if hasattr(a, "item") else a))
        fn = getattr(self.lib, f"emu_launch_{name}")
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_uint] * 6 + [_ctype(d) for d, _ in params]
        if fn(*grid, *block, *c_args) != 0:
            raise EmulatorError(f"{self.name}:{name}: {self.lib.emu_last_error().decode()}")
        for pname, a, buf, guards in guarded:
            raw = buf.view(np.uint8)
            nb = GUARD * a.itemsize
            intact = (np.array_equal(raw[:nb], guards[:nb])
                      and np.array_equal(raw[-nb:], guards[-nb:]))
            if not intact:
                raise EmulatorError(f"{self.name}:{name}: out-of-bounds write around {pname}")
            a.reshape(-1)[:] = buf[GUARD:GUARD + a.size]


_MODULES = {}


def launch(kernels_dir, file, name, grid, block, args):
    """Drop-in for tinygrad_char.fused.cuda._launch (with the folder bound): runs on the CPU."""
    key = (str(kernels_dir), file)
    if key not in _MODULES:
        _MODULES[key] = EmulatedModule(Path(kernels_dir) / file)
    _MODULES[key].launch(name, grid, block, args)
