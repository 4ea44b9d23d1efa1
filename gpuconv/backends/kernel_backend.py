"""The ``cuda`` and ``emulate`` backends: one dispatch path over the kernels of ``kernels/*.cu``.

Both run the very same kernel source. They differ only in how it is compiled (NVRTC
through ``gpuconv.compile_check.nvrtc_compile``, loaded by ``cupy.RawModule``; or the host C++
compiler through ``gpuconv.emulate.Module``) and in the array module (CuPy or NumPy). Everything
else is shared: which template instances each source holds (``KERNELS``), the compile options
(``compile_options()``; ``nvrtc_options(arch)`` adds NVRTC's own), the grid (``launch_config``) and
the argument lists, whose scalars are explicitly typed NumPy scalars matching the kernel signatures
(``int`` → ``np.int32``, ``index_t`` → ``np.int64``); a missing bias is the null pointer ``NULL``.

Sizes go to the kernels as 32-bit ints and every linear index and offset is 64-bit inside them, so
tensors beyond 2**31 elements work; a single size (or padded extent) beyond 2**31 - 1 raises a
``ValueError`` before any launch. The tiled kernels also keep their reduction index (C·R·S or
K·R·S per group) and some pixel counts in 32 bits: ``launchable`` sends a problem beyond those to the
direct kernel.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import _paths
from ..problem import HALF_DTYPES, Conv2dProblem
from . import CUDA_INSTALL_HINT

# Compile options of every kernel module: the cuda backend's, the emulator's, and the compile
# check's for every architecture.
OPTIONS = ("--std=c++17",)


def compile_options() -> tuple[str, ...]:
    """OPTIONS and the include path of the kernels folder (the kernels include "common.cuh")."""
    return (*OPTIONS, f"-I{_paths.kernels_dir()}")


def nvrtc_options(arch: str) -> tuple[str, ...]:
    """Every option NVRTC receives when the cuda backend compiles for ``arch`` ('sm_80', or
    'compute_XY' for PTX): ``compile_options()``, ``-ftz=false`` and the architecture. The compile
    check and the SASS analyzer compile with exactly these, so what they report is what runs.

    gpuconv never flushes subnormals (README, "Subnormal numbers"), as NumPy and the emulator do
    not: the cuda backend compiles with NVRTC itself rather than through ``cupy.RawModule(code=)``,
    which appends ``-ftz=true`` to every compile. NVRTC's default is already -ftz=false; saying so
    keeps it so whatever default a later NVRTC picks."""
    return (*compile_options(), "-ftz=false", f"-arch={arch}")


CTYPES = {"float32": "float", "float64": "double"}
# The activation template argument of fprop_direct: ACTIVATION_* in kernels/common.cuh.
ACTIVATION_IDS = {None: 0, "relu": 1, "sigmoid": 2}
# A null pointer argument: 8 zero bytes. Not None, which CuPy passes as 0xffffffff
# (cupy/cupy#9046); the emulator refuses None for that reason.
NULL = np.uint64(0)


def _pointer(array):
    """An optional array argument: the array, or NULL."""
    return NULL if array is None else array


@dataclass(frozen=True)
class Tile:
    """Tile shape of an implicit-GEMM kernel (kernels/gemm.cuh): a BM×BN tile of its GEMM output
    per block, BK reduction steps staged at a time, BM/WM × BN/WN warps of WM×WN, a TM×TN register
    tile per thread (whole 16-byte sub-tiles: 4×4 floats or 2×2 doubles), so
    (BM/WM)·(BN/WN)·32 threads a block. ``stages``: k-tiles in shared memory, 2 staged through
    registers, 3 or 4 copied by cp.async (sm_80 and newer: ``min_arch``). ``dtypes``: the dtypes it
    is instantiated for."""

    BM: int
    BN: int
    BK: int
    WM: int
    WN: int
    TM: int
    TN: int
    dtypes: tuple[str, ...] = ("float32", "float64")
    stages: int = 2

    @property
    def threads(self) -> int:
        return (self.BM // self.WM) * (self.BN // self.WN) * 32

    @property
    def min_arch(self) -> int:
        """The compute capability its kernels need: 80 for cp.async (stages > 2), else 75."""
        return 80 if self.stages > 2 else 75

    def template_args(self) -> str:
        return (f"{self.BM}, {self.BN}, {self.BK}, {self.WM}, {self.WN}, {self.TM}, {self.TN}, "
                f"{self.stages}")


F32 = ("float32",)
# The named tile configurations, the same for the three ops (GEMM shapes: Conv2dProblem.gemm_shape;
# fprop M = N·P·Q, N = K/groups; dgrad M = N·H·W per stride phase, N = C/groups; wgrad M = K/groups,
# N = C/groups·R·S). Every one is compiled, checked and tested. float32 takes 8×8 thread tiles (four
# 4×4 sub-tiles: 64 FFMAs per 4 LDS.128) in warps of 32×64 as CUTLASS's SIMT kernels do; float64
# 4×4 (2×2 sub-tiles of double2), its registers being twice as wide. A name ending in _s3 or _s4
# is the tile before it with a 3- or 4-stage cp.async pipeline (sm_80+), as CUTLASS's SIMT kernels.
_TILES = {
    "128x128x8_8x8": Tile(BM=128, BN=128, BK=8, WM=32, WN=64, TM=8, TN=8, dtypes=F32),  # 256 thr
    "128x64x8_8x8": Tile(BM=128, BN=64, BK=8, WM=32, WN=64, TM=8, TN=8, dtypes=F32),    # 128 thr
    "64x128x8_8x8": Tile(BM=64, BN=128, BK=8, WM=32, WN=64, TM=8, TN=8, dtypes=F32),    # 128 thr
    "64x64x8_8x8": Tile(BM=64, BN=64, BK=8, WM=32, WN=64, TM=8, TN=8, dtypes=F32),      # 64 thr
    "64x64x8_4x4": Tile(BM=64, BN=64, BK=8, WM=32, WN=16, TM=4, TN=4, dtypes=("float64",)),
    "32x32x8_4x4": Tile(BM=32, BN=32, BK=8, WM=32, WN=16, TM=4, TN=4),  # 64 thr; narrow layers
    "128x128x8_8x8_s3": Tile(BM=128, BN=128, BK=8, WM=32, WN=64, TM=8, TN=8, dtypes=F32, stages=3),
    "128x128x8_8x8_s4": Tile(BM=128, BN=128, BK=8, WM=32, WN=64, TM=8, TN=8, dtypes=F32, stages=4),
    "64x64x8_8x8_s3": Tile(BM=64, BN=64, BK=8, WM=32, WN=64, TM=8, TN=8, dtypes=F32, stages=3),
    "64x64x8_4x4_s3": Tile(BM=64, BN=64, BK=8, WM=32, WN=16, TM=4, TN=4, dtypes=("float64",),
                           stages=3),
    "32x32x8_4x4_s4": Tile(BM=32, BN=32, BK=8, WM=32, WN=16, TM=4, TN=4, stages=4),
}
TILES = {op: _TILES for op in ("fprop", "dgrad", "wgrad")}


@dataclass(frozen=True)
class TensorTile:
    """Tile shape of a tensor-core kernel (kernels/gemm_tc.cuh): a BM×BN tile per block, BK
    reduction steps staged at a time, BM/WM × BN/WN warps of WM×WN (WM/16 × WN/8 mma tiles each).
    ``dtypes``: the input dtypes it is instantiated for, float32 meaning precision='tf32' and
    'tf32x3'."""

    BM: int
    BN: int
    BK: int
    WM: int
    WN: int
    dtypes: tuple[str, ...]

    @property
    def threads(self) -> int:
        return (self.BM // self.WM) * (self.BN // self.WN) * 32

    def template_args(self) -> str:
        return f"{self.BM}, {self.BN}, {self.BK}, {self.WM}, {self.WN}"


# The tensor-core tiles, largest first, the same for the three ops (kernels/fprop_tc.cu,
# dgrad_tc.cu, wgrad_tc.cu). 128×128 holds float32 (TF32) tiles in no 48 KiB of static shared
# memory (72 KiB double-buffered), so TF32 takes 64×64 only.
_TENSOR_TILES = {
    "128x128x32_tc": TensorTile(BM=128, BN=128, BK=32, WM=64, WN=32, dtypes=HALF_DTYPES),  # 256 threads
    "64x64x32_tc": TensorTile(BM=64, BN=64, BK=32, WM=32, WN=32, dtypes=(*HALF_DTYPES, "float32")),  # 128
}
# fprop's halo tile (STAGING_HALO in kernels/fprop_tc.cu: x staged once a block of 32 channels as a
# patch that every tap reads, w reordered to [K][R][S][C/groups]): 4 warps of 64×64, a k-tile of
# 32 channels of one tap; its patches (up to HALO_POSITIONS positions) and w's k-tiles take
# halo_shared_bytes(positions) of dynamic shared memory. The SASS reports give its occupancy
# at HALO_REPORTED_POSITIONS, the largest patch that leaves room for two blocks an sm_80 SM.
# Its TF32 twin (float32 at 'tf32' and 'tf32x3') takes 16 channels a k-tile: the same 80 bytes a
# position, so the same patches and shared memory.
HALO_TILE = "128x128x32_64x64_tc"
HALO_TILE_TF32 = "128x128x16_64x64_tc"
HALO_POSITIONS = 496  # 100,832 bytes of shared memory: within sm_86's and sm_89's 99 KB a block
HALO_REPORTED_POSITIONS = 384
# dgrad at stride 1 runs them too, as fprop of dy (dgrad_as_fprop).
_HALO = {HALO_TILE: TensorTile(BM=128, BN=128, BK=32, WM=64, WN=64, dtypes=HALF_DTYPES),
         HALO_TILE_TF32: TensorTile(BM=128, BN=128, BK=16, WM=64, WN=64, dtypes=("float32",))}
FPROP_HALO_TILES = tuple(_HALO)
# wgrad's halo tile (STAGING_HALO in kernels/wgrad_tc.cu: x staged once a k-tile as a patch that
# every tap reads): 3×3 filters, a block 128 output channels × 32 input channels × the
# 9 taps (288 columns), 8 warps of 64 × 72 (an octet of channels at every tap); dynamic shared
# memory of wgrad_halo_shared_bytes.
WGRAD_HALO_TILE = "128x288x32_64x72_tc"
WGRAD_HALO_TAPS, WGRAD_HALO_CHANNELS = 9, 32
# The most positions a k-tile's patch may have, per staging: two units a thread a k-tile, or three
# ('halo_wide': stride-2 layers such as ResNet-50's res3_3x3_s2 and res4_3x3_s2), or one where W
# or P·Q is odd ('halo_odd': 2-byte loads of x and dy; res5_3x3's 7×7 images).
WGRAD_HALO_POSITIONS = {"halo": 256, "halo_wide": 384, "halo_odd": 128}
_WGRAD_HALO = TensorTile(BM=128, BN=288, BK=32, WM=64, WN=72, dtypes=HALF_DTYPES)
TENSOR_TILES = {"fprop": {**_TENSOR_TILES, **_HALO}, "dgrad": {**_TENSOR_TILES, **_HALO},
                "wgrad": {**_TENSOR_TILES, WGRAD_HALO_TILE: _WGRAD_HALO}}
HALO_TILES = (*FPROP_HALO_TILES, WGRAD_HALO_TILE)


def halo_shared_bytes(positions: int) -> int:
    """The halo kernels' dynamic shared memory for patches of ``positions`` positions (a
    problem's halo_positions): TensorShared's B (two k-tiles of BN rows of BK channels and 16
    bytes), then its HaloPatch as far as that problem uses it: the position table (an int a
    pair, HALO_POSITIONS / 2) and two patch buffers of ``positions`` rows of BK channels and 16
    bytes. The same for both tiles: a row is 80 bytes of 16-bit types or of TF32's floats."""
    tile = TENSOR_TILES["fprop"][HALO_TILE]
    pitch = tile.BK * 2 + 16
    return 2 * tile.BN * pitch + 4 * (HALO_POSITIONS // 2) + 2 * positions * pitch


def wgrad_halo_shared_bytes(staging: str = "halo") -> int:
    """wgrad's halo kernel's dynamic shared memory for ``staging`` (WGRAD_HALO_POSITIONS'): B's
    WgradHaloPatch first (two buffers' pixel tables of BK ints, two patches of
    WGRAD_HALO_POSITIONS[staging] positions of 32 + 8 16-bit elements), then A's two k-tiles of
    dy (BM rows of BK + 8)."""
    tile = TENSOR_TILES["wgrad"][WGRAD_HALO_TILE]
    pitch = (WGRAD_HALO_CHANNELS + 8) * 2
    return 2 * tile.BK * 4 + 2 * WGRAD_HALO_POSITIONS[staging] * pitch + 2 * tile.BM * (tile.BK + 8) * 2


# The first template argument of the tensor-core kernels: TENSOR_* in kernels/mma.cuh.
TENSOR_KINDS = {"float16": 0, "bfloat16": 1, "tf32": 2, "tf32x3": 3}
# Each op's tensor-core source.
TENSOR_SOURCES = {"fprop": "fprop_tc.cu", "dgrad": "dgrad_tc.cu", "wgrad": "wgrad_tc.cu"}
# Sources that include kernels/mma.cuh compile only for sm_80 and newer (the compute capability).
MIN_ARCH = {source: 80 for source in TENSOR_SOURCES.values()}

# What each op's kernel argument of the backends accepts: 'auto' (the op's choose_*), 'direct'
# or one of its tiles, tensor-core tiles included.
KERNEL_CHOICES = {op: ("auto", "direct", *tiles, *TENSOR_TILES[op]) for op, tiles in TILES.items()}


def tensor_kind(dtype: str, precision: str) -> str | None:
    """The TENSOR_KINDS entry an op of ``dtype`` at ``precision`` runs on tensor cores with, or
    None (float64, float32 at 'highest')."""
    if dtype in HALF_DTYPES:
        return dtype
    return precision if dtype == "float32" and precision in ("tf32", "tf32x3") else None


def kind_dtype(kind: str) -> str:
    """The array dtype of a TENSOR_KINDS entry: float32 for the TF32 kinds."""
    return "float32" if kind.startswith("tf32") else kind


# The staging variants of each op's tensor-core kernel, in the order of its Staging template
# argument (STAGING_* in kernels/gemm_tc.cuh), chosen per problem by ``tensor_staging``: 'plain'
# (the op's own iterators), 'tap_major' (the reduction in (tap, channel) order, a k-tile BK
# channels of one tap: one bounds check a k-tile; wgrad: a block's columns are channels of one
# tap, ``wgrad_tap_major``), 'tap_major_vector' (also 16-byte loads of fprop's w, reordered to
# [K][R][S][C/groups] by the backend, or of wgrad's dy) and 'halo'. fprop's tap-major staging
# always reads w reordered, so its 'tap_major' is not built (``tile_stagings``).
STAGINGS = {"fprop": ("plain", "tap_major", "tap_major_vector", "halo"), "dgrad": ("plain", "tap_major"),
            "wgrad": ("plain", "tap_major", "tap_major_vector", "halo", "halo_wide", "halo_odd")}


def tile_stagings(op: str, kernel: str) -> tuple[str, ...]:
    """The STAGINGS[op] entries built for tile ``kernel`` in ``op``'s source: a halo tile has the
    halo staging alone (fprop_tc.cu, where dgrad runs fprop's; wgrad_tc.cu), and no other tile
    has it; fprop's 'tap_major' is 'tap_major_vector' (w reordered) and not built."""
    if kernel in HALO_TILES:
        return tuple(s for s in STAGINGS[op] if s.startswith("halo"))
    return tuple(s for s in STAGINGS[op] if not s.startswith("halo") and (op, s) != ("fprop", "tap_major"))


def dgrad_as_fprop(p) -> Conv2dProblem | None:
    """The fprop problem that dgrad of ``p`` is at stride 1: dy convolved with w flipped in R and S
    and transposed group by group (K ↔ C), padded so that its output is x's H×W; None at another
    stride, or where that padding would be negative (more padding than the filter reaches)."""
    if p.stride != (1, 1):
        return None
    (dh, dw), (pt, _, pl, _) = p.dilation, p.padding
    top, left = dh * (p.R - 1) - pt, dw * (p.S - 1) - pl
    # P' = P + top + bottom - dh·(R - 1) = H, Q' likewise = W (conv_transpose2d's output_padding too)
    bottom, right = p.H - p.P - top + dh * (p.R - 1), p.W - p.Q - left + dw * (p.S - 1)
    if min(top, bottom, left, right) < 0:
        return None
    return Conv2dProblem(N=p.N, C=p.K, H=p.P, W=p.Q, K=p.C, R=p.R, S=p.S, P=p.H, Q=p.W,
                         padding=(top, bottom, left, right), dilation=p.dilation, groups=p.groups,
                         dtype=p.dtype)


@functools.lru_cache(maxsize=256)
def halo_positions(p) -> int:
    """The most positions of padded x that a block of the halo tile stages (its patch): padded rows
    g = n·Hp + p·stride_h + r·dil_h from its first pixel's row to its last pixel's last tap, each
    of the Wp padded columns, one more before them where pad_left is odd and one after to make
    the row even: pairs of positions start on even columns of x (FpropHaloIterator). Cached: it
    is asked on every half-precision fprop and dgrad dispatch (``halo_fits``)."""
    (sh, sw), (dh, dw), BM = p.stride, p.dilation, TENSOR_TILES["fprop"][HALO_TILE].BM
    M = p.N * p.P * p.Q
    Hp = (p.P - 1) * sh + (p.R - 1) * dh + 1
    Wp = ceil_div((p.Q - 1) * sw + (p.S - 1) * dw + 1 + p.padding[2] % 2, 2) * 2
    # Blocks a period apart start at the same pixel of their image (the period is a whole number
    # of images) and span the same rows, so the first period's blocks and the last (cut short by
    # M) are all there is to look at: a few dozen blocks at any batch size.
    period = p.P * p.Q // math.gcd(BM, p.P * p.Q)
    first = np.append(np.arange(0, min(ceil_div(M, BM), period) * BM, BM, dtype=np.int64),
                      (ceil_div(M, BM) - 1) * BM)
    last = np.minimum(first + BM, M) - 1

    def padded_row(m):
        return m // p.Q // p.P * Hp + m // p.Q % p.P * sh

    rows = padded_row(last) + (p.R - 1) * dh - padded_row(first) + 1
    return int(rows.max()) * Wp


def halo_fits(p: Conv2dProblem | None) -> bool:
    """Whether a halo tile runs ``p`` (HALO_TILE in the half types, HALO_TILE_TF32 in float32): a
    filter of several taps, C/groups a multiple of its BK channels, W even (a unit reads two
    neighbouring positions a load), a patch within HALO_POSITIONS that the R·S k-tiles of a block
    stage (a unit of 16 bytes of channels of two positions a thread a k-tile: 64 positions), x's
    offsets from a block's first image (at most ceil(BM / P·Q) + 1 images) and 32 output channels
    of w in an int."""
    tile = TENSOR_TILES["fprop"][HALO_TILE_TF32 if p is not None and p.dtype == "float32" else HALO_TILE]
    if p is None or p.R * p.S < 2 or p.C_per_group % tile.BK != 0 or p.W % 2 or p.N * p.P * p.Q == 0:
        return False
    if 32 * p.C_per_group * p.R * p.S > INT32_MAX:
        return False
    images = min(p.N, ceil_div(tile.BM, p.P * p.Q) + 1)
    if images * p.C * p.H * p.W > INT32_MAX:
        return False
    return halo_positions(p) <= min(HALO_POSITIONS, p.R * p.S * tile.threads // 2)


@functools.lru_cache(maxsize=256)
def wgrad_halo_positions(p) -> int:
    """The most positions of padded x that a k-tile of wgrad's halo tile stages (its patch): the
    padded rows g = n·Hp + p·stride_h + r·dil_h from its first pixel's row to its last pixel's
    last tap, each of Wp columns as fprop's halo patch (``halo_positions``). K-tiles start at
    multiples of BK pixels (splits are whole k-tiles); the last one's pixels past N·P·Q count as
    an image N's. Cached: asked on every half-precision wgrad dispatch."""
    BK, (sh, sw), (dh, dw) = TENSOR_TILES["wgrad"][WGRAD_HALO_TILE].BK, p.stride, p.dilation
    PQ = p.P * p.Q
    Hp = (p.P - 1) * sh + (p.R - 1) * dh + 1
    Wp = ceil_div((p.Q - 1) * sw + (p.S - 1) * dw + 1 + p.padding[2] % 2, 2) * 2
    # k-tiles a whole number of images apart span the same rows: one period is all there is
    period = PQ // math.gcd(BK, PQ)
    first = np.arange(0, min(ceil_div(p.N * PQ, BK), period) * BK, BK, dtype=np.int64)
    last = first + BK - 1

    def padded_row(i):
        return i // PQ * Hp + i % PQ // p.Q * sh

    rows = padded_row(last) + (p.R - 1) * dh - padded_row(first) + 1
    return int(rows.max()) * Wp


def wgrad_halo_odd(p) -> bool:
    """Whether wgrad's halo tile stages ``p`` with 2-byte loads ('halo_odd'): W odd (a pair of
    positions is no 4-byte word of x) or P·Q not a multiple of 4 (dy's runs are no 8-byte ones)."""
    return p.W % 2 == 1 or p.P * p.Q % 4 != 0


def wgrad_halo_fits(p) -> bool:
    """Whether wgrad's halo tile runs ``p``: a filter of WGRAD_HALO_TAPS taps (any stride), C/groups
    a multiple of its 32 channels, P·Q at least BK (a k-tile within two images), two images of x
    in an int, and a patch within the staging's WGRAD_HALO_POSITIONS: 'halo_wide''s, or where
    ``wgrad_halo_odd``, 'halo_odd''s."""
    tile = TENSOR_TILES["wgrad"][WGRAD_HALO_TILE]
    if (p.R * p.S != WGRAD_HALO_TAPS or p.C_per_group % WGRAD_HALO_CHANNELS
            or p.P * p.Q < tile.BK or p.N == 0):
        return False
    most = WGRAD_HALO_POSITIONS["halo_odd" if wgrad_halo_odd(p) else "halo_wide"]
    return 2 * p.C * p.H * p.W <= INT32_MAX and wgrad_halo_positions(p) <= most


def tensor_kernel_name(op: str, kind: str, kernel: str, staging: str = "plain") -> str:
    """The name expression of ``op``'s tensor-core tile ``kernel`` for ``kind`` (TENSOR_KINDS) and
    ``staging`` (STAGINGS[op]). fprop's activation is a run-time argument."""
    if staging == "halo" and op == "dgrad":
        op = "fprop"  # dgrad_as_fprop
    return (f"{op}_tensor_core<{TENSOR_KINDS[kind]}, {STAGINGS[op].index(staging)}, "
            f"{TENSOR_TILES[op][kernel].template_args()}>")


def _address(array) -> int:
    """The device (CuPy) or host (NumPy) address of an array's first element."""
    interface = getattr(array, "__cuda_array_interface__", None) or array.__array_interface__
    return interface["data"][0]


def tensor_staging(op: str, p, kernel: str, array) -> str:
    """The STAGINGS[op] entry for ``p`` on tile ``kernel``; ``array`` is the operand a 16-byte
    load would read (wgrad dy). Tap-major where the reduction's channels (fprop and wgrad
    C/groups, dgrad K/groups) are a multiple of BK (every k-tile whole channels of one tap):
    fprop's with 16-byte loads of w (reordered by the backend to [K][R][S][C/groups], aligned and
    contiguous: ``_aligned_contiguous``); wgrad's where dy is 16-byte aligned and its images of
    P·Q elements a multiple of 16 bytes. wgrad's halo tile: 'halo_odd' where W or P·Q is odd
    (``wgrad_halo_odd``), else 'halo', or 'halo_wide' where the patch needs three units a thread."""
    if kernel == WGRAD_HALO_TILE:
        if wgrad_halo_odd(p):
            return "halo_odd"
        return "halo" if wgrad_halo_positions(p) <= WGRAD_HALO_POSITIONS["halo"] else "halo_wide"
    if kernel in HALO_TILES:
        return "halo"
    if op == "dgrad":
        return "tap_major" if p.K_per_group % TENSOR_TILES[op][kernel].BK == 0 else "plain"
    if p.C_per_group % TENSOR_TILES[op][kernel].BK != 0:
        return "plain"
    if op == "fprop":
        return "tap_major_vector"
    contiguous = p.P * p.Q * array.itemsize % 16 == 0
    return "tap_major_vector" if contiguous and _address(array) % 16 == 0 else "tap_major"


def wgrad_tap_major(p, tile) -> bool:
    """Whether wgrad's kernel of ``tile`` on ``p`` has tap-major columns (a block: one tap (r, s),
    BN channels): a tensor-core tile, with C/groups a multiple of BK (whole tiles of channels
    waste little of a block). A function of the problem and tile: the grid follows it."""
    return isinstance(tile, TensorTile) and p.C_per_group % tile.BK == 0 and tile != _WGRAD_HALO


def choose_tensor_core(op: str, p, kernel: str = "auto") -> str | None:
    """The TENSOR_TILES[op] name to run ``op`` on ``p`` (float16, bfloat16, or float32 meaning
    TF32) with, or None where the float32 kernels take it: a forced SIMT tile or 'direct'; under
    'auto' a GEMM channel side (``_choose``'s) under 8 (a depthwise layer would fill a tile with
    zeros); a tile not built for the dtype or that cannot run ``p`` (``launchable``). 'auto', for
    fprop and dgrad, takes the tile whose busiest SM issues least (``tensor_busiest_sm_cost``) of
    64×64, 128×128 where the GEMM fills it, and the halo tile of p's dtype where it runs ``p``;
    for wgrad, 128×128 where the GEMM fills it (its split-K fills the GPU), else 64×64, and its
    halo tile where it runs ``p`` with at least 64 output channels a group (its 128 rows at least
    half used: its loop issues half as much a HMMA as 128×128's, and split-K gives its grid the
    GPU)."""
    tiles = TENSOR_TILES[op]
    M, N = _block_gemm_shape(op, p)
    if kernel == "auto":
        if (N if op != "wgrad" else M) < 8:
            return None
        big = tiles["128x128x32_tc"]
        fills = M >= big.BM and N >= big.BN and p.dtype in big.dtypes
        if op == "wgrad":
            kernel = "128x128x32_tc" if fills else "64x64x32_tc"
            if M >= 64 and launchable(op, p, WGRAD_HALO_TILE):
                kernel = WGRAD_HALO_TILE
        else:
            halos = [t for t in FPROP_HALO_TILES if p.dtype in tiles[t].dtypes and launchable(op, p, t)]
            candidates = ["64x64x32_tc", *(["128x128x32_tc"] if fills else []), *halos]
            kernel = min(candidates, key=lambda k: tensor_busiest_sm_cost(op, p, k))
    if kernel not in tiles or p.dtype not in tiles[kernel].dtypes:
        return None
    return kernel if launchable(op, p, kernel) else None


def choose_fprop_tensor_core(p, kernel: str = "auto") -> str | None:
    """The TENSOR_TILES['fprop'] name to run ``p`` with, or None (``choose_tensor_core``)."""
    return choose_tensor_core("fprop", p, kernel)


def choose_dgrad_tensor_core(p, kernel: str = "auto") -> str | None:
    """The TENSOR_TILES['dgrad'] name to run ``p`` with, or None (``choose_tensor_core``)."""
    return choose_tensor_core("dgrad", p, kernel)


def choose_wgrad_tensor_core(p, kernel: str = "auto") -> str | None:
    """The TENSOR_TILES['wgrad'] name to run ``p`` with, or None (``choose_tensor_core``)."""
    return choose_tensor_core("wgrad", p, kernel)


def kernel_name(op: str, dtype: str, kernel: str, activation=None) -> str:
    """The name expression of ``op``'s kernel ``kernel`` ('direct' or a TILES[op] name)."""
    head = CTYPES[dtype] + (f", {ACTIVATION_IDS[activation]}" if op == "fprop" else "")
    if kernel == "direct":
        return f"{op}_direct<{head}>"
    return f"{op}_implicit_gemm<{head}, {TILES[op][kernel].template_args()}>"


def _block_gemm_shape(op: str, p) -> tuple[int, int]:
    """(M, N) of the GEMM one block column of ``op`` tiles: per group, and for dgrad per stride
    phase (the largest one), the grid's x and y extents before dividing by the tile."""
    M, N, _ = p.gemm_shape(op)
    if op == "dgrad":
        M = p.N * ceil_div(p.H, p.stride[0]) * ceil_div(p.W, p.stride[1])
    return M, N


def _choose(op: str, p, kernel: str, cp_async: bool = True) -> str:
    """'direct' or the TILES[op] name to run ``p`` with (``choose_fprop`` and friends).

    ``auto`` goes direct when the GEMM's channel side (fprop K/groups, dgrad C/groups, wgrad
    K/groups) is under 8: a depthwise layer would fill a tile with zeros. Otherwise it takes, of
    the tiles built for the dtype that can run ``p`` and holding an ``ISSUE_PER_FMA`` figure, the
    one whose busiest SM spends the fewest clocks (``busiest_sm_cost``): the performance model's
    limiting terms for these tiles (``gpuconv.model``; tests/test_model.py checks the picks
    against the whole model's on the benchmark layers). A forced tile falls back to direct only
    where it cannot run (``launchable``: a dtype it is not built for, or sizes beyond its index
    range). ``cp_async``: whether the device has it (sm_80+): then ``auto`` takes the chosen
    tile's cp.async twin (``cp_async_twin``); without it a cp.async tile (``stages`` > 2) runs as
    its register-staged twin (the name without ``_s3``).
    """
    M, N = _block_gemm_shape(op, p)
    if kernel == "auto":
        channels = N if op != "wgrad" else M
        if channels < 8:
            return "direct"
        runnable = [k for k, tile in TILES[op].items()
                    if k in ISSUE_PER_FMA and p.dtype in tile.dtypes and launchable(op, p, k)]
        kernel = min(runnable, key=lambda k: busiest_sm_cost(op, p, k), default="direct")
        if cp_async and kernel != "direct":
            kernel = cp_async_twin(op, p, kernel)
    if kernel in TENSOR_TILES[op]:  # forced, but the problem takes the float32 kernels
        return "direct"
    if kernel in TILES[op] and TILES[op][kernel].stages > 2 and not cp_async:
        kernel = kernel.rsplit("_s", 1)[0]
    return kernel if kernel == "direct" or launchable(op, p, kernel) else "direct"


# Each register-staged tile's main-loop instructions per FFMA (DFMA for the float64 tile) in SASS:
# `python -m gpuconv.sass --arch sm_90`, fprop's loops (dgrad's and wgrad's are within 7%). Only
# tiles with a figure are candidates of ``auto``; tests/test_model.py checks that every tile of 2
# stages has one and that the figures match the committed SASS.
ISSUE_PER_FMA = {
    "128x128x8_8x8": 1.36, "128x64x8_8x8": 1.56, "64x128x8_8x8": 1.41, "64x64x8_8x8": 1.60,
    "64x64x8_4x4": 1.88, "32x32x8_4x4": 2.23,
}
# An H100 SM issues 4 warp instructions a clock and has 128 FP32 and 64 FP64 FMA lanes.
H100_ISSUE_PER_CLOCK, H100_FMA_LANES = 4, {"float32": 128, "float64": 64}


def busiest_sm_cost(op: str, p, kernel: str) -> float:
    """The clocks (up to a constant factor) the busiest SM of an H100 spends on ``op``'s tile
    ``kernel`` for ``p``: its blocks, ceil(grid / SMs) (wave quantization: a grid of 1.1 waves
    takes 2), × one block's multiply-adds × the clocks of one warp's FMA, issue-bound or bound by
    the FMA lanes. Big tiles issue less per FMA; small ones quantize better and let wgrad split
    into more blocks."""
    tile = TILES[op][kernel]
    # A block's reduction: the same for every tile in fprop and dgrad, wgrad's split chunk.
    reduction = wgrad_splits(p, tile)[1] if op == "wgrad" else 1
    clocks_per_fma = max(ISSUE_PER_FMA[kernel] / H100_ISSUE_PER_CLOCK, 32 / H100_FMA_LANES[p.dtype])
    return ceil_div(_blocks(op, p, tile), H100_SMS) * tile.BM * tile.BN * reduction * clocks_per_fma


# The tensor-core tiles' main-loop instructions per HMMA (float16, TF32 for the TF32 halo tile;
# sm_90 SASS: `python -m gpuconv.sass --arch sm_90`), fprop's loops at their best staging for 3×3
# filters: tap-major with w's 16-byte loads, and the halo tiles' (tests/test_model.py checks them
# against the committed SASS). A TF32 problem weighs the TF32 halo tile against 64×64's float16
# figure: its TF32 loop issues within 2% of it.
ISSUE_PER_HMMA = {"128x128x32_tc": 5.34, "64x64x32_tc": 9.44, HALO_TILE: 2.73, HALO_TILE_TF32: 2.91}


def tensor_busiest_sm_cost(op: str, p, kernel: str) -> float:
    """``busiest_sm_cost`` of a tensor-core tile, issue-bound: ceil(grid / SMs) × one block's
    mma tiles × ISSUE_PER_HMMA. fprop and dgrad only (a block's reduction is the whole one)."""
    tile = TENSOR_TILES[op][kernel]
    blocks = _blocks("fprop", dgrad_as_fprop(p), tile) if kernel in FPROP_HALO_TILES and op == "dgrad" else \
        _blocks(op, p, tile)
    return ceil_div(blocks, H100_SMS) * tile.BM * tile.BN * ISSUE_PER_HMMA[kernel]


def cp_async_twin(op: str, p, kernel: str) -> str:
    """The cp.async version of tile ``kernel`` (the same shape, ``stages`` > 2), where TILES has one
    and the reduction a block runs (wgrad: a split's; dgrad: every tap, a strided layer's phases
    have fewer) spans at least its stages in k-tiles (a shorter one spends its prologue copying
    zeros); else ``kernel``. Read from SASS (bench/results/sass-*.md), each twin's
    main loop is no longer than its register-staged tile's, and its loads have stages - 1 k-tiles of
    math to land in instead of one."""
    twins = [k for k, t in TILES[op].items() if t.stages > 2 and k.rsplit("_s", 1)[0] == kernel]
    if not twins:
        return kernel
    tile = TILES[op][twins[0]]
    reduction = wgrad_splits(p, tile)[1] if op == "wgrad" else p.gemm_shape(op)[2]
    return twins[0] if reduction >= tile.stages * tile.BK else kernel


def _blocks(op: str, p, tile: Tile) -> int:
    grid, _ = launch_config(0, op, tile, p)
    return math.prod(grid)


def choose_fprop(p, kernel: str = "auto", cp_async: bool = True) -> str:
    """'direct' or the TILES['fprop'] name to run ``p`` with (see ``_choose``)."""
    return _choose("fprop", p, kernel, cp_async)


def choose_dgrad(p, kernel: str = "auto", cp_async: bool = True) -> str:
    """'direct' or the TILES['dgrad'] name to run ``p`` with (see ``_choose``)."""
    return _choose("dgrad", p, kernel, cp_async)


def choose_wgrad(p, kernel: str = "auto", cp_async: bool = True) -> str:
    """'direct' or the TILES['wgrad'] name to run ``p`` with (see ``_choose``)."""
    return _choose("wgrad", p, kernel, cp_async)


def launchable(op: str, p, kernel: str) -> bool:
    """Whether tile ``kernel`` of ``op`` can run ``p``: built for its dtype, its grid within CUDA's
    limits and the indices the kernel keeps in an int within range (an element's offset inside one
    image of x or dy, C·H·W and K·P·Q; the reduction index, C·R·S or K·R·S per group, plus a step;
    dgrad: all of a stride phase's N·Hp·Wp pixels + BM; wgrad: P·Q + BK and a split's chunk + BK)."""
    tile = TILES[op][kernel] if kernel in TILES[op] else TENSOR_TILES[op][kernel]
    if p.dtype not in tile.dtypes or max(p.C * p.H * p.W, p.K * p.P * p.Q) > INT32_MAX:
        return False
    (sh, sw), RS = p.stride, p.R * p.S
    reduction = p.K_per_group * RS if op == "dgrad" else p.C_per_group * RS
    if reduction + tile.BK > INT32_MAX:
        return False
    if op == "dgrad" and p.N * ceil_div(p.H, sh) * ceil_div(p.W, sw) + tile.BM > INT32_MAX:
        return False
    if op == "wgrad" and max(p.P * p.Q, wgrad_splits(p, tile)[1]) + tile.BK > INT32_MAX:
        return False
    if kernel in FPROP_HALO_TILES and not halo_fits(p if op == "fprop" else dgrad_as_fprop(p)):
        return False
    if kernel == WGRAD_HALO_TILE and not wgrad_halo_fits(p):
        return False
    grid, _ = launch_config(0, op, tile, p)
    return grid[0] <= INT32_MAX and all(g <= 65535 for g in grid[1:])


# wgrad split-K: enough splits for one full wave of resident blocks on an H100 (132 SMs), at most
# MAX_SPLITS partial copies of dw in the workspace, and no split shorter than MIN_SPLIT_TILES
# k-tiles (a split's first tile is not overlapped with math and its partial tile is one more
# store and reduction: long splits keep those a small part).
H100_SMS = 132
MAX_SPLITS = 64
MIN_SPLIT_TILES = 4
REGISTERS_PER_SM, MAX_THREADS_PER_SM, MAX_REGISTERS_PER_THREAD = 65536, 2048, 255


def resident_blocks(tile: Tile) -> int:
    """Blocks of ``tile`` an SM holds at once whatever ptxas allocates: the kernels' launch bound
    (min 1 block) lets a thread take up to 255 registers, so this counts 255 a thread."""
    return max(1, min(MAX_THREADS_PER_SM // tile.threads,
                      REGISTERS_PER_SM // (tile.threads * MAX_REGISTERS_PER_THREAD)))


def wgrad_splits(p, tile: Tile) -> tuple[int, int]:
    """(splits, chunk) of wgrad_implicit_gemm on ``p``: split z reduces the N·P·Q pixels
    [z·chunk, (z+1)·chunk); chunk is a multiple of BK and no split is empty. A function of the
    problem and tile only, so a given problem always sums in the same order."""
    npq = p.N * p.P * p.Q
    blocks = _wgrad_column_blocks(p, tile) * p.groups * ceil_div(p.K_per_group, tile.BM)
    want = min(ceil_div(H100_SMS * resident_blocks(tile), blocks), MAX_SPLITS,
               max(1, npq // (MIN_SPLIT_TILES * tile.BK)))
    chunk = ceil_div(ceil_div(npq, want), tile.BK) * tile.BK
    return ceil_div(npq, chunk), chunk


# Every template instance, per source file: the NVRTC name expressions of its module.
def _instances(op: str, activations=(None,)) -> list[str]:
    return [kernel_name(op, d, k, a) for d in CTYPES for a in activations
            for k in ("direct", *TILES[op]) if k == "direct" or d in TILES[op][k].dtypes]


def _tensor_instances(op: str) -> list[str]:
    kernels = [tensor_kernel_name(op, kind, k, staging) for kind in TENSOR_KINDS
               for k, tile in TENSOR_TILES[op].items() for staging in tile_stagings(op, k)
               if kind_dtype(kind) in tile.dtypes]
    return kernels + ([f"wgrad_tensor_reduce<{k}>" for k in TENSOR_KINDS.values()] if op == "wgrad" else [])


KERNELS = {
    "fprop.cu": _instances("fprop", ACTIVATION_IDS),
    "dgrad.cu": _instances("dgrad"),
    "wgrad.cu": _instances("wgrad") + [f"wgrad_reduce_splits<{t}>" for t in CTYPES.values()],
    **{source: _tensor_instances(op) for op, source in TENSOR_SOURCES.items()},
    "elementwise.cu": [
        f"{k}<{t}>"
        for k in ("bias_grad", "relu_forward", "relu_backward", "sigmoid_forward", "sigmoid_backward")
        for t in CTYPES.values()
    ],
}



def arch_number(arch: str) -> int:
    """The compute capability of NVRTC's -arch 'sm_80' or 'compute_80': 80."""
    return int(arch.split("_")[1])


# Instances that need a newer GPU than the rest of their source: the cp.async tiles (Tile.min_arch).
INSTANCE_MIN_ARCH = {kernel_name(op, dtype, name, activation): tile.min_arch
                     for op, tiles in TILES.items() for name, tile in tiles.items() if tile.stages > 2
                     for dtype in tile.dtypes
                     for activation in (ACTIVATION_IDS if op == "fprop" else (None,))}


def kernels_for(arch: str) -> dict[str, list[str]]:
    """KERNELS without the sources and instances ``arch`` cannot compile (MIN_ARCH,
    INSTANCE_MIN_ARCH)."""
    cc = arch_number(arch)
    return {f: [e for e in es if cc >= INSTANCE_MIN_ARCH.get(e, 0)]
            for f, es in KERNELS.items() if cc >= MIN_ARCH.get(f, 0)}


THREADS_PER_BLOCK = 256
BIAS_GRAD_THREADS = 256  # = BIAS_GRAD_THREADS in kernels/elementwise.cu (its tree's width)
# The kernels loop grid-stride, so the grid may be smaller than the work; this cap keeps it far
# below every limit (gridDim.x < 2**31) while still filling any GPU many times over.
MAX_BLOCKS = 65536
INT32_MAX = 2**31 - 1


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _wgrad_column_blocks(p, tile) -> int:
    """Blocks across wgrad's GEMM columns: tiles of BN taps (c,r,s), or with tap-major columns
    (``wgrad_tap_major``) R·S taps × tiles of BN channels; the halo tile's, tiles of 32 channels
    at every tap."""
    if tile == _WGRAD_HALO:
        return ceil_div(p.C_per_group, WGRAD_HALO_CHANNELS)
    if wgrad_tap_major(p, tile):
        return p.R * p.S * ceil_div(p.C_per_group, tile.BN)
    return ceil_div(p.C_per_group * p.R * p.S, tile.BN)


def launch_config(total: int, op: str | None = None, tile: Tile | None = None, p=None):
    """(grid, block) of a launch.

    Direct and elementwise kernels (``total`` outputs): one thread per output, grid-stride beyond
    MAX_BLOCKS; bias_grad: one block per output channel. The implicit-GEMM kernel of ``op`` (with
    ``tile`` and the problem ``p``): ``tile.threads`` threads a block, and the grid
      fprop: x over tiles of BM output pixels, y over (group, tile of BN output channels);
      dgrad: x over tiles of BM pixels of the largest stride phase, y over (group, tile of BN input
             channels), z over the stride_h·stride_w phases;
      wgrad: x over tiles of BN taps (c,r,s) (tap-major: over (tap, tile of BN channels)), y over
             (group, tile of BM output channels), z over the reduction splits (``wgrad_splits``).
    """
    if op == "bias_grad":  # one block per output channel (``total`` = K), BIAS_GRAD_THREADS each
        return (min(total, MAX_BLOCKS),), (BIAS_GRAD_THREADS,)
    if tile is None:
        return (min(ceil_div(total, THREADS_PER_BLOCK), MAX_BLOCKS),), (THREADS_PER_BLOCK,)
    (sh, sw), G = p.stride, p.groups
    if op == "fprop":
        grid = (ceil_div(p.N * p.P * p.Q, tile.BM), G * ceil_div(p.K_per_group, tile.BN))
    elif op == "dgrad":
        phase_pixels = p.N * ceil_div(p.H, sh) * ceil_div(p.W, sw)
        grid = (ceil_div(phase_pixels, tile.BM), G * ceil_div(p.C_per_group, tile.BN), sh * sw)
    else:
        grid = (_wgrad_column_blocks(p, tile), G * ceil_div(p.K_per_group, tile.BM), wgrad_splits(p, tile)[0])
    return grid, (tile.threads,)


def source(filename: str) -> str:
    return (_paths.kernels_dir() / filename).read_text()


def _int32(name: str, value: int) -> np.int32:
    if value > INT32_MAX:
        raise ValueError(
            f"{name} = {value} does not fit the kernels' 32-bit sizes (at most {INT32_MAX}); "
            "tensors may exceed 2**31 elements, but no single dimension may"
        )
    return np.int32(value)


def conv_args(p) -> tuple:
    """The size arguments every convolution kernel takes after its pointers, in signature order."""
    (sh, sw), (pt, pb, pl, pr), (dh, dw) = p.stride, p.padding, p.dilation
    # The kernels form p·stride_h - pad_top + r·dil_h (and h + pad_top - r·dil_h) in 32 bits: all
    # lie within the padded extent plus one stride (output_padding < stride or dilation).
    _int32("H + pad_top + pad_bottom + stride_h + dil_h", p.H + pt + pb + sh + dh)
    _int32("W + pad_left + pad_right + stride_w + dil_w", p.W + pl + pr + sw + dw)
    sizes = dict(N=p.N, C=p.C, H=p.H, W=p.W, K=p.K, R=p.R, S=p.S, P=p.P, Q=p.Q,
                 stride_h=sh, stride_w=sw, pad_top=pt, pad_left=pl, dil_h=dh, dil_w=dw,
                 groups=p.groups)
    return tuple(_int32(name, v) for name, v in sizes.items())


def _device_label(array) -> str:
    """'device 1' for a CuPy array (its ``.device`` has an ``id``), else its ``.device`` as text."""
    device = getattr(array, "device", None)
    return f"device {device.id}" if hasattr(device, "id") else str(device)


def _on_input_device(op):
    """Run a backend op with its first array's device current: its outputs are allocated, and its
    kernels launched, on that device (not on whichever device happens to be current).

    Arrays on different devices raise a ValueError naming each array and its device, before any
    launch: CuPy checks devices for its own kernels, not for raw ones, which would read another
    GPU's memory through a pointer."""
    parameters = list(inspect.signature(op).parameters)[1:]  # after self

    @functools.wraps(op)
    def run(self, *args, **kwargs):
        named = {**dict(zip(parameters, args)), **kwargs}
        devices = {name: _device_label(a) for name, a in named.items() if isinstance(a, self.xp.ndarray)}
        if len(set(devices.values())) > 1:
            raise ValueError("arrays must all be on one device, got "
                             + ", ".join(f"{name} on {device}" for name, device in devices.items()))
        first = next(a for a in named.values() if isinstance(a, self.xp.ndarray))
        with self._on_device(first):
            return op(self, *args, **kwargs)

    return run


class KernelBackend:
    """The backend interface (see ``gpuconv.backends``) over compiled ``kernels/*.cu`` modules.

    ``get_function(filename, name_expression)`` returns a memoised kernel of the current device,
    called as ``kernel(grid, block, args)``. Every op runs whole inside ``on_device(its first
    array)``, so its outputs are allocated, and its kernels run, on the arrays' device (CuPy
    launches on that device's current stream). ``fprop_kernel``,
    ``dgrad_kernel`` and ``wgrad_kernel`` are each one of KERNEL_CHOICES[op]: 'auto' (the op's
    ``choose_*``), 'direct' or a tile name (tests run each). With ``poison_outputs`` every output
    (and wgrad's split workspace) is filled with NaN before its kernel runs, so an element a kernel
    fails to write shows up in the result.
    """

    def __init__(self, name: str, xp, get_function, on_device, poison_outputs: bool = False,
                 fprop_kernel: str = "auto", dgrad_kernel: str = "auto",
                 wgrad_kernel: str = "auto", allocate=None, tensor_cores=lambda: True,
                 cp_async=lambda: True):
        self._kernels = dict(fprop=fprop_kernel, dgrad=dgrad_kernel, wgrad=wgrad_kernel)
        for op, kernel in self._kernels.items():
            if kernel not in KERNEL_CHOICES[op]:
                raise ValueError(f"{op}_kernel must be one of {KERNEL_CHOICES[op]}, got {kernel!r}")
        self.name, self.xp = name, xp
        self._allocate = allocate or xp.empty  # outputs and workspaces
        self._get_function, self._on_device = get_function, on_device
        self._poison = poison_outputs
        self._tensor_cores = tensor_cores  # () -> whether the current device runs *_tc.cu
        self._cp_async = cp_async  # () -> whether it runs the cp.async tiles (Tile.min_arch)

    # -- plumbing ----------------------------------------------------------------------------
    def _empty(self, shape, dtype):
        out = self._allocate(shape, dtype)
        if self._poison:
            out.fill(np.nan)
        return out

    def _launch(self, filename: str, name_expression: str, total: int, args: tuple, op=None,
                tile=None, p=None, dynamic_shared: int = 0):
        """One launch; ``dynamic_shared`` bytes of dynamic shared memory (opted in above 48 KiB)."""
        if total == 0:  # a grid of zero blocks is a launch error; there is nothing to do
            return
        grid, block = launch_config(total, op, tile, p)
        kernel = self._get_function(filename, name_expression)
        if dynamic_shared:
            kernel.max_dynamic_shared_size_bytes = dynamic_shared
        kernel(grid, block, args, shared_mem=dynamic_shared)

    # -- convolutions ------------------------------------------------------------------------
    @_on_input_device
    def fprop(self, p, x, w, bias, activation):
        y = self._empty(p.y_shape, p.dtype)
        kernel = choose_fprop(p, self._kernels["fprop"], self._cp_async())
        self._launch("fprop.cu", kernel_name("fprop", p.dtype, kernel, activation), y.size,
                     (x, w, _pointer(bias), y) + conv_args(p), "fprop", TILES["fprop"].get(kernel), p)
        return y

    def _tensor_tile(self, op: str, p, precision: str):
        """(kind, tile name) of the tensor-core kernel that runs ``op`` on ``p`` on this device, or
        None (``tensor_kind``, ``choose_tensor_core``, an sm_75 GPU)."""
        kind = tensor_kind(p.dtype, precision)
        kernel = kind and self._tensor_cores() and choose_tensor_core(op, p, self._kernels[op])
        return (kind, kernel) if kernel else None

    @_on_input_device
    def fprop_tensor_cores(self, p, x, w, bias, activation, precision):
        """y of ``p`` from fprop_tc.cu: float16 and bfloat16 arrays as they are, float32 at
        precision='tf32'; or None where no tensor-core kernel runs ``p`` on this device
        (``_tensor_tile``): the caller then computes it in float32 on the kernels of ``fprop``."""
        chosen = self._tensor_tile("fprop", p, precision)
        if chosen is None:
            return None
        (kind, kernel), y = chosen, self._empty(p.y_shape, p.dtype)
        staging = tensor_staging("fprop", p, kernel, w)
        if staging != "plain":  # w as [K][R][S][C/groups]: the tap-major reduction contiguous
            w = w.reshape(p.groups, p.K_per_group, p.C_per_group, p.R, p.S).transpose(0, 1, 3, 4, 2)
        if staging == "halo":
            return self._fprop_halo(kind, kernel, p, x, w, bias, y, activation)
        if staging == "tap_major_vector":
            w = self._aligned_contiguous(w)
        name = tensor_kernel_name("fprop", kind, kernel, staging)
        self._launch("fprop_tc.cu", name, y.size,
                     (x, w, _pointer(bias), y) + conv_args(p) + (np.int32(ACTIVATION_IDS[activation]),),
                     "fprop", TENSOR_TILES["fprop"][kernel], p)
        return y

    def _aligned_contiguous(self, a):
        """``a`` contiguous and 16-byte aligned for the kernels' 16-byte loads: itself where it is,
        else a copy (fresh allocations are aligned)."""
        a = self.xp.ascontiguousarray(a)
        return a if _address(a) % 16 == 0 else a.copy()

    def _fprop_halo(self, kind: str, kernel: str, p, x, w_krsc, bias, y, activation=None):
        """y of fprop ``p`` on halo tile ``kernel``: ``w_krsc`` is w as [K/groups·groups][R][S][C/groups]
        (any strides: copied contiguous here; at 'tf32' rounded as the kernel's cvt.rna would, since
        its copies to shared memory do not pass through registers), the kernel's shared memory
        dynamic."""
        from ..api import round_to_tf32  # (api imports the backends)

        w = round_to_tf32(self.xp, w_krsc) if kind == "tf32" else w_krsc
        self._launch("fprop_tc.cu", tensor_kernel_name("fprop", kind, kernel, "halo"), y.size,
                     (x, self._aligned_contiguous(w), _pointer(bias), y) + conv_args(p)
                     + (np.int32(ACTIVATION_IDS[activation]),),
                     "fprop", TENSOR_TILES["fprop"][kernel], p, halo_shared_bytes(halo_positions(p)))
        return y

    @_on_input_device
    def dgrad_tensor_cores(self, p, dy, w, bias, precision):
        """dx of ``p`` from dgrad_tc.cu (as ``fprop_tensor_cores``), or None."""
        chosen = self._tensor_tile("dgrad", p, precision)
        if chosen is None:
            return None
        (kind, kernel), dx = chosen, self._empty(p.x_shape, p.dtype)
        if kernel in FPROP_HALO_TILES:  # stride 1: fprop of dy, w flipped and transposed group by group
            w_krsc = w.reshape(p.groups, p.K_per_group, p.C_per_group, p.R, p.S)[:, :, :, ::-1, ::-1]
            return self._fprop_halo(kind, kernel, dgrad_as_fprop(p), dy, w_krsc.transpose(0, 2, 3, 4, 1),
                                    bias, dx)
        staging = tensor_staging("dgrad", p, kernel, w)
        if staging == "tap_major":  # w as [C/groups][R][S][K/groups] a group: a k-tile's K contiguous
            w = self._aligned_contiguous(
                w.reshape(p.groups, p.K_per_group, p.C_per_group, p.R, p.S).transpose(0, 2, 3, 4, 1))
        name = tensor_kernel_name("dgrad", kind, kernel, staging)
        self._launch("dgrad_tc.cu", name, dx.size,
                     (dy, w, _pointer(bias), dx) + conv_args(p), "dgrad", TENSOR_TILES["dgrad"][kernel], p)
        return dx

    @_on_input_device
    def wgrad_tensor_cores(self, p, x, dy, precision):
        """dw of ``p`` from wgrad_tc.cu (as ``fprop_tensor_cores``), or None. The splits' float32
        partial tiles go to a float32 workspace, summed in a fixed order and rounded once to dw's
        type (``wgrad_tensor_reduce``); float32 with one split writes dw itself."""
        chosen = self._tensor_tile("wgrad", p, precision)
        if chosen is None:
            return None
        (kind, kernel), dw = chosen, self._empty(p.w_shape, p.dtype)
        tile = TENSOR_TILES["wgrad"][kernel]
        splits, chunk = wgrad_splits(p, tile)
        direct = splits == 1 and kind_dtype(kind) == "float32"
        partial = dw if direct else self._empty((splits, *p.w_shape), "float32")
        halo = kernel == WGRAD_HALO_TILE
        staging = tensor_staging("wgrad", p, kernel, dy)
        if staging in ("halo", "halo_wide") and _address(dy) % 8:  # 8-byte copies: a fresh copy is aligned
            dy = dy.copy()
        self._launch("wgrad_tc.cu", tensor_kernel_name("wgrad", kind, kernel, staging), dw.size,
                     (x, dy, partial) + conv_args(p)
                     + (np.int64(chunk), np.int32(wgrad_halo_positions(p) if halo else 0)), "wgrad", tile, p,
                     wgrad_halo_shared_bytes(staging) if halo else 0)
        if not direct:
            self._launch("wgrad_tc.cu", f"wgrad_tensor_reduce<{TENSOR_KINDS[kind]}>", dw.size,
                         (partial, dw, np.int64(dw.size), np.int32(splits)))
        return dw

    @_on_input_device
    def dgrad(self, p, dy, w, bias=None):
        dx = self._empty(p.x_shape, p.dtype)
        kernel = choose_dgrad(p, self._kernels["dgrad"], self._cp_async())
        self._launch("dgrad.cu", kernel_name("dgrad", p.dtype, kernel), dx.size,
                     (dy, w, _pointer(bias), dx) + conv_args(p), "dgrad", TILES["dgrad"].get(kernel), p)
        return dx

    @_on_input_device
    def wgrad(self, p, x, dy):
        dw = self._empty(p.w_shape, p.dtype)
        kernel = choose_wgrad(p, self._kernels["wgrad"], self._cp_async())
        name = kernel_name("wgrad", p.dtype, kernel)
        if kernel == "direct":
            self._launch("wgrad.cu", name, dw.size, (x, dy, dw) + conv_args(p))
            return dw
        # Split-K: each split's partial dw into its own slice of a workspace, then one fixed-order
        # sum of the slices; a single split writes dw itself.
        tile = TILES["wgrad"][kernel]
        splits, chunk = wgrad_splits(p, tile)
        partial = dw if splits == 1 else self._empty((splits, *p.w_shape), p.dtype)
        self._launch("wgrad.cu", name, dw.size, (x, dy, partial) + conv_args(p) + (np.int64(chunk),),
                     "wgrad", tile, p)
        if splits > 1:
            self._launch("wgrad.cu", f"wgrad_reduce_splits<{CTYPES[p.dtype]}>", dw.size,
                         (partial, dw, np.int64(dw.size), np.int32(splits)))
        return dw

    # -- elementwise -------------------------------------------------------------------------
    @_on_input_device
    def bias_grad(self, dy):
        N, K, P, Q = dy.shape
        db = self._empty((K,), dy.dtype)
        args = (dy, db, _int32("N", N), _int32("K", K), np.int64(P * Q))
        self._launch("elementwise.cu", f"bias_grad<{CTYPES[dy.dtype.name]}>", K, args, "bias_grad")
        return db

    def _map(self, kernel: str, *inputs):
        out = self._empty(inputs[0].shape, inputs[0].dtype)
        name = f"{kernel}<{CTYPES[out.dtype.name]}>"
        self._launch("elementwise.cu", name, out.size, (*inputs, out, np.int64(out.size)))
        return out

    @_on_input_device
    def relu(self, x):
        return self._map("relu_forward", x)

    @_on_input_device
    def relu_backward(self, dy, x):
        return self._map("relu_backward", dy, x)

    @_on_input_device
    def sigmoid(self, x):
        return self._map("sigmoid_forward", x)

    @_on_input_device
    def sigmoid_backward(self, dy, y):
        return self._map("sigmoid_backward", dy, y)


# -- the two backends ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _emulate_module(filename: str, **emulate_options):
    from ..emulate import Module

    return Module(code=source(filename), options=compile_options(), name_expressions=KERNELS[filename],
                  **emulate_options)


@functools.lru_cache(maxsize=None)
def _emulate_function(filename: str, name_expression: str, **emulate_options):
    return _emulate_module(filename, **emulate_options).get_function(name_expression)


@functools.lru_cache(maxsize=None)
def emulate_backend(fprop_kernel: str = "auto", dgrad_kernel: str = "auto",
                    wgrad_kernel: str = "auto", **emulate_options) -> KernelBackend:
    """The kernels run on the CPU by ``gpuconv.emulate`` on NumPy arrays; outputs are NaN-poisoned.

    The ``*_kernel`` arguments are KernelBackend's. ``emulate_options`` (e.g. ``mode='asan'``,
    ``schedule='reverse'``) go to ``emulate.Module``.
    """
    from ..emulate import device_empty

    function = functools.partial(_emulate_function, **emulate_options)
    return KernelBackend("emulate", np, function, _no_device, True, fprop_kernel, dgrad_kernel,
                         wgrad_kernel, device_empty)


def _no_device(array):
    return contextlib.nullcontext()


# -- the cuda backend's kernels: compiled by NVRTC, cached on disk, loaded once per device ----------


def kernel_cache_dir() -> Path:
    """Where the cuda backend keeps compiled kernels: ``GPUCONV_KERNEL_CACHE``, else
    ``~/.cache/gpuconv/kernels``."""
    return Path(os.environ.get("GPUCONV_KERNEL_CACHE") or Path.home() / ".cache" / "gpuconv" / "kernels")


def device_arch(compute_capability: int, supported) -> str:
    """NVRTC's -arch for a device of ``compute_capability`` (e.g. 90) given the architectures this
    NVRTC ``supported``: the device's own cubin (sm_90) when NVRTC knows it, else PTX of the newest
    older architecture it knows, which the driver compiles for a GPU newer than this NVRTC."""
    if compute_capability in supported:
        return f"sm_{compute_capability}"
    older = [a for a in supported if a < compute_capability]
    if not older:
        raise RuntimeError(f"this NVRTC compiles for compute capabilities {sorted(supported)}, none "
                           f"of them at most the device's {compute_capability}")
    return f"compute_{max(older)}"


def compiled_kernel(filename: str, name_expression: str, arch: str) -> tuple[Path, str]:
    """(image file, lowered name) of one kernel instance for ``arch``: from the disk cache, else
    compiled by ``compile_check.nvrtc_compile`` and published by atomic renames (the name first,
    the image last, so a reader that finds the image finds its name).

    Each instance is compiled alone, when first launched: NVRTC takes 0.1-2.4 s an instance but
    7 s for all 18 of fprop.cu, of which a program launches a few. The key covers the source,
    every file of kernels/ (the headers), the options, the NVRTC version and the architecture."""
    from ..compile_check import nvrtc_compile, nvrtc_version
    from ..emulate._build import _hash, _headers_digest, _publish

    key = _hash("gpuconv-nvrtc-1", source(filename), _headers_digest([_paths.kernels_dir()]),
                nvrtc_options(arch), nvrtc_version(), arch, name_expression)
    cache = kernel_cache_dir()
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)  # private: others must not plant cubins
    image = cache / f"{key}.{'ptx' if arch.startswith('compute_') else 'cubin'}"
    lowered = cache / f"{key}.name"
    if not (image.is_file() and lowered.is_file()):
        code, _, names = nvrtc_compile(filename, arch, name_expressions=[name_expression])
        _publish(lambda path: path.write_text(next(iter(names))), lowered)
        _publish(lambda path: path.write_bytes(code), image)
    return image, lowered.read_text()


@functools.lru_cache(maxsize=None)
def _cuda_function(device_id: int, filename: str, name_expression: str):
    import cupy

    from ..compile_check import nvrtc_supported_archs

    device = cupy.cuda.Device(device_id)
    with device:
        arch = device_arch(int(device.compute_capability), nvrtc_supported_archs())
        image, lowered = compiled_kernel(filename, name_expression, arch)
        return cupy.RawModule(path=str(image)).get_function(lowered)


def _current_device_function(filename: str, name_expression: str):
    import cupy

    return _cuda_function(cupy.cuda.Device().id, filename, name_expression)


@functools.lru_cache(maxsize=None)
def cuda_backend(poison_outputs: bool = False, fprop_kernel: str = "auto",
                 dgrad_kernel: str = "auto", wgrad_kernel: str = "auto") -> KernelBackend:
    """The kernels on the current CUDA device and stream, on CuPy arrays.

    Raises RuntimeError without CuPy (with the install hint) or without a usable GPU.
    ``poison_outputs`` (tests) fills outputs with NaN before each kernel; the ``*_kernel``
    arguments are KernelBackend's.
    """
    try:
        import cupy
    except ImportError as e:
        raise RuntimeError(f"the cuda backend needs CuPy, which is not installed: "
                           f"{CUDA_INSTALL_HINT}") from e
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as e:
        raise RuntimeError(f"the cuda backend found no usable CUDA GPU: {e}") from e
    if count == 0:
        raise RuntimeError("the cuda backend found no CUDA GPU (cudaGetDeviceCount() = 0)")
    check_nvrtc(cupy.cuda.runtime.driverGetVersion())
    return KernelBackend("cuda", cupy, _current_device_function, _array_device, poison_outputs,
                         fprop_kernel, dgrad_kernel, wgrad_kernel,
                         tensor_cores=lambda: int(cupy.cuda.Device().compute_capability) >= 80,
                         cp_async=lambda: int(cupy.cuda.Device().compute_capability) >= 80)


def check_nvrtc(driver_version: int) -> None:
    """Raise RuntimeError, with the install hint, without the NVRTC the kernels compile with
    (cuda-bindings) or when it is of a newer CUDA major version than the driver
    (``driver_version``, as cudaDriverGetVersion: 12080 for 12.8), which cannot load its code."""
    from ..compile_check import nvrtc_available, nvrtc_version

    if not nvrtc_available():
        raise RuntimeError("the cuda backend compiles its kernels with NVRTC through cuda-bindings, "
                           f"which is not installed: {CUDA_INSTALL_HINT}")
    nvrtc = nvrtc_version()
    if int(nvrtc.split(".")[0]) > driver_version // 1000:
        raise RuntimeError(f"NVRTC {nvrtc} (cuda-bindings) is newer than the driver's CUDA "
                           f"{driver_version // 1000}.{driver_version % 1000 // 10}, which cannot "
                           f"load what it compiles: {CUDA_INSTALL_HINT} (the one of your driver)")


def _array_device(array):
    return array.device  # a cupy.cuda.Device: entering it makes it current
