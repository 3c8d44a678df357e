"""Smoke test of bench/: every benchmark builds and runs one tiny case, so a broken benchmark
fails CI. No timing is asserted; what is asserted is that the cases compute the same thing
(masked variants give the same gradients) and that the memory accounting sees the difference
between keeping W*M / the crossed input and not keeping them.
"""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["NCS_BENCH_TINY"] = "1"  # before bench modules compute their case lists
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import ncs_kernels as nk  # noqa: E402
from bench import _cases as K  # noqa: E402
from bench import _env, _memory, _problems, _pytest_glue, _timing  # noqa: E402
from bench import bench_ops  # noqa: E402

OPS = ("masked_linear", "cross_masked_linear", "masked_adam")


def _runnable(op):
    shape = {"masked_linear": K.linear_shapes(K.TINY_BATCH)[0], "cross_masked_linear": K.cross_shape(K.TINY_BATCH),
             "masked_adam": K.adam_shapes()[0]}[op]
    return shape, [v for v in K.variants(op, "cpu") if K.why_skip(op, v, "cpu", "fp32", "eager") is None]


def test_pytest_suites_import_and_list_cases():
    from bench import test_bench_cross, test_bench_masked_linear  # noqa: F401

    for op in OPS:
        cases = _pytest_glue.pytest_cases(op, "cpu")
        assert cases, op
        # every backend appears (unavailable ones skip with a reason rather than vanish)
        names = {p.values[1] for p in cases}
        for be in ("torch", "cpu", "triton", "cuda"):
            assert f"nk:{be}" in names


@pytest.mark.parametrize("op", OPS)
def test_every_runnable_variant_runs_one_step(op):
    shape, names = _runnable(op)
    assert "nk:torch" in names
    grads = {}
    for v in names:
        prob = _problems.make_problem(op, v, shape, "fp32", "cpu")
        fn = _timing.runner(prob, "cpu", "eager", warmup=1)
        t = _timing.time_once(fn, "cpu")
        assert math.isfinite(t) and t > 0
        if prob.forward is not None:
            prob.eager_step()
            grads[v] = [t.grad.clone() for t in prob.leaves]
    if op == "masked_adam":
        return
    masked = [v for v in grads if v not in ("dense", "dense_unfused")]
    base = grads[masked[0]]
    for v in masked[1:]:  # float mask, prune and every ncs backend: the same masked gradients
        for a, b in zip(base, grads[v]):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=lambda m: f"{op} {v}: {m}")


def test_activation_bytes_see_the_saved_copies():
    b, (k, n) = K.TINY_BATCH, K.TINY_LINEAR_SHAPES[0]
    shape = {"B": b, "K": k, "N": n}
    out_bytes = b * n * 4
    dense = _memory.activation_bytes(_problems.make_problem("masked_linear", "dense", shape, "fp32", "cpu"))
    fm = _memory.activation_bytes(_problems.make_problem("masked_linear", "floatmask", shape, "fp32", "cpu"))
    nkt = _memory.activation_bytes(_problems.make_problem("masked_linear", "nk:torch", shape, "fp32", "cpu"))
    assert dense == out_bytes and nkt == out_bytes  # x, W, packed are inputs: nothing extra kept
    assert fm == out_bytes + n * k * 4  # the float-mask path keeps W*M alive for backward
    cs = K.cross_shape(b)
    width = cs["F"] ** 2 + cs["F"] * cs["d"]
    unf = _memory.activation_bytes(_problems.make_problem("cross_masked_linear", "dense_unfused", cs, "fp32", "cpu"))
    fused = _memory.activation_bytes(_problems.make_problem("cross_masked_linear", "nk:torch", cs, "fp32", "cpu"))
    assert fused == b * cs["N"] * 4
    assert unf >= fused + b * width * 4  # the [B, F*F + F*d] crossed input is kept


