"""The NumPy backend: every op as BLAS matrix products (depthwise: long vectorised passes), no
Python loop over pixels or images. One module per formulation, each opening with its explanation:

================  ================================================================================
``pointwise``     1×1 filters without padding: a GEMM per image on NCHW as it stands
``winograd``      F(2×2, 3×3) for 3×3 stride-1 layers with many channels each way
``shifted_gemm``  large maps, many channels: GEMMs over strided views of one channels-last copy
``im2col``        short reductions per group and small maps: a chunked im2col in NCHW
``depthwise``     one channel per group at stride 1: each tap a vectorised pass over flat planes
``phases``        dgrad as stride phases, each an im2col or shifted-GEMM correlation on dy
``col2im``        dgrad into few channels from many, of tiny strided layers, of NaN or inf
``common``        ceil_div, the memory-bounded blocks of images or rows, padding, the finite test
``elementwise``   relu, sigmoid, their gradients and bias_grad
================  ================================================================================

This module is the choice among them, per op and layer: each branch below, in order, with its
reason. Timings are at 2 BLAS threads.

Deterministic: a fixed sequence of BLAS calls and NumPy reductions, no threads of our own.
"""
from __future__ import annotations

import numpy as np

from ...problem import Conv2dProblem
from . import col2im, common, depthwise, elementwise, im2col, phases, pointwise, shifted_gemm, winograd
from .common import all_finite, ceil_div

# Channels each way from which Winograd beats the direct forms (measured): its tile transforms cost
# O(C + K) per tile against the GEMMs' O(C·K). dgrad's stride-1 correlation has fprop's form; wgrad
# transforms both x and dy, and its alternative, the shifted GEMM, is at its best on large maps with
# few channels.
WINOGRAD_MIN_C = {"fprop": 32, "dgrad": 32, "wgrad": 128}


def uses_winograd(p: Conv2dProblem, op: str) -> bool:
    """Whether ``op`` of the layer takes Winograd F(2×2, 3×3): 3×3, stride 1, no dilation, one
    group, and enough channels that its GEMMs outweigh the tile transforms. Not for fprop on small
    maps, where the 2×2 tiles reach ≥ 25% past the output (7²: 8² computed) and fprop's im2col is
    one large GEMM (dgrad's has to copy the filter, wgrad's gathers the images: Winograd wins)."""
    tiles = 4 * ceil_div(p.P, 2) * ceil_div(p.Q, 2)
    return ((p.R, p.S, p.stride, p.dilation, p.groups) == (3, 3, (1, 1), (1, 1), 1)
            and min(p.C, p.K) >= WINOGRAD_MIN_C[op]
            and (op != "fprop" or tiles < 1.25 * p.P * p.Q))


def uses_im2col(Cg: int, R: int, S: int, stride, dilation, out_hw) -> bool:
    """Whether a correlation takes the chunked im2col instead of the shifted GEMM: for a short
    reduction per group (a stem on RGB, depthwise) and where the shifted GEMM's padded grid wastes
    a quarter or more of its work (small maps: +31% at 14², +65% at 7²). On large maps the
    im2col's single-threaded R·S·C-per-pixel copy costs more than the shifted GEMM's adds."""
    (sh, sw), (dh, dw), (P, Q) = stride, dilation, out_hw
    grid = (ceil_div((P - 1) * sh + (R - 1) * dh + 1, sh)
            * ceil_div((Q - 1) * sw + (S - 1) * dw + 1, sw))
    # Stride beyond the kernel's reach: the shifted input would carry every pixel no window reads.
    skips = sh > (R - 1) * dh + 1 or sw > (S - 1) * dw + 1
    return Cg < 16 or skips or grid >= 1.25 * P * Q


def is_pointwise(p: Conv2dProblem) -> bool:
    """1×1 filter, no padding: every op is a matrix product per image in NCHW as it stands."""
    return p.R == 1 and p.S == 1 and not any(p.padding)


def fprop(p: Conv2dProblem, x, w, bias=None, activation=None):
    if is_pointwise(p):
        y = pointwise.fprop(p, x, w, bias)
    elif uses_winograd(p, "fprop") and winograd.safe(x, w, p.C_per_group * 9):
        y = winograd.fprop(p, x, w, bias)
    elif uses_im2col(p.C_per_group, p.R, p.S, p.stride, p.dilation, (p.P, p.Q)):
        y = im2col.fprop(p, x, w, bias)  # stride-1 depthwise: the depthwise passes
    else:
        y = shifted_gemm.fprop(p, x, w, bias)
    elementwise.activate_inplace(y, activation)
    return y


def dgrad(p: Conv2dProblem, dy, w, bias=None):
    sh, sw = p.stride
    # Strided layers with dx under MIN_BLOCK numbers: the sh·sw phases' fixed costs outweigh their
    # work (the seeds' 4×4 stride 2: col2im 0.052 ms, phases 0.071 ms).
    tiny_strided = sh * sw > 1 and p.N * p.C * p.H * p.W < common.MIN_BLOCK
    # Few channels per group from many (the stem on RGB: the other forms are GEMMs Cg wide), and
    # NaN or inf, which only the col2im keeps where PyTorch has them.
    if p.C_per_group < 16 <= p.K_per_group or tiny_strided or not all_finite(dy, w):
        return col2im.dgrad(p, dy, w, bias)
    if is_pointwise(p) and p.stride == (1, 1) and (p.H, p.W) == (p.P, p.Q):
        return pointwise.dgrad(p, dy, w, bias)
    if uses_winograd(p, "dgrad") and winograd.safe(dy, w, p.K_per_group * 9):
        return winograd.dgrad(p, dy, w, bias)
    # Each phase is a stride-1 correlation of dy into dx's channels: the same choice as fprop's.
    by_im2col = uses_im2col(p.K_per_group, p.R, p.S, (1, 1), p.dilation, (p.H, p.W))
    return phases.dgrad(p, dy, w, bias, by_im2col)


def wgrad(p: Conv2dProblem, x, dy):
    if is_pointwise(p):
        return pointwise.wgrad(p, x, dy)
    if uses_winograd(p, "wgrad") and winograd.safe(x, dy, p.N * p.P * p.Q):
        return winograd.wgrad(p, x, dy)
    if p.groups > 1 and (p.C_per_group, p.K_per_group, p.stride) == (1, 1, (1, 1)):
        dw = depthwise.wgrad(p, x, dy)
        if np.isfinite(dw).all():  # else x or dy holds NaN or inf: as below
            return dw
    # The shifted GEMM also multiplies input pixels that only its cropped virtual outputs read by
    # zeros (0·inf = NaN); im2col reads what real outputs read, so NaN and inf go where PyTorch's do.
    if uses_im2col(p.C_per_group, p.R, p.S, p.stride, p.dilation, (p.P, p.Q)) or not all_finite(x, dy):
        return im2col.wgrad(p, x, dy)
    return shifted_gemm.wgrad(p, x, dy)


class _NumpyBackend:
    name = "numpy"
    xp = np
    fprop = staticmethod(fprop)
    dgrad = staticmethod(dgrad)
    wgrad = staticmethod(wgrad)
    bias_grad = staticmethod(elementwise.bias_grad)
    relu = staticmethod(elementwise.relu)
    relu_backward = staticmethod(elementwise.relu_backward)
    sigmoid = staticmethod(elementwise.sigmoid)
    sigmoid_backward = staticmethod(elementwise.sigmoid_backward)


BACKEND = _NumpyBackend()
