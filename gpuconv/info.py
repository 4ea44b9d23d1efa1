"""``gpuconv info``: what this machine offers gpuconv, and which backends work on it.

Every probe catches its own errors, so a missing CuPy, GPU, compiler or kernel is reported as such
and never stops the report. ``demo`` picks its backend with ``best_backend``; ``selftest`` finds the
backends present with ``host_compiler_path`` and ``gpu_count``.
"""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import platform
import sys

import numpy as np

NOT_INSTALLED = "not installed"
# The extras of pyproject.toml, each with the distributions it installs that gpuconv uses (a test
# keeps this in step with pyproject.toml).
EXTRAS = {
    "cuda12": ("cupy-cuda12x", "cuda-bindings"),
    "cuda13": ("cupy-cuda13x", "cuda-bindings"),
    "demo": ("matplotlib", "tqdm"),
    "torch": ("torch",),
    "nvrtc": ("cuda-bindings", "nvidia-cuda-nvrtc"),
    "perf": ("nvidia-cuda-nvdisasm", "nvidia-cuda-cuobjdump", "cuda-bindings", "nvidia-cuda-nvrtc"),
    "bench": ("pytest-benchmark", "matplotlib", "tqdm", "nvidia-cutlass"),
    "test": ("pytest", "hypothesis", "pytest-benchmark", "matplotlib", "tqdm", "cuda-bindings",
             "nvidia-cuda-nvrtc", "nvidia-cuda-nvdisasm", "nvidia-cuda-cuobjdump", "ruff",
             "scikit-learn", "ml_dtypes"),
}


