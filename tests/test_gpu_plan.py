"""The GPU run plan (benchmarks/gpu_plan.py), on the CPU: its dry run lists every stage with
its step counts, estimate and device command; every estimate fits its stage's budget and
the whole plan the session's device time; results go under $OUT; missing WikiText-2 fails
the train stage loudly; the train stage's machinery (checkpoint, resume, sample, results
copied back) runs end to end as a CPU rehearsal. Plus the benchmark flags the plan uses.
"""

import json
import re
import subprocess
import sys

import pytest

from conftest import CUPY_MISSING, REPO, wikitext_like_dir

sys.path.insert(0, str(REPO))
from benchmarks import gpu_plan  # noqa: E402

PLAN = REPO / "benchmarks" / "gpu_plan.py"


def run_plan(*args, out=None, timeout=600):
    env = gpu_plan.step_env({})
    env.pop("OUT", None)
    if out is not None:
        env["OUT"] = str(out)
    return subprocess.run([sys.executable, str(PLAN), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dry_run():
    """The dry run's stdout (it counts the GPU tests with pytest --collect-only)."""
    done = run_plan("--dry-run")
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def stages(dry_run):
    """The plan's stages, with the GPU test count the dry run found."""
    n = int(re.search(r"(\d+) GPU tests", dry_run).group(1))
    return gpu_plan.build_plan(n_gpu_tests=n)


def test_the_dry_run_lists_stages_counts_estimates_and_device_commands(dry_run, stages):
    assert [s.name for s in stages] == list(gpu_plan.STAGE_NAMES)
    for s in stages:
        row = re.search(rf"^{s.name} +(\d+) s +(\d+) s  (.+)$", dry_run, re.M)
        assert row, f"stage {s.name} missing from the table:\n{dry_run}"
        assert int(row.group(1)) == s.budget_s and int(row.group(2)) == round(s.estimate_s)
        assert row.group(3) == s.counts
        command, carry, timeout_s = s.device_call()
        assert f"run(command={json.dumps(command)}, carry={json.dumps(carry)}, " \
               f"timeout_s={timeout_s})" in dry_run
        for item, _ in s.items:
            assert item in dry_run, f"{s.name}: estimate item {item!r} not shown"
    assert "SAFETY = 1.5" in dry_run and "assumed 10 TFLOP/s" in dry_run
    assert "6 N + 12 L H Q T" in dry_run  # how a step's FLOPs are counted
    assert re.search(r"smoke +180 s .* 6 kernel files, [1-9]\d* GPU tests", dry_run)
    assert "train/resume: python3 examples/train_wikitext.py" in dry_run
    assert "--resume" in dry_run and "generate.py --checkpoint" in dry_run
    assert "--impls cupy,cupy-fused,torch-cuda,torch-compile" in dry_run
    assert "--compile-precisions float32 --dropout 0" in dry_run
    assert "--precisions float32,tf32,float16" in dry_run
    assert "bench_layers.py --sizes tiny,large,gpu --impls torch-cuda,cupy,cupy-fused" in dry_run


def test_every_estimate_fits_its_budget_and_the_plan_fits_the_device_time(stages):
    budgets = {"smoke": 180, "train": 300, "train_step": 300, "layers": 300}
    for s in stages:
        assert s.budget_s == budgets[s.name]
        assert 0 < s.estimate_s <= s.budget_s, f"{s.name}: {s.estimate_s:.0f} s > {s.budget_s}"
        assert s.estimate_s == pytest.approx(gpu_plan.SAFETY * sum(x for _, x in s.items))
        command, carry, timeout_s = s.device_call()
        assert len(command) <= 2000 and timeout_s <= gpu_plan.COMMAND_LIMIT_S
        assert len(s.outputs) <= gpu_plan.MAX_FILES and "stage.json" in s.outputs
        assert all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in s.outputs), s.outputs
        assert carry == (["device_data"] if s.name == "train" else [])
    total = sum(s.estimate_s for s in stages) + gpu_plan.MACHINE_START_S
    assert total <= gpu_plan.DEVICE_BUDGET_S, f"the plan needs {total:.0f} s of device time"
    assert gpu_plan.N_KERNEL_FILES == len(list((REPO / "kernels").glob("*.cu")))


def test_a_step_costs_what_its_flops_cost():
    """The estimate of a training step is its FLOPs at the assumed rate: the GPU preset's
    ~71 MFLOP per token (6 N + 12 L H Q T) times 64 x 256 tokens, at 10 TFLOP/s."""
    _, cfg = gpu_plan.gpu_preset(65)
    flops = gpu_plan.step_flops(cfg, 64)
    assert 1.0e12 < flops < 1.3e12
    assert gpu_plan.seconds_for(flops) == pytest.approx(flops / 10e12)


def test_a_stage_writes_under_OUT_and_stops_a_step_at_its_budget(tmp_path, monkeypatch):
    write = gpu_plan.Step("write", [sys.executable, "-c",
                                    "import sys; open(sys.argv[1] + '/x.txt', 'w').write('1')",
                                    "{folder}"])
    sleep = gpu_plan.Step("sleep", [sys.executable, "-c", "import time; time.sleep(60)"])
    never = gpu_plan.Step("never", [sys.executable, "-c", "pass"])
    stage = gpu_plan.Stage("demo", 10, "a test", [write, sleep, never], "3 steps",
                           [("nothing", 1.0)], ("log.txt", "x.txt", "stage.json"))
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    assert gpu_plan.results_dir() == tmp_path / "out"
    assert gpu_plan.run_stage(stage, gpu_plan.results_dir()) == 1
    folder = tmp_path / "out" / "demo"
    assert sorted(p.name for p in folder.iterdir()) == sorted(stage.outputs)
    record = json.loads((folder / "stage.json").read_text())
    assert [s.get("exit") for s in record["steps"]] == [0, 124]  # the third never ran
    assert record["steps"][1]["error"] == "stopped at the stage's budget"
    assert record["status"].startswith("failed at sleep") and record["seconds"] < 40
    assert record["steps"][0]["argv"][-1] == str(folder)  # {folder} is the stage's folder
    monkeypatch.delenv("OUT")
    assert gpu_plan.results_dir() == REPO / "benchmarks" / "results" / "gpu"
    missing = gpu_plan.Stage("missing", 10, "a test", [gpu_plan.Step(
        "nothing", [str(tmp_path / "no-such-program")])], "1 step", [("nothing", 1.0)],
        ("log.txt", "stage.json"))
    assert gpu_plan.run_stage(missing, tmp_path / "out") == 1
    record = json.loads((tmp_path / "out" / "missing" / "stage.json").read_text())
    assert record["steps"][0]["exit"] == 127 and "could not start" in record["status"]


def test_the_benchmark_stages_write_into_their_folder(stages):
    for s in stages:
        for step in s.steps:
            if "--out" in step.argv:
                assert step.argv[step.argv.index("--out") + 1] == "{folder}", (s.name, step)
    smoke = stages[0]
    assert "{folder}/junit.xml" in smoke.steps[2].argv


def test_missing_wikitext_fails_the_train_stage_loudly(tmp_path):
    """No data: exit status 2, one line naming the file and the fix, stage.json saying so,
    nothing trained (no silent fallback to other text)."""
    done = run_plan("train", "--data", tmp_path / "empty", "--work", tmp_path / "work",
                    out=tmp_path / "out")
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "WikiText-2 is missing" in errors[0]
    assert "--prepare-data" in errors[0] and "carry" in errors[0], errors[0]
    record = json.loads((tmp_path / "out" / "train" / "stage.json").read_text())
    assert record["status"].startswith("not started: WikiText-2 is missing")
    assert record["steps"] == [] and not (tmp_path / "work").exists()


def test_prepare_data_copies_the_raw_files_and_refuses_a_folder_without_them(tmp_path):
    source = tmp_path / "raw"
    source.mkdir()
    (source / "wiki.valid.raw").write_text(" = Valkyria = \n text\n")
    (source / "wiki.train.raw").write_text("not needed\n")
    target = tmp_path / "device_data" / "wikitext-2-raw"
    done = run_plan("--prepare-data", source, "--data", target)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in target.iterdir()) == ["wiki.valid.raw"]
    assert (target / "wiki.valid.raw").read_text() == " = Valkyria = \n text\n"
    assert "wiki.test.raw: not in" in done.stdout and "'device_data'" in done.stdout
    empty = tmp_path / "nothing"
    empty.mkdir()
    done = run_plan("--prepare-data", empty, "--data", target)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: --prepare-data {empty}: no wiki.valid.raw there")


