"""A float64 reference, written for clarity straight from the definitions; used by tests and
``gpuconv selftest``, never by a backend.

With x padded by (top, bottom, left, right) zeros, filter tap (r, s) of output pixel (p, q) reads
input pixel (p·stride_h + r·dil_h, q·stride_w + s·dil_w). So for one tap, the pixels read by all
outputs form a strided window of the padded input, and every op is a sum over the R·S taps:

    fprop:  y[n,k,p,q]  = Σ_{c,r,s} x[n, c, p·sh + r·dh, q·sw + s·dw] · w[k,c,r,s]      (gather)
    dgrad:  dx[n, c, p·sh + r·dh, q·sw + s·dw] += dy[n,k,p,q] · w[k,c,r,s]             (scatter)
    wgrad:  dw[k,c,r,s] = Σ_{n,p,q} dy[n,k,p,q] · x[n, c, p·sh + r·dh, q·sw + s·dw]

with c and k running over one group at a time. dgrad is written as the scatter (the transpose of
fprop's gather), not as a convolution of a zero-inserted dy, so it checks the fast formulation
instead of restating it.
"""
from __future__ import annotations

import numpy as np

from .problem import Conv2dProblem


def _window(p: Conv2dProblem, r: int, s: int):
    """Index of the padded-input pixels that tap (r, s) of every output pixel touches."""
    (sh, sw), (dh, dw) = p.stride, p.dilation
    return (
        slice(r * dh, r * dh + sh * (p.P - 1) + 1, sh),
        slice(s * dw, s * dw + sw * (p.Q - 1) + 1, sw),
    )


def _groups(p: Conv2dProblem):
    for g in range(p.groups):
        yield (slice(g * p.C_per_group, (g + 1) * p.C_per_group),
               slice(g * p.K_per_group, (g + 1) * p.K_per_group))


def _pad(p: Conv2dProblem, x):
    t, b, l, r = p.padding
    return np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (t, b), (l, r)))


def fprop(p: Conv2dProblem, x, w, bias=None, activation=None):
    xp, w = _pad(p, x), np.asarray(w, np.float64)
    y = np.zeros(p.y_shape)
    for cs, ks in _groups(p):
        for r in range(p.R):
            for s in range(p.S):
                window = xp[(slice(None), cs) + _window(p, r, s)]  # (N, C/g, P, Q)
                y[:, ks] += np.einsum("ncpq,kc->nkpq", window, w[ks, :, r, s])
    if bias is not None:
        y += np.asarray(bias, np.float64).reshape(1, -1, 1, 1)
    return activate(y, activation)


def dgrad(p: Conv2dProblem, dy, w, bias=None):
    dy, w = np.asarray(dy, np.float64), np.asarray(w, np.float64)
    t, b, l, r_ = p.padding
    dxp = np.zeros((p.N, p.C, p.H + t + b, p.W + l + r_))
    for cs, ks in _groups(p):
        for r in range(p.R):
            for s in range(p.S):
                dxp[(slice(None), cs) + _window(p, r, s)] += np.einsum(
                    "nkpq,kc->ncpq", dy[:, ks], w[ks, :, r, s]
                )
    dx = dxp[:, :, t : t + p.H, l : l + p.W]
    if bias is not None:
        dx = dx + np.asarray(bias, np.float64).reshape(1, -1, 1, 1)
    return np.ascontiguousarray(dx)


def wgrad(p: Conv2dProblem, x, dy):
    xp, dy = _pad(p, x), np.asarray(dy, np.float64)
    dw = np.zeros(p.w_shape)
    for cs, ks in _groups(p):
        for r in range(p.R):
            for s in range(p.S):
                window = xp[(slice(None), cs) + _window(p, r, s)]
                dw[ks, :, r, s] = np.einsum("nkpq,ncpq->kc", dy[:, ks], window)
    return dw


def bias_grad(dy):
    return np.asarray(dy, np.float64).sum(axis=(0, 2, 3))


def activate(y, activation):
    if activation == "relu":
        return np.maximum(y, 0.0)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-y))
    return y


def relu_backward(dy, x):
    return np.where(np.asarray(x) <= 0, 0.0, np.asarray(dy, np.float64))


def sigmoid_backward(dy, y):
    y = np.asarray(y, np.float64)
    return np.asarray(dy, np.float64) * y * (1.0 - y)
