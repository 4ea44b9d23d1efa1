"""The named edge problems every backend is checked on, and the input generators.

Each entry is ``name: dict(x=(N, C, H, W), w=(K, C/groups, R, S), **conv2d keywords)``. A comment
says what each one is there to catch. ``RESNET`` holds real layer shapes (slow on the emulator).
"""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv.problem import conv_problem

EDGE = {
    # the smallest GEMM: one output pixel per image, one tap
    "1x1_kernel": dict(x=(2, 3, 5, 5), w=(4, 3, 1, 1)),
    # R != S and H != W: a swapped index shows
    "rect_kernel": dict(x=(2, 3, 7, 9), w=(5, 3, 2, 4)),
    # asymmetric four-tuple padding (top, bottom, left, right)
    "asym_pad": dict(x=(1, 2, 6, 5), w=(3, 2, 3, 3), padding=(2, 0, 1, 3)),
    # padding larger than the kernel reach: whole output rows see only zeros
    "big_pad": dict(x=(1, 2, 3, 3), w=(2, 2, 2, 2), padding=3),
    # stride larger than the kernel: input pixels no tap ever reads (dgrad must give them 0)
    "stride_gt_kernel": dict(x=(2, 2, 9, 8), w=(3, 2, 2, 2), stride=3),
    # different strides per axis, with the last window ending before the edge
    "stride_hw": dict(x=(1, 3, 10, 7), w=(2, 3, 3, 2), stride=(2, 3), padding=1),
    # dilation: taps spread out, and along with stride the phases of dgrad interleave
    "dilation": dict(x=(2, 2, 9, 9), w=(3, 2, 3, 3), dilation=2, padding=2),
    "dilation_stride": dict(x=(1, 3, 11, 10), w=(2, 3, 3, 2), stride=2, dilation=(2, 3), padding=1),
    # groups: block-diagonal weight
    "groups": dict(x=(2, 6, 6, 6), w=(4, 3, 3, 3), groups=2, padding=1),
    # depthwise: one channel per group, K = 2·C
    "depthwise": dict(x=(2, 4, 7, 7), w=(8, 1, 3, 3), groups=4, padding=1, stride=2),
    # 'same' with an even kernel: the extra padding goes to bottom/right, as in PyTorch
    "same_even": dict(x=(1, 2, 6, 7), w=(3, 2, 4, 2), padding="same"),
    # output smaller than any tile: P = Q = 1
    "one_output_pixel": dict(x=(3, 4, 3, 3), w=(5, 4, 3, 3)),
    # N = 1 and C, K not multiples of any tile width (17, 33)
    "odd_channels": dict(x=(1, 17, 6, 6), w=(33, 17, 3, 3), padding=1),
    # kernel exactly as large as the input
    "kernel_eq_input": dict(x=(2, 2, 4, 5), w=(3, 2, 4, 5)),
    # the seeds' second layer: 4x4 stride 2
    "seed_4x4_s2": dict(x=(3, 5, 8, 8), w=(6, 5, 4, 4), stride=2),
    # the epilogues' direct 128-bit stores (whole sectors from the accumulators): fprop P·Q = 64,
    # dgrad stride 1 with W = 8, wgrad C/groups·R·S = 72; two groups, 6 channels of a tile each
    "epilogue_aligned": dict(x=(2, 16, 8, 8), w=(12, 8, 3, 3), groups=2, padding=1),
    # the epilogues through shared memory, 128-bit: fprop P·Q = 36 (three images in one tile),
    # dgrad stride (2, 1): runs are phase rows of W = 12, wgrad C·R·S = 12
    "epilogue_vector": dict(x=(3, 4, 6, 12), w=(5, 4, 3, 1), stride=(2, 1), padding=(1, 0)),
    # ... and a value a lane: fprop P·Q = 169 (odd: each channel's run starts mid-sector, and
    # 128-pixel tiles cut images), dgrad stride 1 over whole 13×13 images, wgrad C·R·S = 27
    "epilogue_odd": dict(x=(2, 3, 13, 13), w=(6, 3, 3, 3), padding=1),
}

