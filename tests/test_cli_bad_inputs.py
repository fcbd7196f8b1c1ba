"""Every command line refuses a bad value with one line: a table of bad values walked
through each entry point (examples/train_wikitext.py, train_text.py, generate.py,
serve.py, export_onnx.py, import_nanogpt.py).

Each case checks: a nonzero exit status (2), stderr exactly one line "error: ..." that
names the flag (or the file) at fault, nothing on stdout, no traceback. The table runs
in-process through each script's `main(argv)` under `run_cli`, as `python script.py`
does (so hundreds of cases take seconds); a few cases per script then run as real
subprocesses, to cover the `__main__` path itself. Sizes that cannot fit in memory are
chosen to need petabytes, so they are refused on any machine.

Also here: the tables behind validation and --help cover every TrainConfig field, and
--help lists the allowed values.
"""

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from dataclasses import fields

import pytest

from conftest import REPO
from tinygrad_char import GPT, GPTConfig
from tinygrad_char.training.checkpoint import save_checkpoint
from tinygrad_char.training.cli import MAX_SEED, run_cli
from tinygrad_char.training.config import (TrainConfig, check_train_memory, count_params,
                                           generation_memory_bytes, train_memory_bytes)
from tinygrad_char.model import ConfigError, param_shapes
from tinygrad_char.training.tokenizer import CharTokenizer

EXAMPLES = REPO / "examples"


def load_example(name):
    """An example script as a module (its `main` callable with argv)."""
    sys.path.insert(0, str(EXAMPLES))  # train_text imports train_wikitext
    try:
        spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(EXAMPLES))
    return module


