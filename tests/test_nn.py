"""gpuconv.nn: every layer's backward against central finite differences in float64, the loss,
SGD, and parameters following the input's dtype."""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv as gc
from gpuconv import nn

EPS = 1e-6


def numerical_gradient(f, a: np.ndarray) -> np.ndarray:
    """d f() / d a by central differences, perturbing ``a`` in place."""
    grad = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        saved = a[i]
        a[i] = saved + EPS
        up = f()
        a[i] = saved - EPS
        down = f()
        a[i] = saved
        grad[i] = (up - down) / (2 * EPS)
    return grad


def check_layer(layer: nn.Layer, x_shape, seed: int = 0):
    """backward(g) of ``layer`` against finite differences of sum(layer(x) · g), for x and params."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape)
    g = rng.standard_normal(layer(x).shape)

    def objective():
        return float((layer(x) * g).sum())

    layer(x)
    dx = layer.backward(g)
    analytic = [dx] + [p.grad.copy() for p in layer.parameters()]
    numeric = [numerical_gradient(objective, x)]
    numeric += [numerical_gradient(objective, p.data) for p in layer.parameters()]
    assert dx.shape == x.shape
    for a, n in zip(analytic, numeric):
        np.testing.assert_allclose(a, n, rtol=1e-6, atol=1e-7)


CONV2D_CASES = {
    "plain": (dict(), (2, 3, 6, 5)),
    "stride 2": (dict(stride=2), (2, 3, 7, 8)),
    "stride (2,1), padding (1,2)": (dict(stride=(2, 1), padding=(1, 2)), (1, 3, 6, 5)),
    "four-tuple padding": (dict(padding=(2, 0, 1, 3)), (1, 3, 5, 5)),
    "same": (dict(padding="same", kernel_size=(4, 2)), (2, 3, 5, 6)),
    "dilation 2": (dict(dilation=2, padding=1), (1, 3, 8, 7)),
    "groups 3": (dict(groups=3, padding=1), (2, 3, 5, 5)),
    "no bias": (dict(bias=False, stride=2), (1, 3, 6, 6)),
    "relu": (dict(activation="relu", padding=1), (2, 3, 5, 5)),
    "sigmoid": (dict(activation="sigmoid", stride=2), (2, 3, 7, 7)),
    "unbatched": (dict(stride=2, padding=1), (3, 6, 5)),
    "unbatched relu": (dict(activation="relu", padding=1), (3, 5, 5)),
}


@pytest.mark.parametrize("case", CONV2D_CASES)
def test_conv2d_gradients(case):
    kw, x_shape = CONV2D_CASES[case]
    kw = {"kernel_size": 3, **kw}
    check_layer(nn.Conv2d(3, 6, dtype="float64", rng=1, **kw), x_shape)


TRANSPOSE_CASES = {
    "plain": (dict(), (2, 4, 4, 3)),
    "stride 2, padding 1, output_padding 1": (dict(stride=2, padding=1, output_padding=1),
                                              (1, 4, 3, 4)),
    "groups 2, stride (1,2)": (dict(groups=2, stride=(1, 2)), (2, 4, 3, 3)),
    # output_padding ≥ stride (allowed because < dilation): rows only the padding reaches
    "output_padding past the stride": (dict(dilation=3, output_padding=2), (1, 4, 3, 3)),
    "no bias": (dict(bias=False, stride=3), (1, 4, 2, 3)),
    "unbatched": (dict(), (4, 3, 3)),
    "unbatched, stride 2": (dict(stride=2), (4, 5, 4)),
    "unbatched, output_padding past the stride": (dict(dilation=3, output_padding=2), (4, 3, 3)),
}


@pytest.mark.parametrize("case", TRANSPOSE_CASES)
def test_conv_transpose2d_gradients(case):
    kw, x_shape = TRANSPOSE_CASES[case]
    check_layer(nn.ConvTranspose2d(4, 6, 3, dtype="float64", rng=2, **kw), x_shape)


def test_conv_transpose2d_is_torch_shaped():
    layer = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, rng=0)
    assert layer.weight.data.shape == (4, 3, 3, 3)
    assert layer(np.zeros((1, 4, 5, 5), np.float32)).shape == (1, 6, 10, 10)


@pytest.mark.parametrize("x_shape", [(2, 3, 4, 5), (3, 4, 5)], ids=["batched", "unbatched"])
@pytest.mark.parametrize("layer", [nn.ReLU(), nn.Sigmoid()], ids=["relu", "sigmoid"])
def test_activation_gradients(layer, x_shape):
    check_layer(layer, x_shape)


def test_sequential_chains_backward():
    net = nn.Sequential(nn.Conv2d(2, 3, 3, activation="relu", dtype="float64", rng=3),
                        nn.Conv2d(3, 2, 2, stride=2, dtype="float64", rng=4), nn.Sigmoid())
    check_layer(net, (2, 2, 7, 7))
    check_layer(net, (2, 7, 7))  # unbatched
    assert len(net.parameters()) == 4


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_loss_gradient(reduction):
    rng = np.random.default_rng(5)
    prediction, target = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))
    loss = nn.MSELoss(reduction)
    value = float(loss(prediction, target))
    squares = ((prediction - target) ** 2).sum()
    assert value == pytest.approx(squares / prediction.size if reduction == "mean" else squares)
    numeric = numerical_gradient(lambda: float(nn.MSELoss(reduction)(prediction, target)), prediction)
    np.testing.assert_allclose(loss.backward(), numeric, rtol=1e-6, atol=1e-8)


def test_mse_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        nn.MSELoss()(np.zeros(3), np.zeros(4))


def test_sgd_updates_in_place():
    layer = nn.Conv2d(1, 2, 3, rng=0)
    weight, bias = layer.weight.data, layer.bias.data.copy()
    before = weight.copy()
    layer.weight.grad = np.ones_like(weight)
    nn.SGD(layer.parameters(), lr=0.25).step()
    assert layer.weight.data is weight  # same array, updated in place
    np.testing.assert_array_equal(weight, before - 0.25)
    np.testing.assert_array_equal(layer.bias.data, bias)  # no gradient: untouched


def test_sgd_rejects_non_positive_learning_rate():
    with pytest.raises(ValueError, match="lr"):
        nn.SGD([], lr=0)


def test_sgd_descends():
    """A few steps of plain gradient descent recover a 1-channel kernel (the seed-001 idea)."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 1, 12, 12))
    target = gc.conv2d(x, np.array([[[[0.0, -1, 0], [0, 2, 0], [0, -1, 0]]]]))
    layer, loss = nn.Conv2d(1, 1, 3, bias=False, dtype="float64", rng=7), nn.MSELoss()
    sgd = nn.SGD(layer.parameters(), lr=0.2)
    first = float(loss(layer(x), target))
    for _ in range(200):
        loss(layer(x), target)
        layer.backward(loss.backward())
        sgd.step()
    assert float(loss(layer(x), target)) < first * 1e-6


