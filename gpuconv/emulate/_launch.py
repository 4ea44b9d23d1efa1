"""One kernel launch through ctypes: argument checks, the launch configuration, the call."""
from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

SCHEDULES = {"forward": 0, "reverse": 1, "random": 2}
FILLS = {"nan": 0xFF, "huge": 0x7F}  # 0xFF..: NaN in half/float/double, -1 in integers;
# 0x7F..: ~3.4e38 in float, ~1.4e306 in double (finite, so it shows up where NaN is masked)
_KINDS = {"p": "a pointer", "i": "a signed integer", "u": "an unsigned integer",
          "f": "a floating-point number", "b": "a bool", "s": "a struct"}
_ERROR_BYTES = 8192


class LaunchConfig(ctypes.Structure):
    """Mirror of gpuconv_emu::LaunchConfig in emu_runtime.h."""

    _fields_ = [
        ("grid", ctypes.c_uint32 * 3),
        ("block", ctypes.c_uint32 * 3),
        ("dynamic_shared_bytes", ctypes.c_uint64),
        ("schedule", ctypes.c_int32),
        ("fill_byte", ctypes.c_int32),
        ("seed", ctypes.c_uint64),
        ("watchdog_seconds", ctypes.c_double),
        ("kernel_name", ctypes.c_char_p),
        ("global_ranges", ctypes.POINTER(ctypes.c_uint64)),
        ("global_range_count", ctypes.c_uint64),
        ("shared_variables", ctypes.POINTER(ctypes.c_uint64)),
        ("shared_variable_count", ctypes.c_uint64),
    ]


class ProfileRow(ctypes.Structure):
    """Mirror of GpuconvProfileRow in runtime.cpp: one static access's counters."""

    _fields_ = [(name, ctypes.c_uint64) for name in
                ("pc", "bytes", "space", "kind", "requests", "lanes", "sectors", "wavefronts", "ideal")]


@dataclass(frozen=True)
class Launch:
    """Everything one launch needs besides the arguments; picklable for the asan worker."""

    index: int  # which gpuconv_launch_<index>
    kernel_name: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_mem: int
    schedule: str
    fill: str | int
    seed: int
    watchdog: float
    shared: tuple[tuple[int, int], ...]  # the module's static __shared__ variables: (offset, size)

    def config(self) -> LaunchConfig:
        fill = FILLS[self.fill] if isinstance(self.fill, str) else int(self.fill)
        config = LaunchConfig(self.grid, self.block, self.shared_mem, SCHEDULES[self.schedule],
                              fill, self.seed, self.watchdog, self.kernel_name.encode())
        pairs = [v for variable in self.shared for v in variable]
        config._shared = (ctypes.c_uint64 * max(1, len(pairs)))(*pairs)  # kept alive with config
        config.shared_variables, config.shared_variable_count = config._shared, len(self.shared)
        return config


def parse_signature(text: bytes) -> tuple[tuple[str, int], ...]:
    """b"p8,i4" -> (("p", 8), ("i", 4))."""
    return tuple((item[0], int(item[1:])) for item in text.decode().split(",") if item)


