"""The public API on every NumPy-array backend: PyTorch's semantics, the adjoint identity, memory
layouts, unbatched inputs, dtypes, determinism and the seed-004 numeric example."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpuconv as gc
from gpuconv import reference as ref
from gpuconv.problem import conv_problem, transpose_problem

from problems import EDGE, conv_cases, conv_kwargs, normal, problem, rel_err, small_ints, transpose_cases

BACKENDS = ["numpy", "emulate"]
# The emulator runs every CUDA thread as a fiber: fewer random draws there, same strategies.
EXAMPLES = {"numpy": 60, "emulate": 12}

try:
    import torch
except ImportError:  # the cross-check needs PyTorch; everything else does not
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed (extra 'torch')")


def inputs(case, seed, dtype=np.float64, maker=normal):
    rng = np.random.default_rng(seed)
    p = problem(case)
    x, w, dy = (maker(rng, s, dtype) for s in (p.x_shape, p.w_shape, p.y_shape))
    bias = maker(rng, (p.K,), dtype)
    return p, x, w, dy, bias


# -- PyTorch's results, on random problems ----------------------------------------------------


@needs_torch
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_op_matches_pytorch_on_random_problems(backend):
    F = torch.nn.functional

    @settings(max_examples=EXAMPLES[backend], deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(case=conv_cases(), seed=st.integers(0, 2**31), activation=st.sampled_from(
        [None, "relu", "sigmoid"]))
    def check(case, seed, activation):
        p, x, w, dy, bias = inputs(case, seed)
        kw = conv_kwargs(case)
        tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, bias))
        tkw, tin = kw, tx
        if isinstance(kw.get("padding"), tuple) and len(kw["padding"]) == 4:
            # PyTorch's conv2d takes no four-tuple padding: pad the input in the graph instead.
            top, bottom, left, right = kw["padding"]
            tkw, tin = dict(kw, padding=0), F.pad(tx, (left, right, top, bottom))
        want = F.conv2d(tin, tw, tb, **tkw)
        want.backward(torch.tensor(dy))  # autograd's dx, dw, db: every padding form has them
        want = {None: want, "relu": torch.relu(want), "sigmoid": torch.sigmoid(want)}[activation]
        got = gc.conv2d(x, w, bias, activation=activation, backend=backend, **kw)
        assert got.shape == tuple(want.shape)
        assert rel_err(got, want.detach().numpy()) <= 1e-10
        assert rel_err(gc.conv2d_input(x.shape, w, dy, backend=backend, **kw), tx.grad) <= 1e-10
        assert rel_err(gc.conv2d_weight(x, w.shape, dy, backend=backend, **kw), tw.grad) <= 1e-10
        assert rel_err(gc.conv2d_bias(dy, backend=backend), tb.grad) <= 1e-12

    check()


@needs_torch
@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_transpose2d_matches_pytorch(backend):
    @settings(max_examples=EXAMPLES[backend], deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(case=transpose_cases(), seed=st.integers(0, 2**31), with_bias=st.booleans())
    def check(case, seed, with_bias):
        rng = np.random.default_rng(seed)
        x, w = normal(rng, case["x"], np.float64), normal(rng, case["w"], np.float64)
        bias = normal(rng, (case["w"][1] * case["groups"],), np.float64) if with_bias else None
        kw = {k: v for k, v in case.items() if k not in ("x", "w")}
        want = torch.nn.functional.conv_transpose2d(
            torch.tensor(x), torch.tensor(w), None if bias is None else torch.tensor(bias), **kw)
        got = gc.conv_transpose2d(x, w, bias, backend=backend, **kw)
        assert got.shape == tuple(want.shape)
        assert rel_err(got, want.numpy()) <= 1e-10

    check()


# -- the adjoint identity: <fprop(x,w), dy> = <x, dgrad(dy,w)> = <w, wgrad(x,dy)> -------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(EDGE))
def test_adjoint_identity(backend, name):
    p, x, w, dy, _ = inputs(EDGE[name], seed=len(name))
    kw = conv_kwargs(EDGE[name])
    y = gc.conv2d(x, w, backend=backend, **kw)
    dx = gc.conv2d_input(x.shape, w, dy, backend=backend, **kw)
    dw = gc.conv2d_weight(x, w.shape, dy, backend=backend, **kw)
    forward, by_input, by_weight = np.vdot(y, dy), np.vdot(x, dx), np.vdot(w, dw)
    scale = np.abs(y).sum() * np.abs(dy).max()
    assert abs(forward - by_input) <= 1e-12 * scale
    assert abs(forward - by_weight) <= 1e-12 * scale


# -- small integers: float32 results are exact --------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["dilation_stride", "groups", "asym_pad", "odd_channels"])
def test_small_integers_are_exact_in_float32(backend, name):
    p, x, w, dy, bias = inputs(EDGE[name], seed=7, dtype=np.float32, maker=small_ints)
    kw = conv_kwargs(EDGE[name])
    y = gc.conv2d(x, w, bias, backend=backend, **kw)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, ref.fprop(p, x, w, bias).astype(np.float32))
    np.testing.assert_array_equal(gc.conv2d_input(x.shape, w, dy, backend=backend, **kw),
                                  ref.dgrad(p, dy, w).astype(np.float32))
    np.testing.assert_array_equal(gc.conv2d_weight(x, w.shape, dy, backend=backend, **kw),
                                  ref.wgrad(p, x, dy).astype(np.float32))


# -- layouts, dtypes, unbatched, empty ------------------------------------------------------------


def strided_views(a):
    """The same values as ``a`` in other memory layouts."""
    yield "fortran", np.asfortranarray(a)
    yield "negative_strides", np.ascontiguousarray(a[:, :, ::-1, ::-1])[:, :, ::-1, ::-1]
    wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    wide[..., ::2] = a
    yield "non_contiguous", wide[..., ::2]
    yield "transposed_copy", np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_any_memory_layout_gives_the_same_c_contiguous_result(backend, dtype):
    case = EDGE["dilation_stride"]
    p, x, w, dy, bias = inputs(case, seed=3, dtype=dtype)
    kw = conv_kwargs(case)
    want = gc.conv2d(x, w, bias, backend=backend, **kw)
    want_dx = gc.conv2d_input(x.shape, w, dy, backend=backend, **kw)
    want_dw = gc.conv2d_weight(x, w.shape, dy, backend=backend, **kw)
    for (layout, xv), (_, wv), (_, dyv) in zip(strided_views(x), strided_views(w), strided_views(dy)):
        got = gc.conv2d(xv, wv, bias[::-1].copy()[::-1], backend=backend, **kw)
        assert got.flags.c_contiguous and got.dtype == dtype, layout
        np.testing.assert_array_equal(got, want, err_msg=layout)
        np.testing.assert_array_equal(gc.conv2d_input(x.shape, wv, dyv, backend=backend, **kw),
                                      want_dx, err_msg=layout)
        np.testing.assert_array_equal(gc.conv2d_weight(xv, w.shape, dyv, backend=backend, **kw),
                                      want_dw, err_msg=layout)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unbatched_input_gives_unbatched_result(backend):
    p, x, w, dy, bias = inputs(EDGE["stride_hw"], seed=5)
    kw = conv_kwargs(EDGE["stride_hw"])
    y = gc.conv2d(x[0], w, bias, backend=backend, **kw)
    assert y.shape == p.y_shape[1:]
    np.testing.assert_array_equal(y, gc.conv2d(x[:1], w, bias, backend=backend, **kw)[0])
    dx = gc.conv2d_input(p.x_shape[1:], w, dy[0], backend=backend, **kw)
    assert dx.shape == p.x_shape[1:]
    dw = gc.conv2d_weight(x[0], w.shape, dy[0], backend=backend, **kw)
    np.testing.assert_array_equal(dw, gc.conv2d_weight(x[:1], w.shape, dy[:1], backend=backend, **kw))
    # NumPy's pairwise sum and the kernels' sequential sum differ in the last bit
    np.testing.assert_allclose(gc.conv2d_bias(dy[0], backend=backend), dy[0].sum(axis=(1, 2)),
                               rtol=1e-14)
    assert gc.conv_transpose2d(dy[0], w, stride=2, backend=backend).ndim == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    x, w = np.ones((0, 2, 5, 5), np.float32), np.ones((3, 2, 3, 3), np.float32)
    assert gc.conv2d(x, w, backend=backend).shape == (0, 3, 3, 3)
    assert gc.conv2d_weight(x, w.shape, np.ones((0, 3, 3, 3), np.float32),
                            backend=backend).tolist() == np.zeros(w.shape).tolist()


@pytest.mark.parametrize("backend", BACKENDS)
def test_results_are_bitwise_deterministic(backend):
    case = EDGE["odd_channels"]
    p, x, w, dy, bias = inputs(case, seed=11, dtype=np.float32)
    kw = conv_kwargs(case)
    for _ in range(2):
        runs = [(gc.conv2d(x, w, bias, backend=backend, **kw),
                 gc.conv2d_input(x.shape, w, dy, backend=backend, **kw),
                 gc.conv2d_weight(x, w.shape, dy, backend=backend, **kw)) for _ in range(2)]
        for a, b in zip(*runs):
            assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("backend", BACKENDS)
def test_activations_and_their_backwards(backend):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 5)) * 30  # large |x|: sigmoid must not overflow or lose sign
    dy = rng.standard_normal(x.shape)
    np.testing.assert_array_equal(gc.relu(x, backend=backend), np.maximum(x, 0))
    np.testing.assert_array_equal(gc.relu_backward(dy, x, backend=backend), np.where(x > 0, dy, 0))
    y = gc.sigmoid(x, backend=backend)
    np.testing.assert_allclose(y, 1 / (1 + np.exp(-x)), rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(gc.sigmoid_backward(dy, y, backend=backend), dy * y * (1 - y),
                               rtol=1e-14)
    assert gc.sigmoid(np.float32([-200, 0, 200]), backend=backend).tolist() == [0.0, 0.5, 1.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_edge_values_follow_pytorch(backend):
    """0-d arrays stay 0-d, an empty batch has a zero bias gradient, a NaN input passes dy through
    relu's backward (PyTorch's threshold_backward), and sigmoid's backward rounds as PyTorch's."""
    assert gc.relu(np.array(-2.0), backend=backend).shape == ()
    assert gc.conv2d_bias(np.zeros((0, 4, 3, 3)), backend=backend).tolist() == [0.0] * 4
    x, dy = np.array([np.nan, -1.0, 0.0, 2.0]), np.array([5.0, 6.0, 7.0, 8.0])
    np.testing.assert_array_equal(gc.relu_backward(dy, x, backend=backend), [5.0, 0, 0, 8.0])
    rng = np.random.default_rng(4)
    y = rng.random(1000).astype(np.float32)
    dy = rng.standard_normal(1000).astype(np.float32)
    want = dy * (np.float32(1) - y) * y  # aten's sigmoid_backward: grad · (1 - y) · y
    np.testing.assert_array_equal(gc.sigmoid_backward(dy, y, backend=backend), want)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["stride_gt_kernel", "dilation_stride", "groups", "asym_pad"])
def test_nan_and_inf_reach_the_gradients_pytorch_reaches(backend, name):
    """A NaN or inf spreads to exactly the gradient elements whose sum includes it (the reference's
    scatter and window sums, which are PyTorch's), not to neighbours a fast path multiplies by 0."""
    p, x, w, dy, _ = inputs(EDGE[name], seed=21)
    kw = conv_kwargs(EDGE[name])
    x.flat[::7], w.flat[::5], dy.flat[::6] = np.nan, np.inf, -np.inf
    got_dx = gc.conv2d_input(x.shape, w, dy, backend=backend, **kw)
    got_dw = gc.conv2d_weight(x, w.shape, dy, backend=backend, **kw)
    for got, want in ((got_dx, ref.dgrad(p, dy, w)), (got_dw, ref.wgrad(p, x, dy))):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
        finite = np.isfinite(want)
        assert rel_err(got[finite], want[finite]) <= 1e-10


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("order", [">", "<"])
def test_any_byte_order_gives_native_results(backend, order):
    p, x, w, dy, bias = inputs(EDGE["stride_hw"], seed=9)
    kw = conv_kwargs(EDGE["stride_hw"])
    swapped = [a.astype(a.dtype.newbyteorder(order)) for a in (x, w, bias)]
    got = gc.conv2d(*swapped, backend=backend, **kw)
    assert got.dtype == np.float64 and got.dtype.isnative
    np.testing.assert_array_equal(got, gc.conv2d(x, w, bias, backend=backend, **kw))
    np.testing.assert_array_equal(gc.relu(swapped[0], backend=backend), np.maximum(x, 0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_strides_far_beyond_the_input(backend):
    """Stride 5000 on a 6×7 input: one output pixel, most stride phases empty (no work, no memory)."""
    rng = np.random.default_rng(8)
    x, w = rng.standard_normal((2, 3, 6, 7)), rng.standard_normal((2, 3, 3, 3))
    p = conv_problem(x.shape, w.shape, stride=5000, padding=1)
    dy = rng.standard_normal(p.y_shape)
    kw = dict(stride=5000, padding=1, backend=backend)
    assert rel_err(gc.conv2d(x, w, **kw), ref.fprop(p, x, w)) <= 1e-12
    assert rel_err(gc.conv2d_input(x.shape, w, dy, **kw), ref.dgrad(p, dy, w)) <= 1e-12
    assert rel_err(gc.conv2d_weight(x, w.shape, dy, **kw), ref.wgrad(p, x, dy)) <= 1e-12
    up = gc.conv_transpose2d(np.ones((1, 1, 1, 1)), np.ones((1, 1, 3, 3)), stride=3000,
                             backend=backend)
    assert up.tolist() == [[[[1.0] * 3] * 3]]


# -- the seeds' numeric example -------------------------------------------------------------------

SEED_004_X = [[3, 3, 2, 1, 0], [0, 0, 1, 3, 1], [3, 1, 2, 2, 3], [2, 0, 0, 2, 2], [2, 0, 0, 0, 1]]
SEED_004_W = [[0, 1, 2], [2, 2, 0], [0, 1, 2]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_seed_004_numeric_example(backend):
    x = np.array(SEED_004_X, np.float32)[None, None]
    w = np.array(SEED_004_W, np.float32)[None, None]
    y = gc.conv2d(x, w, backend=backend)
    assert y[0, 0].tolist() == [[12, 12, 17], [10, 17, 19], [9, 6, 14]]


def test_problem_object_gemm_shapes():
    p = conv_problem((32, 64, 56, 56), (128, 32, 3, 3), stride=2, padding=1, groups=2)
    assert (p.P, p.Q) == (28, 28)
    assert p.gemm_shape("fprop") == (32 * 28 * 28, 64, 32 * 9)
    assert p.gemm_shape("dgrad") == (32 * 56 * 56, 32, 64 * 9)
    assert p.gemm_shape("wgrad") == (64, 32 * 9, 32 * 28 * 28)
    assert p.flops() == 2 * 32 * 28 * 28 * 128 * 32 * 9
    t = transpose_problem((2, 4, 5, 5), (4, 3, 3, 3), stride=1, dilation=2, output_padding=1)
    # output_padding >= stride is allowed when < dilation: P stays the given input size
    assert (t.H, t.P) == (10, 5)
