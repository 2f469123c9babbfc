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
# # The state becomes a matrix; decay becomes data-dependent
#
# RWKV-4 kept, for every channel, two running numbers: a decayed sum of `e^{k} v` and a
# decayed sum of `e^{k}`, and divided one by the other. RWKV-5 ("Eagle") and RWKV-6 ("Finch")
# (Peng et al. 2024, arXiv 2404.05892) replace that pair by a **matrix** per head, drop the
# division, and — in RWKV-6 — let every token choose how fast each row of that matrix forgets.
#
# By the end of this chapter you will be able to
#
# 1. write the RWKV-6 recurrence for one head, with its K×V state, its bonus `u` and its
#    per-token, per-channel decay, and say which state the read-out uses (and why the popular
#    "`o_t = r_t h_t`" transcription is off by one);
# 2. run `rwkvlab.wkv6.naive`, the token loop every later rung is checked against, in batched,
#    variable-length and one-token (RNN) form;
# 3. explain where RWKV-4's denominator went (into a per-head GroupNorm), compute Finch's
#    data-dependent decay from its low-rank map, and say why the kernels take the decay as a log;
# 4. draw the T×T "attention matrix" one WKV-6 head computes and compare it with softmax's.
#
# The whole chapter is one pair of equations. Per head, with `r_t, k_t, w_t ∈ R^K`,
# `v_t ∈ R^V`, `u ∈ R^K` and the state `S ∈ R^{K×V}`:
#
# $$
# o_t = r_t^\top\big(S_{t-1} + \operatorname{diag}(u)\,k_t v_t^\top\big), \qquad
# S_t = \operatorname{diag}(e^{w_t})\,S_{t-1} + k_t v_t^\top .
# $$
#
# Read it as a memory: every token writes the rank-one matrix `k_t v_tᵀ` (the value `v_t`
# filed under the key `k_t`); between tokens each key channel `κ` shrinks its row of the
# memory by the factor `e^{w_t[κ]} ∈ (0, 1]`; the receptance `r_t` — RWKV's query — reads the
# memory as it was *before* the current token, and the current token is added on the side,
# weighted per channel by the bonus `u`.

# %%
import rwkvlab

print(rwkvlab.device.describe())

# %%
import inspect
import math

import matplotlib.pyplot as plt
import torch

from rwkvlab import attention, wkv6

torch.set_printoptions(precision=4, sci_mode=False)


inputs = wkv6.random_inputs   # seeded r, k, v, w ≤ 0, u in the book's layout (printed below)
print(inspect.getsource(wkv6.random_inputs))


# %% [markdown]
# ## 1. From two numbers per channel to a matrix per head
#
# Recall RWKV-4's operator from chapter 3, for one channel:
#
# $$
# \mathrm{wkv}_t = \frac{\sum_{i<t} e^{-(t-1-i)w + k_i} v_i + e^{u+k_t} v_t}
#                       {\sum_{i<t} e^{-(t-1-i)w + k_i} + e^{u+k_t}} .
# $$
#
# Three things about it limit what a layer can store. Each channel is its own little memory of
# one number (plus its normaliser), so a layer of width `D` remembers `D` numbers. The key
# enters only through `e^{k_i}` — a positive weight — so there is no way to *address* the
# memory: the receptance `σ(r_t)` gates the result afterwards but cannot ask for a particular
# past token. And every channel forgets at a fixed rate `w`, whatever the text says.
#
# The Eagle/Finch paper (App. B) names the first change in one sentence:
#
# > The main change from RWKV-4 to RWKV-5 is the elimination of denominator and incorporation
# > of matrix states.
#
# Split the `D` channels into `H` heads of size `K = V = D/H` (64 in the released models).
# Inside a head the key is no longer a weight but a *vector address*: the outer product
# `k_t v_tᵀ` stores the whole value vector in every key row, in proportion to that row's key
# component. The receptance becomes a query: `r_tᵀ S` mixes the rows of the memory by how much
# `r_t` agrees with each key channel, exactly as `φ(q_t)·φ(k_i)` does in linear attention
# (chapter 1, §8), here with `φ` the identity, no denominator and a decay. Unrolled,
# with a constant decay (RWKV-5, Eq. 6 of the paper),
#
# $$
# o_t = \sum_{i<t} \big(r_t \odot e^{(t-1-i)w} \odot k_i\big)^\top \mathbf 1 \; v_i
#       \;+\; (r_t \odot u \odot k_t)^\top \mathbf 1 \; v_t ,
# $$
#
# which is linear attention with a per-channel, exponentially decaying relative position
# weight: the score of the pair `(t, i)` is `Σ_κ r_t[κ] k_i[κ] e^{(t−1−i) w[κ]}`. A head now
# remembers `K·V` numbers instead of a few per channel. For a layer of width `D = 2048` with
# heads of `K = 64`, the cell below counts the two states as the package holds them: RWKV-4's
# numerator, denominator and running maximum per channel against `H·K·V = D·K`.

# %%
from rwkvlab import wkv4

