"""Run the CUDA kernels of ``kernels/*.cu`` on the CPU, with CuPy's ``RawModule`` interface.

The ``.cu`` text is compiled by the host C++ compiler with ``kernels/cuda_emu.h`` force-included into
a shared library, cached on disk and loaded with ctypes. Every CUDA thread runs as a fiber; the fibers
of a block share one OS thread and the blocks of a grid run one after another.

>>> from gpuconv.emulate import Module
>>> mod = Module(code=source_text, options=("-I" + kernels_dir, "--std=c++17"),
...              name_expressions=["fprop_direct<float>"])
>>> kernel = mod.get_function("fprop_direct<float>")
>>> kernel((blocks,), (256,), (x, w, y, np.int32(n)), shared_mem=0)   # NumPy arrays in and out

Arguments: NumPy arrays are passed as device pointers (their data pointer; None is a null pointer),
NumPy scalars by value, Python scalars as CuPy passes them (int64, float64, bool). Each argument is
checked against the kernel's parameter list and a wrong count, a scalar of the wrong size (np.int64
for an ``int``) or of the wrong kind (float for an integer) raises TypeError naming the kernel and
the argument index: on a GPU it would be silently wrong.

Options (CuPy/NVRTC style): ``-I``, ``-D``, ``-U`` are honoured; ``--std=c++NN`` compiles as
C++ max(NN, 17); ``-arch=sm_XY`` sets ``__CUDA_ARCH__`` (default 800); ``--use_fast_math`` defines
``__USE_FAST_MATH__`` but arithmetic stays IEEE (compare with tolerances); NVRTC code-generation
options (``-lineinfo``, ``--fmad=``, ``-Xptxas`` ...) are ignored; any other option is a ValueError.
``GPUCONV_EMULATE`` is defined, for emulation paths in ``common.cuh``.

cp.async (``common.cuh``'s ``cp_async_zfill``, ``cp_async_commit``, ``cp_async_wait<N>``) follows
the PTX ISA per thread: a copy's destination holds NaN bytes (0xFF) from the copy's start until a
``wait_group N`` lands its committed group (all groups but the N newest); ``__syncthreads`` lands
nothing, and a copy never waited for never lands. The race detector sees the copy's write at its
start and again when it lands; asan checks the global read when it lands.

Keywords beyond CuPy's, each with an environment default:

==============  ===========================  =================================================
``mode``        ``GPUCONV_EMULATE_MODE``     ``plain``; ``asan`` (AddressSanitizer and bounds
                                             checks; launches run in a worker subprocess that
                                             receives the arrays and sends them back);
                                             ``race`` (shared-memory hazards); ``coverage`` (gcov);
                                             ``profile`` (memory traffic per source line:
                                             ``Module.counters()``)
``schedule``    ``..._SCHEDULE``             order of threads between barriers: ``forward``,
                                             ``reverse`` or ``random`` (seeded by ``seed``)
``seed``        ``..._SEED``                 0
``fill``        ``..._FILL``                 shared memory at every block start: ``nan`` (0xFF
                                             bytes: NaN as float/double, -1 as int), ``huge``
                                             (0x7F bytes) or a byte value
``watchdog``    ``..._WATCHDOG``             seconds without progress before a DeadlockError (30)
==============  ===========================  =================================================

``path=`` reads the ``.cu`` file (CuPy takes a cubin there); line numbers in reports and coverage
name that file, as they do when ``code`` is byte-identical to a ``.cu`` file in an ``-I`` folder.
``extern __shared__`` declarations are rewritten in the given text only (not in headers). The cache
lives in ``GPUCONV_EMULATE_CACHE`` (default ``~/.cache/gpuconv/emulate``), keyed by source, options,
headers of the -I folders, compiler version and mode.

Findings raise ``EmulationError`` subclasses carrying the report: ``RaceError``, ``DivergenceError``
(``__syncthreads`` from two call sites in one phase; exited threads count as arrived, as on sm_70+),
``WarpError`` (mask rule, width, reading an inactive lane), ``DeadlockError`` (nothing runnable, or no
progress for ``watchdog`` seconds), ``AddressError`` (a cp.async outside shared memory or misaligned),
``SanitizerError`` (asan), ``LaunchError``, ``CompileError``.

Profile: kernels of a ``Module(..., mode="profile")`` run as in ``plain`` mode (the same results,
bitwise) while every global and shared memory access is recorded. A *warp-level request* is the
k-th execution of one instruction between two barriers by the lanes of one warp (lanes that skip it
are inactive in it); the profile build unrolls ``#pragma unroll`` loops of constant trip count as
nvcc does, so each unrolled element is an instruction of its own (a lane that skips a trip of a loop
that stays a loop still pairs its later trips with the others' earlier ones).
``Module.counters()`` returns, per (file, line, space, kind), the requests and what a GPU's
memory system does with them: global requests touch 32-byte *sectors* (distinct aligned sectors
over the active lanes); shared requests take *wavefronts* (the active lanes in phases of 128 bytes
— 32 lanes of 4-byte accesses, 16 of 8-byte, 8 of 16-byte — each phase costing the largest number of
distinct 4-byte words its lanes touch in one of the 32 banks). ``ideal`` is the same figure for
the bytes the request really needs (perfectly coalesced; conflict-free, which for shared memory is
the larger of its distinct bytes / 128 and its phases that hold an active lane). Accesses outside the
launch's arrays and shared memory (the stack, the parameters: registers on a GPU) are not counted.
Source-level accesses are counted: where nvcc merges neighbouring scalar accesses into one vector
instruction the GPU makes fewer requests (``python -m gpuconv.sass`` shows what nvcc did).

Coverage: launch kernels from ``Module(..., mode="coverage")``, then ``coverage_report(paths)`` returns
``{file: FileCoverage(covered, executable, uncovered)}`` over every coverage module loaded by this
process (the counts of earlier processes are discarded when a module is first loaded).
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import _build, _launch
from ._errors import (
    STATUS_ERRORS,
    AddressError,
    CompileError,
    DeadlockError,
    DivergenceError,
    EmulationError,
    LaunchError,
    RaceError,
    SanitizerError,
    WarpError,
)

__all__ = [
    "AddressError", "CompileError", "DeadlockError", "DivergenceError", "EmulationError", "FileCoverage",
    "Function", "LaunchError", "Module", "RaceError", "SanitizerError", "WarpError",
    "coverage_report", "device_empty",
]

_SHARED_LIMIT = 48 * 1024            # static + dynamic without the opt-in attribute
_SHARED_OPT_IN_LIMIT = 227 * 1024    # sm_90's largest opt-in
_EXTERN_C_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+(?:__launch_bounds__\([^)]*\)\s+)?void\s+(\w+)')
_coverage_libraries: dict[Path, ctypes.CDLL] = {}
# The profile's access kinds, by runtime.cpp's Kind numbers.
PROFILE_KINDS = ("load", "store", "atomic", "cp.async")


def _setting(value, variable: str, default, choices=None):
    value = value if value is not None else os.environ.get(variable, default)
    if choices is not None and value not in choices:
        raise ValueError(f"{variable.removeprefix('GPUCONV_EMULATE_').lower()} must be one of "
                         f"{choices}, got {value!r}")
    return value


class Module:
    """CuPy's ``RawModule`` for the CPU: see the module docstring."""

    def __init__(self, code: str | None = None, *, path=None, options=(), name_expressions=None,
                 backend: str = "nvrtc", mode=None, schedule=None, seed=None, fill=None,
                 watchdog=None):
        del backend  # CuPy's choice of NVRTC or nvcc: the host compiler does both jobs here
        if (code is None) == (path is None):
            raise TypeError("give exactly one of code= and path=")
        if path is not None:
            path = Path(path).resolve()
            code = path.read_text()
        self.mode = _setting(mode, "GPUCONV_EMULATE_MODE", "plain", _build.MODES)
        self.schedule = _setting(schedule, "GPUCONV_EMULATE_SCHEDULE", "forward",
                                 tuple(_launch.SCHEDULES))
        self.seed = int(_setting(seed, "GPUCONV_EMULATE_SEED", 0))
        fill = _setting(fill, "GPUCONV_EMULATE_FILL", "nan")
        if fill not in _launch.FILLS and not 0 <= int(fill) <= 255:
            raise ValueError(f"fill must be 'nan', 'huge' or a byte value, got {fill!r}")
        self.fill = fill if fill in _launch.FILLS else int(fill)
        self.watchdog = float(_setting(watchdog, "GPUCONV_EMULATE_WATCHDOG", 30.0))
        self.code = code
        self.options = _build.translate_options(options)
        if name_expressions is None:
            name_expressions = _EXTERN_C_KERNEL.findall(code)
        self.name_expressions = tuple(name_expressions)
        self.source_path = path or _build.find_source_path(code, self.options.include_dirs)
        self._build: _build.Build | None = None
        self._library: ctypes.CDLL | None = None
        self._signatures = None
        self._functions: dict[str, Function] = {}

    def compile(self) -> None:
        """Builds (or finds in the cache) and loads the library; get_function calls it."""
        if self._signatures is not None:
            return
        for rebuild in (False, True):
            self._build = _build.build(self.code, self.options, self.name_expressions, self.mode,
                                       self.source_path, rebuild=rebuild)
            try:
                self._load()
                return
            except (OSError, AttributeError) as error:
                if rebuild:  # a fresh build that does not load is not a cache problem
                    raise CompileError(f"{self._build.library} does not load: {error}") from error

    def _load(self) -> None:
        library = str(_build.trusted(self._build.library))  # dlopen runs its code as the user
        count = len(self.name_expressions)
        if self.mode == "asan":
            from ._worker import asan_request

            reply = asan_request(("signatures", library, count))
            if isinstance(reply, Exception):
                raise reply
            self._signatures = reply
            return
        if self.mode == "coverage" and self._build.directory not in _coverage_libraries:
            (self._build.directory / "kernel.gcda").unlink(missing_ok=True)
        self._library = ctypes.CDLL(library)
        self._signatures = _launch.signatures(self._library, count)
        if self.mode == "profile":  # the library may be loaded already, with another Module's counts
            self._library.gpuconv_profile_reset()
        if self.mode == "coverage":
            _coverage_libraries[self._build.directory] = self._library

    def get_function(self, name: str) -> Function:
        if name not in self._functions:
            if name not in self.name_expressions:
                raise KeyError(f"{name!r} is not one of this module's name expressions "
                               f"{self.name_expressions} (nor an extern \"C\" kernel)")
            self.compile()
            index = self.name_expressions.index(name)
            self._functions[name] = Function(self, name, index, self._signatures[index])
        return self._functions[name]

    def counters(self) -> list[dict]:
        """Profile mode: the memory traffic of this module's launches since it was compiled or since
        ``reset_counters()`` (Modules of the same text and options share one library and its
        counters), one dict per (file, line, space, kind) with keys ``file``, ``line``,
        ``space`` ('global' or 'shared'), ``kind`` ('load', 'store', 'atomic' or 'cp.async': its
        global read and its shared write are counted at the instruction), ``bytes`` (per
        lane per access), ``requests`` (warp-level), ``lanes`` (lane accesses), ``sectors``
        (global; 0 for shared), ``wavefronts`` (shared; 0 for global) and ``ideal`` (the sectors
        or wavefronts of perfectly coalesced, conflict-free requests for the same bytes)."""
        library = self._profile_library()
        rows = _launch.profile_rows(library)
        lines = _source_lines(self._build.library, tuple(int(r.pc) for r in rows))
        merged: dict[tuple, dict] = {}
        for row, (file, line) in zip(rows, lines):
            space, kind = ("global", "shared")[row.space], PROFILE_KINDS[row.kind]
            entry = merged.setdefault((file, line, space, kind), dict(
                file=file, line=line, space=space, kind=kind, bytes=0, requests=0, lanes=0,
                sectors=0, wavefronts=0, ideal=0))
            entry["bytes"] = max(entry["bytes"], int(row.bytes))
            for key in ("requests", "lanes", "sectors", "wavefronts", "ideal"):
                entry[key] += int(getattr(row, key))
        return sorted(merged.values(), key=lambda e: (e["file"], e["line"], e["space"], e["kind"]))

    def reset_counters(self) -> None:
        """Profile mode: start the counters of ``counters()`` again from zero."""
        self._profile_library().gpuconv_profile_reset()

    def _profile_library(self) -> ctypes.CDLL:
        if self.mode != "profile":
            raise EmulationError(f"counters are kept in profile mode only; this module's mode is "
                                 f"{self.mode!r} (Module(..., mode='profile'))")
        self.compile()
        return self._library

    def switch_count(self) -> int:
        """Fiber switches made by this module's launches so far (in-process modes)."""
        self.compile()
        if self._library is None:
            raise EmulationError("switch_count() is not available in asan mode (worker process)")
        self._library.gpuconv_switch_count.restype = ctypes.c_ulonglong
        return int(self._library.gpuconv_switch_count())


