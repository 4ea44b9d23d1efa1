"""gpuconv never flushes subnormal numbers (README, "Subnormal numbers"): on every backend a
subnormal input, product, sum or result is kept as IEEE 754 and NumPy keep it.

Inputs are small integers times a power of two chosen so that every product and sum is a float32
(or float64) subnormal that is exactly representable: the results then compare with ``==``
against the float64 reference. A flushing backend returns zeros (or keeps a negative subnormal
through relu) and fails. The cuda backend runs where a GPU is present (it compiles without
CuPy's -ftz=true); tests/test_cuda_setup.py checks its compiled code has no flushing arithmetic.
"""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv as gc
from gpuconv import reference
from gpuconv.problem import conv_problem

from problems import small_ints


def _cuda_present() -> bool:
    from gpuconv import info

    return info.gpu_count() > 0


BACKENDS = ["numpy", "emulate",
            pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
                "not _cuda_present()", reason="needs CuPy and a CUDA GPU")])]
# A factor per operand such that a product of two lies below the smallest normal number
# (2^-126 for float32, 2^-1022 for float64) and sums of up to 2^10 of them stay exact subnormals.
OPERAND_SCALE = {"float32": 2.0**-70, "float64": 2.0**-535}
TINY = {"float32": 1e-40, "float64": 1e-310}  # subnormal inputs themselves


def run(backend, op, *arrays, **kwargs):
    """``op`` on ``backend`` with NumPy ``arrays`` (moved to the GPU for cuda); a NumPy result."""
    if backend == "cuda":
        import cupy

        return op(*[None if a is None else cupy.asarray(a) for a in arrays], **kwargs).get()
    return op(*arrays, backend=backend, **kwargs)


def tiny_ints(rng, shape, dtype):
    return small_ints(rng, shape, dtype) * np.asarray(OPERAND_SCALE[dtype], dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_convolutions_keep_subnormal_products(backend, dtype):
    p = conv_problem((2, 3, 6, 5), (4, 3, 3, 3), dtype=dtype, padding=1)
    rng = np.random.default_rng(1)
    x, w, dy = (tiny_ints(rng, s, dtype) for s in (p.x_shape, p.w_shape, p.y_shape))
    bias = tiny_ints(rng, (p.K,), dtype) * np.asarray(OPERAND_SCALE[dtype], dtype)
    x64, w64, dy64, b64 = (a.astype(np.float64) for a in (x, w, dy, bias))
    want = {
        "fprop": reference.fprop(p, x64, w64, b64),
        "dgrad": reference.dgrad(p, dy64, w64),
        "wgrad": reference.wgrad(p, x64, dy64),
        "bias_grad": reference.bias_grad(dy64 * OPERAND_SCALE[dtype]),
    }
    assert 0 < np.abs(want["fprop"][want["fprop"] != 0]).max() < np.finfo(dtype).tiny  # subnormal
    got = {
        "fprop": run(backend, gc.conv2d, x, w, bias, padding=1),
        "dgrad": run(backend, lambda dy, w, **k: gc.conv2d_input(p.x_shape, w, dy, padding=1, **k), dy, w),
        "wgrad": run(backend, lambda x, dy, **k: gc.conv2d_weight(x, p.w_shape, dy, padding=1, **k), x, dy),
        "bias_grad": run(backend, gc.conv2d_bias, dy * np.asarray(OPERAND_SCALE[dtype], dtype)),
    }
    for op in want:
        assert np.count_nonzero(want[op]) > want[op].size // 2, op  # mostly nonzero: flushing shows
        np.testing.assert_array_equal(got[op], want[op].astype(dtype), err_msg=op)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_activations_keep_subnormals(backend, dtype):
    tiny = TINY[dtype]
    x = np.array([-tiny, tiny, -np.finfo(dtype).smallest_subnormal, np.finfo(dtype).smallest_subnormal,
                  0.0, 1.0, -1.0], dtype)
    dy = np.full_like(x, tiny)
    np.testing.assert_array_equal(run(backend, gc.relu, x), np.maximum(x, 0))  # relu(-1e-40) = 0
    # relu's gradient passes dy where x > 0, a subnormal x included; dy itself subnormal
    np.testing.assert_array_equal(run(backend, gc.relu_backward, dy, x), np.where(x > 0, dy, 0))
    y = np.array([0.5, 0.25, 0.75, 2.0**-10], dtype)
    # dy·(1 - y)·y of a subnormal dy: each product a subnormal, exact for these y
    want = (dy[:4].astype(np.float64) * (1 - y) * y).astype(dtype)
    assert np.all((0 < want) & (want < np.finfo(dtype).tiny))
    np.testing.assert_array_equal(run(backend, gc.sigmoid_backward, dy[:4], y), want)
    np.testing.assert_array_equal(run(backend, gc.sigmoid, x[:4]), np.full(4, 0.5, dtype))
