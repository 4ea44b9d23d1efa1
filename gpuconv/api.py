"""The public ops. Each one checks its arguments (``gpuconv.problem``), picks the backend from the
arrays (``gpuconv.backends``), hands it C-contiguous arrays and the checked problem, and returns
what it computed. Semantics and shapes are PyTorch's (``torch.nn.functional.conv2d``,
``conv_transpose2d``, ``torch.nn.grad.conv2d_input`` / ``conv2d_weight``), NCHW.

float16 and bfloat16 (``ml_dtypes.bfloat16``) arrays are computed in float32 — products summed in
float32, bias and activation applied in float32 — and rounded once to the input's dtype.
``precision="tf32"`` rounds a float32 convolution's inputs x, w and dy to TF32 (10 mantissa bits,
nearest with ties away from zero, as ``cvt.rna.tf32.f32``) and sums in float32; ``"tf32x3"``
promises float32 accuracy: the kernel backends split each input into a TF32 high part and a TF32
remainder and sum three tensor-core products a multiply, the numpy backend computes in float32.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from . import backends
from .problem import (
    HALF_DTYPES,
    SUPPORTED_DTYPES,
    check_activation,
    check_precision,
    conv_problem,
    transpose_problem,
)


def _checked_arrays(backend, **arrays):
    """Check the array arguments' types and dtypes; return (backend object, dtype name)."""
    dtype = None
    for name, a in arrays.items():
        if a is None and name == "bias":  # the one optional array
            continue
        if not (isinstance(a, np.ndarray) or backends.is_cupy_array(a)):
            raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(a).__name__}")
        if a.dtype.name not in SUPPORTED_DTYPES:
            raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got dtype "
                            f"{a.dtype.name}")
        if dtype is None:
            dtype = a.dtype.name
        elif a.dtype.name != dtype:
            first = next(k for k, v in arrays.items() if v is not None)
            raise TypeError(
                f"{name} has dtype {a.dtype.name} but {first} has dtype {dtype}: "
                "all arrays must have the same dtype"
            )
    return backends.select(backend, arrays), dtype


def _batched(name: str, a):
    """``a`` as 4-D (an unbatched (C, H, W) array gets N=1) and whether it was unbatched."""
    if a.ndim == 4:
        return a, False
    if a.ndim == 3:
        return a[None], True
    raise ValueError(f"{name} must be 3-D (C, H, W) or 4-D (N, C, H, W), got shape {a.shape}")


def _shape_batched(name: str, shape):
    if not isinstance(shape, (tuple, list)) or len(shape) not in (3, 4):
        raise ValueError(f"{name} must be a 3-D or 4-D shape tuple, got {shape!r}")
    return (tuple(shape) if len(shape) == 4 else (1, *shape)), len(shape) == 3


def _require(name: str, a, shape, why: str):
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} ({why}), got {tuple(a.shape)}")


def _weight(w):
    if w.ndim != 4:
        raise ValueError(f"w must be 4-D (K, C/groups, R, S), got shape {w.shape}")
    return w


def _contiguous(be, a):
    """C-contiguous, in native byte order (the kernels read native floats; '>f8' would be wrong)."""
    if a is None:
        return None
    return be.xp.ascontiguousarray(a, dtype=a.dtype.newbyteorder("="))


def _unbatch(y, unbatched: bool):
    return y[0] if unbatched else y


def round_to_tf32(xp, a):
    """float32 ``a`` rounded as cvt.rna.tf32.f32: the low 13 mantissa bits cleared after adding half
    of their range (ties away from zero); inf and NaN unchanged."""
    bits = a.view(xp.uint32)
    finite = (bits & 0x7F800000) != 0x7F800000
    return xp.where(finite, (bits + 0x1000) & 0xFFFFE000, bits).astype(xp.uint32).view(xp.float32)


def _computed(be, p, precision: str, **arrays):
    """The problem and arrays the backend computes: half types as float32, TF32-rounded inputs
    (not the bias) for precision='tf32'. Returns (problem, arrays, dtype of the result)."""
    dtype = p.dtype
    if dtype in HALF_DTYPES:
        p = dataclasses.replace(p, dtype="float32")
        arrays = {k: None if a is None else a.astype(np.float32) for k, a in arrays.items()}
    if check_precision(precision, dtype) == "tf32":
        arrays = {k: a if a is None or k == "bias" else round_to_tf32(be.xp, a)
                  for k, a in arrays.items()}
    return p, arrays, dtype


def _rounded(y, dtype: str):
    """The float32 result of a half-type op rounded once to ``dtype`` (otherwise ``y`` itself)."""
    return y if y.dtype.name == dtype else y.astype(dtype)


def conv2d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None,
           precision="highest", *, backend=None):
    """y = activation(conv2d(x, w) + bias), as ``torch.nn.functional.conv2d``.

    x: (N, C, H, W) or (C, H, W); w: (K, C/groups, R, S); bias: (K,) or None.
    padding: int, (ph, pw), (top, bottom, left, right), 'valid' or 'same'.
    activation: None, 'relu' or 'sigmoid' (after the bias; fused on the GPU).
    precision: 'highest', 'tf32' or 'tf32x3' (float32 only; see the module docstring).
    """
    be, dtype = _checked_arrays(backend, x=x, w=w, bias=bias)
    x4, unbatched = _batched("x", x)
    p = conv_problem(x4.shape, _weight(w).shape, stride, padding, dilation, groups, dtype)
    if bias is not None:
        _require("bias", bias, (p.K,), "one value per output channel K")
    check_activation(activation)
    # Kernel backends run half types and TF32 on tensor cores (None: computed in float32 below).
    tensor_cores = getattr(be, "fprop_tensor_cores", None)
    if tensor_cores is not None and p.N > 0:
        y = tensor_cores(p, *(_contiguous(be, a) for a in (x4, w, bias)), activation,
                         check_precision(precision, dtype))
        if y is not None:
            return _unbatch(y, unbatched)
    p, a, dtype = _computed(be, p, precision, x=x4, w=w, bias=bias)
    if p.N == 0:
        return _unbatch(be.xp.zeros(p.y_shape, dtype), unbatched)
    y = be.fprop(p, *(_contiguous(be, a[k]) for k in ("x", "w", "bias")), activation)
    return _unbatch(_rounded(y, dtype), unbatched)


