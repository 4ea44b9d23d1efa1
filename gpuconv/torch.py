"""PyTorch drop-in: gpuconv's convolutions as differentiable torch ops and ``torch.nn`` modules.

>>> import torch, gpuconv.torch as gt
>>> x, w = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.randn(4, 3, 3, 3, dtype=torch.float64)
>>> y = gt.conv2d(x, w, stride=2, padding=1)              # as torch.nn.functional.conv2d
>>> torch.allclose(y, torch.nn.functional.conv2d(x, w, stride=2, padding=1))
True
>>> layer = gt.Conv2d(3, 4, 3, padding=1)   # torch.nn.Conv2d's constructor, parameters and state dict

Tensors cross through DLPack without copies: CPU tensors become NumPy arrays and run on the
``numpy`` backend (or ``emulate``: ``backend='emulate'`` or ``GPUCONV_BACKEND=emulate``), CUDA
tensors become CuPy arrays on the tensor's device and run on ``cuda``, launched on PyTorch's current
stream; results come back the same way. A non-contiguous or channels_last tensor is made contiguous
once, on the way in.

dtypes: float32, float64, float16 and bfloat16, as gpuconv's arrays (half types summed in float32,
rounded once). DLPack has no bfloat16 in NumPy, so a bfloat16 tensor crosses as its 16-bit pattern
(an int16 view) and is viewed as ``ml_dtypes.bfloat16`` on the other side, still without a copy
(bfloat16 tensors need ``ml_dtypes``). ``precision=`` ('highest', 'tf32', 'tf32x3'; float32 only) is
gpuconv's, and the gradients are computed at the forward's precision.

The ops are PyTorch custom ops (``torch.ops.gpuconv.conv2d`` and the rest below), each with a fake
implementation (its output's shape) and, for the two forward ops, an autograd formula made of
gpuconv's own gradient ops, so ``torch.compile`` traces through them as single opaque calls.

``import gpuconv`` never imports this module, nor torch. (Inside it ``torch`` is PyTorch: imports
are absolute.)
"""
from __future__ import annotations

import contextlib
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from . import api, nn
from .backends import BACKENDS, default_numpy_backend
from .problem import SUPPORTED_DTYPES, _pair, check_precision, conv_problem, transpose_problem

__all__ = ["Conv2d", "ConvTranspose2d", "conv2d", "conv_transpose2d"]

Tensor = torch.Tensor


# -- tensors <-> arrays ------------------------------------------------------------------------


def _bfloat16():
    """ml_dtypes.bfloat16, the dtype of gpuconv's bfloat16 arrays (NumPy's and CuPy's)."""
    try:
        import ml_dtypes
    except ImportError as e:
        raise TypeError("bfloat16 tensors cross to gpuconv as ml_dtypes.bfloat16 arrays, and "
                        "ml_dtypes is not installed: pip install ml_dtypes") from e
    return ml_dtypes.bfloat16


def to_array(t: Tensor):
    """The NumPy (CPU) or CuPy (CUDA) array over ``t``'s memory, through DLPack: no copy, unless
    ``t`` is not C-contiguous (channels_last, a transposed view), when it is made so once. A
    bfloat16 tensor crosses as its bits (int16) and comes out as an ``ml_dtypes.bfloat16`` array."""
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return to_array(t.view(torch.int16)).view(_bfloat16())
    if t.device.type == "cuda":
        import cupy

        return cupy.from_dlpack(t)
    return np.from_dlpack(t)


def to_tensor(a) -> Tensor:
    """The tensor over the NumPy or CuPy array ``a``'s memory, through DLPack: no copy (bfloat16
    as its bits, as in ``to_array``)."""
    if a.dtype.name == "bfloat16":
        return to_tensor(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a) if isinstance(a, np.ndarray) else torch.from_dlpack(a)


@contextlib.contextmanager
def _on_device(device: torch.device):
    """For CUDA tensors: CuPy on the tensor's device and on PyTorch's current stream there, so that
    gpuconv's kernels are ordered with PyTorch's work without a synchronisation."""
    if device.type != "cuda":
        yield
        return
    import cupy

    stream = torch.cuda.current_stream(device)
    with cupy.cuda.Device(device.index), cupy.cuda.ExternalStream(stream.cuda_stream, device.index):
        yield


