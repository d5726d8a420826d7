"""ggml's backend devices (CPU, CUDA0, Metal, RPC[host:port]...) through ctypes.

llama-cpp-python binds llama.h but not ggml-backend.h; offloading to RPC
workers and serving this machine's devices to others need the device list, so
the few ggml functions involved are bound here, from the same shared libraries
llama_cpp has already loaded (the same build, never a second copy).
"""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import SpecgenError
from .loader import load_llama

# enum ggml_backend_dev_type
CPU, GPU, IGPU, ACCEL, META = range(5)

_P = ctypes.c_void_p


def lib_dir() -> Path:
    return Path(load_llama().__file__).parent / "lib"


def load_lib(stem: str) -> ctypes.CDLL | None:
    """libSTEM from llama_cpp's lib folder (already mapped by llama_cpp: dlopen returns that copy)."""
    suffixes = {"darwin": (".dylib",), "win32": (".dll",)}.get(sys.platform, (".so.0", ".so"))
    for suffix in suffixes:
        for name in (f"lib{stem}{suffix}", f"{stem}{suffix}"):
            path = lib_dir() / name
            if path.exists():
                return ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    return None


def _bind(lib: ctypes.CDLL, name: str, argtypes: list, restype) -> None:
    fn = getattr(lib, name)
    fn.argtypes = argtypes
    fn.restype = restype


@lru_cache(maxsize=1)
def ggml() -> ctypes.CDLL:
    """libggml with its registry (dev_count/dev_get) and libggml-base's device calls, bound."""
    reg = load_lib("ggml")
    base = load_lib("ggml-base")
    if reg is None or base is None:
        raise SpecgenError(f"ggml's shared libraries are missing from {lib_dir()}; reinstall llama-cpp-python")
    _bind(reg, "ggml_backend_dev_count", [], ctypes.c_size_t)
    _bind(reg, "ggml_backend_dev_get", [ctypes.c_size_t], _P)
    _bind(reg, "ggml_backend_dev_by_name", [ctypes.c_char_p], _P)
    _bind(base, "ggml_backend_dev_name", [_P], ctypes.c_char_p)
    _bind(base, "ggml_backend_dev_description", [_P], ctypes.c_char_p)
    _bind(base, "ggml_backend_dev_type", [_P], ctypes.c_int)
    _bind(base, "ggml_backend_dev_memory", [_P, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)],
          None)
    _bind(base, "ggml_backend_reg_dev_count", [_P], ctypes.c_size_t)
    _bind(base, "ggml_backend_reg_dev_get", [_P, ctypes.c_size_t], _P)
    for name in ("ggml_backend_dev_name", "ggml_backend_dev_description", "ggml_backend_dev_type",
                 "ggml_backend_dev_memory", "ggml_backend_reg_dev_count", "ggml_backend_reg_dev_get"):
        setattr(reg, name, getattr(base, name))
    return reg


@dataclass(frozen=True)
class Device:
    ptr: int
    name: str
    description: str
    type: int

    def memory(self) -> tuple[int, int]:
        """(free, total) bytes; for an RPC device this asks the worker."""
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        ggml().ggml_backend_dev_memory(self.ptr, ctypes.byref(free), ctypes.byref(total))
        return free.value, total.value


def device(ptr: int) -> Device:
    g = ggml()
    return Device(ptr, g.ggml_backend_dev_name(ptr).decode(), g.ggml_backend_dev_description(ptr).decode(),
                  g.ggml_backend_dev_type(ptr))


def local_devices() -> list[Device]:
    """Every device this process's llama.cpp build registered (CPU first, then GPUs)."""
    g = ggml()
    return [device(g.ggml_backend_dev_get(i)) for i in range(g.ggml_backend_dev_count())]


def local_gpus() -> list[Device]:
    """Devices that take offloaded layers here: discrete and integrated GPUs (RPC workers are not local)."""
    return [d for d in local_devices() if d.type in (GPU, IGPU)]


def by_names(names: list[str]) -> list[Device]:
    """Devices named on the command line, or one line listing the ones that exist."""
    known = {d.name.lower(): d for d in local_devices()}
    out = []
    for n in names:
        d = known.get(n.strip().lower())
        if d is None:
            have = ", ".join(f"{d.name} ({d.description})" for d in known.values())
            raise SpecgenError(f"no device {n.strip()!r} in this llama.cpp build; devices here: {have}")
        out.append(d)
    return out


def null_terminated(ptrs: list[int]) -> ctypes.Array:
    """A `ggml_backend_dev_t *` list as llama_model_params.devices wants it (the caller keeps it alive)."""
    return (_P * (len(ptrs) + 1))(*ptrs, None)