def test_hardware_slug_and_paths():
    slug = _env.hardware_slug("cpu")
    assert slug.startswith("cpu-") and all(c.isalnum() or c == "-" for c in slug)
    p = _env.default_result_path("cpu", "ops")
    assert p.parent == REPO / "bench" / "results" and p.name.endswith(f"_{slug}_ops.json")


def test_bench_ops_tiny_run_writes_complete_json(tmp_path, capsys):
    out = tmp_path / "ops.json"
    rc = bench_ops.main(["--tiny", "--device", "cpu", "--threads", "1", "--json", str(out)])
    doc = json.loads(out.read_text())
    assert doc["errors"] == [], doc["errors"]
    assert rc == 0
    assert doc["schema"] == bench_ops.SCHEMA and doc["complete"] is True
    assert {g["op"] for g in doc["groups"]} == set(OPS)
    for g in doc["groups"]:
        rows = {r["variant"]: r for r in g["rows"]}
        floor = rows[g["floor"]]
        assert floor["time_x_floor"] == 1.0 and len(floor["samples_s"]) == 2
        assert rows["nk:torch"]["median_s"] > 0
    assert "xfloatmask" in capsys.readouterr().out


def test_bench_ops_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        bench_ops.main(["--ops", "linear,nope"])
    with pytest.raises(SystemExit):
        bench_ops.main(["--repeats", "0"])


def test_pytest_benchmark_suites_run_tiny():
    pytest.importorskip("pytest_benchmark")
    # one thread: tiny ops on a busy 2-core runner otherwise spend their time in OpenMP contention
    env = dict(os.environ, NCS_BENCH_TINY="1", NCS_BENCH_DEVICE="cpu", NCS_BENCH_ROUNDS="1", NCS_BENCH_WARMUP="0",
               NCS_BENCH_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-disable",
                        "bench/test_bench_masked_linear.py", "bench/test_bench_cross.py"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout


_NEEDS_BASH = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                 reason="needs bash and timeout")


