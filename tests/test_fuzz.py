"""Wrong kinds and values thrown at every public op: each call returns what PyTorch returns for the
same arguments, or raises TypeError / ValueError whose message names an argument. Never another
exception, never a crash, never a hang (a per-example deadline).

Surfaces: the ``gpuconv`` functions (on ``numpy``, and a few hundred tiny cases on ``emulate``) and
the ``gpuconv.nn`` layers. Another functional surface with gpuconv's op names (``gpuconv.torch``) is
one more line in ``SURFACES``.

Arguments are a valid small problem with zero, one or two arguments swapped for something wild:
bools, floats, NumPy scalars, 0-d and 1-d arrays, nested and short tuples, negative and huge ints,
strings, ``None``, arrays of other dtypes, ranks and shapes, lists instead of arrays. Values are
small integers, so float32 convolutions are exact and compared with ``==``. A gpuconv result is
compared with PyTorch's; an extension PyTorch lacks (a four-tuple padding, ``activation``) is
stated to PyTorch in its own terms (``F.pad``, ``torch.relu``).
"""
from __future__ import annotations

import importlib
import inspect
import re
import resource
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpuconv as gc
from gpuconv import nn

torch = pytest.importorskip("torch", reason="the fuzzer compares with PyTorch (extra 'torch')")
F = torch.nn.functional

# A call that takes this long is a hang: the problems are tiny (a launch on the emulator, ~1 ms
# on NumPy), so the margin is wide even on 2 busy cores.
DEADLINE = timedelta(seconds=20)
FUZZ = dict(deadline=DEADLINE, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                                      HealthCheck.data_too_large])


@pytest.fixture(autouse=True)
def memory_guard():
    """A wild size that slipped past the checks would allocate terabytes: with the address space
    capped at what the process holds plus 4 GiB, that is a MemoryError (a failure the oracle
    reports), not the kernel's out-of-memory killer taking down the machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as statm:
        in_use = int(statm.read().split()[0]) * resource.getpagesize()
    cap = in_use + 4 * 2**30
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# -- the oracle --------------------------------------------------------------------------------


class Disagreement(AssertionError):
    pass


def names_an_argument(message: str, names) -> bool:
    """Whether ``message`` holds a parameter name as a word ('x_shape' also as 'x shape')."""
    spellings = {spelling for name in names for spelling in (name, name.replace("_", " "))}
    return any(re.search(rf"\b{re.escape(spelling)}\b", message) for spelling in spellings)


def to_torch(value):
    """A NumPy array as a tensor of the same values (native byte order: the same numbers); any
    other value unchanged, for PyTorch to take or refuse."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "biufc":
        return torch.from_numpy(np.array(value, dtype=value.dtype.newbyteorder("=")))
    return value


def to_numpy(value):
    return value.detach().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def same_results(got, want, tolerance: float) -> None:
    got, want = to_numpy(got), to_numpy(want)
    if got.shape != want.shape or got.dtype != want.dtype:
        raise Disagreement(f"gpuconv returned {got.dtype}{got.shape}, PyTorch {want.dtype}{want.shape}")
    if tolerance == 0:
        if not np.array_equal(got, want, equal_nan=got.dtype.kind in "fc"):
            raise Disagreement(f"values differ: gpuconv {got.ravel()[:8]}, PyTorch {want.ravel()[:8]}")
    elif not np.allclose(got, want, rtol=tolerance, atol=tolerance):
        raise Disagreement(f"values differ beyond {tolerance}: max |diff| {np.abs(got - want).max()}")


