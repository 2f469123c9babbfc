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
# # From additive memory to the delta rule: RWKV-7 as one SGD step
#
# Part II ended with RWKV-6, whose state only ever *adds*: every token writes an outer
# product $k_t v_t^\top$ into a decaying matrix. This chapter is about the one term RWKV-7 puts
# in front of that write. By the end of it you will be able to
#
# * read the state $S \in \mathbb{R}^{K\times V}$ as a linear map that should send each key
#   to its value, and write down the loss that says how far it is from doing so;
# * derive, in three lines, that one step of gradient descent on that loss *is* RWKV-7's update
#   with a particular choice of its arguments $a$, $b$ and $k$, and check it against autograd
#   to float64 precision, using the book's own `rwkvlab.wkv7`;
# * say exactly where the real model departs from that reading (its decoupled "replacement key"),
#   and what common transcriptions get loose about layouts and decays;
# * explain why the removal key is L2-normalised, by watching a state blow up when it is not;
# * bound every eigenvalue of the released model's transition matrix, and see why that bound
#   rules out the reflections that chapter 9 builds.
#
# The whole chapter is this one identity (state in K×V layout, acting from the left):
#
# $$
# \underbrace{S - \eta\,\hat k\,(S^\top \hat k - v)^\top}_{\text{one SGD step on } \tfrac12\|S^\top\hat k - v\|^2}
# \;=\;
# \underbrace{\operatorname{diag}(e^{w})\,S + b\,(a^\top S) + \tilde k\, v^\top}_{\text{RWKV-7's update}}
# \quad\text{with}\quad w = 0,\; a = -\hat k,\; b = \eta\,\hat k,\; \tilde k = \eta\,\hat k .
# $$

# %%
import rwkvlab

print(rwkvlab.device.describe())

# %%
import inspect
import math

import matplotlib.pyplot as plt
import torch

from rwkvlab import delta, wkv7

torch.set_printoptions(precision=4, sci_mode=False)

# %% [markdown]
# ## 1. The state is a map from keys to values
#
# Notation, as everywhere in the book: per head, keys $k_t, r_t \in \mathbb{R}^K$ (`r` is
# RWKV's query, the *receptance*), values $v_t \in \mathbb{R}^V$, and a state
# $S \in \mathbb{R}^{K\times V}$ whose rows are indexed by key channels. Reading the state with
# a query $q$ gives $S^\top q \in \mathbb{R}^V$. So $S$ is a linear map from key space to value
# space, and the natural job for it is associative memory: after seeing the pair $(k, v)$, it
# should send $k$ to $v$.
#
# RWKV-6 (and linear attention before it) writes a pair by adding an outer product,
# $S \leftarrow S + k v^\top$. Reading with the same key gives
#
# $$
# (S + k v^\top)^\top k \;=\; S^\top k + \|k\|^2\, v .
# $$
#
# With a unit key the new value comes back, *plus whatever the state already returned for
# $k$*. If the earlier keys are orthogonal to $k$, that extra term is zero and the memory is
# perfect. If not, the old content leaks in (crosstalk); and if the very same key is written
# twice, the two values are simply summed. An additive memory can accumulate, but it cannot
# *correct*. Here is that failure in four lines, with the state evolved by `rwkvlab.wkv7`
# (with $a = b = 0$ and no decay, its update is exactly the additive write):

# %%
g = torch.Generator().manual_seed(0)
K = V = 4
key = torch.nn.functional.normalize(torch.randn(K, generator=g, dtype=torch.float64), dim=0)
v_old, v_new = torch.randn(V, generator=g, dtype=torch.float64), torch.randn(V, generator=g, dtype=torch.float64)
keys, values = torch.stack([key, key]), torch.stack([v_old, v_new])

read_add = delta.recall(keys, values, key[None], rule="additive")[0]
print("new value        ", v_new)
print("additive read-out", read_add)
assert torch.allclose(read_add, v_old + v_new)       # the two writes were summed
assert not torch.allclose(read_add, v_new, atol=0.1)

# %% [markdown]
# ## 2. A loss for the memory, and its gradient
#
# Say what we want as a loss. After seeing $(k, v)$ we want $S^\top k$ to be $v$:
#
# $$
# L(S) \;=\; \tfrac12\,\big\|S^\top k - v\big\|^2 .
# $$
#
# Write $e = S^\top k - v \in \mathbb{R}^V$ for the residual. Entry $(i, j)$ of $S$ enters only
# component $j$ of $S^\top k$, as $S_{ij} k_i$, so $\partial L/\partial S_{ij} = k_i e_j$. In
# matrix form
#
# $$
# \nabla_S L \;=\; k\,(S^\top k - v)^\top \qquad (K \times V,\ \text{rank one}).
# $$
#
# In words: the gradient has the shape of a write, a key times a value-sized row, but the row
# is the *error* of the current read-out, not the value itself. The package's loss is the
# formula and nothing more:

# %%
print(inspect.getsource(delta.loss))

# %% [markdown]
# Autograd agrees with the hand-derived gradient:

# %%
S = torch.randn(K, V, generator=g, dtype=torch.float64, requires_grad=True)
k = torch.randn(K, generator=g, dtype=torch.float64)
v = torch.randn(V, generator=g, dtype=torch.float64)
delta.loss(S, k, v).backward()
grad_by_hand = torch.outer(k, S.detach().T @ k - v)
rwkvlab.check("dL/dS: autograd vs k (S^T k - v)^T", S.grad, grad_by_hand, tol=1e-12)

