"""Winograd F(2×2, 3×3) (Lavin & Gray) for 3×3 stride-1 layers with many channels each way.

Each 2×2 output tile is Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A of its 4×4 input tile d, so the 36 multiplies per
channel pair of a direct 3×3 tile become 16 — 16 GEMMs of reduction C (one per transform element)
on 2.25× fewer multiplies. The padded input is stored channels-last with its columns split by
parity, so a tile column's input columns are, for all tiles, one contiguous run, and the input and
output transforms (sums and differences of tile rows, then columns) are long contiguous NumPy
passes, vectorised over all tiles of a block; the filter transform is one small GEMM with G ⊗ G;
Aᵀ's row sums are accumulated as each row ξ of GEMMs is done. dgrad is fprop's correlation on dy
with the flipped, transposed filter. wgrad is the transposed form, dw = Gᵀ[Σ_tiles (A dy Aᵀ) ⊙
(Bᵀ d B)]G: 16 GEMMs that reduce over the tiles, then G ⊗ G back to the 9 taps. Blocks of images or
bands of tile rows keep the extra memory within the result's size plus the filter's.

The transforms' coefficients are 0, ±1 and ±½: small integers stay exact while the transformed sums
(up to ~4× the direct ones) stay below 2^24 in float32 (fprop and dgrad in practice; wgrad's long
tile sums can pass it past ~10^6 reduced pixels), and float32 errors stay within a few times the
direct sum's. Not for NaN or inf inputs (a tile transform mixes an inf with its neighbours:
inf - inf = NaN where the direct sum has inf), nor for numbers so large that a transform could
overflow where the direct sum does not (``safe``); those take the direct paths.
"""
from __future__ import annotations

import numpy as np

from ...problem import Conv2dProblem
from .common import ceil_div, chunks
from .phases import phase


def safe(a, b, terms: int) -> bool:
    """Whether Winograd may run on operands a and b of a reduction of ``terms`` products: both
    finite, each operand's transform (a sum of at most 4 of its numbers) below the dtype's largest
    number, and so is max|a|·max|b|·terms·81, a bound on every later intermediate (transformed
    operands ≤ 4·max and ≤ 2.25·max, output transform sums ≤ 9 terms). So no intermediate
    overflows where the direct sum would not; max and min propagate NaN, so one test covers both."""
    ma, mb = (max(float(v.max()), -float(v.min())) for v in (a, b))
    largest = float(np.finfo(a.dtype).max)
    return bool(np.isfinite(ma * mb)) and 4 * max(ma, mb) < largest and ma * mb * terms * 81 < largest


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


def _input(x, pad, TP: int, TQ: int):
    """x[N, C, Hin, Win] zero-padded to the 2·TP + 2 rows and 2·TQ + 2 columns that TP × TQ tiles
    read, channels-last with the columns split by parity: xh[n, h, φ, i, c] = x_padded[n, c, h,
    2i + φ]. Input column 2t + j of tile column t is then (φ, i) = (j % 2, t + j // 2): for all
    tiles, one contiguous run. ``pad`` = (top, bottom, left, right) may be negative (a crop)."""
    N, C, Hin, Win = x.shape
    top, left = pad[0], pad[2]
    Hx = 2 * TP + 2
    xh = np.zeros((N, Hx, 2, TQ + 1, C), x.dtype)
    h_lo, h_hi = max(top, 0), min(Hx, top + Hin)
    for parity in range(2):
        # padded column 2i + parity holds input column 2i + parity - left
        i_lo = max(ceil_div(left - parity, 2), 0)
        i_hi = min(ceil_div(left + Win - parity, 2), TQ + 1)
        if h_lo < h_hi and i_lo < i_hi:
            w_lo = 2 * i_lo + parity - left
            xh[:, h_lo:h_hi, parity, i_lo:i_hi] = x[:, :, h_lo - top : h_hi - top,
                                                    w_lo : w_lo + 2 * (i_hi - i_lo - 1) + 1 : 2
                                                    ].transpose(0, 2, 3, 1)
    return xh