def _call(function, *args, **kwargs) -> Tensor:
    """``function`` (a gpuconv op on arrays) on the arrays behind the tensor arguments; its result
    as a tensor on the same device."""
    device = next(a.device for a in args if isinstance(a, Tensor))
    with _on_device(device):
        arrays = [to_array(a) if isinstance(a, Tensor) else a for a in args]
        return to_tensor(function(*arrays, **kwargs))


# -- checks, before any work -----------------------------------------------------------------


def _check_tensors(backend, **tensors) -> str:
    """Check the tensor arguments' types, dtypes and devices; return the backend they run on."""
    # Only the bias may be None.
    present = {name: t for name, t in tensors.items() if t is not None or name != "bias"}
    for name, t in present.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if _dtype_name(t) not in SUPPORTED_DTYPES:
            raise TypeError(f"{name} must be a {', '.join(SUPPORTED_DTYPES[:-1])} or "
                            f"{SUPPORTED_DTYPES[-1]} tensor, got dtype {t.dtype}")
    (first, t0), *others = present.items()
    for name, t in others:
        if t.device != t0.device:
            raise ValueError(f"{name} is on {t.device} but {first} is on {t0.device}: "
                             "all tensors must be on one device")
        if t.dtype != t0.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {first} has dtype {t0.dtype}: "
                            "all tensors must have the same dtype")
    return _backend_for(t0.device, backend)