# The staging variants of the tensor-core kernels (kernel_backend.tensor_staging; EDGE takes the
# plain ones): tap-major where the reduction's channels are a multiple of 32, and 16-byte loads
# where fprop's w or wgrad's dy is contiguous along the reduction in whole 16-byte runs.
TENSOR_STAGING = {
    # fprop and wgrad tap-major (C = 32); no 16-byte loads (3×3 taps; P·Q = 30)
    "tap_major": dict(x=(2, 32, 6, 5), w=(40, 32, 3, 3), padding=1),
    # dgrad tap-major (K = 32), the others plain (C = 8)
    "dgrad_tap_major": dict(x=(2, 8, 8, 8), w=(32, 8, 3, 3), padding=1),
    # 1×1: tap-major and 16-byte loads together, every op; several k-tiles (wgrad: N·P·Q = 128)
    "1x1_tap_vector": dict(x=(2, 64, 8, 8), w=(32, 64, 1, 1)),
    # groups and stride phases tap-major (32 channels a group), partial pixel tiles
    "groups_stride": dict(x=(1, 64, 5, 5), w=(64, 32, 3, 3), groups=2, stride=2, padding=1),
    # the halo tile too (kernel_backend.halo_fits: W even): a patch spanning images, K = 40 of a
    # 128-wide tile, padding, a 3×2 filter
    "halo": dict(x=(2, 32, 6, 8), w=(40, 32, 3, 2), padding=(1, 1, 0, 1)),
    # wgrad's halo tile (kernel_backend.wgrad_halo_fits: 3×3, P·Q = 48), k-tiles across images
    "wgrad_halo": dict(x=(2, 32, 6, 8), w=(40, 32, 3, 3), padding=1),
    # and its 2-byte loads where W is odd ('halo_odd': W = 7, P·Q = 49)
    "wgrad_halo_odd": dict(x=(2, 32, 7, 7), w=(40, 32, 3, 3), padding=1),
}

# Channels that fill the 64×64 tiles, the ones 'auto' picks on real layers (GPU tests; the emulator
# runs the same tiles, forced, on EDGE).
WIDE = {
    "wide_3x3": dict(x=(2, 64, 9, 9), w=(64, 64, 3, 3), padding=1),
    "wide_3x3_s2": dict(x=(1, 64, 12, 11), w=(128, 64, 3, 3), padding=1, stride=2),
    "wide_grouped": dict(x=(1, 128, 7, 7), w=(128, 64, 3, 3), groups=2, padding=1),
}

RESNET = {
    "res2_3x3": dict(x=(1, 64, 56, 56), w=(64, 64, 3, 3), padding=1),
    "res3_3x3_s2": dict(x=(1, 128, 56, 56), w=(128, 128, 3, 3), padding=1, stride=2),
    "res4_1x1_s2": dict(x=(1, 512, 28, 28), w=(256, 512, 1, 1), stride=2),
}

CONV_KEYS = ("stride", "padding", "dilation", "groups")


def problem(case: dict, dtype: str = "float64"):
    """The checked problem of an ``EDGE`` / ``RESNET`` entry."""
    return conv_problem(case["x"], case["w"], dtype=dtype, **conv_kwargs(case))


def conv_kwargs(case: dict) -> dict:
    return {k: case[k] for k in CONV_KEYS if k in case}


def conv_inputs(p, seed, maker, with_bias=True):
    """x, w, dy and a bias per op (bias_k for fprop, bias_c for dgrad) of problem p."""
    rng = np.random.default_rng(seed)
    return dict(
        x=maker(rng, p.x_shape, p.dtype), w=maker(rng, p.w_shape, p.dtype),
        dy=maker(rng, p.y_shape, p.dtype),
        bias_k=maker(rng, (p.K,), p.dtype) if with_bias else None,
        bias_c=maker(rng, (p.C,), p.dtype) if with_bias else None,
    )


def run_op(impl, op, p, a, activation=None):
    """``op`` of ``impl`` (a backend or gpuconv.reference: they share the signatures) on ``a``."""
    if op == "fprop":
        return impl.fprop(p, a["x"], a["w"], a["bias_k"], activation)
    if op == "dgrad":
        return impl.dgrad(p, a["dy"], a["w"], a["bias_c"])
    return impl.wgrad(p, a["x"], a["dy"])


def run_tensor_op(be, op, p, a, activation=None, precision="highest"):
    """``op`` of a kernel backend's tensor-core kernels on ``a`` (``run_op``'s arrays), or None where
    none takes ``p``."""
    if op == "fprop":
        return be.fprop_tensor_cores(p, a["x"], a["w"], a["bias_k"], activation, precision)
    if op == "dgrad":
        return be.dgrad_tensor_cores(p, a["dy"], a["w"], a["bias_c"], precision)
    return be.wgrad_tensor_cores(p, a["x"], a["dy"], precision)