def error_line(error: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def missing_modules(names) -> list[str]:
    """The modules of ``names`` that cannot be imported (looked up, not imported)."""
    return [name for name in names if importlib.util.find_spec(name) is None]


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def extras_status() -> str:
    """Which extras are installed, and what each missing one lacks."""
    lacking = {extra: [d for d in dists if not _installed(d)] for extra, dists in EXTRAS.items()}
    present = [extra for extra, missing in lacking.items() if not missing]
    absent = [f"{extra} (no {', '.join(missing)})" for extra, missing in lacking.items() if missing]
    return "; ".join(filter(None, [", ".join(present) and f"present: {', '.join(present)}",
                                   absent and f"missing: {', '.join(absent)}"]))


def cupy_version() -> str:
    try:
        import cupy
    except ImportError:
        return NOT_INSTALLED
    return cupy.__version__


def torch_version() -> str:
    """PyTorch's version from its metadata (importing torch takes seconds)."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return NOT_INSTALLED


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def cuda_facts() -> dict[str, str]:
    """CUDA runtime and driver versions and the first device, through CuPy."""
    if cupy_version() == NOT_INSTALLED:
        return {"CUDA runtime": "n/a (no CuPy)", "CUDA driver": "n/a (no CuPy)",
                "device": "n/a (no CuPy)"}
    import cupy

    facts = {}
    try:
        facts["CUDA runtime"] = _cuda_version(cupy.cuda.runtime.runtimeGetVersion())
        facts["CUDA driver"] = _cuda_version(cupy.cuda.runtime.driverGetVersion())
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # no driver, no device: CuPy raises its own CUDARuntimeError
        facts.setdefault("CUDA runtime", "unknown")
        facts.setdefault("CUDA driver", "unknown")
        facts["device"] = f"none ({error_line(e)})"
        return facts
    if count == 0:
        facts["device"] = "none"
        return facts
    props = cupy.cuda.runtime.getDeviceProperties(0)
    major, minor = props["major"], props["minor"]
    more = f" + {count - 1} more" if count > 1 else ""
    facts["device"] = (f"{props['name'].decode()} (compute capability {major}.{minor}, "
                       f"{props['totalGlobalMem'] / 2**30:.0f} GiB){more}")
    return facts


def nvrtc_version() -> str:
    """The NVRTC gpuconv compiles its kernels with (cuda-bindings; needs no GPU), and CuPy's own
    (which compiles CuPy's kernels) where CuPy is installed."""
    from .compile_check import nvrtc_available
    from .compile_check import nvrtc_version as bindings_version

    ours = f"{bindings_version()} (cuda-bindings: gpuconv's kernels)" if nvrtc_available() else (
        "cuda-bindings not installed (gpuconv's kernels need it on a GPU)")
    try:
        import cupy

        return f"{ours}; CuPy's {'%d.%d' % cupy.cuda.nvrtc.getVersion()}"
    except Exception:  # no CuPy, or no NVRTC for it
        return ours


def host_compiler_path() -> str | None:
    """The C++ compiler the emulator uses (``$CXX``, else g++, c++, clang++); None without one."""
    from .emulate._build import compiler

    try:
        return compiler()[0]
    except RuntimeError:
        return None


def host_compiler() -> str:
    """The emulator's C++ compiler and its version, or why there is none."""
    from .emulate._build import compiler

    try:
        path, version = compiler()
    except RuntimeError as e:
        return f"none ({e})"
    lines = version.splitlines()  # the resolved path, then the compiler's own --version text
    return f"{path}: {lines[1] if len(lines) > 1 else 'version unknown'}"


def gpu_count() -> int:
    """CUDA devices CuPy sees (0 without CuPy, driver or device)."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount()
    except Exception:  # ImportError, or CuPy's CUDARuntimeError without a driver
        return 0


def device_name(backend: str) -> str:
    """What runs the kernels of ``backend``: the GPU, or this machine's CPU."""
    if backend == "cuda":
        return cuda_facts()["device"]
    return f"CPU: {cpu_model()}, {os.cpu_count()} cores"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=None)
def backend_status(name: str) -> str:
    """'ok' when backend ``name`` runs every op on a tiny problem, else why it does not."""
    from . import api

    try:
        if name == "cuda":
            import cupy

            xp = cupy
        else:
            xp = np
        rng = np.random.default_rng(0)
        x = xp.asarray(rng.standard_normal((1, 2, 5, 5)), dtype=xp.float32)
        w = xp.asarray(rng.standard_normal((3, 2, 3, 3)), dtype=xp.float32)
        b = xp.zeros(3, xp.float32)
        y = api.conv2d(x, w, b, padding=1, activation="relu", backend=name)
        api.conv2d_input(x.shape, w, y, padding=1, backend=name)
        api.conv2d_weight(x, w.shape, y, padding=1, backend=name)
        api.conv2d_bias(y, backend=name)
        api.sigmoid_backward(y, api.sigmoid(y, backend=name), backend=name)
        api.relu_backward(y, api.relu(y, backend=name), backend=name)
    except ImportError as e:
        return f"unavailable: {error_line(e)}"
    except Exception as e:
        return f"fails: {error_line(e)}"
    return "ok"


def best_backend() -> str:
    """``cuda`` when CuPy, a GPU and the kernels work, else ``numpy``."""
    return "cuda" if backend_status("cuda") == "ok" else "numpy"


def nvrtc_compile_status() -> str:
    """Whether the kernels compile with NVRTC (for sm_80), which needs no GPU."""
    from . import compile_check

    if not compile_check.nvrtc_available():
        return "not checked (install cuda-bindings and nvidia-cuda-nvrtc)"
    try:
        for filename in compile_check.KERNELS:
            compile_check.compile_nvrtc(filename, "sm_80")
    except Exception as e:
        return f"fails: {error_line(e)}"
    return f"ok ({len(compile_check.KERNELS)} files, sm_80)"


def collect(check_backends: bool = True) -> dict[str, str]:
    """Every fact ``gpuconv info`` prints, in order."""
    from . import __version__

    facts = {
        "gpuconv": __version__,
        "Python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
        "NumPy": np.__version__,
        "CuPy": cupy_version(),
        **cuda_facts(),
        "NVRTC": nvrtc_version(),
        "PyTorch": torch_version(),
        "C++ compiler (emulate)": host_compiler(),
        "extras": extras_status(),
    }
    if check_backends:
        for name in ("numpy", "emulate", "cuda"):
            facts[f"backend {name}"] = backend_status(name)
        facts["kernels compile (NVRTC)"] = nvrtc_compile_status()
    return facts


def main(args) -> int:
    facts = collect()
    width = max(map(len, facts))
    for key, value in facts.items():
        print(f"{key:<{width}}  {value}")
    return 0
