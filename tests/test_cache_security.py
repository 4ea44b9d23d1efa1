"""The emulator's kernel cache trusts only its owner.

Whatever the cache holds is loaded with dlopen (or linked into what is), so it runs as the user. The
rule (README, "The kernel cache"): a cached file and every folder from the cache root down to it are
owned by the user and writable by no one else; every folder above the root is owned by the user or
root and, if others may write it, has the sticky bit. Anything else is refused with a RuntimeError
naming the path, its owner and mode, and the fix. Folders gpuconv creates are 0700 whatever the umask.
"""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from gpuconv.emulate import Module, _build

CODE = 'extern "C" __global__ void k(int* o) { o[0] = 7; }'
OTHER_CODE = 'extern "C" __global__ void k(int* o) { o[0] = 8; }'
NOBODY = 65534  # uid and gid of nobody / nogroup on Debian and Ubuntu
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user (chown) "
                                                         "needs root")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache root that does not exist yet, below a folder that does not either."""
    root = tmp_path / "parent" / "cache"
    monkeypatch.setenv("GPUCONV_EMULATE_CACHE", str(root))
    return root


def run(code: str = CODE) -> int:
    out = np.zeros(1, np.int32)
    Module(code=code).get_function("k")(1, 1, (out,))
    return int(out[0])


def entry(code: str = CODE) -> _build.Build:
    """The cache entry of ``code`` (built if missing), as Module builds it."""
    return _build.build(code, _build.translate_options(()), ["k"], "plain", None)


def runtime_object() -> Path:
    return next(_build.cache_root().glob("runtime-plain-*.o"))


def refused(call, path: Path, *words):
    with pytest.raises(RuntimeError) as error:
        call()
    message = str(error.value)
    for word in (f"refuses to load {path}", "mode 0o", "owner ", "GPUCONV_EMULATE_CACHE", *words):
        assert word in message, (word, message)
    return message


def test_a_new_cache_is_private_whatever_the_umask(cache):
    previous = os.umask(0o002)  # a user-private-group umask: files group-writable by default
    try:
        assert run() == 7
    finally:
        os.umask(previous)
    built = entry()
    for folder in (cache.parent, cache, built.directory):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for file in (built.library, runtime_object()):
        assert stat.S_IMODE(file.stat().st_mode) & 0o077 == 0, file


@pytest.mark.parametrize("bit, who", [(stat.S_IWGRP, "its group"), (stat.S_IWOTH, "others")],
                         ids=["group-writable", "world-writable"])
@pytest.mark.parametrize("what", ["library", "entry folder", "cache root"])
def test_an_entry_others_can_write_is_refused(cache, what, bit, who):
    assert run() == 7
    built = entry()
    path = {"library": built.library, "entry folder": built.directory, "cache root": cache}[what]
    path.chmod(stat.S_IMODE(path.stat().st_mode) | bit)
    message = refused(run, built.library if what == "library" else path, f"is writable by {who}")
    assert f"chmod go-w {path}" in message
    path.chmod(stat.S_IMODE(path.stat().st_mode) & ~bit)  # the fix the message gives
    assert run() == 7


def test_a_runtime_object_others_can_write_is_not_linked(cache):
    assert run() == 7
    runtime = runtime_object()
    runtime.chmod(0o646)
    refused(lambda: run(OTHER_CODE), runtime, "is writable by others")


def test_a_world_writable_root_is_refused_even_with_the_sticky_bit(cache):
    assert run() == 7
    directory = entry().directory
    cache.chmod(0o777)
    refused(run, directory, "is writable by its group and others")
    cache.chmod(0o1777)  # /tmp-like: others could still add the entries gpuconv would load
    refused(run, directory, "is writable by its group and others")


def test_folders_above_the_root_need_the_sticky_bit_when_others_may_write(cache):
    above = cache.parent
    above.mkdir(mode=0o700)
    above.chmod(0o1777)  # as /tmp: others may not rename what is ours
    assert run() == 7
    directory = entry().directory
    above.chmod(0o777)  # others could move the whole cache aside and put their own in its place
    refused(run, directory, f"{above} ", "without the sticky bit")


@needs_root
@pytest.mark.parametrize("what", ["library", "entry folder", "cache root", "runtime object"])
def test_an_entry_owned_by_another_user_is_refused(cache, what):
    assert run() == 7
    built = entry()
    path = {"library": built.library, "entry folder": built.directory, "cache root": cache,
            "runtime object": runtime_object()}[what]
    os.chown(path, NOBODY, NOBODY)
    call = (lambda: run(OTHER_CODE)) if what == "runtime object" else run
    message = refused(call, path if what != "library" else built.library, "belongs to another user",
                      f"uid {NOBODY}")
    assert "chmod" not in message  # not theirs to fix that way: move the cache


@needs_root
def test_a_folder_above_the_root_owned_by_another_user_is_refused(cache):
    cache.parent.mkdir(mode=0o755)
    os.chown(cache.parent, NOBODY, NOBODY)
    refused(run, _build.cache_root(), f"{cache.parent} ", "nor root")


@needs_root
@pytest.mark.parametrize("how", ["in place", "through a symlink"])
def test_a_planted_library_never_runs(cache, tmp_path, how):
    """Another user's library at a predicted entry: refused before dlopen runs its constructor."""
    built = entry()
    marker = tmp_path / "planted-code-ran"
    source = tmp_path / "planted.c"
    source.write_text('#include <stdio.h>\n__attribute__((constructor)) static void planted(void) '
                      f'{{ fclose(fopen("{marker}", "w")); }}\nint gpuconv_static_shared_bytes;\n')
    planted = tmp_path / "planted.so"
    subprocess.run([_build.compiler()[0], "-x", "c", "-shared", "-fPIC", "-o", str(planted),
                    str(source)], check=True)
    os.chown(planted, NOBODY, NOBODY)
    if how == "in place":
        os.replace(planted, built.library)
        os.chown(built.library, NOBODY, NOBODY)
    else:
        built.library.unlink()
        built.library.symlink_to(planted)
    refused(run, built.library, "belongs to another user")
    assert not marker.exists()
