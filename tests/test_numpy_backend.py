"""The numpy backend against the float64 reference: the named edge problems, random problems drawn
by hypothesis (convolutions and transposed convolutions), small integers compared exactly, bitwise
determinism, and the elementwise ops.

The backend is called directly with the checked problem (the API's argument handling has its own
tests in test_api.py / test_errors.py).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gpuconv import reference
from gpuconv.backends.numpy_backend import BACKEND, common, depthwise, uses_winograd
from gpuconv.problem import conv_problem, transpose_problem

from problems import EDGE, RESNET, conv_inputs, float32_tolerance, normal, problem, run_op, small_ints

OPS = ("fprop", "dgrad", "wgrad")


def check_float64(p, op, a, activation=None):
    got = run_op(BACKEND, op, p, a, activation)
    want = run_op(reference, op, p, a, activation)
    assert got.dtype == np.float64 and got.shape == want.shape and got.flags.c_contiguous
    err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-300)
    assert err <= 1e-10, f"{op} {p.describe()}: relative error {err:.2e}"


def check_float32(p, op, a):
    got = run_op(BACKEND, op, p, a)
    want = run_op(reference, op, p, a)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    tol = float32_tolerance(p.gemm_shape(op)[2])
    err = np.abs(got - want).max()
    assert err <= tol, f"{op} {p.describe()}: abs error {err:.2e} > {tol:.2e}"


def check_path(case, op, seed):
    """``op`` on ``case`` three ways against the reference: small integers in float32 exactly,
    normals in float32 within the tolerance, normals in float64 within 1e-10."""
    p = problem(case, "float32")
    a = conv_inputs(p, seed, small_ints)
    np.testing.assert_array_equal(run_op(BACKEND, op, p, a), run_op(reference, op, p, a))
    check_float32(p, op, conv_inputs(p, seed + 1, normal))
    p64 = problem(case, "float64")
    check_float64(p64, op, conv_inputs(p64, seed + 2, normal))


# -- the named edge problems ------------------------------------------------------------------


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("name", EDGE)
def test_edge_float64(name, op):
    p = problem(EDGE[name], "float64")
    check_float64(p, op, conv_inputs(p, 1, normal))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("name", EDGE)
def test_edge_float32(name, op):
    p = problem(EDGE[name], "float32")
    check_float32(p, op, conv_inputs(p, 2, normal))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("name", EDGE)
def test_edge_small_integers_exact(name, op):
    p = problem(EDGE[name], "float32")
    a = conv_inputs(p, 3, small_ints)
    np.testing.assert_array_equal(run_op(BACKEND, op, p, a), run_op(reference, op, p, a))


@pytest.mark.parametrize("name", [n for n in EDGE if problem(EDGE[n], "float64").stride != (1, 1)])
def test_strided_dgrad_phases(name, monkeypatch):
    """Tiny strided layers' dgrad is a col2im; with the floor on the block size lifted, the edge
    problems take the stride phases instead."""
    monkeypatch.setattr(common, "MIN_BLOCK", 0)
    p = problem(EDGE[name], "float32")
    a = conv_inputs(p, 3, small_ints)
    np.testing.assert_array_equal(run_op(BACKEND, "dgrad", p, a), run_op(reference, "dgrad", p, a))
    p64 = problem(EDGE[name], "float64")
    check_float64(p64, "dgrad", conv_inputs(p64, 1, normal))


@pytest.mark.slow
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("name", RESNET)
def test_resnet_float32(name, op):
    p = problem(RESNET[name], "float32")
    check_float32(p, op, conv_inputs(p, 4, normal))


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
@pytest.mark.parametrize("name", ["asym_pad", "1x1_kernel", "depthwise"])
def test_fused_bias_activation(name, activation):
    p = problem(EDGE[name], "float64")
    check_float64(p, "fprop", conv_inputs(p, 5, normal), activation)


# -- random problems ---------------------------------------------------------------------------


@st.composite
def conv_problems(draw):
    """Valid conv2d problems: asymmetric padding, dilation, groups (depthwise when C/groups = 1),
    stride larger than the kernel, P or Q = 1, N = 1."""
    R, S = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = tuple(draw(st.integers(0, 3)) for _ in range(4))
    groups = draw(st.integers(1, 3))
    N, Cg, Kg = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    # The padded input is at least as large as the dilated kernel, plus 0..5 spare pixels.
    H = max(1, dilation[0] * (R - 1) + 1 - padding[0] - padding[1]) + draw(st.integers(0, 5))
    W = max(1, dilation[1] * (S - 1) + 1 - padding[2] - padding[3]) + draw(st.integers(0, 5))
    return conv_problem((N, groups * Cg, H, W), (groups * Kg, Cg, R, S), stride, padding,
                        dilation, groups, "float64")


@st.composite
def transpose_problems(draw):
    """Valid conv_transpose2d problems, output_padding included (up to max(stride, dilation)-1,
    so it may exceed the stride when the dilation allows it)."""
    R, S = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    out_pad = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    groups = draw(st.integers(1, 3))
    N, Cg, Kg = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    Hin, Win = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    # Output size (Hin-1)·stride - 2·pad + dil·(R-1) + out_pad + 1 must be positive.
    assume(all((i - 1) * s - 2 * q + d * (k - 1) + o + 1 > 0 for i, s, q, d, k, o in
               zip((Hin, Win), stride, padding, dilation, (R, S), out_pad)))
    return transpose_problem((N, groups * Kg, Hin, Win), (groups * Kg, Cg, R, S), stride,
                             padding, out_pad, groups, dilation, "float64")


RANDOM = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@RANDOM
@given(p=conv_problems(), seed=st.integers(0, 2**32 - 1))
def test_random_conv_float64(p, seed):
    a = conv_inputs(p, seed, normal)
    for op in OPS:
        check_float64(p, op, a)


@RANDOM
@given(p=transpose_problems(), seed=st.integers(0, 2**32 - 1))
def test_random_transpose_float64(p, seed):
    check_float64(p, "dgrad", conv_inputs(p, seed, normal))


@RANDOM
@given(p=conv_problems(), seed=st.integers(0, 2**32 - 1))
def test_random_small_integers_exact(p, seed):
    p = conv_problem(p.x_shape, p.w_shape, p.stride, p.padding, p.dilation, p.groups, "float32")
    a = conv_inputs(p, seed, small_ints)
    for op in OPS:
        np.testing.assert_array_equal(run_op(BACKEND, op, p, a), run_op(reference, op, p, a))


# -- determinism, dtype, the elementwise ops ----------------------------------------------------


@pytest.mark.parametrize("name", ["odd_channels", "dilation_stride", "groups"])
def test_bitwise_deterministic(name):
    p = problem(EDGE[name], "float32")
    a = conv_inputs(p, 6, normal)
    for op in OPS:
        first = run_op(BACKEND, op, p, a)
        for _ in range(3):
            assert run_op(BACKEND, op, p, a).tobytes() == first.tobytes(), op


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bias_grad(dtype):
    dy = normal(np.random.default_rng(7), (3, 5, 4, 6), dtype)
    db = BACKEND.bias_grad(dy)
    assert db.dtype == dtype and db.shape == (5,)
    np.testing.assert_allclose(db, reference.bias_grad(dy), rtol=1e-5 if dtype == "float32" else 1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_elementwise(dtype):
    rng = np.random.default_rng(8)
    x, dy = normal(rng, (2, 3, 4, 5), dtype), normal(rng, (2, 3, 4, 5), dtype)
    y = BACKEND.sigmoid(x)
    results = [BACKEND.relu(x), BACKEND.relu_backward(dy, x), y, BACKEND.sigmoid_backward(dy, y)]
    wants = [reference.activate(x, "relu"), reference.relu_backward(dy, x),
             reference.activate(x, "sigmoid"), reference.sigmoid_backward(dy, y)]
    for got, want in zip(results, wants):
        assert got.dtype == dtype and got.flags.c_contiguous
        np.testing.assert_allclose(got, want, rtol=1e-6 if dtype == "float32" else 1e-14)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sigmoid_large_inputs_do_not_overflow(dtype):
    x = np.array([-1e4, -800.0, -50.0, 0.0, 50.0, 800.0, 1e4], dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow in exp would raise here
        y = BACKEND.sigmoid(x)
        fused = BACKEND.fprop(conv_problem((1, 1, 1, 7), (1, 1, 1, 1), dtype=dtype),
                              x.reshape(1, 1, 1, 7), np.ones((1, 1, 1, 1), dtype), None, "sigmoid")
    want = np.array([0.0, 0.0, np.exp(-50.0) / (1 + np.exp(-50.0)), 0.5,
                     1 / (1 + np.exp(-50.0)), 1.0, 1.0])
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(fused.ravel(), y)


# Chunked im2col (short reductions take it), with the floor on the block size lifted: a 7×7
# stride-2 stem on 3 channels (wide output: bands of rows within an image) and a layer with few
# input channels (several images per GEMM, the last block shorter).
CHUNKED = {
    "stem_bands": dict(x=(2, 3, 15, 13), w=(64, 3, 7, 7), stride=2, padding=3),
    "image_blocks": dict(x=(5, 2, 6, 6), w=(16, 2, 3, 3), padding=1),
}


@pytest.mark.parametrize("name", CHUNKED)
@pytest.mark.parametrize("op", OPS)
def test_chunked_im2col(name, op, monkeypatch):
    monkeypatch.setattr(common, "MIN_BLOCK", 0)
    p = problem(CHUNKED[name], "float32")
    chunks = list(common.chunks(p.N, p.P, p.Q, p.C * p.R * p.S + p.K,
                                p.N * p.K * p.P * p.Q + p.K * p.C * p.R * p.S))
    assert len(chunks) > 1
    assert max(nb for _, nb, _, _ in chunks) == (1 if name == "stem_bands" else 2)
    check_path(CHUNKED[name], op, 9)


# Winograd F(2×2, 3×3) (3×3, stride 1, ≥ 128 channels each way for all three ops): odd and even
# output sizes (the last tile row and column cropped), asymmetric padding, padding beyond the kernel
# (dgrad crops dy), and with the floor on the block size lifted, blocks of images and bands of tile
# rows.
WINOGRAD = {
    "odd_asym": dict(x=(2, 128, 9, 7), w=(136, 128, 3, 3), padding=(0, 2, 1, 0)),
    "even_same": dict(x=(3, 129, 6, 8), w=(128, 129, 3, 3), padding=1),
    "wide_pad": dict(x=(1, 128, 4, 5), w=(128, 128, 3, 3), padding=3),
}


@pytest.mark.parametrize("min_block", [1 << 16, 0])
@pytest.mark.parametrize("name", WINOGRAD)
@pytest.mark.parametrize("op", OPS)
def test_winograd(name, op, min_block, monkeypatch):
    monkeypatch.setattr(common, "MIN_BLOCK", min_block)
    assert uses_winograd(problem(WINOGRAD[name], "float32"), op)
    check_path(WINOGRAD[name], op, 11)  # F(2, 3)'s transforms hold halves: integers stay exact


@pytest.mark.parametrize("op", OPS)
def test_winograd_nonfinite(op):
    """inf in x or dy: Winograd's transforms would mix it with its neighbours (inf - inf = NaN),
    so the op takes a direct path, whose NaN and inf are the reference's."""
    p = problem(WINOGRAD["even_same"], "float32")
    a = conv_inputs(p, 14, small_ints)
    a["x"][0, 0, 2, 3] = np.inf
    a["dy"][1, 2, 3, 4] = -np.inf
    with np.errstate(invalid="ignore"):
        got, want = run_op(BACKEND, op, p, a), run_op(reference, op, p, a)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("op", OPS)
