"""fprop's gather of x, replayed per GPU instruction: why `gpuconv profile` shows it above the ideal.

    python bench/gather_replay.py N C H W K R S [STRIDE]      (the 128x128x8_8x8 tile, padding 1)

Replays FpropActivationIterator's addresses (kernels/fprop.cu: thread t stages pixel m_base +
t % BM and reduction index k = tile·BK + t / BM + i·STEP, zero in the padding) for every block, warp,
k-tile and staged element i, and counts 32-byte sectors per warp request two ways:

- per GPU instruction: the lanes of one warp executing load i of k-tile `tile` together, padding
  lanes predicated off, as the GPU issues it;
- per k-th execution of the source line by each lane, as the emulator's profile mode groups them
  (its host compiler keeps the loop over i rolled, and a padding lane executes no load, so its
  later loads are paired with other lanes' earlier ones).

The second reproduces the profile's figure; the first is what a GPU's memory system sees. Counted
on the CPU from the index arithmetic, not measured.
"""
from __future__ import annotations

import sys

BM, THREADS, BK = 128, 256, 8


def lane_loads(N, C, H, W, K, R, S, stride=1, pad=1):
    """Per warp: each lane's loads in program order, as ((k-tile, i), byte address)."""
    P, Q = (H + 2 * pad - R) // stride + 1, (W + 2 * pad - S) // stride + 1
    M, CRS, elems, step = N * P * Q, C * R * S, BK * BM // THREADS, THREADS // BM
    for m_base in range(0, M, BM):
        for warp in range(THREADS // 32):
            lanes = []
            for lane in range(32):
                t, loads = 32 * warp + lane, []
                m = m_base + t % BM
                n, pq = divmod(m, P * Q)
                p, q = divmod(pq, Q)
                for tile in range(-(-CRS // BK)):
                    for i in range(elems):
                        k = tile * BK + t // BM + i * step
                        c, rs = divmod(k, R * S)
                        r, s = divmod(rs, S)
                        h, w = p * stride - pad + r, q * stride - pad + s
                        if m < M and k < CRS and 0 <= h < H and 0 <= w < W:
                            loads.append(((tile, i), 4 * (((n * C + c) * H + h) * W + w)))
                lanes.append(loads)
            yield lanes


def per_request(requests) -> str:
    sectors = sum(len({a // 32 for a in r}) for r in requests)
    ideal = sum(-(-4 * len(set(r)) // 32) for r in requests)
    return f"{len(requests)} requests, {sectors / len(requests):.2f} sectors a request " \
           f"(ideal {ideal / len(requests):.2f})"


def main(argv) -> None:
    shape, stride = [int(v) for v in argv[:7]], int(argv[7]) if len(argv) > 7 else 1
    by_instruction, by_execution = [], []
    for lanes in lane_loads(*shape, stride=stride):
        instruction, execution = {}, {}
        for loads in lanes:
            for j, (where, address) in enumerate(loads):
                instruction.setdefault(where, []).append(address)
                execution.setdefault(j, []).append(address)
        by_instruction += instruction.values()
        by_execution += execution.values()
    print("per GPU instruction:        ", per_request(by_instruction))
    print("per k-th execution (profile):", per_request(by_execution))


if __name__ == "__main__":
    main(sys.argv[1:])
