"""The helpers every formulation shares: ceiling division, the blocks of images or rows that keep
the extra memory within a budget, copying into a zero-padded buffer, and the test for NaN or inf."""
from __future__ import annotations

import numpy as np


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


MIN_BLOCK = 1 << 16  # numbers: below this, blocks are not split (tiny layers)


def chunks(N: int, P: int, Q: int, per_pixel: int, budget: int):
    """(n0, nb, p0, rb): blocks of nb images × rb output rows that need at most ``budget`` numbers
    (or MIN_BLOCK, so that a tiny layer is one block) at ``per_pixel`` numbers per output pixel — whole
    images while one fits, else bands of rows of one image (at least one row); blocks of near-equal
    size, so that no GEMM is a thin tail."""
    pixels = max(max(budget, MIN_BLOCK) // per_pixel, Q)
    if pixels >= P * Q:
        nb, rb = ceil_div(N, ceil_div(N, pixels // (P * Q))), P
    else:
        nb, rb = 1, ceil_div(P, ceil_div(P, pixels // Q))
    for n0 in range(0, N, nb):
        for p0 in range(0, P, rb):
            yield n0, min(nb, N - n0), p0, min(rb, P - p0)


def pad_into(xp, x, top: int, left: int):
    """Copy x[..., Hin, Win] into the zero-padded xp[..., Hx, Wx], its pixel (h, w) to (h + top,
    w + left) (either may be negative: a crop); what falls outside xp is dropped."""
    Hin, Win = x.shape[-2:]
    Hx, Wx = xp.shape[-2:]
    h_lo, h_hi = max(top, 0), min(Hx, top + Hin)
    w_lo, w_hi = max(left, 0), min(Wx, left + Win)
    if h_lo < h_hi and w_lo < w_hi:
        xp[..., h_lo:h_hi, w_lo:w_hi] = x[..., h_lo - top : h_hi - top, w_lo - left : w_hi - left]


def all_finite(*arrays) -> bool:
    """No NaN or inf in any array (max and min propagate both; unlike a sum they cannot overflow,
    and unlike np.isfinite(a).all() they need no mask)."""
    return all(np.isfinite(a.max()) and np.isfinite(a.min()) for a in arrays)
