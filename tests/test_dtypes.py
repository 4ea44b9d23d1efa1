"""float16, bfloat16 and the TF32 precisions through the whole API, on numpy and emulate.

Half types are computed in float32 and rounded once; 'tf32' rounds x, w and dy to TF32 first. Small
integers are exact in every one of these types (products and sums too, at the sizes below), so
those results compare with ==. Random inputs are held to PyTorch's error: the float64 reference on
the same rounded inputs is the truth, and gpuconv may be at most twice as far from it as PyTorch's
CPU convolution computing the rounded inputs in float32 and rounding the result to the dtype.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import gpuconv as gc
from gpuconv import reference as ref
from gpuconv.api import round_to_tf32
from gpuconv.problem import conv_problem

ml_dtypes = pytest.importorskip("ml_dtypes")
HALF = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
BACKENDS = ["numpy", "emulate"]


def reference_ops(x, w, dy, b, p):
    """The float64 reference of every op on float64 copies of the (already rounded) inputs."""
    x, w, dy, b = (a.astype(np.float64) for a in (x, w, dy, b))
    return dict(
        fprop=np.maximum(ref.fprop(p, x, w, b, None), 0),
        dgrad=ref.dgrad(p, dy, w, None),
        wgrad=ref.wgrad(p, x, dy),
        bias=dy.sum(axis=(0, 2, 3)),
    )


def gpuconv_ops(x, w, dy, b, p, backend, precision="highest"):
    kw = dict(stride=p.stride, padding=p.padding, backend=backend)
    return dict(
        fprop=gc.conv2d(x, w, b, activation="relu", precision=precision, **kw),
        dgrad=gc.conv2d_input(p.x_shape, w, dy, precision=precision, **kw),
        wgrad=gc.conv2d_weight(x, p.w_shape, dy, precision=precision, **kw),
        bias=gc.conv2d_bias(dy, backend=backend),
    )


# Sums stay below 256, where bfloat16 still holds every integer: C·R·S = 27 taps of |x·w| <= 9,
# and wgrad sums N·P·Q = 16 pixels.
SMALL = conv_problem((1, 3, 4, 4), (5, 3, 3, 3), stride=1, padding=1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_small_integers_are_exact_in_half_types(backend, dtype):
    rng = np.random.default_rng(1)
    p, t = SMALL, HALF[dtype]
    x, w, dy = (rng.integers(-3, 4, s).astype(t) for s in (p.x_shape, p.w_shape, p.y_shape))
    b = rng.integers(-3, 4, p.K).astype(t)
    got, want = gpuconv_ops(x, w, dy, b, p, backend), reference_ops(x, w, dy, b, p)
    for op in want:
        assert got[op].dtype == t, op
        np.testing.assert_array_equal(got[op].astype(np.float64), want[op], err_msg=op)
    y = rng.integers(-4, 5, 64).astype(t)
    assert np.array_equal(gc.relu(y, backend=backend), np.maximum(y, 0))
    assert gc.relu_backward(y, y, backend=backend).dtype == t


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision", ["tf32", "tf32x3"])
def test_small_integers_are_exact_in_every_precision(backend, precision):
    rng = np.random.default_rng(2)
    p = SMALL
    x, w, dy = (rng.integers(-3, 4, s).astype(np.float32) for s in (p.x_shape, p.w_shape, p.y_shape))
    b = rng.integers(-3, 4, p.K).astype(np.float32)
    got, want = gpuconv_ops(x, w, dy, b, p, backend, precision), reference_ops(x, w, dy, b, p)
    for op in want:
        np.testing.assert_array_equal(got[op], want[op].astype(np.float32), err_msg=op)


def torch_ops(x, w, dy, p, dtype):
    """PyTorch's CPU convolution on the rounded inputs in float32, rounded to ``dtype``."""
    torch = pytest.importorskip("torch")
    from torch.nn.grad import conv2d_input, conv2d_weight

    tx, tw, tdy = (torch.from_numpy(a.astype(np.float32)) for a in (x, w, dy))
    pad = p.padding[0]
    cast = {"float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]

    def back(t):
        return t.to(cast).to(torch.float64).numpy()

    return dict(
        fprop=back(torch.nn.functional.conv2d(tx, tw, stride=p.stride, padding=pad)),
        dgrad=back(conv2d_input(p.x_shape, tw, tdy, stride=p.stride, padding=pad)),
        wgrad=back(conv2d_weight(tx, p.w_shape, tdy, stride=p.stride, padding=pad)),
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_random_half_inputs_are_as_accurate_as_pytorch(backend, dtype):
    rng = np.random.default_rng(3)
    p, t = conv_problem((2, 12, 7, 6), (10, 12, 3, 3), stride=2, padding=1), HALF[dtype]
    x, w, dy = (rng.standard_normal(s).astype(t) for s in (p.x_shape, p.w_shape, p.y_shape))
    kw = dict(stride=p.stride, padding=p.padding, backend=backend)
    got = dict(fprop=gc.conv2d(x, w, **kw), dgrad=gc.conv2d_input(p.x_shape, w, dy, **kw),
               wgrad=gc.conv2d_weight(x, p.w_shape, dy, **kw))
    x64, w64, dy64 = (a.astype(np.float64) for a in (x, w, dy))
    want = dict(fprop=ref.fprop(p, x64, w64, None, None), dgrad=ref.dgrad(p, dy64, w64, None),
                wgrad=ref.wgrad(p, x64, dy64))
    theirs = torch_ops(x, w, dy, p, dtype)
    for op in want:
        ours = np.abs(got[op].astype(np.float64) - want[op]).max()
        pytorch = np.abs(theirs[op] - want[op]).max()
        assert got[op].dtype == t and ours <= 2 * pytorch, (op, ours, pytorch)


def test_tf32_rounds_like_cvt_rna():
    # 1 + 2^-11 is a tie between TF32 neighbours: away from zero. Inf and NaN pass unchanged.
    a = np.array([1 + 2.0**-11, -(1 + 2.0**-11), 1 + 2.0**-12, np.inf, -np.inf, 3.0], np.float32)
    got = round_to_tf32(np, a)
    assert got[:3].tolist() == [1 + 2.0**-10, -(1 + 2.0**-10), 1.0]
    assert got[3:].tolist() == [np.inf, -np.inf, 3.0]
    assert np.isnan(round_to_tf32(np, np.array([np.nan], np.float32)))[0]
    assert (round_to_tf32(np, np.random.default_rng(0).standard_normal(999).astype(np.float32))
            .view(np.uint32) & 0x1FFF == 0).all()


def test_tf32_is_the_float64_truth_of_rounded_inputs_and_backends_agree():
    rng = np.random.default_rng(4)
    p = conv_problem((2, 16, 6, 6), (8, 16, 3, 3), stride=1, padding=1)
    x, w, dy = (rng.standard_normal(s).astype(np.float32) for s in (p.x_shape, p.w_shape, p.y_shape))
    b = rng.standard_normal(p.K).astype(np.float32)
    runs = {be: gpuconv_ops(x, w, dy, b, p, be, "tf32") for be in BACKENDS}
    highest = gpuconv_ops(x, w, dy, b, p, "numpy")
    xt, wt, dyt = (round_to_tf32(np, a) for a in (x, w, dy))
    truth = reference_ops(xt, wt, dyt, b, p)
    for op in ("fprop", "dgrad", "wgrad"):
        scale = np.abs(truth[op]).max()
        # float32 sums of up to 144 terms: a few float32 ulps of the largest value.
        for be in BACKENDS:
            assert np.abs(runs[be][op] - truth[op]).max() <= 1e-5 * scale, (op, be)
        np.testing.assert_allclose(runs["numpy"][op], runs["emulate"][op], atol=1e-5 * scale)
        # TF32 keeps 10 mantissa bits: each product is off by up to ~2^-10 relative.
        gap = np.abs(runs["numpy"][op] - highest[op]).max()
        assert 0 < gap <= 2.0**-9 * 144 * np.abs(x).max() * max(np.abs(w).max(), np.abs(dy).max())


@pytest.mark.parametrize("backend", BACKENDS)
def test_tf32x3_is_float32_accurate(backend):
    rng = np.random.default_rng(5)
    p = conv_problem((1, 8, 5, 5), (4, 8, 3, 3), padding=1)
    x, w = (rng.standard_normal(s).astype(np.float32) for s in (p.x_shape, p.w_shape))
    three = gc.conv2d(x, w, padding=1, precision="tf32x3", backend=backend)
    highest = gc.conv2d(x, w, padding=1, backend=backend)
    assert np.abs(three - highest).max() <= 4 * np.spacing(np.abs(highest).max())


def test_import_gpuconv_does_not_need_ml_dtypes():
    code = ("import sys; sys.modules['ml_dtypes'] = None; import numpy as np, gpuconv as gc; "
            "print(gc.conv2d(np.ones((1, 1, 3, 3), np.float16), np.ones((1, 1, 2, 2), np.float16)).dtype)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "float16", run.stderr


def test_nn_layers_pass_their_precision_to_every_op():
    from gpuconv import nn

    rng = np.random.default_rng(6)
    layer = nn.Conv2d(4, 3, 3, padding=1, precision="tf32", rng=0)
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    y = layer.forward(x)
    w, b = layer.weight.data, layer.bias.data
    assert np.array_equal(y, gc.conv2d(x, w, b, padding=1, precision="tf32"))
    assert not np.array_equal(y, gc.conv2d(x, w, b, padding=1))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy)
    assert np.array_equal(dx, gc.conv2d_input(x.shape, w, dy, padding=1, precision="tf32"))
    assert np.array_equal(layer.weight.grad, gc.conv2d_weight(x, w.shape, dy, padding=1, precision="tf32"))
    up = nn.ConvTranspose2d(4, 2, 3, stride=2, precision="tf32", rng=1)
    assert np.array_equal(up.forward(x), gc.conv_transpose2d(x, up.weight.data, up.bias.data, stride=2,
                                                             precision="tf32"))
