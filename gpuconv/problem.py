"""The one place where arguments are checked and shapes are derived.

Every public op calls a ``check_*`` function here before any work is done. It validates the
arguments (raising ``ValueError`` / ``TypeError`` that name the argument and quote its value) and
returns a frozen :class:`Conv2dProblem` that every backend, test and benchmark receives. No backend
re-derives a shape.

Vocabulary (as in CUTLASS and the cuDNN papers)::

    x[N, C, H, W]  *  w[K, C/groups, R, S]  ->  y[N, K, P, Q]
    P = (H + pad_top + pad_bottom - dil_h*(R-1) - 1) // stride_h + 1      (likewise Q)

``conv_transpose2d`` is the input gradient (dgrad) of a convolution whose *output* is the transposed
convolution's input, so it is described by the same object: its input is ``dy[N, K, P, Q]`` and its
output is ``dx[N, C, H, W]``.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

SUPPORTED_DTYPES = ("float32", "float64", "float16", "bfloat16")
# Products accumulated in float32, bias and activation in float32, one rounding to the input's dtype.
HALF_DTYPES = ("float16", "bfloat16")
# float32 only: "highest" (FFMA), "tf32" (inputs rounded as cvt.rna.tf32.f32, float32 sums) and
# "tf32x3" (each input as a TF32 high part plus a TF32 remainder: float32 accuracy).
PRECISIONS = ("highest", "tf32", "tf32x3")
ACTIVATIONS = (None, "relu", "sigmoid")
OPS = ("fprop", "dgrad", "wgrad")
# The kernels take every size as a 32-bit int (offsets are 64-bit): checked here for every backend,
# so that one bad input gives one error everywhere.
SIZE_MAX = 2**31 - 1


@dataclass(frozen=True)
class Conv2dProblem:
    """A checked 2-D convolution: shapes, stride, padding, dilation, groups and dtype."""

    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    P: int
    Q: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # (top, bottom, left, right)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    dtype: str = "float32"

    # -- shapes -----------------------------------------------------------------------------
    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.N, self.C, self.H, self.W)

    @property
    def w_shape(self) -> tuple[int, int, int, int]:
        return (self.K, self.C // self.groups, self.R, self.S)

    @property
    def y_shape(self) -> tuple[int, int, int, int]:
        return (self.N, self.K, self.P, self.Q)

    @property
    def C_per_group(self) -> int:
        return self.C // self.groups

    @property
    def K_per_group(self) -> int:
        return self.K // self.groups

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    # -- GEMM view --------------------------------------------------------------------------
    def gemm_shape(self, op: str) -> tuple[int, int, int]:
        """(M, N, K) of the implicit GEMM of ``op`` for one group (there are ``groups`` of them).

        fprop: (N·P·Q, K, C·R·S); dgrad: (N·H·W, C, K·R·S); wgrad: (K, C·R·S, N·P·Q), where C and K
        are per group. dgrad's K·R·S counts every tap; a strided dgrad touches only ~1/(stride_h·
        stride_w) of them per output pixel.
        """
        Cg, Kg, RS = self.C_per_group, self.K_per_group, self.R * self.S
        if op == "fprop":
            return (self.N * self.P * self.Q, Kg, Cg * RS)
        if op == "dgrad":
            return (self.N * self.H * self.W, Cg, Kg * RS)
        if op == "wgrad":
            return (Kg, Cg * RS, self.N * self.P * self.Q)
        raise ValueError(f"op must be one of {OPS}, got {op!r}")

    def flops(self, op: str = "fprop") -> int:
        """Floating-point operations of ``op``, two per multiply-add, counting every tap.

        The three ops share one count (2·N·P·Q·K·C/groups·R·S): the same multiply-adds regrouped.
        """
        self.gemm_shape(op)  # validates op
        return 2 * self.N * self.P * self.Q * self.K * self.C_per_group * self.R * self.S

    def bytes_moved(self, op: str = "fprop") -> int:
        """Compulsory DRAM traffic of ``op``: each operand read once, the result written once."""
        nx = self.N * self.C * self.H * self.W
        nw = self.K * self.C_per_group * self.R * self.S
        ny = self.N * self.K * self.P * self.Q
        reads, writes = {"fprop": (nx + nw, ny), "dgrad": (ny + nw, nx), "wgrad": (nx + ny, nw)}[
            op
        ]
        return (reads + writes) * self.itemsize

    def describe(self) -> str:
        s, d, g = self.stride, self.dilation, self.groups
        pad = self.padding
        return (
            f"N{self.N} C{self.C} H{self.H} W{self.W} K{self.K} R{self.R} S{self.S} "
            f"-> P{self.P} Q{self.Q} stride{s} pad{pad} dil{d} groups{g} {self.dtype}"
        )


# -- small parsers --------------------------------------------------------------------------


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _pair(name: str, value) -> tuple[int, int]:
    """An int or a pair of ints, as PyTorch takes ``stride`` and ``dilation``."""
    if _is_int(value):
        return (int(value), int(value))
    if isinstance(value, (tuple, list)) and len(value) in (1, 2) and all(_is_int(v) for v in value):
        return (int(value[0]), int(value[-1]))  # a 1-tuple is expanded, as in PyTorch
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def _positive_pair(name: str, value) -> tuple[int, int]:
    pair = _pair(name, value)
    if min(pair) <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return pair


def _padding(value, R: int, S: int, stride, dilation) -> tuple[int, int, int, int]:
    """int, pair (ph, pw), four-tuple (top, bottom, left, right), 'valid' or 'same'."""
    if isinstance(value, str):
        if value == "valid":
            return (0, 0, 0, 0)
        if value == "same":
            if stride != (1, 1):
                raise ValueError(
                    f"padding='same' is not supported for strided convolutions, got stride={stride}"
                )
            # As PyTorch: total d·(k-1), the odd element goes to the bottom / right.
            th, tw = dilation[0] * (R - 1), dilation[1] * (S - 1)
            return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        raise ValueError(f"padding must be 'valid', 'same', an int or a tuple, got {value!r}")
    if _is_int(value) or (isinstance(value, (tuple, list)) and len(value) == 1 and _is_int(value[0])):
        pad = (int(value if _is_int(value) else value[0]),) * 4
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) for v in value):
        pad = (int(value[0]), int(value[0]), int(value[1]), int(value[1]))
    elif isinstance(value, (tuple, list)) and len(value) == 4 and all(_is_int(v) for v in value):
        pad = tuple(int(v) for v in value)
    else:
        raise TypeError(
            "padding must be an int, a pair (ph, pw), a four-tuple (top, bottom, left, right), "
            f"'valid' or 'same', got {value!r}"
        )
    if min(pad) < 0:
        raise ValueError(f"padding must be non-negative, got {value!r}")
    return pad


def _groups(value) -> int:
    if not _is_int(value):
        raise TypeError(f"groups must be an int, got {value!r}")
    if value <= 0:
        raise ValueError(f"groups must be positive, got {value!r}")
    return int(value)


def _shape4(name: str, shape, batch: bool) -> tuple[int, int, int, int]:
    """A 4-D shape of positive sizes; as in PyTorch only an activation's batch (N) may be 0."""
    if not isinstance(shape, (tuple, list)) or not all(_is_int(v) for v in shape):
        raise TypeError(f"{name} must be a tuple of ints, got {shape!r}")
    if len(shape) != 4:
        raise ValueError(f"{name} must have 4 dimensions, got {len(shape)}: {tuple(shape)}")
    if batch and (shape[0] < 0 or min(shape[1:]) <= 0):
        raise ValueError(
            f"{name} must have positive C, H and W (only the batch N may be 0), got {tuple(shape)}"
        )
    if not batch and min(shape) <= 0:
        raise ValueError(f"{name} must have positive sizes, got {tuple(shape)}")
    return tuple(int(v) for v in shape)


