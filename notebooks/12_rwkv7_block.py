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
# # A whole RWKV-7 block, from the official formulas
#
# Part III built the heart of RWKV-7, the state update
# $S_t = \operatorname{diag}(e^{w_t})\,S_{t-1} + b_t\,(a_t^\top S_{t-1}) + k_t v_t^\top$,
# on every rung of the ladder. A language model needs much more around it: where do $w$, $a$,
# $b$ and $k$ come from, what happens to the read-out, and what are the other half of the
# parameters doing? This chapter answers all of it. At its end you will be able to
#
# * name every tensor in an official RWKV-7 (`x070`) checkpoint, say which equation of the
#   paper it belongs to and what shape it has;
# * trace one layer of the model by hand, piece by piece, and check each piece against the
#   package (`rwkvlab.rwkv7_ops`, `rwkvlab.wkv7`, `rwkvlab.model`);
# * read the pictures that matter: how far back each channel looks (token shift), how fast it
#   forgets (decay), and how hard it overwrites (the in-context learning rate);
# * load a BlinkDL checkpoint with `rwkvlab.model.load` and generate text from it with
#   `python -m rwkvlab generate`.
#
# The whole block fits in one picture, written as equations. For a layer input $x_t$ (after
# LayerNorm), with $x_{t-1}$ the previous token's input and everything per head of size $N$:
#
# $$
# \begin{aligned}
# x^{\square}_t &= x_t + (x_{t-1} - x_t)\odot\mu_\square, \qquad \square\in\{r,w,k,v,a,g\} &&\text{token shift}\\
# r_t,\;k_t,\;v_t &= x^r_t W_r,\;\; x^k_t W_k,\;\; x^v_t W_v &&\text{projections}\\
# w_t &= -e^{-1/2}\,\sigma\big(\lambda_w + \tanh(x^w_t A_w) B_w\big) &&\text{log decay}\\
# a_t &= \sigma\big(\lambda_a + x^a_t A_a B_a\big) &&\text{in-context learning rate}\\
# \hat\kappa_t &= \operatorname{normalize}(k_t\odot\xi),\qquad \tilde k_t = k_t\odot\big(1 + (a_t-1)\odot\alpha\big) &&\text{removal / replacement keys}\\
# S_t &= \operatorname{diag}(e^{w_t})S_{t-1} - (\hat\kappa_t\odot a_t)(\hat\kappa_t^\top S_{t-1}) + \tilde k_t v_t^\top &&\text{the state}\\
# p_t &= \operatorname{GroupNorm}(S_t^\top r_t) + \big(r_t\cdot(\rho\odot\tilde k_t)\big)\,v_t &&\text{read-out + bonus}\\
# o_t &= \big(g_t \odot p_t\big) W_o, \qquad g_t = \sigma(x^g_t A_g) B_g &&\text{gate, output}
# \end{aligned}
# $$
#
# followed by a token-shifted squared-ReLU MLP. As everywhere in this book, $w_t$ is the *log*
# decay (the paper's $w_t$ is the factor $e^{w_t}$), and $S$ is in the K×V layout, the transpose
# of the paper's. The rest of the chapter takes these lines one at a time.
#
# The same block as a diagram: the residual stream on top, the time mix below it
# ($v^{\text{first}}$ is layer 0's value, which every later layer mixes into its own, §7):
#
# ```
#  x ──► LN₁ ──► time mix ──►(+)──► x' ──► LN₂ ──► token shift ──► ReLU(x^k W'_k)² W'_v ──►(+)──► next block
#  │                          ▲     │                                                       ▲
#  └──────────────────────────┘     └───────────────────────────────────────────────────────┘
#
#  time mix:  x_t, x_{t-1} ──► six token-shift mixes x^r, x^w, x^k, x^v, x^a, x^g
#    x^r W_r ──────────────────────────────────────► r ──┐
#    x^k W_k ─► k ─┬─► ⊙ξ, normalise per head ──────► κ̂ ──┤
#                  └─► ⊙(1 + (a − 1)⊙α) ───────────► k̃ ──┤
#    x^v W_v ─► v ──► lerp towards v^first (gate ν) ─► v ──┼──► WKV-7 per head:
#    x^w ─► LoRA ─► w = −e^{−1/2} σ(·) ────────────────────┤     S_t = (diag(e^w) − (κ̂⊙a) κ̂ᵀ) S_{t−1} + k̃ vᵀ
#    x^a ─► LoRA ─► a = σ(·)   (iclr) ─────────────────────┘     o_t = S_tᵀ r_t
#                                                                        │
#                                                   GroupNorm(o_t) + (r_t·(ρ⊙k̃_t)) v_t
#                                                                        │
#    x^g ─► LoRA ─► g ─────────────────────────────────────────────────► ⊙ ──► W_o ──► out
# ```

# %%
import rwkvlab

print(rwkvlab.device.describe())

