"""dgrad by stride phases: the same correlation as fprop, run on dy with the transposed, flipped
filter.

Strided dgrad is split into stride_h × stride_w output phases, each a dense stride-1 correlation
over only the taps that reach it (DESIGN.md), so nothing is multiplied by an inserted zero; at
stride 1 the one phase is all of dx. Each phase is a chunked im2col (``im2col.correlate``, which
hands stride-1 depthwise phases to the depthwise passes) or a shifted GEMM
(``shifted_gemm.correlate``), as the dispatch chose for the layer.
"""
from __future__ import annotations

import numpy as np

from ...problem import Conv2dProblem
from . import im2col, shifted_gemm
from .common import ceil_div


def phase(P: int, H: int, pad_lo: int, stride: int, dil: int, R: int, a: int):
    """One axis of strided dgrad's phase a: padded-input rows hp ≡ a (mod stride).

    Row hp = p·stride + r·dil receives dy row p = i - m_r for hp = i·stride + a, from the taps with
    r·dil ≡ a, where m_r = (r·dil - a) / stride. Listed by decreasing r, those taps are a stride-1
    correlation of dy with dilation step·dil/stride (step: spacing of such r). Returns (taps,
    dilation, dy padding (before, after), rows out), or None when no dx row or no tap falls in the
    phase.
    """
    taps = [r for r in range(R - 1, -1, -1) if (r * dil) % stride == a]
    i0 = ceil_div(pad_lo - a, stride)  # first phase row inside dx: i·stride + a ≥ pad_lo
    rows = ceil_div(pad_lo + H - a, stride) - i0
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


def dgrad(p: Conv2dProblem, dy, w, bias, by_im2col: bool):
    """dx phase by phase, each by the chunked im2col (``by_im2col``) or the shifted GEMM."""
    G, Cg, Kg = p.groups, p.C_per_group, p.K_per_group
    (sh, sw), (dh, dw) = p.stride, p.dilation
    top, left = p.padding[0], p.padding[2]
    if by_im2col:
        # wT[g, c, k, r, s] = w[g·Kg + k, c, r, s]: the filter with K and C swapped.
        wT = w.reshape(G, Kg, Cg, p.R, p.S).transpose(0, 2, 1, 3, 4)
    else:
        dyg = shifted_gemm.grouped_channels_last(dy, G)
        if sh * sw > 1:  # every phase reads dy: transpose it once, so each phase's copy is contiguous
            dyg = np.ascontiguousarray(dyg)
        # wT[g, r, s, k, c] = w[g·Kg + k, c, r, s]: the filter with K and C swapped.
        wT = w.reshape(G, Kg, Cg, p.R, p.S).transpose(0, 3, 4, 1, 2)
    dx = None
    # Only the phases that hold a dx row and column (a stride far beyond H leaves most empty).
    for a in sorted({(h + top) % sh for h in range(min(p.H, sh))}):
        phase_h = phase(p.P, p.H, top, sh, dh, p.R, a)
        for b in sorted({(w_ + left) % sw for w_ in range(min(p.W, sw))}):
            phase_w = phase(p.Q, p.W, left, sw, dw, p.S, b)
            out = None
            if phase_h is not None and phase_w is not None:
                taps_h, dil_h, pad_h, rows = phase_h
                taps_w, dil_w, pad_w, cols = phase_w
                if by_im2col:
                    wm = np.ascontiguousarray(wT[:, :, :, _taps(taps_h), _taps(taps_w)])
                    out = im2col.correlate(dy, wm.reshape(G, Cg, -1), pad_h + pad_w, (1, 1),
                                           (dil_h, dil_w), len(taps_h), len(taps_w), (rows, cols), 0)
                else:
                    wt = np.ascontiguousarray(wT[:, _taps(taps_h), _taps(taps_w)])
                    out = shifted_gemm.correlate(dyg, wt, pad_h + pad_w, (1, 1), (dil_h, dil_w),
                                                 (rows, cols))
            if dx is None:  # stride-1 im2col: the one phase is all of dx
                dx = out if by_im2col and sh * sw == 1 else np.empty(p.x_shape, dy.dtype)
            # dx rows h ≡ (a - top) (mod sh) belong to phase a, columns likewise.
            dst = dx[:, :, (a - top) % sh :: sh, (b - left) % sw :: sw]
            if out is None:
                dst[...] = 0 if bias is None else bias.reshape(-1, 1, 1)
            elif not by_im2col:
                shifted_gemm.to_nchw(out, dst, bias)
            elif bias is not None:
                np.add(out, bias.reshape(-1, 1, 1), out=dst)
            elif out is not dx:
                np.copyto(dst, out)
    return dx