# %% [markdown]
# ## 3. One gradient step is RWKV-7's update
#
# Take one step of gradient descent with learning rate $\eta$:
#
# $$
# S' \;=\; S - \eta\,k\,(k^\top S - v^\top)
#    \;=\; (I - \eta\,k k^\top)\,S \;+\; \eta\,k\,v^\top .
# $$
#
# This is the **delta rule** (Widrow–Hoff): the state is moved along $k$ by a fraction $\eta$
# of its error. Two features matter. First, the write is still a rank-one outer product
# $\eta k v^\top$, as in RWKV-6. Second, before writing, the state is multiplied by
# $I - \eta k k^\top$, which *removes* (a fraction $\eta\|k\|^2$ of) what the state currently
# returns for $k$. With a unit key $\hat k$ and $\eta = 1$ this is an exact replacement: read
# back, $\hat k^\top S' = \hat k^\top S - \hat k^\top S + v^\top = v^\top$.
#
# RWKV-7's update, in the book's K×V layout (chapter 10 and `rwkvlab.wkv7` use the same), is
#
# $$
# S_t \;=\; \operatorname{diag}(e^{w_t})\,S_{t-1} \;+\; b_t\,(a_t^\top S_{t-1}) \;+\; k_t\,v_t^\top,
# \qquad o_t = S_t^\top r_t ,
# $$
#
# with $w_t \le 0$ the log decay. Its *transition* is the diagonal-plus-rank-one matrix
# $G_t = \operatorname{diag}(e^{w_t}) + b_t a_t^\top$, acting on the state from the left.
# Matching term by term with the SGD step:
#
# | SGD step | RWKV-7 argument |
# |---|---|
# | no decay | $w_t = 0$ |
# | $-\eta\,\hat k\,(\hat k^\top S)$ | $a_t = -\hat k$, $\;b_t = \eta\,\hat k$ |
# | $+\,\eta\,\hat k\,v^\top$ | written key $k_t = \eta\,\hat k$ |
#
# The learning rate can also be a vector $\eta \in (0,1)^K$, one rate per key channel: with
# $b = \eta \odot \hat k$ and written key $\eta \odot \hat k$ the update is
# $S - \operatorname{diag}(\eta)\,\nabla_S L$, gradient descent with a diagonal preconditioner.
# That is the form the RWKV-7 paper writes in its related-work discussion (with its own
# orientation, see §4). A decay $w_t < 0$ adds a shrinking of the old state:
#
# $$
# S_t = \operatorname{diag}(e^{w_t})\,S_{t-1} - \operatorname{diag}(\eta)\,\nabla L(S_{t-1}) .
# $$
#
# Both terms are computed from the same $S_{t-1}$: the gradient is taken at the *undecayed*
# state, and the decay sits beside it, outside the loss. In optimiser language that is
# **decoupled** weight decay (the form AdamW made standard; Loshchilov & Hutter, arXiv
# 1711.05101), not "decay first, then a gradient step at the decayed state", which would read
# $D S - \operatorname{diag}(\eta)\nabla L(D S)$ with $D = \operatorname{diag}(e^{w_t})$ and is
# a different map (the check below tells them apart). `rwkvlab.delta.sgd_as_wkv7` builds these
# arguments; the state itself is evolved by `rwkvlab.wkv7`, whose loop is printed below it.

# %%
print(inspect.getsource(delta.sgd_as_wkv7))

# %%
print(inspect.getsource(wkv7.naive))

# %% [markdown]
# Now the identity itself. A batch of two sequences, two heads, K = 6, V = 5, a per-channel
# learning rate and a decay, everything in float64. On one side: autograd differentiates
# $L$ at the initial state, and we step $S \leftarrow \operatorname{diag}(e^w) S -
# \operatorname{diag}(\eta)\nabla L$ by hand. On the other: one call of `wkv7.step` with the
# arguments from `sgd_as_wkv7`. They must agree to float64 rounding.

# %%
B, H, K, V = 2, 2, 6, 5
k = torch.randn(B, H, K, generator=g, dtype=torch.float64)
v = torch.randn(B, H, V, generator=g, dtype=torch.float64)
S0 = torch.randn(B, H, K, V, generator=g, dtype=torch.float64)
eta = 0.1 + 0.8 * torch.rand(B, H, K, generator=g, dtype=torch.float64)   # one rate per key channel
w = -0.5 * torch.rand(B, H, K, generator=g, dtype=torch.float64)          # log decay ≤ 0

# gradient descent, by autograd
S = S0.clone().requires_grad_()
k_hat = k / k.norm(dim=-1, keepdim=True)
delta.loss(S, k_hat, v).sum().backward()
S_sgd = torch.exp(w)[..., None] * S0 - eta[..., None] * S.grad

# RWKV-7, by rwkvlab.wkv7 (T = 1: the [B, T, H, K] arguments lose their time axis for step)
args = delta.sgd_as_wkv7(k[:, None], v[:, None], eta[:, None], log_decay=w[:, None])
_, S_rwkv = wkv7.step(torch.zeros_like(k), *(args[n][:, 0] for n in ("w", "k", "v", "a", "b")), S0)

err = rwkvlab.check("one SGD step (autograd) vs one wkv7 step, float64", S_rwkv, S_sgd, tol=1e-12)
assert (S_rwkv - S_sgd).abs().max().item() <= 1e-6