def check_arguments(kernel_name: str, signature, args) -> list:
    """The arguments as arrays or NumPy scalars, each checked against the kernel's parameter;
    TypeError names the kernel and the argument index. On a GPU these mistakes pass silently and
    give wrong results. A null pointer is an 8-byte integer 0 (``np.uint64(0)``), as CuPy passes
    it; ``None`` is refused, since CuPy turns it into the address 0xffffffff (cupy/cupy#9046)."""
    args = tuple(args)
    described = ", ".join(f"{k}{n}" for k, n in signature)
    if len(args) != len(signature):
        raise TypeError(f"kernel {kernel_name!r} takes {len(signature)} arguments ({described}), "
                        f"got {len(args)}")
    checked = []
    for i, (arg, (kind, size)) in enumerate(zip(args, signature)):
        where = f"kernel {kernel_name!r} argument {i}"
        if arg is None:
            raise TypeError(f"{where}: None is not a null pointer on a GPU (CuPy passes it as "
                            "0xffffffff): pass np.uint64(0)")
        if isinstance(arg, np.ndarray):
            if kind != "p":
                raise TypeError(f"{where}: got an array but the parameter is {_KINDS[kind]} of "
                                f"{size} bytes")
            checked.append(arg)
            continue
        if isinstance(arg, (bool, int, float)):
            # CuPy passes Python scalars as bool / int64 / float64, whatever the parameter is.
            arg = np.asarray(arg)[()]
        if not isinstance(arg, np.generic):
            raise TypeError(f"{where}: {type(arg).__name__} is not an array or a NumPy scalar")
        if kind == "p":
            if arg.dtype.kind in "iu" and arg.dtype.itemsize == size and arg == 0:
                checked.append(arg)  # the null pointer: its 8 zero bytes are what the kernel reads
                continue
            raise TypeError(f"{where}: the parameter is a pointer: pass an array, or np.uint64(0) "
                            f"for a null pointer, not {arg.dtype.name} {arg}")
        arg_kind = {"i": "i", "u": "u", "f": "f", "b": "b", "V": "s"}.get(arg.dtype.kind)
        # Signed and unsigned integers of one size have the same bits for the values that matter.
        same_kind = arg_kind == kind or {arg_kind, kind} == {"i", "u"}
        if not same_kind or arg.dtype.itemsize != size:
            hint = ""
            if kind in "iuf" and arg_kind in "iuf":
                hint = f" (pass np.{np.dtype(f'{kind}{size}').name}(value))"
            raise TypeError(f"{where}: got {arg.dtype.name} ({arg.dtype.itemsize} bytes) but the "
                            f"parameter is {_KINDS[kind]} of {size} bytes{hint}")
        checked.append(arg)
    return checked


def call(library: ctypes.CDLL, launch: Launch, arguments) -> tuple[int, str]:
    """Runs the launch on checked arguments in this process: (status, report)."""
    holders = []
    for arg in arguments:
        if isinstance(arg, np.ndarray):
            holders.append(ctypes.c_void_p(arg.ctypes.data))
        else:
            holders.append(ctypes.create_string_buffer(arg.tobytes(), arg.dtype.itemsize))
    pointers = (ctypes.c_void_p * max(1, len(holders)))(*(ctypes.addressof(h) for h in holders))
    error = ctypes.create_string_buffer(_ERROR_BYTES)
    entry = getattr(library, f"gpuconv_launch_{launch.index}")
    entry.restype = ctypes.c_int
    config = launch.config()
    # The arrays' byte ranges: what profile mode counts as global memory.
    arrays = [a for a in arguments if isinstance(a, np.ndarray)]
    ranges = (ctypes.c_uint64 * max(1, 2 * len(arrays)))(
        *(v for a in arrays for v in (a.ctypes.data, a.ctypes.data + a.nbytes)))
    config.global_ranges, config.global_range_count = ranges, len(arrays)
    status = entry(ctypes.byref(config), pointers, error, ctypes.c_ulong(_ERROR_BYTES))
    return status, error.value.decode(errors="replace")


def profile_rows(library: ctypes.CDLL) -> list[ProfileRow]:
    """The profile counters accumulated by a profile-mode library, one row per static access."""
    read = library.gpuconv_profile_rows
    read.restype = ctypes.c_ulong
    count = read(None, 0)
    rows = (ProfileRow * max(1, count))()
    return list(rows[:read(rows, count)])


def signatures(library: ctypes.CDLL, count: int):
    result = []
    for i in range(count):
        entry = getattr(library, f"gpuconv_signature_{i}")
        entry.restype = ctypes.c_char_p
        result.append(parse_signature(entry()))
    return result