def test_device_data_is_ignored_by_git():
    """The data travels as a carried path, so git must ignore it (it is never committed)."""
    assert "/device_data/" in (REPO / ".gitignore").read_text().split()
    assert gpu_plan.DATA_DIR.relative_to(REPO).parts[0] == gpu_plan.CARRY == "device_data"


def test_the_train_stage_rehearsed_on_the_cpu(tmp_path):
    """The train stage's machinery with NumPy and a tiny model: a run that saves a
    checkpoint, its resume, a sample; the results copied under $OUT/train (at most 8
    files), the checkpoints left in the scratch folder."""
    gpu_plan.prepare_data(wikitext_like_dir(), tmp_path / "data")  # WikiText-2's layout
    done = run_plan("train", "--rehearse", "--data", tmp_path / "data", "--work",
                    tmp_path / "work", out=tmp_path / "out")
    assert done.returncode == 0, done.stdout + done.stderr
    folder = tmp_path / "out" / "train"
    files = sorted(p.name for p in folder.iterdir())
    assert files == sorted(gpu_plan.train_stage("python", tmp_path / "data",
                                                 tmp_path / "work").outputs)
    record = json.loads((folder / "stage.json").read_text())
    assert record["status"] == "ok"
    assert [(s["name"], s["exit"]) for s in record["steps"]] == \
        [("train", 0), ("resume", 0), ("sample", 0)]
    log = (folder / "log.txt").read_text()
    assert "resumed from" in log and "at step 4" in log
    steps = [json.loads(line)["step"] for line in (folder / "metrics.jsonl").open()]
    assert max(steps) == 6
    assert len((folder / "sample.txt").read_text()) >= 300
    assert (tmp_path / "work" / "train_run" / "ckpt.safetensors").is_file()


