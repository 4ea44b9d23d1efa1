"""The test_kernels matrix on the ``cuda`` backend: the same kernels on a real GPU, through CuPy.

Skipped, with the reason, where CuPy or a GPU is missing. Outputs are NaN-poisoned before each
kernel (``cuda_backend(poison_outputs=True)``), so an unwritten element fails the comparison.
"""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv.backends.kernel_backend import cuda_backend

from problems import EDGE, WIDE, conv_inputs, normal, problem, run_op, small_ints
from test_kernels import (
    ACTIVATIONS,
    OP_KERNELS,
    OP_KERNELS_F64,
    TRANSPOSE,
    check_elementwise,
    check_op,
    transpose_call,
    transpose_reference,
)

cupy = pytest.importorskip("cupy", reason="CuPy is not installed (extra cuda12 or cuda13)")
try:
    BACKEND = cuda_backend(poison_outputs=True)
except RuntimeError as e:
    pytest.skip(f"no usable CUDA GPU: {e}", allow_module_level=True)

pytestmark = pytest.mark.gpu


class OnDevice:
    """A cuda backend behind NumPy in, NumPy out, so test_kernels' checks apply unchanged."""

    def __init__(self, backend):
        self.backend = backend

    def __getattr__(self, op):
        def run(*args):
            moved = [cupy.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
            out = getattr(self.backend, op)(*moved)
            assert isinstance(out, cupy.ndarray)
            return out.get()

        return run


GPU = OnDevice(BACKEND)


def gpu(op, kernel):
    """The cuda backend with ``op`` forced to ``kernel`` ('auto', 'direct' or a tile)."""
    return OnDevice(cuda_backend(poison_outputs=True, **{f"{op}_kernel": kernel}))


# EDGE plus problems whose channels fill the 64- and 128-wide tiles, which 'auto' picks only there.
PROBLEMS = {**EDGE, **WIDE}
FPROP_KERNELS = [k for op, k in OP_KERNELS if op == "fprop"]
GRAD_KERNELS = [(op, k) for op, k in OP_KERNELS if op != "fprop"]


@pytest.mark.parametrize("kernel", FPROP_KERNELS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("name", PROBLEMS)
def test_fprop_exact(name, activation, kernel):
    p = problem(PROBLEMS[name], "float32")
    check_op(gpu("fprop", kernel), "fprop", p, conv_inputs(p, 1, small_ints), activation)


@pytest.mark.parametrize("op, kernel", GRAD_KERNELS)
@pytest.mark.parametrize("name", PROBLEMS)
def test_gradients_exact(name, op, kernel):
    p = problem(PROBLEMS[name], "float32")
    check_op(gpu(op, kernel), op, p, conv_inputs(p, 2, small_ints))


@pytest.mark.parametrize("op, kernel", OP_KERNELS_F64)
@pytest.mark.parametrize("name", PROBLEMS)
def test_float64(name, op, kernel):
    p = problem(PROBLEMS[name], "float64")
    check_op(gpu(op, kernel), op, p, conv_inputs(p, 4, normal), "sigmoid")


@pytest.mark.skipif(cupy.cuda.runtime.getDeviceCount() < 2, reason="needs two GPUs")
def test_results_stay_on_the_arrays_device():
    """Arrays on device 1 while device 0 is current: outputs on device 1, and right."""
    p = problem(EDGE["groups"], "float32")
    a = conv_inputs(p, 12, small_ints)
    with cupy.cuda.Device(1):
        on_1 = {k: cupy.asarray(v) for k, v in a.items()}
    with cupy.cuda.Device(0):
        for op in ("fprop", "dgrad", "wgrad"):
            got = run_op(BACKEND, op, p, on_1)
            assert got.device.id == 1, op
            np.testing.assert_array_equal(got.get(), run_op(GPU, op, p, a), err_msg=op)


@pytest.mark.parametrize("name", TRANSPOSE)
def test_conv_transpose2d_exact(name):
    case, rng = TRANSPOSE[name], np.random.default_rng(6)
    x, w = small_ints(rng, case["x"], "float32"), small_ints(rng, case["w"], "float32")
    bias = small_ints(rng, (case["w"][1] * case.get("groups", 1),), "float32")
    got = transpose_call(case, cupy.asarray(x), cupy.asarray(w), cupy.asarray(bias), None)
    np.testing.assert_array_equal(got.get(), transpose_reference(case, x, w, bias).astype("f4"))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_elementwise(dtype):
    check_elementwise(GPU, dtype)


def test_bitwise_deterministic_on_a_non_default_stream():
    p = problem(EDGE["odd_channels"], "float32")
    a = conv_inputs(p, 10, normal)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        for op in ("fprop", "dgrad", "wgrad"):
            assert run_op(GPU, op, p, a, "relu").tobytes() == run_op(GPU, op, p, a, "relu").tobytes()


def test_emulate_agrees_bitwise_with_cuda_on_small_integers():
    from gpuconv.backends.kernel_backend import emulate_backend

    p = problem(EDGE["dilation_stride"], "float32")
    a = conv_inputs(p, 11, small_ints)
    for op in ("fprop", "dgrad", "wgrad"):
        assert np.array_equal(run_op(GPU, op, p, a), run_op(emulate_backend(), op, p, a)), op