def judge(gpuconv_call: Callable, torch_call: Callable, names, tolerance: float = 0,
          compare: Callable | None = None):
    """Runs both: ('refused', None) when gpuconv refused as it should, ('computed', its result)
    when it agrees with PyTorch; Disagreement on a broken promise."""
    try:
        got = gpuconv_call()
    except (TypeError, ValueError) as error:
        if type(error) not in (TypeError, ValueError):  # e.g. LaunchError: a kernel problem
            raise
        if not names_an_argument(str(error), names):
            raise Disagreement(f"{type(error).__name__} names no argument of {sorted(names)}: "
                               f"{error}") from error
        return "refused", None
    except MemoryError as error:  # a valid request too big for the capped address space: only
        try:                      # acceptable where PyTorch cannot allocate it either
            torch_call()
        except Exception:
            return "refused", None
        raise Disagreement(f"gpuconv ran out of memory where PyTorch computed: {error}") from error
    try:
        want = torch_call()
    except Exception as error:
        raise Disagreement(f"gpuconv returned {type(got).__name__} where PyTorch raised "
                           f"{type(error).__name__}: {error}") from error
    if compare is not None:
        compare(got, want)
    elif isinstance(want, tuple):
        for g, w in zip(got, want, strict=True):
            same_results(g, w, tolerance)
    else:
        same_results(got, want, tolerance)
    return "computed", got


def is_sigmoid(activation) -> bool:
    return isinstance(activation, str) and activation == "sigmoid"


def tolerance_for(dtype, approximate: bool) -> float:
    """0 (exact) for small-integer convolutions; an exp (sigmoid) differs in the last bits."""
    if not approximate:
        return 0
    # A few units in the last place of the dtype (float16 results are rounded from float32 once).
    return max(1e-12, 8 * float(np.finfo(dtype).eps))


# -- PyTorch, for the same arguments -----------------------------------------------------------


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _four_tuple(padding) -> bool:
    return isinstance(padding, (tuple, list)) and len(padding) == 4 and all(map(_is_int, padding))


def torch_activation(activation):
    """gpuconv's activation argument as a PyTorch function (None: the identity)."""
    functions = {"relu": torch.relu, "sigmoid": torch.sigmoid}
    if activation is None:
        return lambda y: y
    if isinstance(activation, str) and activation in functions:
        return functions[activation]
    raise ValueError(f"no PyTorch activation {activation!r}")


def torch_conv2d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None):
    activate = torch_activation(activation)
    x = to_torch(x)
    if _four_tuple(padding):  # gpuconv's (top, bottom, left, right): PyTorch pads the input
        top, bottom, left, right = padding
        x, padding = F.pad(x, (left, right, top, bottom)), 0
    return activate(F.conv2d(x, to_torch(w), to_torch(bias), stride, padding, dilation, groups))


def torch_conv2d_input(x_shape, w, dy, stride=1, padding=0, dilation=1, groups=1):
    x = torch.zeros(x_shape, dtype=to_torch(w).dtype, requires_grad=True)
    torch_conv2d(x, w, None, stride, padding, dilation, groups).backward(to_torch(dy))
    return x.grad


def torch_conv2d_weight(x, w_shape, dy, stride=1, padding=0, dilation=1, groups=1):
    w = torch.zeros(w_shape, dtype=to_torch(x).dtype, requires_grad=True)
    torch_conv2d(x, w, None, stride, padding, dilation, groups).backward(to_torch(dy))
    return w.grad


def torch_conv2d_bias(dy):
    dy = to_torch(dy)
    if dy.dim() not in (3, 4):  # the bias gradient of a conv2d output, batched or not
        raise ValueError(f"no conv2d output has {dy.dim()} dimensions")
    return dy.sum(dim=(0, 2, 3) if dy.dim() == 4 else (1, 2))


def torch_conv_transpose2d(x, w, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                           dilation=1):
    return F.conv_transpose2d(to_torch(x), to_torch(w), to_torch(bias), stride, padding,
                              output_padding, groups, dilation)