def test_the_gpu_test_step_fails_when_a_gpu_test_was_skipped(tmp_path):
    """pytest exits 0 when every test is skipped; on the GPU machine that is a failure."""
    def junit(tests, skipped):
        (tmp_path / "junit.xml").write_text(
            f'<testsuites><testsuite tests="{tests}" skipped="{skipped}">'
            + '<testcase name="t"><skipped message="needs a CUDA GPU with CuPy"/></testcase>'
            * skipped + "</testsuite></testsuites>")

    junit(41, 41)
    assert "41 of 41 GPU tests were skipped (needs a CUDA GPU" in \
        gpu_plan.check_gpu_tests(tmp_path)
    junit(0, 0)
    assert gpu_plan.check_gpu_tests(tmp_path) == "no GPU test ran"
    junit(41, 0)
    assert gpu_plan.check_gpu_tests(tmp_path) is None


def test_the_env_step_names_the_gpu_or_fails(tmp_path):
    """Without a usable GPU, the smoke stage's first step fails with one line saying so;
    with one, it writes the device and the versions."""
    if CUPY_MISSING is not None:
        with pytest.raises(gpu_plan.PlanError, match="no usable CUDA GPU through CuPy"):
            gpu_plan.report_env(tmp_path)
    else:
        gpu_plan.report_env(tmp_path)
        info = json.loads((tmp_path / "env.json").read_text())
        assert info["device"] and info["cupy"] and info["cuda_driver"]


def test_bench_train_step_takes_a_dropout_and_one_compile_precision(tmp_path):
    done = subprocess.run([sys.executable, "benchmarks/bench_train_step.py", "--configs",
                           "tiny-cpu", "--impls", "numpy", "--dropout", "0.3",
                           "--compile-precisions", "float32", "--repeat", "1", "--warmup",
                           "0", "--threads", "1", "--out", str(tmp_path)], cwd=REPO,
                          env=gpu_plan.step_env({}), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads((tmp_path / "train_step.jsonl").read_text().splitlines()[0])
    assert record["model"]["dropout"] == 0.3
    for bad, message in ((["--dropout", "1.5"], "--dropout must be in [0, 1)"),
                         (["--compile-precisions", "bf16"], "unknown precision 'bf16'")):
        done = subprocess.run([sys.executable, "benchmarks/bench_train_step.py", *bad],
                              cwd=REPO, env=gpu_plan.step_env({}), capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 2 and message in done.stderr, done.stderr


def test_bench_layers_runs_only_the_implementations_asked_for(tmp_path):
    done = subprocess.run([sys.executable, "benchmarks/bench_layers.py", "--impls", "numpy",
                           "--sizes", "tiny", "--ops", "dropout", "--repeat", "1",
                           "--warmup", "0", "--threads", "1", "--out", str(tmp_path)],
                          cwd=REPO, env=gpu_plan.step_env({}), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    records = [json.loads(line) for line in (tmp_path / "layers.jsonl").open()]
    assert {tuple(r["results"]) for r in records} == {("numpy",)}
