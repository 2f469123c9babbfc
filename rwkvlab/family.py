"""The delta-rule family as calls into RWKV-7's kernel: one mapping per model.

``rwkvlab.wkv7`` computes, per head, with the state ``S`` in K×V layout (rows are key channels)::

    S_t = diag(e^{w_t}) S_{t-1} + b_t (a_tᵀ S_{t-1}) + k_t v_tᵀ,      o_t = scale · S_tᵀ r_t
        = G_t S_{t-1} + k_t v_tᵀ,        G_t = diag(e^{w_t}) + b_t a_tᵀ        (diagonal plus rank one)

Each function below takes a model's own parameters, in FLA's layout (``[B, T, H, K]`` keys,
``[B, T, H, V]`` values, per-head scalars ``[B, T, H]``, gates as *log* decays ≤ 0), and returns
the ``wkv7`` arguments ``dict(r=, w=, k=, v=, a=, b=)`` that make the kernel compute that model.
:func:`run` hands them to any rung of the ladder (``naive``, ``chunked``, ``triton_recurrent``,
``triton_chunked``). Nothing here evolves a state: the kernels do.

Beside each mapping sits a plain loop written from the model's paper, in the paper's own
orientation (``reference_*``), so that the mapping can be checked against something it did not
produce. The loops are slow and exist only to check.

The papers (the book's references appendix lists them):

* DeltaNet, Yang et al. 2024, arXiv 2406.06484:        S_t = S_{t-1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ  (V×K)
* Gated DeltaNet, Yang, Kautz, Hatamizadeh, arXiv 2412.06464: S_t = S_{t-1} α_t(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ
* Kimi Delta Attention (Kimi Linear, arXiv 2510.26692): S_t = (I − β_t k_t k_tᵀ) Diag(α_t) S_{t-1} + β_t k_t v_tᵀ  (K×V)
* DeltaProduct, Siems et al. 2025, arXiv 2502.10297: n_h DeltaNet steps per token, the output read after the last.
"""
from __future__ import annotations

import torch

from . import validate, wkv7

__all__ = [
    "linear_attention", "gla", "deltanet", "gated_deltanet", "kda", "deltaproduct", "rwkv7",
    "last_substep", "run", "transitions", "IMPLS",
    "reference_gla", "reference_deltanet", "reference_gated_deltanet", "reference_kda", "reference_deltaproduct",
    "random_inputs", "DECAYS",
]

IMPLS = ("naive", "chunked", "triton_recurrent", "triton_chunked")


# ---------------------------------------------------------------------------------------------
# input checks shared by the mappings
# ---------------------------------------------------------------------------------------------

def _qkv(q, k, v):
    validate.tensor("q", q, ndim=4)
    validate.tensor("k", k, ndim=4)
    validate.tensor("v", v, ndim=4)
    validate.same_shape("k", k, tuple(q.shape), "q")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v: expected shape (B, T, H, V) with (B, T, H) = {tuple(q.shape[:3])} from q, "
                         f"got {tuple(v.shape)}")


def _per_head(name, x, q):
    validate.tensor(name, x, ndim=3)
    validate.same_shape(name, x, tuple(q.shape[:3]), "q's (B, T, H)")


def _log_gate(name, g, shape, what):
    validate.tensor(name, g, ndim=len(shape))
    validate.same_shape(name, g, shape, what)
    if (g > 0).any():
        raise ValueError(f"{name}: is a log decay (log α) and must be <= 0")


# ---------------------------------------------------------------------------------------------
# the mappings: model parameters -> wkv7 arguments
# ---------------------------------------------------------------------------------------------

def linear_attention(q, k, v):
    """Linear attention (no decay, no removal): ``S_t = S_{t-1} + k_t v_tᵀ``, ``o_t = S_tᵀ q_t``.

    q, k: [B, T, H, K]; v: [B, T, H, V]. Returns the wkv7 arguments: ``w = a = b = 0``.
    """
    _qkv(q, k, v)
    zeros = torch.zeros_like(k)
    return dict(r=q, w=zeros, k=k, v=v, a=zeros, b=zeros.clone())