def device_empty(shape, dtype, alignment: int = 256) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a 256-byte boundary, as every
    cudaMalloc allocation does: the profile's sector counts depend on it."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(size + alignment, np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start:start + size].view(dtype).reshape(shape)


def _dims(value, what: str) -> tuple[int, int, int]:
    dims = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if not 1 <= len(dims) <= 3:
        raise LaunchError(f"{what} must be an int or a tuple of 1 to 3 ints, got {value!r}")
    return tuple(int(d) for d in dims) + (1,) * (3 - len(dims))


class Function:
    """One kernel: ``kernel(grid, block, args, shared_mem=0)`` as with ``cupy.RawKernel``."""

    def __init__(self, module: Module, name: str, index: int, signature):
        self.module = module
        self.kernel_name = name
        self.signature = signature  # ((kind, size), ...): p pointer, i/u integer, f float, b, s
        self._index = index
        self._shared = _kernel_shared_variables(module._build.shared, name, module.name_expressions)
        self.static_shared_bytes = sum(size for _, size, _ in self._shared)
        # CuPy's attribute: the dynamic shared memory allowed without an error (opt-in above 48 KiB).
        self.max_dynamic_shared_size_bytes = _SHARED_LIMIT - self.static_shared_bytes

    def __call__(self, grid, block, args, *, shared_mem: int = 0, stream=None,
                 enable_cooperative_groups: bool = False):
        del stream  # one CPU "device": launches are synchronous
        grid, block = _dims(grid, "grid"), _dims(block, "block")
        self._check_launch(grid, block, int(shared_mem), enable_cooperative_groups)
        arguments = _launch.check_arguments(self.kernel_name, self.signature, args)
        module = self.module
        launch = _launch.Launch(self._index, self.kernel_name, grid, block, int(shared_mem),
                                module.schedule, module.fill, module.seed, module.watchdog,
                                tuple((offset, size) for offset, size, _ in self._shared))
        if module.mode == "asan":
            status, report = self._call_in_worker(launch, arguments)
        else:
            status, report = _launch.call(module._library, launch, arguments)
        if status:
            raise STATUS_ERRORS.get(status, EmulationError)(self._explain(report))

    def _check_launch(self, grid, block, shared_mem, cooperative):
        name = self.kernel_name
        threads = block[0] * block[1] * block[2]
        if min(grid + block) < 1 or threads > 1024 or block[0] > 1024 or block[1] > 1024 or \
                block[2] > 64 or grid[0] > 2**31 - 1 or grid[1] > 65535 or grid[2] > 65535:
            raise LaunchError(f"kernel {name!r}: invalid launch grid {grid}, block {block} "
                              f"({threads} threads; limits: block (1024, 1024, 64) and 1024 "
                              f"threads, grid (2**31-1, 65535, 65535))")
        if cooperative:
            raise LaunchError(f"kernel {name!r}: cooperative launches are not emulated (blocks "
                              "run one after another, so a grid-wide sync would deadlock)")
        static = self.static_shared_bytes
        if shared_mem < 0 or shared_mem > self.max_dynamic_shared_size_bytes or \
                static + shared_mem > _SHARED_OPT_IN_LIMIT:
            raise LaunchError(
                f"kernel {name!r}: {shared_mem} bytes of dynamic shared memory (+{static} static) "
                f"exceed max_dynamic_shared_size_bytes={self.max_dynamic_shared_size_bytes}; above "
                f"{_SHARED_LIMIT} bytes in all, opt in by setting that attribute (at most "
                f"{_SHARED_OPT_IN_LIMIT} bytes in all)")

    def _call_in_worker(self, launch, arguments):
        from ._worker import asan_request

        arrays = [a for a in arguments if isinstance(a, np.ndarray)]
        for i, a in enumerate(arguments):
            if isinstance(a, np.ndarray) and not a.flags.c_contiguous:
                raise TypeError(f"kernel {self.kernel_name!r} argument {i}: asan mode copies arrays "
                                "to its worker process and needs C-contiguous ones")
        status, report, results = asan_request(("launch", str(self.module._build.library), launch,
                                                arguments))
        if status == 0:
            for original, result in zip(arrays, results):
                if original.flags.writeable:
                    np.copyto(original, result)
        return status, report

    def _explain(self, report: str) -> str:
        """Names the shared variable behind an offset and the source line behind a pc."""
        library = self.module._build.library
        if "static shared memory offset" in report:
            variables = _laid_end_to_end(self._shared)
            report = re.sub(r"static shared memory offset (\d+)",
                            lambda m: _name_offset(variables, int(m.group(1))), report)
        if "dynamic shared memory offset" in report and self.module._build.extern_shared:
            names = "/".join(self.module._build.extern_shared)
            report = re.sub(r"dynamic shared memory offset (\d+)",
                            rf"extern __shared__ {names} (byte \1)", report)
        return re.sub(r" \[pc:(0x[0-9a-f]+)\]", lambda m: _source_line(library, m.group(1)), report)