TORCH_OPS = {
    "conv2d": torch_conv2d,
    "conv2d_input": torch_conv2d_input,
    "conv2d_weight": torch_conv2d_weight,
    "conv2d_bias": torch_conv2d_bias,
    "conv_transpose2d": torch_conv_transpose2d,
    "relu": lambda x: torch.relu(to_torch(x)),
    "relu_backward": lambda dy, x: torch.ops.aten.threshold_backward(to_torch(dy), to_torch(x), 0),
    "sigmoid": lambda x: torch.sigmoid(to_torch(x)),
    "sigmoid_backward": lambda dy, y: torch.ops.aten.sigmoid_backward(to_torch(dy), to_torch(y)),
}


# -- wild values -------------------------------------------------------------------------------

HUGE = [2**31 - 1, 2**31, 2**32 + 1, 2**62, 2**63 - 1, 2**63, 2**64, 10**30, -2**31 - 1, -2**63]
OTHER_DTYPES = ["float16", "int32", "int64", "uint8", "bool", "complex64", "object", "<U1", "V4"]

wild_scalar = st.one_of(
    st.integers(-3, 5),
    st.sampled_from(HUGE),
    st.booleans(),
    st.tuples(st.sampled_from([np.int8, np.int32, np.int64, np.uint8, np.uint64]),
              st.integers(0, 4)).map(lambda t: t[0](t[1])),
    st.sampled_from([np.bool_(True), np.float32(1.0), np.float64(2.0), np.array(2), np.array([1, 2]),
                     np.int64(-1)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1.0, 2.0, 0.5, -1.0]),
    st.sampled_from(["", "same", "valid", "full", "1", "relu", None, 1j, b"1", Ellipsis, object()]),
)
# Nested and short tuples and lists of those.
wild_value = st.recursive(
    wild_scalar,
    lambda inner: st.one_of(st.tuples(), st.tuples(inner), st.tuples(inner, inner),
                            st.tuples(inner, inner, inner), st.tuples(inner, inner, inner, inner),
                            st.lists(inner, max_size=5)),
    max_leaves=5,
)


def values(rng, shape, dtype):
    """Small integers in [-3, 3]: float32 sums of their products are exact."""
    return rng.integers(-3, 4, shape).astype(dtype)


def laid_out(rng, a, layout: str):
    """``a``'s values in another memory layout: every layout must give the same result."""
    if a.ndim == 0:
        return a
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "reversed":  # negative strides on the last axis
        return np.ascontiguousarray(a[..., ::-1])[..., ::-1]
    if layout == "strided":  # every other element of a larger buffer
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    if layout == "big-endian":
        return a.astype(a.dtype.newbyteorder(">"))
    return a


@st.composite
def array_arg(draw, shape, dtype):
    """An array of ``shape`` and ``dtype`` in some layout."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    layout = draw(st.sampled_from(["c", "c", "fortran", "reversed", "strided", "big-endian"]))
    return laid_out(rng, values(rng, shape, dtype), layout)


@st.composite
def wild_array(draw, shape, dtype):
    """What a caller might pass instead of the right array."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    good = values(rng, shape, dtype)
    kind = draw(st.sampled_from(["dtype", "rank", "size", "list", "other"]))
    if kind == "dtype":
        other = np.dtype(draw(st.sampled_from(OTHER_DTYPES + ["float32", "float64"])))
        return good.astype(other) if other.kind != "V" else np.zeros(shape, other)
    if kind == "rank":
        new_shape = draw(st.sampled_from([shape[:-1], shape + (1,), (1,) + shape, (), (2,), shape[1:]]))
        return values(rng, new_shape, dtype)
    if kind == "size":
        axis = draw(st.integers(0, max(0, len(shape) - 1)))
        new = list(shape) or [1]
        new[axis] = draw(st.sampled_from([0, new[axis] + 1, max(0, new[axis] - 1)]))
        return values(rng, tuple(new), dtype)
    if kind == "list":
        return good.tolist()
    return draw(wild_scalar)


# -- valid-ish problems, then one or two arguments made wild ----------------------------------