# the other reading, "decay, then a gradient step at the decayed state", is not what wkv7 does
S_dec = (torch.exp(w)[..., None] * S0).requires_grad_()
delta.loss(S_dec, k_hat, v).sum().backward()
S_coupled = S_dec.detach() - eta[..., None] * S_dec.grad
gap = rwkvlab.rel_err(S_rwkv, S_coupled)
print(f"wkv7 step vs 'decay, then the gradient at the decayed state': rel diff {gap:.2f}")
assert gap > 1e-2

# %% [markdown]
# The same holds over a whole sequence: run `wkv7.naive` over T tokens and you have run
# online gradient descent over the stream of pairs, one step per token. With $\eta = 1$ and
# unit keys, each freshly written pair is retrieved exactly, the property the additive rule
# lacked in §1:

# %%
read_delta = delta.recall(keys, values, key[None], rule="delta")[0]
print("new value     ", v_new)
print("delta read-out", read_delta)
rwkvlab.check("delta rule: overwritten key returns the new value", read_delta, v_new, tol=1e-12)

# %% [markdown]
# ## 4. What the real model does, and what common transcriptions get loose
#
# The SGD identity is clean, but the RWKV-7 model does not use exactly that parameterisation,
# and a transcription of the update that circulates in notes (appendix, misstatements 7, 8 and
# 10) matches no single layout. Three points, in order of importance.
#
# **The replacement key is decoupled.** In the released model (RWKV-7 paper, Peng et al. 2025,
# arXiv 2503.14456v2, Eqs. 4–7 and 15–17; the official `RWKV_Tmix_x070` code), a single key
# projection $k_t$ gives two keys:
#
# * the *removal key* $\kappa_t = k_t \odot \xi$, normalised per head: $\hat\kappa_t =
#   \kappa_t/\|\kappa_t\|$; the kernel gets $a = -\hat\kappa_t$ and
#   $b = \hat\kappa_t \odot \mathrm{iclr}_t$, where $\mathrm{iclr}_t = \sigma(\cdot) \in (0,1)^K$
#   is the "in-context learning rate";
# * the *replacement key* $\tilde k_t = k_t \odot (1 + (\mathrm{iclr}_t - 1)\odot\alpha)$, which
#   is written with the value and is **not** normalised.
#
# The update is a gradient step only when the written key equals $\mathrm{iclr}_t \odot
# \hat\kappa_t$ (and plain SGD also needs $w = 0$). In general the model does a gradient step
# on $\tfrac12\|S^\top\hat\kappa - v\|^2$ with rate vector $\mathrm{iclr}$, *and then* an extra
# additive write of $(\tilde k - \mathrm{iclr}\odot\hat\kappa)\,v^\top$. The paper calls this
# freedom its "relaxed value replacement rule". So the SGD reading is an identity for the
# tied choice and an analogy for the trained model. The decomposition is exact, and we can
# check it:

# %%
k_raw = torch.randn(1, 1, H, K, generator=g, dtype=torch.float64)
xi = 1 + torch.rand(H, K, generator=g, dtype=torch.float64)            # removal-key multiplier ξ
alpha = torch.rand(H, K, generator=g, dtype=torch.float64)             # replacement-rate booster α
iclr = torch.sigmoid(torch.randn(1, 1, H, K, generator=g, dtype=torch.float64))
kappa_hat = torch.nn.functional.normalize(k_raw * xi, dim=-1)
k_repl = k_raw * (1 + (iclr - 1) * alpha)
v1, S1 = v[:1, None], S0[:1]
w1 = w[:1, None]

_, S_model = wkv7.naive(torch.zeros_like(k_raw), w1, k_repl, v1, -kappa_hat, kappa_hat * iclr,
                        initial_state=S1, output_final_state=True)
step_args = delta.sgd_as_wkv7(kappa_hat, v1, iclr, log_decay=w1)
_, S_step = wkv7.naive(torch.zeros_like(k_raw), *(step_args[n] for n in ("w", "k", "v", "a", "b")),
                       initial_state=S1, output_final_state=True)
extra_write = torch.einsum("hk,hv->hkv", (k_repl - iclr * kappa_hat)[0, 0], v1[0, 0])
rwkvlab.check("model update = SGD step + extra write (k~ - iclr*kappa^) v^T", S_model[0], S_step[0] + extra_write, tol=1e-12)
assert rwkvlab.rel_err(S_model, S_step) > 1e-3      # with the decoupled key it is not the SGD step

