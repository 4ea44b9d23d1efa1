"""The figures of docs/how-it-works.md, computed from the kernels' own index rules.

    python docs/figures.py [--out DIR]      # default: next to this file

Writes fprop_im2col.png, dgrad_phases.png and wgrad_splitk.png. Deterministic (fixed seed, Agg
backend, no timestamps in the PNG metadata).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
from gpuconv.backends.kernel_backend import TILES, choose_wgrad, wgrad_splits  # noqa: E402
from gpuconv.problem import conv_problem  # noqa: E402

METADATA = {"Software": None}  # no matplotlib version stamp: the same bytes run after run
PAD_GREY = "#c8c8c8"


def _save(fig, path: Path):
    fig.savefig(path, dpi=110, metadata=METADATA)
    plt.close(fig)
    print(path)


# -- (1) fprop as an implicit GEMM: the virtual im2col matrix -------------------------------------
def fprop_im2col(out: Path):
    """A[m, (c,r,s)] for a tiny problem, from fprop.cu's tap formula
    h = p·stride_h - pad_top + r·dil_h, w = q·stride_w - pad_left + s·dil_w."""
    N, C, H, W, K, R, S = 1, 2, 3, 3, 2, 3, 3
    stride, pad, dil = 1, 1, 1
    P = (H + 2 * pad - dil * (R - 1) - 1) // stride + 1
    Q = (W + 2 * pad - dil * (S - 1) - 1) // stride + 1
    M, CRS = N * P * Q, C * R * S
    # A[m, crs] = flat index c·H·W + h·W + w of the x element read, or -1 for padding.
    A = np.full((M, CRS), -1)
    for m in range(M):
        p, q = (m % (P * Q)) // Q, m % Q
        for crs in range(CRS):
            c, r, s = crs // (R * S), (crs // S) % R, crs % S
            h, w = p * stride - pad + r * dil, q * stride - pad + s * dil
            if 0 <= h < H and 0 <= w < W:
                A[m, crs] = (c * H + h) * W + w
    cmaps = [plt.get_cmap("Blues"), plt.get_cmap("Oranges")]

    def colour(idx):
        if idx < 0:
            return PAD_GREY
        c, hw = divmod(idx, H * W)
        return cmaps[c](0.25 + 0.5 * hw / (H * W - 1))

    fig = plt.figure(figsize=(13.5, 5.6))
    gs = fig.add_gridspec(1, 3, width_ratios=[2.2, CRS, 4.2], wspace=0.25)

    # x, each element numbered with its flat index.
    ax = fig.add_subplot(gs[0])
    for c in range(C):
        for h in range(H):
            for w in range(W):
                idx = (c * H + h) * W + w
                y0 = c * (H + 1) + h
                ax.add_patch(Rectangle((w, y0), 1, 1, fc=colour(idx), ec="white"))
                ax.text(w + 0.5, y0 + 0.5, str(idx), ha="center", va="center", fontsize=9)
        ax.text(-0.2, c * (H + 1) + H / 2, f"c={c}", ha="right", va="center", fontsize=9)
    ax.set_xlim(-1, W)
    ax.set_ylim(C * (H + 1) - 1, 0)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(f"input x[0, c, h, w]\n(numbered {C}·{H}·{W} elements)", fontsize=10)

    # A, the M × C·R·S matrix fprop_implicit_gemm stages tile by tile and never stores.
    ax = fig.add_subplot(gs[1])
    for m in range(M):
        for j in range(CRS):
            ax.add_patch(Rectangle((j, m), 1, 1, fc=colour(A[m, j]), ec="white"))
            if A[m, j] >= 0:
                ax.text(j + 0.5, m + 0.5, str(A[m, j]), ha="center", va="center", fontsize=8)
    ax.set_xlim(0, CRS)
    ax.set_ylim(M, 0)
    ax.set_aspect("equal")
    ax.set_xticks(np.arange(CRS) + 0.5)
    ax.set_xticklabels([f"{j // (R * S)},{(j // S) % R},{j % S}" for j in range(CRS)],
                       rotation=90, fontsize=7)
    ax.set_yticks(np.arange(M) + 0.5)
    ax.set_yticklabels([f"p={(m // Q) % P},q={m % Q}" for m in range(M)], fontsize=8)
    ax.set_xlabel("reduction index (c, r, s)   [GEMM K = C·R·S = %d]" % CRS, fontsize=9)
    ax.set_ylabel("output pixel m = (n, p, q)   [GEMM M = N·P·Q = %d]" % M, fontsize=9)
    ax.set_title("A = virtual im2col: the x element each (pixel, tap) reads\n"
                 "A[m,(c,r,s)] = x[n, c, p·stride−pad+r·dil, q·stride−pad+s·dil]", fontsize=10)
    ax.tick_params(length=0)

    # B = w viewed as C·R·S × K.
    ax = fig.add_subplot(gs[2])
    for j in range(CRS):
        for k in range(K):
            ax.add_patch(Rectangle((k, j), 1, 1, fc="#e6e0f3", ec="white"))
            ax.text(k + 0.5, j + 0.5, f"w[{k},{j // (R * S)},{(j // S) % R},{j % S}]",
                    ha="center", va="center", fontsize=6.5)
    ax.set_xlim(0, K)
    ax.set_ylim(CRS, 0)
    ax.set_xticks(np.arange(K) + 0.5)
    ax.set_xticklabels([f"k={k}" for k in range(K)], fontsize=8)
    ax.set_yticks([])
    ax.set_xlabel(f"output channel k\n[GEMM N = K = {K}]", fontsize=9)
    ax.set_title("B = w as a\n(C·R·S) × K matrix", fontsize=10)
    ax.tick_params(length=0)

    fig.legend(handles=[Patch(fc=cmaps[0](0.5), label="reads channel 0"),
                        Patch(fc=cmaps[1](0.5), label="reads channel 1"),
                        Patch(fc=PAD_GREY, label="padding: skipped (staged as 0)")],
               loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle(f"fprop as an implicit GEMM: y = A·B  (N={N}, C={C}, H=W={H}, K={K}, "
                 f"{R}×{S} filter, stride {stride}, padding {pad})", fontsize=12)
    fig.subplots_adjust(left=0.04, right=0.98, top=0.84, bottom=0.22)
    _save(fig, out / "fprop_im2col.png")


# -- (2) dgrad stride phases ---------------------------------------------------------------------
def phase_taps(phase: int, pad: int, stride: int, dil: int, R: int) -> list[int]:
    """The taps r of one stride phase: dgrad.cu's rule (phase + pad − r·dil) ≡ 0 (mod stride)."""
    return [r for r in range(R) if (phase + pad - r * dil) % stride == 0]


