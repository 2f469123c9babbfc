"""Reading and writing official RWKV-LM checkpoints (``.pth`` state dicts).

``load`` tells x060 from x070 by the keys only a version has (``att.time_faaaa`` — the RWKV-6
bonus u — versus ``att.r_k``, RWKV-7's ρ), reads every size from the shapes, builds the model
on the ``meta`` device (no memory, no initialisation), compares the checkpoint with the
model's own key list, and then hands the tensors over. A missing, unexpected or mis-shaped
key is an error that names the key and the shape the model expected.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from .. import validate
from . import x060, x070
from .common import resolve_core

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def _need(sd: dict, key: str, ndim: int | None = None) -> torch.Tensor:
    if key not in sd:
        raise ValueError(f"checkpoint: missing key {key!r}, needed to read the model's sizes")
    t = sd[key]
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"checkpoint: {key!r} is a {type(t).__name__}, expected a tensor")
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"checkpoint: {key!r} has shape {tuple(t.shape)}, expected a {ndim}-d tensor")
    return t


def detect(sd: dict) -> str:
    """``"x070"`` or ``"x060"`` from the keys of a state dict."""
    if "blocks.0.att.r_k" in sd:
        return "x070"
    if "blocks.0.att.time_faaaa" in sd:
        return "x060"
    raise ValueError("checkpoint: neither an RWKV-7 (x070: blocks.0.att.r_k) nor an RWKV-6 "
                     "(x060: blocks.0.att.time_faaaa) state dict")


def config_from_state_dict(sd: dict):
    """The version's ``Config``, every size read from a tensor shape."""
    version = detect(sd)
    V, C = _need(sd, "emb.weight", 2).shape
    layers = {int(m.group(1)) for k in sd for m in [_BLOCK.match(k)] if m}
    n_layer = max(layers) + 1
    F = _need(sd, "blocks.0.ffn.key.weight", 2).shape[0]
    if version == "x070":
        H, N = _need(sd, "blocks.0.att.r_k", 2).shape
        return x070.Config(vocab_size=V, n_embd=C, n_layer=n_layer, head_size=N, dim_ffn=F,
                           d_decay=_need(sd, "blocks.0.att.w1", 2).shape[1],
                           d_aaa=_need(sd, "blocks.0.att.a1", 2).shape[1],
                           d_mv=_need(sd, f"blocks.{min(1, n_layer - 1)}.att.v1", 2).shape[1],
                           d_gate=_need(sd, "blocks.0.att.g1", 2).shape[1])
    H, N = _need(sd, "blocks.0.att.time_faaaa", 2).shape
    return x060.Config(vocab_size=V, n_embd=C, n_layer=n_layer, head_size=N, dim_ffn=F,
                       d_mix=_need(sd, "blocks.0.att.time_maa_w1", 2).shape[1] // 5,
                       d_decay=_need(sd, "blocks.0.att.time_decay_w1", 2).shape[1])


def build(cfg, device="cpu"):
    """An uninitialised model for ``cfg`` (call ``init_weights`` or load a state dict into it)."""
    cls = x070.RWKV7 if isinstance(cfg, x070.Config) else x060.RWKV6
    with torch.device(device):
        return cls(cfg)


# RWKV-LM creates block 0's value-residual LoRA although block 0 never uses it; some exporters drop it
_OPTIONAL = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")


