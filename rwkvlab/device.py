"""The device switch: compiled Triton on a CUDA GPU, the Triton interpreter on CPU otherwise.

Importing :mod:`rwkvlab` calls :func:`select` before any kernel is decorated with
``@triton.jit``; the interpreter is chosen when ``TRITON_INTERPRET=1`` is in the environment at
that moment, so the choice has to be made here, first. A reader never sets a variable by hand.

Set ``RWKVLAB_DEVICE=cpu`` to force the interpreter on a GPU machine (useful to compare the two).
"""
from __future__ import annotations

import os

_MODE: str | None = None


def _cuda_usable() -> bool:
    if os.environ.get("RWKVLAB_DEVICE", "").lower() == "cpu":
        return False
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return False
    return torch.cuda.is_available()


def select() -> str:
    """Choose the mode once per process and return it: ``"gpu"`` or ``"interpreter"``."""
    global _MODE
    if _MODE is None:
        if _cuda_usable():
            _MODE = "gpu"
        else:
            os.environ["TRITON_INTERPRET"] = "1"
            _MODE = "interpreter"
    return _MODE


def has_gpu() -> bool:
    """True when the Triton kernels compile and run on a CUDA GPU."""
    return select() == "gpu"


def interpreting() -> bool:
    """True when the Triton kernels run in the interpreter, on CPU tensors."""
    return select() == "interpreter"


def device():
    """The torch device the book's tensors live on: ``cuda`` with a GPU, else ``cpu``."""
    import torch

    return torch.device("cuda" if has_gpu() else "cpu")


def describe() -> str:
    """One line saying where the kernels run; every chapter prints it first."""
    import torch
    import triton

    if has_gpu():
        name = torch.cuda.get_device_name(0)
        return f"rwkvlab: compiled Triton {triton.__version__} on {name} (torch {torch.__version__})"
    return (f"rwkvlab: Triton {triton.__version__} interpreter on CPU (torch {torch.__version__}); "
            "shapes are kept small")


def pick(cpu, gpu):
    """``gpu`` with a GPU, else ``cpu``: lets a cell use larger sizes where they are cheap."""
    return gpu if has_gpu() else cpu
