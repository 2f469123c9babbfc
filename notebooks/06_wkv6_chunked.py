# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     notebook_metadata_filter: -jupytext.text_representation
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The chunked form of RWKV-6 and its numerics
#
# Chapter 5 ran RWKV-6 one token at a time: `T` sequential steps, each a handful of
# `K × V` elementwise operations. A GPU is idle on such work; it wants large matrix products.
# This chapter rewrites the same operator so that almost all of it is matrix products, and
# only `T / C` steps remain sequential — the **chunked** (chunkwise-parallel) form in which FLA's
# kernels train RWKV-6 (RWKV-LM's official CUDA kernel instead loops over time, parallel only
# over batch, heads and channels). Then it faces the one place where the rewrite can go
# numerically wrong.
#
# By the end of this chapter you will be able to
#
# 1. derive the chunked form in matrix notation, as four pieces: the inter-chunk read-out, the
#    intra-chunk masked attention, the bonus diagonal, and the state hand-off;
# 2. read `rwkvlab.wkv6.chunked` and check it against `naive` — forward, final state and
#    gradients — for any `T` and any chunk size;
# 3. explain why the textbook factorisation through "`K` divided by the cumulative decay"
#    overflows in float32, predict exactly when, and use a formulation that never does;
# 4. factor the decay at *sub-chunk* boundaries instead, so that the intra-chunk part is matrix
#    products again, with every exponent `≤ 0` and formed over its own interval — exact under any
#    decay — and measure what that buys against the loop on this machine;
# 5. count the work as a function of the chunk size `C` and say what a good `C` is.
#
# The idea in one picture: the `T × T` matrix `A` of chapter 5 (`o = A v`), cut into
# `C × C` blocks. Blocks on the diagonal are computed directly, as small masked attention
# matrices. Every block *below* the diagonal never exists: its effect reaches the chunk through
# a `K × V` state, handed from chunk to chunk.

# %%
import rwkvlab

print(rwkvlab.device.describe())

# %%
import inspect
import math
import time

import matplotlib.pyplot as plt
import torch
from torch.utils.flop_counter import FlopCounterMode

from rwkvlab import wkv6
from rwkvlab.wkv6 import reference

torch.set_printoptions(precision=4, sci_mode=False)


inputs = wkv6.random_inputs   # seeded r, k, v, w ≤ 0, u in the book's layout (printed below)
print(inspect.getsource(wkv6.random_inputs))


# %% [markdown]
# ## 1. The chunk decomposition
#
# Take one head of 32 tokens and cut it into chunks of `C = 8`. Below, on the left, the
# magnitude of its attention matrix `A` (from `wkv6.attention_matrix`, chapter 5) with the chunk
# grid drawn over it; on the right, which of the four pieces derived in section 2 computes each
# entry.

# %%
T, C, K = 32, 8, 8
r, k, v, w, u = inputs(1, T, 1, K, K, seed=1, decay=0.15)
A = wkv6.attention_matrix(r, k, w, u)[0, 0]

