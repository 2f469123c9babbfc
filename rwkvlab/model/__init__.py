"""Whole RWKV-4 (x040), RWKV-6 (x060) and RWKV-7 (x070) language models, as in the official RWKV-LM code.

>>> model = rwkvlab.model.load("rwkv7-g1-0.1b.pth")          # doctest: +SKIP
>>> logits, state = model(idx)                               # parallel mode, idx [B, T]
>>> logits, state = model.step(token, state)                 # RNN mode, token [B]

The attention cores are :mod:`rwkvlab.wkv6` and :mod:`rwkvlab.wkv7` (``model.impl`` or the
``impl=`` argument picks ``naive``, ``chunked`` or a Triton kernel); the RWKV-7 block pieces
are :mod:`rwkvlab.rwkv7_ops`. Parameter names are RWKV-LM's, so ``model.state_dict()`` is an
official checkpoint and :func:`load` reads BlinkDL's released RWKV-6 and RWKV-7 ``.pth`` files.
:class:`RWKV4` is the small randomly initialised model of chapter 04, its block pieces (token
shift, time and channel mixing) those of :mod:`rwkvlab.rwkv4` and its core :mod:`rwkvlab.wkv4`.
"""
from .common import LanguageModel, LayerState, sample, state_detach, state_nbytes  # noqa: F401
from .io import build, config_from_state_dict, detect, load, save  # noqa: F401
from .x040 import RWKV4  # noqa: F401
from .x060 import RWKV6  # noqa: F401
from .x060 import Config as Config6  # noqa: F401
from .x070 import RWKV7  # noqa: F401
from .x070 import Config as Config7  # noqa: F401

__all__ = ["load", "save", "build", "detect", "config_from_state_dict", "RWKV4", "RWKV6", "RWKV7", "Config6", "Config7",
           "LayerState", "LanguageModel", "sample", "state_nbytes", "state_detach"]
