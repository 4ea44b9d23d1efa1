"""The asan-mode worker: a subprocess with the AddressSanitizer runtime preloaded.

A library built with -fsanitize=address cannot be loaded into an ordinary Python (ASan's runtime must
come first), and a finding aborts the process. So asan launches run in a worker: the real interpreter
binary (a pyenv shim crashed under LD_PRELOAD) started with ``LD_PRELOAD=libasan.so``, sent the
arrays by pickle, answering with the arrays after the kernel. When the worker dies, its stderr (the
sanitizer's report) becomes a SanitizerError, and the next launch starts a new worker.
"""
from __future__ import annotations

import atexit
import ctypes
import os
import pickle
import site
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from . import _launch
from ._build import compiler
from ._errors import SanitizerError

_REPORT_LINES = 80


class AsanWorker:
    def __init__(self):
        cxx, _ = compiler()
        asan = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True,
                              text=True).stdout.strip()
        if not os.path.isabs(asan):
            raise RuntimeError(f"{cxx} has no AddressSanitizer runtime (libasan.so): asan mode needs "
                               "GCC's libasan (Debian/Ubuntu: apt-get install g++)")
        package_parent = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["LD_PRELOAD"] = os.path.realpath(asan)
        # NumPy's import alone "leaks"; abort at the first finding so the report is the first one.
        env["ASAN_OPTIONS"] = "detect_leaks=0:halt_on_error=1:print_summary=1"
        env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
        # The real interpreter binary (not a venv's launcher) sees only what PYTHONPATH names: this
        # package, then the caller's site-packages (NumPy, ml_dtypes for bfloat16 arrays).
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, *site.getsitepackages(),
                                                          env.get("PYTHONPATH")]))
        self._stderr = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [os.path.realpath(sys.executable), "-c", "from gpuconv.emulate._worker import serve; serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env,
        )

    def request(self, message):
        try:
            pickle.dump(message, self._process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self._process.stdin.flush()
            return pickle.load(self._process.stdout)
        except (EOFError, BrokenPipeError, pickle.UnpicklingError):
            self._process.wait()
            raise SanitizerError(self._report()) from None

    def _report(self) -> str:
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace")
        lines = text.splitlines()
        first = next((i for i, line in enumerate(lines)
                      if "ERROR: AddressSanitizer" in line or "runtime error:" in line), 0)
        report = "\n".join(lines[first:first + _REPORT_LINES])
        return (f"the asan worker stopped (exit status {self._process.returncode}) with this "
                f"report:\n{report}")

    def close(self):
        if self._process.poll() is None:
            self._process.stdin.close()
            self._process.wait()


_worker: AsanWorker | None = None


def asan_request(message):
    """Sends message to the (re)started worker; a dead worker raises SanitizerError."""
    global _worker
    if _worker is None or _worker._process.poll() is not None:
        _worker = AsanWorker()
        atexit.register(_worker.close)
    try:
        return _worker.request(message)
    except SanitizerError:
        _worker = None
        raise


def serve():
    """The worker's loop: ("signatures", library, count) and ("launch", library, launch, args)."""
    # The protocol owns the original stdout; a kernel's printf goes to stderr instead.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    try:  # registers NumPy's bfloat16, so bfloat16 arrays unpickle here as in the caller
        import ml_dtypes  # noqa: F401
    except ImportError:  # then the caller can have no bfloat16 array either
        pass
    libraries = {}
    while True:
        try:
            message = pickle.load(requests)
        except EOFError:
            return
        op, path = message[0], message[1]
        if path not in libraries:
            try:
                libraries[path] = ctypes.CDLL(path)
            except OSError as error:  # a corrupt cache entry: the parent rebuilds it
                reply = error
                pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
                replies.flush()
                continue
        library = libraries[path]
        if op == "signatures":
            reply = _launch.signatures(library, message[2])
        else:
            # Fresh malloc'd copies: an unpickled array may view the pickle's bytes object, whose
            # neighbours are Python objects rather than ASan redzones.
            launch = message[2]
            arguments = [np.array(a, copy=True) if isinstance(a, np.ndarray) else a
                         for a in message[3]]
            status, report = _launch.call(library, launch, arguments)
            reply = (status, report, [a for a in arguments if isinstance(a, np.ndarray)])
        pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()
