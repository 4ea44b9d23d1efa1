"""``gpuconv selftest``'s kernel matrix, on the CPU: it runs every kernel choice of the kernel
backend's tables in every dtype and precision and so launches every template instance of KERNELS
(checked with launches that run nothing: what the dispatch picks, fast), fails naming an instance
no check reaches, and computes right where the launches are real (emulate, a few choices)."""
from __future__ import annotations

import argparse
import contextlib
import json

import numpy as np
import pytest

from gpuconv import selftest
from gpuconv.backends import kernel_backend as kb


@pytest.fixture
def launches_run_nothing(monkeypatch):
    """kb.emulate_backend whose kernels run nothing (outputs stay NaN): the dispatch's launches only."""
    def nothing(grid, block, args, **launch):  # launch: shared_mem, as CuPy's RawKernel takes
        return None

    def backend(**kernels):
        return kb.KernelBackend("emulate", np, lambda filename, name: nothing,
                                lambda array: contextlib.nullcontext(), True, **kernels)

    monkeypatch.setattr(kb, "emulate_backend", backend)


def test_every_kernel_instance_runs_and_the_report_says_so(launches_run_nothing, tmp_path, capsys):
    args = argparse.Namespace(backend=["emulate"], every_kernel=True, out=tmp_path, pytest=False)
    assert selftest.main(args) == 1  # the results are NaN: every row fails but the coverage row
    rows = {r["op"]: r for r in json.loads((tmp_path / "selftest.json").read_text())["rows"]}
    instances = sum(map(len, kb.KERNELS.values()))
    coverage = rows[selftest.COVERAGE_OP]
    assert coverage["ok"] and coverage["problems"] == instances and not coverage["failure"]
    for op, kernel in selftest.kernel_choices():
        for matrix_op in selftest.MATRIX_OPS[op]:
            assert set(rows[f"{matrix_op} [{kernel}]"]["error"]) == set(selftest.TOLERANCE)
    assert "kernel instances run" in (tmp_path / "selftest.md").read_text()


def test_kernel_choices_are_the_backend_tables():
    choices = selftest.kernel_choices()
    assert ("fprop", "direct") in choices and ("fprop", "64x64x32_tc") in choices
    assert {k for op, k in choices if op == "wgrad"} == set(kb.KERNEL_CHOICES["wgrad"]) - {"auto"}
    assert len(choices) == sum(len(c) - 1 for c in kb.KERNEL_CHOICES.values())


def test_an_instance_no_check_reaches_fails_by_name(monkeypatch):
    launched = selftest.expected_instances("emulate")
    monkeypatch.setitem(kb.KERNELS, "fprop.cu", [*kb.KERNELS["fprop.cu"], "fprop_new<float>"])
    row = selftest.coverage_row("emulate", launched)
    assert not row.ok and row.failure == (f"1 of {len(launched) + 1} never run: "
                                          "fprop.cu: fprop_new<float>")


def test_every_dtype_and_precision_has_a_tolerance():
    assert set(selftest.DTYPE_PRECISIONS) == set(selftest.TOLERANCE)
    assert set(selftest.DTYPE_PRECISIONS.values()) >= {("float16", "highest"), ("bfloat16", "highest"),
                                                       ("float32", "tf32"), ("float32", "tf32x3")}


# Small problems: the emulator runs each kernel thread as a fiber. 16 output channels: the
# tensor-core tile takes them.
SMALL = ({"16->16 3x3": ((2, 16, 5, 5), (16, 16, 3, 3), dict(padding=1))},
         {"8->8 4x4 stride 2": ((1, 8, 3, 3), (8, 8, 4, 4), dict(stride=2, padding=1))})


def test_matrix_rows_on_the_emulated_kernels():
    pytest.importorskip("ml_dtypes")
    launched: set = set()
    rows = selftest.kernel_matrix("emulate", launched, [("fprop", "64x64x32_tc"), ("dgrad", "direct")],
                                  SMALL)
    assert [r.op for r in rows] == ["conv2d +bias [64x64x32_tc]", "conv2d +bias +relu [64x64x32_tc]",
                                    "conv2d +bias +sigmoid [64x64x32_tc]", "conv2d_input [direct]",
                                    "conv_transpose2d [direct]"]
    for row in rows:
        assert row.ok, row
        assert all(0 < row.error[d] for d in ("float16", "bfloat16", "float32 tf32")), row
    tensor_core = {name for f, name in launched if f == "fprop_tc.cu"}
    # 16 channels, not a multiple of BK: the plain staging; the activation is a run-time argument
    assert tensor_core == {kb.tensor_kernel_name("fprop", kind, "64x64x32_tc", "plain")
                           for kind in kb.TENSOR_KINDS}


def test_a_nan_result_is_an_infinite_error_not_none():
    assert selftest._relative_error(np.array([1.0, np.nan]), np.array([1.0, 2.0])) == np.inf
    assert selftest._relative_error(np.array([1.0, 2.5]), np.array([1.0, 2.0])) == 0.25