def _output_size(name: str, size: int, lo: int, hi: int, dil: int, k: int, stride: int) -> int:
    padded, span = size + lo + hi, dil * (k - 1) + 1
    if span > padded:
        raise ValueError(
            f"kernel is larger than the padded input along {name}: padded input size {padded} "
            f"(size {size} + padding {lo}+{hi}) < dilated kernel size {span} "
            f"(kernel {k}, dilation {dil})"
        )
    return (padded - span) // stride + 1


def _transpose_padding(padding, output_padding, R, S, stride, dilation):
    """conv_transpose2d's (top, bottom, left, right) padding and its (h, w) output padding."""
    if isinstance(padding, str) or (isinstance(padding, (tuple, list)) and len(padding) == 4):
        # As PyTorch: the transposed convolution takes symmetric padding only.
        raise TypeError(f"padding must be an int or a pair for conv_transpose2d, got {padding!r}")
    pad = _padding(padding, R, S, stride, dilation)
    out_pad = _pair("output_padding", output_padding)
    if min(out_pad) < 0:
        raise ValueError(f"output_padding must be non-negative, got {output_padding!r}")
    for i, axis in enumerate("HW"):
        if out_pad[i] >= stride[i] and out_pad[i] >= dilation[i]:
            raise ValueError(
                f"output_padding must be smaller than either stride or dilation along {axis}, "
                f"got output_padding={output_padding!r}, stride={stride}, dilation={dilation}"
            )
    return pad, out_pad


