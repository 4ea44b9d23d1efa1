"""What the emulator raises. Every finding is an EmulationError carrying the report text."""
from __future__ import annotations


class EmulationError(RuntimeError):
    """A kernel did something that is wrong or undefined on a GPU; the message is the report."""


class CompileError(EmulationError):
    """The host compiler rejected the kernel source (the message holds its diagnostics)."""


class LaunchError(EmulationError, ValueError):
    """A launch configuration a GPU would refuse (block size, grid size, shared memory)."""


class DeadlockError(EmulationError):
    """No thread could run while some waited, or the watchdog saw no progress (a spin-wait)."""


class DivergenceError(EmulationError):
    """A __syncthreads phase reached from different call sites."""


class WarpError(EmulationError):
    """A warp intrinsic broke the mask rule, used a bad width or read an inactive lane."""


class RaceError(EmulationError):
    """A shared-memory hazard (RAW, WAR, WAW) between threads with no barrier in between."""


class AddressError(EmulationError):
    """An address the instruction cannot take on a GPU: a cp.async destination outside shared
    memory, or a cp.async address not aligned to its size."""


class SanitizerError(EmulationError):
    """AddressSanitizer or the bounds checker stopped the kernel (asan mode)."""


# run_grid's status codes (emu_runtime.h: Status) -> exception classes.
STATUS_ERRORS = {1: LaunchError, 2: DeadlockError, 3: DivergenceError, 4: WarpError, 5: RaceError,
                 6: AddressError}