def _dtype_name(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _backend_for(device: torch.device, backend) -> str:
    """CUDA tensors run on 'cuda'; CPU tensors on ``backend``, else ``GPUCONV_BACKEND``, else numpy."""
    if device.type == "cuda":
        if backend not in (None, "cuda"):
            raise ValueError(f"backend={backend!r} takes CPU tensors, but the tensors are on {device} "
                             "(their backend is 'cuda')")
        return "cuda"
    if device.type != "cpu":
        raise ValueError(f"tensors must be on the CPU or a CUDA device, got device {device}")
    if backend is None:
        return default_numpy_backend()
    if backend not in ("numpy", "emulate"):
        raise ValueError(f"backend must be 'numpy' or 'emulate' for CPU tensors, got {backend!r}")
    return backend


def _shape4(x: Tensor) -> tuple[int, ...]:
    """x's shape as (N, C, H, W): an unbatched (C, H, W) input is one image."""
    if x.dim() not in (3, 4):
        raise ValueError(f"x must be 3-D (C, H, W) or 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    return (1,) * (4 - x.dim()) + tuple(x.shape)


def _check_bias(bias, channels: int, why: str):
    if bias is not None and tuple(bias.shape) != (channels,):
        raise ValueError(f"bias must have shape ({channels},) ({why}), got {tuple(bias.shape)}")


# -- the custom ops ----------------------------------------------------------------------------
# Their arguments are already checked and normalised (padding of conv2d as (top, bottom, left,
# right)); each calls the gpuconv op of the same name on the arrays behind the tensors.


@torch.library.custom_op("gpuconv::conv2d", mutates_args=())
def _conv2d(x: Tensor, w: Tensor, bias: Optional[Tensor], stride: list[int], padding: list[int],
            dilation: list[int], groups: int, precision: str, backend: str) -> Tensor:
    return _call(api.conv2d, x, w, bias, stride, padding, dilation, groups, precision=precision,
                 backend=backend)


@torch.library.custom_op("gpuconv::conv2d_input", mutates_args=())
def _conv2d_input(x_shape: list[int], w: Tensor, dy: Tensor, stride: list[int], padding: list[int],
                  dilation: list[int], groups: int, precision: str, backend: str) -> Tensor:
    return _call(api.conv2d_input, tuple(x_shape), w, dy, stride, padding, dilation, groups,
                 precision, backend=backend)


@torch.library.custom_op("gpuconv::conv2d_weight", mutates_args=())
def _conv2d_weight(x: Tensor, w_shape: list[int], dy: Tensor, stride: list[int], padding: list[int],
                   dilation: list[int], groups: int, precision: str, backend: str) -> Tensor:
    return _call(api.conv2d_weight, x, tuple(w_shape), dy, stride, padding, dilation, groups,
                 precision, backend=backend)


@torch.library.custom_op("gpuconv::conv2d_bias", mutates_args=())
def _conv2d_bias(dy: Tensor, backend: str) -> Tensor:
    return _call(api.conv2d_bias, dy, backend=backend)


@torch.library.custom_op("gpuconv::conv_transpose2d", mutates_args=())
def _conv_transpose2d(x: Tensor, w: Tensor, bias: Optional[Tensor], stride: list[int],
                      padding: list[int], output_padding: list[int], groups: int, dilation: list[int],
                      precision: str, backend: str) -> Tensor:
    return _call(api.conv_transpose2d, x, w, bias, stride, padding, output_padding, groups, dilation,
                 precision, backend=backend)


@torch.library.custom_op("gpuconv::conv_transpose2d_input", mutates_args=())
def _conv_transpose2d_input(x_shape: list[int], w: Tensor, dy: Tensor, stride: list[int],
                            padding: list[int], dilation: list[int], groups: int, precision: str,
                            backend: str) -> Tensor:
    return _call(nn.conv_transpose2d_input, tuple(x_shape), w, dy, stride, padding, dilation, groups,
                 precision, backend=backend)


@torch.library.custom_op("gpuconv::conv_transpose2d_weight", mutates_args=())
def _conv_transpose2d_weight(x: Tensor, w_shape: list[int], dy: Tensor, stride: list[int],
                             padding: list[int], dilation: list[int], groups: int, precision: str,
                             backend: str) -> Tensor:
    return _call(nn.conv_transpose2d_weight, x, tuple(w_shape), dy, stride, padding, dilation, groups,
                 precision, backend=backend)


# Fake implementations: the output's shape and dtype, without computing (for torch.compile). The
# forward ops take theirs from PyTorch's own convolutions on the fake tensors, which derive output
# sizes symbolically (dynamic shapes too); conv2d's asymmetric padding is a zero pad first.


@_conv2d.register_fake
def _(x, w, bias, stride, padding, dilation, groups, precision, backend):
    top, bottom, left, right = padding
    return F.conv2d(F.pad(x, (left, right, top, bottom)), w, None, stride, 0, dilation, groups)


@_conv2d_bias.register_fake
def _(dy, backend):
    return dy.new_empty(dy.shape[-3])


@_conv_transpose2d.register_fake
def _(x, w, bias, stride, padding, output_padding, groups, dilation, precision, backend):
    return F.conv_transpose2d(x, w, None, stride, padding, output_padding, groups, dilation)


def _fake_input_gradient(x_shape, w, dy, *convolution):
    return dy.new_empty(x_shape)


def _fake_weight_gradient(x, w_shape, dy, *convolution):
    return x.new_empty(w_shape)


for _op in (_conv2d_input, _conv_transpose2d_input):
    _op.register_fake(_fake_input_gradient)
for _op in (_conv2d_weight, _conv_transpose2d_weight):
    _op.register_fake(_fake_weight_gradient)


# Autograd. With the convolution's arguments a = (stride, padding, dilation, groups, precision,
# backend), the gradients at the forward's precision:
#   conv2d:           dx = conv2d_input(dy, w),  dw = conv2d_weight(x, dy),  db = sum of dy
#   conv_transpose2d: it is conv2d_input of the convolution whose output is x, so
#                     dx = conv2d(dy, w) (cropped),  dw = conv2d_weight with dy as the input.


def _save_conv(ctx, inputs, output):
    x, w, bias, *args = inputs
    ctx.save_for_backward(x, w)
    ctx.has_bias = bias is not None
    ctx.args = args


def _conv2d_backward(ctx, dy):
    x, w = ctx.saved_tensors
    backend = ctx.args[-1]
    need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
    dx = _conv2d_input(list(x.shape), w, dy, *ctx.args) if need_dx else None
    dw = _conv2d_weight(x, list(w.shape), dy, *ctx.args) if need_dw else None
    db = _conv2d_bias(dy, backend) if ctx.has_bias and need_db else None
    return dx, dw, db, None, None, None, None, None, None


def _save_conv_transpose(ctx, inputs, output):
    x, w, bias, stride, padding, output_padding, groups, dilation, precision, backend = inputs
    ctx.save_for_backward(x, w)
    ctx.has_bias = bias is not None
    # output_padding only added rows that the crop in conv_transpose2d_input removes again.
    ctx.args = (stride, padding, dilation, groups, precision, backend)


def _conv_transpose2d_backward(ctx, dy):
    x, w = ctx.saved_tensors
    need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
    dx = _conv_transpose2d_input(list(x.shape), w, dy, *ctx.args) if need_dx else None
    dw = _conv_transpose2d_weight(x, list(w.shape), dy, *ctx.args) if need_dw else None
    db = _conv2d_bias(dy, ctx.args[-1]) if ctx.has_bias and need_db else None
    return dx, dw, db, None, None, None, None, None, None, None


_conv2d.register_autograd(_conv2d_backward, setup_context=_save_conv)
_conv_transpose2d.register_autograd(_conv_transpose2d_backward, setup_context=_save_conv_transpose)


# -- the functions -----------------------------------------------------------------------------


def conv2d(x: Tensor, w: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1,
           groups=1, *, precision: str = "highest", backend: str | None = None) -> Tensor:
    """``torch.nn.functional.conv2d`` on gpuconv's kernels, differentiable in x, w and bias.

    padding: int, (ph, pw), (top, bottom, left, right), 'valid' or 'same'. precision: 'highest',
    'tf32' or 'tf32x3' (float32 only), for the forward and the gradients. backend: for CPU
    tensors 'numpy' or 'emulate' (default: ``GPUCONV_BACKEND``, else numpy); CUDA tensors run on
    'cuda'.
    """
    backend = _check_tensors(backend, x=x, w=w, bias=bias)
    if w.dim() != 4:
        raise ValueError(f"w must be 4-D (K, C/groups, R, S), got shape {tuple(w.shape)}")
    p = conv_problem(_shape4(x), tuple(w.shape), stride, padding, dilation, groups, _dtype_name(x))
    _check_bias(bias, p.K, "one value per output channel K")
    check_precision(precision, p.dtype)
    return _conv2d(x, w, bias, list(p.stride), list(p.padding), list(p.dilation), p.groups, precision,
                   backend)


def conv_transpose2d(x: Tensor, w: Tensor, bias: Tensor | None = None, stride=1, padding=0,
                     output_padding=0, groups=1, dilation=1, *, precision: str = "highest",
                     backend: str | None = None) -> Tensor:
    """``torch.nn.functional.conv_transpose2d`` on gpuconv's kernels, differentiable in x, w and
    bias. w: (Cin, Cout/groups, R, S); padding: int or (ph, pw). precision and backend: as for
    ``conv2d``."""
    backend = _check_tensors(backend, x=x, w=w, bias=bias)
    if w.dim() != 4:
        raise ValueError(f"w must be 4-D (Cin, Cout/groups, R, S), got shape {tuple(w.shape)}")
    p = transpose_problem(_shape4(x), tuple(w.shape), stride, padding, output_padding, groups,
                          dilation, _dtype_name(x))
    _check_bias(bias, p.C, "one value per output channel")
    check_precision(precision, p.dtype)
    return _conv_transpose2d(x, w, bias, list(p.stride), [p.padding[0], p.padding[2]],
                             list(_pair("output_padding", output_padding)), p.groups, list(p.dilation),
                             precision, backend)


# -- the modules -------------------------------------------------------------------------------


def _check_module_options(padding_mode, backend, precision):
    if padding_mode != "zeros":
        raise ValueError(
            f"padding_mode must be 'zeros' (the only one gpuconv supports), got {padding_mode!r}")
    if backend not in (None, *BACKENDS):
        raise ValueError(f"backend must be None or one of {BACKENDS}, got {backend!r}")
    check_precision(precision, "float32")  # the value; the dtype is checked at each call


class Conv2d(torch.nn.Conv2d):
    """``torch.nn.Conv2d`` computed by gpuconv: the same constructor (plus ``precision`` and
    ``backend``, as for ``conv2d``), parameters, initialisation and state dict. ``padding_mode``
    must be 'zeros'."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", device=None, dtype=None, *,
                 precision: str = "highest", backend: str | None = None):
        _check_module_options(padding_mode, backend, precision)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, padding_mode, device, dtype)
        self.precision, self.backend = precision, backend

    def _conv_forward(self, input, weight, bias):
        return conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups,
                      precision=self.precision, backend=self.backend)


class ConvTranspose2d(torch.nn.ConvTranspose2d):
    """``torch.nn.ConvTranspose2d`` computed by gpuconv: the same constructor (plus ``precision``
    and ``backend``), parameters, initialisation, state dict and ``forward(input, output_size=None)``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, padding_mode="zeros",
                 device=None, dtype=None, *, precision: str = "highest", backend: str | None = None):
        _check_module_options(padding_mode, backend, precision)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, output_padding,
                         groups, bias, dilation, padding_mode, device, dtype)
        self.precision, self.backend = precision, backend

    def forward(self, input, output_size=None):
        # As torch.nn.ConvTranspose2d: an output_size picks the output padding that reaches it.
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, 2, self.dilation)
        return conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding,
                                output_padding, self.groups, self.dilation, precision=self.precision,
                                backend=self.backend)