def _kernel_shared_variables(shared, kernel: str, kernels) -> tuple:
    """The static __shared__ variables of one kernel: those declared in it (the demangled variable
    name is ``[void ]kernel(parameters)::name``) and those of functions that are not kernels (device
    functions it may call). The GPU's static shared memory is per kernel, not per module."""
    def function(name: str) -> str:
        return name.removeprefix("void ").split("(")[0].replace(" ", "")

    others = {function(k) for k in kernels} - {function(kernel)}
    return tuple(v for v in shared if function(v[2]) not in others)


def _laid_end_to_end(variables) -> list[tuple[int, int, str]]:
    """[(offset, size, name)] with the variables' bytes numbered end to end in address order, as the
    runtime numbers them in its reports."""
    out, offset = [], 0
    for _, size, name in variables:
        out.append((offset, size, name))
        offset += size
    return out


def _name_offset(variables, offset: int) -> str:
    for begin, size, name in variables:
        if begin <= offset < begin + size:
            return f"__shared__ {name} (byte {offset - begin} of {size})"
    return f"static shared memory offset {offset}"


def _source_lines(library: Path, pcs: tuple[int, ...]) -> list[tuple[str, int]]:
    """(file, line) of each return address ``pc`` (a module offset) of an instrumented access."""
    addr2line = shutil.which("addr2line")
    if not pcs:
        return []
    if not addr2line:
        raise RuntimeError("profile mode names source lines with addr2line, which comes with "
                           "binutils (apt-get install binutils)")
    # One byte back from the return address is inside the access's own line.
    out = subprocess.run([addr2line, "-e", str(library), *(hex(pc - 1) for pc in pcs)],
                         capture_output=True, text=True).stdout.splitlines()
    located = []
    for text in out:
        file, _, line = text.split(" (discriminator")[0].rpartition(":")
        located.append((file, int(line) if line.isdigit() else 0))
    return located


