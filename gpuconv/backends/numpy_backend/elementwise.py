"""The elementwise ops and the bias gradient, and the activation fused into fprop."""
from __future__ import annotations

import numpy as np


def activate_inplace(y, activation):
    if activation == "relu":
        np.maximum(y, 0, out=y)
    elif activation == "sigmoid":
        _sigmoid_inplace(y)


def _sigmoid_inplace(y):
    """σ(y) in place, through exp(-|y|) ≤ 1 so that nothing overflows."""
    negative = y < 0
    np.abs(y, out=y)
    np.negative(y, out=y)
    np.exp(y, out=y)  # e = exp(-|y|)
    e = y.copy()
    y += 1
    np.reciprocal(y, out=y)  # 1 / (1 + e) = σ(|y|)
    # σ(-|y|) = e / (1 + e)
    np.multiply(y, e, out=y, where=negative)


def bias_grad(dy):
    N, K = dy.shape[:2]
    return dy.reshape(N, K, -1).sum(axis=2).sum(axis=0)


def relu(x):
    return np.maximum(x, 0)


def relu_backward(dy, x):
    return np.where(x <= 0, 0, dy)  # dy where x is NaN, as PyTorch


def sigmoid(x):
    y = x.copy()
    _sigmoid_inplace(y)
    return y


def sigmoid_backward(dy, y):
    return dy * (1 - y) * y  # PyTorch's order: the same rounding
