"""The ``cuda`` and ``emulate`` backends: one dispatch path over the kernels of ``kernels/*.cu``.

Both run the very same kernel source. They differ only in the module class that compiles it
(``cupy.RawModule`` through NVRTC, or ``gpuconv.emulate.Module`` through the host C++ compiler) and
in the array module (CuPy or NumPy). Everything else is shared: which template instances each
source holds (``KERNELS``), the compile options (``compile_options()``, also used by
``gpuconv.compile_check``), the grid (``launch_config``) and the argument lists, whose scalars are
explicitly typed NumPy scalars matching the kernel signatures (``int`` → ``np.int32``,
``index_t`` → ``np.int64``); a missing bias is the null pointer ``NULL``.

Sizes go to the kernels as 32-bit ints and every linear index and offset is 64-bit inside them, so
tensors beyond 2**31 elements work; a single size (or padded extent) beyond 2**31 - 1 raises a
``ValueError`` before any launch. The tiled kernels also keep their reduction index (C·R·S or
K·R·S per group) and some pixel counts in 32 bits: ``launchable`` sends a problem beyond those to the
direct kernel.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import math
from dataclasses import dataclass

import numpy as np

from .. import _paths
from . import CUDA_INSTALL_HINT

# Compile options of every kernel module: the cuda backend's, the emulator's, and the compile
# check's for every architecture (it adds only -arch and -Xptxas -v).
OPTIONS = ("--std=c++17",)


@functools.lru_cache(maxsize=None)
def compile_options() -> tuple[str, ...]:
    """OPTIONS, the include path of the kernels folder (the kernels include "common.cuh" and
    "gemm.cuh") and a hash of those headers as a define: CuPy's kernel cache keys on the source
    text and the options, not on included headers, so without it an edited header would load a
    stale cubin."""
    headers = b"".join(p.read_bytes() for p in sorted(_paths.kernels_dir().glob("*.cuh")))
    digest = hashlib.sha256(headers).hexdigest()[:16]
    return (*OPTIONS, f"-I{_paths.kernels_dir()}", f"-DGPUCONV_HEADERS_SHA={digest}")


def nvrtc_options(arch: str) -> tuple[str, ...]:
    """Every option NVRTC receives when the cuda backend compiles a module for ``arch`` ('sm_80'):
    ``compile_options()`` and what CuPy 14's RawModule appends on its own (cupy/cuda/compiler.py:
    ``-ftz=true``, the cubin architecture, ``--device-as-default-execution-space``). The compile
    check and the SASS analyzer compile with exactly these, so what they report is what runs."""
    return (*compile_options(), "-ftz=true", f"-arch={arch}", "--device-as-default-execution-space")


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
    (BM/WM)·(BN/WN)·32 threads a block. ``dtypes``: the dtypes it is instantiated for."""

    BM: int
    BN: int
    BK: int
    WM: int
    WN: int
    TM: int
    TN: int
    dtypes: tuple[str, ...] = ("float32", "float64")

    @property
    def threads(self) -> int:
        return (self.BM // self.WM) * (self.BN // self.WN) * 32

    def template_args(self) -> str:
        return f"{self.BM}, {self.BN}, {self.BK}, {self.WM}, {self.WN}, {self.TM}, {self.TN}"


F32 = ("float32",)
# The named tile configurations, the same for the three ops (GEMM shapes: Conv2dProblem.gemm_shape;
# fprop M = N·P·Q, N = K/groups; dgrad M = N·H·W per stride phase, N = C/groups; wgrad M = K/groups,
# N = C/groups·R·S). Every one is compiled, checked and tested. float32 takes 8×8 thread tiles (four
# 4×4 sub-tiles: 64 FFMAs per 4 LDS.128) in warps of 32×64 as CUTLASS's SIMT kernels do; float64
# 4×4 (2×2 sub-tiles of double2), its registers being twice as wide.
_TILES = {
    "128x128x8_8x8": Tile(BM=128, BN=128, BK=8, WM=32, WN=64, TM=8, TN=8, dtypes=F32),  # 256 thr
    "128x64x8_8x8": Tile(BM=128, BN=64, BK=8, WM=32, WN=64, TM=8, TN=8, dtypes=F32),    # 128 thr
    "64x128x8_8x8": Tile(BM=64, BN=128, BK=8, WM=32, WN=64, TM=8, TN=8, dtypes=F32),    # 128 thr
    "64x64x8_8x8": Tile(BM=64, BN=64, BK=8, WM=32, WN=64, TM=8, TN=8, dtypes=F32),      # 64 thr
    "64x64x8_4x4": Tile(BM=64, BN=64, BK=8, WM=32, WN=16, TM=4, TN=4, dtypes=("float64",)),
    "32x32x8_4x4": Tile(BM=32, BN=32, BK=8, WM=32, WN=16, TM=4, TN=4),  # 64 thr; narrow layers
}
TILES = {op: _TILES for op in ("fprop", "dgrad", "wgrad")}
# What each op's kernel argument of the backends accepts: 'auto' (the op's choose_*), 'direct'
# or one of its tiles.
KERNEL_CHOICES = {op: ("auto", "direct", *tiles) for op, tiles in TILES.items()}


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


def _choose(op: str, p, kernel: str) -> str:
    """'direct' or the TILES[op] name to run ``p`` with (``choose_fprop`` and friends).

    ``auto`` goes direct when the GEMM's channel side (fprop K/groups, dgrad C/groups, wgrad
    K/groups) is under 8: a depthwise layer would fill a tile with zeros. float64 takes 64×64
    where the GEMM's M and N fill it, else 32×32. float32 takes, of the 8×8-thread tiles whose
    BM×BN the GEMM's M and N fill (largest first: ``F32_TILES_BY_SIZE``), the first whose grid
    gives every SM of an H100 a block (fewer blocks leave SMs idle: a smaller tile buys
    parallelism with data reuse), else the smallest of them; wgrad takes the largest, its split-K
    fills the GPU whatever the tile; a GEMM too small for 64×64 takes 32×32. A forced tile falls
    back to direct only where it cannot run (``launchable``: a dtype it is not built for, or
    sizes beyond its index range).
    """
    M, N = _block_gemm_shape(op, p)
    if kernel == "auto":
        channels = N if op != "wgrad" else M
        if channels < 8:
            return "direct"
        if p.dtype == "float64":
            kernel = "64x64x8_4x4" if M >= 64 and N >= 64 else "32x32x8_4x4"
        else:
            fits = [k for k in F32_TILES_BY_SIZE if M >= TILES[op][k].BM and N >= TILES[op][k].BN]
            if not fits:
                kernel = "32x32x8_4x4"
            elif op == "wgrad":
                kernel = fits[0]
            else:
                kernel = next((k for k in fits if _blocks(op, p, TILES[op][k]) >= H100_SMS), fits[-1])
    return kernel if kernel == "direct" or launchable(op, p, kernel) else "direct"


F32_TILES_BY_SIZE = ("128x128x8_8x8", "128x64x8_8x8", "64x128x8_8x8", "64x64x8_8x8")


def _blocks(op: str, p, tile: Tile) -> int:
    grid, _ = launch_config(0, op, tile, p)
    return math.prod(grid)


def choose_fprop(p, kernel: str = "auto") -> str:
    """'direct' or the TILES['fprop'] name to run ``p`` with (see ``_choose``)."""
    return _choose("fprop", p, kernel)


def choose_dgrad(p, kernel: str = "auto") -> str:
    """'direct' or the TILES['dgrad'] name to run ``p`` with (see ``_choose``)."""
    return _choose("dgrad", p, kernel)


def choose_wgrad(p, kernel: str = "auto") -> str:
    """'direct' or the TILES['wgrad'] name to run ``p`` with (see ``_choose``)."""
    return _choose("wgrad", p, kernel)


def launchable(op: str, p, kernel: str) -> bool:
    """Whether tile ``kernel`` of ``op`` can run ``p``: built for its dtype, its grid within CUDA's
    limits and the indices the kernel keeps in an int within range (an element's offset inside one
    image of x or dy, C·H·W and K·P·Q; the reduction index, C·R·S or K·R·S per group, plus a step;
    dgrad: all of a stride phase's N·Hp·Wp pixels + BM; wgrad: P·Q + BK and a split's chunk + BK)."""
    tile = TILES[op][kernel]
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
    blocks = ceil_div(p.C_per_group * p.R * p.S, tile.BN) * p.groups * ceil_div(p.K_per_group, tile.BM)
    want = min(ceil_div(H100_SMS * resident_blocks(tile), blocks), MAX_SPLITS,
               max(1, npq // (MIN_SPLIT_TILES * tile.BK)))
    chunk = ceil_div(ceil_div(npq, want), tile.BK) * tile.BK
    return ceil_div(npq, chunk), chunk


# Every template instance, per source file: the NVRTC name expressions of its module.
def _instances(op: str, activations=(None,)) -> list[str]:
    return [kernel_name(op, d, k, a) for d in CTYPES for a in activations
            for k in ("direct", *TILES[op]) if k == "direct" or d in TILES[op][k].dtypes]


KERNELS = {
    "fprop.cu": _instances("fprop", ACTIVATION_IDS),
    "dgrad.cu": _instances("dgrad"),
    "wgrad.cu": _instances("wgrad") + [f"wgrad_reduce_splits<{t}>" for t in CTYPES.values()],
    "elementwise.cu": [
        f"{k}<{t}>"
        for k in ("bias_grad", "relu_forward", "relu_backward", "sigmoid_forward", "sigmoid_backward")
        for t in CTYPES.values()
    ],
}

THREADS_PER_BLOCK = 256
BIAS_GRAD_THREADS = 256  # = BIAS_GRAD_THREADS in kernels/elementwise.cu (its tree's width)
# The kernels loop grid-stride, so the grid may be smaller than the work; this cap keeps it far
# below every limit (gridDim.x < 2**31) while still filling any GPU many times over.
MAX_BLOCKS = 65536
INT32_MAX = 2**31 - 1


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def launch_config(total: int, op: str | None = None, tile: Tile | None = None, p=None):
    """(grid, block) of a launch.

    Direct and elementwise kernels (``total`` outputs): one thread per output, grid-stride beyond
    MAX_BLOCKS; bias_grad: one block per output channel. The implicit-GEMM kernel of ``op`` (with
    ``tile`` and the problem ``p``): ``tile.threads`` threads a block, and the grid
      fprop: x over tiles of BM output pixels, y over (group, tile of BN output channels);
      dgrad: x over tiles of BM pixels of the largest stride phase, y over (group, tile of BN input
             channels), z over the stride_h·stride_w phases;
      wgrad: x over tiles of BN taps (c,r,s), y over (group, tile of BM output channels), z over
             the reduction splits (``wgrad_splits``).
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
        grid = (ceil_div(p.C_per_group * p.R * p.S, tile.BN), G * ceil_div(p.K_per_group, tile.BM),
                wgrad_splits(p, tile)[0])
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


def _on_input_device(op):
    """Run a backend op with its first array's device current: its outputs are allocated, and its
    kernels launched, on that device (not on whichever device happens to be current)."""

    @functools.wraps(op)
    def run(self, *args, **kwargs):
        first = next(a for a in args if isinstance(a, self.xp.ndarray))
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
                 wgrad_kernel: str = "auto"):
        self._kernels = dict(fprop=fprop_kernel, dgrad=dgrad_kernel, wgrad=wgrad_kernel)
        for op, kernel in self._kernels.items():
            if kernel not in KERNEL_CHOICES[op]:
                raise ValueError(f"{op}_kernel must be one of {KERNEL_CHOICES[op]}, got {kernel!r}")
        self.name, self.xp = name, xp
        self._get_function, self._on_device = get_function, on_device
        self._poison = poison_outputs

    # -- plumbing ----------------------------------------------------------------------------
    def _empty(self, shape, dtype):
        out = self.xp.empty(shape, dtype)
        if self._poison:
            out.fill(np.nan)
        return out

    def _launch(self, filename: str, name_expression: str, total: int, args: tuple, op=None,
                tile=None, p=None):
        if total == 0:  # a grid of zero blocks is a launch error; there is nothing to do
            return
        grid, block = launch_config(total, op, tile, p)
        self._get_function(filename, name_expression)(grid, block, args)

    # -- convolutions ------------------------------------------------------------------------
    @_on_input_device
    def fprop(self, p, x, w, bias, activation):
        y = self._empty(p.y_shape, p.dtype)
        kernel = choose_fprop(p, self._kernels["fprop"])
        self._launch("fprop.cu", kernel_name("fprop", p.dtype, kernel, activation), y.size,
                     (x, w, _pointer(bias), y) + conv_args(p), "fprop", TILES["fprop"].get(kernel), p)
        return y

    @_on_input_device
    def dgrad(self, p, dy, w, bias=None):
        dx = self._empty(p.x_shape, p.dtype)
        kernel = choose_dgrad(p, self._kernels["dgrad"])
        self._launch("dgrad.cu", kernel_name("dgrad", p.dtype, kernel), dx.size,
                     (dy, w, _pointer(bias), dx) + conv_args(p), "dgrad", TILES["dgrad"].get(kernel), p)
        return dx

    @_on_input_device
    def wgrad(self, p, x, dy):
        dw = self._empty(p.w_shape, p.dtype)
        kernel = choose_wgrad(p, self._kernels["wgrad"])
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

    @_on_input_device
    def _map(self, kernel: str, *inputs):
        out = self._empty(inputs[0].shape, inputs[0].dtype)
        name = f"{kernel}<{CTYPES[out.dtype.name]}>"
        self._launch("elementwise.cu", name, out.size, (*inputs, out, np.int64(out.size)))
        return out

    def relu(self, x):
        return self._map("relu_forward", x)

    def relu_backward(self, dy, x):
        return self._map("relu_backward", dy, x)

    def sigmoid(self, x):
        return self._map("sigmoid_forward", x)

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
    function = functools.partial(_emulate_function, **emulate_options)
    return KernelBackend("emulate", np, function, _no_device, True, fprop_kernel, dgrad_kernel,
                         wgrad_kernel)


def _no_device(array):
    return contextlib.nullcontext()


@functools.lru_cache(maxsize=None)
def _cuda_module(device_id: int, filename: str):
    import cupy

    with cupy.cuda.Device(device_id):
        return cupy.RawModule(code=source(filename), options=compile_options(),
                              name_expressions=KERNELS[filename])


@functools.lru_cache(maxsize=None)
def _cuda_function(device_id: int, filename: str, name_expression: str):
    return _cuda_module(device_id, filename).get_function(name_expression)


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
    return KernelBackend("cuda", cupy, _current_device_function, _array_device, poison_outputs,
                         fprop_kernel, dgrad_kernel, wgrad_kernel)


def _array_device(array):
    return array.device  # a cupy.cuda.Device: entering it makes it current
