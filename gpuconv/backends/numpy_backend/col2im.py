"""dgrad as col2im: per image one GEMM from dy to its Cg·R·S columns, then R·S shifted adds into the
padded dx.

For dx with few channels per group from many in dy (the stem on RGB, where the other forms are
GEMMs Cg wide), tiny strided layers, and dy or w holding NaN or inf: the other forms multiply w by
zeros that lie outside dy (0·inf = NaN where PyTorch has none); this one multiplies real dy
elements only, as PyTorch and the kernels do.
"""
from __future__ import annotations

import numpy as np

from ...problem import Conv2dProblem
from .common import chunks


def dgrad(p: Conv2dProblem, dy, w, bias):
    """Per block of images (or band of dy rows), one GEMM per image and group,
    cols[(c, r, s), (p, q)] = Σ_k w[k, (c, r, s)]·dy[k, (p, q)], then each tap's columns added into
    its window of the padded dx."""
    G, Cg, Kg = p.groups, p.C_per_group, p.K_per_group
    R, S, Q = p.R, p.S, p.Q
    (sh, sw), (dh, dw), (top, bottom, left, right) = p.stride, p.dilation, p.padding
    dxp = np.zeros((p.N, G, Cg, p.H + top + bottom, p.W + left + right), dy.dtype)
    dyg = dy.reshape(p.N, G, Kg, p.P * Q)
    wT = w.reshape(G, Kg, Cg * R * S).transpose(0, 2, 1)
    cols = None
    for n0, nb, p0, rb in chunks(p.N, p.P, Q, G * Cg * R * S, dxp.size):
        if cols is None:
            cols = np.empty(nb * G * Cg * R * S * rb * Q, dy.dtype)
        block = cols[: nb * G * Cg * R * S * rb * Q].reshape(nb, G, Cg * R * S, rb * Q)
        np.matmul(wT, dyg[n0 : n0 + nb, :, :, p0 * Q : (p0 + rb) * Q], out=block)
        block = block.reshape(nb, G, Cg, R, S, rb, Q)
        for r in range(R):
            h = p0 * sh + r * dh
            for s in range(S):
                # tap (r, s) of output (p, q) touched padded input pixel (p·sh + r·dh, q·sw + s·dw)
                dxp[n0 : n0 + nb, ..., h : h + sh * (rb - 1) + 1 : sh,
                    s * dw : s * dw + sw * (Q - 1) + 1 : sw] += block[:, :, :, r, s]
    dx = np.ascontiguousarray(dxp[..., top : top + p.H, left : left + p.W]).reshape(p.x_shape)
    if bias is not None:
        dx += bias.reshape(-1, 1, 1)
    return dx