# %%
import inspect
import math
import os
import tempfile

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from rwkvlab import model as M
from rwkvlab import rwkv7_ops as ops
from rwkvlab import wkv7
from rwkvlab.model import x070

torch.set_printoptions(precision=4, sci_mode=False)
# One thread: these tensors are tiny, and on a shared or busy CPU several threads per
# operation wait on each other far longer than they compute (we measured 20× slow-downs).
torch.set_num_threads(1)
gen = torch.Generator().manual_seed(0)

# %% [markdown]
# ## 1. Where the formulas come from, and one common misreading
#
# We follow the RWKV-7 paper (Peng et al. 2025, arXiv 2503.14456, §4, Eqs. 1–24) and, where
# the paper and the code use different symbols, the official training code in BlinkDL's
# RWKV-LM repository (`RWKV-v7/train_temp/src/model.py`, class `RWKV_Tmix_x070`; the same class
# is in `RWKV-v5/src/model.py`), because that is what produced the checkpoints people download.
# The correspondences that matter, read off that class and the paper, are
#
# | paper | code name | what it is |
# |---|---|---|
# | $\mu_r,\dots,\mu_g$ | `att.x_r` … `att.x_g` | token-shift weights, one per channel |
# | $\lambda_w, A_w, B_w$ | `att.w0`, `att.w1`, `att.w2` | decay bias and low-rank map |
# | $\lambda_a, A_a, B_a$ | `att.a0`, `att.a1`, `att.a2` | in-context learning rate |
# | $\lambda_\nu, A_\nu, B_\nu$ | `att.v0`, `att.v1`, `att.v2` | value-residual gate |
# | $A_g, B_g$ | `att.g1`, `att.g2` | output gate (no bias) |
# | $\xi$, $\alpha$, $\rho$ | `att.k_k`, `att.k_a`, `att.r_k` | removal-key scale, replacement-rate booster, bonus |
# | $W_r, W_k, W_v, W_o$ | `att.receptance/key/value/output.weight` | the four $C\times C$ maps |
# | per-head LayerNorm | `att.ln_x` | `GroupNorm(H, C, eps=64e-5)` |
# | $\mu'_k, W_{k'}, W_{v'}$ | `ffn.x_k`, `ffn.key.weight`, `ffn.value.weight` | the MLP |
#
# A summary of RWKV-7 that circulates (appendix, misstatements 7 and 9) writes it as
# `S_t = S D + S α βᵀ + v kᵀ` with `D = diag(exp(-exp(w)))` and says that in RWKV-7 the bonus
# term is "incorporated into α, β".
# One addition and one correction, both visible in the code below. The summary does not say what
# $w$ is: it is *soft-clamped*, the code computes $w = -\operatorname{softplus}(-d) - 0.5$ before
# the kernel applies $\exp(-\exp(w))$, which makes the factor $\exp(-e^{-1/2}\sigma(d))$ — never
# smaller than $0.545$ per token. And, against the summary, RWKV-7 keeps an explicit bonus: the
# $\rho$ term in $p_t$, added *after* the normalisation (in RWKV-6 the bonus $u$ sits inside
# the state read-out, before it).
#
# A small model to work with: width $C = 64$, two heads of $N = 32$, two layers, a byte
# vocabulary. `init_weights("random")` makes every parameter non-zero so that every path
# through the block shows up in the checks (the training recipe zeroes some output maps).

# %%
cfg = M.Config7.make(vocab_size=256, n_embd=64, n_layer=2, head_size=32, d_decay=16, d_aaa=16, d_mv=16, d_gate=16)
net = M.RWKV7(cfg).init_weights("random", seed=0)
for name, p in net.state_dict().items():
    if name.startswith(("emb", "head", "ln_out", "blocks.0.")):
        print(f"{name:32s} {tuple(p.shape)}")
print(cfg)

# %% [markdown]
# Those are the names and shapes of a real checkpoint, only smaller. A few things to notice.
# Vectors that act per channel are stored as `[1, 1, C]` so that they broadcast against
# `[B, T, C]` activations. `r_k` is `[H, N]`, one bonus weight per channel of each head. The
# low-rank maps come in pairs `[C, D]` and `[D, C]` with a small rank $D$ (RWKV-LM suggests
# roughly $2.5\sqrt C$ for the decay, rounded to a multiple of 32). Block 0 alone has `ln0`, a
# LayerNorm applied right after the embedding. Block 0 also carries `v0, v1, v2` although it
# never uses them: most versions of RWKV-LM create the value-residual parameters in every block
# (some skip block 0's), and we do the same so that `state_dict()` matches their key list;
# `load` accepts checkpoints with or without block 0's copies.
#
# ## 2. Token shift: the previous token, per channel
#
# Every input to the time mix is first blended with the previous token's input. The paper
# writes $\operatorname{lerp}(a, b, \mu) = a + (b-a)\odot\mu$ and uses
# $x^\square_t = \operatorname{lerp}(x_t, x_{t-1}, \mu_\square)$: $\mu = 0$ keeps the current
# token, $\mu = 1$ takes the previous one. (The convention flipped between versions: RWKV-4's
# `time_mix` weighted the *current* token, see RWKV-LM `RWKV-v4/src/model.py`.) In parallel mode the previous
# inputs are the sequence shifted by one; across a segment boundary, or in RNN mode, they come
# from the state, which is why `token_shift` takes and returns a shift state:

# %%
print(inspect.getsource(ops.token_shift))
print(inspect.getsource(ops.addcmul_mix))

# %%
x = torch.randn(2, 5, cfg.n_embd, generator=gen)
x_prev, last = ops.token_shift(x)
rwkvlab.check("token shift = sequence moved right by one, zeros first",
              x_prev, torch.cat([torch.zeros(2, 1, cfg.n_embd), x[:, :-1]], 1), 0.0)
x_prev2, _ = ops.token_shift(x[:, 3:], shift_state=x[:, 2])
rwkvlab.check("token shift carries across a segment boundary", x_prev2, x_prev[:, 3:], 0.0)
mu = torch.rand(1, 1, cfg.n_embd, generator=gen)
(mixed,) = ops.addcmul_mix(x, x_prev, mu)
rwkvlab.check("lerp(x, x_prev, mu) = (1 - mu) x + mu x_prev", mixed, (1 - mu) * x + mu * x_prev, 1e-6)

# %% [markdown]
# What do these weights look like in a model? A trained checkpoint is a few hundred megabytes
# that this book does not download; if you have one, point `RWKVLAB_CHECKPOINT` at it and the
# pictures below use it. Otherwise they show the starting point RWKV-LM trains from, for a
# 12-layer model of width 256: $\mu = 1 - (i/C)^{p\,(1 - l/L)}$ for channel $i$ and layer $l$,
# with $p$ between 0.2 and 0.9 depending on the mix. (The exact recipe is in
# `RWKV7.init_weights`; it is a starting point, not a law, and training moves it.)
# Low channels start mostly on the previous token, high channels on the current one, and deep
# layers lean towards the current token.

# %%
ckpt = os.environ.get("RWKVLAB_CHECKPOINT")
if ckpt:
    big = M.load(ckpt)
    print(f"pictures from {ckpt}: {big.version}, {big.cfg.n_layer} layers, C = {big.cfg.n_embd}")
else:
    big = M.RWKV7(M.Config7.make(vocab_size=16, n_embd=256, n_layer=12, head_size=64)).init_weights("rwkv")
    print("pictures from RWKV-LM's initial recipe (set RWKVLAB_CHECKPOINT=path.pth to see a trained model)")
assert isinstance(big, M.RWKV7), "the pictures in this chapter are of an RWKV-7 model"
L_big, C_big = big.cfg.n_layer, big.cfg.n_embd