def dgrad_phases(out: Path):
    H = W = 6
    R = S = 3
    stride, pad, dil = 2, 1, 1
    phases = [(a, b) for a in range(stride) for b in range(stride)]  # blockIdx.z = a·stride_w + b
    colours = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759"]
    # The phase rule agrees with dgrad_direct's per-pixel rule (h + pad − r·dil = p·stride) on
    # every row whose taps all land inside dy (edge rows lose some: those are staged as zero).
    P = (H + 2 * pad - dil * (R - 1) - 1) // stride + 1
    for h in range(H):
        direct = [r for r in range(R) if (h + pad - r * dil) % stride == 0
                  and 0 <= (h + pad - r * dil) // stride < P]
        assert set(direct) <= set(phase_taps(h % stride, pad, stride, dil, R)), h

    fig = plt.figure(figsize=(12, 6.2))
    gs = fig.add_gridspec(2, 4, width_ratios=[2.6, 0.25, 1, 1], wspace=0.3, hspace=0.45)
    ax = fig.add_subplot(gs[:, 0])
    for h in range(H):
        for w in range(W):
            z = (h % stride) * stride + w % stride
            ax.add_patch(Rectangle((w, h), 1, 1, fc=colours[z], ec="white", lw=2, alpha=0.85))
            n = len(phase_taps(h % stride, pad, stride, dil, R)) * len(
                phase_taps(w % stride, pad, stride, dil, S))
            ax.text(w + 0.5, h + 0.5, f"{h},{w}\n{n} tap{'s' if n > 1 else ''}", ha="center",
                    va="center", fontsize=8.5, color="white")
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    ax.set_aspect("equal")
    ax.set_xticks(np.arange(W) + 0.5)
    ax.set_xticklabels(range(W))
    ax.set_yticks(np.arange(H) + 0.5)
    ax.set_yticklabels(range(H))
    ax.set_xlabel("input column w")
    ax.set_ylabel("input row h")
    ax.set_title("dx[h, w] coloured by its stride phase (h mod 2, w mod 2);\n"
                 "blockIdx.z = phase_h·stride_w + phase_w picks the phase", fontsize=10)
    ax.tick_params(length=0)

    for z, (a, b) in enumerate(phases):
        ax = fig.add_subplot(gs[z // 2, 2 + z % 2])
        rs, ss = phase_taps(a, pad, stride, dil, R), phase_taps(b, pad, stride, dil, S)
        for r in range(R):
            for s in range(S):
                hit = r in rs and s in ss
                ax.add_patch(Rectangle((s, r), 1, 1, fc=colours[z] if hit else "#f2f2f2",
                                       ec="#999999"))
                ax.text(s + 0.5, r + 0.5, f"{r},{s}", ha="center", va="center", fontsize=8,
                        color="white" if hit else "#aaaaaa")
        ax.set_xlim(0, S)
        ax.set_ylim(R, 0)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"phase ({a},{b}): taps r∈{{{','.join(map(str, rs))}}}, "
                     f"s∈{{{','.join(map(str, ss))}}}\n{len(rs) * len(ss)} of {R * S} filter taps",
                     fontsize=9)
    fig.suptitle(f"dgrad stride phases: stride {stride}, {R}×{S} filter, padding {pad}, "
                 f"dilation {dil}. Tap (r, s) reaches phase (a, b) when\n"
                 f"(a + pad − r·dil) mod stride = 0 and (b + pad − s·dil) mod stride = 0 "
                 f"(phase_taps in kernels/dgrad.cu)", fontsize=11)
    fig.text(0.5, 0.015, "Over the 4 phases: 1 + 2 + 2 + 4 = 9 tap products per 4 pixels. "
             "Convolving a zero-inserted dy would multiply all 9 taps at every pixel, most of them "
             "by inserted zeros.\nAt the border a tap's dy pixel may lie outside dy (padding): "
             "dgrad_implicit_gemm stages it as 0.", ha="center", fontsize=9.5)
    fig.subplots_adjust(left=0.05, right=0.98, top=0.83, bottom=0.13)
    _save(fig, out / "dgrad_phases.png")


# -- (3) wgrad split-K with a fixed-order sum ----------------------------------------------------
def wgrad_splitk(out: Path):
    p = conv_problem((8, 64, 56, 56), (64, 64, 3, 3), padding=1)
    tile_name = choose_wgrad(p)
    tile = TILES["wgrad"][tile_name]
    splits, chunk = wgrad_splits(p, tile)
    npq = p.N * p.P * p.Q

    # One dw element's reduction: npq float32 products dy·x, each split summed on its own, then
    # the partials summed as wgrad_reduce_splits does (z = 0, 1, ...), or in shuffled orders.
    rng = np.random.default_rng(0)
    products = (rng.standard_normal(npq) * rng.standard_normal(npq)).astype(np.float32)
    partial = np.array([products[z * chunk:(z + 1) * chunk].sum(dtype=np.float32)
                        for z in range(splits)], np.float32)

    def ordered_sum(order):
        acc = partial[order[0]]
        for z in order[1:]:
            acc = np.float32(acc + partial[z])
        return acc

    fixed = ordered_sum(list(range(splits)))
    shuffled = np.array([ordered_sum(rng.permutation(splits)) for _ in range(2000)], np.float32)
    ulp = float(np.spacing(np.abs(fixed)))
    deltas = np.round((shuffled.astype(np.float64) - float(fixed)) / ulp).astype(int)

    fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(11, 6.2), gridspec_kw=dict(height_ratios=[1, 2.2]))
    for z in range(splits):
        lo, hi = z * chunk, min((z + 1) * chunk, npq)
        ax0.add_patch(Rectangle((lo, 0), hi - lo, 1, fc=plt.get_cmap("tab20")(z % 20), ec="white"))
        if z % 5 == 0 or z == splits - 1:
            ax0.text((lo + hi) / 2, 0.5, f"z={z}", ha="center", va="center", fontsize=8)
    ax0.set_xlim(0, npq)
    ax0.set_ylim(0, 1)
    ax0.set_yticks([])
    ax0.set_xlabel("reduction index e = (n, p, q) over N·P·Q = %d output pixels" % npq)
    ax0.set_title(f"wgrad_implicit_gemm on x[8,64,56,56], w[64,64,3,3], padding 1, tile {tile_name}: "
                  f"{splits} splits of chunk = {chunk} = {chunk // tile.BK}·BK pixels "
                  f"(wgrad_splits)\nsplit z = blockIdx.z writes partial[z]; wgrad_reduce_splits "
                  f"then adds partial[0] + partial[1] + … + partial[{splits - 1}]", fontsize=10)

    values, counts = np.unique(deltas, return_counts=True)
    ax1.bar(values, counts, width=0.8, color="#9c9ede", label="the same partials summed in a random "
            "order (what float atomicAdd allows)")
    ax1.axvline(0, color="#d62728", lw=2.5, label="the fixed order z = 0, 1, …: one answer, every run")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set_xlabel("result − fixed-order result, in float32 ulps")
    ax1.set_ylabel("runs out of 2000")
    ax1.set_title(f"One dw element (float32): {len(values)} distinct results from 2000 random "
                  f"summation orders of the same {splits} partials", fontsize=10)
    ax1.legend(fontsize=9, loc="upper left")
    fig.tight_layout()
    _save(fig, out / "wgrad_splitk.png")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    fprop_im2col(args.out)
    dgrad_phases(args.out)
    wgrad_splitk(args.out)


if __name__ == "__main__":
    main()
