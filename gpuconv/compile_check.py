"""Compile every kernel instance for every target architecture and report its resources.

Two compilers, each where present (neither needs a GPU):

- NVRTC (the ``nvidia-cuda-nvrtc`` wheel through ``cuda-bindings``) through ``nvrtc_compile``, the
  function the ``cuda`` backend compiles its kernels with, with its options
  (``kernel_backend.nvrtc_options(arch)``) plus ``-Xptxas=-v`` for the report;
- ``nvcc -cubin -Xptxas -v`` with the same options, instantiating the same name expressions.

For every (compiler, architecture, kernel instance) it records registers, static shared memory,
stack frame and spill stores / loads from ptxas' report. ``python -m gpuconv.compile_check``
prints the table, writes ``bench/results/ptxas.md`` and ``ptxas.json``, and exits non-zero if any
instance fails to compile or spills.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

from . import _paths
from .backends.kernel_backend import kernels_for, nvrtc_options, source

ARCHS = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90")


@dataclass(frozen=True)
class Resources:
    compiler: str
    arch: str
    kernel: str  # the name expression, e.g. "fprop_direct<float, 1>"
    registers: int
    shared_bytes: int
    stack_bytes: int
    spill_stores: int
    spill_loads: int


class CompileError(RuntimeError):
    pass


# ptxas -v, per entry function:
#   ptxas info    : Compiling entry function '_Z12fprop_direct...' for 'sm_80'
#   ptxas info    : Function properties for _Z12fprop_direct...
#       0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
#   ptxas info    : Used 56 registers, used 0 barriers, 448 bytes cmem[0]   (+ ", N bytes smem")
_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(sm_\w+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(log: str, compiler: str, names: dict[str, str]) -> list[Resources]:
    """Resources per entry function in a ptxas -v log; ``names`` maps mangled → name expression."""
    out, entry = [], None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            entry, arch, frame = m.group(1), m.group(2), None
        elif entry and (m := _FRAME.search(line)):
            frame = tuple(int(v) for v in m.groups())
        elif entry and frame and (m := _USED.search(line)):
            smem = _SMEM.search(line)
            out.append(Resources(compiler, arch, names.get(entry, entry), int(m.group(1)),
                                 int(smem.group(1)) if smem else 0, *frame))
            entry = None
    return out


def demangle(mangled: list[str]) -> dict[str, str]:
    """Mangled name → 'kernel<args>' with GNU c++filt (nvcc mangles as g++ does)."""
    if not mangled or not shutil.which("c++filt"):
        return {}
    run = subprocess.run(["c++filt"], input="\n".join(mangled), capture_output=True, text=True)
    return {m: re.sub(r"^void |\(.*$", "", d) for m, d in zip(mangled, run.stdout.splitlines())}


# -- NVRTC ---------------------------------------------------------------------------------------


def nvrtc_available() -> bool:
    try:
        from cuda.bindings import nvrtc  # noqa: F401
    except ImportError:
        return False
    return True


def _nvrtc_check(result):
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise CompileError(f"NVRTC call failed: {err}")
    return values[0] if len(values) == 1 else values


def nvrtc_version() -> str:
    from cuda.bindings import nvrtc

    return "%d.%d" % tuple(_nvrtc_check(nvrtc.nvrtcVersion()))


def nvrtc_supported_archs() -> list[int]:
    """The architectures this NVRTC compiles for, as integers (75, 80, ...)."""
    from cuda.bindings import nvrtc

    return [int(a) for a in _nvrtc_check(nvrtc.nvrtcGetSupportedArchs())]


# Whole modules (every instance kernels_for(arch) lists) compiled in this process, the newest
# last: (filename, source, arch, options) → (image, PTX, log, lowered names). One process (the
# test suite: the compile sweep, the SASS loops, the PTX checks) asks for the same modules
# several times. An instance's code does not depend on the others compiled beside it, so any
# part of a whole module is served from it; and a compute_XY module's PTX is the PTX that the
# sm_XY cubin was assembled from, with the same options but ptxas' (test_compile_check).
_WHOLE_MODULES: OrderedDict = OrderedDict()
_MODULES_KEPT = 16  # a sweep's sources for two architectures


def _compiled(filename: str, arch: str, options: tuple, expressions: list[str]):
    """(image, PTX, log, lowered → expression) of ``expressions`` from one NVRTC compile."""
    from cuda.bindings import nvrtc

    def text(get_size, get):
        out = b" " * _nvrtc_check(get_size(prog))
        _nvrtc_check(get(prog, out))
        return out

    prog = _nvrtc_check(nvrtc.nvrtcCreateProgram(source(filename).encode(), filename.encode(), 0, [], []))
    try:
        for expr in expressions:
            _nvrtc_check(nvrtc.nvrtcAddNameExpression(prog, expr.encode()))
        encoded = [o.encode() for o in options]
        status = nvrtc.nvrtcCompileProgram(prog, len(encoded), encoded)[0]
        log = text(nvrtc.nvrtcGetProgramLogSize, nvrtc.nvrtcGetProgramLog).rstrip(b"\x00 ").decode()
        if int(status) != 0:
            raise CompileError(f"NVRTC failed on {filename} for {arch}:\n{log}")
        names = {_nvrtc_check(nvrtc.nvrtcGetLoweredName(prog, e.encode())).decode(): e for e in expressions}
        ptx = text(nvrtc.nvrtcGetPTXSize, nvrtc.nvrtcGetPTX)
        image = ptx if arch.startswith("compute_") else text(nvrtc.nvrtcGetCUBINSize, nvrtc.nvrtcGetCUBIN)
        return image, ptx, log, names
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def nvrtc_compile(filename: str, arch: str, extra_options=(),
                  name_expressions=None) -> tuple[bytes, str, dict[str, str]]:
    """(image, log, lowered name → name expression) of one kernels/ source for ``arch``, compiled
    with ``nvrtc_options(arch)`` and ``extra_options``: the cuda backend's compile and the compile
    check's. The image is a cubin for ``sm_XY``, PTX for ``compute_XY``. ``name_expressions``:
    the instances to compile (default: all of ``kernels_for(arch)[filename]``). Served from a
    whole module this process compiled before where there is one (_WHOLE_MODULES)."""
    whole = kernels_for(arch).get(filename, [])
    wanted = list(whole if name_expressions is None else name_expressions)
    options = (*nvrtc_options(arch), *extra_options)
    text = source(filename)
    if set(wanted) <= set(whole):
        for (f, src, a, o), (image, ptx, log, names) in reversed(_WHOLE_MODULES.items()):
            if (f, src) != (filename, text):
                continue
            same = (a, o) == (arch, options)
            ptx_of_cubin = arch == a.replace("sm_", "compute_") and _front_end(o) == _front_end(options)
            if same or ptx_of_cubin:
                _WHOLE_MODULES.move_to_end((f, src, a, o))
                return (image if same else ptx), log, {m: e for m, e in names.items() if e in wanted}
    compiled = _compiled(filename, arch, options, wanted)
    if whole and set(wanted) == set(whole):
        _WHOLE_MODULES[(filename, text, arch, options)] = compiled
        while len(_WHOLE_MODULES) > _MODULES_KEPT:
            _WHOLE_MODULES.popitem(last=False)
    image, _, log, names = compiled
    return image, log, names


def _front_end(options) -> tuple:
    """The options but ptxas' (-Xptxas=...) and the architecture: those the PTX depends on."""
    return tuple(o for o in options if not o.startswith(("-Xptxas", "-arch")))