def _addressable(name: str, shape) -> None:
    """A tensor of ``shape`` must fit a 64-bit address space (as float64); beyond it NumPy and
    CuPy fail with messages that name no argument."""
    if math.prod(shape) * 8 >= 2**63:
        raise ValueError(f"{name} of shape {tuple(shape)} would not fit in any memory "
                         f"({math.prod(shape)} elements)")


def _indexable(p: Conv2dProblem) -> Conv2dProblem:
    """``p`` once every size fits the kernels' 32-bit ints: N, C, K and, per axis, the padded extent
    plus one stride and one dilation (the kernels' largest intermediate index)."""
    for name, size in (("N", p.N), ("C", p.C), ("K", p.K)):
        if size > SIZE_MAX:
            raise ValueError(f"{name} = {size} exceeds the 32-bit sizes of the kernels (2**31 - 1): "
                             f"x shape {p.x_shape}, w shape {p.w_shape}")
    (top, bottom, left, right), (sh, sw), (dh, dw) = p.padding, p.stride, p.dilation
    for axis, extent, pads, stride, dilation in (("H", p.H, (top, bottom), sh, dh),
                                                 ("W", p.W, (left, right), sw, dw)):
        if extent + sum(pads) + stride + dilation > SIZE_MAX:
            raise ValueError(
                f"size {axis} = {extent} with padding {pads[0]}+{pads[1]}, stride {stride} and "
                f"dilation {dilation} exceeds the 32-bit sizes of the kernels (2**31 - 1 in all)"
            )
    for name, shape in (("x", p.x_shape), ("w", p.w_shape), ("y", p.y_shape)):
        _addressable(f"the convolution's {name}", shape)
    return p


# -- the checks, one per op family ------------------------------------------------------------


def conv_problem(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1, dtype="float32"):
    """Check the arguments of a convolution with input ``x_shape`` and weight ``w_shape``."""
    N, C, H, W = _shape4("x shape", x_shape, batch=True)
    K, Cg, R, S = _shape4("w shape", w_shape, batch=False)
    stride = _positive_pair("stride", stride)
    dilation = _positive_pair("dilation", dilation)
    groups = _groups(groups)
    if C % groups:
        raise ValueError(f"groups={groups} must divide the input channels, x has {C} channels")
    if K % groups:
        raise ValueError(f"groups={groups} must divide the output channels, w has K={K}")
    if C != Cg * groups:
        raise ValueError(
            f"x has {C} channels but w expects {Cg * groups} (w.shape[1]={Cg}, groups={groups})"
        )
    pad = _padding(padding, R, S, stride, dilation)
    P = _output_size("H", H, pad[0], pad[1], dilation[0], R, stride[0])
    Q = _output_size("W", W, pad[2], pad[3], dilation[1], S, stride[1])
    return _indexable(Conv2dProblem(N, C, H, W, K, R, S, P, Q, stride, pad, dilation, groups, dtype))


