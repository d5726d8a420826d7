"""llama_cpp, imported once and quietened: the one door to llama.cpp that every other module here uses.

Kept apart (and free of imports from this package) so that the modules over llama.cpp import in one
direction: loader, then devices, then rpc, then backend.
"""

from __future__ import annotations

import ctypes
import os
import threading
from types import ModuleType

_init_lock = threading.Lock()
_log_callback = None  # must outlive every llama.cpp call


def load_llama() -> ModuleType:
    """Import llama_cpp once, with llama.cpp's own logging silenced.

    llama.cpp writes hundreds of lines to stderr on load; our users get one
    clear line on error instead.  SPECGEN_LLAMA_LOG=1 turns it back on.
    """
    global _log_callback
    import llama_cpp  # here, not at the top: a command that never runs a model skips its import

    with _init_lock:
        if _log_callback is None:
            _log_callback = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
            if not os.environ.get("SPECGEN_LLAMA_LOG"):
                llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
    return llama_cpp
