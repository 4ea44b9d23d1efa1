"""Every kernel instance compiles with NVRTC (the options the cuda backend uses) for sm_75 and
sm_80, and for sm_80 with nvcc too where installed and GPUCONV_TEST_NVCC=1 asks for it, and spills
nothing."""
from __future__ import annotations

import os

import pytest

from gpuconv import compile_check
from gpuconv.backends.kernel_backend import kernels_for

PRESENT = compile_check.compilers()
pytestmark = pytest.mark.skipif(
    not PRESENT, reason="neither NVRTC (pip install 'gpuconv[nvrtc]') nor nvcc is installed"
)


# NVRTC, the compiler the cuda backend uses, for sm_75 (no tensor-core sources) and sm_80 (every
# source); nvcc, the cross-check, for sm_80 alone and on request (GPUCONV_TEST_NVCC=1): the backend
# never compiles with nvcc, its compile of every instance takes 100 s of a 2-core machine, and
# `python -m gpuconv.compile_check` (bench/results/ptxas.md) runs both compilers for all five
# architectures. The SASS tests compile tensor-core kernels for sm_90 too: 143 instances a
# compiler and architecture make the full sweep most of the default test run's time on 2 cores.
NVRTC_ARCHS = ("sm_75", "sm_80")
CROSS_CHECK_ARCH = "sm_80"
CROSS_CHECK = os.environ.get("GPUCONV_TEST_NVCC") == "1"


def jobs():
    assert set(NVRTC_ARCHS) <= set(compile_check.ARCHS)
    return [(c, a) for c in PRESENT for a in compile_check.ARCHS
            if (c == "nvrtc" and a in NVRTC_ARCHS) or (c == "nvcc" and CROSS_CHECK and a == CROSS_CHECK_ARCH)]


@pytest.fixture(scope="module")
def rows():
    found = []
    for c in sorted({c for c, _ in jobs()}):
        archs = [a for cc, a in jobs() if cc == c]
        found += compile_check.check(archs=archs, which=[c])
    return found


def test_every_instance_compiles_for_every_arch(rows):
    expected = {(c, a, k) for c, a in jobs() for ks in kernels_for(a).values() for k in ks}
    # The tensor-core source compiles for sm_80 and newer alone: an sm_75 GPU runs float32 kernels.
    assert {k for c, a, k in expected if a == "sm_75"} < {k for c, a, k in expected if a == "sm_80"}
    assert {(r.compiler, r.arch, r.kernel) for r in rows} == expected


def test_no_spills(rows):
    assert compile_check.spills(rows) == []


def test_report(rows, tmp_path):
    versions = {c: v for c, (_, v) in PRESENT.items() if c in {cc for cc, _ in jobs()}}
    text = compile_check.write_report(rows, versions, tmp_path)
    assert (tmp_path / "ptxas.md").read_text() == text
    for kernel in ("fprop_direct<float, 1>", "dgrad_direct<double>", "wgrad_direct<float>"):
        assert f"`{kernel}`" in text
    assert (tmp_path / "ptxas.json").is_file()


def test_parse_ptxas_reads_spills_and_shared_memory():
    log = """ptxas info    : Compiling entry function '_Z3fooIfEvv' for 'sm_80'
ptxas info    : Function properties for _Z3fooIfEvv
    16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 8192 bytes smem, 360 bytes cmem[0]
"""
    (r,) = compile_check.parse_ptxas(log, "nvcc", {"_Z3fooIfEvv": "foo<float>"})
    assert (r.kernel, r.arch, r.registers, r.shared_bytes) == ("foo<float>", "sm_80", 255, 8192)
    assert (r.stack_bytes, r.spill_stores, r.spill_loads) == (16, 8, 4)
    assert compile_check.spills([r]) == [r]


@pytest.mark.skipif("nvrtc" not in PRESENT, reason="needs NVRTC")
def test_a_whole_module_serves_its_parts_and_its_ptx(monkeypatch):
    """compile_check keeps the modules it compiles whole: a later call for some of its instances,
    or for the compute_XY PTX of an sm_XY module, is served from it and gets what a compile of its
    own gives; another front-end option or another source compiles anew."""
    from collections import OrderedDict

    monkeypatch.setattr(compile_check, "_WHOLE_MODULES", OrderedDict())
    verbose = ("-Xptxas=-v",)
    cubin, _, names = compile_check.nvrtc_compile("elementwise.cu", "sm_80", verbose)
    compiles, compiled, source = [], compile_check._compiled, compile_check.source

    def counted(*args):
        compiles.append(args[:2])
        return compiled(*args)

    monkeypatch.setattr(compile_check, "_compiled", counted)
    (lowered, expression), *_ = names.items()
    part, _, part_names = compile_check.nvrtc_compile("elementwise.cu", "sm_80", verbose, [expression])
    ptx, _, ptx_names = compile_check.nvrtc_compile("elementwise.cu", "compute_80")
    assert compiles == [] and part == cubin and part_names == {lowered: expression} and ptx_names == names
    assert b".target sm_80" in ptx and f".entry {lowered}(".encode() in ptx
    compile_check.nvrtc_compile("elementwise.cu", "compute_80", ("-DGPUCONV_UNUSED=1",))
    assert compiles == [("elementwise.cu", "compute_80")]
    monkeypatch.setattr(compile_check, "source", lambda filename: "// another source\n" + source(filename))
    compile_check.nvrtc_compile("elementwise.cu", "compute_80")
    assert len(compiles) == 2
    monkeypatch.setattr(compile_check, "source", source)
    monkeypatch.setattr(compile_check, "_WHOLE_MODULES", OrderedDict())
    assert compile_check.nvrtc_compile("elementwise.cu", "compute_80")[0] == ptx  # what its own compile gives