def test_parameters_follow_the_input_dtype():
    layer = nn.Conv2d(2, 3, 3, rng=0)  # float32 weights
    y = layer(np.ones((1, 2, 4, 4), np.float64))
    assert y.dtype == np.float64 and layer.weight.data.dtype == np.float64


def test_initialisation_is_seeded_kaiming_uniform():
    a, b = nn.Conv2d(4, 8, 3, rng=11), nn.Conv2d(4, 8, 3, rng=11)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    bound = 1 / np.sqrt(4 * 3 * 3)
    assert np.abs(a.weight.data).max() <= bound and np.abs(a.bias.data).max() <= bound
    assert np.abs(a.weight.data).max() > 0.8 * bound


def test_sigmoid_is_not_the_seed_003_mistake():
    """Seed 003 wrote 1/(1+exp(x)), which is σ(-x); ours is σ(x) = 1/(1+exp(-x))."""
    x = np.linspace(-6, 6, 25).reshape(1, 1, 5, 5)
    want = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(gc.sigmoid(x), want, rtol=1e-15)
    np.testing.assert_allclose(nn.Sigmoid()(x), want, rtol=1e-15)
    assert gc.sigmoid(np.array([2.0]))[0] > 0.5


def test_backend_keyword_reaches_the_ops():
    layer = nn.Conv2d(1, 1, 3, backend="no-such-backend")
    with pytest.raises(ValueError, match="backend"):
        layer(np.zeros((1, 1, 4, 4), np.float32))


def test_layers_on_the_emulator_match_numpy():
    """backend='emulate' runs the CUDA kernels on the CPU: same results as the numpy backend."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 2, 6, 6))
    results = {}
    for backend in ("numpy", "emulate"):
        net = nn.Sequential(
            nn.Conv2d(2, 4, 3, stride=2, padding=1, activation="sigmoid", dtype="float64", rng=9,
                      backend=backend),
            nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1, dtype="float64",
                               rng=10, backend=backend),
            nn.ReLU(backend=backend))
        y = net(x)
        dx = net.backward(np.ones_like(y))
        results[backend] = [y, dx] + [p.grad for p in net.parameters()]
    for a, b in zip(results["numpy"], results["emulate"]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.gpu
def test_layers_run_on_cupy_arrays():
    cupy = pytest.importorskip("cupy")
    if cupy.cuda.runtime.getDeviceCount() == 0:
        pytest.skip("no CUDA device")
    layer = nn.Conv2d(2, 3, 3, padding=1, activation="relu", rng=0)
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 5)).astype(np.float32)
    want = layer(x)
    dx_want = layer.backward(np.ones_like(want))
    y = layer(cupy.asarray(x))
    assert isinstance(y, cupy.ndarray) and isinstance(layer.weight.data, cupy.ndarray)
    np.testing.assert_allclose(y.get(), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.backward(cupy.ones_like(y)).get(), dx_want, rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("dtype", ["int8", "no-such-type", object, (np.True_, 2**31)])
def test_layer_dtype_must_be_a_supported_float(dtype):
    """Whatever NumPy makes of it (the last is a ValueError inside np.dtype: found by the fuzzer)."""
    with pytest.raises(TypeError, match=r"dtype must be one of \('float32', 'float64', 'float16', "
                                        r"'bfloat16'\), got "):
        nn.Conv2d(1, 1, 1, dtype=dtype)