@_NEEDS_BASH
def test_gpu_check_dry_run_records_every_step(tmp_path):
    empty = tmp_path / "no_tests"
    empty.mkdir()
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, NCS_CHECK_SKIP_BUILD="1", NCS_CHECK_TESTS_PATH=str(empty),
               NCS_CHECK_BENCH_ARGS="--ops adam --repeats 1", NCS_CHECK_SMOKE_ARGS="--ops linear,adam",
               NCS_BENCH_THREADS="1", NCS_CHECK_SECONDS="200")
    r = subprocess.run(["bash", "bench/gpu_check.sh", "--cpu", str(out)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=280)
    summary = json.loads((out / "summary.json").read_text())
    steps = {s["step"]: s for s in summary["steps"]}
    # the run order: build, smoke, benchmarks, stages, then the tests with the time left
    assert list(steps) == ["env", "build", "import", "smoke", "bench_ops", "stages", "tests"], summary
    assert steps["build"]["status"] == "skipped"
    assert steps["tests"]["status"] == "no-tests"
    for name in ("env", "import", "smoke", "bench_ops"):
        assert steps[name]["status"] == "ok", (name, r.stderr[-3000:])
    assert steps["stages"]["status"] in ("ok", "skipped"), (out / "bench.log").read_text()[-3000:]
    env_doc = json.loads((out / "env.json").read_text())
    assert env_doc["versions"]["torch"] == torch.__version__
    for tool in ("nvcc", "gcc", "ninja"):
        assert env_doc["tools"][tool], tool
    assert isinstance(env_doc["python_h"]["found"], bool) and "torch_cuda" in env_doc
    smoke = json.loads((out / "smoke.json").read_text())
    assert smoke["all_pass"] is True and smoke["summary"]["pass"] >= 2, smoke["summary"]
    assert summary["smoke"]["all_pass"] is True and summary["smoke"]["failed"] == []
    ops = json.loads((out / "ops.json").read_text())
    assert ops["complete"] is True and ops["smoke"]["all_pass"] is True
    rows = {r_["variant"]: r_ for g in ops["groups"] for r_ in g["rows"]}
    assert rows["nk:cpu"]["smoke"] == "pass" and rows["adam"]["smoke"] == "baseline"
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and "summary.json" in files, files
    assert (r.returncode == 0) == summary["all_ok"]
    assert r.returncode == 0, r.stderr[-3000:]


@_NEEDS_BASH
def test_gpu_check_test_step_streams_and_counts_without_stopping_at_the_first_failure(tmp_path):
    tdir = tmp_path / "t"
    tdir.mkdir()
    (tdir / "test_three.py").write_text(
        "def test_fails_first():\n    assert False\n\n"
        "def test_passes():\n    pass\n\n"
        "def test_passes_too():\n    pass\n")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, NCS_CHECK_STEPS="tests", NCS_CHECK_TESTS_PATH=str(tdir),
               NCS_CHECK_TESTS_K="passes or fails", NCS_CHECK_XDIST="0", NCS_CHECK_SECONDS="120")
    r = subprocess.run(["bash", "bench/gpu_check.sh", "--cpu", str(out)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=200)
    summary = json.loads((out / "summary.json").read_text())
    steps = {s["step"]: s for s in summary["steps"]}
    assert steps["smoke"]["status"] == "skipped" and steps["tests"]["status"] == "failed"
    # no -x: the tests after the failing one still ran, and each outcome is in the log
    assert summary["tests"]["passed"] == 2 and summary["tests"]["failed"] == 1, summary["tests"]
    assert any("test_fails_first" in t for t in summary["tests"]["failed_tests"])
    log = (out / "tests.log").read_text()
    assert "test_passes_too PASSED" in log and "--maxfail=" in log
    # what the test step had (or lacked) is said in the log and the step's note
    assert "pytest-timeout" in steps["tests"]["note"] and "plugins:" in log
    assert r.returncode != 0 and summary["all_ok"] is False


def test_smoke_pass_flags_a_wrong_backend(tmp_path, monkeypatch):
    from bench import smoke

    real = nk.masked_linear

    def wrong(x, w, packed, bias=None, backend="auto"):
        y = real(x, w, packed, bias, backend=backend)
        return y * 1.01 if backend == "cpu" else y  # 1 % off: over the fp32 tolerance

    monkeypatch.setattr(nk, "masked_linear", wrong)
    out = tmp_path / "smoke.json"
    rc = smoke.main(["--tiny", "--device", "cpu", "--ops", "linear", "--threads", "1", "--json", str(out)])
    doc = json.loads(out.read_text())
    status = {c["variant"]: c["status"] for c in doc["cases"]}
    assert rc == 1 and doc["all_pass"] is False
    assert status["nk:cpu"] == "fail" and status["nk:triton"] == "pass", status
    assert status["nk:cuda"] == "skipped" and status["nk:cuda~fused"] == "skipped"
    table = smoke.verdicts(doc)
    assert smoke.verdict_for(table, "masked_linear", "nk:cpu", "fp32") == "fail"
    assert smoke.verdict_for(table, "cross_masked_linear", "cross+nk:cpu", "fp32") == "fail"
    assert smoke.verdict_for(table, "masked_linear", "floatmask", "fp32") == "baseline"
    assert smoke.verdict_for(table, "masked_linear", "nk:torch", "fp32") == "reference"
    assert smoke.verdict_for(table, "masked_linear", "nk:cpu", "bf16") == "not-checked"


def test_cuda_gemm_variant_pins_the_strategy(monkeypatch):
    assert "nk:cuda~fused" in K.variants("masked_linear", "cpu")
    assert "nk:cuda~fused" in K.variants("cross_masked_linear", "cpu")
    assert "nk:cuda~fused" not in K.variants("masked_adam", "cpu")
    assert K.variant_backend("nk:cuda~fused") == "cuda"
    assert K.variant_cuda_gemm("nk:cuda~fused") == "fused" and K.variant_cuda_gemm("nk:cuda") is None
    assert K.variant_cuda_gemm("nk:triton~materialize") is None

    calls = []

    class FakeExt:  # _C with CUDA, without a GPU: records the switch
        strategy = "cublas"

        def cuda_gemm_strategy(self):
            return self.strategy

        def set_cuda_gemm_strategy(self, s):
            calls.append(s)
            self.strategy = s

    ext = FakeExt()
    monkeypatch.setattr(_env, "native", lambda: ext)
    seen = []
    prob = _problems.Problem(update=lambda: seen.append(ext.strategy), cuda_gemm="fused")
    prob.step()
    assert seen == ["fused"] and calls == ["fused", "cublas"] and ext.strategy == "cublas"


def test_stages_tiny_run(tmp_path):
    pytest.importorskip("ncs.train", reason="the trainer (python/ncs/train) is not importable")
    from bench import stages

    out = tmp_path / "stages.json"
    rc = stages.main(["--tiny", "--device", "cpu", "--threads", "1", "--json", str(out)])
    doc = json.loads(out.read_text())
    assert [r.get("error") for r in doc["results"]] == [None, None]
    assert rc == 0 and doc["schema"] == stages.SCHEMA
    for r in doc["results"]:
        for s in stages.STAGES:
            assert r[s]["samples"] > 0 and r[s]["samples_per_s"] > 0, (r["backend"], s)
        assert set(r["masks"]["per_task"]) == {"ctr", "cvr"}
    # both ratios per training stage: to the bare bound (the issue's) and to the bound with the
    # first layer's input gradient (the fp32 ceiling), each from the bound measured next to it
    for row in doc["summary"]:
        (r,) = [r for r in doc["results"] if r["backend"] == row["backend"]]
        assert set(r["dense_mlp_by_stage"]) == set(stages.TRAIN_STAGES)  # a bound right before each stage
        for s in stages.TRAIN_STAGES:
            rate, bound = r[s]["samples_per_s"], r["dense_mlp_by_stage"][s]
            assert row[f"{s}_ratio"] == pytest.approx(rate / bound["samples_per_s"])
            assert row[f"{s}_ceiling_ratio"] == pytest.approx(rate / bound["input_grad_samples_per_s"])
        assert row["ceiling_of_bound"] == pytest.approx(
            r["dense_mlp"]["input_grad_samples_per_s"] / r["dense_mlp"]["samples_per_s"])
    table = stages.format_table(doc["results"])
    assert "(+ input grad)" in table and "x | " in table


def test_profile_step_parts_tiny(tmp_path):
    pytest.importorskip("ncs.train", reason="the trainer (python/ncs/train) is not importable")
    from bench import profile_step

    out = tmp_path / "parts.txt"
    assert profile_step.main(["--tiny", "--threads", "1", "--parts", "--bf16", "--rounds", "1",
                              "--embedding-step", "fused", "--out", str(out)]) == 0
    text = out.read_text()
    for part in ("bound + dL/dx", "+ embedding step (= step)", "cross fwd+bwd, Gu/Wf kept", "torch-ops model bf16",
                 "256->512 + ReLU in place"):
        assert part in text, part


def test_three_stage_benchmark_runs_on_a_tiny_synthetic_set(tmp_path):
    """bench/three_stage.py: synth -> the connection model's three stages on the streamed path ->
    a complete JSON with the stage seconds, the attempt's peak RSS and the config it ran."""
    out = tmp_path / "run"
    res = tmp_path / "three.json"
    p = subprocess.run([sys.executable, str(REPO / "bench" / "three_stage.py"), "--synth-rows", "20000",
                        "--data", str(tmp_path / "enc"), "--out", str(out), "--json", str(res)],
                       capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads(res.read_text())
    assert doc["complete"] and set(doc["stages_s"]) == {"warmup", "masks", "joint"}
    assert all(v > 0 for v in doc["stages_s"].values())
    (att,) = doc["attempts"]
    assert att["rc"] == 0 and att["peak_rss_mb"] > 0 and doc["synth"]["rc"] == 0
    assert "kind: encoded" in doc["config"] and (out / "metrics.json").exists()
    assert "masks ctr round 4/4" in (out / "bench.log").read_text()