def test_winograd_near_overflow(op):
    """Finite numbers so large that a transform's sums of up to 4 of them would overflow, though
    the true results are finite: alternating signs make every tile sum ±4·9e37 > float32's max.
    The op must leave Winograd and give the reference's finite result."""
    p = problem(WINOGRAD["even_same"], "float32")
    signs = np.array([1, 1, -1, -1] * 4)[:, None] * (-1.0) ** np.arange(16)
    a = conv_inputs(p, 15, normal)
    for name in ("x", "dy"):
        shape = a[name].shape
        a[name] = np.ascontiguousarray(np.broadcast_to(signs[: shape[2], : shape[3]] * 9e37,
                                                       shape), np.float32)
    a["w"] = a["w"] * np.float32(1e-3)
    if op == "wgrad":  # a sum over N·P·Q products of 9e37²: keep the true result finite
        a["dy"] = a["dy"] * np.float32(1e-40 / 9e37 * 1e38 / 9e37)
    want = run_op(reference, op, p, a)
    assert np.isfinite(want).all()
    got = run_op(BACKEND, op, p, a)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


# 1×1 layers on small maps with many channels: fprop and dgrad put the images side by side in one
# GEMM (the filter outweighs a map), wgrad gathers them; on large maps, one GEMM per image.
POINTWISE = {
    "small_map": dict(x=(3, 40, 2, 2), w=(48, 40, 1, 1)),
    "small_map_s2": dict(x=(3, 40, 3, 3), w=(48, 40, 1, 1), stride=2),
    "large_map": dict(x=(2, 4, 9, 9), w=(6, 4, 1, 1)),
}


