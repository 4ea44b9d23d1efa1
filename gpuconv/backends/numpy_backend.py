"""The NumPy backend: every op as BLAS matrix products (depthwise: long vectorised passes), no
Python loop over pixels or images.

Three formulations of the correlation, chosen per layer: Winograd F(2×2, 3×3) for 3×3 stride-1
layers with enough channels each way (``_uses_winograd``: ≥ 32 for fprop and dgrad, whose
stride-1 correlation has the same form, ≥ 128 for wgrad), else the shifted GEMM for large maps
with many channels, and a chunked im2col (``_uses_im2col``) for short reductions per group (a stem
on RGB, depthwise, the seeds) and small maps, where the shifted GEMM's padded grid wastes ≥ 25%;
the im2col hands stride-1 depthwise to the direct passes below.

Depthwise layers (one channel per group, several groups) at stride 1 — fprop, dgrad's phases,
wgrad — skip the im2col, whose GEMMs would be 1 wide, one per group (``_depthwise_correlate``,
``_depthwise_wgrad``; with one group the im2col's single GEMM is faster: a one-channel 80² map,
0.04 against 0.06 ms). On flat, zero-padded planes a tap is a fixed offset, so each tap is one
multiply and one add (wgrad: one dot product per image and channel) of a plane-long run,
vectorised over the images and channels of a block that is padded into a reused buffer and stays
in the cache for all R·S taps. Outputs sit on a virtual grid as wide as the padded input and are
cropped when copied out. wgrad's dot products also multiply the zeros past Q on dy's grid by input
pixels: a non-finite result is recomputed by the im2col, which multiplies only what outputs read.

Winograd F(2×2, 3×3) (Lavin & Gray): each 2×2 output tile is Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A of its 4×4
input tile d, so the 36 multiplies per channel pair of a direct 3×3 tile become 16 — 16 GEMMs of
reduction C (one per transform element) on 2.25× fewer multiplies. The padded input is stored
channels-last with its columns split by parity, so a tile column's input columns are, for all
tiles, one contiguous run, and the input and output transforms (sums and differences of tile
rows, then columns) are long contiguous NumPy passes, vectorised over all tiles of a block; the
filter transform is one small GEMM with G ⊗ G; Aᵀ's row sums are accumulated as each row ξ of
GEMMs is done. wgrad is the transposed form, dw = Gᵀ[Σ_tiles (A dy Aᵀ) ⊙ (Bᵀ d B)]G: 16 GEMMs that
reduce over the tiles, then G ⊗ G back to the 9 taps. Blocks of images or bands of tile rows keep
the extra memory within the result's size plus the filter's. The transforms' coefficients are 0,
±1 and ±½: small integers stay exact while the transformed sums (up to ~4× the direct ones) stay
below 2^24 in float32 (fprop and dgrad in practice; wgrad's long tile sums can pass it past ~10^6
reduced pixels), and float32 errors stay within a few times the direct sum's. Not for NaN or inf
inputs (a tile transform mixes an inf with its neighbours: inf - inf = NaN where the direct sum has
inf), nor for numbers so large that a transform could overflow where the direct sum does not
(``_winograd_safe``); those take the direct paths.

The shifted-GEMM formulation. The padded input is stored channels-last and grouped,
``xh[g, n, h, w, c]``, and flattened per group, so one output pixel's input pixel for filter tap
(r, s) sits at a fixed flat offset from the output pixel's own position: a whole tap is *one*
strided view of the input, and batch and pixels share the GEMM's M dimension. Channels-last also
makes the S taps of one filter row adjacent in memory: input pixels q·stride + s (s = 0..S-1) hold
S·C consecutive numbers, so with dilation 1 a GEMM reduces over (s, c) at once, reading the rows of
a plain strided view. To keep those rows from overlapping (S > stride), the output pixels are split
into T = ceil(S / stride) column phases, each one GEMM whose rows are T pixels apart. So a 3×3
layer is 3 phases × 3 filter rows = 9 GEMMs of reduction 3·C, accumulating over the 3 rows: no
im2col copy, and one third of the accumulation traffic of one GEMM per tap.

Vertical stride is removed by splitting the padded input's rows into stride_h phases (a reordering,
not a copy per tap), so every view is a stride-1 window along the rows. Outputs are computed on a
virtual grid as wide as the padded input and cropped at the end; every valid output reads only
valid input, and the zero-filled slack under the buffers keeps the cropped ones finite.

dgrad is the same correlation run on dy with the transposed, flipped filter. Strided dgrad is split
into stride_h × stride_w output phases, each a dense stride-1 correlation over only the taps that
reach it (DESIGN.md), so nothing is multiplied by an inserted zero. wgrad reuses fprop's views
with the roles of the operands swapped. Groups are a leading batch axis of ``np.matmul``. 1×1
filters skip the layout change: NCHW is already a matrix per image. dgrad into few channels per
group from many (Cg < 16 ≤ Kg: the stem on RGB, where the other forms are GEMMs Cg wide) is a
col2im instead: per image one GEMM to its Cg·R·S columns, then R·S shifted adds into the padded
dx — the form that dy or w holding NaN or inf take too (``_scattered_dgrad``).

The chunked im2col works in NCHW. The input is zero-padded once; then, one block of nb images (or a
band of rows of one image) at a time, one copy from a read-only strided view that holds all R·S
windows (one NumPy call, not R·S: on the seeds' tiny layers the calls were most of the time) fills
``cols[g, (c, r, s), (n, p, q)]``, and one GEMM per group with reduction Cg·R·S writes the block
straight into the NCHW result (fprop, dgrad: y[g, k, pq] = w[g, k, crs] @ cols) or accumulates into
w's layout (wgrad: images side by side in the reduction). No padded grid, no row adds, no layout
change of the result. Blocks hold at most the result's size (fprop: plus the filter's, which it does
not copy; never under 64 Ki numbers), so memory stays within input + 2 × output, never R·S times the
input. At 2 BLAS threads its single-threaded R·S·C-per-pixel copy costs more than the shifted GEMM's
adds on large maps, hence the choice.

Deterministic: a fixed sequence of BLAS calls and NumPy reductions, no threads of our own.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..problem import Conv2dProblem


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# -- the shifted input --------------------------------------------------------------------------


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
    Hx = _ceil_div((P - 1) * sh + (R - 1) * dh + 1, sh) * sh
    Wx = _ceil_div((Q - 1) * sw + (S - 1) * dw + 1, sw) * sw
    Pv, Qv = Hx // sh, Wx // sw
    fold = S if dw == 1 else 1
    T = _ceil_div(fold, sw)
    M = _ceil_div(N * Pv * Qv, T)
    phase_len = N * Pv * Wx * Cg
    # The last GEMM row reads up to this far past the end of the last row phase.
    slack = (M * T - N * Pv * Qv) * sw * Cg + ((R - 1) * dh // sh * Wx + (S - 1) * dw + T * sw) * Cg
    buf = np.zeros((G, sh * phase_len + slack), xg.dtype)
    phases = buf[:, : sh * phase_len].reshape(G, sh, N, Pv, Wx, Cg)
    # Padded column wp holds input column wp - left; padded row i·sh + rho holds input row
    # i·sh + rho - top.
    w_lo, w_hi = max(left, 0), min(Wx, left + Win)
    for rho in range(sh):
        i_lo = max(_ceil_div(top - rho, sh), 0)
        i_hi = min(_ceil_div(top + Hin - rho, sh), Pv)
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


def _correlate(xg, wt, pad, stride, dilation, out_hw):
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


# -- chunked im2col ---------------------------------------------------------------------------


def _uses_im2col(Cg: int, R: int, S: int, stride, dilation, out_hw) -> bool:
    """Whether a correlation takes the chunked im2col instead of the shifted GEMM: for a short
    reduction per group (a stem on RGB, depthwise) and where the shifted GEMM's padded grid wastes
    a quarter or more of its work (small maps: +31% at 14², +65% at 7²)."""
    (sh, sw), (dh, dw), (P, Q) = stride, dilation, out_hw
    grid = (_ceil_div((P - 1) * sh + (R - 1) * dh + 1, sh)
            * _ceil_div((Q - 1) * sw + (S - 1) * dw + 1, sw))
    # Stride beyond the kernel's reach: the shifted input would carry every pixel no window reads.
    skips = sh > (R - 1) * dh + 1 or sw > (S - 1) * dw + 1
    return Cg < 16 or skips or grid >= 1.25 * P * Q


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
    _pad_into(xp, x, top, left)
    return xp


def _pad_into(xp, x, top: int, left: int):
    """Copy x[..., Hin, Win] into the zero-padded xp[..., Hx, Wx], its pixel (h, w) to (h + top,
    w + left) (either may be negative: a crop); what falls outside xp is dropped."""
    Hin, Win = x.shape[-2:]
    Hx, Wx = xp.shape[-2:]
    h_lo, h_hi = max(top, 0), min(Hx, top + Hin)
    w_lo, w_hi = max(left, 0), min(Wx, left + Win)
    if h_lo < h_hi and w_lo < w_hi:
        xp[..., h_lo:h_hi, w_lo:w_hi] = x[..., h_lo - top : h_hi - top, w_lo - left : w_hi - left]


_MIN_BLOCK = 1 << 16  # numbers: below this, im2col blocks are not split (tiny layers)


def _chunks(N: int, P: int, Q: int, per_pixel: int, budget: int):
    """(n0, nb, p0, rb): blocks of nb images × rb output rows that need at most ``budget`` numbers
    (or _MIN_BLOCK, so that a tiny layer is one block) at ``per_pixel`` numbers per output pixel — whole
    images while one fits, else bands of rows of one image (at least one row); blocks of near-equal
    size, so that no GEMM is a thin tail."""
    pixels = max(max(budget, _MIN_BLOCK) // per_pixel, Q)
    if pixels >= P * Q:
        nb, rb = _ceil_div(N, _ceil_div(N, pixels // (P * Q))), P
    else:
        nb, rb = 1, _ceil_div(P, _ceil_div(P, pixels // Q))
    for n0 in range(0, N, nb):
        for p0 in range(0, P, rb):
            yield n0, min(nb, N - n0), p0, min(rb, P - p0)


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


def _im2col_correlate(x, wm, pad, stride, dilation, R, S, out_hw, spare):
    """y[n, g·Kg + k, p, q] = Σ_{c,r,s} wm[g, k, (c, r, s)]·x_padded[n, g·Cg + c, p·sh + r·dh, q·sw + s·dw].

    x[N, G·Cg, Hin, Win] is any view, wm[G, Kg, Cg·R·S]. The im2col blocks (and the buffer of a
    multi-image block's result) hold at most the result's size plus ``spare`` numbers.
    """
    G, Kg, CRS = wm.shape
    if G > 1 and Kg == 1 and CRS == R * S and stride == (1, 1):
        return _depthwise_correlate(x, wm, pad, dilation, R, S, out_hw)
    N = x.shape[0]
    P, Q = out_hw
    xp = _padded(x, pad, stride, dilation, R, S, out_hw)
    y = np.empty((N, G * Kg, P, Q), x.dtype)
    y_flat = y.reshape(N, G, Kg, P * Q)
    cols = tmp = None
    for n0, nb, p0, rb in _chunks(N, P, Q, G * (CRS + Kg), y.size + spare):
        if cols is None:
            cols = np.empty(G * CRS * nb * rb * Q, x.dtype)
        block = _im2col(cols, xp, G, n0, nb, p0, rb, stride, dilation, R, S)
        if nb == 1:
            np.matmul(wm, block, out=y_flat[n0, :, :, p0 * Q : (p0 + rb) * Q])
        else:
            tmp = np.matmul(wm, block, out=None if tmp is None else tmp[:, :, : nb * P * Q])
            np.copyto(y_flat[n0 : n0 + nb], tmp.reshape(G, Kg, nb, P * Q).transpose(2, 0, 1, 3))
    return y


# -- depthwise, stride 1 ------------------------------------------------------------------------


# Numbers per block of the depthwise passes: the block's input rows, accumulator and product stay
# in the caches across the R·S taps (measured at 56²: 256 Ki numbers 9.5 ms, 32 Ki 12 ms, 8 Mi 25 ms).
_DEPTHWISE_BLOCK = 1 << 18


def _depthwise_blocks(x, pad, dilation, R, S, out_hw):
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
    nb = max(1, min(N, _DEPTHWISE_BLOCK // (C * P * Wx)))
    cb = max(1, min(C, _DEPTHWISE_BLOCK // (nb * P * Wx)))
    buf = np.zeros((nb, cb, Hx, Wx), x.dtype)
    offsets = [r * dh * Wx + s * dw for r in range(R) for s in range(S)]
    for n0 in range(0, N, nb):
        for c0 in range(0, C, cb):
            n, c = slice(n0, min(n0 + nb, N)), slice(c0, min(c0 + cb, C))
            xb = buf[: n.stop - n0, : c.stop - c0]
            _pad_into(xb, x[n, c], pad[0], pad[2])
            yield n, c, xb.reshape(*xb.shape[:2], Hx * Wx), Wx, P * Wx - (S - 1) * dw, offsets


def _depthwise_correlate(x, wm, pad, dilation, R, S, out_hw):
    """y[n, c, p, q] = Σ_{r,s} wm[c, 0, (r, s)]·x_padded[n, c, p + r·dh, q + s·dw]: one channel per
    group, stride 1 (fprop, and dgrad's phases).

    A GEMM per channel would be 1 wide; instead each tap is one multiply and one add of a
    plane-long run by the channel's weight, vectorised over the images and channels of a block: on
    the flat padded planes a tap is a fixed offset (outputs on a virtual grid as wide as the padded
    input, cropped when copied out). Blocks of images and channels are padded one at a time into
    a buffer that, with the accumulator and the product, stays in the L2 cache for the R·S taps."""
    N, C = x.shape[:2]
    P, Q = out_hw
    y = np.empty((N, C, P, Q), x.dtype)
    w = wm.reshape(C, R * S, 1)
    acc = tmp = None
    for n, c, xb, Wx, length, offsets in _depthwise_blocks(x, pad, dilation, R, S, out_hw):
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


def _depthwise_wgrad(p: Conv2dProblem, x, dy):
    """dw[c, 0, r, s] = Σ_{n,p,q} x_padded[n, c, p + r·dh, q + s·dw]·dy[n, c, p, q]: one channel per
    group, stride 1. Per block (as _depthwise_correlate's) and tap, one dot product per image and
    channel of a plane-long run with dy on the same virtual grid (zero past Q). Those zeros also
    multiply input pixels no output reads: the caller checks the result."""
    R, S, P, Q = p.R, p.S, p.P, p.Q
    dw = np.zeros((p.C, R * S), dy.dtype)
    dyb = None
    for n, c, xb, Wx, length, offsets in _depthwise_blocks(x, p.padding, p.dilation, R, S, (P, Q)):
        if dyb is None:  # the first block is the largest; its columns past Q stay zero
            dyb = np.zeros((*xb.shape[:2], P, Wx), dy.dtype)
        d = dyb[: xb.shape[0], : xb.shape[1]]
        _pad_into(d, dy[n, c], 0, 0)
        d = d.reshape(*d.shape[:2], P * Wx)[..., :length]
        dots = np.stack([np.vecdot(xb[..., off : off + length], d) for off in offsets], axis=-1)
        dw[c] += dots.sum(axis=0)
    return dw.reshape(p.w_shape)


# -- Winograd F(2×2, 3×3) ---------------------------------------------------------------------


# Channels each way from which Winograd beats the direct forms (measured at 2 BLAS threads): its
# tile transforms cost O(C + K) per tile against the GEMMs' O(C·K). wgrad transforms both x and
# dy, and its alternative, the shifted GEMM, is at its best on large maps with few channels.
_WINOGRAD_MIN_C = {"fprop": 32, "dgrad": 32, "wgrad": 128}


def _uses_winograd(p: Conv2dProblem, op: str) -> bool:
    """Whether ``op`` of the layer takes Winograd F(2×2, 3×3): 3×3, stride 1, no dilation, one
    group, and enough channels that its GEMMs outweigh the tile transforms. Not for fprop on small
    maps, where the 2×2 tiles reach ≥ 25% past the output (7²: 8² computed) and fprop's im2col is
    one large GEMM (dgrad's has to copy the filter, wgrad's gathers the images: Winograd wins)."""
    tiles = 4 * _ceil_div(p.P, 2) * _ceil_div(p.Q, 2)
    return ((p.R, p.S, p.stride, p.dilation, p.groups) == (3, 3, (1, 1), (1, 1), 1)
            and min(p.C, p.K) >= _WINOGRAD_MIN_C[op]
            and (op != "fprop" or tiles < 1.25 * p.P * p.Q))


# G = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]]; row (ξ, ν) of G ⊗ G maps a filter's 9 taps
# (r, s) to element (ξ, ν) of its transform G g Gᵀ.
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
_GG = np.kron(_G, _G)


def _filter_transform(w, xi: int, flip: bool):
    """Row ξ of the transformed filters, U[ν, c, k] = (G w[k, c] Gᵀ)[ξ, ν], as one small GEMM (a
    view). With ``flip``, of the flipped, transposed filter w[c, k, ::-1, ::-1] (dgrad)."""
    gg = _GG[4 * xi : 4 * xi + 4, ::-1 if flip else 1].astype(w.dtype)
    u = np.matmul(gg, w.reshape(-1, 9).T).reshape(4, *w.shape[:2])
    return u if flip else u.transpose(0, 2, 1)


# Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]: (a, b, ufunc) per row, d_a ± d_b.
_BT = ((0, 2, np.subtract), (1, 2, np.add), (2, 1, np.subtract), (1, 3, np.subtract))
# Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]: (a, b, c, ufunc) per row, (m_a ± m_b) ± m_c.
_AT = ((0, 1, 2, np.add), (1, 2, 3, np.subtract))


def _winograd_input(x, pad, TP: int, TQ: int):
    """x[N, C, Hin, Win] zero-padded to the 2·TP + 2 rows and 2·TQ + 2 columns that TP × TQ tiles
    read, channels-last with the columns split by parity: xh[n, h, φ, i, c] = x_padded[n, c, h,
    2i + φ]. Input column 2t + j of tile column t is then (φ, i) = (j % 2, t + j // 2): for all
    tiles, one contiguous run. ``pad`` as _padded's."""
    N, C, Hin, Win = x.shape
    top, left = pad[0], pad[2]
    Hx = 2 * TP + 2
    xh = np.zeros((N, Hx, 2, TQ + 1, C), x.dtype)
    h_lo, h_hi = max(top, 0), min(Hx, top + Hin)
    for phase in range(2):
        # padded column 2i + phase holds input column 2i + phase - left
        i_lo = max(_ceil_div(left - phase, 2), 0)
        i_hi = min(_ceil_div(left + Win - phase, 2), TQ + 1)
        if h_lo < h_hi and i_lo < i_hi:
            w_lo = 2 * i_lo + phase - left
            xh[:, h_lo:h_hi, phase, i_lo:i_hi] = x[:, :, h_lo - top : h_hi - top,
                                                   w_lo : w_lo + 2 * (i_hi - i_lo - 1) + 1 : 2
                                                   ].transpose(0, 2, 3, 1)
    return xh


def _input_transform(xs, xi: int, rows, v):
    """v[ν, n, i, t, c] = (Bᵀ d B)[ξ, ν] of the tiles (i, t) of a block xs[nb, 2·rb + 2, 2, TQ + 1, C]
    of _winograd_input, for one ξ: its rows combined into rows[nb, rb, 2, TQ + 1, C], then columns."""
    rb, TQ = rows.shape[1], v.shape[3]
    a, b, op = _BT[xi]
    op(xs[:, a : a + 2 * rb : 2], xs[:, b : b + 2 * rb : 2], out=rows)
    for nu, (c, d, op_col) in enumerate(_BT):
        op_col(rows[:, :, c % 2, c // 2 : c // 2 + TQ], rows[:, :, d % 2, d // 2 : d // 2 + TQ],
               out=v[nu])


def _winograd_correlate(x, w, pad, out_hw, spare, bias=None, flip=False):
    """y[n, k, p, q] = Σ_{c,r,s} w[k, c, r, s]·x_padded[n, c, p + r, q + s] (+ bias[k]) by
    F(2×2, 3×3); with ``flip``, of the flipped, transposed filter w[c, k, 2 - r, 2 - s] (dgrad).

    x[N, C, Hin, Win] is any view, w contiguous. Per block of 2×2 output tiles t: the 4×4 input
    tiles' transform V = Bᵀ d B, 16 GEMMs M[ξ, ν] = V[ξ, ν][t, c] @ U[ξ, ν][c, k] (4 batched per
    row ξ), and the output transform Aᵀ M A, copied into the NCHW result. Extra memory: the
    result's size plus ``spare`` numbers, the transformed filter included.
    """
    N, C = x.shape[:2]
    K = w.shape[1 if flip else 0]
    P, Q = out_hw
    TP, TQ = _ceil_div(P, 2), _ceil_div(Q, 2)
    xh = _winograd_input(x, pad, TP, TQ)
    y = np.empty((N, K, P, Q), x.dtype)
    # The transformed filter (16·K·C) is kept across blocks when it takes at most half the budget,
    # else one row ξ of it (4·K·C) at a time.
    budget = y.size + spare
    keep = 16 * K * C <= budget // 2
    U = [None] * 4
    bufs = None
    # per tile: rows combined (2·C), V and M of one ξ (4·C, 4·K), M combined along ξ (2 × 4·K),
    # the block's result (4·K)
    for n0, nb, p0, rb in _chunks(N, TP, TQ, 6 * C + 16 * K, budget - (16 if keep else 4) * K * C):
        T = nb * rb * TQ
        sizes = (nb * rb * 2 * (TQ + 1) * C, 4 * T * C, 4 * T * K, 4 * T * K, 4 * T * K, 4 * T * K)
        if bufs is None:  # the first block is the largest
            bufs = [np.empty(n, x.dtype) for n in sizes]
        rows, v, m, z0, z1, out = (buf[:n].reshape(shape) for buf, n, shape in zip(bufs, sizes, (
            (nb, rb, 2, TQ + 1, C), (4, nb, rb, TQ, C), (4, T, K), (4, T, K), (4, T, K),
            (nb, rb, 2, 2, TQ, K))))
        xs = xh[n0 : n0 + nb, 2 * p0 : 2 * (p0 + rb) + 2]
        for xi in range(4):
            _input_transform(xs, xi, rows, v)
            if U[xi] is None:
                U[xi] = _filter_transform(w, xi, flip)
            # z_i = Σ_ξ Aᵀ[i, ξ]·M[ξ] as it comes: z0 = (M0 + M1) + M2, z1 = (M1 - M2) - M3
            np.matmul(v.reshape(4, T, C), U[xi], out=(z0, z1, m, m)[xi])
            if not keep:
                U[xi] = None
            if xi == 1:
                z0 += z1
            elif xi >= 2:
                if xi == 2:
                    z0 += m
                z1 -= m
        for i, z in enumerate((z0, z1)):
            z = z.reshape(4, nb, rb, TQ, K)
            for j, (a, b, c, op) in enumerate(_AT):
                op(z[a], z[b], out=out[:, :, i, j])
                op(out[:, :, i, j], z[c], out=out[:, :, i, j])
        # out[n, tile row, i, j, t, k] is pixel (2·(p0 + tile row) + i, 2·t + j) of image n0 + n;
        # the last tile row and column may reach past the output.
        rows_out = min(2 * rb, P - 2 * p0)
        for j in range(2):
            src = out[:, :, :, j].reshape(nb, 2 * rb, TQ, K)[:, :rows_out, : _ceil_div(Q - j, 2)]
            dst = y[n0 : n0 + nb, :, 2 * p0 : 2 * p0 + rows_out, j::2]
            if bias is None:
                np.copyto(dst, src.transpose(0, 3, 1, 2))
            else:
                np.add(src.transpose(0, 3, 1, 2), bias.reshape(-1, 1, 1), out=dst)
    return y


# A = [[1, 0], [1, 1], [1, -1], [0, 1]] (Aᵀ's transpose, with its last row's sign moved into the
# filter side: _GG_WGRAD): (a, b, ufunc) per row, dy_a ± dy_b, or dy_a alone where b is None.
_A = ((0, None, None), (0, 1, np.add), (0, 1, np.subtract), (1, None, None))
# dw[k, c, r, s] = Σ_{ξ,ν} M[ξ, ν, k, c]·G'[ξ, r]·G'[ν, s], G' = G with row 3 negated (for _A).
_GG_WGRAD = np.kron(_G * [[1], [1], [1], [-1]], _G * [[1], [1], [1], [-1]])


def _winograd_wgrad(p: Conv2dProblem, x, dy):
    """wgrad of a Winograd layer: dw = Gᵀ[Σ_tiles (A dy Aᵀ) ⊙ (Bᵀ d B)]G, the transpose of fprop's
    F(2×2, 3×3). Per block of tiles and row ξ: the input tiles' transform V (as fprop), dy's 2×2
    tiles' transform E = A dy Aᵀ, and 4 GEMMs M[ξ, ν][k, c] += E[ξ, ν][t, k]ᵀ @ V[ξ, ν][t, c] that
    reduce over the tiles; then one GEMM with G' ⊗ G' maps the 16 elements to the 9 taps, in w's
    layout."""
    N, C, K = p.N, p.C, p.K
    TP, TQ = _ceil_div(p.P, 2), _ceil_div(p.Q, 2)
    xh = _winograd_input(x, p.padding, TP, TQ)
    m = np.empty((4, 4, K, C), dy.dtype)
    bufs = tmp = None
    # per tile: x rows combined (2·C), V of one ξ (4·C), dy's block channels-last and its rows
    # combined (4·K, 2·K), E of one ξ (4·K)
    for n0, nb, p0, rb in _chunks(N, TP, TQ, 6 * C + 10 * K, max(dy.size, 9 * C * K)):
        T = nb * rb * TQ
        sizes = (nb * rb * 2 * (TQ + 1) * C, 4 * T * C, 4 * T * K, 2 * T * K, 4 * T * K)
        if bufs is None:  # the first block is the largest
            bufs = [np.empty(n, x.dtype) for n in sizes]
        rows, v, dyb, dyrows, e = (buf[:n].reshape(shape) for buf, n, shape in zip(bufs, sizes, (
            (nb, rb, 2, TQ + 1, C), (4, nb, rb, TQ, C), (nb, 2 * rb, 2, TQ, K), (nb, rb, 2, TQ, K),
            (4, nb, rb, TQ, K))))
        # dy's block channels-last, columns split by parity as in xh, zero past the output
        rows_dy = min(2 * rb, p.P - 2 * p0)
        dyb[:, rows_dy:] = 0
        for phase in range(2):
            q = _ceil_div(p.Q - phase, 2)
            dyb[:, :, phase, q:] = 0
            np.copyto(dyb[:, :rows_dy, phase, :q],
                      dy[n0 : n0 + nb, :, 2 * p0 : 2 * p0 + rows_dy, phase::2].transpose(0, 2, 3, 1))
        xs = xh[n0 : n0 + nb, 2 * p0 : 2 * (p0 + rb) + 2]
        for xi in range(4):
            _input_transform(xs, xi, rows, v)
            a, b, op = _A[xi]
            src = dyb[:, a::2] if b is None else op(dyb[:, a::2], dyb[:, b::2], out=dyrows)
            for nu, (c, d, op_col) in enumerate(_A):
                if d is None:
                    np.copyto(e[nu], src[:, :, c])
                else:
                    op_col(src[:, :, c], src[:, :, d], out=e[nu])
            et = e.reshape(4, T, K).transpose(0, 2, 1)
            if n0 == 0 and p0 == 0:
                np.matmul(et, v.reshape(4, T, C), out=m[xi])
            else:
                tmp = np.matmul(et, v.reshape(4, T, C), out=tmp)
                m[xi] += tmp
    del bufs, tmp
    return np.matmul(m.reshape(16, K * C).T, _GG_WGRAD.astype(dy.dtype)).reshape(p.w_shape)


# -- layouts ------------------------------------------------------------------------------------


def _grouped_channels_last(a, groups: int):
    """a[N, G·Cg, H, W] viewed as [G, N, H, W, Cg] (no copy)."""
    N, C, H, W = a.shape
    return a.reshape(N, groups, C // groups, H, W).transpose(1, 0, 3, 4, 2)


def _to_nchw(out, y, bias):
    """Write out[G, N, P, Q, Kg] into y[N, G·Kg, P, Q], adding bias[G·Kg] on the way."""
    G, N, P, Q, Kg = out.shape
    src = out.transpose(1, 0, 4, 2, 3)
    dst = y.reshape(N, G, Kg, P, Q)
    if bias is None:
        np.copyto(dst, src)
    else:
        np.add(src, bias.reshape(G, Kg, 1, 1), out=dst)


def _pointwise_product(m, a, out):
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


def _is_pointwise(p: Conv2dProblem) -> bool:
    """1×1 filter, no padding: every op is a matrix product per image in NCHW as it stands."""
    return p.R == 1 and p.S == 1 and not any(p.padding)


def _activate_inplace(y, activation):
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


# -- the ops ------------------------------------------------------------------------------------


def fprop(p: Conv2dProblem, x, w, bias=None, activation=None):
    G, Cg, Kg = p.groups, p.C_per_group, p.K_per_group
    if _is_pointwise(p):
        y = np.empty(p.y_shape, x.dtype)
        sh, sw = p.stride
        xs = np.ascontiguousarray(x[:, :, ::sh, ::sw]).reshape(p.N, G, Cg, p.P * p.Q)
        _pointwise_product(w.reshape(G, Kg, Cg), xs, y.reshape(p.N, G, Kg, p.P * p.Q))
        if bias is not None:
            y += bias.reshape(-1, 1, 1)
    elif _uses_winograd(p, "fprop") and _winograd_safe(x, w, Cg * 9):
        y = _winograd_correlate(x, w, p.padding, (p.P, p.Q), w.size, bias)
    elif _uses_im2col(Cg, p.R, p.S, p.stride, p.dilation, (p.P, p.Q)):
        y = _im2col_correlate(x, w.reshape(G, Kg, -1), p.padding, p.stride, p.dilation, p.R, p.S,
                              (p.P, p.Q), w.size)
        if bias is not None:
            y += bias.reshape(-1, 1, 1)
    else:
        # wt[g, r, s, c, k] = w[g·Kg + k, c, r, s]: (s, c) contiguous, as the folded taps read.
        wt = np.ascontiguousarray(w.reshape(G, Kg, Cg, p.R, p.S).transpose(0, 3, 4, 2, 1))
        out = _correlate(
            _grouped_channels_last(x, G), wt, p.padding, p.stride, p.dilation, (p.P, p.Q)
        )
        y = np.empty(p.y_shape, x.dtype)  # allocated after the shifted input is freed
        _to_nchw(out, y, bias)
    _activate_inplace(y, activation)
    return y


def _dgrad_phase(P: int, H: int, pad_lo: int, stride: int, dil: int, R: int, a: int):
    """One axis of strided dgrad's phase a: padded-input rows hp ≡ a (mod stride).

    Row hp = p·stride + r·dil receives dy row p = i - m_r for hp = i·stride + a, from the taps with
    r·dil ≡ a, where m_r = (r·dil - a) / stride. Listed by decreasing r, those taps are a stride-1
    correlation of dy with dilation step·dil/stride (step: spacing of such r). Returns (taps,
    dilation, dy padding (before, after), rows out), or None when no dx row or no tap falls in the
    phase.
    """
    taps = [r for r in range(R - 1, -1, -1) if (r * dil) % stride == a]
    i0 = _ceil_div(pad_lo - a, stride)  # first phase row inside dx: i·stride + a ≥ pad_lo
    rows = _ceil_div(pad_lo + H - a, stride) - i0
    if not taps or rows <= 0:
        return None
    m_max = (taps[0] * dil - a) // stride
    step_dil = (taps[0] - taps[1]) * dil // stride if len(taps) > 1 else 1
    before = m_max - i0  # dy row i - m_max is row 0 of the correlation's window for output i
    after = rows + (len(taps) - 1) * step_dil - P - before
    return taps, step_dil, (before, after), rows


def _taps(taps):
    """The decreasing, evenly spaced filter rows ``taps`` as a slice."""
    step = taps[0] - taps[1] if len(taps) > 1 else 1
    return slice(taps[0], taps[-1] - 1 if taps[-1] > 0 else None, -step)


def _winograd_safe(a, b, terms: int) -> bool:
    """Whether Winograd may run on operands a and b of a reduction of ``terms`` products: both
    finite, each operand's transform (a sum of at most 4 of its numbers) below the dtype's largest
    number, and so is max|a|·max|b|·terms·81, a bound on every later intermediate (transformed
    operands ≤ 4·max and ≤ 2.25·max, output transform sums ≤ 9 terms). So no intermediate
    overflows where the direct sum would not; max and min propagate NaN, so one test covers both."""
    ma, mb = (max(float(v.max()), -float(v.min())) for v in (a, b))
    largest = float(np.finfo(a.dtype).max)
    return bool(np.isfinite(ma * mb)) and 4 * max(ma, mb) < largest and ma * mb * terms * 81 < largest


def _all_finite(*arrays) -> bool:
    """No NaN or inf in any array (max and min propagate both; unlike a sum they cannot overflow,
    and unlike np.isfinite(a).all() they need no mask)."""
    return all(np.isfinite(a.max()) and np.isfinite(a.min()) for a in arrays)


def _scattered_dgrad(p: Conv2dProblem, dy, w, bias):
    """dgrad as col2im: per block of images (or band of dy rows), one GEMM per image and group,
    cols[(c, r, s), (p, q)] = Σ_k w[k, (c, r, s)]·dy[k, (p, q)], then each tap's columns added into
    its window of the padded dx. Where dx has few channels per group and dy many (the stem on RGB:
    the other forms are GEMMs 3 wide), for tiny strided layers (dx under _MIN_BLOCK numbers: the
    sh·sw phases' fixed costs outweigh their work; the seeds' 4×4 stride 2: 0.071 against 0.052
    ms), and for dy or w holding NaN or inf: the other forms
    multiply w by zeros that lie outside dy (0·inf = NaN where PyTorch has none); this one
    multiplies real dy elements only, as PyTorch and the kernels do."""
    G, Cg, Kg = p.groups, p.C_per_group, p.K_per_group
    R, S, Q = p.R, p.S, p.Q
    (sh, sw), (dh, dw), (top, bottom, left, right) = p.stride, p.dilation, p.padding
    dxp = np.zeros((p.N, G, Cg, p.H + top + bottom, p.W + left + right), dy.dtype)
    dyg = dy.reshape(p.N, G, Kg, p.P * Q)
    wT = w.reshape(G, Kg, Cg * R * S).transpose(0, 2, 1)
    cols = None
    for n0, nb, p0, rb in _chunks(p.N, p.P, Q, G * Cg * R * S, dxp.size):
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


def dgrad(p: Conv2dProblem, dy, w, bias=None):
    G, Cg, Kg = p.groups, p.C_per_group, p.K_per_group
    (sh, sw), (dh, dw) = p.stride, p.dilation
    tiny_strided = sh * sw > 1 and p.N * p.C * p.H * p.W < _MIN_BLOCK
    if Cg < 16 <= Kg or tiny_strided or not _all_finite(dy, w):
        return _scattered_dgrad(p, dy, w, bias)
    if _is_pointwise(p) and p.stride == (1, 1) and (p.H, p.W) == (p.P, p.Q):
        dx = np.empty(p.x_shape, dy.dtype)
        wT = w.reshape(G, Kg, Cg).transpose(0, 2, 1)
        _pointwise_product(wT, dy.reshape(p.N, G, Kg, p.P * p.Q), dx.reshape(p.N, G, Cg, p.H * p.W))
        if bias is not None:
            dx += bias.reshape(-1, 1, 1)
        return dx
    top, left = p.padding[0], p.padding[2]
    if _uses_winograd(p, "dgrad") and _winograd_safe(dy, w, Kg * 9):
        # the correlation of dy with the flipped, transposed filter
        pad_h = _dgrad_phase(p.P, p.H, top, 1, 1, 3, 0)[2]
        pad_w = _dgrad_phase(p.Q, p.W, left, 1, 1, 3, 0)[2]
        return _winograd_correlate(dy, w, pad_h + pad_w, (p.H, p.W), w.size, bias, flip=True)
    im2col = _uses_im2col(Kg, p.R, p.S, (1, 1), p.dilation, (p.H, p.W))
    if im2col:
        # wT[g, c, k, r, s] = w[g·Kg + k, c, r, s]: the filter with K and C swapped.
        wT = w.reshape(G, Kg, Cg, p.R, p.S).transpose(0, 2, 1, 3, 4)
    else:
        dyg = _grouped_channels_last(dy, G)
        if sh * sw > 1:  # every phase reads dy: transpose it once, so each phase's copy is contiguous
            dyg = np.ascontiguousarray(dyg)
        # wT[g, r, s, k, c] = w[g·Kg + k, c, r, s]: the filter with K and C swapped.
        wT = w.reshape(G, Kg, Cg, p.R, p.S).transpose(0, 3, 4, 1, 2)
    dx = None
    # Only the phases that hold a dx row and column (a stride far beyond H leaves most empty).
    for a in sorted({(h + top) % sh for h in range(min(p.H, sh))}):
        phase_h = _dgrad_phase(p.P, p.H, top, sh, dh, p.R, a)
        for b in sorted({(w_ + left) % sw for w_ in range(min(p.W, sw))}):
            phase_w = _dgrad_phase(p.Q, p.W, left, sw, dw, p.S, b)
            out = None
            if phase_h is not None and phase_w is not None:
                taps_h, dil_h, pad_h, rows = phase_h
                taps_w, dil_w, pad_w, cols = phase_w
                if im2col:
                    wm = np.ascontiguousarray(wT[:, :, :, _taps(taps_h), _taps(taps_w)])
                    out = _im2col_correlate(dy, wm.reshape(G, Cg, -1), pad_h + pad_w, (1, 1),
                                            (dil_h, dil_w), len(taps_h), len(taps_w),
                                            (rows, cols), 0)
                else:
                    wt = np.ascontiguousarray(wT[:, _taps(taps_h), _taps(taps_w)])
                    out = _correlate(dyg, wt, pad_h + pad_w, (1, 1), (dil_h, dil_w), (rows, cols))
            if dx is None:  # stride-1 im2col: the one phase is all of dx
                dx = out if im2col and sh * sw == 1 else np.empty(p.x_shape, dy.dtype)
            # dx rows h ≡ (a - top) (mod sh) belong to phase a, columns likewise.
            dst = dx[:, :, (a - top) % sh :: sh, (b - left) % sw :: sw]
            if out is None:
                dst[...] = 0 if bias is None else bias.reshape(-1, 1, 1)
            elif not im2col:
                _to_nchw(out, dst, bias)
            elif bias is not None:
                np.add(out, bias.reshape(-1, 1, 1), out=dst)
            elif out is not dx:
                np.copyto(dst, out)
    return dx


def _im2col_wgrad(p: Conv2dProblem, x, dy):
    """wgrad by chunked im2col: the images side by side in the reduction, into w's layout."""
    G, Cg, Kg = p.groups, p.C_per_group, p.K_per_group
    R, S, Q = p.R, p.S, p.Q
    CRS = Cg * R * S
    xp = _padded(x, p.padding, p.stride, p.dilation, R, S, (p.P, Q))
    # dyt[g, k, n, pq]: the reduction runs over images and pixels together.
    dyt = np.ascontiguousarray(dy.reshape(p.N, G, Kg, -1).transpose(1, 2, 0, 3))
    dw = np.empty((G, Kg, CRS), dy.dtype)  # dw[g, k, (c, r, s)]: w's layout
    cols = tmp = None
    for n0, nb, p0, rb in _chunks(p.N, p.P, Q, G * CRS, max(dy.size, dw.size)):
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


def wgrad(p: Conv2dProblem, x, dy):
    G, Cg, Kg = p.groups, p.C_per_group, p.K_per_group
    if _is_pointwise(p):
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
    if _uses_winograd(p, "wgrad") and _winograd_safe(x, dy, p.N * p.P * p.Q):
        return _winograd_wgrad(p, x, dy)
    if G > 1 and (Cg, Kg, p.stride) == (1, 1, (1, 1)):
        dw = _depthwise_wgrad(p, x, dy)
        if np.isfinite(dw).all():  # else x or dy holds NaN or inf: as below
            return dw
    # The shifted GEMM also multiplies input pixels that only its cropped virtual outputs read by
    # zeros (0·inf = NaN); im2col reads what real outputs read, so NaN and inf go where PyTorch's do.
    if _uses_im2col(Cg, p.R, p.S, p.stride, p.dilation, (p.P, p.Q)) or not _all_finite(x, dy):
        return _im2col_wgrad(p, x, dy)
    buf, g = _shifted_input(
        _grouped_channels_last(x, G), p.padding, p.stride, p.dilation, p.R, p.S, (p.P, p.Q)
    )
    # dy on fprop's virtual output grid, zero where the grid has no valid output.
    dy_grid = np.zeros((G, g.M * g.T, Kg), dy.dtype)
    dy_valid = dy_grid[:, : g.L].reshape(G, g.N, g.Pv, g.Qv, Kg)[:, :, : p.P, : p.Q]
    np.copyto(dy_valid, _grouped_channels_last(dy, G))
    dy_phase = dy_grid.reshape(G, g.M, g.T, Kg)
    dwt = np.zeros((G, p.R, p.S, Cg, Kg), dy.dtype)  # dwt[g, r, s, c, k]
    for rows, s0, t, a in _tap_views(buf, g, p.R, p.S, _stacks_rows(g, p.R, p.S, Kg)):
        dwt[:, rows, s0 : s0 + g.fold] += np.matmul(
            a.transpose(0, 2, 1), dy_phase[:, :, t]
        ).reshape(G, -1, g.fold, Cg, Kg)
    return np.ascontiguousarray(dwt.transpose(0, 4, 3, 1, 2)).reshape(p.w_shape)


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


class _NumpyBackend:
    name = "numpy"
    xp = np
    fprop = staticmethod(fprop)
    dgrad = staticmethod(dgrad)
    wgrad = staticmethod(wgrad)
    bias_grad = staticmethod(bias_grad)
    relu = staticmethod(relu)
    relu_backward = staticmethod(relu_backward)
    sigmoid = staticmethod(sigmoid)
    sigmoid_backward = staticmethod(sigmoid_backward)


BACKEND = _NumpyBackend()