def gla(q, k, v, g):
    """A diagonal gate (GLA, RWKV-6's state update without its bonus): ``S_t = diag(e^{g_t}) S_{t-1} + k_t v_tᵀ``.

    q, k, g: [B, T, H, K] (g the log decay ≤ 0); v: [B, T, H, V]. Returns ``w = g, a = b = 0``.
    The read-out sees the updated state (GLA's convention; RWKV-6 reads before the write and adds
    its bonus ``u``, chapter 5).
    """
    _qkv(q, k, v)
    _log_gate("g", g, tuple(k.shape), "k")
    zeros = torch.zeros_like(k)
    return dict(r=q, w=g, k=k, v=v, a=zeros, b=zeros.clone())


def deltanet(q, k, v, beta):
    """DeltaNet (arXiv 2406.06484) as wkv7 arguments.

    q, k: [B, T, H, K] (the paper L2-normalises k; the mapping does not, it is exact either way);
    v: [B, T, H, V]; beta: [B, T, H] (the write strength β_t, in (0, 1) in the paper).

    The paper's ``S_t = S_{t-1}(I − β k kᵀ) + β v kᵀ`` (V×K, ``o = S q``) is, transposed to K×V,
    ``S_t = (I − β k kᵀ) S_{t-1} + β k vᵀ`` = ``S − (β k)(kᵀ S) + (β k) vᵀ``, so

        w = 0,   a = −k,   b = β k,   k_wkv7 = β k,   r = q.
    """
    _qkv(q, k, v)
    _per_head("beta", beta, q)
    bk = beta.unsqueeze(-1) * k
    return dict(r=q, w=torch.zeros_like(k), k=bk, v=v, a=-k, b=bk.clone())


def gated_deltanet(q, k, v, beta, g):
    """Gated DeltaNet (arXiv 2412.06464) as wkv7 arguments.

    q, k: [B, T, H, K]; v: [B, T, H, V]; beta: [B, T, H]; g: [B, T, H], the log of the scalar gate
    α_t ∈ (0, 1] (one number per head and token, ≤ 0).

    ``S_t = α_t (I − β k kᵀ) S_{t-1} + β k vᵀ`` (K×V) = ``diag(α) S − (α β k)(kᵀ S) + (β k) vᵀ``. The
    gate multiplies the removal term too, and wkv7 reads its removal ``aᵀS`` from the undecayed
    state, so the gate goes into b:

        w = g (broadcast over K),   a = −k,   b = α β k,   k_wkv7 = β k,   r = q.
    """
    _qkv(q, k, v)
    _per_head("beta", beta, q)
    _log_gate("g", g, tuple(q.shape[:3]), "q's (B, T, H)")
    bk = beta.unsqueeze(-1) * k
    return dict(r=q, w=g.unsqueeze(-1).expand_as(k).contiguous(), k=bk, v=v, a=-k,
                b=g.exp().unsqueeze(-1) * bk)


def kda(q, k, v, beta, g):
    """Kimi Delta Attention (Kimi Linear, arXiv 2510.26692) as wkv7 arguments.

    q, k, g: [B, T, H, K] (g = log α_t, one gate per key channel, ≤ 0); v: [B, T, H, V];
    beta: [B, T, H].

    ``S_t = (I − β k kᵀ) Diag(α) S_{t-1} + β k vᵀ`` = ``Diag(α) S − (β k)((α ⊙ k)ᵀ S) + (β k) vᵀ``:

        w = g,   a = −α ⊙ k,   b = β k,   k_wkv7 = β k,   r = q.

    A *constrained* DPLR: a, b and the written key all lie along the same k (up to the gate),
    where RWKV-7 leaves b and the written key free.
    """
    _qkv(q, k, v)
    _per_head("beta", beta, q)
    _log_gate("g", g, tuple(k.shape), "k")
    bk = beta.unsqueeze(-1) * k
    return dict(r=q, w=g, k=bk, v=v, a=-(g.exp() * k), b=bk.clone())


