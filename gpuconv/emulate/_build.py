"""Compiling a ``.cu`` text into a cached shared library, per mode."""
from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .._paths import kernels_dir
from ._errors import CompileError

MODES = ("plain", "asan", "race", "coverage", "profile")
HERE = Path(__file__).resolve().parent
RUNTIME_SOURCES = (HERE / "runtime.cpp", HERE / "emu_runtime.h")
DEFAULT_CUDA_ARCH = 800  # __CUDA_ARCH__ when no -arch option is given (sm_80)
MIN_STD = 17             # the runtime glue needs C++17; NVRTC's default is C++17 too

_COMMON_FLAGS = ["-fPIC", "-fvisibility=hidden", "-Wno-unknown-pragmas", f"-I{HERE}"]
_MODE_FLAGS = {
    # kernel object, runtime object, link
    "plain": (["-O2"], ["-O2"], []),
    "asan": (
        ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,bounds",
         "-fno-sanitize-recover=all", "-fsanitize-sections=gpuconv_shared"],
        ["-O1", "-g", "-fsanitize=address"],
        ["-fsanitize=address,bounds"],
    ),
    # The kernel calls __tsan_* hooks that runtime.cpp implements: no libtsan at link time.
    "race": (["-O1", "-g", "-fsanitize=thread"], ["-O2", "-DGPUCONV_EMULATE_RACE"], []),
    "coverage": (["-O0", "--coverage", "-DGPUCONV_EMULATE_COVERAGE"], ["-O2"], ["--coverage"]),
    # Every access calls a __tsan_* hook that records it for the memory-traffic profile; -g lets
    # Python name each access's source line; without SRA a float4 copy stays one 16-byte access.
    # Its `#pragma unroll` loops are unrolled as nvcc does (unroll_as_nvcc): completely where the
    # trip count is a constant, and never by the RTL unroller, which would unroll a loop of
    # run-time trip count by the pragma's factor (nvcc keeps such a loop a loop or unrolls by a few).
    # No jump threading: it copies an access into each path of a lane-dependent branch, and lanes
    # on different paths would then run different instructions where a GPU runs one, predicated.
    "profile": (["-O1", "-g", "-fsanitize=thread", "-fno-tree-sra", "-fdisable-rtl-loop2_unroll",
                 "-fno-thread-jumps", "-DGPUCONV_EMULATE_PROFILE"],
                ["-O2", "-DGPUCONV_EMULATE_PROFILE"], []),
}

# NVRTC options with no meaning for a CPU build: accepted and ignored (they tune code generation).
_IGNORED_OPTION = re.compile(
    r"^(-lineinfo|--generate-line-info|-G|--device-debug|-dopt.*|--dopt.*|-default-device|"
    r"--extra-device-vectorization|--restrict|-restrict|-ewp|--disable-warnings|-w|"
    r"-?-fmad=.*|-?-ftz=.*|-?-prec-div=.*|-?-prec-sqrt=.*|-rdc=.*|--relocatable-device-code=.*|"
    r"-?-maxrregcount=.*|-Xptxas.*|--ptxas-options.*|--device-as-default-execution-space|"
    r"-?-split-compile=.*|--minimal)$"
)
_PRAGMA_UNROLL = re.compile(r"^([ \t]*)#[ \t]*pragma[ \t]+unroll\b[ \t]*(.*?)[ \t]*$", re.M)
_EXTERN_SHARED = re.compile(r"\bextern\s+__shared__\s+([^;\[\]]*?)\b([A-Za-z_]\w*)\s*\[\s*\]\s*;")


@dataclass(frozen=True)
class Options:
    """The compiler flags derived from CuPy/NVRTC-style options."""

    flags: tuple[str, ...]
    include_dirs: tuple[Path, ...]


def translate_options(options) -> Options:
    """``-I``/``-D``/``-U`` are honoured; ``--std=c++NN`` selects max(NN, 17); ``-arch=sm_XY`` sets
    ``__CUDA_ARCH__`` (default 800); ``--use_fast_math`` defines ``__USE_FAST_MATH__`` like NVRTC but
    keeps IEEE arithmetic (never -ffast-math: results must stay comparable); code-generation knobs
    (``-lineinfo``, ``--fmad=``, ``-Xptxas`` ...) are ignored; anything else is a ValueError."""
    if isinstance(options, str):
        options = (options,)
    flags, include_dirs = [], []
    std, arch = MIN_STD, DEFAULT_CUDA_ARCH
    for option in options:
        if option.startswith("-I"):
            directory = Path(option[2:].strip()).resolve()
            include_dirs.append(directory)
            flags.append(f"-I{directory}")
        elif option.startswith(("-D", "-U")) and len(option) > 2:
            flags.append(option)
        elif m := re.fullmatch(r"-?-std=c\+\+(\d\d)", option):
            std = max(std, int(m.group(1)))
        elif m := re.fullmatch(r"(?:-arch|--gpu-architecture)[= ](?:sm|compute)_(\d+)a?", option):
            arch = int(m.group(1)) * 10
        elif option in ("--use_fast_math", "-use_fast_math"):
            flags.append("-D__USE_FAST_MATH__")
        elif not _IGNORED_OPTION.match(option):
            raise ValueError(
                f"gpuconv.emulate does not support the option {option!r}: use -I, -D, -U, "
                f"--std=c++NN, -arch=sm_XY or an NVRTC code-generation option it can ignore"
            )
    flags = [f"-std=c++{std}", f"-D__CUDA_ARCH__={arch}", *flags]
    return Options(tuple(flags), tuple(include_dirs))


