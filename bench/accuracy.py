"""The tensor-core kernels' errors, measured on the emulator, beside issue 12's tolerances.

    PYTHONPATH=. python bench/accuracy.py [--out bench/results/accuracy-emulate.md]

Each op (fprop, dgrad, wgrad) in each tensor-core kind (float16, bfloat16, float32 at 'tf32' and
'tf32x3') on every tensor-core tile that runs it, on three problems shaped like ResNet-50's 3×3
layers, scaled down so that the emulator runs them in minutes: stride 1 (the halo tiles), stride
2, and 7×7 images (wgrad's halo tile with 2-byte loads). Inputs are standard normal, rounded to
the op's dtype; the error is max |result - reference| / max |reference|, the reference computed
in float64 on those rounded inputs, so it is the kernel's own error. Tolerances, as the issue
states them:

- float16, bfloat16: at most twice PyTorch CPU's error, PyTorch computing the same rounded inputs
  in float32 and its result rounded to the dtype;
- 'tf32': the numpy backend's 'tf32' (inputs rounded as cvt.rna does, float32 products) agrees
  with the emulated kernel to float32 accumulation noise (1e-5 here), and the error is TF32's
  (above 100 float32 ulps);
- 'tf32x3': within a few float32 ulps of 'highest' (at most 4× its error).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import gpuconv as gc
from gpuconv import reference as ref
from gpuconv.backends import kernel_backend as kb
from gpuconv.problem import conv_problem

PROBLEMS = {"3x3": ((2, 64, 16, 16), dict(stride=1)), "3x3_s2": ((2, 64, 16, 16), dict(stride=2)),
            "3x3_7x7": ((4, 64, 7, 7), dict(stride=1))}
W_SHAPE = (64, 64, 3, 3)
KINDS = ("float16", "bfloat16", "tf32", "tf32x3")


def _relative(got, want) -> float:
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


def _call(op, x, w, dy, kw, **options):
    if op == "fprop":
        return gc.conv2d(x, w, **kw, **options)
    if op == "dgrad":
        return gc.conv2d_input(x.shape, w, dy, **kw, **options)
    return gc.conv2d_weight(x, w.shape, dy, **kw, **options)


def _torch(op, x, w, dy, kw, dtype):
    """PyTorch CPU on the rounded inputs in float32, its result rounded to ``dtype``."""
    import torch

    f32 = [torch.from_numpy(a.astype(np.float32)) for a in (x, w, dy)]
    if op == "fprop":
        y = torch.nn.functional.conv2d(f32[0], f32[1], **kw)
    elif op == "dgrad":
        y = torch.nn.grad.conv2d_input(x.shape, f32[1], f32[2], **kw)
    else:
        y = torch.nn.grad.conv2d_weight(f32[0], w.shape, f32[2], **kw)
    return y.to(getattr(torch, dtype)).to(torch.float64).numpy()


def _tensor_op(op, p, x, w, dy, tile, precision):
    """``op`` on tensor-core tile ``tile`` of the emulate backend (the API's path, the tile forced)."""
    be = kb.emulate_backend(**{f"{op}_kernel": tile})
    if op == "fprop":
        return be.fprop_tensor_cores(p, x, w, None, None, precision)
    if op == "dgrad":
        return be.dgrad_tensor_cores(p, dy, w, None, precision)
    return be.wgrad_tensor_cores(p, x, dy, precision)


def measure(progress=print) -> list[dict]:
    rows = []
    for name, (x_shape, geometry) in PROBLEMS.items():
        kw = dict(padding=1, **geometry)
        for op in ("fprop", "dgrad", "wgrad"):
            for kind in KINDS:
                dtype = kb.kind_dtype(kind)
                if dtype == "bfloat16":
                    import ml_dtypes

                    t = ml_dtypes.bfloat16
                else:
                    t = np.dtype(dtype).type
                p = conv_problem(x_shape, W_SHAPE, dtype=dtype, **kw)
                rng = np.random.default_rng(sum(map(ord, name + op + kind)))
                x, w, dy = (rng.standard_normal(s).astype(t) for s in (p.x_shape, p.w_shape, p.y_shape))
                x64, w64, dy64 = (a.astype(np.float64) for a in (x, w, dy))
                want = {"fprop": lambda: ref.fprop(p, x64, w64, None, None),
                        "dgrad": lambda: ref.dgrad(p, dy64, w64),
                        "wgrad": lambda: ref.wgrad(p, x64, dy64)}[op]()
                precision = kind if kind.startswith("tf32") else "highest"
                if kind in ("float16", "bfloat16"):
                    against, other = "PyTorch CPU", _relative(_torch(op, x, w, dy, kw, dtype), want)
                elif kind == "tf32":
                    against = "numpy 'tf32' (their difference)"
                    numpy_tf32 = _call(op, x, w, dy, kw, backend="numpy", precision="tf32").astype(np.float64)
                else:
                    highest = _call(op, x, w, dy, kw, backend="emulate")
                    against, other = "'highest' on emulate", _relative(highest, want)
                for tile in kb.TENSOR_TILES[op]:
                    if kb.choose_tensor_core(op, p, tile) != tile:
                        continue  # not built for the kind, or cannot run the problem
                    ours = _tensor_op(op, p, x, w, dy, tile, precision)
                    row = dict(problem=name, op=op, kind=kind, tile=tile,
                               auto=kb.choose_tensor_core(op, p) == tile,
                               staging=kb.tensor_staging(op, p, tile, w if op != "wgrad" else dy),
                               error=_relative(ours, want), against=against)
                    if kind in ("float16", "bfloat16"):
                        row.update(other=other, ok=row["error"] <= 2 * other)
                    elif kind == "tf32":
                        row["other"] = _relative(ours, numpy_tf32)
                        row["ok"] = row["other"] <= 1e-5 and row["error"] > 100 * 2.0**-23
                    else:
                        row.update(other=other, ok=row["error"] <= 4 * max(other, 2.0**-23))
                    rows.append(row)
                    progress(f"{name} {op} {kind} {tile}: {row['error']:.2e} ({against} {row['other']:.2e})")
    return rows


def table(rows) -> str:
    lines = ["| problem | op | kind | tile, staging | 'auto' | error | compared with | its figure | within |",
             "|---|---|---|---|---|---:|---|---:|---|"]
    for r in rows:
        lines.append(f"| {r['problem']} | {r['op']} | {r['kind']} | {r['tile']}, {r['staging']} | "
                     f"{'yes' if r['auto'] else ''} | {r['error']:.2e} | {r['against']} | {r['other']:.2e} | "
                     f"{'yes' if r['ok'] else '**no**'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the table there as Markdown")
    args = parser.parse_args(argv)
    rows = measure()
    text = table(rows)
    print(text)
    if args.out:
        args.out.write_text(
            "# Tensor-core kernels' errors on the emulator\n\n"
            f"Made by `PYTHONPATH=. python bench/accuracy.py --out {args.out}` (no GPU: the same `.cu` "
            "kernels on the CPU). w 64×64×3×3, padding 1; x 2×64×16×16 at stride 1 and 2, and 4×64×7×7; "
            "standard normal inputs rounded to the dtype; error = max |result − reference| / "
            "max |reference|, "
            "the reference in float64 on the rounded inputs. Every tensor-core tile that runs the problem "
            "(the 'auto' column marks the one `choose_tensor_core` takes). The tolerances are issue 12's "
            "(the script's docstring).\n\n" + text + "\n")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
