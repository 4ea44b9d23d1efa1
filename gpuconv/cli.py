"""The ``gpuconv`` command (also ``python -m gpuconv``): demo, info, bench, selftest, profile."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .backends import BACKENDS


def _add_demo(sub):
    p = sub.add_parser(
        "demo", help="reproduce the seed notes' experiments, with pictures (the main job)",
        description="Reproduce the seed notes' experiments: the seed-004 numeric example, the "
                    "seed-001 edge-kernel recovery, the seed-000 two-layer re-learning and the "
                    "seed-003 20x20 experiment. Writes one PNG per experiment, summary.md and "
                    "summary.json.")
    p.add_argument("--backend", choices=BACKENDS,
                   help="backend to run on (default: cuda if CuPy and a GPU work, else numpy)")
    p.add_argument("--out", type=Path, default=Path("gpuconv-demo"),
                   help="folder for the pictures and summaries (default: ./gpuconv-demo)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and initial weights (default 0)")
    p.add_argument("--quick", action="store_true", help="fewer training steps (for tests)")


def _add_selftest(sub):
    p = sub.add_parser(
        "selftest", help="check every op on every backend present against the float64 reference",
        description="Run every op on a small problem matrix on every backend present (numpy; "
                    "emulate with a C++ compiler; cuda with CuPy and a GPU) and compare with "
                    "gpuconv.reference; on a GPU also with PyTorch (cuDNN) and run the quick "
                    "benchmark. Exit 0 when everything agrees, 1 otherwise.")
    p.add_argument("--backend", choices=BACKENDS, action="append",
                   help="only this backend (repeatable; default: every backend present)")
    p.add_argument("--out", type=Path, help="folder for selftest.md and selftest.json")
    p.add_argument("--every-kernel", action="store_true",
                   help="on emulate too (always on cuda): every kernel configuration (each op's "
                        "every kernel choice in every dtype and precision), and fail if any kernel "
                        "instance never ran (slow on the CPU)")
    p.add_argument("--pytest", action="store_true",
                   help="first run the GPU tests (tests/test_cuda*.py, test_subnormals.py) from "
                        "the checkout, output in the --out folder")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="gpuconv",
        description="gpuconv: hand-written CUDA kernels for conv2d and its gradients, with NumPy "
                    "and CPU-emulation backends.",
        epilog="Run 'gpuconv COMMAND --help' for the options of a command.")
    parser.add_argument("--version", action="version", version=f"gpuconv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_demo(sub)
    sub.add_parser("info", help="versions, device, compiler and which backends work",
                   description="Print Python, NumPy, CuPy, CUDA, device, NVRTC and compiler "
                               "versions, and whether each backend's kernels compile and run.")
    sub.add_parser("bench", help="timings against other implementations (table, JSON, chart)",
                   add_help=False)
    _add_selftest(sub)
    sub.add_parser("profile", help="one op in the emulator's profile mode: memory traffic per "
                                   "source line beside the ideal", add_help=False)
    return parser


def _delegate(command: str, argv: list[str]) -> int:
    """``bench`` and ``profile`` parse their own options."""
    import importlib

    try:
        return importlib.import_module(f"gpuconv.{command}").main(argv)
    except SystemExit as e:  # its argparse: --help or bad arguments
        return _exit_code(e)


def _exit_code(e: SystemExit) -> int:
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["bench"], ["profile"]):  # their options are their modules' own
        return _delegate(argv[0], argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version (0) or bad arguments (2, usage printed)
        return _exit_code(e)
    if args.command == "demo":
        from . import demo

        return demo.main(args)
    if args.command == "info":
        from . import info

        return info.main(args)
    from . import selftest

    return selftest.main(args)