def compile_nvrtc(filename: str, arch: str) -> list[Resources]:
    _, log, names = nvrtc_compile(filename, arch, ("-Xptxas=-v",))
    return parse_ptxas(log, "nvrtc", names)


# -- nvcc ----------------------------------------------------------------------------------------


def nvcc_path() -> str | None:
    return shutil.which("nvcc")


def nvcc_version() -> str:
    out = subprocess.run([nvcc_path(), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release ([\d.]+)", out)
    return m.group(1) if m else "unknown"


def compile_nvcc(filename: str, arch: str) -> list[Resources]:
    # Taking each instance's address in host code makes nvcc instantiate and compile it, as
    # NVRTC's name expressions do.
    instances = ", ".join(f"(void*)({expr})" for expr in kernels_for(arch)[filename])
    wrapper = (f'#include "{_paths.kernels_dir() / filename}"\n'
               f"void* gpuconv_instances[] = {{{instances}}};\n")
    with tempfile.TemporaryDirectory() as tmp:
        cu = Path(tmp) / f"instances_{filename}"
        cu.write_text(wrapper)
        cmd = [nvcc_path(), *nvrtc_options(arch), "-cubin", "-Xptxas", "-v",
               "-o", str(Path(tmp) / "out.cubin"), str(cu)]
        run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise CompileError(f"nvcc failed on {filename} for {arch}:\n{run.stderr}")
    mangled = _ENTRY.findall(run.stderr)
    return parse_ptxas(run.stderr, "nvcc", demangle([m for m, _ in mangled]))


# -- the check -----------------------------------------------------------------------------------


def compilers() -> dict:
    """The compilers present: name → (compile function, version)."""
    found = {}
    if nvrtc_available():
        found["nvrtc"] = (compile_nvrtc, nvrtc_version())
    if nvcc_path():
        found["nvcc"] = (compile_nvcc, nvcc_version())
    return found


def check(archs=ARCHS, which=None, progress=None) -> list[Resources]:
    """Compile every instance with every compiler present (or ``which``) for ``archs``;
    ``progress(done, total, label)`` is called as each (compiler, file, arch) finishes."""
    from concurrent.futures import ThreadPoolExecutor

    present = compilers()
    jobs = [(c, f, a) for c in (which or present) for a in archs for f in kernels_for(a)]
    rows = []
    with ThreadPoolExecutor() as pool:  # nvcc is a subprocess; NVRTC releases the GIL
        results = pool.map(lambda job: present[job[0]][0](job[1], job[2]), jobs)
        for done, ((c, f, a), rs) in enumerate(zip(jobs, results), 1):
            rows += rs
            if progress:
                progress(done, len(jobs), f"{c} {a} {f}")
    for c in which or present:
        for a in archs:
            expected = {e for es in kernels_for(a).values() for e in es}
            got = {r.kernel for r in rows if r.compiler == c and r.arch == a}
            if got != expected:
                raise CompileError(f"{c} {a}: instances missing from the ptxas report: "
                                   f"{sorted(expected - got)}; unexpected: {sorted(got - expected)}")
    return rows


def _shown_options() -> list[str]:
    """nvrtc_options for a placeholder architecture, with the checkout's path left out."""
    return ["-I kernels" if o.startswith("-I") else o for o in nvrtc_options("sm_XX")]


def markdown(rows: list[Resources], versions: dict[str, str]) -> str:
    """One row per kernel instance; per architecture "registers nvrtc / nvcc"; spills summed."""
    present = [c for c in ("nvrtc", "nvcc") if c in versions]
    archs = sorted({r.arch for r in rows})
    by = {(r.kernel, r.arch, r.compiler): r for r in rows}
    lines = [
        "# ptxas resources per kernel instance",
        "",
        "Written by `python -m gpuconv.compile_check` (all numbers also in `ptxas.json`). Compilers: "
        + ", ".join(f"{c} {v}" for c, v in versions.items())
        + f"; options `{' '.join(_shown_options())} -Xptxas -v`: what the cuda backend's NVRTC "
        "receives (`kernel_backend.nvrtc_options`).",
        f"Each cell: registers per thread, {' / '.join(present)}. The last three columns: the "
        "maximum over architectures and compilers (spills: the sum).",
        "",
        "| kernel | " + " | ".join(archs) + " | smem B | stack B | spill st+ld B |",
        "| --- | " + " | ".join("---:" for _ in archs) + " | ---: | ---: | ---: |",
    ]
    for kernel in sorted({r.kernel for r in rows}):
        mine = [r for r in rows if r.kernel == kernel]
        cells = [" / ".join(str(by[kernel, a, c].registers) for c in present
                            if (kernel, a, c) in by) for a in archs]
        smem = max(r.shared_bytes for r in mine)
        stack = max(r.stack_bytes for r in mine)
        spill = sum(r.spill_stores + r.spill_loads for r in mine)
        lines.append(f"| `{kernel}` | " + " | ".join(cells) + f" | {smem} | {stack} | {spill} |")
    return "\n".join(lines) + "\n"


def spills(rows: list[Resources]) -> list[Resources]:
    return [r for r in rows if r.spill_stores or r.spill_loads]


def write_report(rows: list[Resources], versions: dict[str, str], out: Path) -> str:
    """Write ``out/ptxas.md`` and ``out/ptxas.json``; return the markdown."""
    text = markdown(rows, versions)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ptxas.md").write_text(text)
    (out / "ptxas.json").write_text(
        json.dumps({"compilers": versions, "options": _shown_options(),
                    "kernels": [asdict(r) for r in rows]}, indent=1) + "\n")
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpuconv.compile_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results"),
                        help="folder for ptxas.md and ptxas.json (default: bench/results)")
    args = parser.parse_args(argv)
    present = compilers()
    if not present:
        print("neither NVRTC (pip install 'gpuconv[nvrtc]') nor nvcc found", file=sys.stderr)
        return 2
    rows = check(progress=lambda done, total, label: print(
        f"\r[{done}/{total}] {label:<32}", end="" if done < total else "\n", file=sys.stderr))
    print(write_report(rows, {c: v for c, (_, v) in present.items()}, args.out))
    bad = spills(rows)
    for r in bad:
        print(f"SPILL: {r}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
