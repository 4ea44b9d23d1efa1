"""Run the CUDA kernels of ``kernels/*.cu`` on the CPU, with CuPy's ``RawModule`` interface.

The ``.cu`` text is compiled by the host C++ compiler with ``kernels/cuda_emu.h`` force-included, into
a shared library loaded with ctypes and cached on disk. Every CUDA thread runs as a fiber; a block's
fibers share one OS thread and blocks run one after another.

>>> from gpuconv.emulate import Module
>>> mod = Module(code=source_text, options=("-I" + kernels_dir, "--std=c++17"),
...              name_expressions=["fprop_direct<float>"])
>>> kernel = mod.get_function("fprop_direct<float>")
>>> kernel((blocks,), (256,), (x, w, y, np.int32(n)), shared_mem=0)   # NumPy arrays in and out

Arrays are passed as device pointers (their data pointer), NumPy scalars by value; each argument is
checked against the kernel's parameter list (count, scalar kind and size) and a mismatch raises
TypeError naming the kernel and the argument index (on a GPU it would be silently wrong).

Runtime work in progress: see issue 3.
"""
