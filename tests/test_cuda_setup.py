"""What a CUDA machine with only the NVIDIA driver needs, checked without a GPU: the extras bring
CuPy >= 14 with the CUDA headers and an NVRTC of the same CUDA version; the cuda backend compiles
without flushing subnormals, caches each compiled instance on disk, picks the device's
architecture, and refuses arrays on different devices before any launch."""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from gpuconv import compile_check
from gpuconv.backends import kernel_backend
from gpuconv.backends.kernel_backend import KERNELS, KernelBackend, device_arch, nvrtc_options
from gpuconv.problem import conv_problem

ROOT = Path(__file__).resolve().parents[1]
INSTALL_CHECK = ROOT / "tests" / "cuda_install_check.py"
needs_nvrtc = pytest.mark.skipif(not compile_check.nvrtc_available(),
                                 reason="NVRTC not installed (pip install 'gpuconv[nvrtc]')")


# -- the extras ----------------------------------------------------------------------------------


def test_cuda_extras_bring_cupy_14_its_headers_and_a_matching_nvrtc():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["cuda12"] == ["cupy-cuda12x[ctk]>=14", "cuda-bindings>=12.9,<13"]
    assert extras["cuda13"] == ["cupy-cuda13x[ctk]>=14", "cuda-bindings>=13,<14"]
    # installable together with the test extra: its cuda-bindings must admit the 12.x of cuda12
    assert "cuda-bindings>=12.9" in extras["test"]


def _without_toolkit() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_PATH", "CUDA_HOME")}
    env["PATH"] = "/usr/bin:/bin"
    return env


