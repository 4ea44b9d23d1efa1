"""``gpuconv profile``: one op on one problem in the emulator's profile mode, memory traffic per line.

The kernels run on the CPU (``gpuconv.emulate``, ``mode="profile"``) with every global and shared
memory access recorded per warp-level request; the table gives, per source line, what a GPU's memory
system would do with those requests beside the ideal for the same bytes:

- global: 32-byte *sectors* per request (ideal: the request's distinct bytes / 32, e.g. 4 for 32
  lanes reading consecutive floats from an aligned address);
- shared: *wavefronts* per request (ideal: its distinct bytes / 128, and at least one for every
  128-byte phase of lanes with an active lane: 1 for a conflict-free 4-byte access, 4 for a 16-byte
  one); more is a bank conflict.

Counted at the source level: where nvcc merges neighbouring scalar accesses into one vector
instruction the GPU makes fewer, wider requests (``python -m gpuconv.sass`` shows the instructions).
Figures are counted by the emulator, not measured on a GPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends import kernel_backend as kb
from .emulate import device_empty
from .problem import HALF_DTYPES, OPS, PRECISIONS, check_precision, conv_problem

SOURCES = {"fprop": "fprop.cu", "dgrad": "dgrad.cu", "wgrad": "wgrad.cu"}
CHOOSE = {"fprop": kb.choose_fprop, "dgrad": kb.choose_dgrad, "wgrad": kb.choose_wgrad}
# A ResNet-like 3×3 layer scaled down until one block of the largest tile covers its GEMM's M and N:
# the per-request figures are those of the full layer, the emulation takes seconds.
DEFAULT_SHAPE = dict(N=2, C=128, H=8, W=8, K=128, R=3, S=3)


@dataclass(frozen=True)
class Profile:
    """The counters of one op's kernels on one problem (``Module.counters()`` rows) and the grid of
    its main kernel."""

    op: str
    problem: object  # Conv2dProblem
    kernel: str      # 'direct', a TILES[op] or a TENSOR_TILES[op] name
    blocks: int      # blocks of the main kernel's launch
    rows: tuple      # dicts: file, line, space, kind, bytes, requests, lanes, sectors, wavefronts, ideal

    def to_dict(self) -> dict:
        return dict(op=self.op, problem=self.problem.describe(), kernel=self.kernel,
                    blocks=self.blocks, rows=list(self.rows))


def run(op: str, p, kernel: str = "auto", seed: int = 0, precision: str = "highest") -> Profile:
    """Runs ``op`` on problem ``p`` with ``kernel`` ('auto', 'direct' or a KERNEL_CHOICES[op] name) in
    profile mode on fresh normal inputs and returns its counters. An op in float16, bfloat16 or at
    precision='tf32' or 'tf32x3' profiles its tensor-core kernel where one takes the problem
    (``choose_*_tensor_core``), else the float32 kernels (of a half dtype: what the API computes)."""
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    kind = kb.tensor_kind(p.dtype, precision)
    tensor_tile = kind and kb.choose_tensor_core(op, p, kernel)
    if p.dtype in HALF_DTYPES and not tensor_tile:  # what the API computes: float32
        p = dataclasses.replace(p, dtype="float32")
    kernel = tensor_tile or CHOOSE[op](p, kernel)
    backend = kb.emulate_backend(**{f"{op}_kernel": kernel}, mode="profile")
    # dgrad's halo tiles are fprop's kernel (kb.dgrad_as_fprop)
    halo = kernel in kb.FPROP_HALO_TILES
    source = kb.TENSOR_SOURCES["fprop" if halo else op] if tensor_tile else SOURCES[op]
    module = kb._emulate_module(source, mode="profile")
    module.reset_counters()
    rng = np.random.default_rng(seed)

    def normal(shape):  # in device-aligned memory, as a GPU's inputs are
        out = device_empty(shape, p.dtype)
        out[...] = rng.standard_normal(shape)
        return out

    if tensor_tile:
        if op == "fprop":
            backend.fprop_tensor_cores(p, normal(p.x_shape), normal(p.w_shape), normal((p.K,)), None,
                                       precision)
        elif op == "dgrad":
            backend.dgrad_tensor_cores(p, normal(p.y_shape), normal(p.w_shape), None, precision)
        else:
            backend.wgrad_tensor_cores(p, normal(p.x_shape), normal(p.y_shape), precision)
        launched = ("fprop", kb.dgrad_as_fprop(p)) if halo and op == "dgrad" else (op, p)
        grid, _ = kb.launch_config(0, launched[0], kb.TENSOR_TILES[op][kernel], launched[1])
        return Profile(op, p, kernel, int(np.prod(grid)), tuple(module.counters()))
    if op == "fprop":
        backend.fprop(p, normal(p.x_shape), normal(p.w_shape), normal((p.K,)), None)
    elif op == "dgrad":
        backend.dgrad(p, normal(p.y_shape), normal(p.w_shape))
    else:
        backend.wgrad(p, normal(p.x_shape), normal(p.y_shape))
    tile = kb.TILES[op].get(kernel)
    total = int(np.prod({"fprop": p.y_shape, "dgrad": p.x_shape, "wgrad": p.w_shape}[op]))
    grid, _ = kb.launch_config(total, op if tile else None, tile, p)
    return Profile(op, p, kernel, int(np.prod(grid)), tuple(module.counters()))


def per_request(row: dict) -> tuple[float, float]:
    """(actual, ideal) sectors or wavefronts per request of a counters row."""
    actual = row["sectors"] if row["space"] == "global" else row["wavefronts"]
    return actual / row["requests"], row["ideal"] / row["requests"]


def table(profile: Profile) -> str:
    """The per-line table, conflicted or uncoalesced lines marked."""
    p = profile.problem
    lines = [
        f"# gpuconv profile: {profile.op}, kernel {profile.kernel}, {p.describe()}",
        "",
        "Counted by the emulator's profile mode (not measured on a GPU), per source line; "
        f"{profile.blocks} block(s) of the main kernel. Global: 32-byte sectors per warp-level "
        "request; shared: wavefronts per request; ideal in brackets (the same bytes, coalesced "
        "and conflict-free).",
        "",
        "| line | space | kind | B/lane | requests | lanes/req | sectors/req | wavefronts/req | "
        "| source |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    sources: dict[str, list[str]] = {}
    for row in profile.rows:
        path = Path(row["file"])
        if row["file"] not in sources:
            sources[row["file"]] = path.read_text().splitlines() if path.is_file() else []
        text = sources[row["file"]]
        code = text[row["line"] - 1].strip() if 0 < row["line"] <= len(text) else ""
        actual, ideal = per_request(row)
        cell = f"{actual:.2f} ({ideal:.2f})"
        glob = row["space"] == "global"
        mark = ""
        if actual > ideal * 1.001:
            mark = ("**uncoalesced** ×" if glob else "**conflict** ×") + f"{actual / ideal:.1f}"
        lines.append(
            f"| {path.name}:{row['line']} | {row['space']} | {row['kind']} | {row['bytes']} | "
            f"{row['requests']} | {row['lanes'] / row['requests']:.1f} | "
            f"{cell if glob else '-'} | {'-' if glob else cell} | {mark} | `{code.replace('|', '¦')}` |")
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpuconv profile",
        description="Run one op on one problem in the emulator's profile mode and print the memory "
                    "traffic per source line (sectors per global request, wavefronts per shared "
                    "request) beside the ideal, with conflicted and uncoalesced lines marked. "
                    "Counted on the CPU, not measured on a GPU.")
    parser.add_argument("op", choices=OPS)
    parser.add_argument("--kernel", default="auto",
                        help="'auto', 'direct' or a tile name: "
                             + "; ".join(f"{op}: {', '.join(t[2:])}" for op, t in kb.KERNEL_CHOICES.items()))
    d = DEFAULT_SHAPE
    parser.add_argument("--shape", type=int, nargs=7, metavar=("N", "C", "H", "W", "K", "R", "S"),
                        default=[d[k] for k in "NCHWKRS"],
                        help="x[N,C,H,W], w[K,C/groups,R,S] (default: "
                             + " ".join(str(d[k]) for k in "NCHWKRS") + ")")
    parser.add_argument("--stride", type=int, nargs="+", default=[1])
    parser.add_argument("--padding", type=int, nargs="+", default=[1])
    parser.add_argument("--dilation", type=int, nargs="+", default=[1])
    parser.add_argument("--groups", type=int, default=1)
    parser.add_argument("--dtype", choices=("float32", "float64", *HALF_DTYPES), default="float32",
                        help="float16 and bfloat16: the op's tensor-core kernel (bfloat16 needs "
                             "ml_dtypes)")
    parser.add_argument("--precision", choices=PRECISIONS, default="highest",
                        help="float32 at 'tf32' or 'tf32x3': the op's tensor-core kernel")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    return parser


def _one_or_tuple(values):
    return values[0] if len(values) == 1 else tuple(values)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    N, C, H, W, K, R, S = args.shape
    try:
        p = conv_problem((N, C, H, W), (K, C // max(args.groups, 1), R, S),
                         _one_or_tuple(args.stride), _one_or_tuple(args.padding),
                         _one_or_tuple(args.dilation), args.groups, args.dtype)
        check_precision(args.precision, args.dtype)
        if args.kernel not in kb.KERNEL_CHOICES[args.op]:
            raise ValueError(f"--kernel must be one of {kb.KERNEL_CHOICES[args.op]} for "
                             f"{args.op}, got {args.kernel!r}")
    except (TypeError, ValueError) as e:
        print(f"gpuconv profile: {e}", file=sys.stderr)
        return 2
    profile = run(args.op, p, args.kernel, precision=args.precision)
    print(json.dumps(profile.to_dict(), indent=1) if args.json else table(profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