# %% [markdown]
# **Layout: which side the transition acts on.** That transcription writes the RWKV-7 update as
#
# > `S_t = diag(exp(-exp(w_t))) @ S_{t-1} + S_{t-1} @ α_t @ β_t^T + k_t ⊗ v_t`,  `o_t = S_t @ r_t`
#
# which mixes two layouts: the decay acts from the left, the rank-one term from the right,
# and the read-out $S r$ treats the state as V×K. The RWKV-7 paper (§4.1) and its CUDA kernel
# keep the state as V×K (rows are values) and multiply the transition from the **right**:
# $\mathit{wkv}_t = \mathit{wkv}_{t-1}\,(\operatorname{diag}(w_t) - \hat\kappa_t^\top
# (\mathrm{iclr}_t\odot\hat\kappa_t)) + v_t^\top\tilde k_t$ in the paper's row-vector notation
# (its $w_t$ is the decay factor and its $a_t$ the iclr), with the state applied to the key
# in the loss. A second rendering that also circulates, `S_t = S_{t-1} D_t + S_{t-1} α_t β_t^T + v_t k_t^T`,
# is consistent: that is this V×K layout. This book, like flash-linear-attention,
# stores the transpose, K×V, so the same transition acts from the **left**:
# $S_t = G_t S_{t-1} + k_t v_t^\top$ with $G_t = \operatorname{diag}(e^{w_t}) + b_t a_t^\top$,
# and $o_t = S_t^\top r_t$. The transcription's $\alpha, \beta$ are the kernel's $a, b$ (with
# $\alpha = -\hat\kappa$, $\beta = \hat\kappa \odot \mathrm{iclr}$); transposing
# $S\alpha\beta^\top$ of the V×K state gives $\beta\,(\alpha^\top S)$ of the K×V one, which is
# our $b\,(a^\top S)$.
#
# **Decay: which logarithm.** The decay factor $\exp(-\exp(w))$ is the official code's
# convention, where the code's $w$ is a "log-log" decay (RWKV-LM computes
# $w = -\mathrm{softplus}(-(\cdot)) - 0.5$ and the kernel takes $\exp(-\exp(w))$). This book's
# kernels, like FLA's, take the **log decay** itself, $w_{\text{ours}} = -\exp(w_{\text{code}})
# \le 0$, with factor $e^{w_{\text{ours}}}$. In the released parameterisation (paper Eq. 12)
# this is $w_{\text{ours}} = -e^{-0.5}\,\sigma(d_t) \in (-e^{-0.5}, 0)$, so the per-step factor
# lies in $(e^{-e^{-0.5}}, 1) \approx (0.545, 1)$. Finally, the common gloss "$S\alpha\beta^\top$
# simulates online gradient descent on $L = \tfrac12\|v - k^\top S\|^2$" is right in spirit,
# with the caveat above: it is exact only for the tied written key.

# %% [markdown]
# ## 5. Why the removal key is normalised
#
# The transition of a gradient step, $I - \eta\,k k^\top$, leaves every direction orthogonal
# to $k$ alone (eigenvalue 1, $K-1$ times) and scales the $k$ direction by
#
# $$
# \lambda = 1 - \eta\,\|k\|^2 .
# $$
#
# With a unit key and $\eta \in (0, 1]$ this is in $[0, 1)$: the map has spectral norm 1, it
# never stretches the state, and it shrinks the $\hat k$ component (strictly, it is
# non-expansive rather than a contraction: only the $\hat k$ direction shrinks). In fact the
# state obeys a simple budget. Column by column (one value channel $c$ at a time) a step
# with $\eta = 1$ is the orthogonal projection of the column $s$ onto the hyperplane
# $\{x : \hat k^\top x = v_c\}$, whose squared norm is $\|s\|^2 - (\hat k^\top s)^2 + v_c^2$;
# a step with $\eta < 1$ is a convex combination of $s$ and that projection. Together,
#
# $$
# \|S_t\|_F^2 \;\le\; \|S_{t-1}\|_F^2 + \eta\,\|v_t\|^2
# \qquad (\|\hat k_t\| = 1,\ 0 < \eta \le 1,\ w = 0).
# $$
#
# Without normalisation nothing bounds $\lambda$. A raw key with unit-variance entries has
# $\|k\|^2 \approx K$, so with $K = 16$ and $\eta = 0.5$ the $k$ direction is multiplied by
# about $1 - 8 = -7$ at every step. Each step flips and stretches the component along its key;
# over a stream of random keys that compounds into exponential growth. Both runs below use
# `wkv7.step`, one token at a time, on the same keys and values.

# %%
T, K = 64, 16             # 64 tokens suffice; much longer and the raw run overflows float32
k_seq = torch.randn(1, T, 1, K, generator=g)
v_seq = torch.randn(1, T, 1, K, generator=g)
eta = 0.5
runs = {"unit keys (k̂)": delta.sgd_as_wkv7(k_seq, v_seq, eta),
        "raw keys (k)": delta.sgd_as_wkv7(k_seq, v_seq, eta, normalize=False)}
norms = {name: [] for name in runs}
budget, budgets = 0.0, []
r0 = torch.zeros(1, 1, K)
for name, args in runs.items():
    S = torch.zeros(1, 1, K, K)
    for t in range(T):
        _, S = wkv7.step(r0, *(args[n][:, t] for n in ("w", "k", "v", "a", "b")), S)
        norms[name].append(S.norm().item())
for t in range(T):
    budget += eta * v_seq[0, t, 0].double().pow(2).sum().item()
    budgets.append(math.sqrt(budget))

raw_eigs = 1 - eta * k_seq.norm(dim=-1).pow(2)
print(f"1 - eta*|k|^2 over the raw keys: median {raw_eigs.median():.1f}, "
      f"share below -1: {(raw_eigs < -1).float().mean():.2f}")
print(f"final |S|_F: unit keys {norms['unit keys (k̂)'][-1]:.3g}, raw keys {norms['raw keys (k)'][-1]:.3g}")
assert all(n <= b * (1 + 1e-5) for n, b in zip(norms["unit keys (k̂)"], budgets))   # the budget holds
assert (raw_eigs < -1).float().mean() > 0.9                                       # mostly outside [-1, 1]
assert not (norms["raw keys (k)"][-1] < 1e12)                                       # and the state blows up

# %%
fig, ax = plt.subplots(figsize=(6.4, 3.6))
for name, ns in norms.items():
    ax.semilogy(range(1, T + 1), ns, label=name)