def conv2d_input(x_shape, w, dy, stride=1, padding=0, dilation=1, groups=1, precision="highest", *,
                 backend=None):
    """dx, the gradient of conv2d with respect to its input, as ``torch.nn.grad.conv2d_input``."""
    be, dtype = _checked_arrays(backend, w=w, dy=dy)
    shape4, unbatched = _shape_batched("x_shape", x_shape)
    p = conv_problem(shape4, _weight(w).shape, stride, padding, dilation, groups, dtype)
    _require("dy", dy, p.y_shape[unbatched:], "the conv2d output shape (N, K, P, Q)")
    return _unbatch(_dgrad(be, p, precision, dy.reshape(p.y_shape), w, None), unbatched)


def conv2d_weight(x, w_shape, dy, stride=1, padding=0, dilation=1, groups=1, precision="highest", *,
                  backend=None):
    """dw, the gradient of conv2d with respect to its weight, as ``torch.nn.grad.conv2d_weight``."""
    be, dtype = _checked_arrays(backend, x=x, dy=dy)
    x4, unbatched = _batched("x", x)
    p = conv_problem(x4.shape, w_shape, stride, padding, dilation, groups, dtype)
    _require("dy", dy, p.y_shape[unbatched:], "the conv2d output shape (N, K, P, Q)")
    tensor_cores = getattr(be, "wgrad_tensor_cores", None)  # as conv2d's
    if tensor_cores is not None and p.N > 0:
        dw = tensor_cores(p, *(_contiguous(be, a) for a in (x4, dy.reshape(p.y_shape))),
                          check_precision(precision, dtype))
        if dw is not None:
            return dw
    p, a, dtype = _computed(be, p, precision, x=x4, dy=dy.reshape(p.y_shape))
    if p.N == 0:
        return be.xp.zeros(p.w_shape, dtype)
    return _rounded(be.wgrad(p, _contiguous(be, a["x"]), _contiguous(be, a["dy"])), dtype)


def conv2d_bias(dy, *, backend=None):
    """db[K], the sum of dy (N, K, P, Q) or (K, P, Q) over every axis but K."""
    be, dtype = _checked_arrays(backend, dy=dy)
    dy4, _ = _batched("dy", dy)
    if dy4.size == 0:
        return be.xp.zeros(dy4.shape[1], dtype)
    sums = be.bias_grad(_contiguous(be, dy4.astype(np.float32) if dtype in HALF_DTYPES else dy4))
    return _rounded(sums, dtype)


def conv_transpose2d(x, w, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, precision="highest", *, backend=None):
    """The transposed convolution, as ``torch.nn.functional.conv_transpose2d``.

    x: (N, Cin, H, W) or (Cin, H, W); w: (Cin, Cout/groups, R, S); bias: (Cout,) or None.
    It is the input gradient of the convolution Cout -> Cin, computed by the same dgrad kernels.
    """
    be, dtype = _checked_arrays(backend, x=x, w=w, bias=bias)
    x4, unbatched = _batched("x", x)
    p = transpose_problem(x4.shape, _weight(w).shape, stride, padding, output_padding, groups,
                          dilation, dtype)
    if bias is not None:
        _require("bias", bias, (p.C,), "one value per output channel")
    return _unbatch(_dgrad(be, p, precision, x4, w, bias), unbatched)


def _dgrad(be, p, precision, dy, w, bias):
    tensor_cores = getattr(be, "dgrad_tensor_cores", None)  # as conv2d's
    if tensor_cores is not None and p.N > 0:
        dx = tensor_cores(p, *(_contiguous(be, a) for a in (dy, w, bias)),
                          check_precision(precision, p.dtype))
        if dx is not None:
            return dx
    p, a, dtype = _computed(be, p, precision, dy=dy, w=w, bias=bias)
    if p.N == 0:
        return be.xp.zeros(p.x_shape, dtype)
    return _rounded(be.dgrad(p, *(_contiguous(be, a[k]) for k in ("dy", "w", "bias"))), dtype)


def _elementwise(op: str, backend, **arrays):
    be, dtype = _checked_arrays(backend, **arrays)
    shapes = {name: a.shape for name, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"{' and '.join(shapes)} must have the same shape, got {shapes}")
    if dtype in HALF_DTYPES:  # computed in float32, rounded once
        arrays = {k: a.astype(np.float32) for k, a in arrays.items()}
    result = getattr(be, op)(*(_contiguous(be, a) for a in arrays.values()))
    return _rounded(result, dtype).reshape(next(iter(shapes.values())))  # 0-d stays 0-d


def relu(x, *, backend=None):
    """max(x, 0)."""
    return _elementwise("relu", backend, x=x)


def relu_backward(dy, x, *, backend=None):
    """dy where x > 0, else 0 (the gradient of relu at its input x)."""
    return _elementwise("relu_backward", backend, dy=dy, x=x)


def sigmoid(x, *, backend=None):
    """1 / (1 + exp(-x))."""
    return _elementwise("sigmoid", backend, x=x)


def sigmoid_backward(dy, y, *, backend=None):
    """dy · y · (1 - y), given the sigmoid's output y."""
    return _elementwise("sigmoid_backward", backend, dy=dy, y=y)
