"""``gpuconv bench --dtype --precision``: every implementation runs in the dtype and precision asked
for, or says in ``computed_as`` what it computed instead; its error is checked against the float64
reference on the same rounded inputs; bad values name the argument. The workers run in process here
(the CLI runs each in its own process; tests/test_cli.py runs that)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpuconv import bench

ROOT = Path(__file__).resolve().parent.parent
ALL_OPS = ["fprop", "dgrad", "wgrad"]


def worker_records(capsys, impl, dtype, precision="highest", ops=ALL_OPS):
    assert bench.worker(impl, "cpu", ["seed000_3x3"], ops, 1, dtype, precision) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize(("dtype", "precision"), [("float16", "highest"), ("bfloat16", "highest"),
                                                  ("float32", "tf32"), ("float32", "tf32x3"),
                                                  ("float64", "highest")])
def test_numpy_runs_every_op_in_the_dtype_and_precision(capsys, dtype, precision):
    pytest.importorskip("ml_dtypes")
    records = worker_records(capsys, "numpy", dtype, precision)
    assert [r["op"] for r in records] == ALL_OPS
    for r in records:
        assert (r["dtype"], r["precision"], r["computed_as"]) == (dtype, precision, None)
        assert r["problem"].endswith(dtype)
        # Above the dtype's own rounding (the half types: one rounding of each result), and
        # within the bound the worker enforces.
        assert 0 < r["max_rel_err"] <= bench.max_rel_err(dtype, precision), r


def test_the_error_bounds_sit_above_one_rounding_of_the_dtype():
    ulp = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 2.0**-24, "float64": 2.0**-53}
    for dtype, unit in ulp.items():
        assert 5 * unit < bench.max_rel_err(dtype, "highest") < 0.05, dtype
    assert 5 * 2.0**-11 < bench.max_rel_err("float32", "tf32") < 0.05


def test_a_wrong_result_fails_the_worker(capsys, monkeypatch):
    """One result off by 2% of the largest value: the worker stops, naming the case and the bound."""
    right = bench._make_impl("numpy", "float16")

    def off(p, op, *arrays):
        y = right.run(p, op, *arrays)
        y.flat[0] += np.float16(0.02 * np.abs(y.astype(np.float32)).max())
        return y

    monkeypatch.setattr(bench, "_make_impl", lambda *a: bench.Impl(right.to_array, off))
    with pytest.raises(AssertionError, match=r"numpy fprop seed000_3x3 float16 highest: relative "
                                             r"error \d\.\d\de-02 \(at most 0\.005\)"):
        bench.worker("numpy", "cpu", ["seed000_3x3"], ["fprop"], 1, "float16", "highest")


@pytest.mark.parametrize(("dtype", "precision", "computed_as"), [
    ("float16", "highest", "float32, rounded once to float16 (the naive loop sums in its inputs' dtype)"),
    ("float32", "tf32", "float32: the naive loop has no tf32"),
    ("float32", "highest", None),
])
def test_naive_says_what_it_computes(capsys, dtype, precision, computed_as):
    (record,) = worker_records(capsys, "naive", dtype, precision, ["wgrad"])
    assert record["computed_as"] == computed_as and record["dtype"] == dtype


@pytest.fixture
def torch_state():
    """PyTorch's global switches that the torch implementations set, restored after the test
    (by hand: torch.backends.cuda.matmul's attributes are properties monkeypatch cannot undo)."""
    torch = pytest.importorskip("torch")
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32, torch.get_num_threads())
    yield torch
    cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved[:3]
    torch.set_num_threads(saved[3])


@pytest.mark.parametrize(("precision", "tf32", "computed_as"), [
    ("highest", False, None), ("tf32", True, None), ("tf32x3", False, "float32: cuDNN has no tf32x3")])
def test_cudnn_tf32_switches_follow_the_precision(torch_state, precision, tf32, computed_as):
    """Set when the cudnn worker starts (no GPU needed to make the implementation)."""
    torch = torch_state
    impl = bench._make_impl("cudnn", "float32", precision)
    assert torch.backends.cudnn.allow_tf32 is tf32 and torch.backends.cuda.matmul.allow_tf32 is tf32
    assert impl.computed_as == computed_as


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_torch_cpu_in_half_types(capsys, torch_state, monkeypatch, dtype):
    """In the dtype where this PyTorch takes it; where it does not, in float32 rounded once, and
    labelled so."""
    pytest.importorskip("ml_dtypes")
    (native,) = worker_records(capsys, "torch-cpu", dtype, ops=["dgrad"])
    assert native["computed_as"] is None and native["max_rel_err"] <= bench.MAX_REL_ERR[dtype]
    monkeypatch.setattr(bench, "_torch_cpu_takes", lambda torch, dtype: False)
    impl = bench._make_impl("torch-cpu", dtype)
    x = np.ones((1, 2, 4, 4), bench.numpy_dtype(dtype))
    assert impl.to_array(x).dtype == torch_state.float32
    (converted,) = worker_records(capsys, "torch-cpu", dtype, ops=["dgrad"])
    assert converted["computed_as"] == (f"float32, rounded once to {dtype} (this PyTorch's CPU "
                                        f"convolution takes no {dtype})")
    assert converted["max_rel_err"] <= bench.MAX_REL_ERR[dtype]