fig, axes = plt.subplots(1, 3, figsize=(13, 3.2), sharey=True)
for ax, mix in zip(axes, ["x_r", "x_w", "x_k"]):
    for l in range(0, L_big, max(1, L_big // 4)):
        ax.plot(getattr(big.blocks[l].att, mix).detach().flatten(), label=f"layer {l}")
    ax.set_title(f"att.{mix}: weight on the previous token")
    ax.set_xlabel("channel")
axes[0].set_ylabel("μ")
axes[0].legend(fontsize=8)
plt.tight_layout()
plt.show()
mus = torch.stack([getattr(b.att, m).detach() for b in big.blocks for m in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")])
print(f"token-shift weights in [{mus.min():.3f}, {mus.max():.3f}]")
if not ckpt:
    assert 0.0 <= float(mus.min()) and float(mus.max()) <= 1.0, "the recipe starts every μ in [0, 1]"

# %% [markdown]
# ## 3. Decay: how fast each channel forgets
#
# The decay's low-rank map has a $\tanh$ between its two factors (the gate's has a sigmoid, the
# maps of $a$ and $\nu$ none): $d_t = \lambda_w + \tanh(x^w_t A_w)\,B_w$. The official code
# then computes `w = -softplus(-d) - 0.5` and hands it to a kernel that multiplies the state by
# $\exp(-\exp(w))$ each step. The log decay our `wkv7` expects is therefore
#
# $$
# \log(\text{factor}) = -\exp\big(-\operatorname{softplus}(-d) - \tfrac12\big)
#  = -e^{-1/2}\,\exp(-\operatorname{softplus}(-d)) = -e^{-1/2}\,\sigma(d),
# $$
#
# because $\exp(-\operatorname{softplus}(-d)) = 1/(1 + e^{-d}) = \sigma(d)$. That is the
# paper's Eq. 12, $w_t = \exp(-e^{-1/2}\sigma(d_t))$, and it bounds the per-token factor to
# $(e^{-e^{-1/2}}, 1) \approx (0.545, 1)$: a channel can forget at most about half of its
# content per token. The package computes it in the code's form:

# %%
print(inspect.getsource(x070.TimeMix.log_decay))

# %%
d = torch.linspace(-12, 12, 401, dtype=torch.float64)
code_form = -torch.exp(-F.softplus(-d) - 0.5)
paper_form = -math.exp(-0.5) * torch.sigmoid(d)
rwkvlab.check("log decay: code form = paper form -e^-1/2 sigmoid(d)", code_form, paper_form, 1e-12)
lo = math.exp(-math.exp(-0.5))
factor = code_form.exp()
assert float(factor.min()) > lo and float(factor.max()) < 1.0
print(f"per-token decay factor in ({lo:.4f}, 1): observed [{factor.min():.4f}, {factor.max():.6f}]")

# %% [markdown]
# A decay factor is easier to read as a *half-life*: the number of tokens after which a
# channel keeps half of what was written, $\ln\tfrac12 / \log(\text{factor})$. With the
# bias alone ($\lambda_w$ = `w0`, the LoRA term starts at zero in the recipe), the picture
# below shows the half-life of every channel in a few layers. The spread is the point: some
# channels forget within a token or two, others remember for thousands of tokens, and the
# per-head zigzag in the recipe gives every head a wide spread of its own (a factor of ten or
# more between its fastest and slowest channel), on top of the slope from the first head to the
# last. The data-dependent term then moves each channel's decay token by token.

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 3.4))
axes[0].plot(d, factor)
axes[0].axhline(lo, ls="--", c="gray")
axes[0].set_xlabel("d = w0 + tanh(x_w w1) w2")
axes[0].set_ylabel("decay factor per token")
axes[0].set_title("soft-clamped decay: never below e^(-e^(-1/2)) ≈ 0.545")
for l in range(0, L_big, max(1, L_big // 4)):
    w0 = big.blocks[l].att.w0.detach().flatten().double()
    half = math.log(0.5) / (-math.exp(-0.5) * torch.sigmoid(w0))
    axes[1].semilogy(half, lw=0.8, label=f"layer {l}")
axes[1].set_xlabel("channel")
axes[1].set_ylabel("half-life (tokens)")
axes[1].set_title("half-life of each channel from the bias w0")
axes[1].legend(fontsize=8)
plt.tight_layout()
plt.show()
w0_all = torch.cat([b.att.w0.detach().flatten() for b in big.blocks]).double()
half_all = math.log(0.5) / (-math.exp(-0.5) * torch.sigmoid(w0_all))
print(f"half-lives from {half_all.min():.2f} to {half_all.max():.0f} tokens")
assert float(half_all.min()) > math.log(0.5) / -math.exp(-0.5) - 1e-9   # > 1.14 tokens, the clamp
if not ckpt:
    assert float(half_all.min()) < 2 and float(half_all.max()) > 1000, "the recipe spans ~1 to >1000 tokens"
    per_head = half_all.reshape(-1, big.cfg.head_size)
    spread = per_head.max(-1).values / per_head.min(-1).values
    print(f"within one head, slowest / fastest half-life: at least {spread.min():.0f}x")
    assert float(spread.min()) > 10, "every head mixes fast and slow channels"

# %% [markdown]
# ## 4. Keys: one for removing, one for writing
#
# RWKV-7 derives *two* keys from the same projection $k_t = x^k_t W_k$ — not two projections.
#
# * The **removal key** $\hat\kappa_t = \operatorname{normalize}(k_t\odot\xi)$, unit length per
#   head. It says *which direction* of the state to clear. Unit length matters: the update
#   removes $a\odot\hat\kappa\,(\hat\kappa^\top S)$, which for a unit $\hat\kappa$ and $a\le 1$
#   is at most what is stored along $\hat\kappa$ (chapter 8 showed the blow-up without it).
# * The **replacement key** $\tilde k_t = k_t\odot(1 + (a_t - 1)\odot\alpha)$ says where to
#   write the new value, and how strongly. With $\alpha = 0$ it is $k_t$ itself; with
#   $\alpha = 1$ it is $a_t\odot k_t$, so that the write is scaled by the same learning rate as
#   the removal, as in the delta rule (an exact delta-rule step would also need the written key
#   to be the removal key $\hat\kappa$ and no decay; chapter 8). The released models learn
#   $\alpha$ per channel (the recipe starts it at 1.02).
#
# Only $\hat\kappa$ is normalised; $\tilde k$ keeps the length of $k$.

# %%
print(inspect.getsource(ops.removal_key))
print(inspect.getsource(ops.k_update))

# %%
H, N = cfg.n_head, cfg.head_size
k = torch.randn(2, 5, cfg.n_embd, generator=gen)
k_k = torch.rand(1, 1, cfg.n_embd, generator=gen) + 0.5
kk = ops.removal_key(k, k_k, H)
norms = kk.reshape(2, 5, H, N).norm(dim=-1)
rwkvlab.check("removal key has unit length in every head", norms, torch.ones_like(norms), 1e-6)
a = torch.sigmoid(torch.randn(2, 5, cfg.n_embd, generator=gen))
rwkvlab.check("replacement key with k_a = 0 is k", ops.k_update(k, a, torch.zeros(1, 1, cfg.n_embd)), k, 0.0)
rwkvlab.check("replacement key with k_a = 1 is a * k", ops.k_update(k, a, torch.ones(1, 1, cfg.n_embd)), a * k, 1e-7)

# %% [markdown]
# ## 5. The in-context learning rate
#
# $a_t = \sigma(\lambda_a + x^a_t A_a B_a) \in (0, 1)^C$ is the paper's "in-context learning
# rate" (Eq. 4): per channel, how much of the old value stored under $\hat\kappa_t$ is
# removed before the new one is written. Chapter 8 derived the reading: with $w = 0$ and
# $\tilde k = a\odot\hat\kappa$ the update is one step of gradient descent on
# $\tfrac12\|S^\top\hat\kappa - v\|^2$ with a per-channel step size $a$. Note there is no
# $\tanh$ in this LoRA (the decay has one, the gate uses a sigmoid *inside*).
#
# The recipe's bias $\lambda_a$ starts near $-0.19$, i.e. $a \approx 0.45$, with the same
# per-head zigzag as the decay plus a slope across channels:

# %%
fig, ax = plt.subplots(figsize=(7, 3))
for l in range(0, L_big, max(1, L_big // 4)):
    ax.plot(torch.sigmoid(big.blocks[l].att.a0.detach().flatten()), lw=0.9, label=f"layer {l}")
ax.set_xlabel("channel")
ax.set_ylabel("σ(a0)")
ax.set_title("in-context learning rate from the bias alone")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
iclr = torch.sigmoid(torch.cat([b.att.a0.detach().flatten() for b in big.blocks]))
print(f"sigma(a0) ranges over [{iclr.min():.3f}, {iclr.max():.3f}]")
assert 0 < float(iclr.min()) and float(iclr.max()) < 1

# %% [markdown]
# ## 6. The state update, through `rwkvlab.wkv7`
#
# With both keys in hand the model calls the generalised delta rule of Part III with
# $a = -\hat\kappa$ and $b = \hat\kappa\odot a_t$ (the book's K×V layout of chapter 00; the paper
# and RWKV-LM's CUDA kernel store the transpose, V×K):
#
# $$
# S_t = \operatorname{diag}(e^{w_t})S_{t-1} + (\hat\kappa_t\odot a_t)\big((-\hat\kappa_t)^\top S_{t-1}\big) + \tilde k_t v_t^\top
#     = \big(\operatorname{diag}(e^{w_t}) - (\hat\kappa_t\odot a_t)\hat\kappa_t^\top\big)S_{t-1} + \tilde k_t v_t^\top .
# $$
#
# One step of `wkv7.step` against that matrix written out:

# %%
B1 = 1
def rand(*shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)

kh = F.normalize(rand(B1, H, N), dim=-1)
at = torch.sigmoid(rand(B1, H, N))
wt = -math.exp(-0.5) * torch.sigmoid(rand(B1, H, N))
kt, vt, rt, S0 = rand(B1, H, N), rand(B1, H, N), rand(B1, H, N), rand(B1, H, N, N)
o, S1 = wkv7.step(rt, wt, kt, vt, -kh, kh * at, S0)
G = torch.diag_embed(wt.exp()) - (kh * at)[..., :, None] * kh[..., None, :]   # [B, H, K, K]
S1_by_hand = G @ S0 + kt[..., :, None] * vt[..., None, :]
rwkvlab.check("wkv7.step = (diag(e^w) - (k̂⊙a) k̂ᵀ) S + k̃ vᵀ", S1, S1_by_hand, 1e-12)
rwkvlab.check("read-out uses the updated state: o = Sᵀ r", o, torch.einsum("bhkv,bhk->bhv", S1_by_hand, rt), 1e-12)

# %% [markdown]
# ## 7. Value residual
#
# From the second block on, the value is pulled towards the *first* block's value:
# $v \leftarrow v + (v_{\text{first}} - v)\odot\sigma(\lambda_\nu + x^v A_\nu B_\nu)$. Block 0
# computes `v_first` and passes it up the stack; this is why the model's blocks hand a third
# value to each other besides the residual stream and the state. The paper's Eq. 10 writes
# the same blend as $\operatorname{lerp}(v_{t,0}, v_{t,l}, \nu_t)$, which puts the gate on the
# *layer's own* value; the code's gate is $1 - \nu$, so the biases of the two forms are not
# interchangeable even though the functions are (RWKV-LM `RWKV_Tmix_x070`, the `v0, v1, v2` lines).
#
# ## 8. Read-out, normalisation, bonus, gate
#
# The state's read-out $S_t^\top r_t$ goes through a per-head LayerNorm (a `GroupNorm` with one
# group per head and the unusual $\varepsilon = 64\cdot10^{-5}$, which is
# $10^{-5}\times 8^2$ from RWKV-LM's `head_size_divisor`). Then the bonus is added,
#
# $$
# u_t = \big(r_t\cdot(\rho\odot\tilde k_t)\big)\,v_t \quad\text{per head},
# $$
#
# a direct path from the current token's value to the output, weighted by how well the
# receptance matches the current replacement key. It is added *after* the norm, so its size
# is not normalised away. Finally the gate $g_t = \sigma(x^g_t A_g)B_g$ multiplies
# elementwise and $W_o$ maps back to the residual stream.

# %%
print(inspect.getsource(ops.output_correction))

# %%
r_, k_, v_ = (torch.randn(2, 3, cfg.n_embd, generator=gen) for _ in range(3))
rho = torch.randn(H, N, generator=gen)
bonus = ops.output_correction(r_, k_, v_, rho, H)
heads = lambda t: t.reshape(2, 3, H, N)  # noqa: E731
by_hand = torch.einsum("bthn,hn->bth", heads(r_) * heads(k_), rho)[..., None] * heads(v_)
rwkvlab.check("bonus = (r · (ρ ⊙ k̃)) v per head", bonus, by_hand.reshape(2, 3, -1), 1e-6)

# %% [markdown]
# ## 9. The channel mix
#
# RWKV-7's MLP is the simplest in the family: a token shift with its own weights `ffn.x_k`,
# a $C\to 4C$ map, a squared ReLU, and a $4C\to C$ map (paper Eqs. 23–24). RWKV-4 to 6 had a
# sigmoid receptance gate here; RWKV-7 dropped it.

# %%
print(inspect.getsource(ops.channel_mix))

# %% [markdown]
# ## 10. The whole block, assembled by the package
#
# Here is how `rwkvlab.model.x070` puts the pieces together. `projections` computes every
# input of the state update for a whole sequence; `forward` runs the token shift, calls the
# WKV core it is given (a sequence implementation in parallel mode, `wkv7.step` in RNN mode,
# chapter 13), and finishes the read-out. Nothing here re-implements the state update.

# %%
print(inspect.getsource(x070.TimeMix.projections))
print(inspect.getsource(x070.TimeMix.forward))
print(inspect.getsource(x070.Block.forward))

# %% [markdown]
# Now the check that the pieces in this chapter are the pieces in the model: compute the
# time mix of block 1 of `net` by hand, from its own parameters, with the formulas of
# sections 2–8, and compare with the block.

# %%
blk = net.blocks[1].att
T = 6
xin = torch.randn(2, T, cfg.n_embd, generator=gen)
v_first = torch.randn(2, T, cfg.n_embd, generator=gen)
with torch.no_grad():
    xp, _ = ops.token_shift(xin)
    xr, xw, xk, xv, xa, xg = ops.addcmul_mix(xin, xp, blk.x_r, blk.x_w, blk.x_k, blk.x_v, blk.x_a, blk.x_g)
    r = xr @ blk.receptance.weight.T
    logw = -math.exp(-0.5) * torch.sigmoid(blk.w0 + torch.tanh(xw @ blk.w1) @ blk.w2)
    k = xk @ blk.key.weight.T
    v = xv @ blk.value.weight.T
    v = v + (v_first - v) * torch.sigmoid(blk.v0 + xv @ blk.v1 @ blk.v2)
    a = torch.sigmoid(blk.a0 + xa @ blk.a1 @ blk.a2)
    g = torch.sigmoid(xg @ blk.g1) @ blk.g2
    kh = ops.removal_key(k, blk.k_k, H)
    kt = ops.k_update(k, a, blk.k_a)
    hs = lambda t: t.reshape(2, T, H, N)  # noqa: E731
    o, _ = wkv7.naive(hs(r), hs(logw), hs(kt), hs(v), -hs(kh), hs(kh * a))
    o = F.group_norm(o.reshape(2 * T, -1), H, blk.ln_x.weight, blk.ln_x.bias, eps=64e-5).reshape(2, T, -1)
    o = o + ops.output_correction(r, kt, v, blk.r_k, H)
    by_hand = (o * g) @ blk.output.weight.T
    got, *_ = blk(xin, None, None, v_first, net.sequence_core(wkv7.naive))
rwkvlab.check("block 1 time mix: model vs the formulas of this chapter", got, by_hand, 1e-5)

# %% [markdown]
# And the ladder for the whole model: the same logits whichever WKV core it runs on. The
# chunked core is the default on CPU; the Triton kernels of chapter 11 run here in the
# interpreter on a short sequence (a GPU runs them compiled).

# %%
T_ladder = rwkvlab.device.pick(16, 256)
idx = torch.randint(0, 256, (2, T_ladder), generator=gen)
dev = rwkvlab.device.device()          # Triton kernels take tensors on the book's device
net_dev = M.load(net.state_dict(), device=dev)
with torch.no_grad():
    ref, _ = net(idx, impl="naive")
    rwkvlab.check("model, chunked core vs naive", net(idx, impl="chunked")[0], ref, 1e-5)
    for impl in ("triton_recurrent", "triton_chunked"):
        rwkvlab.check(f"model, {impl} core vs naive", net_dev(idx.to(dev), impl=impl)[0], ref, 1e-5)
    st, outs = None, []
    for t in range(idx.shape[1]):
        lt, st = net.step(idx[:, t], st)
        outs.append(lt)
    rwkvlab.check("model, RNN mode (step by step) vs parallel", torch.stack(outs, 1), ref, 1e-5)

# %% [markdown]
# The test suite (`tests/test_model.py`) goes one step further: it re-implements the model
# from the official names alone, token by token in float64, with the state in the CUDA
# kernel's orientation instead of ours, and requires agreement to $10^{-10}$ for both RWKV-7
# and RWKV-6 models.
#
# ## 11. Where the parameters live
#
# Counting is easy once the shapes are known. Per block, the four $C\times C$ maps of the time
# mix hold $4C^2$, the MLP $2\cdot 4C\cdot C = 8C^2$, and the four LoRAs $2C(D_w + D_a + D_v + D_g)$;
# the per-channel vectors are negligible. The embedding and the head hold $2VC$. For the
# 12-layer, width-768 configuration of BlinkDL's smallest released RWKV-7 with the 65,536-token
# World vocabulary, we build the model on PyTorch's `meta` device — shapes without memory — and
# count:

# %%
cfg01 = M.Config7.make(vocab_size=65536, n_embd=768, n_layer=12, head_size=64)
meta = M.build(cfg01, device="meta")
groups = {"embedding + head": 0, "time-mix C×C maps": 0, "time-mix LoRAs": 0, "channel mix": 0, "vectors and norms": 0}
for name, p in meta.named_parameters():
    n = p.numel()
    if name in ("emb.weight", "head.weight"):
        groups["embedding + head"] += n
    elif ".att." in name and name.endswith(("receptance.weight", "key.weight", "value.weight", "output.weight")):
        groups["time-mix C×C maps"] += n
    elif ".att." in name and name[-1] in "12":
        groups["time-mix LoRAs"] += n
    elif ".ffn." in name and name.endswith(".weight"):
        groups["channel mix"] += n
    else:
        groups["vectors and norms"] += n
total = sum(groups.values())
for k_, n in groups.items():
    print(f"{k_:20s} {n / 1e6:8.2f} M  ({100 * n / total:4.1f} %)")
print(f"{'total':20s} {total / 1e6:8.2f} M; the blocks alone: {(total - groups['embedding + head']) / 1e6:.1f} M")
C0, L0, V0 = 768, 12, 65536
lora = 2 * C0 * (cfg01.d_decay + cfg01.d_aaa + cfg01.d_mv + cfg01.d_gate)
assert groups["time-mix C×C maps"] == L0 * 4 * C0 * C0 and groups["channel mix"] == L0 * 8 * C0 * C0
assert groups["embedding + head"] == 2 * V0 * C0 and groups["time-mix LoRAs"] == L0 * lora
assert 0.45 < groups["embedding + head"] / total < 0.55 and groups["time-mix LoRAs"] / total < 0.05
print(f"LoRA ranks (decay, a, v, gate): {cfg01.d_decay}, {cfg01.d_aaa}, {cfg01.d_mv}, {cfg01.d_gate}")

# %% [markdown]
# About half of this "0.1B" model is its vocabulary; the blocks themselves hold the rest, printed
# above. The LoRAs that make RWKV-7 data-dependent cost a few percent.
#
# ## 12. Loading official checkpoints, and generating
#
# `rwkvlab.model.load` reads a `.pth` state dict, tells RWKV-7 from RWKV-6 by its keys
# (`att.r_k` vs `att.time_faaaa`), reads every size from the shapes (layers, width, heads,
# FFN width, each LoRA rank), builds the model on the meta device and hands the tensors over.
# A key that is missing, unexpected or of the wrong shape is an error that names it. We save
# our small model under the official names and load it back:

# %%
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "tiny-x070.pth")
    M.save(net, path)
    back = M.load(path)
    with torch.no_grad():
        rwkvlab.check("logits after save and load", back(idx)[0], net(idx)[0], 0.0)
    sd = torch.load(path, weights_only=True)
    sd["blocks.1.att.k_a"] = sd["blocks.1.att.k_a"][..., :-1]
    try:
        M.load(sd)
        raise AssertionError("a mis-shaped checkpoint must not load")
    except ValueError as err:
        print("ValueError:", err)
        assert "blocks.1.att.k_a" in str(err)

# %% [markdown]
# With a real checkpoint (BlinkDL publishes them on Hugging Face, e.g. the `rwkv7-g1` and
# `rwkv-7-world` repositories) the command line streams text in RNN mode:
#
# ```
# python -m rwkvlab generate --model rwkv7-g1-0.1b-....pth --prompt "The Eiffel tower is in" --tokens 50
# ```
#
# It reads the prompt in parallel mode, then samples one token at a time with `model.step`,
# using the RWKV World tokenizer (greedy longest match over the 65,536-token World vocabulary,
# `rwkvlab.tokenizer`) for World models and bytes for the book's own small models. Without
# `--model` it prints where to get a checkpoint. Chapter 14 trains a small model that this
# command can load.
#
# ## Summary
#
# * An RWKV-7 block is a token shift, six per-channel mixes, four projections, four low-rank
#   maps (decay, learning rate, value residual, gate), two keys derived from one, the
#   generalised delta rule of Part III, a per-head norm, a bonus, a gate and a squared-ReLU MLP.
# * The decay is soft-clamped: $\log w = -e^{-1/2}\sigma(d) \in (-0.607, 0)$, so a channel keeps
#   at least 54.5 % of its content per token; the recipe spreads half-lives from about one
#   token to thousands, with a wide spread inside every head.
# * Only the removal key is normalised; the replacement key interpolates between $k$ and
#   $a\odot k$ channel by channel.
# * The bonus is added after the normalisation (RWKV-6: inside the read-out).
# * `rwkvlab.model` uses RWKV-LM's names, so its `state_dict()` is an official checkpoint, and
#   the same model runs on any WKV core; the checks above hold to float32 precision.
#
# ## Exercises
#
# 1. Set `k_a` to zero in every block of `net` and measure how much the logits change on a
#    random sequence. Then set it to one. Which setting scales the write by the same learning
#    rate as the removal, what does the other one write instead, and what else would the update
#    need to be an exact delta-rule step?
# 2. Replace $\hat\kappa$ by the un-normalised $k\odot\xi$ in a copy of the block (monkey-patch
#    `ops.removal_key`) and run 200 random tokens. What happens to the state norm, and why
#    does chapter 8's eigenvalue bound no longer apply?
# 3. Show that with the soft clamp, $\log w$ can never be below $-e^{-1/2}$. What is the
#    shortest half-life a channel can have? Compare with RWKV-6, whose $\log w = -e^{d}$ has
#    no lower bound.
# 4. Move the bonus inside the norm (add it to $S^\top r$ before `ln_x`). Which of the checks
#    in section 10 fails, and by how much?
# 5. Count the parameters of the width-2048, 24-layer configuration with the 65,536-token
#    vocabulary. What fraction is now the vocabulary?
# 6. With a real checkpoint, set `RWKVLAB_CHECKPOINT` and rerun the chapter. Which layers
#    moved their token-shift weights furthest from the recipe?
#
# ### Exercises that check themselves
#
# Each cell prints its exercise's statement, holds a solution between the markers (the student
# edition replaces it with a stub) and ends with `exercises.check`, which runs the function on
# seeded random cases against the package's own block pieces and says what is wrong if it is.
#
# 7. Token shift and the lerp mixes of Section 2, as one function that also returns the shift
#    state for the next segment.

# %%
import torch

from rwkvlab import exercises

print(exercises.spec("12.7"))


def shift_and_mix(x, shift_state, mu):
    ### BEGIN SOLUTION
    x_prev = torch.cat([shift_state[:, None], x[:, :-1]], dim=1)
    return x + (x_prev - x) * mu, x[:, -1]
    ### END SOLUTION


exercises.check("12.7", shift_and_mix)

# %% [markdown]
# 8. The soft-clamped log decay, from its LoRA.

# %%
import torch
import torch.nn.functional as F

from rwkvlab import exercises

print(exercises.spec("12.8"))


def log_decay(xw, w0, w1, w2):
    ### BEGIN SOLUTION
    d = w0 + torch.tanh(xw @ w1) @ w2
    return -torch.exp(-F.softplus(-d) - 0.5)
    ### END SOLUTION


exercises.check("12.8", log_decay)

# %% [markdown]
# 9. The two keys of the generalised delta rule: the unit-length removal key and the replacement
#    key scaled by the in-context learning rate.

# %%
import torch
import torch.nn.functional as F

from rwkvlab import exercises

print(exercises.spec("12.9"))


def keys(k, a, k_k, k_a, n_head):
    ### BEGIN SOLUTION
    B, T, C = k.shape
    kk = F.normalize((k * k_k).reshape(B, T, n_head, C // n_head), dim=-1).reshape(B, T, C)
    return kk, k * (1 + (a - 1) * k_a)
    ### END SOLUTION


exercises.check("12.9", keys)
