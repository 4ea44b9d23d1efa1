"""The benchmark problems: one named table of layers, a batch size per device class.

Each entry is ``name: Layer(C, H, W, K, R, S, stride, padding, groups, batch)``. ``batch`` is None for
real network layers, which take the device class's batch (``BATCH``), and fixed for the seeds'
experiments, which are benchmarked at the size they were run at. FLOPs and bytes of each op come
from the problem object (``Conv2dProblem.flops(op)`` / ``bytes_moved(op)``).

The ResNet-50 layers are torchvision's (v1.5: the stride sits on the 3×3 of the first block of
res3–res5, and the 1×1 projection shortcut carries it too).
"""
from __future__ import annotations

from typing import NamedTuple

from gpuconv.problem import Conv2dProblem, conv_problem

# Images per batch, per device class: small on the CPU so that a full run takes minutes.
BATCH = {"cpu": 8, "gpu": 32}


class Layer(NamedTuple):
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    batch: int | None = None  # fixed batch (the seeds' experiments); None: the device's BATCH


SHAPES: dict[str, Layer] = {
    # ResNet-50 stem: 7×7 stride 2 on the RGB image
    "resnet_conv1": Layer(3, 224, 224, 64, 7, 7, stride=2, padding=3),
    # res2 (56²): the bottleneck's 1×1 reduce / 3×3 / 1×1 expand
    "res2_1x1_reduce": Layer(256, 56, 56, 64, 1, 1),
    "res2_3x3": Layer(64, 56, 56, 64, 3, 3, padding=1),
    "res2_1x1_expand": Layer(64, 56, 56, 256, 1, 1),
    # res3 (28²): the strided 3×3 and the strided 1×1 projection of its first block
    "res3_3x3_s2": Layer(128, 56, 56, 128, 3, 3, stride=2, padding=1),
    "res3_proj_1x1_s2": Layer(256, 56, 56, 512, 1, 1, stride=2),
    "res3_3x3": Layer(128, 28, 28, 128, 3, 3, padding=1),
    # res4 (14²)
    "res4_3x3_s2": Layer(256, 28, 28, 256, 3, 3, stride=2, padding=1),
    "res4_3x3": Layer(256, 14, 14, 256, 3, 3, padding=1),
    "res4_1x1_reduce": Layer(1024, 14, 14, 256, 1, 1),
    # res5 (7²)
    "res5_proj_1x1_s2": Layer(1024, 14, 14, 2048, 1, 1, stride=2),
    "res5_3x3": Layer(512, 7, 7, 512, 3, 3, padding=1),
    "res5_1x1_expand": Layer(512, 7, 7, 2048, 1, 1),
    # VGG-like: 256 -> 512 at 28², 3×3
    "vgg_256_512_28": Layer(256, 28, 28, 512, 3, 3, padding=1),
    # depthwise 3×3 (MobileNetV2's 144-channel expansion at 56²)
    "depthwise_144_56": Layer(144, 56, 56, 144, 3, 3, padding=1, groups=144),
    # the seeds' experiments, at their own sizes (single-channel maps, tiny batches)
    "seed000_3x3": Layer(3, 10, 10, 5, 3, 3, batch=3),
    "seed000_4x4_s2": Layer(5, 8, 8, 6, 4, 4, stride=2, batch=3),
    "seed001_edge_80": Layer(1, 80, 80, 1, 3, 3, batch=1),
    "seed003_4x4_s2": Layer(1, 18, 18, 1, 4, 4, stride=2, batch=1),
}

# Shapes the seeds' naive per-pixel loops can time in seconds.
TINY = tuple(name for name, layer in SHAPES.items() if layer.batch is not None)

# A small, representative set for `gpuconv bench --quick`: 7×7 s2, 3×3, strided 3×3, 1×1,
# strided 1×1, depthwise, a seed.
QUICK = ("resnet_conv1", "res2_3x3", "res3_3x3_s2", "res4_3x3", "res2_1x1_expand",
         "res3_proj_1x1_s2", "depthwise_144_56", "seed000_3x3")


def layer_problem(name: str, device: str = "cpu", dtype: str = "float32",
                  batch: int | None = None) -> Conv2dProblem:
    """The checked problem of layer ``name`` at the device class's batch (or ``batch``)."""
    layer = SHAPES[name]
    N = batch or layer.batch or BATCH[device]
    return conv_problem(
        (N, layer.C, layer.H, layer.W), (layer.K, layer.C // layer.groups, layer.R, layer.S),
        stride=layer.stride, padding=layer.padding, groups=layer.groups, dtype=dtype,
    )