@st.composite
def small_problem(draw):
    """A small convolution that is usually, not always, valid (the kernel may overhang)."""
    groups = draw(st.sampled_from([1, 1, 2]))
    p = dict(
        N=draw(st.sampled_from([0, 1, 1, 2])), groups=groups,
        C=groups * draw(st.integers(1, 2)), K=groups * draw(st.integers(1, 2)),
        H=draw(st.integers(1, 6)), W=draw(st.integers(1, 6)),
        R=draw(st.integers(1, 3)), S=draw(st.integers(1, 3)),
        stride=draw(st.sampled_from([1, 1, 2, (1, 2), [2, 1], (1,)])),
        dilation=draw(st.sampled_from([1, 1, 2, (2, 1)])),
        dtype=draw(st.sampled_from(["float32", "float64"])),
        batched=draw(st.sampled_from([True, True, True, False])),
    )
    pads = [0, 1, 2, (1, 0), [0, 1], (1,), (0, 1, 2, 0), "valid"]
    if p["stride"] in (1, (1,)):
        pads.append("same")
    p["padding"] = draw(st.sampled_from(pads))
    return p


def shape_x(p):
    return ((p["N"],) if p["batched"] else ()) + (p["C"], p["H"], p["W"])


def out_size(p):
    """P, Q of the problem as PyTorch computes them (None when the kernel overhangs)."""
    sh, sw = (p["stride"] * 2)[:2] if isinstance(p["stride"], (tuple, list)) else (p["stride"],) * 2
    dh, dw = p["dilation"] if isinstance(p["dilation"], tuple) else (p["dilation"],) * 2
    pad = p["padding"]
    if pad == "same":
        return p["H"], p["W"]
    pad = 0 if pad == "valid" else pad
    if isinstance(pad, (tuple, list)):
        pad = (tuple(pad) * 4)[:4] if len(pad) == 1 else pad
        t, b, left, r = pad if len(pad) == 4 else (pad[0], pad[0], pad[1], pad[1])
    else:
        t = b = left = r = pad
    P = (p["H"] + t + b - dh * (p["R"] - 1) - 1) // sh + 1
    Q = (p["W"] + left + r - dw * (p["S"] - 1) - 1) // sw + 1
    return max(P, 1), max(Q, 1)


def shape_y(p, K=None):
    return ((p["N"],) if p["batched"] else ()) + (K or p["K"],) + out_size(p)


