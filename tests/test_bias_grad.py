"""bias_grad on every map size class: P·Q of 1 and 3 (many images per block step), 256 (exactly one
image per step), 255 and 257 (one pixel short or over a step) and a map larger than a step, on the
emulated kernel against the reference, with small integers so float32 sums compare exactly."""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv import reference
from gpuconv.backends.kernel_backend import BIAS_GRAD_THREADS, emulate_backend

from problems import small_ints

SHAPES = [
    (300, 3, 1, 1),  # (N, K, 1, 1): a step of 256 images, j stays 0
    (97, 2, 1, 3),  # (N, K, 1, 3): a step of 85 images and 1 pixel, so j carries into n
    (5, 2, 16, 16),  # P·Q = 256 = the step: one image a step
    (4, 3, 15, 17),  # P·Q = 255: one pixel more than an image a step
    (3, 2, 1, 257),  # P·Q = 257: a step short of an image
    (2, 2, 23, 29),  # P·Q = 667 > 2 steps: threads start inside the first image
    (1, 1, 1, 1),  # one element: 255 threads sum nothing
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bias_grad_exact_on_small_and_odd_maps(shape):
    dy = small_ints(np.random.default_rng(sum(shape)), shape, "float32")
    got = emulate_backend().bias_grad(dy)
    np.testing.assert_array_equal(got, reference.bias_grad(dy).astype("float32"))


def test_bias_grad_sums_in_the_fixed_order():
    """The reduction order is the documented one: thread t sums elements t, t + 256, ... of its
    channel in turn, then the 256 partial sums meet in a tree. Values whose float32 sum depends on
    the order (1, then 2^-24 many times) show any other order."""
    N, PQ = 600, 1  # three elements a thread for t < 88, two for the rest
    dy = np.full((N, 1, 1, PQ), 2.0**-24, np.float32)
    dy[0] = 1.0
    partial = [np.float32(0)] * BIAS_GRAD_THREADS
    for t in range(BIAS_GRAD_THREADS):
        for i in range(t, N * PQ, BIAS_GRAD_THREADS):
            partial[t] = np.float32(partial[t] + dy.flat[i])
    half = BIAS_GRAD_THREADS // 2
    while half:
        partial[:half] = [np.float32(partial[t] + partial[t + half]) for t in range(half)]
        half //= 2
    assert emulate_backend().bias_grad(dy)[0] == partial[0]