@pytest.mark.skipif(not compile_check.nvrtc_available(), reason="NVRTC not installed")
def test_install_check_in_this_environment():
    """Where CuPy is installed (a GPU machine), the install check passes here too."""
    pytest.importorskip("cupy", reason="CuPy is not installed (extra cuda12 or cuda13)")
    run = subprocess.run([sys.executable, str(INSTALL_CHECK)], capture_output=True, text=True,
                         env={**_without_toolkit(), "PYTHONPATH": str(ROOT)}, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.slow
@pytest.mark.parametrize("extra", ["cuda12", "cuda13"])
def test_install_check_in_a_fresh_environment_from_the_extra(extra, tmp_path):
    """pip install '.[cudaXY]' into a new venv (about 3 GB from PyPI), then the install check with
    CUDA_PATH unset and no toolkit on PATH. Opt-in: GPUCONV_TEST_EXTRAS="cuda12 cuda13"."""
    if extra not in os.environ.get("GPUCONV_TEST_EXTRAS", "").split():
        pytest.skip(f"downloads about 3 GB: set GPUCONV_TEST_EXTRAS to include {extra} to run it")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", f"{ROOT}[{extra}]"], check=True, timeout=3600)
    run = subprocess.run([python, str(INSTALL_CHECK)], capture_output=True, text=True,
                         env=_without_toolkit(), cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.rstrip().endswith("ok")


# -- subnormals: what NVRTC is told and what it makes --------------------------------------------


def test_nvrtc_options_never_flush_subnormals():
    options = nvrtc_options("sm_80")
    assert "-ftz=false" in options and "-ftz=true" not in options
    assert not any(o in options for o in ("--use_fast_math", "-use_fast_math"))
    assert options[-1] == "-arch=sm_80"


# The one flushing instruction NVRTC emits without -ftz=true: libdevice's expf computes 2^f with
# ex2.approx.ftz on an argument it has reduced to a normal range, and scales the result itself.
LIBDEVICE_FTZ = {"ex2.approx.ftz.f32"}
FTZ_INSTRUCTION = re.compile(r"\b([a-z0-9]+(?:\.[a-z0-9]+)*\.ftz(?:\.[a-z0-9]+)*)\b")


def ftz_instructions(filename: str, extra_options=()) -> set[str]:
    ptx, _, _ = compile_check.nvrtc_compile(filename, "compute_80", extra_options)
    assert b".entry" in ptx and b".f32" in ptx  # PTX of float kernels: the check is not vacuous
    return set(FTZ_INSTRUCTION.findall(ptx.decode()))


@needs_nvrtc
@pytest.mark.parametrize("filename", list(KERNELS))
def test_compiled_kernels_have_no_flushing_arithmetic(filename):
    """The PTX the cuda backend's options make: no .ftz on any add, mul, fma, compare or convert."""
    assert ftz_instructions(filename) <= LIBDEVICE_FTZ


@needs_nvrtc
def test_the_ftz_check_sees_cupys_option():
    """What CuPy's RawModule(code=) would add, -ftz=true, shows in the same check."""
    assert {"fma.rn.ftz.f32", "add.ftz.f32"} <= ftz_instructions("dgrad.cu", ("-ftz=true",))


# -- compiling for the device, caching on disk -----------------------------------------------------


def test_device_arch_is_the_devices_own_cubin_else_ptx_of_the_newest_older():
    supported = [75, 80, 86, 89, 90]
    assert device_arch(86, supported) == "sm_86"
    assert device_arch(120, supported) == "compute_90"  # a GPU newer than the NVRTC: PTX, JIT
    assert device_arch(87, supported) == "compute_86"
    with pytest.raises(RuntimeError, match=r"compute capabilities \[75, 80, 86, 89, 90\], none of "
                                           r"them at most the device's 70"):
        device_arch(70, supported)


@needs_nvrtc
def test_compiled_kernel_is_cached_privately_and_reused(tmp_path, monkeypatch):
    cache = tmp_path / "kernels"
    monkeypatch.setenv("GPUCONV_KERNEL_CACHE", str(cache))
    expr = "relu_forward<float>"
    image, lowered = kernel_backend.compiled_kernel("elementwise.cu", expr, "sm_80")
    assert image.parent == cache and image.suffix == ".cubin"
    assert cache.stat().st_mode & 0o777 == 0o700
    _, _, names = compile_check.nvrtc_compile("elementwise.cu", "sm_80", name_expressions=[expr])
    assert names == {lowered: expr}
    assert image.read_bytes().startswith(b"\x7fELF")  # a cubin is an ELF file
    assert not list(cache.glob("*.tmp*"))  # published by rename, nothing half-written left

    def no_compile(*args, **kwargs):
        raise AssertionError("compiled again instead of using the cache")

    monkeypatch.setattr(compile_check, "nvrtc_compile", no_compile)
    assert kernel_backend.compiled_kernel("elementwise.cu", expr, "sm_80") == (image, lowered)
    with pytest.raises(AssertionError, match="compiled again"):  # another architecture: a new key
        kernel_backend.compiled_kernel("elementwise.cu", expr, "sm_90")


class FakeCupyDevice:
    """cupy.cuda.Device of a machine with an sm_80 GPU (0) and an sm_90 GPU (1)."""

    def __init__(self, id):
        self.id, self.compute_capability = id, {0: "80", 1: "90"}[id]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@needs_nvrtc
def test_each_device_loads_the_cubin_of_its_architecture_once(tmp_path, monkeypatch):
    """The glue without a GPU: a fake CuPy whose RawModule records what it is asked to load."""
    monkeypatch.setenv("GPUCONV_KERNEL_CACHE", str(tmp_path))
    loaded = []

    class RawModule:
        def __init__(self, path):
            self.path = Path(path)

        def get_function(self, name):
            loaded.append((self.path, name))
            return object()

    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(Device=FakeCupyDevice), RawModule=RawModule)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    kernel_backend._cuda_function.cache_clear()
    expr = "relu_backward<double>"
    try:
        on_0 = kernel_backend._cuda_function(0, "elementwise.cu", expr)
        assert kernel_backend._cuda_function(0, "elementwise.cu", expr) is on_0  # memoised
        kernel_backend._cuda_function(1, "elementwise.cu", expr)
    finally:
        kernel_backend._cuda_function.cache_clear()
    expected = [kernel_backend.compiled_kernel("elementwise.cu", expr, arch) for arch in ("sm_80", "sm_90")]
    assert loaded == expected
    assert loaded[0][1].startswith("_Z") and loaded[0][0] != loaded[1][0]


@needs_nvrtc
def test_compute_arch_caches_ptx(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUCONV_KERNEL_CACHE", str(tmp_path))
    image, lowered = kernel_backend.compiled_kernel("elementwise.cu", "relu_forward<double>", "compute_90")
    assert image.suffix == ".ptx" and f".entry {lowered}(" in image.read_text()


@needs_nvrtc
def test_an_nvrtc_newer_than_the_driver_is_refused_with_the_install_hint():
    major = int(compile_check.nvrtc_version().split(".")[0])
    kernel_backend.check_nvrtc(major * 1000)
    with pytest.raises(RuntimeError, match=rf"NVRTC {major}\.\d+ \(cuda-bindings\) is newer than the "
                                           rf"driver's CUDA {major - 1}\.8.*gpuconv\[cuda12\]"):
        kernel_backend.check_nvrtc((major - 1) * 1000 + 80)


# -- arrays on different devices -----------------------------------------------------------------


class FakeDevice:
    def __init__(self, id):
        self.id = id


class FakeArray:
    """Stands for a CuPy array: only its ``.device`` is read before the launch."""

    shape, dtype = (1, 2, 5, 5), np.dtype("float32")

    def __init__(self, device_id):
        self.device = FakeDevice(device_id)


class Launched(Exception):
    pass


def fake_backend() -> KernelBackend:
    """A cuda-like backend over FakeArrays that raises Launched where it would allocate or launch."""
    def refuse(*args):
        raise Launched

    xp = types.SimpleNamespace(ndarray=FakeArray, empty=refuse)
    return KernelBackend("cuda", xp, refuse, lambda array: contextlib.nullcontext())


P = conv_problem((1, 2, 5, 5), (3, 2, 3, 3), dtype="float32")


@pytest.mark.parametrize("call, message", [
    (lambda be: be.fprop(P, FakeArray(0), FakeArray(1), FakeArray(0), None),
     "arrays must all be on one device, got x on device 0, w on device 1, bias on device 0"),
    (lambda be: be.dgrad(P, FakeArray(2), FakeArray(2), bias=FakeArray(3)),
     "arrays must all be on one device, got dy on device 2, w on device 2, bias on device 3"),
    (lambda be: be.wgrad(P, FakeArray(1), FakeArray(0)),
     "arrays must all be on one device, got x on device 1, dy on device 0"),
    (lambda be: be.relu_backward(FakeArray(0), FakeArray(1)),
     "arrays must all be on one device, got dy on device 0, x on device 1"),
    (lambda be: be.sigmoid_backward(FakeArray(1), FakeArray(0)),
     "arrays must all be on one device, got dy on device 1, y on device 0"),
])
def test_arrays_on_different_devices_are_refused_before_any_launch(call, message):
    with pytest.raises(ValueError) as error:
        call(fake_backend())
    assert str(error.value) == message


def test_arrays_on_one_device_go_on_to_the_launch():
    be = fake_backend()
    with pytest.raises(Launched):
        be.fprop(P, FakeArray(1), FakeArray(1), None, None)
    with pytest.raises(Launched):
        be.relu(FakeArray(0))


def test_numpy_arrays_pass_the_device_check():
    x = np.ones((1, 2, 5, 5), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    y = kernel_backend.emulate_backend().fprop(P, x, w, None, None)
    assert np.all(y == 18)


@pytest.mark.gpu
def test_cupy_arrays_on_two_gpus_are_refused():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed (extra cuda12 or cuda13)")
    from gpuconv import info

    if info.gpu_count() < 2:
        pytest.skip("needs two GPUs")
    import gpuconv as gc

    with cupy.cuda.Device(0):
        x = cupy.ones((1, 2, 5, 5), cupy.float32)
    with cupy.cuda.Device(1):
        w = cupy.ones((3, 2, 3, 3), cupy.float32)
    with pytest.raises(ValueError, match="got x on device 0, w on device 1"):
        gc.conv2d(x, w)
