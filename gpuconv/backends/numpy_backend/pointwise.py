"""1×1 filters without padding: every op is a matrix product per image on NCHW as it stands, no
layout change (stride: one strided copy of x)."""
from __future__ import annotations

import numpy as np

from ...problem import Conv2dProblem


def _product(m, a, out):
    """out[n, g] = m[g] @ a[n, g] for m[G, I, J], a[N, G, J, L] (any views), out[N, G, I, L]: one
    GEMM per image and group; where the matrix far outweighs an image's map (small maps, many
    channels: I·J > 4·L·(I + J), measured), the images side by side in one GEMM per group, so
    that m is streamed once, not N times."""
    N, G, J, L = a.shape
    I = m.shape[1]
    if I * J <= 4 * L * (I + J):
        np.matmul(m, a, out=out)
    else:
        side_by_side = np.ascontiguousarray(a.transpose(1, 2, 0, 3)).reshape(G, J, N * L)
        np.copyto(out, np.matmul(m, side_by_side).reshape(G, I, N, L).transpose(2, 0, 1, 3))


def fprop(p: Conv2dProblem, x, w, bias):
    G, Cg, Kg = p.groups, p.C_per_group, p.K_per_group
    y = np.empty(p.y_shape, x.dtype)
    sh, sw = p.stride
    xs = np.ascontiguousarray(x[:, :, ::sh, ::sw]).reshape(p.N, G, Cg, p.P * p.Q)
    _product(w.reshape(G, Kg, Cg), xs, y.reshape(p.N, G, Kg, p.P * p.Q))
    if bias is not None:
        y += bias.reshape(-1, 1, 1)
    return y


def dgrad(p: Conv2dProblem, dy, w, bias):
    """Stride 1, dx as large as dy (else the stride phases or the col2im)."""
    G, Cg, Kg = p.groups, p.C_per_group, p.K_per_group
    dx = np.empty(p.x_shape, dy.dtype)
    wT = w.reshape(G, Kg, Cg).transpose(0, 2, 1)
    _product(wT, dy.reshape(p.N, G, Kg, p.P * p.Q), dx.reshape(p.N, G, Cg, p.H * p.W))
    if bias is not None:
        dx += bias.reshape(-1, 1, 1)
    return dx


def wgrad(p: Conv2dProblem, x, dy):
    G, Cg, Kg = p.groups, p.C_per_group, p.K_per_group
    sh, sw = p.stride
    xs = x[:, :, ::sh, ::sw]
    if 2 * Kg * Cg <= p.P * p.Q * (Cg + Kg):
        # Large maps, few channels: one GEMM per image and group on NCHW as it stands, the
        # images' products (N·K·Cg numbers, less than half of x and dy) summed.
        xs = np.ascontiguousarray(xs).reshape(p.N, G, Cg, -1).transpose(0, 1, 3, 2)
        return np.matmul(dy.reshape(p.N, G, Kg, -1), xs).sum(axis=0).reshape(p.w_shape)
    # Else one reduction over (n, p, q): gather each group's images side by side.
    xs = np.ascontiguousarray(xs.reshape(p.N, G, Cg, p.P, p.Q).transpose(1, 2, 0, 3, 4))
    dys = np.ascontiguousarray(dy.reshape(p.N, G, Kg, -1).transpose(1, 2, 0, 3))
    dw = np.matmul(dys.reshape(G, Kg, -1), xs.reshape(G, Cg, -1).transpose(0, 2, 1))
    return dw.reshape(p.w_shape)