def deltaproduct(q, k, v, beta):
    """DeltaProduct (arXiv 2502.10297) as wkv7 arguments: ``n_h`` sub-steps per token.

    q: [B, T, H, K]; k: [B, T, H, n_h, K]; v: [B, T, H, n_h, V]; beta: [B, T, H, n_h] (in [0, 2]
    in the paper, so that each factor can reach the eigenvalue −1).

    Token t becomes ``n_h`` consecutive wkv7 tokens, sub-step j a DeltaNet step with ``k_{t,j}``,
    ``v_{t,j}``, ``β_{t,j}``; the transition of the token is the product
    ``(I − β_{t,n} k_{t,n} k_{t,n}ᵀ) ⋯ (I − β_{t,1} k_{t,1} k_{t,1}ᵀ)``. Returns wkv7 arguments with
    ``T · n_h`` time steps (r = q_t at every sub-step); take the outputs with :func:`last_substep`.
    """
    validate.tensor("q", q, ndim=4)
    validate.tensor("k", k, ndim=5)
    validate.tensor("v", v, ndim=5)
    validate.tensor("beta", beta, ndim=4)
    B, T, H, K = q.shape
    n_h = k.shape[3]
    validate.same_shape("k", k, (B, T, H, n_h, K), "(B, T, H, n_h, K) from q")
    if v.shape[:4] != (B, T, H, n_h):
        raise ValueError(f"v: expected shape (B, T, H, n_h, V) with (B, T, H, n_h) = {(B, T, H, n_h)}, "
                         f"got {tuple(v.shape)}")
    validate.same_shape("beta", beta, (B, T, H, n_h), "(B, T, H, n_h) from k")

    def flat(x):                          # [B, T, H, n_h, D] -> [B, T·n_h, H, D], sub-steps in order
        return x.transpose(2, 3).reshape(B, T * n_h, H, x.shape[-1])

    bk = beta.unsqueeze(-1) * k
    r = q.unsqueeze(3).expand(B, T, H, n_h, K)
    return dict(r=flat(r), w=flat(torch.zeros_like(k)), k=flat(bk), v=flat(v), a=flat(-k), b=flat(bk))


def rwkv7(r, w, k, v, kk, iclr):
    """RWKV-7 itself, as its models call the kernel: ``a = −κ̂``, ``b = κ̂ ⊙ iclr``.

    r, w, k, kk, iclr: [B, T, H, K] (w the log decay, k the replacement key k̃, kk the unit removal
    key κ̂, iclr the in-context learning rate, in (0, 1) in the released models); v: [B, T, H, V].
    """
    _qkv(r, k, v)
    for name, x in (("w", w), ("kk", kk), ("iclr", iclr)):
        validate.tensor(name, x, ndim=4)
        validate.same_shape(name, x, tuple(k.shape), "k")
    return dict(r=r, w=w, k=k, v=v, a=-kk, b=kk * iclr)


def last_substep(o, n_h: int):
    """Outputs of :func:`deltaproduct`'s expanded run at each token's last sub-step: [B, T·n_h, ...] -> [B, T, ...]."""
    validate.tensor("o", o)
    n_h = validate.positive_int("n_h", n_h)
    if o.ndim < 2 or o.shape[1] % n_h:
        raise ValueError(f"o: expected a time axis (dim 1) that is a multiple of n_h = {n_h}, got {tuple(o.shape)}")
    return o[:, n_h - 1::n_h]


def run(args: dict, impl: str = "naive", **kwargs):
    """``wkv7.<impl>(**args, **kwargs)``: one of :data:`IMPLS`; returns ``(o, final_state | None)``."""
    if impl not in IMPLS:
        raise ValueError(f"impl: expected one of {IMPLS}, got {impl!r}")
    missing = [n for n in ("r", "w", "k", "v", "a", "b") if n not in args]
    if missing:
        raise ValueError(f"args: missing wkv7 arguments {missing}")
    fn = getattr(wkv7, impl)
    return fn(args["r"], args["w"], args["k"], args["v"], args["a"], args["b"], **kwargs)