i_idx, j_idx = torch.meshgrid(torch.arange(T), torch.arange(T), indexing="ij")
piece = torch.zeros(T, T)                                             # 0: above the diagonal, never needed
piece[(i_idx // C > j_idx // C)] = 1                                  # earlier chunk: through the state
piece[(i_idx // C == j_idx // C) & (j_idx < i_idx)] = 2               # same chunk, strictly earlier: intra
piece[i_idx == j_idx] = 3                                             # the token itself: bonus diagonal
assert torch.all(A[piece == 0] == 0)        # everything above the diagonal is zero: causality
assert (piece == 1).sum() == T * (T - C) // 2 and (piece == 2).sum() == T * (C - 1) // 2   # counted below

fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
axes[0].imshow(A.abs().log1p().numpy(), cmap="magma")
axes[0].set_title("|A| (log scale) with the chunk grid, C = 8")
cmap = plt.matplotlib.colors.ListedColormap(["white", "#9ecae1", "#fdae6b", "#d62728"])
axes[1].imshow(piece.numpy(), cmap=cmap, vmin=0, vmax=3)
axes[1].set_title("blue: inter-chunk (state)  orange: intra  red: bonus")
for ax in axes:
    for b in range(0, T + 1, C):
        ax.axhline(b - 0.5, color="gray", lw=0.8)
        ax.axvline(b - 0.5, color="gray", lw=0.8)
    ax.set_xlabel("key position j"); ax.set_ylabel("query position t")
plt.tight_layout()
plt.show()

# %% [markdown]
# The blue region holds `T²/2 − TC/2` entries and is never formed: for each chunk it is replaced
# by one `C × K` by `K × V` product with the state. The orange triangles hold `T(C−1)/2` entries,
# computed as `T / C` small dense matrices. As `C` grows, work moves from the first kind to the
# second; section 8 counts it.
#
# ## 2. Derivation in matrix form
#
# Fix one head and one chunk, and number its tokens `i = 0 … C−1`. Let `S` be the state when
# the chunk starts (after the previous chunk's last token), and define the **inclusive
# cumulative log decay inside the chunk**
#
# $$
# c_i = \sum_{m=0}^{i} w_m \in \mathbb R^K, \qquad c_i \le 0 ,\; c_i \text{ non-increasing in } i .
# $$
#
# *State before token `i`.* Unroll the recurrence from the chunk start. Token `j < i` wrote
# `k_j v_jᵀ`, which was then decayed by the tokens `j+1, …, i−1`, i.e. by `e^{c_{i−1} − c_j}`;
# the chunk-start state was decayed by tokens `0, …, i−1`, i.e. by `e^{c_{i−1}}`. With
# `c_{i−1} = c_i − w_i` (which also covers `i = 0`, where `c_{−1} = 0`):
#
# $$
# S_{i-1} = \operatorname{diag}(e^{c_i - w_i})\,S + \sum_{j<i} \operatorname{diag}(e^{c_i - w_i - c_j})\,k_j v_j^\top .
# $$
#
# *Output.* Substitute into `o_i = r_iᵀ(S_{i−1} + diag(u) k_i v_iᵀ)`. Three pieces appear:
#
# $$
# o_i = \underbrace{(r_i \odot e^{c_i - w_i})^\top S}_{\text{(1) inter-chunk}}
#     + \underbrace{\sum_{j<i} \Big(\sum_\kappa r_{i\kappa}\, k_{j\kappa}\, e^{c_{i\kappa} - w_{i\kappa} - c_{j\kappa}}\Big) v_j^\top}_{\text{(2) intra-chunk}}
#     + \underbrace{(r_i^\top \operatorname{diag}(u)\, k_i)\, v_i^\top}_{\text{(3) bonus}} .
# $$
#
# In matrix form, with the chunk's rows stacked into `R, K, W, Cum ∈ R^{C×K}` and `V ∈ R^{C×V}`:
#
# $$
# O = (R \odot e^{Cum - W})\,S \;+\; (P \odot M)\,V \;+\; \operatorname{diag}\big((R \odot K)\,u\big)\,V,
# \qquad P_{ij} = \sum_\kappa R_{i\kappa} K_{j\kappa}\, e^{Cum_{i\kappa} - W_{i\kappa} - Cum_{j\kappa}} ,
# $$
#
# with `M` the **strictly** lower-triangular mask (`M_ij = 1` iff `j < i`). Compare linear
# attention (GLA paper §2.2), where the mask includes the diagonal: in RWKV-6 the diagonal is
# not read from the state but supplied by the bonus.
#
# *(4) Hand-off.* The state after the chunk's last token (`i = C−1`, `c_last = c_{C−1}`) is
# the same unrolling, taken one token further:
#
# $$
# S \leftarrow \operatorname{diag}(e^{c_{\text{last}}})\,S + \big(K \odot e^{c_{\text{last}} - Cum}\big)^\top V .
# $$
#
# These are the four pieces of FLA's reference `chunk_naive` for RWKV-6 (inter read-out with
# `e^{c−w}`, strict mask with `e^{c_i − w_i − c_j}`, bonus diagonal, hand-off with
# `e^{c_last − c}`), derived here from the recurrence.
#
# Before reading the package, we verify the derivation piece by piece on the picture of
# section 1: for one chunk in the middle, each piece, computed from the formulas above, must
# equal the corresponding region of `A` applied to `v`.

# %%
n = 2                                                   # the third chunk: tokens 16..23
sl = slice(n * C, (n + 1) * C)
R_, K_, V_, W_ = (x[0, sl, 0].double() for x in (r, k, v, w))
Cum = W_.cumsum(0)
S_start = wkv6.naive(r[:, :n * C], k[:, :n * C], v[:, :n * C], w[:, :n * C], u,
                     output_final_state=True)[1][0, 0].double()   # the state handed over by chunk 1
A64, v64 = A.double(), v[0, :, 0].double()

inter = (R_ * torch.exp(Cum - W_)) @ S_start                                         # (1)
expo = (Cum - W_)[:, None, :] - Cum[None, :, :]                                     # c_i − w_i − c_j
mask = torch.ones(C, C, dtype=torch.bool).tril(-1)
P = torch.einsum("ik,jk,ijk->ij", R_, K_, torch.exp(expo.masked_fill(~mask[..., None], -math.inf)))
intra = P @ V_                                                                       # (2)
bonus = ((R_ * u[0].double() * K_).sum(-1))[:, None] * V_                           # (3)

rwkvlab.check("(1) inter-chunk == earlier-chunk blocks of A", inter, A64[sl, :n * C] @ v64[:n * C], 1e-5)
rwkvlab.check("(2) intra-chunk == strictly lower diagonal block", intra, A64[sl, sl].tril(-1) @ v64[sl], 1e-5)
rwkvlab.check("(3) bonus == diagonal of A", bonus, torch.diag(A64[sl, sl])[:, None] * V_, 1e-5)

S_end = torch.exp(Cum[-1])[:, None] * S_start + (K_ * torch.exp(Cum[-1] - Cum)).T @ V_   # (4)
rwkvlab.check("(4) hand-off == state after 3 chunks",
              S_end, wkv6.naive(r[:, :3 * C], k[:, :3 * C], v[:, :3 * C], w[:, :3 * C], u, output_final_state=True)[1][0, 0], 1e-5)

# %% [markdown]
# ## 3. The package's chunked rung
#
# `wkv6.chunked` does the same for every chunk of every head at once. The sequence is padded to
# a multiple of `C` with tokens that have `r = k = v = 0` and `w = 0` (decay factor 1), which
# change neither the outputs nor the state, so any `T` works. The body works on one tensor of
# shape `[B, H, n_chunks, C, ·]` per input. It asks for the chunk's intra matrix `P ⊙ M` with the
# bonus on its diagonal, and for the two decayed copies that pieces (1) and (4) need — the queries
# `R ⊙ e^{Cum − W}` and the keys `K ⊙ e^{c_last − Cum}` — then does the rest: one product for
# pieces (2)+(3), the hand-off loop, one product for piece (1).

# %%
print(inspect.getsource(reference._chunked_segment))

# %% [markdown]
# Around it, `_chunked_one` runs long inputs as consecutive segments of whole chunks (section 7
# says why), each handing its final state to the next:

# %%
print(inspect.getsource(reference._chunked_one))

# %% [markdown]
# Only the hand-off loop is sequential, `T / C` steps of a `K × V` multiply-add. Everything else
# is batched over chunks. (A fused GPU kernel, chapter 7, goes one step further and runs the
# hand-off inside the kernel, keeping `S` in registers.) Two functions can supply the intra
# matrix: `_chunk_intra_textbook`, the one-matmul form that section 5 shows failing, and
# `_chunk_intra_stable`, the default, which section 6 derives. The public function validates its
# input, handles packed variable-length sequences (chunks never straddle two sequences) and the
# dtype policy:

# %%
print(inspect.getsource(wkv6.chunked))

# %% [markdown]
# ## 4. Checks: forward and gradients
#
# The chunked form must agree with the loop in float32 to a relative error of `1e-5` — the
# output *and* the final state — for chunk sizes that divide `T` and ones that do not, for a
# chunk longer than the sequence, for `T = 1`, several heads, `K ≠ V` and a random initial
# state.

# %%
cases = [  # (B, T, H, K, V, C)
    (2, 64, 2, 16, 16, 16),
    (2, 37, 2, 8, 12, 16),     # T not a multiple of C
    (1, 50, 2, 16, 8, 7),      # C not a power of two
    (1, 1, 2, 8, 8, 16),       # a single token
    (3, 20, 1, 4, 4, 64),      # one chunk longer than the sequence
    (1, 33, 2, 8, 8, 1),       # C = 1: the recurrence itself
]
for seed, (B, T, H, K, V, C) in enumerate(cases):
    r, k, v, w, u = inputs(B, T, H, K, V, seed=seed)
    S0 = torch.randn(B, H, K, V, generator=torch.Generator().manual_seed(100 + seed))
    ref = wkv6.naive(r, k, v, w, u, initial_state=S0, output_final_state=True)
    got = wkv6.chunked(r, k, v, w, u, initial_state=S0, output_final_state=True, chunk_size=C)
    rwkvlab.check(f"wkv6 chunked vs naive  B={B} T={T:>2} H={H} K={K:>2} V={V:>2} C={C:>2}", got, ref, 1e-5)

# %% [markdown]
# Those inputs decay fast (`random_inputs` spreads memory lengths from a fraction of a token to
# tens of tokens). Trained models keep many channels at decay factors between 0.99 and 0.9999,
# where the state holds hundreds to thousands of tokens and every chunk hands a large state to
# the next. So one more check in that regime: factors drawn uniformly in log space from
# [0.99, 0.9999], 2048 tokens, i.e. 32 chunks of 64 (and 128 of 16), against the float64 loop,
# with a tolerance a few times the error achieved rather than the book's generic `1e-5`.

# %%
r, k, v, _, u = inputs(1, 2048, 2, 16, 16, seed=40)
lo, hi = math.log(0.99), math.log(0.9999)
w_slow = lo + (hi - lo) * torch.rand(r.shape, generator=torch.Generator().manual_seed(41))
ref_slow = wkv6.naive(*(x.double() for x in (r, k, v, w_slow, u)), output_final_state=True)
for C in (64, 16):
    rwkvlab.check(f"wkv6 chunked vs naive fp64, decay factors 0.99-0.9999, T=2048, {2048 // C} chunks of {C}",
                  wkv6.chunked(r, k, v, w_slow, u, output_final_state=True, chunk_size=C), ref_slow, 1e-6)
print(f"final state norm {ref_slow[1].norm():.0f} (fast-decay inputs above: {ref[1].norm():.0f})")

# %%
cu = torch.tensor([0, 9, 10, 41])
r, k, v, w, u = inputs(1, 41, 2, 8, 8, seed=20)
S0 = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(21))
rwkvlab.check("wkv6 chunked vs naive, packed sequences (cu_seqlens)",
              wkv6.chunked(r, k, v, w, u, initial_state=S0, output_final_state=True, cu_seqlens=cu, chunk_size=8),
              wkv6.naive(r, k, v, w, u, initial_state=S0, output_final_state=True, cu_seqlens=cu), 1e-5)

# %% [markdown]
# Gradients. The chunked rung is plain torch without in-place updates, so autograd
# differentiates it; the question is whether the result is the gradient of the *same function*.
# We compare against autograd through the loop, for every input (`r, k, v, w, u` and the initial
# state), with a loss that depends on the output and on the final state — so gradients must
# flow back through the hand-off. In float64 the two agree to rounding; in float32 to `1e-5`.

# %%
def all_grads(impl, xs, **kw):
    r, k, v, w, u, S0 = xs
    o, S = impl(r, k, v, w, u, scale=0.5, initial_state=S0, output_final_state=True, **kw)
    g = torch.Generator().manual_seed(5)
    loss = (o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype)).sum() \
        + (S * torch.randn(S.shape, generator=g, dtype=torch.float64).to(S.dtype)).sum()
    return torch.autograd.grad(loss, xs)


names = ["r", "k", "v", "w", "u", "initial_state"]
for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
    base = inputs(2, 27, 2, 8, 6, seed=30, dtype=torch.float64) + [torch.randn(2, 2, 8, 6, dtype=torch.float64,
                                                                              generator=torch.Generator().manual_seed(31))]
    xs = [x.to(dtype).requires_grad_() for x in base]
    xs64 = [x.detach().double().requires_grad_() for x in base]
    g_chunk = all_grads(wkv6.chunked, xs, chunk_size=8)
    g_loop = all_grads(wkv6.naive, xs64)
    for name, a, b in zip(names, g_chunk, g_loop):
        rwkvlab.check(f"grad {name:<13} chunked ({str(dtype)[6:]}) vs autograd through naive (float64)", a, b, tol)

# %% [markdown]
# ## 5. Numerics: the factorisation that overflows
#
# Piece (2) is the only one with a *pairwise* exponent, `c_i − w_i − c_j`, which depends on both
# the query position and the key position, channel by channel. That is why it is written as an
# einsum over a `C × C × K` tensor of decays instead of a matrix product. The tempting
# alternative, used by the GLA paper's first parallel form and by many first implementations,
# splits the exponential:
#
# $$
# e^{c_i - w_i - c_j} = e^{c_i - w_i}\cdot e^{-c_j}
# \quad\Longrightarrow\quad
# P = \big(R \odot e^{Cum - W}\big)\big(K \odot e^{-Cum}\big)^\top ,
# $$
#
# one `C × K` by `K × C` matrix product — exactly what tensor cores want. The GLA paper
# (Yang et al. 2024, §4) points out why it is unstable: `K ⊙ e^{−Cum}` is the key *divided by*
# the cumulative product of the decay factors, `b_j = ∏_{m≤j} e^{w_m}`, and `1/b_j` grows
# exponentially along the chunk. float32 overflows at `e^{88.72}`. The largest `−c_j` in a chunk
# is `−c_{C−1} = Σ_j |w_j|`, so with a constant decay the factorised form fails as soon as
#
# $$
# C \cdot |w| > 88.72 .
# $$
#
# Data-dependent decay reaches such values easily: Finch's `w = −exp(d)` is `−8` already at
# `d ≈ 2.1`, a factor of `0.0003` per token, and then the factorised form overflows after a dozen
# tokens, far below a chunk of 64. The resulting `inf` is multiplied by the underflowed
# `e^{c_i}` and becomes `NaN`. Clamping `w` to keep it finite would change the model.
#
# The package keeps the factorised form behind `chunked(..., stable=False)` so we can watch it
# fail. At `w = −8` and `C = 64`:

# %%
r, k, v, w, u = inputs(1, 512, 2, 16, 16, seed=40)
w = torch.full_like(w, -8.0)
o_ref, S_ref = wkv6.naive(r, k, v, w, u, output_final_state=True)
o_bad, _ = wkv6.chunked(r, k, v, w, u, chunk_size=64, stable=False)
bad_fraction = (~torch.isfinite(o_bad)).float().mean().item()
print(f"factorised form, w = -8, C = 64: {bad_fraction:.0%} of the outputs are not finite")
assert not torch.isfinite(o_bad).all()

w.requires_grad_()
o_good, S_good = wkv6.chunked(r, k, v, w, u, chunk_size=64, output_final_state=True)
assert torch.isfinite(o_good).all() and torch.isfinite(S_good).all()
rwkvlab.check("stable chunked vs naive, w = -8, T = 512, C = 64", (o_good, S_good), (o_ref, S_ref), 1e-5)
(dw,) = torch.autograd.grad(o_good.sum() + S_good.sum(), w)
assert torch.isfinite(dw).all()
print("gradient w.r.t. w through the stable form: finite")

# %% [markdown]
# The cure is never to exponentiate anything but a decay. For `j < i` the exponent
# `c_i − w_i − c_j` *is* a sum of log decays, `w_{j+1} + … + w_{i−1}`, never positive, so
# `e^{…}` lies in `[0, 1]`: it can underflow to 0 — which is the right answer for a token that
# has been forgotten — but never overflow, whatever `w ≤ 0` and whatever `C`. The simplest form
# that keeps to this rule evaluates every pair on its own: `wkv6.attention_matrix` does so with
# the helper below (a `C × C × K` tensor of exponents, each summed over its own interval — why
# that matters is section 6's story). The entries with `j ≥ i` would have positive exponents; it
# masks them to `−∞` *before* exponentiating, because an `inf` there, even if multiplied by zero
# afterwards, would turn into `NaN` in the backward pass. The other three pieces only ever use
# `c_i − w_i`, `c_last − c_j` and `c_last`, all `≤ 0`, so they were never at risk.

# %%
print(inspect.getsource(reference._pairwise_decay))

# %% [markdown]
# The pairwise form is safe but elementwise: `C²K` exponentials and products per chunk and not
# one matrix product. The package's stable form (section 6) keeps the safety and gets the matrix
# products back; it is what `stable=True` runs below.
#
# Now the whole picture: the relative error against a float64 loop, as the constant decay
# strength `|w|` grows, for three chunk sizes, both forms. The dashed lines mark the predicted
# failure points `|w| = 88.72 / C`.

# %%
FLOAT32_LOG_MAX = math.log(torch.finfo(torch.float32).max)              # 88.72
strengths = [0.25, 0.5, 1.0, 1.25, 2.0, 2.5, 4.0, 6.0, 8.0, 16.0, 50.0]
r, k, v, _, u = inputs(1, 128, 1, 16, 16, seed=41)
errs = {}
for C in (16, 32, 64):
    for stable in (True, False):
        errs[C, stable] = []
        for s in strengths:
            w = torch.full_like(r, -s)
            ref = wkv6.naive(*(x.double() for x in (r, k, v, w, u)))[0]
            errs[C, stable].append(rwkvlab.rel_err(wkv6.chunked(r, k, v, w, u, chunk_size=C, stable=stable)[0], ref))

# the stable form is accurate everywhere; the factorised one fails exactly past C·|w| = 88.72
for C in (16, 32, 64):
    assert max(errs[C, True]) < 1e-5
    for s, e in zip(strengths, errs[C, False]):
        predicted_fail = C * s > FLOAT32_LOG_MAX
        assert (e == math.inf) == predicted_fail, (C, s, e)
        assert predicted_fail or e < 1e-5

fig, ax = plt.subplots(figsize=(7, 3.6))
for C, colour in zip((16, 32, 64), ("C0", "C1", "C2")):
    ax.loglog(strengths, errs[C, True], "o-", color=colour, label=f"stable, C={C}")
    shown = [e if math.isfinite(e) else 1.0 for e in errs[C, False]]
    ax.loglog(strengths, shown, "x--", color=colour, label=f"factorised, C={C} (inf drawn at 1)")
    ax.axvline(FLOAT32_LOG_MAX / C, color=colour, ls=":", lw=1)
ax.set_xlabel("decay strength |w| (constant log decay)")
ax.set_ylabel("rel. error vs float64 loop")
ax.set_title("factorised chunk form fails at C·|w| > 88.7; the pairwise form never does")
ax.legend(fontsize=7, ncol=2)
plt.tight_layout()
plt.show()

# %% [markdown]
# Until it overflows, the factorised form is as accurate as the stable one: a float32 number
# keeps its relative precision across its whole range, so `e^{c_i−w_i}` and `e^{−c_j}` multiply
# back to the right value. The failure is a cliff, not a slope — which makes it easy to miss in
# tests that use mild decays.
#
# **Other ways out**, each a trade between matrix-product speed and range:
#
# - *Re-centre the exponents.* Use `e^{c_i − w_i − c_m} · e^{c_m − c_j}` with a reference point
#   `m` in the middle of the chunk. Both factors now span only half the chunk, so the safe
#   `C·|w|` doubles — but a limit remains.
# - *Secondary chunking* (GLA paper §4.3; what `wkv6.chunked` does, section 6). Split each chunk
#   into sub-chunks of, say, 16 tokens. For a query sub-chunk and an *earlier* key sub-chunk,
#   split the decay at the first token of the query sub-chunk: both factors are `≤ 1`, and their
#   product is one matrix product. Inside a sub-chunk (the diagonal blocks) no split point lies
#   between the two tokens. Nothing overflows, and most of the work is matrix products again; the
#   price is more, smaller products. FLA's RWKV-6 chunk kernels are organised this way
#   (`chunk_rwkv6_fwd_A_kernel_intra_sub_inter` for the off-diagonal sub-blocks,
#   `…_intra_sub_intra` for the diagonal ones).
# - *Pairwise everywhere* (what `attention_matrix` does). Simplest and always safe; the
#   intra-chunk scores cost the same number of multiply-adds as the matrix product would
#   (section 8) but are elementwise work, with `C²K` exponentials per chunk instead of `2CK`.
#
# Chapter 7's default Triton kernel uses secondary chunking too, with the diagonal blocks built
# elementwise in registers, and is checked against the float64 loop, strong decays included, and
# against this chapter's `chunked`.
#
# ## 6. Secondary chunking: exact, overflow-free, and matrix products
#
# Cut a chunk of `C = 64` tokens into four **sub-chunks** of `L = 16`. Take a query `i` in
# sub-chunk `I` and a key `j` in an earlier sub-chunk `J < I`. The exponent of their weight is the
# log decay of the tokens strictly between them; split it at the first token of `I`, and the part
# before that at the last token of `J`:
#
# $$
# \sum_{m=j+1}^{i-1} w_m \;=\; \underbrace{\sum_{m=\mathrm{start}(I)}^{i-1} w_m}_{p_i\ \text{(inside } I)}
# \;+\; \underbrace{\sum_{J<M<I} W_M}_{\mathrm{gap}_{JI}}
# \;+\; \underbrace{\sum_{m=j+1}^{\mathrm{end}(J)} w_m}_{s_j\ \text{(inside } J)} ,
# $$
#
# with `W_M` the total log decay of sub-chunk `M`. All three parts are sums of log decays, each
# over an interval of its own, so all three are `≤ 0`, and since `e^{a+b+c} = e^a e^b e^c` the
# whole `(I, J)` block of the score matrix is one matrix product of two `L × K` matrices:
#
# $$
# P_{IJ} = \big(R_I \odot e^{p}\big)\,\big(K_J \odot e^{s + \mathrm{gap}_{JI}}\big)^\top .
# $$
#
# This is *exact* — the same real number, no re-centring that trades range for accuracy — and
# *overflow-free*: every factor lies in `[0, 1]`. It differs from the failed factorisation of
# section 5 only in where the exponent is split: there the split point was the chunk's *start*
# for every pair, so one of the two factors had to run backwards (`e^{−c_j}`, unbounded); here
# it is a point that always lies *between* `j` and `i`.
#
# Only the diagonal blocks `I = J`, where no split point lies between the two tokens, remain. On
# a GPU, chapter 7 builds them elementwise in registers. On a CPU, elementwise work means
# streaming tensors through memory, and a `16 × 16` diagonal block costs `(L−1)/2 = 7.5`
# exponentials and products per token and key channel — about as much elementwise work as the
# rest of the chunk together. So `wkv6.chunked` applies the same split again, inside each
# sub-chunk, by the same factor: `64 → 16 → 4 → 1`. At the bottom the "sub-chunks" are single
# tokens, `p = s = 0`, and the score is `r_i · (k_j ⊙ e^{gap})` with `gap = w_{j+1} + … + w_{i−1}`:
# the pairwise interval sum itself, evaluated only for the `j < i` pairs inside blocks of four.
# The picture shows which level computes each entry of one chunk's matrix.

# %%
sizes6 = reference._block_sizes(64, 16)                      # [64, 16, 4, 1]
i6, j6 = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
level = torch.zeros(64, 64)                                   # 0: above the diagonal
for n_level, size in enumerate(sizes6[1:], start=1):          # the first level whose blocks separate i and j
    level[(level == 0) & (i6 > j6) & (i6 // size != j6 // size)] = n_level
level[i6 == j6] = len(sizes6)                                 # the bonus
assert torch.all(level[i6 > j6] > 0)                          # every pair j < i is computed by exactly one level
fig, ax = plt.subplots(figsize=(4.6, 4.6))
ax.imshow(level.numpy(), cmap=plt.matplotlib.colors.ListedColormap(["white", "#6baed6", "#fd8d3c", "#74c476", "#d62728"]))
ax.set_title("one chunk: blue 16-blocks, orange 4-blocks,\ngreen token pairs, red bonus", fontsize=9)
ax.set_xlabel("key j"); ax.set_ylabel("query i")
plt.tight_layout()
plt.show()

# %% [markdown]
#
# The check below builds the six off-diagonal `16 × 16` blocks of one chunk from the formula —
# prefix, suffix and gap as plain sums over their intervals — and compares them with the pairwise
# form of section 5 (float64).

# %%
C6, L6, K6 = 64, 16, 8
r6, k6, _, w6 = (x[0, :, 0].double() for x in inputs(1, C6, 1, K6, K6, seed=6)[:4])   # one chunk, one head: [C, K]
pairwise = torch.einsum("ik,jk,ijk->ij", r6, k6, reference._pairwise_decay(w6))      # P ⊙ M, section 5's form
factored, largest = torch.zeros(C6, C6, dtype=torch.float64), -math.inf
for I in range(C6 // L6):
    for J in range(I):
        qi, kj = slice(I * L6, (I + 1) * L6), slice(J * L6, (J + 1) * L6)
        p = torch.stack([w6[I * L6:i].sum(0) for i in range(qi.start, qi.stop)])        # from I's start to i − 1
        s = torch.stack([w6[j + 1:kj.stop].sum(0) for j in range(kj.start, kj.stop)])   # from j + 1 to J's end
        gap = w6[kj.stop:qi.start].sum(0)                                               # sub-chunks strictly between
        factored[qi, kj] = (r6[qi] * torch.exp(p)) @ (k6[kj] * torch.exp(s + gap)).T    # one matrix product
        largest = max(largest, p.max().item(), (s + gap).max().item())
off_diagonal = torch.arange(C6)[:, None] // L6 > torch.arange(C6)[None, :] // L6        # the six blocks J < I
print(f"largest exponent in the factored blocks: {largest:.1f}")
assert largest <= 0.0
rwkvlab.check("six off-diagonal 16x16 blocks, factored at the sub-chunk boundary, vs pairwise",
              factored, pairwise * off_diagonal, 1e-12)

# %% [markdown]
# ### The code
#
# Three small helpers. `_edge_sums` forms exclusive prefix sums, exclusive suffix sums and totals
# inside blocks with one matrix product by a constant 0/1 matrix — each entry a sum over its own
# interval (the reason follows below). `_decay` exponentiates log decays; the stable form works in
# base 2 (`e^x = 2^{x log₂e}`, the log decays multiplied by `log₂e` once), and the cut-off it
# applies is explained after the next check. `_lower_blocks` fills the blocks `J < I` of one
# level, one lag `I − J` at a time, the gap growing by one sub-chunk total per lag; each lag is a
# single matrix product of all its query rows by all its key rows, of which it keeps the diagonal
# blocks — on a CPU that is cheaper than a batch of many tiny products:

# %%
for helper in (reference._edge_sums, reference._decay, reference._lower_blocks):
    print(inspect.getsource(helper))

# %% [markdown]
# `_chunk_intra_stable` walks the levels from single tokens up to the chunk. Moving up a level,
# a token's prefix decay inside the bigger sub-chunk is the product of its prefix inside its
# smaller block and the decay of the smaller blocks before that one, `e^{P + p} = e^{P} e^{p}` —
# two adjacent intervals, not a difference. At the top, the same products give the decayed
# queries and keys of pieces (1) and (4):

# %%
print(inspect.getsource(reference._chunk_intra_stable))
print("block sizes for C = 64, L = 16:", reference._block_sizes(64, 16))

# %%
r, k, v, w, u = inputs(2, 64, 2, 8, 8, seed=61, dtype=torch.float64)
heads_first = [x.transpose(1, 2)[:, :, None].contiguous() for x in (r, k, w)]   # [B, H, 1 chunk, C, K]
A_stable, q_in, k_out, total = reference._chunk_intra_stable(*heads_first, u, reference._block_sizes(64, 16))
A_pairwise = wkv6.attention_matrix(r, k, w, u)                            # zero start state: only piece (2) + (3)
rwkvlab.check("stable intra-chunk matrix (64 -> 16 -> 4 -> 1) vs attention_matrix", A_stable[:, :, 0], A_pairwise, 1e-12)
c = w.transpose(1, 2).cumsum(-2)[:, :, None]
rwkvlab.check("decayed queries r * e^(c_{i-1}) vs the textbook formula", q_in, heads_first[0] * torch.exp(c - heads_first[2]), 1e-12)
rwkvlab.check("decayed keys k * e^(c_last - c_j) vs the textbook formula", k_out,
              heads_first[1] * torch.exp(c[..., -1:, :] - c), 1e-12)

# %% [markdown]
# ### Every exponent `≤ 0`
#
# "Never evaluates a positive exponent" is a claim about the code, not only about the algebra,
# and it can be checked directly: intercept every exponential that torch evaluates while
# `wkv6.chunked` runs, and record the largest argument. The textbook form is recorded for
# comparison.

# %%
class LargestExponent(torch.overrides.TorchFunctionMode):
    # records the largest argument of every exp evaluated inside the `with` block

    def __init__(self):
        super().__init__()
        self.largest = -math.inf

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.exp, torch.Tensor.exp, torch.Tensor.exp_, torch.exp2, torch.Tensor.exp2, torch.Tensor.exp2_):
            self.largest = max(self.largest, args[0].detach().max().item())
        return func(*args, **(kwargs or {}))


r, k, v, _, u = inputs(1, 300, 2, 16, 16, seed=62)
cases = {"random decay": inputs(1, 300, 2, 16, 16, seed=62)[3], "w = 0": torch.zeros_like(r),
         "w = -8": torch.full_like(r, -8.0), "w = -1e4": torch.full_like(r, -1e4)}
for name, w in cases.items():
    w = w.clone().requires_grad_()
    with LargestExponent() as stable_form:
        o, S = wkv6.chunked(r, k, v, w, u, output_final_state=True)
    with LargestExponent() as textbook_form:
        wkv6.chunked(r, k, v, w, u, stable=False)
    (dw,) = torch.autograd.grad(o.sum() + S.sum(), w)
    assert stable_form.largest <= 0.0 and torch.isfinite(o).all() and torch.isfinite(dw).all()
    print(f"{name:<13} largest exponent evaluated: stable {stable_form.largest:7.2f}   textbook {textbook_form.largest:9.1f}")

# %% [markdown]
# ### Why each exponent is summed over its own interval
#
# Algebraically `w_{j+1} + … + w_{i−1} = c_{i−1} − c_j`, the difference of two running sums from
# the chunk's start, and section 2 used that form. In float32 it is not the same number. A
# running sum that has passed a strong decay — a spike of `w = −10^4`, which Finch's
# data-dependent decay can produce for one token — is about `−10^4`, where float32 numbers are
# `2^{−10} ≈ 10^{−3}` apart. Every later difference inherits that rounding, so the weight
# between two tokens *after* the spike, which should be `e^{−0.01}`-ish and exact to `10^{−7}`,
# is off by about `10^{−3}` relative. Summing each exponent over its own interval never lets the
# spike into an interval that does not contain it. The cell compares both ways on `w = −0.01`
# with two spikes, for one chunk and for the whole operator, gradients included.

# %%
T6 = 40
w_spike = torch.full((T6, 4), -0.01, dtype=torch.float64)
w_spike[[13, 27]] = -1e4
exact = reference._pairwise_decay(w_spike)                                 # float64
w32 = w_spike.float()
c32 = w32.cumsum(0)
diff_form = ((c32 - w32)[:, None, :] - c32[None, :, :]).masked_fill(~torch.ones(T6, T6, dtype=torch.bool).tril(-1)[..., None],
                                                                       -math.inf).exp()
err_diff = rwkvlab.rel_err(diff_form, exact)
err_interval = rwkvlab.rel_err(reference._pairwise_decay(w32), exact)
print(f"float32 decay matrix, spikes of -1e4: difference of running sums {err_diff:.1e}, interval sums {err_interval:.1e}")
assert err_diff > 1e-5 and err_interval < 1e-6

xs64 = inputs(2, 41, 2, 8, 8, seed=63, dtype=torch.float64) + [torch.randn(2, 2, 8, 8, dtype=torch.float64,
                                                                          generator=torch.Generator().manual_seed(64))]
xs64[3] = torch.full_like(xs64[3], -0.01)
xs64[3][:, [13, 27]] = -1e4
xs32 = [x.float().requires_grad_() for x in xs64]
xs64 = [x.requires_grad_() for x in xs64]
o32, S32 = wkv6.chunked(*xs32[:5], initial_state=xs32[5], output_final_state=True)
o64, S64 = wkv6.naive(*xs64[:5], initial_state=xs64[5], output_final_state=True)
rwkvlab.check("chunked (float32) vs naive (float64), decay spikes of -1e4", (o32, S32), (o64, S64), 1e-6)
for name, a, b in zip(names, all_grads(wkv6.chunked, xs32), all_grads(wkv6.naive, xs64)):
    rwkvlab.check(f"grad {name:<13} under decay spikes, chunked (float32) vs naive (float64)", a, b, 1e-6)

# %% [markdown]
# ### Subnormal numbers: a floor on the factors
#
# One more CPU matter. A factor like `e^{−95}` is a *subnormal* float32 (below `1.2·10^{−38}`, the
# smallest normal number), and x86 processors handle subnormals in microcode, a hundred times
# slower per operation (`torch.exp` also takes a slow path wherever its result underflows; `exp2`
# only where the result is subnormal). Strong decays produce such factors all the time, and a
# single matrix product full of them is enough to undo the speed-up. `wkv6.chunked` therefore
# keeps a factor only down to `2^{floor}`, `floor = log₂(tiny)/3 = −42` in float32, and sets
# smaller ones to exactly zero (their exponent becomes `−∞` before `exp2`): a product of three kept
# factors (query side, key side and gap) is still a normal number, and a dropped factor weighs its
# term below `2.3·10^{−13}`, far under float32's rounding of the sum it enters.

# %%
print(inspect.getsource(reference._flush_floor))
a = torch.randn(256, 64, 64)
b = torch.randn(256, 64, 64)
for label, (x, y) in (("normal", (a, b)), ("subnormal products", (a * 1e-20, b * 1e-20))):   # a·b ~ 1e-40
    x @ y
    t0 = time.perf_counter()
    for _ in range(3):
        x @ y
    print(f"256 matmuls 64x64x64, {label:<19}: {(time.perf_counter() - t0) / 3 * 1e3:7.2f} ms")
tiny = torch.finfo(torch.float32).tiny
r, k, v, _, u = inputs(1, 256, 2, 16, 16, seed=65)
w = torch.full_like(r, -8.0)
heads_first = [x.transpose(1, 2)[:, :, None].reshape(1, 2, 4, 64, 16) for x in (r, k, w)]
A_s, q_in, k_out, _ = reference._chunk_intra_stable(*heads_first, u, reference._block_sizes(64, 16))
n_sub = sum(((x != 0) & (x.abs() < tiny)).sum().item() for x in (A_s, q_in, k_out))
print(f"subnormal entries among the stable form's factors and scores at w = -8: {n_sub}")
assert n_sub == 0

# %% [markdown]
# ## 7. Measured: the chunked form against the loop
#
# What does all this buy on a CPU? The cell times `naive` and `chunked` (forward, float32, the
# default `C = 64` and sub-chunks of 16) in this process, medians of several runs, at one head
# size of a real model (`K = V = 64`), and prints what it measured. On a CPU this form is bound by
# memory traffic more than by arithmetic, so `chunked` runs long inputs in segments of whole chunks
# — about `2^18` elements per tensor, small enough to stay in a core's cache — handing the state
# from segment to segment exactly as from chunk to chunk. The ratio depends on the machine and on
# what else runs on it; the book's tests check correctness, never speed.

# %%
def median_ms(fn, repeats):
    fn()                                          # warm-up: allocations, threads
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3


B7, T7, H7, K7 = 1, 4096, 4, 64
r, k, v, w, u = inputs(B7, T7, H7, K7, K7, seed=70)
with torch.no_grad():
    t_naive = median_ms(lambda: wkv6.naive(r, k, v, w, u, output_final_state=True), 3)
    t_chunk = median_ms(lambda: wkv6.chunked(r, k, v, w, u, output_final_state=True), 7)
    t_text = median_ms(lambda: wkv6.chunked(r, k, v, w, u, output_final_state=True, stable=False), 7)
print(f"B={B7} T={T7} H={H7} K=V={K7}, float32, {torch.get_num_threads()} threads, forward:")   # no assert: a timing
print(f"  naive (token loop)            {t_naive:8.1f} ms")
print(f"  chunked, stable (default)     {t_chunk:8.1f} ms   {t_naive / t_chunk:5.1f}x faster than naive")
finite = torch.isfinite(wkv6.chunked(r, k, v, w, u, stable=False)[0]).float().mean().item()
print(f"  chunked, textbook (unstable)  {t_text:8.1f} ms   {t_naive / t_text:5.1f}x faster than naive, "
      f"{finite:.0%} of its outputs finite")

# %% [markdown]
# The textbook form does the least arithmetic of the three. Where it is nevertheless slower than
# the stable form (as on the two-core machine this book was written on), the reason is the
# numbers it computes: on these random decays its `e^{−c}` overflows and its `e^{c}` underflows
# all the time, into exactly the slow paths — subnormal factors, `exp` below `−87` — that the
# stable form keeps clear of. On a CPU, what the numbers are matters as much as how many there are.
#
# ## 8. Cost against the chunk size
#
# Count multiply-adds per head for a sequence of `T` tokens, chunk size `C`, key size `K` and
# value size `V` (the masked half of each block is computed and discarded, as dense kernels do):
#
# | piece | multiply-adds | what it is |
# |---|---|---|
# | (2) intra scores `P` | `T · C · K` | `T/C` blocks of `C × C × K` |
# | (2)+(3) `(P ⊙ M + diag) V` | `T · C · V` | `T/C` products `C × C` by `C × V` |
# | (1) inter read-out | `T · K · V` | `T/C` products `C × K` by `K × V` |
# | (4) hand-off `(K ⊙ e^{…})ᵀ V` | `T · K · V` | `T/C` products `K × C` by `C × V` |
# | sequential steps | `T / C` | the hand-off chain |
#
# In total `T (C K + C V + 2 K V)` multiply-adds and `T / C` sequential steps. The loop does
# about `2 T K V` (one `K × V` read-out and one `K × V` update per token) in `T` steps; `C = 1`
# reproduces it. The source note this book started from states the chunked
# training cost as `O(B·T·H·K·V / chunk_size)`; the table shows why that cannot be right — the
# inter-chunk work is `T K V` whatever `C` is (every token still reads and writes a `K × V`
# state, just in batches), and the intra-chunk work *grows* with `C`. The correct count is
# `O(B·H·T·(C(K+V) + KV))`, as in the GLA paper's `O(LCd + Ld²)`.
#
# We check the formula against PyTorch's own FLOP counter on the textbook form
# (`stable=False`, dense `C × C` scores; the counter counts 2 FLOPs per multiply-add in matrix
# products and einsums). The stable form of section 6 is printed beside: it multiplies more than
# it keeps — each lag of each level is one wide product of which only the diagonal blocks are used,
# and its interval sums are small 0/1 matrix products — because on a CPU a few large products cost
# less than many small ones, and its real cost is the elementwise work the table does not count.

# %%
def macs(T, C, K, V):
    n = -(-T // C)
    return n * C * (C * K + C * V + 2 * K * V)


for (T, C, K, V) in ((256, 32, 16, 16), (96, 16, 8, 24), (100, 64, 16, 16)):
    r, k, v, w, u = inputs(1, T, 1, K, V, seed=50)
    counted = {}
    for stable in (True, False):
        with FlopCounterMode(display=False) as counter:
            wkv6.chunked(r, k, v, w, u, chunk_size=C, stable=stable)
        counted[stable] = counter.get_total_flops() // 2
    assert counted[False] == macs(T, C, K, V), (T, C, K, V, counted)
    print(f"T={T:>3} C={C:>2} K={K:>2} V={V:>2}: {macs(T, C, K, V):>9,} multiply-adds, as counted by torch "
          f"(stable form: {counted[True]:>9,})")

# %% [markdown]
# For a realistic head (`K = V = 64`) and `T = 4096`:

# %%
T, K, V = 4096, 64, 64
sizes = [1, 8, 16, 32, 64, 128, 256, 512]
print(f"{'C':>4} {'multiply-adds':>15} {'vs C=1':>7} {'steps':>6} {'exp (pairwise)':>15}")
rows = []
for C in sizes:
    m = macs(T, C, K, V)
    rows.append((C, m, T // C))
    print(f"{C:>4} {m:>15,} {m / macs(T, 1, K, V):>7.2f} {T // C:>6} {T * C * K:>15,}")
m_by_c = {C: m for C, m, _ in rows}
assert m_by_c[K] == 4 * T * K * V                              # at C = K = V the two halves balance
assert m_by_c[K] <= 2 * min(m_by_c.values())                   # ... still within 2x of the least work
assert all(m_by_c[a] < m_by_c[b] for a, b in zip(sizes, sizes[1:]))   # work grows with C ...

fig, ax1 = plt.subplots(figsize=(6.5, 3.4))
ax1.loglog([c for c, _, _ in rows], [m / 1e9 for _, m, _ in rows], "o-", label="multiply-adds (G)")
ax1.set_xlabel("chunk size C"); ax1.set_ylabel("multiply-adds per head (G)")
ax2 = ax1.twinx()
ax2.loglog([c for c, _, _ in rows], [s for _, _, s in rows], "s--", color="C1", label="sequential steps")
ax2.set_ylabel("sequential steps T/C")
ax1.set_title("T = 4096, K = V = 64: work grows, the serial chain shrinks")
fig.legend(loc="upper center", bbox_to_anchor=(0.45, 0.85), fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ... while the chain of sequential steps shrinks as `1/C`. Up to `C ≈ K` the intra-chunk work is
# at most equal to the state work, so the total stays within a factor of two of its minimum
# while the serial chain gets 64 times shorter; beyond that, the quadratic intra-chunk part
# dominates and every doubling of `C` nearly doubles the work. Hence the usual choice of `C`
# between 16 and 64 — together with the fact that `C = 16` is the smallest tile a tensor-core
# matrix product (`tl.dot`) accepts. Memory follows the same logic: a backward pass that keeps
# the chunk-start states stores `(T/C)·K·V` numbers per head, `T·K·V/C`.
#
# The timings of section 7 are of plain torch on this CPU, where memory traffic and the count of
# elementwise passes decide as much as the multiply-adds; they say nothing about a GPU.
# Chapter 7 measures the kernels where they run.
#
# ## Summary
#
# - Inside a chunk, with `c` the inclusive cumulative log decay, RWKV-6's output is
#   `(R ⊙ e^{c−w}) S + (P ⊙ M) V + diag((R ⊙ K) u) V` with `P_ij = Σ_κ R_iκ K_jκ e^{c_iκ − w_iκ − c_jκ}`
#   and the strictly lower mask `M`; the state is handed on as
#   `S ← e^{c_last} S + (K ⊙ e^{c_last − c})ᵀ V`.
# - `wkv6.chunked` computes exactly that, for any `T` and `C`, packed sequences included, and
#   agrees with the loop in float32 to `1e-5`, gradients included.
# - Splitting `e^{c_i − w_i − c_j}` into `e^{c_i − w_i} · e^{−c_j}` makes the intra-chunk scores one
#   matrix product but overflows float32 once `C·|w| > 88.7` — a cliff, reached by real models'
#   fast channels. Forming the pairwise exponent first keeps every factor in `[0, 1]`.
# - Splitting the exponent at a *sub-chunk* boundary instead — `p_i + gap_JI + s_j`, all three
#   sums of log decays — makes every off-diagonal sub-chunk block one exact matrix product with
#   factors in `[0, 1]`; `wkv6.chunked` applies the split recursively (`64 → 16 → 4 → 1`), forms
#   every exponent as a sum over its own interval (a decay spike of `−10^4` costs no float32
#   accuracy) and keeps its factors clear of subnormal numbers. Section 7 measures its speed
#   against the loop on this machine.
# - The work is `T (C(K+V) + 2KV)` multiply-adds with `T/C` sequential steps; `C` between 16 and
#   64 (about `K`) balances the two parts.
#
# ## Exercises
#
# 1. Implement the re-centred factorisation of section 5 (reference point in the middle of the
#    chunk) as a function of your own, and confirm that its failure point moves to
#    `C·|w| ≈ 2 · 88.72`.
# 2. Implement one level of secondary chunking yourself: sub-chunks of 4 tokens inside chunks of
#    16, matrix products between sub-chunks split at the start of the query sub-chunk, the
#    pairwise form (`reference._pairwise_decay`) on the diagonal blocks. Check it against
#    `wkv6.naive` at `w = −50`, then time it against `wkv6.chunked` as in section 7.
# 3. Derive the gradient of the loss with respect to the chunk-start state `S` from the four
#    pieces, and check it against `torch.autograd.grad` through `wkv6.chunked`.
# 4. A kernel that feeds `K ⊙ e^{−Cum}` to the tensor cores in float16 fails much earlier than
#    float32. Why? (Hint: compare `torch.finfo(torch.float16).max` with float32's.) Predict the
#    failure point for `C = 16` and check it with a float16 version of the factorised product of
#    your own (`wkv6.chunked` accumulates 16-bit inputs in float32). Would bfloat16 fail earlier
#    too? Compare `torch.finfo(torch.bfloat16).max`.
# 5. The padding tokens use `w = 0`. Would `w = −1` also work? What about padding with
#    `r = k = v = 0` at the *start* of the sequence instead of the end?
# 6. Extend the cost table with the number of exponentials each form needs, and argue which form
#    a CPU implementation should use.

# %% [markdown]
# Short answers (the student edition hides them):
#
# ### BEGIN SOLUTION
# 1. With the reference point `m` in the middle, each factor spans only half the chunk, so the
#    largest exponent is about `(C/2)·|w|`: the re-centred form fails at `C·|w| ≈ 2 · 88.72 ≈ 177`.
# 3. With `dO` the gradient of the chunk's outputs and `dS_new` that of the state it hands on
#    (`scale = 1`): `∂L/∂S = (R ⊙ e^{Cum−W})ᵀ dO + diag(e^{c_last}) dS_new`.
# 4. float16's largest number is 65504 = `e^{11.09}`, float32's `e^{88.72}`. With `C = 16` and a
#    constant decay, `e^{−c_{15}} = e^{16|w|}` overflows float16 once `|w| > 11.09 / 16 ≈ 0.69`.
#    bfloat16 has float32's exponent range (largest ≈ 3.39·10^38 = `e^{88.7}`), so it overflows
#    at the same point as float32 — it only loses precision (8 mantissa bits) much earlier.
# 5. `w = −1` at the end: the outputs of the real tokens are unchanged (nothing reads the padded
#    tokens), but the hand-off would decay the final state by `e^{−1}` per padding token — wrong
#    whenever `T` is not a multiple of `C`. Padding at the start with `r = k = v = 0` and `w = 0`
#    works too: zero writes with decay factor 1 leave the initial state as it is (the outputs
#    are then cut from the end instead of the start).
# 6. Per head, the pairwise form evaluates `C·K` exponentials per token (`T·C·K` in all, as many
#    as the score multiply-adds); the factorised one `2·K` per token for the scores (`2·T·K`),
#    plus `O(T·K)` for the other pieces in both.
# ### END SOLUTION

# %% [markdown]
# ### Exercises that check themselves
#
# Each cell below prints its exercise's statement, holds a solution between the markers
# `### BEGIN SOLUTION` and `### END SOLUTION` (the student edition, `python -m rwkvlab exercises
# student`, replaces it with a stub), and ends with `exercises.check`, which runs the function on
# seeded random chunks cut from sequences — odd `C`, `C = 1`, `K ≠ V`, slow decay over many
# chunks and decays strong enough that `e^{−c}` overflows float32 — against `wkv6.naive` (or a
# loop over token pairs) in float64, and says what is wrong if it is.
#
# 7. The intra-chunk decay matrix of piece (2), `D[i, j] = e^{c_{i−1} − c_j}` below the diagonal,
#    with the mask applied before the exponential (the checker also differentiates it).

# %%
import torch

from rwkvlab import exercises

print(exercises.spec("06.7"))


def pairwise_decay(w):
    ### BEGIN SOLUTION
    C = w.shape[-2]
    c = w.cumsum(-2)                                             # inclusive cumulative log decay
    e = (c - w)[..., :, None, :] - c[..., None, :, :]            # c_{i−1} − c_j, [..., C, C, K]
    i, j = torch.arange(C)[:, None], torch.arange(C)[None, :]
    below = j < i                                                # strictly lower: token j before token i
    return e.masked_fill(~below[:, :, None], float("-inf")).exp()   # mask first: no positive exponent
    ### END SOLUTION


exercises.check("06.7", pairwise_decay)

# %% [markdown]
# 8. The hand-off, piece (4): the state after a chunk from the state before it — the only
#    sequential step of the chunked form, chained here over many chunks.

# %%
import torch

from rwkvlab import exercises

print(exercises.spec("06.8"))


def hand_off(S, k, v, w):
    ### BEGIN SOLUTION
    c = w.cumsum(-2)
    c_last = c[..., -1:, :]                                      # decay across the whole chunk, [B, H, 1, K]
    k_end = k * torch.exp(c_last - c)                            # each write decayed to the chunk's end
    return torch.exp(c_last).transpose(-1, -2) * S + k_end.transpose(-1, -2) @ v
    ### END SOLUTION


exercises.check("06.8", hand_off)

# %% [markdown]
# 9. One chunk's outputs from its start state: pieces (1)–(3) together, without a loop over
#    tokens and without an exponent that can overflow.

# %%
import torch

from rwkvlab import exercises

print(exercises.spec("06.9"))


def chunk_output(r, k, v, w, u, S):
    ### BEGIN SOLUTION
    C = r.shape[-2]
    c = w.cumsum(-2)
    inter = (r * torch.exp(c - w)) @ S                                      # (1) the earlier chunks
    e = (c - w)[..., :, None, :] - c[..., None, :, :]
    below = torch.arange(C)[None, :] < torch.arange(C)[:, None]             # j < i
    D = e.masked_fill(~below[:, :, None], float("-inf")).exp()
    P = torch.einsum("bhik,bhjk,bhijk->bhij", r, k, D)                      # (2) strictly lower scores
    bonus = (r * u[None, :, None, :] * k).sum(-1)                           # (3) the current token
    return inter + (P + torch.diag_embed(bonus)) @ v
    ### END SOLUTION


exercises.check("06.9", chunk_output)
