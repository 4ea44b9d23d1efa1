"""gpuconv: hand-written CUDA kernels for 2-D convolution and its gradients.

One array API over three backends: ``cuda`` (CuPy arrays, ``kernels/*.cu`` through NVRTC),
``numpy`` (vectorised NumPy on BLAS) and ``emulate`` (the same ``.cu`` kernels compiled by the host
C++ compiler and run on the CPU). The backend follows the array type; ``backend=`` or the
``GPUCONV_BACKEND`` environment variable picks ``numpy`` or ``emulate`` for NumPy arrays.

>>> import numpy as np, gpuconv as gc
>>> x = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)
>>> w = np.ones((1, 1, 3, 3), np.float32)
>>> gc.conv2d(x, w, padding=1).shape
(1, 1, 5, 5)
"""
from .api import (
    conv2d,
    conv2d_bias,
    conv2d_input,
    conv2d_weight,
    conv_transpose2d,
    relu,
    relu_backward,
    sigmoid,
    sigmoid_backward,
)
from .problem import Conv2dProblem, conv_problem, transpose_problem

__version__ = "0.1.0"
__all__ = [
    "Conv2dProblem",
    "conv2d",
    "conv2d_bias",
    "conv2d_input",
    "conv2d_weight",
    "conv_problem",
    "conv_transpose2d",
    "relu",
    "relu_backward",
    "sigmoid",
    "sigmoid_backward",
    "transpose_problem",
]