def rel_err(a, b) -> float:
    """max |a - b| / max |b|, in float64 (0 for empty arrays)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-300) if b.size else 0.0


def small_ints(rng, shape, dtype):
    """Integers in [-3, 3]: float32 sums of their products are exact, so results compare with ==."""
    return rng.integers(-3, 4, size=shape).astype(dtype)


def normal(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def float32_tolerance(reduction_length: int) -> float:
    """Absolute tolerance for float32 results of unit-normal inputs, compared with float64.

    A float32 sum of L products has error at most about L·u·Σ|a·b| (u = 2^-24); for unit normals
    Σ|a·b| ≈ 0.64·L, but the rounding errors have random signs, so the typical error is ~u·L. We allow
    1e-5·L (≈ 170·u·L): far above that, far below the O(1) error of one missing or doubled tap.
    """
    return 1e-5 * max(reduction_length, 1)


def conv_cases(max_hw: int = 9, max_channels: int = 3, max_batch: int = 2):
    """A hypothesis strategy of random valid conv2d cases in the ``EDGE`` format.

    Covers int / pair / four-tuple / 'same' / 'valid' padding, per-axis stride and dilation (stride
    larger than the kernel included), groups and depthwise, and inputs as small as the kernel.
    """
    from hypothesis import strategies as st

    @st.composite
    def case(draw):
        groups = draw(st.integers(1, 3))
        Cg, Kg = draw(st.integers(1, max_channels)), draw(st.integers(1, max_channels))
        R, S = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
        dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        kind = draw(st.sampled_from(["int", "pair", "four", "same", "valid"]))
        if kind == "same":
            stride = (1, 1)
            padding = "same"
            pad = (0, 0)
        elif kind == "valid":
            padding, pad = "valid", (0, 0)
        elif kind == "int":
            padding = draw(st.integers(0, 3))
            pad = (2 * padding, 2 * padding)
        elif kind == "pair":
            padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
            pad = (2 * padding[0], 2 * padding[1])
        else:
            padding = tuple(draw(st.integers(0, 3)) for _ in range(4))
            pad = (padding[0] + padding[1], padding[2] + padding[3])
        # The input must hold the dilated kernel once padded (or 'same' makes it so).
        span = (dilation[0] * (R - 1) + 1, dilation[1] * (S - 1) + 1)
        low = [max(1, span[i] - pad[i]) if kind != "same" else 1 for i in range(2)]
        H = draw(st.integers(low[0], max(low[0], max_hw)))
        W = draw(st.integers(low[1], max(low[1], max_hw)))
        N = draw(st.integers(1, max_batch))
        return dict(x=(N, Cg * groups, H, W), w=(Kg * groups, Cg, R, S), stride=stride,
                    padding=padding, dilation=dilation, groups=groups)

    return case()


def transpose_cases(max_hw: int = 6, max_channels: int = 3, max_batch: int = 2):
    """A hypothesis strategy of random valid conv_transpose2d cases.

    ``x`` is (N, Cin, Hin, Win), ``w`` is (Cin, Cout/groups, R, S); output_padding ranges up to
    max(stride, dilation) - 1 per axis, PyTorch's limit.
    """
    from hypothesis import strategies as st

    @st.composite
    def case(draw):
        groups = draw(st.integers(1, 3))
        Cin, Coutg = groups * draw(st.integers(1, max_channels)), draw(st.integers(1, max_channels))
        R, S = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        output_padding = tuple(draw(st.integers(0, max(stride[i], dilation[i]) - 1))
                               for i in range(2))
        padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
        Hin, Win = draw(st.integers(1, max_hw)), draw(st.integers(1, max_hw))
        N = draw(st.integers(1, max_batch))
        for i, (size, k) in enumerate(((Hin, R), (Win, S))):
            out = (size - 1) * stride[i] - 2 * padding[i] + dilation[i] * (k - 1) \
                + output_padding[i] + 1
            if out <= 0:  # the padding ate the whole output: no valid problem, draw less padding
                padding = (0, padding[1]) if i == 0 else (padding[0], 0)
        return dict(x=(N, Cin, Hin, Win), w=(Cin, Coutg, R, S), stride=stride, padding=padding,
                    output_padding=output_padding, groups=groups, dilation=dilation)

    return case()


def _sass_tools_missing() -> str | None:
    """Why the SASS analyzer cannot run here (NVRTC, nvdisasm or cuobjdump missing), or None."""
    from gpuconv import compile_check, sass

    if not compile_check.nvrtc_available():
        return "NVRTC is not installed (pip install 'gpuconv[nvrtc]')"
    try:
        sass.tool_path("nvdisasm"), sass.tool_path("cuobjdump")
    except sass.ToolMissing as e:
        return str(e)
    return None


# A test that compiles kernels and reads their SASS.
needs_sass_tools = pytest.mark.skipif(_sass_tools_missing() is not None, reason=_sass_tools_missing() or "")
