"""Compiles `openreg_npu.cpp` (the "npu" test device) into a shared library, once per source and torch.

Straight g++ over one file against the torch wheel's headers and libraries: no ninja, no pybind, no Python
headers, so a fresh CI machine with a compiler builds it in well under a minute. Importing this module
changes nothing in torch (the device itself is installed by importing `openreg_npu`).

Build cache: `$ANISORA_NPU_BUILD_DIR`, else `~/.cache/anisora/openreg_npu`; the file name hashes the source,
the torch version and the compile command, so a stale build is never loaded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("openreg_npu.cpp")
BUILD_DIR_ENV = "ANISORA_NPU_BUILD_DIR"


def compiler() -> str | None:
    """The C++ compiler the build would use ($CXX or g++), or None when there is none."""
    return shutil.which(os.environ.get("CXX", "g++"))


def command(output: Path) -> list[str]:
    from torch.utils.cpp_extension import include_paths, library_paths

    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    libs = library_paths()
    # -O1: the file only forwards to ATen, so optimisation buys nothing but compile time
    return [compiler() or "g++", str(SOURCE), "-o", str(output), "-shared", "-fPIC", "-std=c++20", "-O1", "-w",
            f"-D_GLIBCXX_USE_CXX11_ABI={abi}", *[f"-I{p}" for p in include_paths()], *[f"-L{p}" for p in libs],
            *[f"-Wl,-rpath,{p}" for p in libs], "-lc10", "-ltorch_cpu", "-ltorch"]


def build(build_dir: Path | str | None = None) -> Path:
    """The compiled library: built now unless a build of this source for this torch is cached."""
    build_dir = Path(build_dir or os.environ.get(BUILD_DIR_ENV) or Path.home() / ".cache" / "anisora" / "openreg_npu")
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), torch.__version__.encode(),
                                     " ".join(command(Path("out.so"))).encode()])).hexdigest()[:16]
    library = build_dir / f"openreg_npu-{key}.so"
    if library.is_file():
        return library
    if compiler() is None:
        raise RuntimeError("building the npu test device needs a C++ compiler (g++ or $CXX)")
    build_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=build_dir) as tmp:  # concurrent builds each move in a whole file
        partial = Path(tmp) / library.name
        done = subprocess.run(command(partial), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"building {SOURCE.name} failed:\n{done.stderr[-4000:]}")
        os.replace(partial, library)
    return library


if __name__ == "__main__":
    sys.stdout.write(f"{build()}\n")
