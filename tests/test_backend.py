"""The array backend: selection, the CuPy error messages, host copies."""

import sys
import types

import numpy as np
import pytest

from tinygrad_char import BackendError, get_backend
from tinygrad_char.backend import get_array_module

from conftest import CUPY_MISSING


def test_numpy_backend():
    be = get_backend("numpy", seed=3)
    assert be.name == "numpy" and be.xp is np
    assert "CPU" in be.device
    a = be.asarray([1.0, 2.0], dtype="float32")
    assert be.to_numpy(a).dtype == np.float32
    be.synchronize()
    r1 = be.rng.random(4)
    be.seed(3)
    assert np.array_equal(r1, be.rng.random(4))


def test_unknown_backend_names_the_choices():
    with pytest.raises(BackendError, match="'numpy', 'cupy' or 'auto'"):
        get_backend("tpu")


def test_get_array_module_numpy():
    assert get_array_module(np.zeros(2)) is np
    assert get_array_module(1.0, np.zeros(2)) is np


@pytest.mark.skipif(CUPY_MISSING is None, reason="a GPU is present: the no-GPU error "
                                                  "path cannot be observed here")
def test_auto_falls_back_to_numpy_without_gpu():
    assert get_backend("auto").name == "numpy"


def test_cupy_missing_error_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    with pytest.raises(BackendError) as err:
        get_backend("cupy")
    msg = str(err.value)
    assert "\n" not in msg
    assert "not installed" in msg and "tinygrad-char[cuda12]" in msg
    assert "--backend numpy" in msg


def test_cupy_without_device_error(monkeypatch):
    """`import cupy` works on a GPU-less machine and the first device call raises
    CUDARuntimeError: that must become the same kind of one-line error."""

    class CUDARuntimeError(RuntimeError):
        pass

    def no_device():
        raise CUDARuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_device))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(BackendError) as err:
        get_backend("cupy")
    msg = str(err.value)
    assert "\n" not in msg
    assert "no CUDA GPU" in msg and "cudaErrorNoDevice" in msg
    assert "--backend numpy" in msg
    assert get_backend("auto").name == "numpy"


# -- the package's import graph -----------------------------------------------------------------

def import_graph(package_dir):
    """{module: modules of the package it imports}, from every import statement of every
    file (inside functions too), parsed with ast. `from pkg import name` counts pkg.name
    when that is a module, else pkg; a parent package a dotted import runs first is not
    counted (Python runs it before, whichever module asks)."""
    import ast
    from pathlib import Path

    root = Path(package_dir)
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def deepest(name):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [deepest(a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from .x import y
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 \
                        else package
                    base = f"{anchor}.{base}" if base else anchor
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules
                           else deepest(base) for a in node.names]
            else:
                continue
            graph[module].update(t for t in targets if t and t != module)
    return graph


def find_cycle(graph):
    """One import cycle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        state[m] = "done"
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_import_cycle_check_finds_a_cycle_through_a_function(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from pkg import a\n")
    assert find_cycle(import_graph(pkg)) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    (pkg / "sub" / "b.py").write_text("import numpy\n")
    assert find_cycle(import_graph(pkg)) is None


def test_package_has_no_import_cycle():
    from conftest import REPO

    graph = import_graph(REPO / "tinygrad_char")
    assert "tinygrad_char.optim" in graph and "tinygrad_char.fused.cpu.adamw" in graph
    assert "tinygrad_char.optim" in graph["tinygrad_char.fused.cpu.adamw"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