def _input_transform(xs, xi: int, rows, v):
    """v[ν, n, i, t, c] = (Bᵀ d B)[ξ, ν] of the tiles (i, t) of a block xs[nb, 2·rb + 2, 2, TQ + 1, C]
    of _input, for one ξ: its rows combined into rows[nb, rb, 2, TQ + 1, C], then columns."""
    rb, TQ = rows.shape[1], v.shape[3]
    a, b, op = _BT[xi]
    op(xs[:, a : a + 2 * rb : 2], xs[:, b : b + 2 * rb : 2], out=rows)
    for nu, (c, d, op_col) in enumerate(_BT):
        op_col(rows[:, :, c % 2, c // 2 : c // 2 + TQ], rows[:, :, d % 2, d // 2 : d // 2 + TQ],
               out=v[nu])


def _correlate(x, w, pad, out_hw, spare, bias=None, flip=False):
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
    TP, TQ = ceil_div(P, 2), ceil_div(Q, 2)
    xh = _input(x, pad, TP, TQ)
    y = np.empty((N, K, P, Q), x.dtype)
    # The transformed filter (16·K·C) is kept across blocks when it takes at most half the budget,
    # else one row ξ of it (4·K·C) at a time.
    budget = y.size + spare
    keep = 16 * K * C <= budget // 2
    U = [None] * 4
    bufs = None
    # per tile: rows combined (2·C), V and M of one ξ (4·C, 4·K), M combined along ξ (2 × 4·K),
    # the block's result (4·K)
    for n0, nb, p0, rb in chunks(N, TP, TQ, 6 * C + 16 * K, budget - (16 if keep else 4) * K * C):
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
            src = out[:, :, :, j].reshape(nb, 2 * rb, TQ, K)[:, :rows_out, : ceil_div(Q - j, 2)]
            dst = y[n0 : n0 + nb, :, 2 * p0 : 2 * p0 + rows_out, j::2]
            if bias is None:
                np.copyto(dst, src.transpose(0, 3, 1, 2))
            else:
                np.add(src.transpose(0, 3, 1, 2), bias.reshape(-1, 1, 1), out=dst)
    return y


def fprop(p: Conv2dProblem, x, w, bias):
    return _correlate(x, w, p.padding, (p.P, p.Q), w.size, bias)


def dgrad(p: Conv2dProblem, dy, w, bias):
    """The correlation of dy with the flipped, transposed filter (the one stride phase's padding)."""
    pad_h = phase(p.P, p.H, p.padding[0], 1, 1, 3, 0)[2]
    pad_w = phase(p.Q, p.W, p.padding[2], 1, 1, 3, 0)[2]
    return _correlate(dy, w, pad_h + pad_w, (p.H, p.W), w.size, bias, flip=True)


# A = [[1, 0], [1, 1], [1, -1], [0, 1]] (Aᵀ's transpose, with its last row's sign moved into the
# filter side: _GG_WGRAD): (a, b, ufunc) per row, dy_a ± dy_b, or dy_a alone where b is None.
_A = ((0, None, None), (0, 1, np.add), (0, 1, np.subtract), (1, None, None))
# dw[k, c, r, s] = Σ_{ξ,ν} M[ξ, ν, k, c]·G'[ξ, r]·G'[ν, s], G' = G with row 3 negated (for _A).
_GG_WGRAD = np.kron(_G * [[1], [1], [1], [-1]], _G * [[1], [1], [1], [-1]])


def wgrad(p: Conv2dProblem, x, dy):
    """dw = Gᵀ[Σ_tiles (A dy Aᵀ) ⊙ (Bᵀ d B)]G, the transpose of fprop's F(2×2, 3×3). Per block of
    tiles and row ξ: the input tiles' transform V (as fprop), dy's 2×2 tiles' transform E = A dy Aᵀ,
    and 4 GEMMs M[ξ, ν][k, c] += E[ξ, ν][t, k]ᵀ @ V[ξ, ν][t, c] that reduce over the tiles; then one
    GEMM with G' ⊗ G' maps the 16 elements to the 9 taps, in w's layout."""
    N, C, K = p.N, p.C, p.K
    TP, TQ = ceil_div(p.P, 2), ceil_div(p.Q, 2)
    xh = _input(x, p.padding, TP, TQ)
    m = np.empty((4, 4, K, C), dy.dtype)
    bufs = tmp = None
    # per tile: x rows combined (2·C), V of one ξ (4·C), dy's block channels-last and its rows
    # combined (4·K, 2·K), E of one ξ (4·K)
    for n0, nb, p0, rb in chunks(N, TP, TQ, 6 * C + 10 * K, max(dy.size, 9 * C * K)):
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
        for parity in range(2):
            q = ceil_div(p.Q - parity, 2)
            dyb[:, :, parity, q:] = 0
            np.copyto(dyb[:, :rows_dy, parity, :q],
                      dy[n0 : n0 + nb, :, 2 * p0 : 2 * p0 + rows_dy, parity::2].transpose(0, 2, 3, 1))
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
