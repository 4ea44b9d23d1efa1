"""Depthwise layers (one channel per group, several groups) at stride 1 — fprop, dgrad's phases,
wgrad — as long vectorised passes instead of the im2col's GEMMs, which would be 1 wide, one per
group (with one group the im2col's single GEMM is faster: a one-channel 80² map, 0.04 against
0.06 ms).

On flat, zero-padded planes a tap is a fixed offset, so each tap is one multiply and one add (wgrad:
one dot product per image and channel) of a plane-long run, vectorised over the images and channels
of a block that is padded into a reused buffer and stays in the cache for all R·S taps. Outputs sit
on a virtual grid as wide as the padded input and are cropped when copied out. wgrad's dot products
also multiply the zeros past Q on dy's grid by input pixels: a non-finite result is recomputed by
the im2col, which multiplies only what outputs read.
"""
from __future__ import annotations

import numpy as np

from ...problem import Conv2dProblem
from .common import pad_into

# Numbers per block: the block's input rows, accumulator and product stay in the caches across the
# R·S taps (measured at 56²: 256 Ki numbers 9.5 ms, 32 Ki 12 ms, 8 Mi 25 ms).
BLOCK = 1 << 18


def _blocks(x, pad, dilation, R, S, out_hw):
    """Blocks of a stride-1 depthwise correlation's padded input, flat per image and channel:
    yields (n, c, xb, Wx, length, offsets) where xb[i, j] is the padded plane of image n.start + i,
    channel c.start + j (a reused buffer, its border zeroed once), and output (p, q) on a virtual
    grid Wx = Q + (S-1)·dw wide reads tap t at ``xb[..., p·Wx + q + offsets[t]]``. The last
    (S-1)·dw numbers of the grid (columns past Q of its last row) are not computed: with
    ``length`` numbers per tap, no tap reads past its plane."""
    N, C = x.shape[:2]
    P, Q = out_hw
    dh, dw = dilation
    Hx, Wx = P + (R - 1) * dh, Q + (S - 1) * dw
    nb = max(1, min(N, BLOCK // (C * P * Wx)))
    cb = max(1, min(C, BLOCK // (nb * P * Wx)))
    buf = np.zeros((nb, cb, Hx, Wx), x.dtype)
    offsets = [r * dh * Wx + s * dw for r in range(R) for s in range(S)]
    for n0 in range(0, N, nb):
        for c0 in range(0, C, cb):
            n, c = slice(n0, min(n0 + nb, N)), slice(c0, min(c0 + cb, C))
            xb = buf[: n.stop - n0, : c.stop - c0]
            pad_into(xb, x[n, c], pad[0], pad[2])
            yield n, c, xb.reshape(*xb.shape[:2], Hx * Wx), Wx, P * Wx - (S - 1) * dw, offsets


def correlate(x, wm, pad, dilation, R, S, out_hw):
    """y[n, c, p, q] = Σ_{r,s} wm[c, 0, (r, s)]·x_padded[n, c, p + r·dh, q + s·dw]: one channel per
    group, stride 1 (fprop, and dgrad's phases). Per block, each tap is one multiply and one add of
    a plane-long run by the channel's weight; the block's buffer, with the accumulator and the
    product, stays in the L2 cache for the R·S taps."""
    N, C = x.shape[:2]
    P, Q = out_hw
    y = np.empty((N, C, P, Q), x.dtype)
    w = wm.reshape(C, R * S, 1)
    acc = tmp = None
    for n, c, xb, Wx, length, offsets in _blocks(x, pad, dilation, R, S, out_hw):
        if acc is None:  # the first block is the largest
            acc, tmp = np.empty((2, *xb.shape[:2], P * Wx), x.dtype)
        a = acc[: xb.shape[0], : xb.shape[1]]
        t = tmp[: xb.shape[0], : xb.shape[1], :length]
        for tap, off in enumerate(offsets):
            if tap == 0:
                np.multiply(xb[..., off : off + length], w[c, 0], out=a[..., :length])
            else:
                np.multiply(xb[..., off : off + length], w[c, tap], out=t)
                a[..., :length] += t
        np.copyto(y[n, c], a.reshape(*a.shape[:2], P, Wx)[..., :Q])
    return y


def wgrad(p: Conv2dProblem, x, dy):
    """dw[c, 0, r, s] = Σ_{n,p,q} x_padded[n, c, p + r·dh, q + s·dw]·dy[n, c, p, q]: one channel per
    group, stride 1. Per block (as correlate's) and tap, one dot product per image and channel of a
    plane-long run with dy on the same virtual grid (zero past Q). Those zeros also multiply input
    pixels no output reads: the caller checks the result."""
    R, S, P, Q = p.R, p.S, p.P, p.Q
    dw = np.zeros((p.C, R * S), dy.dtype)
    dyb = None
    for n, c, xb, Wx, length, offsets in _blocks(x, p.padding, p.dilation, R, S, (P, Q)):
        if dyb is None:  # the first block is the largest; its columns past Q stay zero
            dyb = np.zeros((*xb.shape[:2], P, Wx), dy.dtype)
        d = dyb[: xb.shape[0], : xb.shape[1]]
        pad_into(d, dy[n, c], 0, 0)
        d = d.reshape(*d.shape[:2], P * Wx)[..., :length]
        dots = np.stack([np.vecdot(xb[..., off : off + length], d) for off in offsets], axis=-1)
        dw[c] += dots.sum(axis=0)
    return dw.reshape(p.w_shape)
