"""A small CNN on scikit-learn's handwritten digits (1,797 8×8 images shipped inside the package: no
download), its two convolutions computed by gpuconv through the PyTorch drop-in, timed against the
same network, from the same initial weights, on torch's own convolution.

    python examples/torch_digits.py --out digits-out --threads 1    # also --steps, --dtype, --backend

Prints both networks' test accuracy and training time (after a warm-up) and writes the two loss curves to
``OUT/loss.png``. Needs torch, scikit-learn, tqdm and matplotlib.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import gpuconv.torch as gt

STEPS = 100
BATCH_SIZE = 128
LEARNING_RATE = 0.2
MOMENTUM = 0.9


def load_data(dtype=torch.float32):
    """(x_train, y_train, x_test, y_test): images (N, 1, 8, 8) scaled to [0, 1], labels 0..9; a
    fixed, stratified 75/25 split."""
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images / 16.0, digits.target, test_size=0.25, random_state=0, stratify=digits.target)

    def images(a):
        return torch.tensor(a, dtype=dtype).unsqueeze(1)

    return images(x_train), torch.tensor(y_train), images(x_test), torch.tensor(y_test)


def make_network(conv2d=gt.Conv2d, dtype=torch.float32, **conv_options) -> torch.nn.Sequential:
    """Two 3×3 convolutions of class ``conv2d``, each followed by ReLU and 2×2 max pooling, then a
    linear head: 8×8 → 16×4×4 → 32×2×2 → 10 classes."""
    return torch.nn.Sequential(
        conv2d(1, 16, 3, padding=1, dtype=dtype, **conv_options), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        conv2d(16, 32, 3, padding=1, dtype=dtype, **conv_options), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32 * 2 * 2, 10, dtype=dtype))


def train(net, x, y, steps=STEPS, seed=0, progress=None) -> list[float]:
    """``steps`` steps of SGD with momentum on minibatches of cross-entropy; the loss of each.

    The minibatches are drawn from a generator seeded with ``seed``: two networks trained with the
    same seed see the same batches in the same order.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(net.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    losses, order = [], torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if len(order) < BATCH_SIZE:  # a new epoch: a fresh shuffle
            order = torch.randperm(len(x), generator=generator)
        batch, order = order[:BATCH_SIZE], order[BATCH_SIZE:]
        loss = F.cross_entropy(net(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if progress is not None:
            progress.update()
            progress.set_postfix(loss=f"{losses[-1]:.4f}")
    return losses


def warm_up(net, x, y):
    """Three steps on a copy of ``net``, outside the timer: PyTorch's first call of a custom op
    imports torch._dynamo (seconds), and each network's first steps allocate what later ones reuse."""
    train(copy.deepcopy(net), x, y, steps=3)


def accuracy(net, x, y) -> float:
    with torch.no_grad():
        return (net(x).argmax(1) == y).double().mean().item()


def limit_threads(threads: int):
    """At most ``threads`` threads in PyTorch's pool and in the BLAS and OpenMP pools NumPy uses.

    On a small, shared CPU the two libraries' pools fight: PyTorch's OpenMP threads spin after
    each op while NumPy's BLAS threads wait for a core, which can cost more than the threads gain.
    """
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    torch.set_num_threads(threads)
    threadpool_limits(threads)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("digits-out"), help="folder for loss.png")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--backend", choices=("numpy", "emulate"), default=None,
                        help="gpuconv's backend for CPU tensors (default: GPUCONV_BACKEND, else numpy)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for PyTorch and for NumPy's BLAS (default: the libraries' own)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        limit_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    x_train, y_train, x_test, y_test = load_data(dtype)

    torch.manual_seed(args.seed)
    networks = {"gpuconv": make_network(gt.Conv2d, dtype, backend=args.backend),
                "torch": make_network(torch.nn.Conv2d, dtype)}
    networks["torch"].load_state_dict(networks["gpuconv"].state_dict())
    curves = {}
    for name, net in networks.items():
        warm_up(net, x_train, y_train)
        with tqdm(total=args.steps, desc=f"{name} conv", unit="step") as progress:
            start = time.perf_counter()
            curves[name] = train(net, x_train, y_train, args.steps, args.seed, progress)
            seconds = time.perf_counter() - start
        print(f"{name:>7} conv: test accuracy {accuracy(net, x_test, y_test):.2%}, "
              f"{args.steps} steps in {seconds:.2f} s ({1e3 * seconds / args.steps:.1f} ms/step)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args.out.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        axes.plot(range(1, len(curve) + 1), curve, label=f"{name} conv",
                  linestyle="-" if name == "gpuconv" else "--")
    axes.set(xlabel="SGD step", ylabel="cross-entropy (minibatch)", yscale="log",
             title=f"digits CNN, {args.dtype}: gpuconv.torch.Conv2d vs torch.nn.Conv2d")
    axes.legend()
    figure.tight_layout()
    figure.savefig(args.out / "loss.png", dpi=120)
    print(f"loss curves: {args.out / 'loss.png'}")


if __name__ == "__main__":
    main()