ax.semilogy(range(1, T + 1), budgets, "k:", label=r"budget $\sqrt{\eta\sum\|v_t\|^2}$")
ax.set_xlabel("token t")
ax.set_ylabel(r"$\|S_t\|_F$")
ax.set_title(r"Delta rule with $\eta = 0.5$: normalised vs raw removal keys")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# The unit-key run settles at a norm set by the values it stores; the raw-key run leaves
# the plot's sensible range within a few dozen tokens. The lesson carries over to the real
# model directly: RWKV-7 normalises the removal key $\hat\kappa$ (paper Eq. 15) so that the
# transition is safe whatever the key projection learns, and it does **not** normalise the
# replacement key $\tilde k$, which only enters the additive write, where scale is harmless.

# %% [markdown]
# ## 6. Eigenvalues of the transition
#
# Now the released parameterisation, with decay included:
#
# $$
# G \;=\; \operatorname{diag}(e^{w}) + b\,a^\top
#   \;=\; \operatorname{diag}(e^{w}) - (\mathrm{iclr}\odot\hat\kappa)\,\hat\kappa^\top,
# \qquad w \in (-e^{-0.5}, 0)^K,\ \ \mathrm{iclr} \in (0,1)^K,\ \ \|\hat\kappa\| = 1 .
# $$
#
# $G$ is not symmetric, so its eigenvalues could a priori be complex. They are not. Let
# $D = \operatorname{diag}(\mathrm{iclr})^{1/2}$ (invertible because every iclr is positive)
# and $z = D\hat\kappa = \sqrt{\mathrm{iclr}}\odot\hat\kappa$. Then
#
# $$
# D^{-1}\,G\,D \;=\; \operatorname{diag}(e^{w}) - D^{-1}\operatorname{diag}(\mathrm{iclr})\,
# \hat\kappa\hat\kappa^\top D \;=\; \operatorname{diag}(e^{w}) - z z^\top ,
# $$
#
# a symmetric matrix with the same eigenvalues as $G$. So every eigenvalue is real. Subtracting
# the positive semi-definite rank-one $zz^\top$, whose only non-zero eigenvalue is
# $\|z\|^2 = \sum_i \mathrm{iclr}_i\hat\kappa_i^2 < 1$, can lower each eigenvalue of the
# diagonal part by at most $\|z\|^2$ and raises none (Weyl's inequality); by interlacing, at
# most one eigenvalue drops below $\min_i e^{w_i}$. Hence
#
# $$
# \lambda(G) \in \big[\min_i e^{w_i} - \|z\|^2,\ \max_i e^{w_i}\big]
# \subset \big(e^{-e^{-0.5}} - 1,\ 1\big) \approx (-0.455,\ 1),
# $$
#
# and the spectral radius is **strictly below 1** (in exact arithmetic; float32 can round the
# top end to exactly 1, see the end of this section). This bound is our own derivation. The paper
# (§4, after Eq. 19) states that the eigenvalues lie in $[-1, 1]$ and refers to its Appendix C
# for the details; we have not checked that appendix, so nothing here leans on it.
# `eigenvalue_bounds` computes the interval:

# %%
print(inspect.getsource(delta.eigenvalue_bounds))

# %% [markdown]
# We sample a few thousand transitions the way the released model produces them (the raw
# decay and iclr logits are drawn wide so that both ends of each range occur), compute every
# eigenvalue numerically, and assert the bound. The transition matrix is also checked to be the
# map `wkv7` applies, so we are bounding the kernel and not a private formula.

# %%
count, K = 3000, 8
w, kk, iclr = delta.released_transitions(count, K, torch.Generator().manual_seed(1))
G = delta.transition(w, -kk, kk * iclr)                                  # [count, K, K]
ev = torch.linalg.eigvals(G)
lo, hi = delta.eigenvalue_bounds(w, kk, iclr)

S_probe = torch.randn(1, 1, K, 3, generator=g, dtype=torch.float64)
z1, z3 = torch.zeros(1, 1, 1, K, dtype=torch.float64), torch.zeros(1, 1, 1, 3, dtype=torch.float64)
_, S_next = wkv7.naive(z1, w[:1, None, None], z1, z3, -kk[:1, None, None], (kk * iclr)[:1, None, None],
                       initial_state=S_probe, output_final_state=True)
rwkvlab.check("wkv7 step with k = 0 vs G @ S", S_next[0, 0], G[0] @ S_probe[0, 0], tol=1e-12)

print(f"largest |imaginary part|: {ev.imag.abs().max().item():.1e}")
print(f"eigenvalues span [{ev.real.min().item():.3f}, {ev.real.max().item():.6f}]; "
      f"bound (e^(-e^-0.5) - 1, 1) = ({math.exp(-math.exp(-0.5)) - 1:.3f}, 1)")
assert ev.imag.abs().max().item() < 1e-9
assert (ev.real.min(-1).values >= lo - 1e-12).all() and (ev.real.max(-1).values <= hi + 1e-12).all()
assert ev.abs().max().item() < 1
assert ((ev.real < torch.exp(w).amin(-1, keepdim=True) - 1e-12).sum(-1) <= 1).all()

# %%
order = torch.argsort(lo)
idx = torch.arange(count)
fig, ax = plt.subplots(figsize=(6.4, 3.8))
ax.fill_between(idx.numpy(), lo[order].numpy(), hi[order].numpy(), color="C0", alpha=0.25,
                label=r"bound $[\min e^w - \|z\|^2,\ \max e^w]$")
ax.plot(idx.repeat_interleave(K).numpy(), ev.real[order].reshape(-1).numpy(), ",", color="C1",
        label="eigenvalues (all real)")