def rewrite_extern_shared(code: str) -> tuple[str, tuple[str, ...]]:
    """``extern __shared__ T name[];`` -> a const pointer to the launch's dynamic shared memory.

    All dynamic shared arrays alias one buffer, as on the GPU; the line count is unchanged."""
    names = tuple(m.group(2) for m in _EXTERN_SHARED.finditer(code))
    code = _EXTERN_SHARED.sub(
        r"\1*const \2 = static_cast<decltype(\2)>(::gpuconv_emu::dynamic_shared());", code
    )
    return code, names


def unroll_as_nvcc(preprocessed: str) -> str:
    """``#pragma unroll [N]`` -> ``#pragma GCC unroll N`` in a preprocessed translation unit (where
    headers and ``_Pragma("unroll")`` have become lines of their own); a bare ``#pragma unroll`` gets
    65534, GCC's largest factor: unrolled completely, as nvcc does, when the trip count is a
    constant. g++ ignores the CUDA spelling and, at -O1, keeps such loops rolled: the profile would
    then see one instruction where the GPU runs one per element. A factor that is not a number
    (``#pragma unroll (KTilesAnIteration)``, a template argument, which g++ 12 refuses) is
    dropped: it marks a loop of run-time trip count, which the profile build never unrolls (its
    instructions a trip are the same either way). The line count is unchanged."""
    def gcc(m: re.Match) -> str:
        factor = m.group(2) or "65534"
        return f"{m.group(1)}#pragma GCC unroll {factor}" if factor.isdigit() else ""

    return _PRAGMA_UNROLL.sub(gcc, preprocessed)


def entry_points(name_expressions, mode: str) -> str:
    """The C entry points of the module: one launcher and one signature per name expression."""
    lines = ['#define GPUCONV_EMU_ENTRY extern "C" __attribute__((visibility("default")))']
    for i, expression in enumerate(name_expressions):
        lines += [
            f"GPUCONV_EMU_ENTRY int gpuconv_launch_{i}(const ::gpuconv_emu::LaunchConfig* c, "
            f"void** a, char* e, unsigned long n) {{",
            f"    return ::gpuconv_emu::launch(c, &{expression}, a, e, n);",
            "}",
            f"GPUCONV_EMU_ENTRY const char* gpuconv_signature_{i}() {{",
            f"    return ::gpuconv_emu::signature(&{expression});",
            "}",
        ]
    if mode == "coverage":
        lines += [
            'extern "C" void __gcov_dump(void);',
            'extern "C" void __gcov_reset(void);',
            "GPUCONV_EMU_ENTRY void gpuconv_coverage_flush() { __gcov_dump(); __gcov_reset(); }",
        ]
    return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=None)
def compiler() -> tuple[str, str]:
    """The C++ compiler (``$CXX``, else g++, c++, clang++) and its version text."""
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    for name in candidates:
        path = shutil.which(name)
        if path:
            version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
            return path, f"{os.path.realpath(path)}\n{version}"
    raise RuntimeError(
        "the emulate backend compiles kernels with a host C++ compiler and none was found "
        f"(tried {', '.join(candidates)}): install one (Debian/Ubuntu: apt-get install g++) or "
        "set CXX to its path"
    )


def cache_root() -> Path:
    root = os.environ.get("GPUCONV_EMULATE_CACHE") or Path.home() / ".cache" / "gpuconv" / "emulate"
    return Path(root)


# -- the cache trusts only its owner: what it dlopens or links runs as the user -------------------

_CACHE_RULE = (
    "gpuconv runs code from its cache only when the file and every folder from the cache root down "
    "to it are owned by you and writable by no one else, and every folder above the root is owned "
    "by you or root and writable by no one else unless it has the sticky bit (as /tmp)"
)


def _owner(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name}, uid {uid}"
    except KeyError:
        return f"uid {uid}"