def valid_arguments(p, op: str, draw):
    """The arguments of ``op`` for problem ``p`` (arrays drawn), before any is made wild."""
    dtype, groups = p["dtype"], p["groups"]
    w_shape = (p["K"], p["C"] // groups, p["R"], p["S"])
    arr = lambda shape: draw(array_arg(shape, dtype))  # noqa: E731
    # precision= goes only where the op takes it (check_op_call drops what a function does not take).
    conv = dict(stride=p["stride"], padding=p["padding"], dilation=p["dilation"], groups=groups,
                precision="highest")
    if op == "conv2d":
        return dict(x=arr(shape_x(p)), w=arr(w_shape),
                    bias=arr((p["K"],)) if draw(st.booleans()) else None,
                    activation=draw(st.sampled_from([None, "relu", "sigmoid"])), **conv)
    if op == "conv2d_input":
        return dict(x_shape=shape_x(p), w=arr(w_shape), dy=arr(shape_y(p)), **conv)
    if op == "conv2d_weight":
        return dict(x=arr(shape_x(p)), w_shape=w_shape, dy=arr(shape_y(p)), **conv)
    if op == "conv2d_bias":
        return dict(dy=arr(shape_y(p)))
    if op == "conv_transpose2d":
        # x[N, Cin, H, W] * w[Cin, Cout/groups, R, S]; symmetric padding only, as in PyTorch.
        padding = p["padding"] if isinstance(p["padding"], int) else 1
        return dict(x=arr(shape_x(p)), w=arr((p["C"], p["K"] // groups, p["R"], p["S"])),
                    bias=arr((p["K"],)) if draw(st.booleans()) else None, stride=p["stride"],
                    padding=padding, output_padding=draw(st.sampled_from([0, 0, 1, (0, 1)])),
                    groups=groups, dilation=p["dilation"], precision="highest")
    shape = draw(st.sampled_from([shape_x(p), (3,), (), (2, 0, 3)]))
    first, second = list(inspect.signature(getattr(gc, op)).parameters)[:2]
    arrays = dict(x=arr(shape)) if op in ("relu", "sigmoid") else {first: arr(shape), second: arr(shape)}
    if op == "sigmoid_backward":  # y is a sigmoid's output, in (0, 1)
        arrays["y"] = arrays["y"] / 8 + 0.5
    return arrays


@st.composite
def op_call(draw, op: str):
    """(arguments, names of the op's parameters): a valid-ish call with 0-2 arguments wild."""
    p = draw(small_problem())
    arguments = valid_arguments(p, op, draw)
    how_many = min(len(arguments), draw(st.sampled_from([0, 0, 1, 1, 1, 2])))
    for name in draw(st.lists(st.sampled_from(sorted(arguments)), min_size=how_many,
                              max_size=how_many, unique=True)):
        current = arguments[name]
        if isinstance(current, np.ndarray):
            arguments[name] = draw(wild_array(current.shape, current.dtype))
        elif name in ("x_shape", "w_shape") and draw(st.booleans()):  # one entry made wild
            entries = list(current)
            entries[draw(st.integers(0, len(entries) - 1))] = draw(wild_scalar)
            arguments[name] = tuple(entries)
        else:
            arguments[name] = draw(wild_value)
    return arguments


# -- surfaces: modules with gpuconv's op names -------------------------------------------------


@dataclass(frozen=True)
class Surface:
    """A module exposing gpuconv's functional ops; ``to_input`` turns a NumPy array into what the
    module takes; ``keywords`` go to every call."""

    module: str
    to_input: Callable = lambda a: a
    keywords: dict = field(default_factory=dict)
    examples: int = 250  # per op

    def op(self, name: str):
        return getattr(importlib.import_module(self.module), name, None)


SURFACES = {
    "numpy": Surface("gpuconv", keywords={"backend": "numpy"}, examples=250),
    "emulate": Surface("gpuconv", keywords={"backend": "emulate"}, examples=30),
    "torch": Surface("gpuconv.torch", to_input=to_torch, keywords={"backend": "numpy"}, examples=250),
}
OPS = list(TORCH_OPS)
counts: dict[tuple[str, str], dict[str, int]] = {}


def assert_reaches_computation(tally: dict, what: str) -> None:
    """The generator must reach the computation often, or the comparison with PyTorch is idle
    (checked on the long runs: ~12% of layer calls compute, too few to count on in 30 draws)."""
    if sum(tally.values()) >= 100:
        assert tally["computed"] >= sum(tally.values()) // 20, (what, tally)


def check_op_call(surface: Surface, op: str, arguments: dict) -> str:
    function = surface.op(op)
    names = set(inspect.signature(function).parameters)
    arguments = {k: v for k, v in arguments.items() if k in names}  # e.g. no activation=
    converted = {k: surface.to_input(v) if isinstance(v, np.ndarray) else v
                 for k, v in arguments.items()}
    approximate = op.startswith("sigmoid") or is_sigmoid(arguments.get("activation"))
    dtype = next((v.dtype for v in arguments.values() if isinstance(v, np.ndarray)), np.dtype("f8"))
    # Small integers are exact in TF32 too: PyTorch's float32 result is the one to match.
    oracle = TORCH_OPS[op]
    same = {k: v for k, v in arguments.items() if k in inspect.signature(oracle).parameters}
    return judge(lambda: function(**converted, **surface.keywords),
                 lambda: oracle(**same), names,
                 tolerance_for(dtype, approximate) if dtype.kind == "f" else 0)[0]


def fuzz_ops(surface_name: str, examples: int) -> None:
    surface = SURFACES[surface_name]
    for op in OPS:
        if surface.op(op) is None:
            continue
        tally = counts.setdefault((surface_name, op), {"refused": 0, "computed": 0})

        @settings(max_examples=examples, **FUZZ)
        @given(arguments=op_call(op))
        def check(arguments):
            tally[check_op_call(surface, op, arguments)] += 1

        check()
        assert_reaches_computation(tally, op)


@pytest.mark.parametrize("surface", SURFACES)
def test_ops_return_what_pytorch_returns_or_name_the_bad_argument(surface):
    fuzz_ops(surface, SURFACES[surface].examples)




# -- the nn layers: constructor, forward, backward against torch.nn ----------------------------


def torch_dtype(dtype):
    """gpuconv.nn's NumPy dtype as PyTorch's (a dtype PyTorch layers cannot hold is refused)."""
    name = np.dtype(dtype).name
    if name not in ("float16", "float32", "float64"):
        raise TypeError(f"no floating-point PyTorch layer of dtype {name}")
    return getattr(torch, name)


class TorchLayer:
    """torch.nn.Conv2d / ConvTranspose2d built from gpuconv.nn's arguments, with its extensions
    (activation, four-tuple padding) stated in PyTorch's terms."""

    def __init__(self, layer: str, init: dict):
        kw = {k: v for k, v in init.items()
              if k not in ("rng", "backend", "activation", "dtype", "precision")}
        self.activate = torch_activation(init.get("activation"))
        self.pad = None
        if layer == "Conv2d" and _four_tuple(kw.get("padding")):
            self.pad, kw["padding"] = kw["padding"], 0
        cls = {"Conv2d": torch.nn.Conv2d, "ConvTranspose2d": torch.nn.ConvTranspose2d}[layer]
        self.module = cls(**kw, dtype=torch_dtype(init.get("dtype", "float32")))

    def forward(self, x):
        self.x = to_torch(x).requires_grad_()
        x = self.x
        self.module.to(x.dtype)  # gpuconv.nn's parameters follow the input's dtype
        if self.pad is not None:
            top, bottom, left, right = self.pad
            x = F.pad(x, (left, right, top, bottom))
        self.y = self.activate(self.module(x))
        return self.y

    def backward(self, dy):
        self.y.backward(to_torch(dy))
        bias = self.module.bias
        return (self.x.grad, self.module.weight.grad) + ((bias.grad,) if bias is not None else ())


NN_LAYERS = {"Conv2d": nn.Conv2d, "ConvTranspose2d": nn.ConvTranspose2d}


@st.composite
def layer_call(draw, layer: str):
    """(constructor arguments, x, how dy is made): a valid-ish layer with 0-2 arguments wild."""
    p = draw(small_problem())
    R, S = p["R"], p["S"]
    init = dict(in_channels=p["C"], out_channels=p["K"],
                kernel_size=draw(st.sampled_from([(R, S), [R, S], (R,)] + ([R] if R == S else []))),
                stride=p["stride"], dilation=p["dilation"], groups=p["groups"],
                bias=draw(st.booleans()), dtype=p["dtype"], rng=draw(st.integers(0, 2**32)))
    if layer == "Conv2d":
        init.update(padding=p["padding"], activation=draw(st.sampled_from([None, "relu", "sigmoid"])))
    else:
        init.update(padding=p["padding"] if isinstance(p["padding"], int) else 1,
                    output_padding=draw(st.sampled_from([0, 0, 1, (0, 1)])))
    if "precision" in inspect.signature(NN_LAYERS[layer]).parameters:
        init["precision"] = "highest"
    arguments = dict(init, x=draw(array_arg(shape_x(p), p["dtype"])))
    how_many = draw(st.sampled_from([0, 0, 1, 1, 1, 2]))
    for name in draw(st.lists(st.sampled_from(sorted(arguments)), min_size=how_many,
                              max_size=how_many, unique=True)):
        if name == "x":
            arguments["x"] = draw(wild_array(shape_x(p), p["dtype"]))
        else:
            arguments[name] = draw(st.one_of(wild_value, st.sampled_from(OTHER_DTYPES))
                                   if name == "dtype" else wild_value)
    dy_kind = draw(st.sampled_from(["match", "match", "match", "match", "size", "dtype", "none"]))
    return arguments, dy_kind


def wrong_dy(y, kind: str, rng):
    if kind == "match":
        return values(rng, y.shape, y.dtype)
    if kind == "size":
        return values(rng, y.shape[:-1] + (y.shape[-1] + 1,), y.dtype)
    if kind == "dtype":
        return values(rng, y.shape, np.float64 if y.dtype == np.float32 else np.float32)
    return None


def check_layer_call(layer: str, arguments: dict, dy_kind: str, keywords: dict) -> str:
    """Constructor, forward and backward, each judged against torch.nn's."""
    init = {k: v for k, v in arguments.items() if k != "x"}
    cls = NN_LAYERS[layer]
    names = (set(inspect.signature(cls.__init__).parameters) | {"x", "dy"}) - {"self"}
    shapes_agree = lambda got, want: same_results(  # noqa: E731
        np.array(got.weight.data.shape), np.array(want.module.weight.shape), 0)
    outcome, ours = judge(lambda: cls(**init, **keywords), lambda: TorchLayer(layer, init), names,
                          compare=shapes_agree)
    if outcome == "refused":
        return outcome
    # Small-integer parameters, so float32 results are exact here too.
    rng = np.random.default_rng(0)
    for parameter in ours.parameters():
        parameter.data = values(rng, parameter.data.shape, parameter.data.dtype)
    theirs = TorchLayer(layer, init)
    with torch.no_grad():
        theirs.module.weight.copy_(torch.from_numpy(ours.weight.data))
        if ours.bias is not None:
            theirs.module.bias.copy_(torch.from_numpy(ours.bias.data))
    approximate = is_sigmoid(arguments.get("activation"))
    x = arguments["x"]
    dtype = x.dtype if isinstance(x, np.ndarray) and x.dtype.kind == "f" else np.dtype("f8")
    tolerance = tolerance_for(dtype, approximate)
    outcome, y = judge(lambda: ours.forward(x), lambda: theirs.forward(x), names, tolerance)
    if outcome == "refused":
        return outcome
    dy = wrong_dy(y, dy_kind, rng)

    def backward():
        dx = ours.backward(dy)
        return (dx, ours.weight.grad) + ((ours.bias.grad,) if ours.bias is not None else ())

    judge(backward, lambda: theirs.backward(dy), names, tolerance)
    return "computed"  # the forward pass at least was compared


LAYER_SURFACES = {"numpy": ({"backend": "numpy"}, 250), "emulate": ({"backend": "emulate"}, 25)}


def fuzz_layers(surface: str, examples: int) -> None:
    keywords, _ = LAYER_SURFACES[surface]
    for layer in NN_LAYERS:
        tally = counts.setdefault((surface, layer), {"refused": 0, "computed": 0})

        @settings(max_examples=examples, **FUZZ)
        @given(call=layer_call(layer))
        def check(call):
            arguments, dy_kind = call
            tally[check_layer_call(layer, arguments, dy_kind, keywords)] += 1

        check()
        assert_reaches_computation(tally, layer)


@pytest.mark.parametrize("surface", LAYER_SURFACES)
def test_layers_match_torch_nn_or_name_the_bad_argument(surface):
    fuzz_layers(surface, LAYER_SURFACES[surface][1])


@pytest.mark.slow
@pytest.mark.parametrize("surface", SURFACES)
def test_ops_and_layers_fuzzed_longer(surface):
    fuzz_ops(surface, 3 * SURFACES[surface].examples)
    if surface in LAYER_SURFACES:
        fuzz_layers(surface, 3 * LAYER_SURFACES[surface][1])
