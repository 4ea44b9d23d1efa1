"""Run by tests/test_cuda_setup.py with the Python of an environment made from gpuconv's cuda12 or
cuda13 extra (``CUDA_PATH`` unset, no toolkit on ``PATH``; no GPU needed). Checks that

1. CuPy's own option assembly finds the CUDA runtime headers inside this environment (the
   extra's wheels), not in a system toolkit that may not exist, or be of another CUDA version;
2. those options compile a kernel written like CuPy's own (carray.cuh, complex.cuh) with CuPy's
   NVRTC, so the headers are complete;
3. gpuconv's compile path (cuda-bindings' NVRTC) compiles a kernels/ source, with an NVRTC of
   the same CUDA major version as CuPy's.

Prints what it found; exits non-zero (with the reason) on the first failure.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from cupy._core import core
from cupy.cuda import compiler

from gpuconv import compile_check

print("CUDA_PATH:", os.environ.get("CUDA_PATH"), "| CUDA_HOME:", os.environ.get("CUDA_HOME"))
options = core.assemble_cupy_compiler_options(())
print("CuPy's options:", " ".join(options))
prefix = Path(sys.prefix).resolve()
found = [Path(o[2:]) for o in options if o.startswith("-I") and (Path(o[2:]) / "cuda_runtime.h").is_file()]
print("cuda_runtime.h in:", ", ".join(map(str, found)) or "none")
if not any(prefix in d.resolve().parents for d in found):
    sys.exit(f"no include folder of CuPy's holds cuda_runtime.h inside this environment ({prefix})")

source = ('#include <cupy/carray.cuh>\n#include <cupy/complex.cuh>\n'
          'extern "C" __global__ void fill(CArray<float, 1> a, float v) { a[threadIdx.x] = v; }\n')
program = compiler._NVRTCProgram(source, "fill.cu", method="cubin")
cubin, _ = program.compile(options + ("-ftz=true", "-arch=sm_90", "--device-as-default-execution-space"))
cupy_nvrtc = "%d.%d" % compiler._get_nvrtc_version()
print(f"CuPy's NVRTC {cupy_nvrtc} compiled a CuPy-style kernel: {len(cubin)} bytes of sm_90 cubin")

image, _, names = compile_check.nvrtc_compile("elementwise.cu", "sm_90")
ours = compile_check.nvrtc_version()
print(f"gpuconv's NVRTC {ours} (cuda-bindings) compiled elementwise.cu: {len(names)} kernels, "
      f"{len(image)} bytes of sm_90 cubin")
if ours.split(".")[0] != cupy_nvrtc.split(".")[0]:
    sys.exit(f"gpuconv's NVRTC {ours} and CuPy's {cupy_nvrtc} are of different CUDA versions")
print("ok")
