"""Layers with a forward and a backward pass, in the spirit of the seed notes' ``conv`` classes, on
gpuconv's ops: NumPy arrays run on the ``numpy`` backend (or ``backend='emulate'``), CuPy arrays on
``cuda``.

Each layer's ``forward(x)`` caches what its ``backward(dy)`` needs; ``backward`` returns the gradient
with respect to the layer's input and *sets* (does not accumulate) the ``grad`` of each parameter.
Parameters follow the input: on the first forward with a CuPy array, or with another dtype, they are
moved to that array module and dtype.

>>> import numpy as np
>>> net = Sequential(Conv2d(3, 5, 3, activation="relu", rng=0), Conv2d(5, 6, 4, stride=2, rng=1))
>>> x = np.random.default_rng(2).standard_normal((3, 3, 10, 10)).astype(np.float32)
>>> loss = MSELoss()
>>> opt = SGD(net.parameters(), lr=0.01)
>>> value = loss(net(x), np.zeros((3, 6, 3, 3), np.float32))
>>> _ = net.backward(loss.backward()); opt.step()
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import api
from .backends import is_cupy_array
from .problem import check_activation, check_layer, conv_problem


def array_module(a):
    """numpy or cupy, whichever ``a`` belongs to."""
    if is_cupy_array(a):
        import cupy

        return cupy
    return np


def _like(a, x):
    """``a`` as an array of ``x``'s module and dtype (``a`` itself when it already is one)."""
    xp = array_module(x)
    if array_module(a) is xp and a.dtype == x.dtype:
        return a
    if xp is np:
        return np.asarray(a.get() if is_cupy_array(a) else a, dtype=x.dtype)
    return xp.asarray(a, dtype=x.dtype)


@dataclass(eq=False)
class Parameter:
    """A trainable array and its gradient (set by the owning layer's ``backward``)."""

    data: Any
    grad: Any = None

    def follow(self, x):
        """Move ``data`` to ``x``'s array module and dtype (no-op when it is there already)."""
        self.data = _like(self.data, x)
        if self.grad is not None:
            self.grad = _like(self.grad, x)


def _kaiming_parameters(rng, w_shape, n_bias: int, dtype):
    """Weight and bias (None when ``n_bias`` is 0) uniform in ±1/sqrt(fan_in), as PyTorch's
    defaults, where fan_in = w_shape[1]·R·S for both Conv2d and ConvTranspose2d."""
    try:
        generator = np.random.default_rng(rng)
    except (TypeError, ValueError) as error:
        raise type(error)(f"rng must be None, a non-negative int or a NumPy Generator, got {rng!r}: "
                          f"{error}") from None
    bound = 1 / math.sqrt(math.prod(w_shape[1:]))

    def uniform(shape):
        return Parameter(generator.uniform(-bound, bound, size=shape).astype(dtype))

    return uniform(w_shape), (uniform((n_bias,)) if n_bias else None)


class Layer:
    """Base class: ``layer(x)`` is ``layer.forward(x)``; ``parameters()`` lists what SGD updates."""

    def parameters(self) -> list[Parameter]:
        return [v for v in vars(self).values() if isinstance(v, Parameter)]

    def _follow(self, x):
        """Checks the input ``x``, then moves the parameters to its array module and dtype."""
        api._checked_arrays(getattr(self, "backend", None), x=x)
        for p in self.parameters():
            p.follow(x)

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError


class Conv2d(Layer):
    """y = activation(conv2d(x, weight) + bias), as ``torch.nn.Conv2d`` followed by the activation.

    weight: (out_channels, in_channels/groups, R, S) and bias (out_channels,), both Kaiming-uniform
    as in PyTorch (bound 1/sqrt(fan_in)) from ``np.random.default_rng(rng)``. ``activation`` is None,
    'relu' or 'sigmoid', fused into the convolution. ``precision`` ('highest', 'tf32', 'tf32x3')
    applies to the forward and both gradients.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, activation=None, *, dtype="float32", rng=None, backend=None,
                 precision="highest"):
        R, S = check_layer(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                           bias, dtype)
        self.conv_args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                              precision=precision)
        self.activation = check_activation(activation)
        self.backend = backend
        self.weight, self.bias = _kaiming_parameters(
            rng, (out_channels, in_channels // groups, R, S), out_channels if bias else 0, dtype)
        self.x = self.y = None

    def forward(self, x):
        self._follow(x)
        bias = self.bias.data if self.bias is not None else None
        self.x = x
        self.y = api.conv2d(x, self.weight.data, bias, activation=self.activation,
                            backend=self.backend, **self.conv_args)
        return self.y

    def backward(self, dy):
        dz = _activation_backward(self.activation, dy, self.y, self.backend)
        w = self.weight.data
        self.weight.grad = api.conv2d_weight(self.x, w.shape, dz, backend=self.backend,
                                             **self.conv_args)
        if self.bias is not None:
            self.bias.grad = api.conv2d_bias(dz, backend=self.backend)
        return api.conv2d_input(self.x.shape, w, dz, backend=self.backend, **self.conv_args)


def _activation_backward(activation, dy, y, backend):
    """The gradient before the activation, from dy and the activation's output y."""
    if activation == "relu":  # y > 0 exactly where the pre-activation is > 0
        return api.relu_backward(dy, y, backend=backend)
    if activation == "sigmoid":
        return api.sigmoid_backward(dy, y, backend=backend)
    return dy


