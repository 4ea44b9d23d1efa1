"""The SASS analyzer: each kernel's main loop as the GPU would issue it, read without a GPU.

Every kernel instance the ``cuda`` backend can launch (``kernel_backend.KERNELS``) is compiled by
NVRTC with exactly the options that backend's NVRTC receives (``compile_check.nvrtc_compile``:
ours and those CuPy appends, plus ``-Xptxas=-v`` for the resource report, which leaves the SASS
unchanged) and disassembled with ``nvdisasm`` (the ``nvidia-cuda-nvdisasm`` wheel). In each
kernel:

- a *loop* is a backward branch (a ``BRA`` to an address at or before it) and its body the
  instructions from the target to the branch; the *main loop* is the loop whose body holds the
  most FFMA + DFMA + HMMA, the smallest such body on a tie (the innermost);
- per iteration of that body we count, statically (every instruction of the body once, taken
  branches or not): all instructions, FFMA / DFMA / HMMA and their *share* of the body, shared
  loads (LDS, LDSM), global loads (LDG) and asynchronous copies (LDGSTS) by bits per thread, shared
  stores (STS) by bits, barriers (BAR), calls (a 64-bit division is a ``CALL`` to a subroutine
  outside the body, whose own instructions are not counted) and the rest (integer, address,
  conversion and control instructions);
- per kernel: registers, spills and static shared memory (ptxas' report, else
  ``cuobjdump -res-usage``) plus the dynamic shared memory a launch asks for, threads per block
  and the theoretical occupancy on the architecture (``occupancy``: cuda_occupancy.h's rules over
  ``ARCH_LIMITS``).

The anchor: CUTLASS's SIMT fp32 implicit-GEMM conv2d fprop and its sm_80 tensor-op f16 fprop,
dgrad (unit stride) and wgrad, instantiated from the ``nvidia-cutlass`` wheel's headers in a
translation unit written at run time (only the type aliases below live here), compiled by the
machine's ``nvcc -cubin`` (the cubin is cached under ``~/.cache/gpuconv/sass``) and analyzed by
the same code.

``python -m gpuconv.sass --arch sm_80 --out bench/results`` writes ``sass-sm_80.md`` and
``sass-sm_80.json``; ``--json`` prints the list of reports.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .backends.kernel_backend import (
    ACTIVATION_IDS,
    BIAS_GRAD_THREADS,
    CTYPES,
    FPROP_HALO_TILES,
    HALO_REPORTED_POSITIONS,
    KERNELS,
    TENSOR_KINDS,
    TENSOR_TILES,
    THREADS_PER_BLOCK,
    TILES,
    WGRAD_HALO_POSITIONS,
    WGRAD_HALO_TILE,
    halo_shared_bytes,
    kernel_name,
    kernels_for,
    kind_dtype,
    tensor_kernel_name,
    tile_stagings,
    wgrad_halo_shared_bytes,
)
from .compile_check import ARCHS, nvcc_path, nvcc_version, nvrtc_compile, nvrtc_version, parse_ptxas

PERF_HINT = "pip install 'gpuconv[perf]'"
MATH = ("FFMA", "DFMA", "HMMA")


class ToolMissing(RuntimeError):
    pass


# -- the tools -----------------------------------------------------------------------------------


def tool_path(name: str) -> str:
    """``nvdisasm`` or ``cuobjdump``: from the NVIDIA wheels (``nvidia/cu13/bin`` for CUDA 13,
    ``nvidia/cuda_<tool>/bin`` for CUDA 12) if installed, else from PATH."""
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for candidate in sorted(Path(root).glob(f"*/bin/{name}")):
            if os.access(candidate, os.X_OK):
                return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise ToolMissing(f"{name} not found in the nvidia-cuda-{name} wheel nor on PATH: {PERF_HINT}")
    return found


def tool_version(name: str) -> str:
    out = subprocess.run([tool_path(name), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release ([\d.]+), V([\d.]+)", out)
    return m.group(2) if m else "unknown"


def _run(name: str, *args: str) -> str:
    run = subprocess.run([tool_path(name), *args], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{name} {' '.join(args)} failed:\n{run.stderr}")
    return run.stdout


# -- reading SASS --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    address: int
    opcode: str  # with its modifiers, e.g. "LDS.U.128"; no predicate
    target: str | None  # the label a BRA / CALL names
    never: bool = False  # guarded by @!PT: issued, never executed (ptxas pads LDGSTS with LDS so)


_SECTION = re.compile(r"^\s*\.section\s+\.text\.([^,\s]+)")
_LABEL = re.compile(r"^([^\s/][^\s]*):\s*$")
_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(.*?)\s*;")
_TARGET = re.compile(r"`\(([^)]+)\)")


def parse_sass(text: str) -> dict[str, tuple[list[Instruction], dict[str, int]]]:
    """nvdisasm's listing → {function (mangled): (instructions, label → address)}. A function's
    section also holds the subroutines it calls (e.g. ``$__internal_0_$__cuda_sm20_div_s64``)."""
    functions, name, pending = {}, None, []
    for line in text.splitlines():
        if m := _SECTION.match(line):
            name = m.group(1)
            functions[name] = ([], {})
            pending = []
        elif name is None:
            continue
        elif m := _LABEL.match(line):
            pending.append(m.group(1))
        elif m := _INSTRUCTION.match(line):
            instructions, labels = functions[name]
            address = int(m.group(1), 16)
            for label in pending:
                labels[label] = address
            pending = []
            words = m.group(2).split()
            guard = words.pop(0) if words[0].startswith("@") else None  # @P0, @!UP1, @!PT
            target = _TARGET.search(m.group(2))
            instructions.append(Instruction(address, words[0], target.group(1) if target else None,
                                            guard == "@!PT"))
    return functions


def loops(instructions: list[Instruction], labels: dict[str, int]) -> list[tuple[int, int]]:
    """(first, last) index of every loop body: a BRA back to an earlier instruction. The branch to
    itself that ends a function (a halt after EXIT) is no loop."""
    index = {ins.address: i for i, ins in enumerate(instructions)}
    found = []
    for i, ins in enumerate(instructions):
        if ins.opcode.split(".")[0] == "BRA" and ins.target in labels:
            start = index.get(labels[ins.target])
            if start is not None and start < i:
                found.append((start, i))
    return found


def _math(body: list[Instruction]) -> int:
    return sum(ins.opcode.split(".")[0] in MATH for ins in body)


def main_loop(instructions: list[Instruction], labels: dict[str, int]) -> tuple[int, int] | None:
    """The loop holding the most FFMA + DFMA + HMMA; on a tie the smallest body (the innermost)."""
    candidates = loops(instructions, labels)
    if not candidates:
        return None
    return max(candidates, key=lambda lo_hi: (_math(instructions[lo_hi[0]:lo_hi[1] + 1]),
                                              lo_hi[0] - lo_hi[1]))


def access_bits(opcode: str) -> int:
    """Bits per thread of a load or store: the width modifier (LDS.128, LDG.E.64, STS.U8) or 32;
    LDSM.16.M88.<n> moves n 8×8 matrices of 16-bit elements, 32·n bits per thread."""
    base, *mods = opcode.split(".")
    if base == "LDSM":
        return 32 * (int(mods[-1]) if mods and mods[-1] in ("2", "4") else 1)
    for mod in mods:
        if mod in ("8", "16", "32", "64", "128"):
            return int(mod)
        if mod in ("U8", "S8", "U16", "S16"):
            return int(mod[1:])
    return 32


@dataclass(frozen=True)
class LoopCounts:
    """Static counts of one loop body (one iteration); widths are bits per thread."""

    instructions: int
    ffma: int
    dfma: int
    hmma: int
    lds: dict  # LDS and LDSM: bits → count
    ldsm: int  # how many of lds are LDSM
    ldg: dict
    ldgsts: dict
    sts: dict
    bar: int
    # callee → count. A CALL.REL.NOINC to a local label (.L_x_N) is no call: ptxas leaves loops
    # that way (a jump that pushes no return address).
    calls: dict
    rest: dict  # every other opcode (without modifiers) → count


def count(body: list[Instruction]) -> LoopCounts:
    bases = Counter()
    lds, ldg, ldgsts, sts, calls, rest = Counter(), Counter(), Counter(), Counter(), Counter(), Counter()
    by_base = {"LDS": lds, "LDSM": lds, "LDG": ldg, "LDGSTS": ldgsts, "STS": sts}
    for ins in body:
        base = ins.opcode.split(".")[0]
        if ins.never:  # an issue slot, no access and no math
            rest[f"@!PT {base}"] += 1
            continue
        bases[base] += 1
        if base in by_base:
            by_base[base][access_bits(ins.opcode)] += 1
        elif base == "CALL" and not (ins.target or "").startswith(".L_"):
            calls[ins.target or "(indirect)"] += 1
        elif base not in (*MATH, "BAR"):
            rest[base] += 1
    return LoopCounts(len(body), bases["FFMA"], bases["DFMA"], bases["HMMA"], dict(sorted(lds.items())),
                      bases["LDSM"], dict(sorted(ldg.items())), dict(sorted(ldgsts.items())),
                      dict(sorted(sts.items())), bases["BAR"], dict(calls), dict(rest.most_common()))


# -- occupancy -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchLimits:
    max_threads: int  # resident threads per SM
    max_blocks: int  # resident blocks per SM
    shared_per_sm: int  # the largest shared-memory carveout, bytes
    shared_per_block: int  # the most one block may use (opt-in), bytes
    shared_reserved: int  # reserved by the driver per block (sm_80+), bytes
    shared_granularity: int  # allocation unit, bytes
    registers_per_sm: int = 65536
    register_granularity: int = 256  # registers, allocated per warp
    sub_partitions: int = 4  # each holds a quarter of the register file


# Per SM, from the CUDA C++ Programming Guide's table "Technical Specifications per Compute
# Capability" (threads, blocks, shared memory per SM and per block, registers) and CUDA 13.0's
# cuda_occupancy.h (granularities, the reservation per block, register sub-partitions).
ARCH_LIMITS = {
    "sm_75": ArchLimits(1024, 16, 64 << 10, 64 << 10, 0, 256),
    "sm_80": ArchLimits(2048, 32, 164 << 10, 163 << 10, 1024, 128),
    "sm_86": ArchLimits(1536, 16, 100 << 10, 99 << 10, 1024, 128),
    "sm_89": ArchLimits(1536, 24, 100 << 10, 99 << 10, 1024, 128),
    "sm_90": ArchLimits(2048, 32, 228 << 10, 227 << 10, 1024, 128),
}


@dataclass(frozen=True)
class Occupancy:
    blocks_per_sm: int
    warps_per_sm: int
    fraction: float  # resident warps ÷ the SM's maximum
    limiter: str  # 'threads', 'blocks', 'registers' or 'shared memory'


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def occupancy(arch: str, threads: int, registers: int, shared_bytes: int) -> Occupancy:
    """Resident blocks and warps per SM for a block of ``threads`` threads using ``registers`` per
    thread and ``shared_bytes`` of shared memory (static + dynamic), as cuda_occupancy.h computes
    it with the default carveout (the largest) and the per-block opt-in limit."""
    if arch not in ARCH_LIMITS:
        raise ValueError(f"arch must be one of {sorted(ARCH_LIMITS)}, got {arch!r}")
    if threads < 1:
        raise ValueError(f"threads must be positive, got {threads}")
    lim = ARCH_LIMITS[arch]
    warps = -(-threads // 32)
    limits = {"threads": lim.max_threads // 32 // warps, "blocks": lim.max_blocks}
    # Registers go to warps in units of 256, and each of the 4 sub-partitions holds whole warps.
    per_warp = _round_up(registers * 32, lim.register_granularity)
    warps_per_partition = (lim.registers_per_sm // lim.sub_partitions) // per_warp if per_warp else 10**9
    fits = per_warp * _round_up(warps, lim.sub_partitions) <= lim.registers_per_sm
    limits["registers"] = warps_per_partition * lim.sub_partitions // warps if fits else 0
    # Shared memory: the driver's reservation counts against every block (sm_80+).
    per_block = _round_up(shared_bytes + lim.shared_reserved, lim.shared_granularity)
    if per_block > lim.shared_per_block + lim.shared_reserved:
        limits["shared memory"] = 0
    else:
        limits["shared memory"] = lim.shared_per_sm // per_block if per_block else 10**9
    limiter = min(limits, key=limits.get)
    blocks = limits[limiter]
    return Occupancy(blocks, blocks * warps, blocks * warps / (lim.max_threads // 32), limiter)


# -- the report ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoopReport:
    """One kernel's main loop on one architecture.

    Counts are per iteration of the loop body, static (each instruction of the body once).
    ``lds``, ``ldg``, ``ldgsts`` and ``sts`` map bits per thread (32, 64, 128; 8 and 16 for
    narrow accesses) to the number of such instructions: ``sum(r.lds.values())`` is all shared
    loads. ``lds`` includes LDSM (``ldsm`` of them), counted at 32 bits per 8×8 matrix.
    ``calls`` maps each called subroutine to its calls in the body. ``rest`` is every other
    instruction of the body (integer, address, conversion, control, and those guarded by @!PT,
    which issue but never execute: ``@!PT LDS`` loads nothing), ``rest_opcodes`` the same
    by opcode. ``shared_bytes`` is static plus dynamic shared memory per block; ``spills`` the
    bytes of spill stores plus loads in ptxas' report (None without one). ``occupancy`` is
    resident warps ÷ the SM's maximum (None when ``threads`` is unknown). ``loop`` is the body's
    first and last address, None for a kernel without a loop (then every count is 0).
    """

    kernel: str  # the name expression, or a CUTLASS kernel's label
    arch: str
    source: str  # 'gpuconv' or 'cutlass'
    loop_instructions: int
    ffma: int
    dfma: int
    hmma: int
    lds: dict
    ldsm: int
    ldg: dict
    ldgsts: dict
    sts: dict
    bar: int
    calls: dict
    rest: int
    rest_opcodes: dict
    registers: int
    spills: int | None
    stack_bytes: int
    shared_bytes: int
    threads: int | None
    blocks_per_sm: int | None
    warps_per_sm: int | None
    occupancy: float | None
    occupancy_limiter: str | None
    loop: tuple[int, int] | None

    @property
    def share(self) -> float:
        """(FFMA + DFMA + HMMA) ÷ the instructions of the loop body."""
        return (self.ffma + self.dfma + self.hmma) / self.loop_instructions if self.loop_instructions else 0.0

    def to_dict(self) -> dict:
        """JSON-ready: width keys as strings, plus ``share``."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        for name in ("lds", "ldg", "ldgsts", "sts"):
            out[name] = {str(bits): n for bits, n in out[name].items()}
        out["loop"] = list(self.loop) if self.loop else None
        out["share"] = round(self.share, 4)
        return out


