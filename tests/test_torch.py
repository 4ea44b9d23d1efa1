"""gpuconv.torch, the PyTorch drop-in: gradients by gradcheck in float64, results against torch's own
convolutions, DLPack without copies, the modules' state dicts both ways, the digits network trained
twice (torch.nn.Conv2d / gpuconv.torch.Conv2d) to the same loss curve, torch.compile, and the errors.
float16 and bfloat16 tensors: small integers exact, random inputs held to PyTorch's own error (the
float64 truth on the same rounded inputs; gpuconv at most twice as far from it as PyTorch computing
them in float32 and rounding once), forward and gradients; precision= reaches every gradient."""
from __future__ import annotations

import contextlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import gpuconv.torch as gt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HAS_CUDA = torch.cuda.is_available() and importlib.util.find_spec("cupy") is not None
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU, a CUDA build of PyTorch and CuPy")


def tensors(*shapes, seed=0, dtype=torch.float64, device="cpu"):
    """Fresh standard-normal tensors of these shapes (None stays None) that require grad."""
    generator = torch.Generator().manual_seed(seed)
    return [None if s is None else
            torch.randn(s, generator=generator, dtype=dtype).to(device).requires_grad_()
            for s in shapes]


def assert_same_as_torch(ours, reference, inputs, rtol=1e-12, atol=1e-12):
    """ours(*inputs) and reference(*inputs) agree, and so do their gradients for a random dy."""
    y, want = ours(*inputs), reference(*inputs)
    assert y.shape == want.shape and y.dtype == want.dtype
    torch.testing.assert_close(y, want, rtol=rtol, atol=atol)
    present = [t for t in inputs if t is not None]
    dy = torch.randn(want.shape, generator=torch.Generator().manual_seed(99), dtype=want.dtype)
    grads = torch.autograd.grad(y, present, dy.to(y.device))
    grads_want = torch.autograd.grad(want, present, dy.to(y.device))
    for g, g_want in zip(grads, grads_want):
        torch.testing.assert_close(g, g_want, rtol=rtol, atol=atol)


# -- gradients: gradcheck in float64, and the same values as torch's own convolutions -----------

# name: (x shape, w shape, bias?, keyword arguments)
CONV2D_CASES = {
    "plain": ((2, 3, 6, 5), (4, 3, 3, 3), True, dict()),
    "stride 2, padding 1": ((2, 3, 7, 6), (4, 3, 3, 3), True, dict(stride=2, padding=1)),
    "stride (2, 1), padding (2, 1), R≠S": ((2, 3, 6, 7), (4, 3, 3, 2), True,
                                            dict(stride=(2, 1), padding=(2, 1))),
    "padding (0, 2), 1×4 kernel": ((1, 2, 4, 5), (3, 2, 1, 4), True, dict(padding=(0, 2))),
    "dilation (2, 1)": ((2, 2, 7, 6), (3, 2, 3, 3), True, dict(dilation=(2, 1), padding=1)),
    "groups 2": ((2, 4, 5, 5), (6, 2, 3, 3), True, dict(groups=2, padding=1)),
    "depthwise": ((2, 3, 6, 6), (3, 1, 3, 3), True, dict(groups=3, padding=1)),
    "depthwise, multiplier 2, stride 2": ((1, 3, 7, 7), (6, 1, 3, 3), True,
                                          dict(groups=3, stride=2, padding=1)),
    "'same', even kernel": ((2, 2, 5, 6), (3, 2, 4, 2), True, dict(padding="same")),
    "1×1, stride 2": ((2, 4, 5, 5), (3, 4, 1, 1), True, dict(stride=2)),
    "unbatched": ((3, 6, 5), (4, 3, 3, 3), True, dict(stride=2, padding=1)),
    "no bias": ((2, 3, 6, 6), (4, 3, 3, 3), False, dict(stride=(1, 2), padding=(1, 0))),
    "unbatched, no bias, groups 3": ((3, 5, 5), (6, 1, 2, 2), False, dict(groups=3)),
}