BAD_ARGUMENTS = {
    "--dtype int8": (["--dtype", "int8"], "gpuconv bench: unknown --dtype 'int8'; choose from "
                     "['float32', 'float64', 'float16', 'bfloat16']"),
    "--precision fast": (["--precision", "fast"], "gpuconv bench: unknown --precision 'fast'; choose "
                         "from ['highest', 'tf32', 'tf32x3']"),
    "tf32 with float16": (["--dtype", "float16", "--precision", "tf32"],
                          "gpuconv bench: --precision tf32 applies to --dtype float32 only, got "
                          "--dtype float16; with float16 choose --precision highest"),
}


@pytest.mark.parametrize("name", BAD_ARGUMENTS)
def test_bad_dtype_or_precision_names_the_argument(name, monkeypatch):
    argv, message = BAD_ARGUMENTS[name]
    monkeypatch.setattr(bench, "_run_worker", lambda *a: pytest.fail("a worker ran"))
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--device", "cpu", *argv])
    assert str(exit_info.value) == message


def test_bfloat16_without_ml_dtypes_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    with pytest.raises(SystemExit, match="--dtype bfloat16 needs ml_dtypes, not installed: pip install "
                                         "ml_dtypes"):
        bench.check_dtype_precision("bfloat16", "highest")


def test_report_names_keep_float32_reports_as_they_were():
    assert bench.report_name("gpu", "float32", "highest") == "gpu"
    assert bench.report_name("gpu", "float32", "tf32") == "gpu-float32-tf32"
    assert bench.report_name("cpu", "bfloat16", "highest") == "cpu-bfloat16"


def test_table_says_what_was_computed_instead_only_when_something_was():
    row = dict(op="fprop", impl="cudnn", shape="s", ms=1.0, gflops=2.0, ratio=1.0, computed_as=None)
    assert "computed as" not in bench.format_table([row])
    noted = dict(row, computed_as="float32: cuDNN has no tf32x3")
    table = bench.format_table([noted, dict(row, impl="cuda")])
    assert table.splitlines()[0].endswith("| computed as |")
    assert table.splitlines()[2:] == [
        "| fprop | cuda | s | 1.000 | 2.0 | 1.00 |  |",
        "| fprop | cudnn | s | 1.000 | 2.0 | 1.00 | float32: cuDNN has no tf32x3 |"]


def test_model_gets_the_dtype_where_it_takes_one(monkeypatch, tmp_path, capsys):
    from gpuconv import model

    calls = []

    def with_dtype(gpu, shapes, results, dtype="float32", progress=None):
        calls.append(dtype)
        return "table", []

    monkeypatch.setattr(model, "table", with_dtype)
    assert bench.model_report("h100", ["seed000_3x3"], tmp_path, tmp_path, "bfloat16") == 0
    assert calls == ["bfloat16"] and "does not take" not in capsys.readouterr().err
    monkeypatch.setattr(model, "table", lambda gpu, shapes, results, progress=None: ("table", []))
    bench.model_report("h100", ["seed000_3x3"], tmp_path, tmp_path, "float32", "tf32")
    assert "the model's table does not take --precision tf32" in capsys.readouterr().err


def test_cli_records_dtype_and_precision(tmp_path):
    pytest.importorskip("ml_dtypes")
    run = subprocess.run([sys.executable, "-m", "gpuconv", "bench", "--quick", "--device", "cpu",
                          "--impls", "numpy", "--ops", "fprop", "--shapes", "seed000_3x3", "--dtype",
                          "bfloat16", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    (path,) = tmp_path.glob("cpu-bfloat16-*.json")
    report = json.loads(path.read_text())
    assert (report["dtype"], report["precision"]) == ("bfloat16", "highest")
    assert [(r["dtype"], r["precision"]) for r in report["results"]] == [("bfloat16", "highest")]
    assert "bfloat16, precision highest" in path.with_suffix(".md").read_text()
