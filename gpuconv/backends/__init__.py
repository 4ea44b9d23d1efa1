"""Backend selection.

A backend is an object with these methods. Every array it receives is C-contiguous, of the
problem's dtype (float32 or float64) and of the array type the backend serves; every array it
returns is new, C-contiguous, of the same type and dtype. Shapes are the problem's: a backend never
re-derives them and never validates arguments (``gpuconv.problem`` did).

====================================  =========================================================
``fprop(p, x, w, bias, activation)``  y[N,K,P,Q]; ``bias`` (K,) or None; activation None/'relu'/
                                      'sigmoid' applied after the bias
``dgrad(p, dy, w, bias=None)``        dx[N,C,H,W] (also conv_transpose2d; bias (C,) or None)
``wgrad(p, x, dy)``                   dw[K,C/groups,R,S]
``bias_grad(dy)``                     db[K] = sum of dy[N,K,P,Q] over N, P, Q
``relu(x)`` ``relu_backward(dy, x)``  elementwise, any shape
``sigmoid(x)`` ``sigmoid_backward(dy, y)``  (y = sigmoid(x))
====================================  =========================================================

``name`` is the backend's name and ``xp`` its array module (numpy or cupy).
"""
from __future__ import annotations

import os

BACKENDS = ("cuda", "numpy", "emulate")
CUDA_INSTALL_HINT = (
    "install CuPy for your CUDA version: pip install 'gpuconv[cuda12]' or 'gpuconv[cuda13]'"
)


def is_cupy_array(a) -> bool:
    return type(a).__module__.split(".")[0] == "cupy"


def get_backend(name: str):
    """The backend object called ``name`` ('cuda', 'numpy' or 'emulate')."""
    if name == "numpy":
        from .numpy_backend import BACKEND

        return BACKEND
    if name == "emulate":
        from .kernel_backend import emulate_backend

        return emulate_backend()
    if name == "cuda":
        from .kernel_backend import cuda_backend

        return cuda_backend()
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")


def default_numpy_backend() -> str:
    """The backend NumPy arrays go to when no ``backend=`` is given: ``GPUCONV_BACKEND`` or numpy."""
    name = os.environ.get("GPUCONV_BACKEND", "numpy")
    if name not in ("numpy", "emulate"):
        raise ValueError(
            f"GPUCONV_BACKEND must be 'numpy' or 'emulate' (CuPy arrays go to 'cuda' by "
            f"themselves), got {name!r}"
        )
    return name


def select(backend, arrays: dict):
    """The backend for these arrays: CuPy arrays run on ``cuda``, NumPy arrays on ``backend``."""
    present = {k: a for k, a in arrays.items() if a is not None}
    on_gpu = {k for k, a in present.items() if is_cupy_array(a)}
    if on_gpu and len(on_gpu) != len(present):
        names = ", ".join(f"{k} is {'CuPy' if k in on_gpu else type(a).__name__}"
                          for k, a in present.items())
        raise TypeError(f"arrays must all be NumPy or all CuPy arrays, got: {names}")
    if on_gpu:
        if backend not in (None, "cuda"):
            raise ValueError(
                f"backend={backend!r} takes NumPy arrays, but the arrays are CuPy arrays "
                "(their backend is 'cuda')"
            )
        return get_backend("cuda")
    if backend is None:
        backend = default_numpy_backend()
    if backend == "cuda":
        try:
            import cupy  # noqa: F401
        except ImportError:
            raise RuntimeError(f"backend='cuda' needs CuPy, which is not installed: {CUDA_INSTALL_HINT}")
        raise TypeError(
            "backend='cuda' takes CuPy arrays, but the arrays are NumPy arrays: "
            "move them with cupy.asarray(x)"
        )
    return get_backend(backend)