D_layer, K_head = 2048, 64
x1 = torch.zeros(1, 1, D_layer)
_, state4 = wkv4.recurrent(x1, x1, torch.ones(D_layer), torch.zeros(D_layer), output_final_state=True)
z6 = torch.zeros(1, 1, D_layer // K_head, K_head)
_, state6 = wkv6.naive(z6, z6, z6, z6, torch.zeros(D_layer // K_head, K_head), output_final_state=True)
n4, n6 = sum(t.numel() for t in state4), state6.numel()
print(f"WKV state of one layer, D = {D_layer}: RWKV-4 {n4} numbers (3 per channel), RWKV-6 {n6} (H·K·V = D·K)")
assert n4 == 3 * D_layer and n6 == D_layer * K_head

# %% [markdown]
# RWKV-6 changes one more thing: the decay `w` becomes `w_t`, computed from the token (section
# 5). Unrolled (Eq. 19 of the paper), the past token `i` is seen by token `t` through the product
# of the decays of the tokens strictly *between* them:
#
# $$
# S_{t-1} = \sum_{i<t} \operatorname{diag}\Big(\prod_{j=i+1}^{t-1} e^{w_j}\Big) k_i v_i^\top .
# $$
#
# The product starts at `j = i + 1` (token `i`'s own decay never touches its own write) and
# ends at `t − 1` (token `t`'s decay is applied only when `S_t` is formed, after token `t` has
# read). We will check both ends numerically in section 2.
#
# The package's loop is the recurrence, one token at a time, batched over heads:

# %%
print(inspect.getsource(wkv6.naive))

# %% [markdown]
# Three details in that code matter later. The state is kept in float32 (float64 inputs stay in
# float64, which turns the same function into a high-precision reference); the output comes
# back in the input dtype. The state is never updated in place, so autograd can differentiate
# every argument, `initial_state` included — the chunked and Triton rungs will be checked against
# these gradients. And `cu_seqlens` packs several sequences of different lengths into one row
# (`B == 1`), each with its own initial and final state, the layout FlashAttention and
# flash-linear-attention (FLA) use. One difference from FLA to keep in mind: `scale` defaults to
# 1 here, as in RWKV, while FLA's RWKV-6 functions default to `K^{−1/2}` (softmax attention's
# habit); FLA's RWKV-6 layer passes `scale=1.` explicitly.
#
# A first check: the package against the matrix equations written out literally — one head
# at a time, explicit `diag` matrices and outer products, in float64 — on inputs with several
# heads, `K ≠ V`, an odd length and a random initial state.

# %%
def matrix_loop(r, k, v, w, u, S0):
    """o_t = r_tᵀ(S_{t−1} + diag(u) k_t v_tᵀ), S_t = diag(e^{w_t}) S_{t−1} + k_t v_tᵀ, literally, float64."""
    B, T, H, K = r.shape
    o = torch.zeros(B, T, H, v.shape[-1], dtype=torch.float64)
    S_final = torch.zeros_like(S0, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            S = S0[b, h].double()
            for t in range(T):
                kv = torch.outer(k[b, t, h].double(), v[b, t, h].double())
                o[b, t, h] = r[b, t, h].double() @ (S + torch.diag(u[h].double()) @ kv)
                S = torch.diag(torch.exp(w[b, t, h].double())) @ S + kv
            S_final[b, h] = S
    return o, S_final


r, k, v, w, u = inputs(2, 23, 2, 8, 6)
S0 = torch.randn(2, 2, 8, 6, generator=torch.Generator().manual_seed(1))
o, S = wkv6.naive(r, k, v, w, u, initial_state=S0, output_final_state=True)
print("o", tuple(o.shape), o.dtype, "| final state", tuple(S.shape), S.dtype)
rwkvlab.check("wkv6 naive vs float64 matrix loop", (o, S), matrix_loop(r, k, v, w, u, S0), 1e-5)

# %% [markdown]
# ## 2. Which state does the read-out use?
#
# A transcription of RWKV-6 that circulates in notes (appendix, misstatement 5) writes the
# recurrence as
#
# > ```
# > h_t = h_{t-1} * exp(w_t) + k_t ⊗ v_t       # Decay + outer product update
# > o_t = sum((h_t + u * k_t ⊗ v_t) * r_t)     # Readout with current-token bonus
# > ```
#
# while code written from the same description usually reads `h` *before* updating it. The two
# disagree, and the code is right. The paper's recurrent form (Eqs. 8–9) is `wkv' = s + diag(u) kᵀv`,
# `s' = diag(w) s + kᵀv` — the paper uses row vectors, so its `kᵀv` is our outer product
# `k vᵀ` — and the read-out uses `s`, the state before the token. The official CUDA
# kernel (`RWKV-LM/RWKV-v5/cuda/wkv6_cuda.cu`) does the same: it accumulates `r·(u·kv + s)` into
# the output and only then sets `s = s·w + kv`. So does FLA's reference loop.
#
# What does the `h_t` transcription compute? Substitute the update into it:
#
# $$
# r_t^\top(S_t + \operatorname{diag}(u) k_t v_t^\top)
#   = (r_t \odot e^{w_t})^\top S_{t-1} + r_t^\top \operatorname{diag}(1 + u)\, k_t v_t^\top .
# $$
#
# Two things differ. The current token is counted twice — once through `S_t`, which already
# holds `k_t v_tᵀ`, and once through the bonus — so its weight is `1 + u` instead of `u`. And
# the past is decayed one step further, by the current token's `e^{w_t}`. Written with
# `r'_t = r_t ⊙ e^{w_t}`, the right-hand side is
# `r'_tᵀ(S_{t−1} + diag(u'_t) k_t v_tᵀ)` with `u'_t = (1 + u) ⊙ e^{−w_t}`: the `h_t` read-out
# **is** the RWKV-6 recurrence, with a rescaled receptance and a bonus that changes from token
# to token. So it is not a different kind of model. But it is not RWKV-6 as parameterised
# either, because RWKV-6's bonus `u` is one learned vector per head: as soon as `w_t` depends on
# the token, no constant `u'` reproduces it, and official weights run through the `h_t` form give
# other outputs. (Whether a model trained in the `h_t` form would do as well is a question this
# chapter does not test.)
#
# We assert each of these statements: the `h_t` version differs from the official one; it equals
# the official recurrence with `r ⊙ e^{w_t}` and the token-dependent bonus `(1 + u) e^{−w_t}`;
# with no decay (`w = 0`) that is the official one with `u + 1`; with a constant decay (RWKV-5's
# case) the bonus is constant again and it is the official one with `r ⊙ e^{w}` and
# `u' = (1 + u) e^{−w}`; and with RWKV-6's data-dependent decay, no constant `u'` repairs it.

# %%
def readout_after_update(r, k, v, w, u):
    """The circulating transcription: update first, then read h_t (plus the bonus). Not RWKV-6."""
    B, T, H, K = r.shape
    S = torch.zeros(B, H, K, v.shape[-1], dtype=torch.float64)
    out = []
    for t in range(T):
        kv = k[:, t, :, :, None].double() * v[:, t, :, None, :].double()
        S = torch.exp(w[:, t].double())[..., None] * S + kv
        out.append(torch.einsum("bhk,bhkv->bhv", r[:, t].double(), S + u.double()[None, :, :, None] * kv))
    return torch.stack(out, 1)


r, k, v, w, u = [x.double() for x in inputs(1, 16, 2, 4, 4, seed=2)]
official = wkv6.naive(r, k, v, w, u)[0]
ht_form = readout_after_update(r, k, v, w, u)
gap = rwkvlab.rel_err(ht_form, official)
print(f"h_t read-out vs official RWKV-6: rel diff {gap:.2f}")
assert gap > 0.1

# exactly: RWKV-6's recurrence with r' = r ⊙ e^{w_t} and the token-dependent bonus u'_t = (1+u) e^{-w_t};
# the bonus term is local (it never enters the state), so it is added on the side
r_resc = r * torch.exp(w)
u_tok = (1 + u)[None, None] * torch.exp(-w)                              # [B, T, H, K]: one bonus per token
bonus = torch.einsum("bthk,bthv->bthv", r_resc * u_tok * k, v)
rwkvlab.check("h_t read-out == RWKV-6 recurrence with r·e^{w_t} and bonus (1+u)·e^{-w_t}",
              ht_form, wkv6.naive(r_resc, k, v, w, torch.zeros_like(u))[0] + bonus, 1e-12)

# no decay: only the double count remains, and it is exactly a bonus of u + 1
w0 = torch.zeros_like(w)
rwkvlab.check("h_t read-out, w = 0  ==  official with u+1",
              readout_after_update(r, k, v, w0, u), wkv6.naive(r, k, v, w0, u + 1)[0], 1e-12)

# constant decay (RWKV-5): also the past is decayed once more, a fixed rescaling of r and u
w_const = w[:, :1].expand_as(w).contiguous()
rwkvlab.check("h_t read-out, constant w  ==  official with r·e^w, (1+u)·e^-w",
              readout_after_update(r, k, v, w_const, u),
              wkv6.naive(r * torch.exp(w_const), k, v, w_const, (1 + u) * torch.exp(-w_const[0, 0]))[0], 1e-12)

# data-dependent decay: neither u + 1 nor the best constant bonus u' (least squares per head,
# since the official output is linear in u') repairs it
err_u1 = rwkvlab.rel_err(ht_form, wkv6.naive(r, k, v, w, u + 1)[0])
print(f"h_t read-out vs official with u+1 under data-dependent w: rel diff {err_u1:.2f}")
base = wkv6.naive(r, k, v, w, torch.zeros_like(u))[0]                  # official output without bonus
feats = (r * k)[..., None] * v[..., None, :]                          # ∂o_t[v]/∂u'[κ] = r_t[κ] k_t[κ] v_t[v]
u_best = torch.stack([torch.linalg.lstsq(feats[0, :, h].permute(0, 2, 1).reshape(-1, u.shape[1]),
                                         (ht_form - base)[0, :, h].reshape(-1, 1)).solution[:, 0]
                      for h in range(u.shape[0])])
err_best = rwkvlab.rel_err(ht_form, wkv6.naive(r, k, v, w, u_best)[0])
print(f"h_t read-out vs official with the best constant u': rel diff {err_best:.2f}")
assert err_u1 > 0.1 and err_best > 0.1

# %% [markdown]
# The same off-by-one lurks in the unrolled sum: the weight of past token `i` seen from token
# `t` is `∏_{j=i+1}^{t−1} e^{w_j}`. We can read it off the package by feeding a single nonzero
# key at position `i` and probing with `r = 1`: the output at `t` is then exactly that product
# (times `v_i`).

# %%
T, i0 = 10, 3
r1, k1, v1, w1, u1 = [x.double() for x in inputs(1, T, 1, 1, 1, seed=3, decay=0.1)]
k1 = torch.zeros_like(k1)
k1[0, i0] = 1.0
r1, v1 = torch.ones_like(r1), torch.ones_like(v1)
seen = wkv6.naive(r1, k1, v1, w1, u1)[0][0, :, 0, 0]
expected = torch.tensor([0.0] * i0 + [u1[0, 0].item()] +
                        [torch.exp(w1[0, i0 + 1:t, 0, 0].sum()).item() for t in range(i0 + 1, T)], dtype=torch.float64)
print("weight of token 3 seen from t = 0..9:", [f"{x:.3f}" for x in seen.tolist()])
rwkvlab.check("unrolled weight = u at t = i, then prod_{j=i+1}^{t-1} e^{w_j}", seen, expected, 1e-12)

# %% [markdown]
# Token 3 is invisible before it arrives, is seen with the bonus `u` at its own position, with
# weight exactly 1 by the next token (no decay has been applied yet: `e^{w_3}` never touches it)
# and then shrinks by one factor per token in between.
#
# ## 3. The bonus `u`
#
# Why treat the current token separately at all? Without `u` the recurrence would either ignore
# the current token (read before the update) or give it weight 1 in every channel (read after).
# The bonus lets each key channel decide how much the token being processed should count,
# relative to the memory: `u[κ]` can be larger than the weight of anything in the past, or
# negative. In RWKV-4 the bonus sat inside the exponent, `e^{u + k_t}`; now that keys are
# addresses rather than log-weights it multiplies linearly, `r_t ⊙ u ⊙ k_t`. In the effective
# attention matrix (section 7) it is the diagonal.
#
# One consequence we use in chapter 6: the bonus term never enters the state, so a chunked
# algorithm can compute it as a separate, purely local diagonal.
#
# ## 4. Where the denominator went: heads and GroupNorm
#
# RWKV-4 divided by the decayed sum of key weights; its output was a weighted *average* of
# values, at most as large as the largest value. RWKV-6's output is a weighted *sum*, and the
# size of that sum depends on the decays: with a constant factor `e^{w}` a stream of equal writes
# `k vᵀ` fills the state up to `1/(1 − e^{w})` of them (a geometric series), from under two at
# `e^{w} = 0.37` to a thousand at `e^{w} = 0.999` (computed below, also by running the
# recurrence). The normalisation moved *after* the read-out: the block applies a LayerNorm
# to each head's output separately (the paper notes this is a GroupNorm with `H` groups),
# Eq. 7: `o_t = concat(SiLU(g_t) ⊙ LayerNorm(r_t · wkv_t)) W_o`. In the official code the norm's
# epsilon is `1e-5 · 8² = 64e-5`.
#
# A per-head norm removes any positive factor that multiplies a head's whole output. The WKV
# output is linear in the values and the initial state together, so scaling both by `c` (or
# anything else that scales a head's memory uniformly) scales the output by `c`, and the norm
# undoes it. With `eps = 0` the invariance is exact for every `c`. With the official
# `eps = 64e-5` it holds while the head's output variance is well above `eps`, and fails
# deliberately when the output is tiny: `eps` is the floor that stops the norm from blowing
# noise up to unit size. We assert both sides.

# %%
for f in (0.37, 0.999):
    T_fill = 20_000                                   # long enough for 0.999^T to vanish
    ones = torch.ones(1, T_fill, 1, 1, dtype=torch.float64)
    _, S_fill = wkv6.naive(ones, ones, ones, torch.full_like(ones, math.log(f)), torch.zeros(1, 1, dtype=torch.float64),
                           output_final_state=True)
    print(f"e^w = {f}: stationary state {S_fill.item():.2f} writes, 1/(1 - e^w) = {1 / (1 - f):.2f}")
    assert abs(S_fill.item() - 1 / (1 - f)) < 1e-6 * (1 / (1 - f))

# %%
from rwkvlab.model import x060                      # the RWKV-6 model that chapter 13 runs

assert abs(x060.GROUPNORM_EPS - 1e-5 * 8 ** 2) < 1e-15   # the models' eps: 1e-5 · head_size_divisor²


def head_norm(o, eps=x060.GROUPNORM_EPS):
    """Per-head LayerNorm without affine weights, as GroupNorm(H groups) over the H·V channels."""
    B, T, H, V = o.shape
    return torch.nn.functional.group_norm(o.reshape(B * T, H * V), H, eps=eps).reshape(B, T, H, V)


r, k, v, w, u = inputs(1, 32, 2, 8, 8, seed=4)
S0 = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(5))
o = wkv6.naive(r, k, v, w, u, initial_state=S0)[0]
for c in (0.01, 10.0, 1000.0):
    o_c = wkv6.naive(r, k, c * v, w, u, initial_state=c * S0)[0]
    rwkvlab.check(f"GroupNorm(eps=0) unchanged when v, S0 are scaled by {c:g}", head_norm(o_c, eps=0), head_norm(o, eps=0), 1e-6)
    if c >= 1:
        rwkvlab.check(f"GroupNorm(eps=64e-5) unchanged when v, S0 are scaled by {c:g}", head_norm(o_c), head_norm(o), 1e-3)
    else:
        err = rwkvlab.rel_err(head_norm(o_c), head_norm(o))
        print(f"GroupNorm(eps=64e-5) at scale {c:g}: rel diff {err:.1f} (output variance now below eps)")
        assert err > 0.1
base = head_norm(o)
# per head the normalised output has mean 0 and variance ~1, whatever the scale
assert base.mean(-1).abs().max() < 1e-5 and (base.var(-1, unbiased=False) - 1).abs().max() < 1e-2

# %%
factors = torch.linspace(0.3, 0.995, 30)
r, k, v, _, u = inputs(1, 256, 1, 16, 16, seed=6)
raw_rms, normed_rms = [], []
for f in factors:
    w_f = torch.full_like(r, float(torch.log(f)))
    o_f = wkv6.naive(r, k, v, w_f, u)[0][:, 128:]            # after the warm-up
    raw_rms.append(o_f.pow(2).mean().sqrt().item())
    normed_rms.append(head_norm(o_f).pow(2).mean().sqrt().item())
# random walk: for independent standard-normal r, k, v the output variance per column is
# Σ_κ (Σ_n f^{2n} + u_κ²) = K / (1 − f²) + Σ_κ u_κ²  (past tokens, then the bonus)
predicted = [(r.shape[-1] / (1 - f ** 2) + u.pow(2).sum()).sqrt().item() for f in (factors[0], factors[-1])]
growth, growth_pred = raw_rms[-1] / raw_rms[0], predicted[1] / predicted[0]
print(f"raw RMS grows {growth:.1f}x from factor {factors[0]:.3f} to {factors[-1]:.3f} "
      f"(random-walk prediction {growth_pred:.1f}x); after the norm: {min(normed_rms):.3f} .. {max(normed_rms):.3f}")
assert raw_rms[-1] > 3 * raw_rms[0]                       # slow decay: a much larger sum
assert abs(growth / growth_pred - 1) < 0.3                # ... about as large as a random walk predicts
assert max(abs(x - 1) for x in normed_rms) < 1e-2          # normalised: unit size throughout

fig, ax = plt.subplots(figsize=(6, 3.2))
ax.semilogy(factors.numpy(), raw_rms, "o-", label="raw WKV output")
ax.semilogy(factors.numpy(), normed_rms, "s-", label="after per-head GroupNorm")
ax.set_xlabel("decay factor $e^{w}$ (constant)")
ax.set_ylabel("RMS of output")
ax.set_title("The output's size follows the memory length; the norm removes it")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# The raw output grows several-fold as the memory lengthens. Random values add up like a random
# walk, so its size follows the square root of the sum of the *squared* weights,
# `Σ_n e^{2nw} = 1/(1 − e^{2w})`, plus the bonus's share — the prediction printed beside the
# measurement. After the norm every decay gives the same unit-sized output. Note where the bonus sits: inside the norm
# in RWKV-5/6 (it is part of `r_t · wkv_t`), but added *after* the norm in RWKV-7 (Eq. 21 of
# the RWKV-7 paper) — a detail to get right when we build that block in chapter 12.
#
# ## 5. Data-dependent decay: Finch's low-rank map
#
# In RWKV-5 each channel of each head had one learned decay. Finch computes it from the token.
# Per the paper (Eqs. 14–18), the token-shifted input `x` goes through a small two-layer map of
# rank 64. (The token shift is chapter 4's, except that Finch makes the mixing weight itself
# data-dependent, "ddlerp" (Eqs. 14–15): `ddlerp(a, b) = a + (b − a) ⊙ lora(a + (b − a) ⊙ μ_x)`;
# `rwkvlab.model.x060` implements it.)
#
# $$
# d_t = \lambda + \tanh(x A)\,B, \qquad w_t = \exp(-\exp(d_t)) \in (0, 1) ,
# $$
#
# with `A ∈ R^{D×64}`, `B ∈ R^{64×D}` and a learned offset `λ`. The paper's `w_t` is the factor;
# the kernels (ours, FLA's) take its **log**, `log w_t = −exp(d_t) ≤ 0`, and that is what
# `rwkvlab` calls `w`. Descriptions of RWKV-6 often say the decay is "stored in log-log
# space"; that is true of the model's parameter `d`, not of what the kernel receives. Two
# `exp`s, three different objects: keep the names straight.
#
# `rwkvlab.wkv6.finch_log_decay` computes the kernel's `w` from `x` (we leave out the token
# shift, which is a separate piece):

# %%
print(inspect.getsource(wkv6.finch_log_decay))

# %% [markdown]
# With random weights — `λ` spread from slow (`−6`) to fast (`+1`) channels — here is what a
# short "text" of random embeddings does to four channels. The left panel shows the per-token
# factor `e^{w_t}`; the right one the product of factors since token 0, i.e. how
# much of token 0 each channel still holds at time `t`, on a log scale. A constant decay would
# give straight lines on the right; data-dependent decay bends them — a channel can hold on to a
# token for a while and then drop it.

# %%
g = torch.Generator().manual_seed(7)
D, R, T = 16, 4, 48
x = torch.randn(T, D, generator=g)
lam = torch.linspace(-6.0, 1.0, D)                  # offsets from slow (d = −6) to fast (d = 1) channels
A = 0.5 * torch.randn(D, R, generator=g)
Bm = 0.4 * torch.randn(R, D, generator=g)
w_t = wkv6.finch_log_decay(x, lam, A, Bm).double()  # [T, D], the log decay the kernels take
factor = torch.exp(w_t)
assert torch.all(w_t < 0) and torch.all((factor > 0) & (factor < 1))
kept = torch.exp(torch.cumsum(w_t, 0))              # Π_{j≤t} e^{w_j}: the memory of token 0
assert torch.all(kept[1:] <= kept[:-1])             # memory never grows back

fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4))
for ch in (0, 5, 10, 15):
    a1.plot(factor[:, ch].numpy(), label=f"channel {ch} (λ = {lam[ch]:.1f})")
    a2.semilogy(kept[:, ch].numpy())
a2.set_ylim(1e-30, 2)
a1.set_xlabel("token t"); a1.set_ylabel("decay factor $e^{w_t}$"); a1.set_title("per-token decay")
a2.set_xlabel("token t"); a2.set_ylabel("$\\prod_{j\\leq t} e^{w_j}$"); a2.set_title("what is left of token 0")
a1.legend(fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# The fast channels forget a token in one or two steps; the slow ones hold it across the whole
# window, and every channel's rate wanders with the input. In a trained model that freedom is
# what lets a head keep a name across a paragraph and flush it at a full stop.

# %% [markdown]
# ### The state over time
#
# The same decays, now inside one head ($K = V = 16$, the 16 channels above as its key
# channels), with random keys and values, run token by token with `wkv6.step`. The left three
# panels are the state $S_t$ at three times; the right panel is the size of each key channel's
# row of the state over time. Fast channels (the bottom rows, $\lambda$ near 1) hold only the
# last token or two; slow ones (top) keep accumulating, and the rate of each changes with the
# input.

# %%
kh = torch.randn(1, T, 1, D, generator=g, dtype=torch.float64)
vh = torch.randn(1, T, 1, D, generator=g, dtype=torch.float64)
rh = torch.zeros_like(kh)
wh = w_t[None, :, None, :]
uh = torch.zeros(1, D, dtype=torch.float64)
S_t, states = None, []
for t in range(T):
    _, S_t = wkv6.step(rh[:, t], kh[:, t], vh[:, t], wh[:, t], uh, S_t)
    states.append(S_t[0, 0])
_, S_final = wkv6.naive(rh, kh, vh, wh, uh, output_final_state=True)
rwkvlab.check("token-by-token wkv6.step states vs naive final state", states[-1], S_final[0, 0], 1e-12)
row_norm = torch.stack([S.norm(dim=1) for S in states], 1)                     # [K, T]
slow, fast = row_norm[:4, T // 2:].mean().item(), row_norm[-4:, T // 2:].mean().item()
print(f"mean row size over the second half: 4 slowest channels {slow:.1f}, 4 fastest {fast:.1f}")
assert slow > 3 * fast

fig, axes = plt.subplots(1, 4, figsize=(14, 3.2), gridspec_kw={"width_ratios": [1, 1, 1, 2.2]})
lim = max(S.abs().max().item() for S in states)
for ax, t in zip(axes[:3], (7, 23, 47)):
    ax.imshow(states[t].numpy(), cmap="RdBu", vmin=-lim, vmax=lim)
    ax.set_title(f"$S_t$ at t = {t}", fontsize=9)
    ax.set_xlabel("value channel")
    ax.set_ylabel("key channel")
im = axes[3].imshow(row_norm.numpy(), aspect="auto", cmap="viridis")
axes[3].set_xlabel("token t")
axes[3].set_ylabel("key channel (slow → fast)")
axes[3].set_title("size of each row of the state, ‖S_t[κ, :]‖", fontsize=9)
fig.colorbar(im, ax=axes[3], shrink=0.8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ### Where the decay sits in the RWKV-6 time-mix block
#
# Chapter 13 builds the whole block; here is the path from a token's input to the block's
# output, so that the decay is seen in place (RWKV-LM `RWKV_Tmix_x060`, Finch paper Eqs.
# 14–22):
#
# ```
#  x_t ─┬──────────────────────────────────────────────────────────────┐
#       │  x_{t-1} (token shift)                                        │
#       ▼                                                               │
#  ddlerp: x_□ = x_t + (x_{t-1} − x_t) ⊙ (μ_□ + lora_□(·))   for □ ∈ {r, k, v, w, g}
#       │
#       ├── x_r W_r ──► r ─┐
#       ├── x_k W_k ──► k ─┤
#       ├── x_v W_v ──► v ─┼──► WKV-6 per head:  o_t = r_tᵀ (S_{t-1} + diag(u) k_t v_tᵀ)
#       ├── x_w ──► d_t = λ + tanh(x_w A) B ──► w_t = −exp(d_t) ─┘      S_t = diag(e^{w_t}) S_{t-1} + k_t v_tᵀ
#       │                                                                   │
#       │                                                         GroupNorm (H groups, eps 64e-5)
#       │                                                                   │
#       └── x_g W_g ──► SiLU ──────────────────────────────────────────► ⊙ ──► W_o ──► out_t
# ```
#
# Five token-shifted inputs (one per projection, each with its own data-dependent mixing
# weight), the WKV core with the bonus inside the read-out, a per-head norm, a SiLU gate, and the
# output map. RWKV-7 (chapter 12) keeps the shape but changes the core, moves the bonus after
# the norm and replaces SiLU by a sigmoid low-rank gate.

# %% [markdown]
# ## 6. Why the decay lives in log space
#
# Three reasons, each of which we can check.
#
# **Products become sums.** What matters is the decay *between* two tokens, a product of many
# factors; in logs it is a difference of cumulative sums, `c_{t−1} − c_i` with `c_t = Σ_{j≤t} w_j`.
# Chapter 6's chunked algorithm is built on that difference, and on the fact that it is never
# positive.
#
# **Slow decays survive low precision.** The slowest channels matter most, and their factors
# sit just below 1, where a 16-bit float has few values: bfloat16's spacing there is
# `2^{-8} ≈ 0.004`. A factor of `0.9975` (`d = −6`) is stored as `0.99609` or `1.0`; either is
# a different memory length. The log `−0.0025` is stored with bfloat16's full relative
# precision. Below we compute how much of a token is left after 500 steps, from the factor
# rounded to bfloat16 and from the log rounded to bfloat16:

# %%
d = torch.tensor(-6.0, dtype=torch.float64)
log_factor = -torch.exp(d)                                   # the kernel's w
true_left = torch.exp(500 * log_factor)
from_factor = torch.exp(500 * torch.log(torch.exp(log_factor).to(torch.bfloat16).double()))
from_log = torch.exp(500 * log_factor.to(torch.bfloat16).double())
print(f"left after 500 steps: exact {true_left:.4f} | from bf16 factor {from_factor:.4f} | from bf16 log {from_log:.4f}")
assert abs(from_log / true_left - 1) < 0.01 and abs(from_factor / true_left - 1) > 0.5

# %% [markdown]
# **The sign is built in.** `w = −exp(d)` is negative for every `d`, so no parameter value the
# optimiser picks can make the memory grow. The package refuses a positive log decay outright:

# %%
try:
    wkv6.naive(*inputs(1, 4, 1, 4, 4)[:3], torch.full((1, 4, 1, 4), 0.1), torch.zeros(1, 4))
except ValueError as e:
    print("ValueError:", e)
else:
    raise AssertionError("a positive log decay must be rejected")

# %% [markdown]
# The same source note gives the gradient of the loss with respect to the decay as
# `dw = −Σ(dS ⊙ S_prev) · exp(w) · exp(−exp(w))`. Read with its `w` being the model's `d`, that
# is right; with respect to the kernel's log decay the chain rule stops one step earlier:
# `∂L/∂w_t[κ] = e^{w_t[κ]} Σ_v dS_t[κ, v] S_{t−1}[κ, v]`. Both are checked against autograd on a
# single step:

# %%
g = torch.Generator().manual_seed(8)
S_prev = torch.randn(4, 3, generator=g, dtype=torch.float64)
kv = torch.randn(4, 3, generator=g, dtype=torch.float64)
dS = torch.randn(4, 3, generator=g, dtype=torch.float64)           # upstream gradient of S_t
d_param = torch.randn(4, generator=g, dtype=torch.float64).requires_grad_()
w_log = (-torch.exp(d_param)).detach().requires_grad_()
for p, wl in ((d_param, -torch.exp(d_param)), (w_log, w_log)):
    (torch.exp(wl)[:, None] * S_prev + kv).mul(dS).sum().backward()
grad_w = torch.exp(w_log.detach()) * (dS * S_prev).sum(1)
grad_d = -(dS * S_prev).sum(1) * torch.exp(d_param.detach()) * torch.exp(-torch.exp(d_param.detach()))
rwkvlab.check("dL/dw (log decay) = e^w · Σ_v dS·S_prev", w_log.grad, grad_w, 1e-12)
rwkvlab.check("dL/dd (Finch parameter) = −Σ dS·S_prev · e^d · e^(−e^d)", d_param.grad, grad_d, 1e-12)

# %% [markdown]
# ## 7. The attention matrix a WKV-6 head computes
#
# Starting from a zero state, the output of a head is a linear map of its values, `o = A v`,
# with a lower-triangular `T × T` matrix:
#
# $$
# A_{tj} = \sum_{\kappa} r_t[\kappa]\, k_j[\kappa]\, e^{\,c_{t-1}[\kappa] - c_j[\kappa]} \;\; (j < t), \qquad
# A_{tt} = \sum_\kappa r_t[\kappa]\, u[\kappa]\, k_t[\kappa], \qquad A_{tj} = 0 \;\; (j > t),
# $$
#
# with `c_t = Σ_{m≤t} w_m` the cumulative log decay. It is causal like masked softmax attention,
# but it is not a probability matrix: its rows do not sum to one, entries can be negative, and
# each score is a *sum over channels* of products that each fade at their own rate. Computing
# `A` costs `T²K` and is the heart of chapter 6 — there, restricted to one chunk.
# `rwkvlab.wkv6.attention_matrix` forms it directly (every exponent `c_{t−1} − c_j ≤ 0`):

# %%
print(inspect.getsource(wkv6.attention_matrix))

# %%
T, K = 24, 8
r, k, v, w, u = inputs(1, T, 1, K, K, seed=9, decay=0.3)
u = u.abs() * 2                                   # a visible, positive bonus on the diagonal
A = wkv6.attention_matrix(r, k, w, u)[0, 0]
rwkvlab.check("attention matrix · v == wkv6 naive", torch.einsum("ij,jv->iv", A, v[0, :, 0]),
              wkv6.naive(r, k, v, w, u)[0][0, :, 0], 1e-5)

# softmax attention on the same queries (r) and keys, causal, scale K^-1/2
scores = (r[0, :, 0] @ k[0, :, 0].T) / K ** 0.5
P = torch.softmax(scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")), -1)
rwkvlab.check("softmax matrix · v == rwkvlab.attention.parallel", (P @ v[0, :, 0])[None, :, None],
              attention.parallel(r, k, v), 1e-5)

assert torch.all(A.triu(1) == 0) and torch.all(P.triu(1) == 0)          # both causal
assert torch.allclose(P.sum(-1), torch.ones(T))                          # softmax rows: probabilities
assert (A.sum(-1) - 1).abs().max() > 0.5 and (A < 0).any()               # WKV rows: neither

fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
lim = A.abs().max().item()
im0 = axes[0].imshow(A.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
axes[0].set_title("WKV-6 head: $A_{tj}$ (diagonal = bonus $u$)")
im1 = axes[1].imshow(P.numpy(), cmap="viridis")
axes[1].set_title("causal softmax attention: $P_{tj}$")
for ax, im in zip(axes, (im0, im1)):
    ax.set_xlabel("key position j"); ax.set_ylabel("query position t")
    fig.colorbar(im, ax=ax, fraction=0.046)
plt.tight_layout()
plt.show()

# %% [markdown]
# On the left: the strong diagonal is the bonus; just below it, the recent past with weights of
# either sign; further left, the entries fade — at a different speed in every row, because the
# decay depends on the tokens in between. On the right: softmax spreads a unit of probability
# over the past, and nothing forces it to fade with distance. The WKV matrix is what makes the
# recurrence possible: because every entry factors through a diagonal decay, the whole lower
# triangle can be carried forward in a `K × V` state instead of recomputed from all keys.
#
# ## 8. RNN mode and packed sequences
#
# At inference a model processes one token at a time, keeping only `S` per head. Each step
# costs `O(HKV)` work per sequence, whatever its position; the `O(B·T·H·K·V)` that the source
# note's complexity table lists "per step" is the cost of all `T` steps of a batch. `wkv6.step`
# is that single step; fed token by token it must reproduce the parallel forward exactly:

# %%
print(inspect.getsource(wkv6.step))

# %%
r, k, v, w, u = inputs(2, 12, 2, 8, 4, seed=10)
S0 = torch.randn(2, 2, 8, 4, generator=torch.Generator().manual_seed(11))
o_full, S_full = wkv6.naive(r, k, v, w, u, initial_state=S0, output_final_state=True)
S, outs = S0, []
for t in range(12):
    o_t, S = wkv6.step(r[:, t], k[:, t], v[:, t], w[:, t], u, S)
    outs.append(o_t)
rwkvlab.check("wkv6 step, token by token, vs full forward", (torch.stack(outs, 1), S), (o_full, S_full), 1e-6)

# %% [markdown]
# And the packed layout: three sequences of lengths 5, 1 and 10 in one row, each with its own
# initial state, must give what three separate calls give.

# %%
cu = torch.tensor([0, 5, 6, 16])
r, k, v, w, u = inputs(1, 16, 2, 4, 4, seed=12)
S0 = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(13))
o_pack, S_pack = wkv6.naive(r, k, v, w, u, initial_state=S0, output_final_state=True, cu_seqlens=cu)
sep = [wkv6.naive(r[:, a:b], k[:, a:b], v[:, a:b], w[:, a:b], u, initial_state=S0[n:n + 1], output_final_state=True)
       for n, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist()))]
rwkvlab.check("wkv6 varlen (cu_seqlens) vs separate runs",
              (o_pack, S_pack), (torch.cat([s[0] for s in sep], 1), torch.cat([s[1] for s in sep], 0)), 1e-6)

# %% [markdown]
# ## 9. A glance up the ladder
#
# The loop costs `T` sequential steps of `O(HKV)` work each — ideal for generating text. For
# training, a Python loop over tokens is hopeless, and even a fused loop (RWKV-LM's official CUDA
# kernel, parallel over batch, heads and channels only) leaves the GPU's matrix units idle: they
# want large matrix products. Chapter 6 rewrites the same
# operator in chunks: a `C × C` masked matrix like the one in section 7 inside each chunk, and
# the state passed between chunks. Chapter 7 turns both into Triton kernels. As a preview, the
# chunked rung already agrees with the loop:

# %%
r, k, v, w, u = inputs(2, 45, 2, 8, 8, seed=14)
rwkvlab.check("wkv6 chunked (C=16) vs naive", wkv6.chunked(r, k, v, w, u, chunk_size=16)[0], wkv6.naive(r, k, v, w, u)[0], 1e-5)

# %% [markdown]
# ## Summary
#
# - RWKV-5/6 replace RWKV-4's per-channel numerator and denominator by a `K × V` matrix per
#   head, written by rank-one outer products `k_t v_tᵀ` and read by the receptance `r_t` as a
#   query: linear attention with a per-channel decay.
# - The read-out uses the state **before** the current token, plus the bonus
#   `r_tᵀ diag(u) k_t v_t`. Reading `h_t` instead is the same recurrence with receptance
#   `r_t ⊙ e^{w_t}` and a token-dependent bonus `(1 + u) ⊙ e^{−w_t}`; with data-dependent decay no
#   constant `u` (RWKV-6's parameterisation) reproduces it.
# - The division is gone; a per-head GroupNorm (eps 64e-5) normalises the output instead, which
#   makes the block insensitive to the overall scale of each head's memory.
# - Finch's decay is data-dependent: `d_t = λ + tanh(xA)B`, factor `exp(−exp(d_t))`. Kernels take
#   the log of the factor, `w_t = −exp(d_t) ≤ 0`; products of decays become differences of
#   cumulative sums, and slow decays keep their precision.
# - One head computes `o = A v` with a causal, unnormalised, decay-weighted score matrix; the
#   recurrence is what lets it run in constant memory.
#
# ## Exercises
#
# 1. Show that with `K = V = 1`, `r = 1`, constant `w`, keys `e^{k}` and bonus `e^{u}`, RWKV-6's
#    head computes the numerator of RWKV-4's WKV (and, with `v = 1`, its denominator). Check
#    that the ratio of the two runs equals `rwkvlab.wkv4.naive`, which returns the normalised
#    WKV (mind the two decay conventions: `wkv4` takes the
#    paper's `w ≥ 0` with factor `e^{−w}`, `wkv6` the log decay `−w`).
# 2. For a constant decay, show that the strictly lower part of `A` (section 7) equals the
#    strictly lower part of the rank-`K` product `(r ⊙ e^{c−w})(k ⊙ e^{−c})ᵀ`, and check it
#    with `wkv6.attention_matrix`. Then make `T` large and the decay strong: which factor
#    overflows first in float32? (Chapter 6 is about this.)
# 3. Write the "read after update" recurrence of section 2 for GLA (`o_t = q_tᵀ S_t`, no bonus).
#    Which choice of `r` and `u` in `wkv6.naive` reproduces it exactly when the decay is constant?
# 4. The GroupNorm check in section 4 used tolerance `1e-3`. Derive how the error depends on the
#    scale `c` and the head's output variance, and confirm it by setting `eps=0`.
# 5. In section 5, change `λ` so that every channel has factor above 0.99. How long is the
#    memory of token 0 now? Plot the two panels again.
# 6. Use `wkv6.step` to generate 100 outputs from a random stream, then start again from the
#    state after 50 tokens. Check that the last 50 outputs agree — the property an inference
#    server relies on when it caches a prompt's state.

# %% [markdown]
# Short answers (the student edition hides them):
#
# ### BEGIN SOLUTION
# 1. With `K = V = 1`, `r = 1`, keys `e^{k}`, bonus `e^{u}` and log decay `−w`, the head computes
#    `Σ_{i<t} e^{−(t−1−i)w + k_i} v_i + e^{u + k_t} v_t`, RWKV-4's numerator; with `v = 1` the same
#    sum without `v_i`, its denominator.
# 2. `k ⊙ e^{−c}`: `e^{−c_j}` grows without bound along the sequence (`e^{c−w}` only shrinks
#    towards 0, which is harmless). With a constant decay `−c_j = (j+1)·|w|`, so it overflows
#    float32 once `(j+1)·|w| > 88.72`.
# 3. `r = q ⊙ e^{w}` and `u = e^{−w}` (so that `r ⊙ u = q`):
#    `(q ⊙ e^{w})ᵀ S_{t−1} + qᵀ k_t v_tᵀ = qᵀ(diag(e^{w}) S_{t−1} + k_t v_tᵀ) = qᵀ S_t`. The bonus is
#    one vector for all tokens, so this works only when the decay is constant.
# 5. A factor above 0.99 needs `d_t < ln(−ln 0.99) ≈ −4.60` for every token (`λ` below `−4.6`
#    minus the largest `|tanh(xA)B|`). Then `w_t > −0.01005`: token 0 fades by `e` only after
#    more than 99.5 tokens (half-life above 69 tokens), and at least `0.99^{48} ≈ 0.62` of it is
#    left at the end of the 48-token window.
# ### END SOLUTION

# %% [markdown]
# ### Exercises that check themselves
#
# Each cell below prints its exercise's statement, holds a solution between the markers
# `### BEGIN SOLUTION` and `### END SOLUTION` (the student edition, `python -m rwkvlab exercises
# student`, replaces it with a stub), and ends with `exercises.check`, which runs the function on
# seeded random cases — several heads, `K ≠ V`, `T = 1`, slow and fast decays, a random initial
# state — against `wkv6.naive` in float64, and says what is wrong if it is.
#
# 7. The state update, by hand: one token's `S_t = diag(e^{w_t}) S_{t−1} + k_t v_tᵀ` for a batch
#    of heads, with the decay on the right axis.

# %%
import torch

from rwkvlab import exercises

print(exercises.spec("05.7"))


def update(S, k, v, w):
    ### BEGIN SOLUTION
    # every key row κ of S shrinks by its own factor e^{w[κ]}; then the rank-one write k vᵀ
    return torch.exp(w)[..., :, None] * S + k[..., :, None] * v[..., None, :]
    ### END SOLUTION


exercises.check("05.7", update)

# %% [markdown]
# 8. One token of RNN mode: the read-out with the bonus from the state *before* the token, then
#    the update — the order section 2 argued for.

# %%
import torch

from rwkvlab import exercises

print(exercises.spec("05.8"))


def step(r, k, v, w, u, S):
    ### BEGIN SOLUTION
    kv = k[..., :, None] * v[..., None, :]                           # [B, H, K, V]
    o = torch.einsum("bhk,bhkv->bhv", r, S + u[None, :, :, None] * kv)  # read the old state + bonus
    return o, torch.exp(w)[..., :, None] * S + kv                    # only then decay and write
    ### END SOLUTION


exercises.check("05.8", step)

# %% [markdown]
# 9. Finch's decay from its low-rank map (section 5), returned as the log decay the kernels take.

# %%
import torch

from rwkvlab import exercises

print(exercises.spec("05.9"))


def log_decay(x, lam, A, B):
    ### BEGIN SOLUTION
    d = lam + torch.tanh(x @ A) @ B          # the model's parameter
    return -torch.exp(d)                     # log of the factor exp(−exp(d)): always < 0
    ### END SOLUTION


exercises.check("05.9", log_decay)