def _untrusted(path: Path, status: os.stat_result, inside_cache: bool) -> str | None:
    """Why ``path`` may not lead to code this process runs, or None when it may."""
    me, mode = os.geteuid(), status.st_mode
    writers = " and ".join(w for w, bit in (("its group", stat.S_IWGRP), ("others", stat.S_IWOTH))
                           if mode & bit)
    if inside_cache:
        if status.st_uid != me:
            return f"belongs to another user (you are {_owner(me)})"
        if writers:
            return f"is writable by {writers}"
    else:  # a folder above the root: whoever may rename entries in it may swap the whole cache
        if status.st_uid not in (me, 0):
            return (f"belongs to neither you ({_owner(me)}) nor root, and its owner could swap the "
                    "cache below it")
        if writers and not mode & stat.S_ISVTX:
            return f"is writable by {writers} without the sticky bit: they could swap the cache below it"
    return None


def trusted(path: Path) -> Path:
    """``path`` (a file or folder of the cache) once it, every folder from the cache root down to
    it and every folder above the root pass the cache's rule (``_CACHE_RULE``); otherwise a
    RuntimeError naming the path, its owner and mode and how to fix it. A path that does not exist
    raises FileNotFoundError (an entry to build)."""
    real = Path(os.path.realpath(path))
    above_root = Path(os.path.realpath(cache_root())).parents
    for component in (*reversed(real.parents), real):
        status = os.stat(component)
        reason = _untrusted(component, status, inside_cache=component not in above_root)
        if reason:
            fix = (f"chmod go-w {component} (if you trust its contents: else remove it), or "
                   if status.st_uid == os.geteuid() else "")
            raise RuntimeError(
                f"gpuconv.emulate refuses to load {path}: {'it' if component == real else component} "
                f"(owner {_owner(status.st_uid)};"
                f" mode {oct(stat.S_IMODE(status.st_mode))} {stat.filemode(status.st_mode)}) "
                f"{reason}. {_CACHE_RULE}. Fix: {fix}set GPUCONV_EMULATE_CACHE to a folder of your "
                "own (gpuconv creates it with mode 0700)"
            )
    return path


def private_dir(path: Path) -> Path:
    """The cache folder ``path``, its missing folders created with mode 0700, then ``trusted``."""
    missing = [d for d in (path, *path.parents) if not d.exists()]
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:  # another process made it first; trusted() judges it
            continue
        os.chmod(directory, 0o700)  # mkdir's mode went through the umask
    return trusted(path)


def _hash(*parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else str(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def _headers_digest(include_dirs) -> str:
    """Every header an -I directory holds is part of the key: editing common.cuh rebuilds."""
    parts = []
    for directory in include_dirs:
        if directory.is_dir():
            for path in sorted(directory.iterdir()):
                if path.suffix in (".h", ".cuh", ".hpp", ".cu", ".inc") and path.is_file():
                    parts += [path.name, path.read_bytes()]
    return _hash(*parts)


def _run(command, what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise CompileError(f"{what} failed:\n$ {' '.join(map(str, command))}\n{result.stderr}")


def _publish(build, target: Path) -> None:
    """Runs build(temporary_path), then renames onto target: readers never see half a file."""
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".tmp")
    os.close(fd)
    try:
        build(Path(temporary))
        # Private whatever the umask: the owner keeps the bits the tool gave, others get none.
        os.chmod(temporary, stat.S_IMODE(os.stat(temporary).st_mode) & 0o700)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def runtime_object(mode: str) -> Path:
    cxx, version = compiler()
    flags = [*_COMMON_FLAGS, "-std=c++17", *_MODE_FLAGS[mode][1]]
    key = _hash(version, flags, *(p.read_bytes() for p in RUNTIME_SOURCES))
    target = private_dir(cache_root()) / f"runtime-{mode}-{key}.o"
    with open(target.with_suffix(".lock"), "w") as lock:  # modules built at once compile it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            _publish(lambda out: _run([cxx, *flags, "-c", str(HERE / "runtime.cpp"), "-o", str(out)],
                                      "compiling the emulation runtime"), target)
    return trusted(target)  # it is linked into every module


@dataclass(frozen=True)
class Build:
    library: Path
    directory: Path
    extern_shared: tuple[str, ...]

    @functools.cached_property
    def shared(self) -> tuple[tuple[int, int, str], ...]:
        """The static __shared__ variables: (offset in the library, size, demangled name), in
        address order."""
        return tuple(tuple(v) for v in json.loads((self.directory / "shared.json").read_text()))


# `objdump -t` symbol lines: address, flags, section, size, name.
_SYMBOL = re.compile(r"^([0-9a-f]+)\s.{7}\s(\S+)\s+([0-9a-f]+)\s+(?:\.hidden\s+)?(\S+)$")


