"""The shifted GEMM: a correlation as a few GEMMs over strided views of one channels-last copy of
the input, for large maps with many channels.

The padded input is stored channels-last and grouped, ``xh[g, n, h, w, c]``, and flattened per
group, so one output pixel's input pixel for filter tap (r, s) sits at a fixed flat offset from the
output pixel's own position: a whole tap is *one* strided view of the input, and batch and pixels
share the GEMM's M dimension. Channels-last also makes the S taps of one filter row adjacent in
memory: input pixels q·stride + s (s = 0..S-1) hold S·C consecutive numbers, so with dilation 1 a
GEMM reduces over (s, c) at once, reading the rows of a plain strided view. To keep those rows from
overlapping (S > stride), the output pixels are split into T = ceil(S / stride) column phases, each
one GEMM whose rows are T pixels apart. So a 3×3 layer is 3 phases × 3 filter rows = 9 GEMMs of
reduction 3·C, accumulating over the 3 rows: no im2col copy, and one third of the accumulation
traffic of one GEMM per tap.

Vertical stride is removed by splitting the padded input's rows into stride_h phases (a reordering,
not a copy per tap), so every view is a stride-1 window along the rows. Outputs are computed on a
virtual grid as wide as the padded input and cropped at the end; every valid output reads only
valid input, and the zero-filled slack under the buffers keeps the cropped ones finite.

wgrad reuses fprop's views with the roles of the operands swapped; dgrad's stride phases run
``correlate`` on dy (``phases``). Groups are a leading batch axis of ``np.matmul``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...problem import Conv2dProblem
from .common import ceil_div


@dataclass(frozen=True)
class _Grid:
    """Where a stride-1-along-rows correlation's operands live in the flat shifted input.

    Output pixel (n, p, q) has flat index l = (n·Pv + p)·Qv + q on a virtual Pv × Qv grid per image
    (valid part P × Q). Its tap (r, s), channel c is at flat element
    ``(l·sw + (r·dh // sh)·Wx + s·dw)·Cg + c`` of row phase (r·dh) % sh of the input buffer.
    """

    G: int
    N: int
    Cg: int
    P: int
    Q: int
    Pv: int  # virtual output rows per image = padded rows per row phase
    Qv: int  # virtual output columns = Wx / sw
    Wx: int  # padded input width, a multiple of sw
    sh: int
    sw: int
    dh: int
    dw: int
    fold: int  # taps reduced by one GEMM along S: S when dw == 1, else 1
    T: int  # column phases, so that GEMM rows (T·sw·Cg apart) do not overlap (fold·Cg long)
    phase_len: int  # elements of one row phase: N·Pv·Wx·Cg
    M: int  # GEMM rows per column phase: ceil(N·Pv·Qv / T)

    @property
    def L(self) -> int:  # virtual output pixels
        return self.N * self.Pv * self.Qv


def _shifted_input(xg, pad, stride, dilation, R, S, out_hw):
    """The padded, row-phase-split, channels-last copy of xg[G, N, Hin, Win, Cg] and its _Grid.

    ``pad`` = (top, bottom, left, right) may be negative (dgrad phases crop dy instead of padding
    it). Only the padded rows and columns some output reads are stored.
    """
    G, N, Hin, Win, Cg = xg.shape
    (sh, sw), (dh, dw) = stride, dilation
    P, Q = out_hw
    top, _, left, _ = pad
    # Padded extent read by the last output, rounded up to whole stride periods so that the
    # row phases have equal length and the virtual grid is exactly Wx / sw wide.
    Hx = ceil_div((P - 1) * sh + (R - 1) * dh + 1, sh) * sh
    Wx = ceil_div((Q - 1) * sw + (S - 1) * dw + 1, sw) * sw
    Pv, Qv = Hx // sh, Wx // sw
    fold = S if dw == 1 else 1
    T = ceil_div(fold, sw)
    M = ceil_div(N * Pv * Qv, T)
    phase_len = N * Pv * Wx * Cg
    # The last GEMM row reads up to this far past the end of the last row phase.
    slack = (M * T - N * Pv * Qv) * sw * Cg + ((R - 1) * dh // sh * Wx + (S - 1) * dw + T * sw) * Cg
    buf = np.zeros((G, sh * phase_len + slack), xg.dtype)
    phases = buf[:, : sh * phase_len].reshape(G, sh, N, Pv, Wx, Cg)
    # Padded column wp holds input column wp - left; padded row i·sh + rho holds input row
    # i·sh + rho - top.
    w_lo, w_hi = max(left, 0), min(Wx, left + Win)
    for rho in range(sh):
        i_lo = max(ceil_div(top - rho, sh), 0)
        i_hi = min(ceil_div(top + Hin - rho, sh), Pv)
        if i_lo < i_hi and w_lo < w_hi:
            h_lo = i_lo * sh + rho - top
            phases[:, rho, :, i_lo:i_hi, w_lo:w_hi] = xg[
                :, :, h_lo : h_lo + (i_hi - i_lo - 1) * sh + 1 : sh, w_lo - left : w_hi - left
            ]
    grid = _Grid(G, N, Cg, P, Q, Pv, Qv, Wx, sh, sw, dh, dw, fold, T, phase_len, M)
    return buf, grid


def _stacks_rows(g: _Grid, R: int, S: int, Kout: int) -> bool:
    """Whether to copy the R filter rows' views side by side (an im2col of one column phase at a
    time) instead of accumulating R products.

    The copy moves R·S·Cg numbers per output pixel, the accumulation 3·(R-1)·Kout (read, read,
    write): stacking wins when the reduction is short and the output wide (a 7×7 stem on RGB), and
    it also gives BLAS one long reduction instead of R short ones. Only with all S taps folded,
    and only while the copy is no larger than the output.
    """
    width = R * S * g.Cg
    return (R > 1 and g.fold == S and 2 * width <= 3 * (R - 1) * Kout
            and g.M * width <= g.L * Kout)


def _tap_views(buf, g: _Grid, R: int, S: int, stack_rows: bool):
    """(rows, s0, t, A) for every GEMM: A[G, M, ·] holds taps (rows, s0..s0+fold-1) of the output
    pixels l = T·j + t, j = 0..M-1 — a strided view of ``buf`` for one filter row, or, with
    ``stack_rows``, a copy of all R rows' views side by side (rows = all of them)."""
    row = g.T * g.sw * g.Cg
    width = g.fold * g.Cg
    stacked = np.empty((g.G, g.M, R, width), buf.dtype) if stack_rows else None
    for s0 in range(0, S, g.fold):
        for t in range(g.T):
            for r in range(R):
                delta, rho = divmod(r * g.dh, g.sh)  # padded row p·sh + r·dh = (p + delta)·sh + rho
                start = rho * g.phase_len + (t * g.sw + delta * g.Wx + s0 * g.dw) * g.Cg
                view = buf[:, start : start + g.M * row].reshape(g.G, g.M, row)[:, :, :width]
                if stack_rows:
                    stacked[:, :, r] = view
                else:
                    yield slice(r, r + 1), s0, t, view
            if stack_rows:
                yield slice(0, R), s0, t, stacked.reshape(g.G, g.M, R * width)


def correlate(xg, wt, pad, stride, dilation, out_hw):
    """out[G, N, P, Q, Kout] = Σ_{r,s,c} x_padded[g, n, p·sh + r·dh, q·sw + s·dw, c]·wt[g, r, s, c, k].

    xg[G, N, Hin, Win, Cin] is any view; wt[G, R, S, Cin, Kout]. Returns a view of a new buffer.
    """
    G, R, S, _, Kout = wt.shape
    buf, g = _shifted_input(xg, pad, stride, dilation, R, S, out_hw)
    stack_rows = _stacks_rows(g, R, S, Kout)
    acc = np.empty((G, g.M * g.T, Kout), xg.dtype)
    # Output pixel l = T·j + t of column phase t is row j of this view.
    acc_phase = acc.reshape(G, g.M, g.T, Kout)
    tmp = None
    for rows, s0, t, a in _tap_views(buf, g, R, S, stack_rows):
        w_taps = wt[:, rows, s0 : s0 + g.fold].reshape(G, -1, Kout)
        if rows.start == 0 and s0 == 0:  # the first product of this column phase
            np.matmul(a, w_taps, out=acc_phase[:, :, t])
        else:
            tmp = np.matmul(a, w_taps, out=tmp)
            acc_phase[:, :, t] += tmp
    del buf, tmp
    grid = acc[:, : g.L].reshape(G, g.N, g.Pv, g.Qv, Kout)
    return grid[:, :, : g.P, : g.Q]


def grouped_channels_last(a, groups: int):
    """a[N, G·Cg, H, W] viewed as [G, N, H, W, Cg] (no copy)."""
    N, C, H, W = a.shape
    return a.reshape(N, groups, C // groups, H, W).transpose(1, 0, 3, 4, 2)


def to_nchw(out, y, bias):
    """Write out[G, N, P, Q, Kg] into y[N, G·Kg, P, Q], adding bias[G·Kg] on the way."""
    G, N, P, Q, Kg = out.shape
    src = out.transpose(1, 0, 4, 2, 3)
    dst = y.reshape(N, G, Kg, P, Q)
    if bias is None:
        np.copyto(dst, src)
    else:
        np.add(src, bias.reshape(G, Kg, 1, 1), out=dst)


def fprop(p: Conv2dProblem, x, w, bias):
    G, Cg, Kg = p.groups, p.C_per_group, p.K_per_group
    # wt[g, r, s, c, k] = w[g·Kg + k, c, r, s]: (s, c) contiguous, as the folded taps read.
    wt = np.ascontiguousarray(w.reshape(G, Kg, Cg, p.R, p.S).transpose(0, 3, 4, 2, 1))
    out = correlate(grouped_channels_last(x, G), wt, p.padding, p.stride, p.dilation, (p.P, p.Q))
    y = np.empty(p.y_shape, x.dtype)  # allocated after the shifted input is freed
    to_nchw(out, y, bias)
    return y


def wgrad(p: Conv2dProblem, x, dy):
    """fprop's tap views of x, transposed, times dy on fprop's virtual output grid."""
    G, Cg, Kg = p.groups, p.C_per_group, p.K_per_group
    buf, g = _shifted_input(
        grouped_channels_last(x, G), p.padding, p.stride, p.dilation, p.R, p.S, (p.P, p.Q)
    )
    # dy on fprop's virtual output grid, zero where the grid has no valid output.
    dy_grid = np.zeros((G, g.M * g.T, Kg), dy.dtype)
    dy_valid = dy_grid[:, : g.L].reshape(G, g.N, g.Pv, g.Qv, Kg)[:, :, : p.P, : p.Q]
    np.copyto(dy_valid, grouped_channels_last(dy, G))
    dy_phase = dy_grid.reshape(G, g.M, g.T, Kg)
    dwt = np.zeros((G, p.R, p.S, Cg, Kg), dy.dtype)  # dwt[g, r, s, c, k]
    for rows, s0, t, a in _tap_views(buf, g, p.R, p.S, _stacks_rows(g, p.R, p.S, Kg)):
        dwt[:, rows, s0 : s0 + g.fold] += np.matmul(
            a.transpose(0, 2, 1), dy_phase[:, :, t]
        ).reshape(G, -1, g.fold, Cg, Kg)
    return np.ascontiguousarray(dwt.transpose(0, 4, 3, 1, 2)).reshape(p.w_shape)