_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _read(path_or_state_dict) -> dict:
    """The state dict behind a path or a dict; every failure is a ValueError that names the
    argument (a path) or the key (a value)."""
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        path = Path(path_or_state_dict)
        if not path.is_file():
            raise ValueError(f"path_or_state_dict: no checkpoint file at {str(path)!r}")
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001  (torch raises UnpicklingError, EOFError, RuntimeError, OSError, ...)
            why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise ValueError(f"path_or_state_dict: {str(path)!r} is not a readable PyTorch state dict "
                             f"(a .pth of tensors saved with torch.save): {type(e).__name__}: {why}") from None
        if not isinstance(sd, dict):
            raise ValueError(f"path_or_state_dict: {str(path)!r} holds a {type(sd).__name__}, expected a state dict "
                             "(a dict of tensors)")
    elif isinstance(path_or_state_dict, dict):
        sd = path_or_state_dict
    else:
        raise ValueError(f"path_or_state_dict: expected a path or a state dict, got {type(path_or_state_dict).__name__}")
    for k, t in sd.items():
        if not isinstance(k, str):
            raise ValueError(f"checkpoint: key {k!r} is a {type(k).__name__}, expected a str (a parameter name)")
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"checkpoint: {k!r} is a {type(t).__name__}, expected a tensor")
        if not t.is_floating_point():
            raise ValueError(f"checkpoint: {k!r} has dtype {t.dtype}, expected a floating-point tensor")
        validate.has_data(f"checkpoint: {k!r}", t)
        if not torch.isfinite(t).all():
            raise ValueError(f"checkpoint: {k!r} contains NaN or Inf (a diverged or corrupt checkpoint)")
    return sd


def _target(dtype, device) -> torch.device:
    """Check ``dtype`` (a float dtype) and ``device`` (one torch can allocate on) before any work."""
    if dtype not in _DTYPES:
        names = ", ".join(str(d).replace("torch.", "") for d in _DTYPES)
        raise ValueError(f"dtype: expected one of {names}, got {dtype!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"device: not a device, {device!r} ({e})") from None
    if dev.type == "meta":
        raise ValueError("device: meta holds no values; expected cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} asked for, but this machine has no CUDA GPU (torch.cuda.is_available() "
                         "is False); use 'cpu' or rwkvlab.device.device()")
    try:
        torch.empty(0, device=dev)
    except Exception as e:  # noqa: BLE001  (a device index out of range, a backend not built in)
        raise ValueError(f"device: cannot place tensors on {device!r}: {type(e).__name__}: {e}") from None
    return dev


def load(path_or_state_dict, dtype: torch.dtype = torch.float32, device="cpu", impl: str | None = None):
    """Build an x060 or x070 model from an official checkpoint (a path or a state dict).

    Weights are converted to ``dtype`` (float32 by default: the book compares in float32)
    and put on ``device`` (CPU by default; pass ``rwkvlab.device.device()`` for the GPU).
    ``impl`` fixes the WKV core of parallel mode (default: chosen from the input's device,
    ``chunked`` for CPU tensors, the chunked Triton kernel for CUDA tensors).
    Anything wrong — a file that is not a state dict, a value that is not a finite float
    tensor, a missing or mis-shaped key, a bad ``dtype``, ``device`` or ``impl`` — is a
    ``ValueError`` naming the argument or the key.
    """
    dev = _target(dtype, device)
    sd = _read(path_or_state_dict)
    cfg = config_from_state_dict(sd)
    model = build(cfg, device="meta")
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in want if k not in sd and k not in _OPTIONAL]
    if missing:
        raise ValueError(f"checkpoint: missing key {missing[0]!r} (expected shape {want[missing[0]]})"
                         + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    unexpected = [k for k in sd if k not in want]
    if unexpected:
        raise ValueError(f"checkpoint: unexpected key {unexpected[0]!r} for an {cfg.__module__.rsplit('.', 1)[-1]} "
                         f"model with {cfg.n_layer} blocks" + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    for k, shape in want.items():
        if k in sd and tuple(sd[k].shape) != shape:
            raise ValueError(f"checkpoint: key {k!r} has shape {tuple(sd[k].shape)}, expected {shape}")
    tensors = {k: sd[k].to(device=dev, dtype=dtype) if k in sd else torch.zeros(want[k], device=dev, dtype=dtype)
               for k in want}
    model.load_state_dict(tensors, assign=True)
    model.cfg = cfg
    if impl is not None:
        resolve_core(model.wkv_module, impl)           # an unknown name fails here, not at the first call
        model.impl = impl
    return model


def save(model, path) -> None:
    """Write ``model``'s parameters under the official RWKV-LM names (a plain state dict)."""
    from .common import LanguageModel

    if not isinstance(model, LanguageModel):
        raise ValueError(f"model: expected an rwkvlab RWKV6/RWKV7 model, got {type(model).__name__}")
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, Path(path))
