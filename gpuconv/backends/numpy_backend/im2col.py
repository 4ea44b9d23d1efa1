"""The chunked im2col: one copy of every window per block, then one GEMM per group, in NCHW; for
short reductions per group (a stem on RGB, depthwise, the seeds) and small maps.

The input is zero-padded once; then, one block of nb images (or a band of rows of one image) at a
time, one copy from a read-only strided view that holds all R·S windows (one NumPy call, not R·S:
on the seeds' tiny layers the calls were most of the time) fills ``cols[g, (c, r, s), (n, p, q)]``,
and one GEMM per group with reduction Cg·R·S writes the block straight into the NCHW result (fprop,
dgrad: y[g, k, pq] = w[g, k, crs] @ cols) or accumulates into w's layout (wgrad: images side by
side in the reduction). No padded grid, no row adds, no layout change of the result. Blocks hold at
most the result's size (fprop: plus the filter's, which it does not copy; never under MIN_BLOCK
numbers), so memory stays within input + 2 × output, never R·S times the input. At 2 BLAS threads
its single-threaded R·S·C-per-pixel copy costs more than the shifted GEMM's adds on large maps,
hence the choice. Stride-1 depthwise problems, whose GEMMs would be 1 wide, one per group, go to
the depthwise passes (``correlate`` hands them over, for fprop and for dgrad's phases alike).

wgrad reads only the input pixels real outputs read, so NaN and inf go where PyTorch's do: it is
also the form that x or dy holding them take.
"""
from __future__ import annotations

import numpy as np

from ...problem import Conv2dProblem
from . import depthwise
from .common import chunks, pad_into


def _padded(x, pad, stride, dilation, R, S, out_hw):
    """The zero-padded copy of x[N, C, Hin, Win] holding only the rows and columns an output reads.

    ``pad`` = (top, bottom, left, right) may be negative (dgrad phases crop dy instead of padding it).
    """
    N, C, Hin, Win = x.shape
    (sh, sw), (dh, dw) = stride, dilation
    P, Q = out_hw
    top, left = pad[0], pad[2]
    Hx, Wx = (P - 1) * sh + (R - 1) * dh + 1, (Q - 1) * sw + (S - 1) * dw + 1
    xp = np.zeros((N, C, Hx, Wx), x.dtype)
    pad_into(xp, x, top, left)
    return xp


def _im2col(cols, xp, groups, n0, nb, p0, rb, stride, dilation, R, S):
    """cols[g, (c, r, s), (n, p, q)] = xp[n0 + n, g·Cg + c, (p0 + p)·sh + r·dh, q·sw + s·dw] for a
    block of nb images × rb output rows: one copy from a read-only strided view of xp that holds
    every tap's window. Returns the block, a [G, Cg·R·S, nb·rb·Q] view of the flat buffer
    ``cols``."""
    N, C, _, _ = xp.shape
    (sh, sw), (dh, dw) = stride, dilation
    Cg = C // groups
    Q = (xp.shape[3] - (S - 1) * dw - 1) // sw + 1
    block = cols[: C * R * S * nb * rb * Q].reshape(groups, Cg, R, S, nb, rb, Q)
    image, channel, row, column = xp.strides  # xp is contiguous: _padded's
    windows = np.ndarray(block.shape, xp.dtype, xp, n0 * image + p0 * sh * row,
                         (Cg * channel, channel, dh * row, dw * column, image, sh * row, sw * column))
    windows.flags.writeable = False
    np.copyto(block, windows)
    return block.reshape(groups, Cg * R * S, nb * rb * Q)


def correlate(x, wm, pad, stride, dilation, R, S, out_hw, spare):
    """y[n, g·Kg + k, p, q] = Σ_{c,r,s} wm[g, k, (c, r, s)]·x_padded[n, g·Cg + c, p·sh + r·dh, q·sw + s·dw].

    x[N, G·Cg, Hin, Win] is any view, wm[G, Kg, Cg·R·S]. The im2col blocks (and the buffer of a
    multi-image block's result) hold at most the result's size plus ``spare`` numbers.
    """
    G, Kg, CRS = wm.shape
    if G > 1 and Kg == 1 and CRS == R * S and stride == (1, 1):
        return depthwise.correlate(x, wm, pad, dilation, R, S, out_hw)
    N = x.shape[0]
    P, Q = out_hw
    xp = _padded(x, pad, stride, dilation, R, S, out_hw)
    y = np.empty((N, G * Kg, P, Q), x.dtype)
    y_flat = y.reshape(N, G, Kg, P * Q)
    cols = tmp = None
    for n0, nb, p0, rb in chunks(N, P, Q, G * (CRS + Kg), y.size + spare):
        if cols is None:
            cols = np.empty(G * CRS * nb * rb * Q, x.dtype)
        block = _im2col(cols, xp, G, n0, nb, p0, rb, stride, dilation, R, S)
        if nb == 1:
            np.matmul(wm, block, out=y_flat[n0, :, :, p0 * Q : (p0 + rb) * Q])
        else:
            tmp = np.matmul(wm, block, out=None if tmp is None else tmp[:, :, : nb * P * Q])
            np.copyto(y_flat[n0 : n0 + nb], tmp.reshape(G, Kg, nb, P * Q).transpose(2, 0, 1, 3))
    return y


def fprop(p: Conv2dProblem, x, w, bias):
    y = correlate(x, w.reshape(p.groups, p.K_per_group, -1), p.padding, p.stride, p.dilation, p.R,
                  p.S, (p.P, p.Q), w.size)
    if bias is not None:
        y += bias.reshape(-1, 1, 1)
    return y


def wgrad(p: Conv2dProblem, x, dy):
    """The images side by side in the reduction, into w's layout."""
    G, Cg, Kg = p.groups, p.C_per_group, p.K_per_group
    R, S, Q = p.R, p.S, p.Q
    CRS = Cg * R * S
    xp = _padded(x, p.padding, p.stride, p.dilation, R, S, (p.P, Q))
    # dyt[g, k, n, pq]: the reduction runs over images and pixels together.
    dyt = np.ascontiguousarray(dy.reshape(p.N, G, Kg, -1).transpose(1, 2, 0, 3))
    dw = np.empty((G, Kg, CRS), dy.dtype)  # dw[g, k, (c, r, s)]: w's layout
    cols = tmp = None
    for n0, nb, p0, rb in chunks(p.N, p.P, Q, G * CRS, max(dy.size, dw.size)):
        if cols is None:
            cols = np.empty(G * CRS * nb * rb * Q, dy.dtype)
        block = _im2col(cols, xp, G, n0, nb, p0, rb, p.stride, p.dilation, R, S)
        a = dyt[:, :, n0 : n0 + nb, p0 * Q : (p0 + rb) * Q].reshape(G, Kg, -1)
        if n0 == 0 and p0 == 0:
            np.matmul(a, block.transpose(0, 2, 1), out=dw)
        else:
            tmp = np.matmul(a, block.transpose(0, 2, 1), out=tmp)
            dw += tmp
    return dw.reshape(p.w_shape)