class ConvTranspose2d(Layer):
    """y = conv_transpose2d(x, weight) + bias, as ``torch.nn.ConvTranspose2d``.

    weight: (in_channels, out_channels/groups, R, S), Kaiming-uniform with PyTorch's fan-in
    (out_channels/groups · R · S). The transposed convolution is the input gradient of the
    convolution out_channels -> in_channels with the same weight, so its backward is that
    convolution (for dx) and its weight gradient with the roles of input and output swapped.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, *, dtype="float32", rng=None,
                 backend=None, precision="highest"):
        R, S = check_layer(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                           bias, dtype, output_padding)
        self.conv_args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                              precision=precision)
        self.output_padding = output_padding
        self.backend = backend
        self.weight, self.bias = _kaiming_parameters(
            rng, (in_channels, out_channels // groups, R, S), out_channels if bias else 0, dtype)
        self.x = self.y_shape = None

    def forward(self, x):
        self._follow(x)
        self.x = x
        bias = self.bias.data if self.bias is not None else None
        y = api.conv_transpose2d(x, self.weight.data, bias, output_padding=self.output_padding,
                                 backend=self.backend, **self.conv_args)
        self.y_shape = y.shape
        return y

    def backward(self, dy):
        w, x = self.weight.data, self.x
        # The convolutions below would take a dy of another size and give a gradient of it.
        api._checked_arrays(self.backend, dy=dy, x=x)
        api._require("dy", dy, self.y_shape, "the shape forward returned")
        self.weight.grad = conv_transpose2d_weight(x, w.shape, dy, backend=self.backend,
                                                   **self.conv_args)
        if self.bias is not None:
            self.bias.grad = api.conv2d_bias(dy, backend=self.backend)
        return conv_transpose2d_input(x.shape, w, dy, backend=self.backend, **self.conv_args)


def conv_transpose2d_input(x_shape, w, dy, stride=1, padding=0, dilation=1, groups=1,
                           precision="highest", *, backend=None):
    """dx, the gradient of ``conv_transpose2d(x, w, ...)`` with respect to x of shape ``x_shape``:
    the convolution of dy with the same w, cropped to x's (H, W).

    The convolution gives Hin + output_padding // stride rows: those past the input's size saw
    only the output padding, so they are dropped.
    """
    dx = api.conv2d(dy, w, stride=stride, padding=padding, dilation=dilation, groups=groups,
                    precision=precision, backend=backend)
    H, W = x_shape[-2:]
    return array_module(dx).ascontiguousarray(dx[..., :H, :W])


def conv_transpose2d_weight(x, w_shape, dy, stride=1, padding=0, dilation=1, groups=1,
                            precision="highest", *, backend=None):
    """dw, the gradient of ``conv_transpose2d(x, w, ...)`` with respect to w of shape ``w_shape``:
    the convolution's weight gradient with the roles swapped (dy is its input, x its output).

    x is extended by zeros to the convolution's output size (see ``conv_transpose2d_input``).
    (Unbatched (C, H, W) arrays are one image: the problem is stated with N = 1.)
    """
    dy_shape = dy.shape if dy.ndim == 4 else (1, *dy.shape)
    p = conv_problem(dy_shape, w_shape, stride, padding, dilation, groups, dy.dtype.name)
    H, W = x.shape[-2:]
    x_ext = x
    if (p.P, p.Q) != (H, W):
        x_ext = array_module(x).zeros(x.shape[:-2] + (p.P, p.Q), x.dtype)
        x_ext[..., :H, :W] = x
    return api.conv2d_weight(dy, w_shape, x_ext, stride, padding, dilation, groups, precision,
                             backend=backend)


class ReLU(Layer):
    """max(x, 0); backward passes dy where x > 0."""

    def __init__(self, *, backend=None):
        self.backend = backend
        self.x = None

    def forward(self, x):
        self.x = x
        return api.relu(x, backend=self.backend)

    def backward(self, dy):
        return api.relu_backward(dy, self.x, backend=self.backend)


class Sigmoid(Layer):
    """σ(x) = 1 / (1 + exp(-x)); backward multiplies by σ'(x) = y·(1 - y).

    (Seed 003 wrote ``1/(1+exp(x))``, which is σ(-x), with σ's derivative: the wrong sign.)
    """

    def __init__(self, *, backend=None):
        self.backend = backend
        self.y = None

    def forward(self, x):
        self.y = api.sigmoid(x, backend=self.backend)
        return self.y

    def backward(self, dy):
        return api.sigmoid_backward(dy, self.y, backend=self.backend)


class Sequential(Layer):
    """Layers applied in turn; backward runs them in reverse."""

    def __init__(self, *layers: Layer):
        self.layers = list(layers)

    def parameters(self) -> list[Parameter]:
        return [p for layer in self.layers for p in layer.parameters()]

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy


class MSELoss:
    """The mean (or, with ``reduction='sum'``, the sum) of (prediction - target)².

    ``loss(prediction, target)`` returns a 0-d array of the inputs' module; ``backward()`` returns
    d loss / d prediction.
    """

    def __init__(self, reduction: str = "mean"):
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction
        self.diff = None

    def __call__(self, prediction, target):
        if prediction.shape != target.shape:
            raise ValueError(
                f"prediction and target must have the same shape, got {prediction.shape} and "
                f"{target.shape}")
        self.diff = prediction - target
        squares = (self.diff * self.diff).sum()
        return squares / self.diff.size if self.reduction == "mean" else squares

    def backward(self):
        scale = 2 / self.diff.size if self.reduction == "mean" else 2
        return self.diff * self.diff.dtype.type(scale)


class SGD:
    """Plain gradient descent, as in the seeds: data -= lr · grad, in place (layers keep their arrays)."""

    def __init__(self, parameters, lr: float):
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        self.parameters = list(parameters)
        self.lr = lr

    def step(self):
        for p in self.parameters:
            if p.grad is not None:
                p.data -= p.data.dtype.type(self.lr) * p.grad
