"""Every bad input of DESIGN.md raises ValueError or TypeError before any work, naming the argument
and quoting its value; every backend raises the same error for the same input."""
import numpy as np
import pytest

import gpuconv as gc
from gpuconv import backends

BACKENDS = ["numpy", "emulate"]


def f32(*shape):
    return np.ones(shape, np.float32)


# (name, call, exception type, words the message must contain)
CASES = [
    ("int_dtype", lambda b: gc.conv2d(np.ones((1, 1, 3, 3), np.int32), f32(1, 1, 1, 1), backend=b),
     TypeError, ["x", "float32, float64, float16 or bfloat16", "int32"]),
    ("mixed_dtype", lambda b: gc.conv2d(f32(1, 1, 3, 3), np.ones((1, 1, 1, 1)), backend=b),
     TypeError, ["w", "float64", "float32"]),
    ("complex_dtype", lambda b: gc.conv2d(f32(1, 1, 3, 3).astype(np.complex64),
                                         f32(1, 1, 1, 1).astype(np.complex64), backend=b),
     TypeError, ["x", "complex64"]),
    ("bad_precision", lambda b: gc.conv2d(f32(1, 1, 3, 3), f32(1, 1, 1, 1), precision="fast", backend=b),
     ValueError, ["precision", "'fast'", "highest", "tf32x3"]),
    ("tf32_float64", lambda b: gc.conv2d_weight(f32(1, 1, 3, 3).astype(np.float64), (1, 1, 1, 1),
                                               f32(1, 1, 3, 3).astype(np.float64), precision="tf32",
                                               backend=b),
     ValueError, ["precision='tf32'", "float32", "float64"]),
    ("tf32x3_float16", lambda b: gc.conv_transpose2d(f32(1, 1, 3, 3).astype(np.float16),
                                                    f32(1, 1, 1, 1).astype(np.float16),
                                                    precision="tf32x3", backend=b),
     ValueError, ["precision='tf32x3'", "float16"]),
    ("x_2d", lambda b: gc.conv2d(f32(3, 3), f32(1, 1, 1, 1), backend=b),
     ValueError, ["x", "3-D", "4-D", "(3, 3)"]),
    ("x_5d", lambda b: gc.conv2d(f32(1, 1, 1, 3, 3), f32(1, 1, 1, 1), backend=b),
     ValueError, ["x", "(1, 1, 1, 3, 3)"]),
    ("w_3d", lambda b: gc.conv2d(f32(1, 1, 3, 3), f32(1, 1, 1), backend=b),
     ValueError, ["w", "4-D", "(1, 1, 1)"]),
    ("channel_mismatch", lambda b: gc.conv2d(f32(1, 3, 5, 5), f32(2, 4, 3, 3), backend=b),
     ValueError, ["x has 3 channels", "w expects 4", "groups=1"]),
    ("kernel_too_big", lambda b: gc.conv2d(f32(1, 1, 2, 5), f32(1, 1, 3, 3), backend=b),
     ValueError, ["kernel is larger than the padded input", "H", "2", "3"]),
    ("kernel_too_big_dilated", lambda b: gc.conv2d(f32(1, 1, 5, 5), f32(1, 1, 3, 3), dilation=3,
                                                   backend=b),
     ValueError, ["padded input size 5", "dilated kernel size 7", "dilation 3"]),
    ("stride_zero", lambda b: gc.conv2d(f32(1, 1, 5, 5), f32(1, 1, 3, 3), stride=(0, 1), backend=b),
     ValueError, ["stride must be positive", "(0, 1)"]),
    ("stride_float", lambda b: gc.conv2d(f32(1, 1, 5, 5), f32(1, 1, 3, 3), stride=1.5, backend=b),
     TypeError, ["stride", "1.5"]),
    ("dilation_negative", lambda b: gc.conv2d(f32(1, 1, 5, 5), f32(1, 1, 3, 3), dilation=-1,
                                              backend=b),
     ValueError, ["dilation must be positive", "-1"]),
    ("groups_zero", lambda b: gc.conv2d(f32(1, 1, 5, 5), f32(1, 1, 3, 3), groups=0, backend=b),
     ValueError, ["groups must be positive", "0"]),
    ("padding_negative", lambda b: gc.conv2d(f32(1, 1, 5, 5), f32(1, 1, 3, 3), padding=(1, -1),
                                             backend=b),
     ValueError, ["padding must be non-negative", "(1, -1)"]),
    ("padding_bad_string", lambda b: gc.conv2d(f32(1, 1, 5, 5), f32(1, 1, 3, 3), padding="full",
                                               backend=b),
     ValueError, ["padding", "'full'"]),
    ("padding_three_tuple", lambda b: gc.conv2d(f32(1, 1, 5, 5), f32(1, 1, 3, 3), padding=(1, 1, 1),
                                                backend=b),
     TypeError, ["padding", "(1, 1, 1)"]),
    ("same_strided", lambda b: gc.conv2d(f32(1, 1, 5, 5), f32(1, 1, 3, 3), padding="same", stride=2,
                                         backend=b),
     ValueError, ["padding='same'", "stride=(2, 2)"]),
    ("groups_not_dividing_C", lambda b: gc.conv2d(f32(1, 3, 5, 5), f32(2, 1, 3, 3), groups=2,
                                                  backend=b),
     ValueError, ["groups=2", "divide", "3 channels"]),
    ("groups_not_dividing_K", lambda b: gc.conv2d(f32(1, 4, 5, 5), f32(3, 2, 3, 3), groups=2,
                                                  backend=b),
     ValueError, ["groups=2", "divide", "K=3"]),
    ("bias_shape", lambda b: gc.conv2d(f32(1, 1, 5, 5), f32(2, 1, 3, 3), bias=f32(3), backend=b),
     ValueError, ["bias", "(2,)", "(3,)"]),
    ("bad_activation", lambda b: gc.conv2d(f32(1, 1, 5, 5), f32(2, 1, 3, 3), activation="tanh",
                                           backend=b),
     ValueError, ["activation", "'tanh'"]),
    ("dy_shape_input", lambda b: gc.conv2d_input((1, 1, 5, 5), f32(2, 1, 3, 3), f32(1, 2, 4, 3),
                                                 backend=b),
     ValueError, ["dy", "(1, 2, 3, 3)", "(1, 2, 4, 3)"]),
    ("dy_shape_weight", lambda b: gc.conv2d_weight(f32(1, 1, 5, 5), (2, 1, 3, 3), f32(1, 3, 3, 3),
                                                   backend=b),
     ValueError, ["dy", "(1, 2, 3, 3)", "(1, 3, 3, 3)"]),
    ("w_shape_3", lambda b: gc.conv2d_weight(f32(1, 1, 5, 5), (2, 1, 3), f32(1, 2, 3, 3), backend=b),
     ValueError, ["w shape", "4 dimensions", "(2, 1, 3)"]),
    ("output_padding_too_big", lambda b: gc.conv_transpose2d(f32(1, 2, 4, 4), f32(2, 1, 3, 3),
                                                             stride=2, output_padding=2, backend=b),
     ValueError, ["output_padding must be smaller than either stride or dilation", "2"]),
    ("transpose_bias_shape", lambda b: gc.conv_transpose2d(f32(1, 2, 4, 4), f32(2, 3, 3, 3),
                                                           bias=f32(2), backend=b),
     ValueError, ["bias", "(3,)", "(2,)"]),
    ("transpose_channel_mismatch", lambda b: gc.conv_transpose2d(f32(1, 2, 4, 4), f32(3, 1, 3, 3),
                                                                 backend=b),
     ValueError, ["x has 2 channels", "w expects 3"]),
    ("transpose_same", lambda b: gc.conv_transpose2d(f32(1, 2, 4, 4), f32(2, 1, 3, 3),
                                                     padding="same", backend=b),
     TypeError, ["padding", "'same'"]),
    ("list_input", lambda b: gc.conv2d([[1.0]], f32(1, 1, 1, 1), backend=b),
     TypeError, ["x must be a NumPy or CuPy array", "list"]),
    ("relu_shapes", lambda b: gc.relu_backward(f32(2, 3), f32(3, 2), backend=b),
     ValueError, ["dy and x must have the same shape"]),
    ("zero_output_channels", lambda b: gc.conv2d(f32(1, 1, 5, 5), f32(0, 1, 3, 3), backend=b),
     ValueError, ["w shape must have positive sizes", "(0, 1, 3, 3)"]),
    ("zero_height", lambda b: gc.conv2d(f32(1, 1, 0, 5), f32(1, 1, 1, 1), padding=1, backend=b),
     ValueError, ["x shape must have positive C, H and W", "(1, 1, 0, 5)"]),
    ("unknown_backend", lambda b: gc.relu(f32(2), backend="tpu"), ValueError, ["backend", "'tpu'"]),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,call,exc,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_with_the_argument_named(backend, name, call, exc, words):
    with pytest.raises(exc) as info:
        call(backend)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {str(info.value)!r}"


def test_cuda_backend_without_cupy_says_how_to_install():
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed here; this checks the message when it is not")
    except ImportError:
        pass
    with pytest.raises(RuntimeError, match=r"pip install 'gpuconv\[cuda12\]'"):
        gc.conv2d(f32(1, 1, 3, 3), f32(1, 1, 1, 1), backend="cuda")


def test_environment_variable_picks_the_backend(monkeypatch):
    x = f32(2, 3)
    monkeypatch.setenv("GPUCONV_BACKEND", "emulate")
    assert backends.select(None, {"x": x}).name == "emulate"
    assert backends.select("numpy", {"x": x}).name == "numpy"  # backend= wins over the variable
    monkeypatch.delenv("GPUCONV_BACKEND")
    assert backends.select(None, {"x": x}).name == "numpy"
    monkeypatch.setenv("GPUCONV_BACKEND", "cuda")
    with pytest.raises(ValueError, match="GPUCONV_BACKEND must be 'numpy' or 'emulate'"):
        gc.relu(x)
