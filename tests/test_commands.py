"""Tests for what the commands check before they read any data or write anything
(tinygrad_char.commands): a run into an --out-dir that holds a checkpoint it does not resume
is refused with its bytes unchanged; the resume file and the backend are checked before the
data; a file that is no checkpoint is called that; every writer takes --overwrite.

The commands run in this process (main under run_cli); the data loaders are replaced by a
function that fails the test, so "refused before the data" is what is checked."""

import os

import pytest

from conftest import CUPY_MISSING, REPO
from tinygrad_char import GPT, AdamW, GPTConfig
from tinygrad_char.commands import export_onnx, generate
from tinygrad_char.commands import train as train_command
from tinygrad_char.training.checkpoint import save_checkpoint
from tinygrad_char.training.cli import run_cli
from tinygrad_char.training.tokenizer import CharTokenizer

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "8",
        "--batch-size", "2", "--max-steps", "3", "--no-progress"]


class DataReached(Exception):
    pass


@pytest.fixture
def no_data(monkeypatch):
    """The data loaders of the train command raise DataReached (a test expecting a refusal
    then fails with a traceback; one expecting the checks to pass catches it)."""
    def reached(*args, **kwargs):
        raise DataReached()

    monkeypatch.setattr(train_command, "prepare_wikitext2", reached)
    monkeypatch.setattr(train_command, "prepare_text", reached)


def write_pair(folder, step=4, **config):
    """A checkpoint pair (model file + optimizer companion) at folder/ckpt.safetensors of the
    TINY architecture (or `config`'s changes to it)."""
    tokenizer = CharTokenizer("abcdefgh", unk=True)
    values = dict(vocab_size=tokenizer.vocab_size, block_size=8, n_layer=1, n_head=2,
                  n_embd=16)
    values.update(config)
    model = GPT(GPTConfig(**values))
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "ckpt.safetensors")
    save_checkpoint(path, model, tokenizer, step, AdamW(model.params), train_state={})
    return path


def snapshot(folder):
    return {name: open(os.path.join(folder, name), "rb").read()
            for name in sorted(os.listdir(folder))}


def one_error_line(capsys):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0][len("error: "):]


def test_a_fresh_run_into_a_folder_with_a_checkpoint_stops_before_training(tmp_path, capsys,
                                                                            no_data):
    out = tmp_path / "out"
    path = write_pair(out, step=4)
    before = snapshot(out)
    assert run_cli(train_command.main, [*TINY, "--out-dir", str(out)]) == 2
    assert one_error_line(capsys) == (f"{out}/ holds a checkpoint at step 4; pass --resume "
                                      f"{path} to continue, or --overwrite to start over")
    assert snapshot(out) == before  # byte-identical, nothing added
    # resuming it, or saying --overwrite, passes the check (and reaches the data)
    for extra in (["--resume", path], ["--overwrite"]):
        with pytest.raises(DataReached):
            train_command.main([*TINY, "--out-dir", str(out), *extra])
    # resuming another file into it would replace it all the same
    other = write_pair(tmp_path / "other", step=9)
    assert run_cli(train_command.main, [*TINY, "--out-dir", str(out), "--resume", other]) == 2
    assert "resumes from another file; pass --overwrite" in one_error_line(capsys)
    assert snapshot(out) == before


def test_train_text_refuses_the_same_way(tmp_path, capsys, no_data):
    from tinygrad_char.commands import train_text

    write_pair(tmp_path, step=2)
    text = tmp_path / "input.txt"
    text.write_text("abc " * 100)
    assert run_cli(train_text.main, [*TINY, "--text", str(text), "--out-dir",
                                     str(tmp_path)]) == 2
    assert "holds a checkpoint at step 2" in one_error_line(capsys)


@pytest.mark.parametrize("case", ["missing", "readme", "folder", "weights_only",
                                  "architecture"])