CONV_TRANSPOSE2D_CASES = {
    "plain": ((2, 4, 4, 3), (4, 3, 3, 3), True, dict()),
    "stride 2, padding 1, output_padding 1": ((2, 4, 4, 4), (4, 3, 3, 3), True,
                                              dict(stride=2, padding=1, output_padding=1)),
    "stride (2, 3), padding (1, 0), output_padding (1, 2)": (
        (1, 3, 3, 4), (3, 2, 3, 2), True, dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2))),
    "dilation 2, output_padding 1": ((2, 2, 4, 3), (2, 3, 3, 3), True,
                                     dict(dilation=2, stride=2, output_padding=1)),
    "groups 2": ((2, 4, 3, 3), (4, 2, 3, 3), True, dict(groups=2, stride=2)),
    "depthwise": ((2, 3, 4, 4), (3, 1, 3, 3), True, dict(groups=3, padding=1)),
    "unbatched": ((4, 3, 4), (4, 2, 3, 3), True, dict(stride=2, padding=1, output_padding=1)),
    "no bias": ((2, 3, 4, 4), (3, 2, 2, 2), False, dict(stride=2)),
}


@pytest.mark.parametrize("name", CONV2D_CASES)
def test_conv2d_gradcheck(name):
    x_shape, w_shape, has_bias, kw = CONV2D_CASES[name]
    inputs = tensors(x_shape, w_shape, (w_shape[0],) if has_bias else None, seed=1)
    assert torch.autograd.gradcheck(lambda x, w, b: gt.conv2d(x, w, b, **kw), inputs)
    assert_same_as_torch(lambda x, w, b: gt.conv2d(x, w, b, **kw),
                         lambda x, w, b: F.conv2d(x, w, b, **kw), inputs)


@pytest.mark.parametrize("name", CONV_TRANSPOSE2D_CASES)
def test_conv_transpose2d_gradcheck(name):
    x_shape, w_shape, has_bias, kw = CONV_TRANSPOSE2D_CASES[name]
    groups = kw.get("groups", 1)
    inputs = tensors(x_shape, w_shape, (w_shape[1] * groups,) if has_bias else None, seed=2)
    assert torch.autograd.gradcheck(lambda x, w, b: gt.conv_transpose2d(x, w, b, **kw), inputs)
    assert_same_as_torch(lambda x, w, b: gt.conv_transpose2d(x, w, b, **kw),
                         lambda x, w, b: F.conv_transpose2d(x, w, b, **kw), inputs)


def test_four_sided_padding_is_a_zero_pad_then_an_unpadded_convolution():
    """(top, bottom, left, right) padding, which torch's conv2d does not take: against F.pad."""
    inputs = tensors((2, 2, 5, 4), (3, 2, 3, 2), (3,), seed=3)
    assert torch.autograd.gradcheck(lambda x, w, b: gt.conv2d(x, w, b, 2, (2, 0, 1, 3)), inputs)
    assert_same_as_torch(lambda x, w, b: gt.conv2d(x, w, b, 2, (2, 0, 1, 3)),
                         lambda x, w, b: F.conv2d(F.pad(x, (1, 3, 2, 0)), w, b, 2), inputs)


def test_float32_matches_torch_within_float32_rounding():
    inputs = tensors((2, 8, 9, 9), (16, 8, 3, 3), (16,), seed=4, dtype=torch.float32)
    # 72-term float32 sums in another order: a few ulps of the largest terms.
    assert_same_as_torch(lambda x, w, b: gt.conv2d(x, w, b, 2, 1),
                         lambda x, w, b: F.conv2d(x, w, b, 2, 1), inputs, rtol=1e-5, atol=1e-5)


def test_only_the_gradients_asked_for_are_computed(monkeypatch):
    calls = []
    for op in ("conv2d_input", "conv2d_weight", "conv2d_bias"):
        original = getattr(gt.api, op)
        monkeypatch.setattr(gt.api, op, lambda *a, _op=op, _f=original, **k: calls.append(_op) or _f(*a, **k))
    x, w, b = tensors((1, 2, 4, 4), (3, 2, 3, 3), (3,))
    x.requires_grad_(False)
    gt.conv2d(x, w, b).sum().backward()
    assert sorted(calls) == ["conv2d_bias", "conv2d_weight"] and x.grad is None


# -- float16, bfloat16 and precision= -------------------------------------------------------------

HALF = (torch.float16, torch.bfloat16)
# op: (gpuconv.torch function, torch's, x shape, w shape, bias shape, keyword arguments)
HALF_CASES = {
    "conv2d": (gt.conv2d, F.conv2d, (2, 3, 5, 4), (8, 3, 3, 3), (8,), dict(stride=(1, 2), padding=1)),
    "conv_transpose2d": (gt.conv_transpose2d, F.conv_transpose2d, (2, 3, 3, 4), (3, 2, 3, 3), (2,),
                         dict(stride=2, padding=1, output_padding=1)),
}


