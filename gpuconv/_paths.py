"""Where the kernel sources are: inside the installed package, or beside it in a checkout."""
from __future__ import annotations

from pathlib import Path


def kernels_dir() -> Path:
    """The folder holding ``kernels/*.cu`` (``gpuconv/kernels`` installed, ``kernels/`` in a checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "kernels", here.parent / "kernels"):
        if (candidate / "common.cuh").is_file() or (candidate / "cuda_emu.h").is_file():
            return candidate
    raise FileNotFoundError(f"kernels/ not found beside {here} nor inside it: broken install?")