def test_the_resume_file_is_checked_before_the_data(tmp_path, capsys, no_data, case):
    out = tmp_path / "out"
    if case == "missing":
        resume, fragment = tmp_path / "nope.safetensors", "no such file"
    elif case == "readme":
        resume, fragment = REPO / "README.md", "not a safetensors checkpoint"
    elif case == "folder":
        resume, fragment = tmp_path, "is a folder"
    elif case == "weights_only":
        resume = write_pair(tmp_path / "w")
        os.remove(os.path.join(tmp_path, "w", "ckpt.train.a.safetensors"))
        fragment = "no optimizer state saved with it"
    else:
        resume, fragment = write_pair(out), "architecture differs"
    argv = [*TINY, "--out-dir", str(out), "--resume", str(resume)]
    if case == "architecture":
        argv[argv.index("--n-embd") + 1] = "32"
    assert run_cli(train_command.main, argv) == 2
    line = one_error_line(capsys)
    assert fragment in line and str(resume) in line, line


@pytest.mark.skipif(CUPY_MISSING is None, reason="a GPU works here: --backend cupy is valid")
def test_backend_cupy_without_a_gpu_is_refused_before_the_data(tmp_path, capsys, no_data):
    assert run_cli(train_command.main, [*TINY, "--out-dir", str(tmp_path),
                                        "--backend", "cupy"]) == 2
    assert "backend 'cupy' unavailable" in one_error_line(capsys)


def test_tf32_on_the_cpu_is_refused_before_the_data(tmp_path, capsys, no_data):
    assert run_cli(train_command.main, [*TINY, "--out-dir", str(tmp_path),
                                        "--dtype", "tf32"]) == 2
    assert "--dtype tf32 needs --backend cupy" in one_error_line(capsys)


def test_generate_calls_a_text_file_not_a_checkpoint(capsys):
    assert run_cli(generate.main, ["--checkpoint", str(REPO / "README.md")]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"{REPO / 'README.md'}: not a safetensors checkpoint"), line
    assert "interrupted" not in line


def test_export_onnx_refuses_an_existing_file_without_overwrite(tmp_path, capsys):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"keep me")
    ckpt = write_pair(tmp_path / "run")
    assert run_cli(export_onnx.main, ["--checkpoint", ckpt, "--out", str(target)]) == 2
    assert one_error_line(capsys) == (f"--out {target} exists; pass --overwrite to replace "
                                      f"it, or choose another path")
    assert target.read_bytes() == b"keep me"


@pytest.mark.parametrize("warm", [False, True])
def test_a_cold_kernel_cache_is_said_before_the_first_step(tmp_path_factory, monkeypatch, warm):
    """With the CPU kernels chosen and their cache cold, one line says the first step will
    compile them; with a warm cache (or the xp ops) nothing is said."""
    from conftest import shakespeare_prefix, tiny_train_config
    from tinygrad_char.fused.cpu import numba_available, warm as warm_module
    from tinygrad_char.training.train import train

    if not numba_available():
        pytest.skip("numba does not import here: no CPU kernels to compile")
    monkeypatch.setenv("TINYGRAD_CHAR_COMPILE_AHEAD", "0")  # no helper process
    monkeypatch.setattr(warm_module, "cache_is_warm", lambda: warm)
    data = shakespeare_prefix(tmp_path_factory, 5_000)
    for kernels in ("auto", "xp"):
        printed = []
        cfg = tiny_train_config(tmp_path_factory.mktemp("run"), max_steps=1, kernels=kernels)
        train(cfg, data, progress=False, out=printed.append)
        said = [line for line in printed if line.startswith("compiling the CPU kernels")]
        expected = ["compiling the CPU kernels once (about 30 s; cached for later runs)"]
        assert said == (expected if kernels == "auto" and not warm else []), printed
        if said:  # after the lines that describe the run, before the first step's
            assert printed.index(said[0]) == 1 + max(  # the backend and op-table lines
                i for i, line in enumerate(printed) if line.startswith(("backend: ", "kernels: ")))