def shared_variables(library: Path) -> list[tuple[int, int, str]]:
    """The library's static __shared__ variables, from its symbol table: the function-local statics
    of the kernels (mangled ``_ZZ...``; CUDA allows no other statics in device code, and a template
    function's ones sit in COMDAT sections whatever their section attribute says) and whatever lies
    in the ``gpuconv_shared`` section (namespace-scope ``__shared__``), minus the emulator's own."""
    objdump = shutil.which("objdump")
    if objdump is None:
        raise CompileError("the emulator finds __shared__ variables with objdump, which comes with "
                           "binutils (apt-get install binutils)")
    listing = subprocess.run([objdump, "-t", str(library)], capture_output=True, text=True,
                             check=True).stdout
    found = {}
    for line in listing.splitlines():
        m = _SYMBOL.match(line)
        if not m or int(m.group(3), 16) == 0:
            continue
        address, section, size, name = int(m.group(1), 16), m.group(2), int(m.group(3), 16), m.group(4)
        local_static = name.startswith("_ZZ") and not name.startswith("_ZZN11gpuconv_emu")
        if section == "gpuconv_shared" or (local_static and section.startswith((".bss", ".data"))):
            found[address] = (address, size, name)
    variables = sorted(found.values())
    demangled = subprocess.run([shutil.which("c++filt") or "c++filt"],
                               input="\n".join(v[2] for v in variables), capture_output=True,
                               text=True, check=True).stdout.splitlines()
    return [(address, size, name) for (address, size, _), name in zip(variables, demangled)]


def build(code: str, options: Options, name_expressions, mode: str, source_path: Path | None,
          rebuild: bool = False) -> Build:
    """The shared library for (code, options, names, mode): from the cache, else compiled.

    Concurrent processes serialise on a lock file per entry; the library is published by an
    atomic rename, so a reader sees either nothing or a whole file."""
    cxx, version = compiler()
    header = kernels_dir() / "cuda_emu.h"
    kernel_flags = [*_COMMON_FLAGS, *options.flags, *_MODE_FLAGS[mode][0]]
    key = _hash(
        "gpuconv-emulate-3", code, kernel_flags, list(name_expressions), mode, source_path, version,
        header.read_bytes(), *(p.read_bytes() for p in RUNTIME_SOURCES),
        _headers_digest(options.include_dirs),
    )
    directory = cache_root() / key
    library = directory / "module.so"
    rewritten, extern_shared = rewrite_extern_shared(code)
    result = Build(library, directory, extern_shared)
    private_dir(directory)  # kernel.cpp and kernel.o are written there, then linked
    with open(cache_root() / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if library.exists() and not rebuild:
            return result
        # gcov names lines after #line: the real kernels/*.cu path when the text came from a file.
        name = source_path or directory / "kernel.cu"
        unit = directory / "kernel.cpp"
        unit.write_text(
            f'#line 1 "{name}"\n{rewritten}\n#line 1 "gpuconv-emulate-entry-points"\n'
            + entry_points(name_expressions, mode)
        )
        kernel_object = directory / "kernel.o"  # coverage: kernel.gcno / kernel.gcda beside it
        if mode == "profile":  # its loops unrolled as nvcc would: preprocess, rewrite, compile
            preprocessed = directory / "kernel.ii"
            _run([cxx, "-x", "c++", "-include", str(header), *kernel_flags, "-E", str(unit),
                  "-o", str(preprocessed)], "preprocessing the kernels")
            preprocessed.write_text(unroll_as_nvcc(preprocessed.read_text()))
            source = ["-x", "c++-cpp-output", *kernel_flags, "-c", str(preprocessed)]
        else:
            source = ["-x", "c++", "-include", str(header), *kernel_flags, "-c", str(unit)]
        _run([cxx, *source, "-o", str(kernel_object)], "compiling the kernels")
        link = [*_MODE_FLAGS[mode][2], "-shared", "-Wl,--no-undefined", "-pthread"]

        def link_and_list_shared(out: Path) -> None:
            _run([cxx, *link, "-o", str(out), str(runtime_object(mode)), str(kernel_object), "-ldl"],
                 "linking the kernels")
            (directory / "shared.json").write_text(json.dumps(shared_variables(out)))

        _publish(link_and_list_shared, library)
    return result


def find_source_path(code: str, include_dirs) -> Path | None:
    """The ``.cu`` file in an -I directory whose text is exactly ``code``, if any."""
    for directory in include_dirs:
        for path in sorted(directory.glob("*.cu")) if directory.is_dir() else ():
            try:
                if path.read_text() == code:
                    return path.resolve()
            except (OSError, UnicodeDecodeError):
                continue
    return None