def transitions(args: dict, n_h: int = 1) -> torch.Tensor:
    """The transition matrices ``G_t = diag(e^{w_t}) + b_t a_tᵀ`` of a set of wkv7 arguments.

    Returns [B, T // n_h, H, K, K]; with ``n_h > 1`` (a :func:`deltaproduct` run) each token's
    sub-step matrices are multiplied, the latest on the left: ``G_{t,n} ⋯ G_{t,1}``.
    """
    n_h = validate.positive_int("n_h", n_h)
    w, a, b = args["w"], args["a"], args["b"]
    G = torch.diag_embed(w.exp()) + b.unsqueeze(-1) * a.unsqueeze(-2)       # [B, T, H, K, K]
    if G.shape[1] % n_h:
        raise ValueError(f"args: the time axis ({G.shape[1]}) is not a multiple of n_h = {n_h}")
    B, T, H, K, _ = G.shape
    G = G.reshape(B, T // n_h, n_h, H, K, K)
    out = G[:, :, 0]
    for j in range(1, n_h):
        out = G[:, :, j] @ out
    return out


# ---------------------------------------------------------------------------------------------
# the papers' own recurrences, as plain loops (independent references for the checks)
# ---------------------------------------------------------------------------------------------

def reference_gla(q, k, v, g, scale=1.0, initial_state=None):
    """A diagonal gate as GLA writes it (arXiv 2312.06635, Eq. 3; row vectors, K×V state):

        S_t = Diag(α_t) S_{t-1} + k_tᵀ v_t,     o_t = scale · q_t S_t,   α_t = e^{g_t}.
    """
    B, T, H, K = q.shape
    S = (torch.zeros(B, H, K, v.shape[-1], dtype=q.dtype) if initial_state is None
         else initial_state.to(q.dtype).clone())
    out = []
    for t in range(T):
        S = g[:, t].exp().unsqueeze(-1) * S + k[:, t].unsqueeze(-1) * v[:, t].unsqueeze(-2)
        out.append(scale * (q[:, t].unsqueeze(-2) @ S).squeeze(-2))
    return torch.stack(out, 1), S


def reference_deltanet(q, k, v, beta, scale=1.0, initial_state=None):
    """DeltaNet exactly as its paper writes it: state ``S ∈ R^{V×K}``, column vectors,

        S_t = S_{t-1} (I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ,     o_t = scale · S_t q_t.

    Shapes as :func:`deltanet`; ``initial_state`` [B, H, K, V] in the book's layout (transposed
    here). Returns ``(o [B, T, H, V], S_T [B, H, K, V])``.
    """
    B, T, H, K = q.shape
    return reference_gated_deltanet(q, k, v, beta, torch.zeros(B, T, H, dtype=q.dtype), scale, initial_state)


def reference_gated_deltanet(q, k, v, beta, g, scale=1.0, initial_state=None):
    """Gated DeltaNet as its paper writes it (V×K state, column vectors):

        S_t = S_{t-1} (α_t (I − β_t k_t k_tᵀ)) + β_t v_t k_tᵀ,     o_t = scale · S_t q_t,   α_t = e^{g_t}.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    eye = torch.eye(K, dtype=q.dtype)
    S = (torch.zeros(B, H, V, K, dtype=q.dtype) if initial_state is None
         else initial_state.to(q.dtype).transpose(-1, -2).clone())
    out = []
    for t in range(T):
        kt, vt, qt = k[:, t], v[:, t], q[:, t]                        # [B, H, K], [B, H, V]
        bt, at = beta[:, t, :, None, None], g[:, t, :, None, None].exp()
        M = at * (eye - bt * kt.unsqueeze(-1) * kt.unsqueeze(-2))     # α (I − β k kᵀ): [B, H, K, K]
        S = S @ M + bt * vt.unsqueeze(-1) * kt.unsqueeze(-2)          # ... + β v kᵀ
        out.append(scale * (S @ qt.unsqueeze(-1)).squeeze(-1))
    return torch.stack(out, 1), S.transpose(-1, -2)


def reference_kda(q, k, v, beta, g, scale=1.0, initial_state=None):
    """Kimi Delta Attention as its paper writes it (K×V state):

        S_t = (I − β_t k_t k_tᵀ) Diag(α_t) S_{t-1} + β_t k_t v_tᵀ,     o_t = scale · S_tᵀ q_t,   α_t = e^{g_t}.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    eye = torch.eye(K, dtype=q.dtype)
    S = torch.zeros(B, H, K, V, dtype=q.dtype) if initial_state is None else initial_state.to(q.dtype).clone()
    out = []
    for t in range(T):
        kt, vt, qt, bt = k[:, t], v[:, t], q[:, t], beta[:, t, :, None, None]
        P = eye - bt * kt.unsqueeze(-1) * kt.unsqueeze(-2)            # I − β k kᵀ
        S = P @ torch.diag_embed(g[:, t].exp()) @ S + bt * kt.unsqueeze(-1) * vt.unsqueeze(-2)
        out.append(scale * (S.transpose(-1, -2) @ qt.unsqueeze(-1)).squeeze(-1))
    return torch.stack(out, 1), S


def reference_deltaproduct(q, k, v, beta, scale=1.0, initial_state=None):
    """DeltaProduct as its paper writes it (V×K state): per token t, from ``H_{t,0} = H_{t-1}``,

        H_{t,j} = H_{t,j-1} (I − β_{t,j} k_{t,j} k_{t,j}ᵀ) + β_{t,j} v_{t,j} k_{t,j}ᵀ,   j = 1 … n_h,
        H_t = H_{t,n_h},     o_t = scale · H_t q_t.

    Shapes as :func:`deltaproduct`.
    """
    B, T, H, n_h, K = k.shape
    V = v.shape[-1]
    eye = torch.eye(K, dtype=q.dtype)
    S = (torch.zeros(B, H, V, K, dtype=q.dtype) if initial_state is None
         else initial_state.to(q.dtype).transpose(-1, -2).clone())
    out = []
    for t in range(T):
        for j in range(n_h):
            kj, vj, bj = k[:, t, :, j], v[:, t, :, j], beta[:, t, :, j, None, None]
            S = S @ (eye - bj * kj.unsqueeze(-1) * kj.unsqueeze(-2)) + bj * vj.unsqueeze(-1) * kj.unsqueeze(-2)
        out.append(scale * (S @ q[:, t].unsqueeze(-1)).squeeze(-1))
    return torch.stack(out, 1), S.transpose(-1, -2)


# ---------------------------------------------------------------------------------------------
# seeded inputs for the checks
# ---------------------------------------------------------------------------------------------

#: log-gate ranges: "slow" keeps α_t = e^{g_t} in (e^{-0.05}, 1], "fast" in (e^{-5}, e^{-1}],
#: "wide" anywhere in (e^{-5}, 1]
DECAYS = {"slow": (0.0, 0.05), "fast": (1.0, 5.0), "wide": (0.0, 5.0)}


def random_inputs(B, T, H, K, V, n_h=2, decay="slow", beta_max=1.0, seed=0, dtype=torch.float64):
    """Seeded inputs for every mapping of this module, as a dict.

    ``q`` [B, T, H, K]; ``k`` the same, L2-normalised (as the papers do); ``v`` [B, T, H, V];
    ``beta`` [B, T, H] uniform in (0, beta_max); ``g`` [B, T, H] and ``gk`` [B, T, H, K] log gates,
    ``−g`` uniform in the :data:`DECAYS` range named by ``decay``; for DeltaProduct ``kp``
    [B, T, H, n_h, K] (unit), ``vp`` [B, T, H, n_h, V], ``bp`` [B, T, H, n_h] in (0, beta_max);
    ``S0`` [B, H, K, V] an initial state.
    """
    if decay not in DECAYS:
        raise ValueError(f"decay: expected one of {tuple(DECAYS)}, got {decay!r}")
    lo, hi = DECAYS[decay]
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    def rand(*shape):
        return torch.rand(*shape, generator=gen, dtype=dtype)

    unit = lambda x: x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)  # noqa: E731
    return dict(q=randn(B, T, H, K), k=unit(randn(B, T, H, K)), v=randn(B, T, H, V),
                beta=beta_max * rand(B, T, H), g=-(lo + (hi - lo) * rand(B, T, H)),
                gk=-(lo + (hi - lo) * rand(B, T, H, K)),
                kp=unit(randn(B, T, H, n_h, K)), vp=randn(B, T, H, n_h, V), bp=beta_max * rand(B, T, H, n_h),
                S0=randn(B, H, K, V))