@pytest.mark.parametrize("name", POINTWISE)
@pytest.mark.parametrize("op", OPS)
def test_pointwise(name, op):
    check_path(POINTWISE[name], op, 15)


# Depthwise with one channel per group at stride 1 (fprop, dgrad's phases, wgrad): taps as offsets
# into flat padded planes, in blocks of images and channels (a block size of one plane forces one
# channel per block, the smallest a partial last block of images); asymmetric padding, dilation,
# and stride 2, whose dgrad phases are stride-1 depthwise correlations.
DEPTHWISE = {
    "same": dict(x=(3, 5, 8, 7), w=(5, 1, 3, 3), groups=5, padding=1),
    "asym_dilated": dict(x=(2, 4, 9, 6), w=(4, 1, 3, 2), groups=4, padding=(2, 0, 1, 1),
                         dilation=(2, 1)),
    "strided": dict(x=(2, 3, 9, 8), w=(3, 1, 3, 3), groups=3, padding=1, stride=2),
}


@pytest.mark.parametrize("block", [1 << 18, 1, 200])
@pytest.mark.parametrize("name", DEPTHWISE)
@pytest.mark.parametrize("op", OPS)
def test_depthwise(name, op, block, monkeypatch):
    monkeypatch.setattr(depthwise, "BLOCK", block)
    check_path(DEPTHWISE[name], op, 17)


@pytest.mark.parametrize("op", OPS)
def test_depthwise_nonfinite(op):
    """inf in x and dy: the result's NaN and inf are the reference's. wgrad's dot products also
    multiply x's last column by the zeros past Q on dy's virtual grid (inf·0 = NaN where the
    reference has finite sums): the non-finite result sends it to the im2col."""
    p = problem(dict(x=(2, 3, 6, 5), w=(3, 1, 3, 3), groups=3, padding=(1, 1, 0, 0)), "float32")
    a = conv_inputs(p, 20, small_ints)
    a["x"][0, 1, 2, 4] = np.inf
    a["dy"][1, 2, 3, 1] = -np.inf
    with np.errstate(invalid="ignore"):
        got, want = run_op(BACKEND, op, p, a), run_op(reference, op, p, a)
    np.testing.assert_array_equal(got, want)