def _source_line(library: Path, pc: str) -> str:
    addr2line = shutil.which("addr2line")
    if not addr2line:
        return f" [pc {pc}]"
    # The pc is the return address of the hook call: one byte back is inside the access's line.
    out = subprocess.run([addr2line, "-e", str(library), hex(int(pc, 16) - 1)],
                         capture_output=True, text=True).stdout.strip()
    out = out.split(" (discriminator")[0]
    return f" ({out})" if out and not out.startswith("??") else f" [pc {pc}]"


@dataclass(frozen=True)
class FileCoverage:
    covered: int
    executable: int
    uncovered: tuple[int, ...]


def coverage_report(paths=None) -> dict[str, FileCoverage]:
    """Line coverage of ``paths`` (default: every ``.cu``/``.cuh`` file seen) by the launches of this
    process's coverage-mode modules, merged over modules, from gcov's JSON output."""
    gcov = shutil.which("gcov")
    if gcov is None:
        raise RuntimeError("coverage mode needs gcov, which comes with GCC (apt-get install g++)")
    counts: dict[str, dict[int, int]] = {}
    for directory, library in _coverage_libraries.items():
        library.gpuconv_coverage_flush()
        result = subprocess.run([gcov, "--json-format", "--stdout", "kernel.gcda"], cwd=directory,
                                capture_output=True, text=True)
        for document in result.stdout.splitlines():
            if not document.strip():
                continue
            for entry in json.loads(document)["files"]:
                lines = counts.setdefault(entry["file"], {})
                for line in entry["lines"]:
                    number = line["line_number"]
                    lines[number] = lines.get(number, 0) + line["count"]
    wanted = ({str(Path(p).resolve()) for p in paths} if paths is not None
              else {f for f in counts if f.endswith((".cu", ".cuh"))})
    report = {}
    for file in sorted(wanted):
        lines = counts.get(file, {})
        uncovered = tuple(sorted(n for n, c in lines.items() if c == 0))
        report[file] = FileCoverage(len(lines) - len(uncovered), len(lines), uncovered)
    return report
