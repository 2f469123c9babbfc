"""rwkvlab: the package behind the executable textbook on RWKV attention.

One module per mechanism (``attention``, ``aft``, ``wkv4``, ``wkv6``, ``wkv7``; ``delta``, ``rwkv4``,
``rwkv7_ops`` and ``model`` build on them), each with the
same ladder of implementations: ``naive`` (a loop), ``chunked``/``parallel`` (plain torch) and
Triton kernels (``triton_*``). ``rwkvlab.check`` compares rungs of the ladder;
``rwkvlab.randn`` draws the seeded inputs the chapters use.
"""
from . import device as device  # noqa: F401  (must run before any kernel module is imported)

device.select()

from .checking import check, randn, rel_err  # noqa: E402,F401

__all__ = ["device", "check", "randn", "rel_err"]
__version__ = "0.1.0"