def _on_file(tool: str, cubin: bytes, *args: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernels.cubin"
        path.write_bytes(cubin)
        return _run(tool, *args, str(path))


def disassemble(cubin: bytes) -> str:
    """nvdisasm's listing of the code sections of ``cubin``."""
    return _on_file("nvdisasm", cubin, "-c")


def resource_usage(cubin: bytes) -> dict[str, tuple[int, int, int, int]]:
    """Mangled kernel name → (registers, stack, static shared, local bytes), from cuobjdump."""
    text = _on_file("cuobjdump", cubin, "-res-usage")
    return {m.group(1): tuple(int(v) for v in m.groups()[1:]) for m in _RESOURCES.finditer(text)}


_RESOURCES = re.compile(r"Function ([^:\s]+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


@functools.lru_cache(maxsize=4)
def _functions(cubin: bytes) -> dict[str, tuple[list[Instruction], dict[str, int]]]:
    """parse_sass of ``cubin``'s listing, kept for the next few cubins: the kernels of one module
    compiled whole are analyzed a few at a time (compile_check serves parts of it)."""
    return parse_sass(disassemble(cubin))


def analyze_cubin(cubin: bytes, arch: str, names: dict[str, str], threads=None, dynamic_shared=None,
                  ptxas_log: str | None = None, source: str = "gpuconv") -> list[LoopReport]:
    """Reports for the kernels of any cubin: ``names`` maps mangled → the name to report (kernels
    not in it are skipped); ``threads`` and ``dynamic_shared`` map that name to the block size
    and dynamic shared bytes of a launch (occupancy is None without ``threads``); ``ptxas_log``,
    the ``-Xptxas -v`` report, gives the spills."""
    threads, dynamic_shared = threads or {}, dynamic_shared or {}
    functions = _functions(cubin)
    resources = resource_usage(cubin)
    # ptxas' figures when there is a report: on sm_90, cuobjdump's shared memory also holds the
    # driver's 1 KB reservation, which occupancy() adds to every block itself.
    reported = {r.kernel: r for r in parse_ptxas(ptxas_log or "", "", names)}
    reports = []
    for mangled, name in names.items():
        if mangled not in functions:
            raise ValueError(f"kernel {name!r} ({mangled}) is not in the {arch} cubin")
        instructions, labels = functions[mangled]
        loop = main_loop(instructions, labels)
        body = instructions[loop[0]:loop[1] + 1] if loop else []
        c = count(body)
        registers, stack, static_shared, _ = resources[mangled]
        if ptxas := reported.get(name):
            registers, stack, static_shared = ptxas.registers, ptxas.stack_bytes, ptxas.shared_bytes
        shared = static_shared + dynamic_shared.get(name, 0)
        occ = occupancy(arch, threads[name], registers, shared) if name in threads else None
        reports.append(LoopReport(
            name, arch, source, c.instructions, c.ffma, c.dfma, c.hmma, c.lds, c.ldsm, c.ldg, c.ldgsts,
            c.sts, c.bar, c.calls, sum(c.rest.values()), c.rest, registers,
            ptxas and ptxas.spill_stores + ptxas.spill_loads, stack,
            shared, threads.get(name), occ and occ.blocks_per_sm, occ and occ.warps_per_sm,
            occ and round(occ.fraction, 4), occ and occ.limiter,
            (body[0].address, body[-1].address) if body else None))
    return reports


def launch_threads() -> dict[str, int]:
    """Threads per block the cuda backend launches each kernel instance with (launch_config): a
    tile's (BM/TM)·(BN/TN), BIAS_GRAD_THREADS for bias_grad, THREADS_PER_BLOCK for the rest."""
    threads = {e: THREADS_PER_BLOCK for es in KERNELS.values() for e in es}
    threads.update({f"bias_grad<{t}>": BIAS_GRAD_THREADS for t in CTYPES.values()})
    for op, tiles in TILES.items():
        for tile_name, tile in tiles.items():
            for dtype in CTYPES:
                for activation in ACTIVATION_IDS if op == "fprop" else (None,):
                    threads[kernel_name(op, dtype, tile_name, activation)] = tile.threads
    for op, tiles in TENSOR_TILES.items():
        for tile_name, tile in tiles.items():
            for kind in TENSOR_KINDS:
                for staging in tile_stagings(op, tile_name):
                    threads[tensor_kernel_name(op, kind, tile_name, staging)] = tile.threads
    return threads


def launch_dynamic_shared() -> dict[str, int]:
    """Dynamic shared memory bytes the cuda backend launches instances with: fprop's halo tiles'
    (``halo_shared_bytes``, sized by the problem: here for HALO_REPORTED_POSITIONS) and wgrad's
    (``wgrad_halo_shared_bytes``); none for the others."""
    def kinds(tile):
        return [kind for kind in TENSOR_KINDS if kind_dtype(kind) in tile.dtypes]

    fprop_halo = halo_shared_bytes(HALO_REPORTED_POSITIONS)
    return {**{tensor_kernel_name("fprop", kind, name, "halo"): fprop_halo
               for name in FPROP_HALO_TILES for kind in kinds(TENSOR_TILES["fprop"][name])},
            **{tensor_kernel_name("wgrad", kind, WGRAD_HALO_TILE, staging): wgrad_halo_shared_bytes(staging)
               for kind in kinds(TENSOR_TILES["wgrad"][WGRAD_HALO_TILE]) for staging in WGRAD_HALO_POSITIONS}}


def analyze(archs=ARCHS, kernels=None) -> list[LoopReport]:
    """Reports for every kernel instance of ``kernels/*.cu`` (or only the name expressions in
    ``kernels``) on every architecture of ``archs``, compiled as the cuda backend compiles them."""
    archs = [archs] if isinstance(archs, str) else list(archs)
    unknown_archs = [a for a in archs if a not in ARCH_LIMITS]
    if unknown_archs:
        raise ValueError(f"archs: unknown architecture {unknown_archs}; known: {sorted(ARCH_LIMITS)}")
    wanted = None if kernels is None else set(kernels)
    if wanted is not None:
        unknown = wanted - {e for es in KERNELS.values() for e in es}
        if unknown:
            raise ValueError(f"kernels: no such instance {sorted(unknown)}; see kernel_backend.KERNELS")
    reports, threads = [], launch_threads()
    for arch in archs:
        for filename, expressions in kernels_for(arch).items():
            if wanted is not None and not wanted & set(expressions):
                continue
            # Only the instances asked for: a module of many instances takes NVRTC minutes.
            subset = None if wanted is None else [e for e in expressions if e in wanted]
            cubin, log, names = nvrtc_compile(filename, arch, ("-Xptxas=-v",), name_expressions=subset)
            names = {m: e for m, e in names.items() if wanted is None or e in wanted}
            reports += analyze_cubin(cubin, arch, names, threads, launch_dynamic_shared(), ptxas_log=log)
    return reports


# -- the anchor: CUTLASS -------------------------------------------------------------------------

# The template arguments of cutlass::conv::kernel::DefaultConv2d<Op> per kernel, named as CUTLASS's
# profiler names them (the op is in the name: cutlass_op). Only these aliases live here: the
# headers come from the nvidia-cutlass wheel.
# Tensor-op f16 in, f32 accumulation, f16 out: mma.sync 16×8×16, 128×128×64 threadblock, 64×64×64
# warps, 3 stages, optimized iterators, strided, 128-bit (8 × f16) accesses.
_TENSOROP_F16 = """
        cutlass::half_t, cutlass::layout::TensorNHWC, cutlass::half_t, cutlass::layout::TensorNHWC,
        cutlass::half_t, cutlass::layout::TensorNHWC, float,
        cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80,
        cutlass::gemm::GemmShape<128, 128, 64>, cutlass::gemm::GemmShape<64, 64, 64>,
        cutlass::gemm::GemmShape<16, 8, 16>,
        cutlass::epilogue::thread::LinearCombination<cutlass::half_t, 8, float, float>,
        cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<>, 3,
        cutlass::arch::OpMultiplyAdd, cutlass::conv::IteratorAlgorithm::kOptimized,
        cutlass::conv::StrideSupport::kStrided, 8, 8"""
CUTLASS_KERNELS = {
    # SIMT fp32, 128×128×8 threadblock, 32×64×8 warps, 4 stages, optimized iterators, align 1.
    "cutlass_simt_sfprop_optimized_128x128_8x4_nhwc_align1": """
        float, cutlass::layout::TensorNHWC, float, cutlass::layout::TensorNHWC,
        float, cutlass::layout::TensorNHWC, float,
        cutlass::arch::OpClassSimt, cutlass::arch::Sm80,
        cutlass::gemm::GemmShape<128, 128, 8>, cutlass::gemm::GemmShape<32, 64, 8>,
        cutlass::gemm::GemmShape<1, 1, 1>,
        cutlass::epilogue::thread::LinearCombination<float, 1, float, float>,
        cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<>, 4,
        cutlass::arch::OpMultiplyAdd, cutlass::conv::IteratorAlgorithm::kOptimized,
        cutlass::conv::StrideSupport::kStrided, 1, 1""",
    "cutlass_tensorop_f16_s16816fprop_optimized_f16_128x128_64x3_nhwc_align8": _TENSOROP_F16,
    # dgrad at unit stride (kUnity): kStrided needs a swizzle of its own; the main loop is the same
    "cutlass_tensorop_f16_s16816dgrad_optimized_f16_128x128_64x3_nhwc_unity_stride_align8":
        _TENSOROP_F16.replace("StrideSupport::kStrided", "StrideSupport::kUnity"),
    "cutlass_tensorop_f16_s16816wgrad_optimized_f16_128x128_64x3_nhwc_align8": _TENSOROP_F16,
}
CUTLASS_HINT = "pip install 'gpuconv[bench]' (the nvidia-cutlass wheel)"
# As CUTLASS's own Python front end compiles with nvcc (cutlass_cppgen/backend/compiler.py).
CUTLASS_NVCC_OPTIONS = ("-std=c++17", "--expt-relaxed-constexpr", "-DNDEBUG")
_LAUNCH_SHAPE = re.compile(r"gpuconv_launch_shapeILi(\d+)ELi(\d+)EE")


def cutlass_op(kernel: str) -> str:
    """The op of a CUTLASS kernel name: 'fprop', 'dgrad' or 'wgrad' (..._s16816dgrad_..., _sfprop_)."""
    found = re.search(r"_s(?:16816)?(fprop|dgrad|wgrad)_", kernel)
    if not found:
        raise ValueError(f"no op (fprop, dgrad, wgrad) in the CUTLASS kernel name {kernel!r}")
    return found.group(1)


def cutlass_translation_unit(kernel: str) -> str:
    """The .cu that instantiates CUTLASS kernel ``kernel`` (a CUTLASS_KERNELS name). A second, empty
    kernel carries the launch's block size and dynamic shared memory in its mangled name."""
    op = cutlass_op(kernel)
    default = f"DefaultConv2d{op.capitalize()}"
    return f"""#include "cutlass/cutlass.h"
#include "cutlass/device_kernel.h"
#include "cutlass/conv/kernel/default_conv2d_{op}.h"
#include "cutlass/epilogue/thread/linear_combination.h"
#include "cutlass/gemm/threadblock/threadblock_swizzle.h"

using Conv = typename cutlass::conv::kernel::{default}<{CUTLASS_KERNELS[kernel]}>::Kernel;

template <int Threads, int SharedBytes> __global__ void gpuconv_launch_shape() {{}}
void* gpuconv_instances[] = {{(void*)cutlass::Kernel<Conv>,
    (void*)gpuconv_launch_shape<Conv::kThreadCount, int(sizeof(typename Conv::SharedStorage))>}};
"""


def cutlass_include_dir() -> Path:
    """The C++ headers the nvidia-cutlass wheel ships (cutlass_library/source/include)."""
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or spec.origin is None:
        raise ToolMissing(f"the nvidia-cutlass wheel is not installed: {CUTLASS_HINT}")
    include = Path(spec.origin).parent / "source" / "include"
    if not (include / "cutlass" / "cutlass.h").is_file():
        raise ToolMissing(f"no CUTLASS headers under {include}: {CUTLASS_HINT}")
    return include


def cutlass_version() -> str:
    from importlib.metadata import version

    return version("nvidia-cutlass")


def cutlass_archs(archs) -> list[str]:
    """The architectures of ``archs`` CUTLASS's Sm80 kernels run on (cp.async, mma.sync 16816)."""
    return [a for a in archs if int(a.removeprefix("sm_")) >= 80]


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpuconv" / "sass"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cutlass_cubin(kernel: str, arch: str) -> tuple[bytes, str]:
    """(cubin, ptxas log) of CUTLASS kernel ``kernel`` for ``arch``, from nvcc -cubin; cached under
    ``cache_dir()`` by a hash of the translation unit, the options and nvcc's and CUTLASS's
    versions."""
    if nvcc_path() is None:
        raise ToolMissing("nvcc not found on PATH: the CUTLASS anchor needs the CUDA toolkit's nvcc")
    tu = cutlass_translation_unit(kernel)
    options = (*CUTLASS_NVCC_OPTIONS, f"-I{cutlass_include_dir()}", "-cubin", f"-arch={arch}",
               "-Xptxas", "-v")
    key = hashlib.sha256("\n".join((tu, *options, nvcc_version(), cutlass_version())).encode()).hexdigest()
    cubin_path = cache_dir() / f"{kernel}-{arch}-{key[:16]}.cubin"
    log_path = cubin_path.with_suffix(".log")
    if cubin_path.is_file() and log_path.is_file():
        _log(f"{kernel} {arch}: cached {cubin_path}")
        return cubin_path.read_bytes(), log_path.read_text()
    _log(f"{kernel} {arch}: compiling with nvcc {nvcc_version()} (seconds to minutes) ...")
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        cu, out = Path(tmp) / f"{kernel}.cu", Path(tmp) / "out.cubin"
        cu.write_text(tu)
        run = subprocess.run([nvcc_path(), *options, "-o", str(out), str(cu)], capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"nvcc failed on CUTLASS kernel {kernel} for {arch}:\n{run.stderr[-4000:]}")
        cubin = out.read_bytes()
    cubin_path.parent.mkdir(parents=True, exist_ok=True)
    cubin_path.write_bytes(cubin)
    log_path.write_text(run.stderr)
    _log(f"{kernel} {arch}: compiled in {time.monotonic() - start:.0f} s, cached {cubin_path}")
    return cubin, run.stderr


def analyze_cutlass(archs=("sm_80",), kernels=None) -> list[LoopReport]:
    """Reports for the CUTLASS kernels (CUTLASS_KERNELS, or those named in ``kernels``) on the
    architectures of ``archs`` from sm_80 on."""
    reports = []
    for arch in cutlass_archs(archs):
        for kernel in kernels or CUTLASS_KERNELS:
            cubin, log = cutlass_cubin(kernel, arch)
            entries = [r.kernel for r in parse_ptxas(log, "nvcc", {})]
            (shape,) = [_LAUNCH_SHAPE.search(e) for e in entries if _LAUNCH_SHAPE.search(e)]
            (mangled,) = [e for e in entries if not _LAUNCH_SHAPE.search(e)]
            threads, dynamic_shared = (int(v) for v in shape.groups())
            reports += analyze_cubin(cubin, arch, {mangled: kernel}, {kernel: threads},
                                     {kernel: dynamic_shared}, log, source="cutlass")
    return reports


# -- the report ----------------------------------------------------------------------------------


def load_reports(path) -> list[LoopReport]:
    """The reports of a ``sass-<arch>.json`` written by ``write_report`` (e.g. CUTLASS's figures on
    a machine without nvcc)."""
    reports = []
    for d in json.loads(Path(path).read_text())["reports"]:
        d = {k: v for k, v in d.items() if k in LoopReport.__dataclass_fields__}
        for name in ("lds", "ldg", "ldgsts", "sts"):
            d[name] = {int(bits): n for bits, n in d[name].items()}
        d["loop"] = tuple(d["loop"]) if d["loop"] else None
        reports.append(LoopReport(**d))
    return reports


def tool_versions(with_cutlass: bool) -> dict[str, str]:
    versions = {"nvrtc": nvrtc_version(), "nvdisasm": tool_version("nvdisasm"),
                "cuobjdump": tool_version("cuobjdump")}
    if with_cutlass:
        versions |= {"nvcc": nvcc_version(), "nvidia-cutlass": cutlass_version()}
    return versions


def _widths(by_bits: dict) -> str:
    return " + ".join(f"{n}×{bits}" for bits, n in sorted(by_bits.items())) or "–"


def _math_cell(r: LoopReport) -> str:
    return " + ".join(f"{n} {op}" for op, n in zip(MATH, (r.ffma, r.dfma, r.hmma)) if n) or "–"


def _row(r: LoopReport) -> str:
    name = f"**{r.kernel}**" if r.source == "cutlass" else f"`{r.kernel}`"
    calls = ", ".join(f"{n}× {c.strip('$').split('$__cuda_')[-1]}" for c, n in r.calls.items()) or "–"
    occupancy = (f"{r.blocks_per_sm} × {r.threads} = {r.occupancy:.0%} ({r.occupancy_limiter})"
                 if r.occupancy is not None else "–")
    lds = _widths(r.lds) + (f" ({r.ldsm} LDSM)" if r.ldsm else "")
    cells = [name, r.loop_instructions, _math_cell(r), f"{r.share:.1%}", lds, _widths(r.ldg),
             _widths(r.ldgsts), _widths(r.sts), r.bar, r.rest, calls, r.registers,
             "?" if r.spills is None else r.spills, r.shared_bytes, occupancy]
    return "| " + " | ".join(str(c) for c in cells) + " |"


_HEADER = ("| kernel | loop instr. | FFMA / DFMA / HMMA | share | LDS by bits | LDG by bits "
           "| LDGSTS by bits | STS by bits | BAR | rest | calls | regs | spill B | smem B "
           "| blocks × threads / SM = occupancy |")
_RULE = "| --- |" + " ---: |" * 14

HOW_TO_READ = """\
How to read this table. Each row is one kernel instance as the GPU would run it: its *main loop* is
the backward branch of the SASS whose body holds the most FFMA/DFMA/HMMA (the innermost on a tie),
and every count is of that body's instructions, once each (a static count of one iteration, not a
measurement: a slow path inside the loop counts although it rarely runs; a subroutine it calls is
not counted). *share* is (FFMA + DFMA + HMMA) ÷ loop instructions: the fraction of issue slots that
do arithmetic. A SIMT kernel that hides its index arithmetic reaches 70–80 % (CUTLASS's row); every
other instruction is a cycle the math units wait. An HMMA does 16×8×16 multiply-adds for a warp, so
tensor-op shares are not comparable with FFMA shares. *LDS by bits* counts shared loads by bits per
thread (`16×128` = sixteen 128-bit loads; LDSM moves 8×8 matrices, 32 bits per thread each): wider
loads move the same bytes in fewer instructions. LDG are global loads through registers, LDGSTS
asynchronous copies straight to shared memory (cp.async, sm_80+), STS shared stores, BAR barriers.
*rest* is all the others: integer and address arithmetic, predicates, conversions, branches.
*calls* are subroutine calls per iteration (a 64-bit division or a slow-path reciprocal).
*blocks × threads / SM* is the theoretical occupancy from registers, shared memory (plus the
driver's 1 KB per block on sm_80+), threads and blocks per SM, and what limits it.
"""


def markdown(reports: list[LoopReport], arch: str, versions: dict[str, str]) -> str:
    from .backends.kernel_backend import nvrtc_options

    # The include path as in a checkout, so that the report does not depend on where it was made.
    options = " ".join("-I kernels" if o.startswith("-I") else o for o in nvrtc_options(arch))
    mine = [r for r in reports if r.arch == arch]
    tiled = [r for r in mine if r.source == "cutlass" or "_implicit_gemm<" in r.kernel]
    other = [r for r in mine if r not in tiled]
    tools = ", ".join(f"{k} {v}" for k, v in versions.items())
    cutlass = ("CUTLASS's: its headers from the nvidia-cutlass wheel, instantiated with "
               "`DefaultConv2dFprop` (Sm80 kernels; names as CUTLASS's profiler gives them), compiled by "
               f"`nvcc {' '.join(CUTLASS_NVCC_OPTIONS)} -cubin -arch={arch}`; ")
    lines = [
        f"# Main loops in SASS, {arch}",
        "",
        f"Written by `python -m gpuconv.sass --arch {arch} --out bench/results` (all figures also in "
        f"`sass-{arch}.json`). Static counts read from the SASS, not measurements: no GPU was used. Our "
        f"kernels: NVRTC with the options the cuda backend's NVRTC receives (`{options} -Xptxas=-v`); "
        + (cutlass if any(r.source == "cutlass" for r in mine) else "no CUTLASS rows (none asked for, "
           "or an architecture before sm_80, which its Sm80 kernels need); ")
        + f"disassembled with nvdisasm, resources from ptxas' report. Tools: {tools}.",
        "",
        HOW_TO_READ,
        "## Implicit-GEMM kernels beside CUTLASS",
        "",
        _HEADER,
        _RULE,
        *(_row(r) for r in tiled),
        "",
        "## Direct and elementwise kernels",
        "",
        _HEADER,
        _RULE,
        *(_row(r) for r in other),
    ]
    return "\n".join(lines) + "\n"


def write_report(reports: list[LoopReport], arch: str, versions: dict[str, str], out: Path) -> str:
    """Write ``out/sass-<arch>.md`` and ``.json``; return the markdown."""
    text = markdown(reports, arch, versions)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"sass-{arch}.md").write_text(text)
    data = {"arch": arch, "tools": versions, "reports": [r.to_dict() for r in reports if r.arch == arch]}
    (out / f"sass-{arch}.json").write_text(json.dumps(data, indent=1) + "\n")
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpuconv.sass", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", action="append", choices=ARCHS,
                        help=f"target architecture (repeatable; default: all of {', '.join(ARCHS)})")
    parser.add_argument("--kernel", action="append",
                        help="only this name expression, e.g. 'fprop_implicit_gemm<float, 0, 64, 64, 8, "
                             "4, 4>' (repeatable; default: every instance of kernel_backend.KERNELS)")
    parser.add_argument("--no-cutlass", action="store_true",
                        help="leave out CUTLASS's kernels (otherwise compiled by nvcc for sm_80 and newer)")
    parser.add_argument("--json", action="store_true", help="print the reports as a JSON list")
    parser.add_argument("--out", type=Path, help="folder for sass-<arch>.md and sass-<arch>.json")
    args = parser.parse_args(argv)
    archs = args.arch or list(ARCHS)
    try:
        reports = analyze(archs, args.kernel)
        with_cutlass = not args.no_cutlass and not args.kernel and bool(cutlass_archs(archs))
        if with_cutlass:
            reports += analyze_cutlass(archs)
        versions = tool_versions(with_cutlass)
    except ToolMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out:
        for arch in archs:
            write_report(reports, arch, versions, args.out)
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=1))
    elif not args.out:
        for arch in archs:
            print(markdown(reports, arch, versions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