def forward_and_gradients(f, inputs, dy, **kw):
    """f(*inputs) and the gradients of <f(*inputs), dy> with respect to every input, as a list."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    y = f(*leaves, **kw)
    return [y, *torch.autograd.grad(y, leaves, dy.to(y.dtype))]


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("op", HALF_CASES)
def test_half_tensors_small_integers_exact_forward_and_backward(op, dtype):
    """Integers in [-3, 3] and dy in [-1, 1]: every sum stays below 256, which float16 and bfloat16
    hold exactly, so y, dx, dw and db equal float64's exactly."""
    ours, theirs, *shapes, kw = HALF_CASES[op]
    generator = torch.Generator().manual_seed(10)
    ints = [torch.randint(-3, 4, s, generator=generator).double() for s in shapes]
    want = theirs(*ints, **kw)
    dy = torch.randint(-1, 2, want.shape, generator=generator).double()
    want = forward_and_gradients(theirs, ints, dy, **kw)
    got = forward_and_gradients(ours, [t.to(dtype) for t in ints], dy, **kw)
    for name, g, w in zip(("y", "dx", "dw", "db"), got, want):
        assert g.dtype == dtype and torch.equal(g.double(), w), name


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize(("op", "backend"), [("conv2d", "numpy"), ("conv_transpose2d", "numpy"),
                                             ("conv2d", "emulate")])