def transpose_problem(
    x_shape, w_shape, stride=1, padding=0, output_padding=0, groups=1, dilation=1, dtype="float32"
):
    """Check ``conv_transpose2d(x[N, Cin, Hin, Win], w[Cin, Cout/groups, R, S])``.

    It is the dgrad of the convolution ``Cout -> Cin`` whose output ``[N, Cin, Hin, Win]`` is
    this op's input, so the problem has K = Cin, C = Cout, P = Hin and
    H = (Hin-1)·stride - pad_top - pad_bottom + dil·(R-1) + output_padding + 1.
    """
    N, Cin, Hin, Win = _shape4("x shape", x_shape, batch=True)
    Kw, Coutg, R, S = _shape4("w shape", w_shape, batch=False)
    stride = _positive_pair("stride", stride)
    dilation = _positive_pair("dilation", dilation)
    groups = _groups(groups)
    pad, out_pad = _transpose_padding(padding, output_padding, R, S, stride, dilation)
    if Cin % groups:
        raise ValueError(f"groups={groups} must divide the input channels, x has {Cin} channels")
    if Kw != Cin:
        raise ValueError(
            f"x has {Cin} channels but w expects {Kw} (w.shape[0]={Kw} for conv_transpose2d)"
        )
    H = (Hin - 1) * stride[0] - pad[0] - pad[1] + dilation[0] * (R - 1) + out_pad[0] + 1
    W = (Win - 1) * stride[1] - pad[2] - pad[3] + dilation[1] * (S - 1) + out_pad[1] + 1
    if H <= 0 or W <= 0:
        raise ValueError(
            f"conv_transpose2d output size would be non-positive: ({H}, {W}) from input "
            f"({Hin}, {Win}), stride {stride}, padding {padding!r}, dilation {dilation}, "
            f"output_padding {output_padding!r}"
        )
    return _indexable(Conv2dProblem(
        N, Coutg * groups, H, W, Cin, R, S, Hin, Win, stride, pad, dilation, groups, dtype
    ))


def check_precision(precision, dtype: str) -> str:
    if not (isinstance(precision, str) and precision in PRECISIONS):  # an array compares elementwise
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "highest" and dtype != "float32":
        raise ValueError(f"precision={precision!r} applies to float32 inputs only, got dtype {dtype}")
    return precision


def check_activation(activation):
    # Compared only as a string: `array in ACTIVATIONS` would compare elementwise.
    if activation is not None and not (isinstance(activation, str) and activation in ACTIVATIONS):
        raise ValueError(f"activation must be None, 'relu' or 'sigmoid', got {activation!r}")
    return activation


def check_layer(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                dtype, output_padding=None):
    """The constructor arguments of ``gpuconv.nn.Conv2d`` (or, with ``output_padding``,
    ``ConvTranspose2d``), checked as the op will check them, before any input is seen.
    Returns the kernel size (R, S)."""
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if not _is_int(value):
            raise TypeError(f"{name} must be an int, got {value!r}")
        if not 0 < value <= SIZE_MAX:
            raise ValueError(f"{name} must be in [1, 2**31 - 1], got {value!r}")
    groups = _groups(groups)
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if value % groups:
            raise ValueError(f"{name}={value} must be divisible by groups={groups}")
    if isinstance(kernel_size, (tuple, list)) and len(kernel_size) != 2:  # torch.nn keeps a 1-tuple
        raise TypeError(f"kernel_size must be an int or a pair of ints, got {kernel_size!r}")
    R, S = _positive_pair("kernel_size", kernel_size)
    if max(R, S) > SIZE_MAX:
        raise ValueError(f"kernel_size must be at most 2**31 - 1, got {kernel_size!r}")
    w_shape = (in_channels, out_channels // groups) if output_padding is not None else \
        (out_channels, in_channels // groups)
    _addressable("the weight (in_channels, out_channels, kernel_size)", w_shape + (R, S))
    stride = _positive_pair("stride", stride)
    dilation = _positive_pair("dilation", dilation)
    if output_padding is None:
        _padding(padding, R, S, stride, dilation)
    else:
        _transpose_padding(padding, output_padding, R, S, stride, dilation)
    if not isinstance(bias, (bool, np.bool_)):
        raise TypeError(f"bias must be True or False, got {bias!r}")
    try:
        name = np.dtype(dtype).name
    except (TypeError, ValueError):  # ValueError: a (type, shape) tuple NumPy cannot hold
        name = None
    if name not in SUPPORTED_DTYPES:
        raise TypeError(f"dtype must be one of {SUPPORTED_DTYPES}, got {dtype!r}")
    return R, S