@pytest.fixture(scope="module")
def mains():
    names = ["train_wikitext", "train_text", "generate", "serve", "export_onnx"]
    loaded = {name: load_example(name).main for name in names}
    try:
        loaded["import_nanogpt"] = load_example("import_nanogpt").main
    except ImportError:  # its library half needs torch only at run time; be safe
        pass
    return loaded


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny checkpoint, and the bad files the table points at."""
    root = tmp_path_factory.mktemp("bad_inputs")
    tokenizer = CharTokenizer("abcdefgh \n", unk=False)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=8, n_layer=1,
                          n_head=2, n_embd=8), seed=0)
    save_checkpoint(str(root / "m.safetensors"), model, tokenizer, step=1)
    (root / "a_file").write_text("not a folder")
    (root / "binary.json").write_bytes(b"\xff\xfe\x00\x01binary")
    (root / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (root / "deep_object.json").write_text('{"n_layer": ' + '{"a": ' * 50_000 + "1"
                                           + "}" * 50_001)
    (root / "list.json").write_text("[1, 2]")
    (root / "nan.json").write_text('{"grad_clip": NaN}')
    (root / "negative_seed.json").write_text('{"seed": -1}')
    (root / "string_int.json").write_text('{"n_layer": "4"}')
    (root / "text.txt").write_text("hello world\n" * 50)
    (root / "folder").mkdir()
    return root


def call(main, argv, capsys):
    """(exit status, stdout, stderr) of `run_cli(main, argv)`, as `python script.py`."""
    try:
        code = run_cli(main, [str(a) for a in argv])
    except SystemExit as e:  # argparse's errors (one line through cli.Parser)
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(code, out, err, *fragments):
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert code == 2, (code, err)
    assert out == "", f"printed before refusing: {out!r}"


# -- the table ----------------------------------------------------------------------------

def _flag(name):
    return "--" + name.replace("_", "-")


def _field_cases():
    """For every TrainConfig field: values outside its rule's range (and NaN/inf for
    floats), strings outside its choices, and non-booleans for bools, each with its flag."""
    cases = []
    for f in fields(TrainConfig):
        flag = _flag(f.name)
        r = TrainConfig.RULES.get(f.name)
        if r is not None and r.choices:
            cases.append(([flag, "no-such-choice"], flag))
        elif r is not None:
            if r.low is not None:
                below = r.low if r.low_open else (r.low - 1 if f.type is int else r.low - 0.5)
                cases.append(([flag, below], flag))
            if r.high is not None:
                above = r.high if r.high_open else (r.high + 1 if f.type is int else r.high + 1.5)
                cases.append(([flag, above], flag))
            if f.type is float:
                cases += [([flag, v], flag) for v in ("nan", "inf", "-inf")]
            if f.type is int:
                cases.append(([flag, "2.5"], flag))
        elif f.type is bool:
            cases.append(([flag, "maybe"], flag))
    return cases


TRAIN_CASES = _field_cases() + [
    (["--seed", MAX_SEED + 1], "--seed"),
    (["--out-dir", "{a_file}"], "--out-dir"),
    (["--out-dir", ""], "--out-dir"),
    (["--out-dir", "{a_file}/sub"], "--out-dir"),
    (["--config", "{binary.json}"], "--config"),
    (["--config", "{folder}"], "--config"),
    (["--config", "{deep.json}"], "--config"),
    (["--config", "{deep_object.json}"], "--config"),
    (["--config", "{list.json}"], "--config"),
    (["--config", "{string_int.json}"], "--config"),
    (["--config", "{nowhere.json}"], "--config"),
    (["--config", "{nan.json}"], "--grad-clip"),
    (["--config", "{negative_seed.json}"], "--seed"),
    (["--preset", "no_such_preset"], "--preset"),
    (["--n-layer", 10**9], "--n-layer"),
    (["--n-embd", 2**20], "--n-embd"),
    (["--block-size", 10**8], "--block-size"),
    (["--batch-size", 10**9], "--batch-size"),
    (["--eval-batch-size", 10**9], "--eval-batch-size"),
    (["--sample-chars", 10**13], "--sample-chars"),
    (["--min-lr", "0.5", "--learning-rate", "0.1"], "--min-lr"),
    (["--n-embd", "30", "--n-head", "4"], "divisible"),
    (["--workers", "5", "--batch-size", "4"], "workers"),
    (["--train-split", "nope"], "--train-split"),
    (["--max-lines", "0"], "--max-lines"),
    (["--no-such-flag", "1"], "--no-such-flag"),
]


def expand(argv, root):
    """The arguments with each "{name}" replaced by the path root / name."""
    return [re.sub(r"\{([^}]+)\}", lambda m: str(root / m.group(1)), str(a)) for a in argv]


@pytest.mark.parametrize("argv, fragment", TRAIN_CASES,
                         ids=[" ".join(map(str, a))[:60] for a, _ in TRAIN_CASES])
def test_train_wikitext_refuses(mains, files, capsys, argv, fragment):
    out_dir = [] if "--out-dir" in argv else ["--out-dir", files / "out"]
    # a data folder that does not exist: a value that slipped through fails on the data
    # with another message, which the fragment check catches
    argv = expand(argv, files) + out_dir + ["--data-dir", files / "no_data"]
    assert_one_line(*call(mains["train_wikitext"], argv, capsys), fragment)


@pytest.mark.parametrize("argv, fragment", [
    ([], "--text"),
    (["--text", "{text.txt}", "--seed", "-1"], "--seed"),
    (["--text", "{text.txt}", "--grad-clip", "nan"], "--grad-clip"),
    (["--text", "{text.txt}", "--data-dir", "x"], "--data-dir"),  # not a flag of this script
])
def test_train_text_refuses(mains, files, capsys, argv, fragment):
    argv = expand(argv, files) + ["--out-dir", files / "out"]
    assert_one_line(*call(mains["train_text"], argv, capsys), fragment)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only folders: nothing to refuse")
def test_unwritable_out_dir(mains, files, capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        argv = ["--out-dir", locked, "--data-dir", files / "no_data"]
        assert_one_line(*call(mains["train_wikitext"], argv, capsys), "--out-dir",
                        "cannot be written")
    finally:
        locked.chmod(0o700)


GENERATE_CASES = [
    (["--seed", "-1"], "--seed"),
    (["--seed", MAX_SEED + 1], "--seed"),
    (["--temperature", "nan"], "--temperature"),
    (["--temperature", "inf"], "--temperature"),
    (["--temperature", "-1"], "--temperature"),
    (["--top-p", "nan"], "--top-p"),
    (["--top-p", "0"], "--top-p"),
    (["--top-p", "1.5"], "--top-p"),
    (["--top-p", "inf"], "--top-p"),
    (["--top-k", "0"], "--top-k"),
    (["--num-samples", "0"], "--num-samples"),
    (["--max-new-tokens", "-1"], "--max-new-tokens"),
    (["--max-new-tokens", 10**12], "--max-new-tokens"),
    (["--num-samples", 10**10], "--num-samples"),
    (["--backend", "nope"], "--backend"),
    (["--prompt-file", "{folder}"], "prompt file"),
    (["--prompt-file", "{binary.json}"], "not UTF-8"),
]


@pytest.mark.parametrize("argv, fragment", GENERATE_CASES,
                         ids=[" ".join(map(str, a)) for a, _ in GENERATE_CASES])
def test_generate_refuses(mains, files, capsys, argv, fragment):
    argv = ["--checkpoint", files / "m.safetensors"] + expand(argv, files)
    assert_one_line(*call(mains["generate"], argv, capsys), fragment)


def test_generate_refuses_missing_inputs(mains, files, capsys):
    assert_one_line(*call(mains["generate"], [], capsys), "--checkpoint")
    missing = files / "none.safetensors"
    assert_one_line(*call(mains["generate"], ["--checkpoint", missing], capsys), str(missing))


SERVE_CASES = [
    (["--port", "70000"], "--port"),
    (["--port", "-1"], "--port"),
    (["--port", "0"], "--port"),
    (["--port", "http"], "--port"),
    (["--max-slots", "0"], "--max-slots"),
    (["--max-slots", 10**9], "--max-slots"),  # every slot must fit in memory
    (["--max-queue", "-1"], "--max-queue"),
    (["--threads", "-1"], "--threads"),
    (["--max-new-tokens-limit", "0"], "--max-new-tokens-limit"),
    (["--max-new-tokens-limit", 10**12], "--max-new-tokens-limit"),
    (["--backend", "nope"], "--backend"),
    (["--host", "192.0.2.1"], "--host"),  # TEST-NET-1: an address no machine has
]


@pytest.mark.parametrize("argv, fragment", SERVE_CASES,
                         ids=[" ".join(map(str, a)) for a, _ in SERVE_CASES])
def test_serve_refuses(mains, files, capsys, argv, fragment):
    pytest.importorskip("uvicorn", reason='uvicorn not installed (the extra "serve")')
    argv = ["--checkpoint", files / "m.safetensors"] + argv
    assert_one_line(*call(mains["serve"], argv, capsys), fragment)


def test_serve_refuses_a_taken_port(mains, files, capsys):
    pytest.importorskip("uvicorn", reason='uvicorn not installed (the extra "serve")')
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        argv = ["--checkpoint", files / "m.safetensors", "--port", port]
        assert_one_line(*call(mains["serve"], argv, capsys), f"--port {port}", "choose another")


@pytest.mark.parametrize("out, fragment", [
    ("{folder}", "--out"), ("", "--out"), ("{folder}/missing/m.onnx", "--out"),
    ("{a_file}/m.onnx", "--out"),
])
def test_export_onnx_refuses(mains, files, capsys, out, fragment):
    argv = ["--checkpoint", files / "m.safetensors", "--out"] + expand([out], files)
    assert_one_line(*call(mains["export_onnx"], argv, capsys), fragment)


def test_export_onnx_refuses_a_missing_checkpoint(mains, files, capsys):
    missing = files / "none.safetensors"
    argv = ["--checkpoint", missing, "--out", files / "m.onnx"]
    assert_one_line(*call(mains["export_onnx"], argv, capsys), str(missing))


def test_import_nanogpt_refuses(mains, files, capsys):
    if "import_nanogpt" not in mains:
        pytest.skip("examples/import_nanogpt.py did not import")
    missing = files / "none.pt"
    argv = [missing, files / "none.pkl", files / "out.safetensors"]
    assert_one_line(*call(mains["import_nanogpt"], argv, capsys), "no such file")
    assert_one_line(*call(mains["import_nanogpt"], argv + ["--no-such-flag"], capsys),
                    "--no-such-flag")


def test_examples_are_thin_wrappers_over_the_commands():
    """Every script under examples/ runs a main of tinygrad_char.commands (so an installed
    wheel, without examples/, has the same commands) and holds no logic of its own."""
    from tinygrad_char.commands import COMMANDS

    modules = {module for module, _ in COMMANDS.values()}
    for path in EXAMPLES.glob("*.py"):
        source = path.read_text()
        imported = [line.split()[1].rsplit(".", 1)[1] for line in source.splitlines()
                    if line.startswith("from tinygrad_char.commands.")]
        assert len(imported) == 1 and imported[0] in modules, path.name
        assert "def " not in source, f"{path.name} defines a function: it belongs in commands/"


def test_the_command_lists_its_subcommands_and_refuses_an_unknown_one():
    for argv in (["-m", "tinygrad_char", "--help"], ["-m", "tinygrad_char"]):
        proc = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True,
                              text=True, timeout=60)
        text = proc.stdout + proc.stderr
        for name in ("train", "train-text", "generate", "serve", "export-onnx",
                     "import-nanogpt", "export-nanogpt"):
            assert f"  {name} " in text, (name, text)
        assert proc.returncode == (0 if "--help" in argv else 2), text
    proc = subprocess.run([sys.executable, "-m", "tinygrad_char", "trian"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown command 'trian'")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    # the training loop's module run by hand is the train command, not silence
    proc = subprocess.run([sys.executable, "-m", "tinygrad_char.training.train", "--help"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "usage: tinygrad-char train" in proc.stdout, proc.stderr


@pytest.mark.parametrize("script", sorted(p.stem for p in EXAMPLES.glob("*.py")))
def test_every_example_refuses_an_unknown_flag_in_one_line(files, capsys, script):
    """Every script under examples/ parses with cli.Parser and runs under run_cli."""
    source = (EXAMPLES / f"{script}.py").read_text()
    assert "run_cli, main)" in source or "run_cli(main)" in source, \
        f"{script}.py does not run main under run_cli"
    code, out, err = call(load_example(script).main, ["--no-such-flag"], capsys)
    # argparse names missing required arguments first, when a script has some
    fragment = "required" if "required" in err else "--no-such-flag"
    assert_one_line(code, out, err, fragment)


def test_run_cli_turns_ctrl_c_and_a_closed_pipe_into_no_traceback(capsys):
    def interrupted(argv):
        raise KeyboardInterrupt

    def closed_pipe(argv):
        raise BrokenPipeError

    def bug(argv):
        raise ZeroDivisionError("a bug is not bad input")

    assert run_cli(interrupted) == 130
    assert capsys.readouterr().err == "interrupted\n"
    assert run_cli(closed_pipe) == 0
    assert capsys.readouterr().err == ""
    with pytest.raises(ZeroDivisionError):  # bugs keep their traceback, to be reported
        run_cli(bug)


# -- the same path as users take it: real subprocesses --------------------------------------

SUBPROCESS_CASES = {  # script: [(argv, fragment), ...]
    "train_wikitext.py": [(["--seed", "-1"], "--seed"), (["--grad-clip", "nan"], "--grad-clip"),
                          (["--config", "{deep.json}"], "--config"),
                          (["--n-layer", 10**9], "--n-layer")],
    "train_text.py": [([], "--text")],
    "generate.py": [(["--checkpoint", "{m.safetensors}", "--temperature", "nan"],
                     "--temperature"),
                    (["--checkpoint", "{m.safetensors}", "--max-new-tokens", 10**12],
                     "--max-new-tokens")],
    "serve.py": [(["--port", "70000"], "--port"), (["--max-slots", "0"], "--max-slots")],
    "export_onnx.py": [(["--checkpoint", "{m.safetensors}", "--out", "{folder}"], "--out")],
}


@pytest.mark.parametrize("script", list(SUBPROCESS_CASES))
def test_scripts_refuse_in_a_subprocess(files, script):
    for argv, fragment in SUBPROCESS_CASES[script]:
        argv = expand(argv, files)
        if script.startswith("train"):
            argv += ["--out-dir", str(files / "out"), "--data-dir", str(files / "no_data")]
        proc = subprocess.run([sys.executable, str(EXAMPLES / script), *argv], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0, (script, argv)
        assert_one_line(proc.returncode, proc.stdout, proc.stderr, fragment)


def test_closed_stdout_ends_generate_quietly(files):
    """`generate.py ... | head -c 10`: no BrokenPipeError traceback when head exits."""
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / "generate.py"), "--checkpoint",
                             str(files / "m.safetensors"), "--max-new-tokens", "200000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    proc.stdout.read(10)
    proc.stdout.close()
    err = proc.communicate(timeout=120)[1].decode()
    assert "Traceback" not in err and "BrokenPipe" not in err, err


# -- the tables cover every field; --help shows them ----------------------------------------

def test_every_field_has_its_allowed_values():
    """A new TrainConfig field must say what it may hold (a Rule in RULES), so both the
    checks and --help know it; out_dir (a path) is checked by check_out_dir."""
    for f in fields(TrainConfig):
        if f.type in (int, float) or f.type is str and f.name != "out_dir":
            assert f.name in TrainConfig.RULES, f"TrainConfig.{f.name} has no Rule in RULES"
    assert set(TrainConfig.RULES) <= {f.name for f in fields(TrainConfig)}
    assert set(GPTConfig.RULES) <= {f.name for f in fields(GPTConfig)}


def test_the_model_fields_are_checked_once():
    """TrainConfig and GPTConfig share one rule per model field and say the same thing
    about a bad value (TrainConfig adds the flag); every choice builds a GPTConfig."""
    base = dict(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8)
    for name, value in [("n_layer", 0), ("dropout", 1.0), ("rope_base", 1.0),
                        ("activation", "tanh"), ("n_kv_head", 0), ("bias", "yes")]:
        with pytest.raises(ConfigError) as model_error:
            GPTConfig(**{**base, name: value})
        with pytest.raises(ConfigError) as train_error:
            TrainConfig(**{name: value})
        assert str(train_error.value).startswith(str(model_error.value)), name
        assert _flag(name) in str(train_error.value), name
    for name, rule in TrainConfig.RULES.items():
        if name in GPTConfig.RULES and rule.choices:
            for value in rule.choices:
                TrainConfig(**{name: value}).model_config(vocab_size=10)
    TrainConfig().validate()


@pytest.mark.parametrize("script, choices", [
    ("train_wikitext.py", ["{float32,tf32,float16,float64}", "{numpy,cupy,auto}",
                           "--train-split {train,validation,test}", "presets"]),
    ("train_text.py", ["{float32,tf32,float16,float64}", "--text FILE", "presets"]),
])
def test_help_lists_the_allowed_values(script, choices):
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    for name, rule in TrainConfig.RULES.items():
        if rule.choices:
            assert "{" + ",".join(rule.choices) + "}" in text, f"{name}'s choices not in --help"
    assert "--workers" not in text  # retired: refused when given, never offered
    for fragment in choices:
        assert " ".join(fragment.split()) in text or fragment == "presets" and \
            "--preset NAME" in text, f"{fragment!r} not in --help"
    assert "STR" not in text.replace("--out-dir STR", "")
    if script == "train_text.py":
        assert "WikiText" not in text and "--data-dir" not in text


def test_help_after_a_preset_shows_its_defaults():
    proc = subprocess.run([sys.executable, str(EXAMPLES / "train_wikitext.py"), "--preset",
                           "cpu", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    preset = json.loads((EXAMPLES / "configs" / "cpu.json").read_text())
    assert f"(default: {preset['batch_size']}, from --preset cpu)" in text, text
    assert "sample_chars" not in preset  # so --sample-chars shows the built-in default
    assert f"--sample-chars INT >= 0 (default: {TrainConfig.sample_chars})" in text


# -- the memory estimates ----------------------------------------------------------------------

def test_count_params_matches_the_parameter_table():
    for kwargs in [dict(), dict(bias=False), dict(tie_weights=False, n_layer=3),
                   dict(pos_encoding="sinusoidal", norm="post")]:
        cfg = GPTConfig(**{**dict(vocab_size=11, block_size=8, n_layer=2, n_head=2,
                                  n_embd=8), **kwargs})
        table = sum(math.prod(s) for s in param_shapes(cfg).values())
        assert count_params(cfg) == table == GPT(cfg).num_params(), kwargs


def test_memory_estimate_is_a_lower_bound_that_grows_with_the_sizes():
    base = TrainConfig().validate()
    need, parts = train_memory_bytes(base, 65)
    # at least the four float32 copies of the parameters (weights, grads, m, v)
    assert need >= 4 * 4 * parts["params"]
    assert 1 << 20 < need < 1 << 30  # the default model: tens of MB, not more
    bigger = TrainConfig(block_size=128).validate()
    assert train_memory_bytes(bigger, 65)[0] > need
    with pytest.raises(ConfigError, match=r"needs at least .* but 1 B is available.*"
                                          r"--n-layer 4"):
        check_train_memory(base, 65, available=1)
    assert check_train_memory(base, 65, available=1 << 40) == need
    gen = generation_memory_bytes(base.model_config(65), 2, 1000)
    assert gen >= 2 * 1000 * 8  # the int64 ids alone


def test_help_after_a_config_file_shows_its_defaults(files, capsys, tmp_path):
    from tinygrad_char.training.config import build_parser

    config = tmp_path / "run.json"
    config.write_text('{"n_layer": 7, "activation": "relu"}')
    with pytest.raises(SystemExit) as exit_:
        build_parser("t").parse_args(["--config", str(config), "--help"])
    assert exit_.value.code == 0
    text = "".join(capsys.readouterr().out.split())  # argparse wraps long paths at "-"
    assert f'(default:7,from--config{config})' in text
    assert f'(default:"relu",from--config{config})' in text
    # a bad file before --help: its one line
    argv = ["--config", str(files / "deep.json"), "--help"]
    assert run_cli(lambda a: build_parser("t").parse_args(a), argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--config" in err[0] and "nested too deeply" in err[0], err


def test_check_output_path_for_files_and_folders(tmp_path):
    """The one output-path check: a file name, a folder the writer makes, a folder made
    here with its parents; each refusal names the path and says what to do."""
    from tinygrad_char.training.cli import UsageError, check_output_path

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    check_output_path("--out", tmp_path / "m.onnx")
    check_output_path("--out-dir", tmp_path / "new", folder=True)
    assert not (tmp_path / "new").exists()  # the writer makes it
    check_output_path("--out-dir", tmp_path / "x" / "y", folder=True, create=True)
    assert (tmp_path / "x" / "y").is_dir()
    for kwargs, path, fragment in [
            ({}, tmp_path, "is a folder; give a file name inside it"),
            ({}, tmp_path / "missing" / "m.onnx", "does not exist; create it first"),
            ({}, "", "--flag is empty: give a file name"),
            (dict(folder=True), a_file, "exists and is not a folder"),
            (dict(folder=True), tmp_path / "missing" / "d", "does not exist; create it first"),
            (dict(folder=True, create=True), a_file / "sub", "cannot be written")]:
        with pytest.raises(UsageError) as e:
            check_output_path("--flag", path, **kwargs)
        message = str(e.value)
        assert fragment in message and message.startswith("--flag"), message
        assert "\n" not in message