def test_half_tensors_as_accurate_as_pytorch_forward_and_backward(op, backend, dtype):
    """The issue's tolerance: against the float64 truth on the same rounded inputs, gpuconv is at
    most twice as far as PyTorch computing those inputs in float32 and rounding once to the dtype.
    (emulate: fprop on the tensor-core kernel, whose tile takes the 8 output channels.)"""
    ours, theirs, *shapes, kw = HALF_CASES[op]
    generator = torch.Generator().manual_seed(11)
    rounded = [torch.randn(s, generator=generator).to(dtype) for s in shapes]
    dy = torch.randn(theirs(*(t.float() for t in rounded), **kw).shape, generator=generator).to(dtype)
    truth = forward_and_gradients(theirs, [t.double() for t in rounded], dy, **kw)
    pytorch = [t.to(dtype) for t in forward_and_gradients(theirs, [t.float() for t in rounded], dy, **kw)]
    got = forward_and_gradients(ours, rounded, dy, **kw, backend=backend)
    for name, g, p, t in zip(("y", "dx", "dw", "db"), got, pytorch, truth):
        err, err_pytorch = ((a.double() - t).abs().max().item() for a in (g, p))
        assert g.dtype == dtype and err <= 2 * err_pytorch, (name, err, err_pytorch)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_tensors_cross_without_copies(dtype):
    """float16 through DLPack; bfloat16 as its bits, viewed as ml_dtypes.bfloat16 (NumPy's DLPack
    has no bfloat16): the same memory both ways."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    t = torch.randn(2, 3, 4, 5).to(dtype)
    a = gt.to_array(t)
    assert a.dtype == {torch.float16: np.float16, torch.bfloat16: ml_dtypes.bfloat16}[dtype]
    assert a.ctypes.data == t.data_ptr()
    np.testing.assert_array_equal(a.astype(np.float32), t.float().numpy())
    back = gt.to_tensor(a)
    assert back.dtype == dtype and back.data_ptr() == t.data_ptr()


def test_bfloat16_without_ml_dtypes_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # import ml_dtypes raises ImportError
    x = torch.zeros(1, 2, 4, 4, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="ml_dtypes is not installed: pip install ml_dtypes"):
        gt.conv2d(x, torch.zeros(3, 2, 3, 3, dtype=torch.bfloat16))


@pytest.mark.parametrize("op", HALF_CASES)
def test_precision_reaches_the_forward_and_every_gradient(op):
    """precision='tf32' through the drop-in and its module: y, dx and dw bitwise gpuconv's own at
    'tf32' (the arrays API), and not its 'highest'."""
    from gpuconv import api, nn

    ours, theirs, *shapes, kw = HALF_CASES[op]
    generator = torch.Generator().manual_seed(12)
    x, w, b = (torch.randn(s, generator=generator) for s in shapes)
    dy = torch.randn(theirs(x, w, b, **kw).shape, generator=generator)
    got = forward_and_gradients(ours, [x, w, b], dy, **kw, precision="tf32")
    highest = forward_and_gradients(ours, [x, w, b], dy, **kw)
    xa, wa, ba, dya = (t.numpy() for t in (x, w, b, dy))
    conv = dict(stride=kw["stride"], padding=kw["padding"], precision="tf32")
    if op == "conv2d":
        want = [api.conv2d(xa, wa, ba, **conv), api.conv2d_input(xa.shape, wa, dya, **conv),
                api.conv2d_weight(xa, wa.shape, dya, **conv)]
        module = gt.Conv2d(3, 8, 3, **kw, precision="tf32")
    else:
        want = [api.conv_transpose2d(xa, wa, ba, output_padding=1, **conv),
                nn.conv_transpose2d_input(xa.shape, wa, dya, **conv),
                nn.conv_transpose2d_weight(xa, wa.shape, dya, **conv)]
        module = gt.ConvTranspose2d(3, 2, 3, **kw, precision="tf32")
    for name, g, h, wanted in zip(("y", "dx", "dw"), got, highest, want):
        assert np.array_equal(g.detach().numpy(), wanted) and not torch.equal(g, h), name
    with torch.no_grad():
        module.weight.copy_(w)
        module.bias.copy_(b)
        assert np.array_equal(module(x).numpy(), want[0])


# -- the emulator: the CUDA kernels themselves, through the drop-in ------------------------------


@pytest.mark.parametrize("how", ["keyword", "GPUCONV_BACKEND"])
def test_emulated_kernels_through_the_drop_in(how, monkeypatch):
    """backend='emulate' (or GPUCONV_BACKEND=emulate) runs kernels/*.cu on the CPU: forward and
    every gradient of both ops equal torch's (tiny problems: emulation is slow)."""
    kw = dict(backend="emulate") if how == "keyword" else {}
    if how == "GPUCONV_BACKEND":
        monkeypatch.setenv("GPUCONV_BACKEND", "emulate")
    ran = []
    original = gt.api.conv2d
    monkeypatch.setattr(gt.api, "conv2d", lambda *a, **k: ran.append(k["backend"]) or original(*a, **k))
    inputs = tensors((1, 2, 5, 5), (3, 2, 3, 3), (3,), seed=5)
    assert_same_as_torch(lambda x, w, b: gt.conv2d(x, w, b, stride=2, padding=1, **kw),
                         lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1), inputs)
    inputs = tensors((1, 3, 3, 3), (3, 2, 3, 3), (2,), seed=6)
    assert_same_as_torch(
        lambda x, w, b: gt.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1, **kw),
        lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1), inputs)
    assert ran and set(ran) == {"emulate"}  # conv2d forward, and conv_transpose2d's input gradient


# -- DLPack: no copies ---------------------------------------------------------------------------


def test_cpu_tensors_cross_without_copies():
    t = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    a = gt.to_array(t)
    assert isinstance(a, np.ndarray) and a.ctypes.data == t.data_ptr()
    a[0, 0, 0, 0] = 7.0  # the same memory, seen from both sides
    assert t[0, 0, 0, 0] == 7.0
    back = gt.to_tensor(a)
    assert back.data_ptr() == a.ctypes.data == t.data_ptr()


def test_results_are_the_backends_arrays_not_copies(monkeypatch):
    made = []
    original = gt.api.conv2d
    monkeypatch.setattr(gt.api, "conv2d", lambda *a, **k: made.append(original(*a, **k)) or made[-1])
    x, w = tensors((1, 2, 5, 5), (3, 2, 3, 3))
    y = gt.conv2d(x, w)
    assert y.data_ptr() == made[0].ctypes.data


@pytest.mark.parametrize("layout", ["channels_last", "transposed view", "sliced view"])
def test_non_contiguous_inputs(layout):
    x, w, b = tensors((2, 3, 7, 7), (4, 3, 3, 3), (4,), seed=7)
    with torch.no_grad():
        if layout == "channels_last":
            x = x.to(memory_format=torch.channels_last)
        elif layout == "transposed view":
            x = x.transpose(2, 3)
        else:
            x = x[:, :, 1:, ::2]
    x.requires_grad_()
    assert not x.is_contiguous()
    assert_same_as_torch(lambda x, w, b: gt.conv2d(x, w, b, padding=1),
                         lambda x, w, b: F.conv2d(x, w, b, padding=1), [x, w, b])


# -- modules: torch.nn's constructor, parameters, initialisation and state dict -----------------


@pytest.mark.parametrize("kind", ["Conv2d", "ConvTranspose2d"])
def test_modules_initialise_as_torch_nn_and_share_state_dicts_both_ways(kind):
    args = (4, 6, (3, 2))
    kw = dict(stride=2, padding=1, groups=2, dtype=torch.float64)
    torch.manual_seed(0)
    ours = getattr(gt, kind)(*args, **kw)
    torch.manual_seed(0)
    theirs = getattr(torch.nn, kind)(*args, **kw)
    assert isinstance(ours, getattr(torch.nn, kind))
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for key, value in theirs.state_dict().items():  # the same draws: the same initialisation
        assert torch.equal(ours.state_dict()[key], value), key

    torch.manual_seed(1)
    fresh_theirs = getattr(torch.nn, kind)(*args, **kw)
    ours.load_state_dict(fresh_theirs.state_dict())          # torch -> gpuconv
    fresh_ours = getattr(gt, kind)(*args, **kw)
    theirs.load_state_dict(fresh_ours.state_dict())          # gpuconv -> torch
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    torch.testing.assert_close(ours(x), fresh_theirs(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(theirs(x), fresh_ours(x), rtol=1e-12, atol=1e-12)


def test_conv2d_module_options():
    torch.manual_seed(2)
    for kw in (dict(padding="same", dilation=2, bias=False), dict(padding="valid", stride=(1, 2))):
        ours = gt.Conv2d(3, 5, (4, 3), **kw, dtype=torch.float64)
        theirs = torch.nn.Conv2d(3, 5, (4, 3), **kw, dtype=torch.float64)
        theirs.load_state_dict(ours.state_dict())
        x = torch.randn(3, 9, 8, dtype=torch.float64, requires_grad=True)  # unbatched
        assert_same_as_torch(ours, theirs, [x])


def test_conv_transpose2d_module_output_size():
    torch.manual_seed(3)
    ours = gt.ConvTranspose2d(3, 2, 3, stride=2, padding=1, dtype=torch.float64)
    theirs = torch.nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(1, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert_same_as_torch(lambda x: ours(x, output_size=[8, 10]),
                         lambda x: theirs(x, output_size=[8, 10]), [x])
    assert ours(x, output_size=[8, 10]).shape == (1, 2, 8, 10)


# -- the drop-in claim: a network that trains -----------------------------------------------------


def load_example():
    pytest.importorskip("sklearn")
    spec = importlib.util.spec_from_file_location("torch_digits", ROOT / "examples" / "torch_digits.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


@contextlib.contextmanager
def one_thread():
    """The tiny layers gain nothing from threads, and on a shared 2-core machine PyTorch's spinning
    OpenMP threads and NumPy's BLAS threads slow each other down many times over."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(threads)


def test_digits_network_trains_as_with_torch_nn_conv2d():
    """The same network from the same state dict, once with torch.nn.Conv2d and once with
    gpuconv.torch.Conv2d, 100 SGD steps in float64 on the same batches: the loss curves agree to
    1e-9 relative at every step, and the gpuconv network classifies ≥ 95% of the test digits."""
    example = load_example()
    x_train, y_train, x_test, y_test = example.load_data(torch.float64)
    torch.manual_seed(0)
    ours = example.make_network(gt.Conv2d, torch.float64)
    theirs = example.make_network(torch.nn.Conv2d, torch.float64)
    theirs.load_state_dict(ours.state_dict())
    with one_thread():
        curve = example.train(ours, x_train, y_train, steps=100, seed=0)
        curve_want = example.train(theirs, x_train, y_train, steps=100, seed=0)
    assert len(curve) == 100
    np.testing.assert_allclose(curve, curve_want, rtol=1e-9, atol=0)
    assert curve[-1] < curve[0] / 5
    assert example.accuracy(ours, x_test, y_test) >= 0.95


def test_digits_example_runs(tmp_path, capsys):
    example = load_example()
    example.main(["--out", str(tmp_path), "--steps", "3", "--threads", "1"])
    out = capsys.readouterr().out
    assert re.search(r"gpuconv conv: test accuracy [\d.]+%, 3 steps in [\d.]+ s", out)
    assert re.search(r"torch conv: test accuracy [\d.]+%, 3 steps in [\d.]+ s", out)
    assert (tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG")


# -- torch.compile -------------------------------------------------------------------------------


def compiled_graph_ops(model, x):
    """Compile ``model`` (fullgraph: no graph break allowed) with AOTAutograd; run forward and
    backward once; return the outputs, the parameters' gradients and the ops in both graphs."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    ops = set()

    def record(graph_module, example_inputs):
        ops.update(str(node.target) for node in graph_module.graph.nodes if node.op == "call_function")
        return make_boxed_func(graph_module.forward)

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=aot_autograd(fw_compiler=record, bw_compiler=record),
                             fullgraph=True)
    y = compiled(x)
    y.square().sum().backward()
    return y, [p.grad for p in model.parameters()], ops


def test_torch_compile_traces_through_the_ops():
    torch.manual_seed(4)

    def network(conv2d, conv_transpose2d):
        return torch.nn.Sequential(conv2d(2, 4, 3, padding=1), torch.nn.ReLU(),
                                   conv_transpose2d(4, 2, 3, stride=2, padding=1, output_padding=1)).double()

    ours = network(gt.Conv2d, gt.ConvTranspose2d)
    theirs = network(torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    y, grads, ops = compiled_graph_ops(ours, x)
    y_want = theirs(x)
    y_want.square().sum().backward()
    torch.testing.assert_close(y, y_want, rtol=1e-12, atol=1e-12)
    for g, p in zip(grads, theirs.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-12, atol=1e-12)
    assert {f"gpuconv.{op}.default" for op in (
        "conv2d", "conv2d_input", "conv2d_weight", "conv2d_bias", "conv_transpose2d",
        "conv_transpose2d_input", "conv_transpose2d_weight")} <= ops
    assert not any(op.startswith("aten.convolution") for op in ops)


def test_torch_compile_traces_bfloat16_through_the_ops():
    """The fake implementations give bfloat16 outputs: a bfloat16 network compiles (fullgraph) and
    computes what it computes eagerly, forward and backward."""
    torch.manual_seed(6)
    model = torch.nn.Sequential(gt.Conv2d(2, 8, 3, padding=1), torch.nn.ReLU(),
                                gt.ConvTranspose2d(8, 2, 3, stride=2)).to(torch.bfloat16)
    x = torch.randn(2, 2, 5, 4, dtype=torch.bfloat16)
    y, grads, ops = compiled_graph_ops(model, x)
    y_eager = model(x)
    model.zero_grad()
    y_eager.square().sum().backward()
    assert y.dtype == torch.bfloat16 and torch.equal(y, y_eager)
    for g, p in zip(grads, model.parameters()):
        assert g.dtype == torch.bfloat16 and torch.equal(g, p.grad)
    assert {"gpuconv.conv2d.default", "gpuconv.conv_transpose2d_weight.default"} <= ops


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # Inductor's
def test_torch_compile_with_inductor_and_dynamic_shapes():
    """The default backend (Inductor, which compiles C++ for the CPU: tens of seconds) with dynamic
    shapes: gpuconv's ops stay opaque calls, the rest is compiled around them."""
    torch.manual_seed(5)
    ours = torch.nn.Sequential(gt.Conv2d(1, 3, 3), torch.nn.ReLU()).double()
    theirs = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU()).double()
    theirs.load_state_dict(ours.state_dict())
    torch._dynamo.reset()
    compiled = torch.compile(ours, fullgraph=True, dynamic=True)
    for n, h in ((2, 6), (3, 9)):
        x = torch.randn(n, 1, h, h + 1, dtype=torch.float64)
        torch.testing.assert_close(compiled(x), theirs(x), rtol=1e-12, atol=1e-12)


# -- errors, all raised before any work ---------------------------------------------------------


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if any gpuconv op runs."""
    def refuse(*args, **kwargs):
        raise AssertionError("a gpuconv op ran before the arguments were checked")

    monkeypatch.setattr(gt, "_call", refuse)


DTYPES = "float32, float64, float16 or bfloat16"


def f64(*shape, **kw):
    return torch.zeros(shape, dtype=torch.float64, **kw)


ERRORS = {
    "x on another device": (lambda: gt.conv2d(f64(1, 2, 4, 4), f64(3, 2, 3, 3, device="meta")),
                            ValueError, "w is on meta but x is on cpu"),
    "bias on another device": (
        lambda: gt.conv_transpose2d(f64(1, 2, 4, 4), f64(2, 3, 3, 3), f64(3, device="meta")),
        ValueError, "bias is on meta but x is on cpu"),
    "x is None": (lambda: gt.conv_transpose2d(None, f64(2, 3, 3, 3)),
                  TypeError, "x must be a torch.Tensor, got NoneType"),
    "w is None": (lambda: gt.conv2d(f64(1, 2, 4, 4), None),
                  TypeError, "w must be a torch.Tensor, got NoneType"),
    "integer x": (lambda: gt.conv2d(torch.zeros(1, 2, 4, 4, dtype=torch.int64), f64(3, 2, 3, 3)),
                  TypeError, f"x must be a {DTYPES} tensor, got dtype torch.int64"),
    "integer w": (lambda: gt.conv_transpose2d(f64(1, 2, 4, 4), torch.zeros(2, 3, 3, 3, dtype=torch.int32)),
                  TypeError, f"w must be a {DTYPES} tensor, got dtype torch.int32"),
    "bool bias": (lambda: gt.conv2d(f64(1, 2, 4, 4), f64(3, 2, 3, 3), torch.zeros(3, dtype=torch.bool)),
                  TypeError, f"bias must be a {DTYPES} tensor, got dtype torch.bool"),
    "float8 x": (lambda: gt.conv2d(torch.zeros(1, 2, 4, 4, dtype=torch.float8_e4m3fn), f64(3, 2, 3, 3)),
                 TypeError, f"x must be a {DTYPES} tensor, got dtype torch.float8_e4m3fn"),
    "complex w": (lambda: gt.conv2d(f64(1, 2, 4, 4), torch.zeros(3, 2, 3, 3, dtype=torch.complex64)),
                  TypeError, f"w must be a {DTYPES} tensor, got dtype torch.complex64"),
    "half w with a bfloat16 x": (
        lambda: gt.conv2d(torch.zeros(1, 2, 4, 4, dtype=torch.bfloat16), torch.zeros(3, 2, 3, 3).half()),
        TypeError, "w has dtype torch.float16 but x has dtype torch.bfloat16"),
    "unknown precision": (lambda: gt.conv2d(f64(1, 2, 4, 4), f64(3, 2, 3, 3), precision="fast"),
                          ValueError, r"precision must be one of \('highest', 'tf32', 'tf32x3'\), "
                                      "got 'fast'"),
    "tf32 on float16": (
        lambda: gt.conv_transpose2d(torch.zeros(1, 2, 4, 4).half(), torch.zeros(2, 3, 3, 3).half(),
                                    precision="tf32"),
        ValueError, "precision='tf32' applies to float32 inputs only, got dtype float16"),
    "tf32x3 on float64": (lambda: gt.conv2d(f64(1, 2, 4, 4), f64(3, 2, 3, 3), precision="tf32x3"),
                          ValueError, "precision='tf32x3' applies to float32 inputs only, got dtype float64"),
    "module precision": (lambda: gt.ConvTranspose2d(2, 3, 3, precision="bf16"), ValueError,
                         r"precision must be one of \('highest', 'tf32', 'tf32x3'\), got 'bf16'"),
    "requires_grad bias of another dtype": (
        lambda: gt.conv2d(f64(1, 2, 4, 4), f64(3, 2, 3, 3), torch.zeros(3, requires_grad=True)),
        TypeError, "bias has dtype torch.float32 but x has dtype torch.float64"),
    "w of another dtype": (lambda: gt.conv2d(f64(1, 2, 4, 4), torch.zeros(3, 2, 3, 3)),
                           TypeError, "w has dtype torch.float32 but x has dtype torch.float64"),
    "not a tensor": (lambda: gt.conv2d(np.zeros((1, 2, 4, 4)), f64(3, 2, 3, 3)),
                     TypeError, "x must be a torch.Tensor, got ndarray"),
    "2-D x": (lambda: gt.conv2d(f64(4, 4), f64(3, 2, 3, 3)),
              ValueError, r"x must be 3-D \(C, H, W\) or 4-D \(N, C, H, W\), got shape \(4, 4\)"),
    "3-D w": (lambda: gt.conv2d(f64(1, 2, 4, 4), f64(3, 2, 3)),
              ValueError, r"w must be 4-D \(K, C/groups, R, S\), got shape \(3, 2, 3\)"),
    "bias of the wrong length": (lambda: gt.conv2d(f64(1, 2, 4, 4), f64(3, 2, 3, 3), f64(2)),
                                 ValueError, r"bias must have shape \(3,\) .* got \(2,\)"),
    "channel mismatch": (lambda: gt.conv2d(f64(1, 4, 4, 4), f64(3, 2, 3, 3)),
                         ValueError, r"x has 4 channels but w expects 2"),
    "stride 0": (lambda: gt.conv2d(f64(1, 2, 4, 4), f64(3, 2, 3, 3), stride=(0, 1)),
                 ValueError, r"stride must be positive, got \(0, 1\)"),
    "four-sided padding for the transpose": (
        lambda: gt.conv_transpose2d(f64(1, 2, 4, 4), f64(2, 3, 3, 3), padding=(1, 0, 1, 0)),
        TypeError, r"padding must be an int or a pair for conv_transpose2d, got \(1, 0, 1, 0\)"),
    "output_padding too large": (
        lambda: gt.conv_transpose2d(f64(1, 2, 4, 4), f64(2, 3, 3, 3), stride=2, output_padding=2),
        ValueError, "output_padding must be smaller than either stride or dilation"),
    "backend cuda for CPU tensors": (
        lambda: gt.conv2d(f64(1, 2, 4, 4), f64(3, 2, 3, 3), backend="cuda"),
        ValueError, "backend must be 'numpy' or 'emulate' for CPU tensors, got 'cuda'"),
    "Conv2d padding_mode": (lambda: gt.Conv2d(2, 3, 3, padding_mode="reflect"),
                            ValueError, "padding_mode must be 'zeros' .* got 'reflect'"),
    "ConvTranspose2d padding_mode": (lambda: gt.ConvTranspose2d(2, 3, 3, padding_mode="circular"),
                                     ValueError, "padding_mode must be 'zeros' .* got 'circular'"),
    "module backend": (lambda: gt.Conv2d(2, 3, 3, backend="tpu"), ValueError,
                       r"backend must be None or one of \('cuda', 'numpy', 'emulate'\), got 'tpu'"),
}


@pytest.mark.parametrize("name", ERRORS)
def test_errors_name_the_argument_before_any_work(name, no_work):
    call, error, message = ERRORS[name]
    with pytest.raises(error, match=message):
        call()


def test_bad_gpuconv_backend_variable(no_work, monkeypatch):
    monkeypatch.setenv("GPUCONV_BACKEND", "cuda")
    with pytest.raises(ValueError, match="GPUCONV_BACKEND must be 'numpy' or 'emulate'.* got 'cuda'"):
        gt.conv2d(f64(1, 2, 4, 4), f64(3, 2, 3, 3))


# -- imports and the README ----------------------------------------------------------------------


def test_import_gpuconv_does_not_import_torch_and_gpuconv_torch_uses_pytorch():
    code = ("import sys, gpuconv; assert 'torch' not in sys.modules, 'import gpuconv imported torch'; "
            "import gpuconv.torch as gt, torch; assert gt.torch is torch; print(torch.__file__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=ROOT)
    assert "gpuconv" not in result.stdout  # PyTorch itself, not shadowed by gpuconv/torch.py


def test_module_docstring_example_runs():
    import doctest

    assert doctest.testmod(gt).failed == 0


def test_readme_drop_in_runs():
    readme = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "gpuconv.torch" in b)
    assert len(block.strip().splitlines()) <= 5
    exec(compile(block, "README.md", "exec"), {})


# -- CUDA: skipped without a GPU -----------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
def test_cuda_tensors_cross_without_copies():
    t = torch.randn(2, 3, 4, 5, device="cuda")
    a = gt.to_array(t)
    assert a.data.ptr == t.data_ptr() and a.device.id == t.device.index
    assert gt.to_tensor(a).data_ptr() == t.data_ptr()


@pytest.mark.gpu
@needs_cuda
def test_cuda_runs_on_pytorchs_current_stream(monkeypatch):
    import cupy

    streams = []
    original = gt.api.conv2d
    monkeypatch.setattr(gt.api, "conv2d", lambda *a, **k: streams.append(
        cupy.cuda.get_current_stream().ptr) or original(*a, **k))
    inputs = tensors((4, 8, 12, 12), (16, 8, 3, 3), (16,), seed=8, dtype=torch.float32, device="cuda")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # cuDNN's default is TF32
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        # float32 sums of 72 terms in another order than cuDNN's.
        assert_same_as_torch(lambda x, w, b: gt.conv2d(x, w, b, stride=2, padding=1),
                             lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1), inputs,
                             rtol=1e-5, atol=1e-5)
    assert streams and set(streams) == {stream.cuda_stream}
    y = gt.conv_transpose2d(*inputs[:2], stride=2, padding=1, output_padding=1)
    assert y.device == inputs[0].device


@pytest.mark.gpu
@needs_cuda
def test_cuda_and_cpu_tensors_are_refused_together(no_work):
    with pytest.raises(ValueError, match="w is on cuda:0 but x is on cpu"):
        gt.conv2d(f64(1, 2, 4, 4), f64(3, 2, 3, 3, device="cuda"))