ax.axhline(1, color="k", lw=0.8)
ax.axhline(-1, color="k", lw=0.8, ls="--")
ax.axhline(math.exp(-math.exp(-0.5)) - 1, color="C3", lw=0.8, ls=":", label=r"$e^{-e^{-0.5}} - 1 \approx -0.455$")
ax.set_ylim(-1.1, 1.1)
ax.set_xlabel("sampled transition (sorted by lower bound)")
ax.set_ylabel("eigenvalue")
ax.set_title("Released RWKV-7 transitions: real spectrum, radius < 1")
ax.legend(loc="lower right", fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# Two consequences, one for each end of the interval.
#
# At the top, eigenvalues close to 1 are allowed (a channel with $w \to 0$ and a removal key
# orthogonal to it), so the state *can* hold information for a long time. It never holds it
# exactly: every direction decays a little.
#
# At the bottom, negative eigenvalues occur, but no lower than about $-0.455$. The paper's
# Eq. 19 writes $G \approx (I - 2\hat\kappa^\top\hat\kappa)\operatorname{diag}(w)$ and calls
# $G$ "a scaled approximation" of a Householder matrix; the bound shows how approximate that
# is. The exact reflection $I - 2\hat k\hat k^\top$, which flips the sign of the $\hat k$
# direction, needs $b = 2\hat k$, i.e. an iclr of 2, outside the sigmoid's range. In our
# kernel it is one argument away:

# %%
k_hat = torch.nn.functional.normalize(torch.randn(K, generator=g, dtype=torch.float64), dim=0)
R = delta.transition(torch.zeros(K, dtype=torch.float64), -k_hat, 2 * k_hat)    # a = −k̂, b = 2k̂, w = 0
ev_R = torch.linalg.eigvalsh(R)
print("eigenvalues of the reflection:", ev_R)
assert abs(ev_R[0].item() + 1) < 1e-12 and torch.allclose(ev_R[1:], torch.ones(K - 1, dtype=torch.float64))
rwkvlab.check("reflection applied twice is the identity", R @ R, torch.eye(K, dtype=torch.float64), tol=1e-12)

# %% [markdown]
# ### Two fine points: zero is allowed, and float32 reaches 1
#
# The interval's lower end can be negative, so somewhere in between lies 0: $G$ can be exactly
# singular, and with mild decay, not only at extreme settings. The matrix determinant lemma
# gives it in closed form,
#
# $$
# \det G = \det\!\big(\operatorname{diag}(e^{w})\big)\,\big(1 + a^\top\operatorname{diag}(e^{-w})\,b\big)
#        = \prod_i e^{w_i}\;\Big(1 - \sum_i \mathrm{iclr}_i\,\hat\kappa_i^2\,e^{-w_i}\Big),
# $$
#
# which vanishes when $\sum_i \mathrm{iclr}_i\hat\kappa_i^2 e^{-w_i} = 1$. Since $\|\hat\kappa\| = 1$,
# that sum is a weighted mean of $\mathrm{iclr}_i e^{-w_i}$: it equals 1 when the iclr equals
# the decay factor in every channel (say both 0.9), and it passes 1 when the iclr is the larger.
# At the crossing one direction of the state is erased exactly by that token; beyond it one
# eigenvalue is negative.
#
# And "strictly below 1" is a statement in exact arithmetic. Kernels compute the factor
# $e^{w}$ in float32, where the largest number below 1 is $1 - 2^{-24}$: once
# $|w| < 2^{-25}$, a correctly rounded $e^{w}$ is exactly 1. With $w = -e^{-0.5}\sigma(d)$ that
# happens for $\sigma(d) < 2^{-25}e^{0.5} \approx 4.9\cdot 10^{-8}$, i.e. $d$ below about $-16.8$
# (a library's float32 exp may switch a little earlier; the cell prints where torch's does). A
# channel whose removal key is zero there then keeps its row of the state forever, eigenvalue
# exactly 1.

# %%
Kd = 6
w_d = torch.log(torch.full((Kd,), 0.9, dtype=torch.float64))
kap = torch.nn.functional.normalize(torch.randn(Kd, generator=g, dtype=torch.float64), dim=0)
iclr_d = torch.full((Kd,), 0.9, dtype=torch.float64)
G_d = delta.transition(w_d, -kap, kap * iclr_d)
det_formula = torch.exp(w_d).prod() * (1 - (iclr_d * kap**2 * torch.exp(-w_d)).sum())
print(f"iclr = 0.9, e^w = 0.9: det G = {torch.linalg.det(G_d).item():.1e} (formula {det_formula.item():.1e}), "
      f"smallest |eigenvalue| {torch.linalg.eigvals(G_d).abs().min().item():.1e}")
assert abs(det_formula.item()) < 1e-15 and torch.linalg.eigvals(G_d).abs().min().item() < 1e-12
# the formula against numerical determinants on the sampled released transitions
det_all = torch.exp(w).prod(-1) * (1 - (iclr * kk**2 * torch.exp(-w)).sum(-1))
rwkvlab.check("det G formula vs torch.linalg.det, 3000 released transitions", det_all, torch.linalg.det(G), tol=1e-12)
print(f"sampled transitions with det G < 0 (one eigenvalue below 0): {(det_all < 0).sum().item()} of {count}")

# float32: the decay factor rounds to exactly 1 below sigma(d) ~ 4.9e-8
sig = torch.logspace(-9, -6, 3001, dtype=torch.float64)
factor32 = torch.exp((-math.exp(-0.5) * sig).float())
threshold = sig[factor32 == 1].max().item()
print(f"float32: e^w == 1 exactly for sigma(d) <= {threshold:.2e}; 2^-25 e^0.5 = {2**-25 * math.exp(0.5):.2e}")
# a correctly rounded exp switches at 2^-25 e^0.5; a library's float32 exp may switch a little
# earlier (it need only be within an ulp), so the assert allows any such library
assert 0.25 < threshold / (2**-25 * math.exp(0.5)) < 2.05 and (factor32[sig > 1.01 * threshold] < 1).all()
w32 = torch.full((1, 1, 1, Kd), -math.exp(-0.5) * 1e-8)                   # sigma(d) = 1e-8
kap32 = torch.zeros(1, 1, 1, Kd)
kap32[..., 1:] = 1 / math.sqrt(Kd - 1)                                    # removal key zero on channel 0
S32 = torch.randn(1, 1, Kd, 3, generator=torch.Generator().manual_seed(9))
S_run = S32
zr = torch.zeros(1, 1, 1, Kd)
for _ in range(1000):
    _, S_run = wkv7.naive(zr, w32, zr, torch.zeros(1, 1, 1, 3), -kap32, 0.5 * kap32, initial_state=S_run,
                          output_final_state=True)
assert torch.equal(S_run[0, 0, 0], S32[0, 0, 0])                          # row 0 unchanged, bit for bit
print("float32, sigma(d) = 1e-8: after 1000 tokens row 0 of the state is unchanged bit for bit")

# %% [markdown]
# In SGD terms the reflection is a gradient step with $\eta = 2$: it overshoots the target by
# exactly the current error, $\hat k^\top S' = 2v^\top - \hat k^\top S$. As a memory that is
# useless; as a *state machine* it is the most useful thing in this chapter. An eigenvalue of
# $-1$ lets a state flip sign forever without decaying, which is what parity needs, and
# products of reflections give every permutation. Chapter 9 builds that construction, runs
# it through `wkv7`, and is careful about which parameterisation of RWKV-7 the published
# expressivity results concern. Whatever they concern, the bound above says the released
# parameterisation cannot realise the reflection.
#
# ## Summary
#
# * The RWKV state is a linear map from keys to values. The additive write of RWKV-6 adds to
#   what the map returns; the delta rule replaces it.
# * One gradient step on $\tfrac12\|S^\top\hat k - v\|^2$ is $(I - \eta\hat k\hat k^\top)S +
#   \eta\hat k v^\top$, which is RWKV-7's update with $w = 0$, $a = -\hat k$,
#   $b = \eta\hat k$ and written key $\eta\hat k$. A vector rate gives a diagonally
#   preconditioned step, and a decay adds *decoupled* weight decay (the gradient is taken at
#   the undecayed state). We verified it against autograd, in float64, through `rwkvlab.wkv7`.
# * The released model decouples the written key $\tilde k$ from $\mathrm{iclr}\odot\hat\kappa$
#   (the "relaxed value replacement rule"), so its update is a gradient step plus an extra
#   additive write: an identity for the tied key, an analogy for the trained model.
# * The paper's layout is V×K with the transition on the right; ours (and FLA's) is K×V with
#   the transition on the left. The `exp(-exp(w))` often quoted is the code's log-log decay; our
#   kernels take the log decay $w = -e^{-0.5}\sigma(d) \le 0$.
# * Normalising the removal key keeps the transition's eigenvalues in $[0,1]$ for
#   $\eta \le 1$ and bounds the state; raw keys put an eigenvalue near $1 - \eta K$ and the
#   state explodes.
# * With the released ranges every eigenvalue of $G$ is real and lies in
#   $[\min e^w - \|z\|^2, \max e^w] \subset (-0.455, 1)$: no exact reflection. The reflection
#   ($b = 2\hat k$) has eigenvalue $-1$. Inside the interval, 0 is allowed
#   ($\det G = \prod e^{w_i}(1 - \sum \mathrm{iclr}_i\hat\kappa_i^2 e^{-w_i})$), and in float32 the
#   top end is reached: $e^{w}$ rounds to 1 once $\sigma(d) < 4.9\cdot10^{-8}$.
#
# ## Exercises
#
# 1. Show that with a unit key and $\eta = 1$, the delta rule's new state differs from the old
#    one only by a rank-one matrix, and that reading back with any key orthogonal to
#    $\hat k$ returns exactly what it returned before. Check it with `delta.recall`.
# 2. For which $\eta$ does the step $I - \eta\hat k\hat k^\top$ have all eigenvalues in
#    $[-1, 1]$? In $(-1, 1]$? Rerun the norm experiment of §5 with unit keys and
#    $\eta = 1.9$ and $\eta = 2.1$ and explain what you see.
# 3. Derive the gradient of the loss in the paper's V×K layout, $\tfrac12\|S k - v\|^2$ with
#    column vectors, and show that the resulting step is the transpose of ours.
# 4. The bound of §6 needs $\mathrm{iclr}_i > 0$ for the similarity transform. Argue by
#    continuity that the interval still contains every eigenvalue when some $\mathrm{iclr}_i = 0$,
#    then test a few random cases numerically with `delta.transition`.
# 5. Let the written key be $\tilde k = c\,\mathrm{iclr}\odot\hat\kappa$ with a scalar $c \ne 1$.
#    Which loss is the update a gradient step on now? (Hint: rescale the target value.)
# 6. With $K = 2$, show that $G = \operatorname{diag}(e^w) + b\,a^\top$ is never the rotation by
#    90° (compare $G_{11}G_{22}$ with $G_{12}G_{21}$). Complex eigenvalues are still possible:
#    find $w, a, b$ that give one, and explain why the released choice $a = -\hat\kappa$,
#    $b = \mathrm{iclr}\odot\hat\kappa$ never does.

# %% [markdown]
# Short answers to exercises 2, 3, 5 and 6:
#
# ### BEGIN SOLUTION
# 2. The eigenvalues are 1 ($K-1$ times) and $1-\eta$: all in $[-1, 1]$ for $0 \le \eta \le 2$, in
#    $(-1, 1]$ for $0 \le \eta < 2$. Per column, $\|(I-\eta\hat k\hat k^\top)s\|^2 = \|s\|^2 -
#    \eta(2-\eta)(\hat k^\top s)^2$. At $\eta = 1.9$ every step still shrinks the $\hat k$ component
#    (flipping its sign), and the norm levels off, higher than at $\eta = 1$; at $\eta = 2.1$ each step
#    stretches it by $1.1$ and the norm grows geometrically. Run a few hundred tokens to see it: over
#    the 64 tokens of §5 both curves still climb (with the §5 keys, about 70 against $4\cdot 10^7$
#    after 2000 tokens).
# 3. With the V×K state, $\nabla_S \tfrac12\|Sk - v\|^2 = (Sk - v)\,k^\top$, so the step is
#    $S - \eta(Sk - v)k^\top = S(I - \eta kk^\top) + \eta\,v k^\top$: the transpose of
#    $(I-\eta kk^\top)S^\top + \eta\,k v^\top$, our step on $S^\top$.
# 5. With $w = 0$ the update is $S - \mathrm{diag}(\mathrm{iclr})\,\hat\kappa\,(S^\top\hat\kappa - c\,v)^\top$:
#    a gradient step, with rate $\mathrm{iclr}$ per key channel, on $\tfrac12\|S^\top\hat\kappa - c\,v\|^2$.
#    The target value is scaled by $c$.
# 6. A 90° rotation needs $G_{11} = G_{22} = 0$, i.e. $a_1b_1 = -e^{w_1}$ and $a_2b_2 = -e^{w_2}$; then
#    $G_{12}G_{21} = (a_1b_1)(a_2b_2) = e^{w_1+w_2} > 0$, where the rotation has $G_{12}G_{21} = -1$.
#    Complex eigenvalues: $w = (0, \ln 0.1)$, $a = (1, 1)$, $b = (-1, 1)$ give
#    $G = \begin{pmatrix}0 & -1\\ 1 & 1.1\end{pmatrix}$, trace $1.1$, determinant 1, eigenvalues
#    $0.55 \pm 0.835i$. The released choice is similar to the symmetric $\mathrm{diag}(e^w) - zz^\top$
#    (§6) whenever every $\mathrm{iclr}_i > 0$, so its eigenvalues are real.
# ### END SOLUTION

# %% [markdown]
# ### Exercises that check themselves
#
# Each cell below prints its exercise's statement, holds a solution between the markers
# `### BEGIN SOLUTION` and `### END SOLUTION` (the student edition, `python -m rwkvlab exercises
# student`, puts a stub in its place), and ends with `exercises.check`, which runs the function on
# seeded random cases against an independent reference (autograd, `wkv7.naive` in float64, a general
# eigensolver) and names the case and the likely mistake when something is off.
#
# 7. The delta rule as one gradient step, with the gradient of §2 written by hand: a learning rate per
#    key channel and weight decay, as in §3's check.

# %%
import torch

from rwkvlab import exercises

print(exercises.spec("08.7"))


def sgd_step(S, k, v, lr, w):
    ### BEGIN SOLUTION
    k_hat = k / k.norm(dim=-1, keepdim=True)
    residual = torch.einsum("bhkv,bhk->bhv", S, k_hat) - v          # S^T k_hat - v, a row of length V
    grad = k_hat[..., :, None] * residual[..., None, :]              # k_hat (S^T k_hat - v)^T
    return torch.exp(w)[..., None] * S - lr[..., None] * grad
    ### END SOLUTION


exercises.check("08.7", sgd_step)

# %% [markdown]
# 8. One RWKV-7 step in the book's K×V layout, the transition acting from the left and the read-out
#    seeing the updated state; the checker runs it over whole sequences.

# %%
import torch

from rwkvlab import exercises

print(exercises.spec("08.8"))


def wkv7_step(r, w, k, v, a, b, S):
    ### BEGIN SOLUTION
    aS = torch.einsum("bhk,bhkv->bhv", a, S)                         # a^T S, from the old state
    S_new = (torch.exp(w)[..., None] * S                             # decay the key rows
             + b[..., None] * aS[..., None, :]                       # rank-one removal b (a^T S)
             + k[..., None] * v[..., None, :])                       # write k v^T
    return torch.einsum("bhk,bhkv->bhv", r, S_new), S_new            # read the updated state
    ### END SOLUTION


exercises.check("08.8", wkv7_step)

# %% [markdown]
# 9. The spectrum of the released transition through §6's similarity transform: a symmetric
#    eigenproblem whose answer is real by construction.

# %%
import torch

from rwkvlab import exercises

print(exercises.spec("08.9"))


def transition_spectrum(w, k, iclr):
    ### BEGIN SOLUTION
    k_hat = k / k.norm(dim=-1, keepdim=True)
    z = iclr.sqrt() * k_hat                                          # z = D k_hat, D = diag(sqrt(iclr))
    M = torch.diag_embed(torch.exp(w)) - z[..., :, None] * z[..., None, :]   # D^-1 G D, symmetric
    return torch.linalg.eigvalsh(M)                                  # real, ascending
    ### END SOLUTION


exercises.check("08.9", transition_spectrum)
