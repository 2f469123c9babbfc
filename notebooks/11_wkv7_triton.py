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
# # RWKV-7 in Triton I: the recurrent kernel and its adjoint
#
# Chapter 10 turned RWKV-7's state update into matrix algebra that runs in plain torch. This
# chapter and the next file, *RWKV-7 in Triton II*, put the same operator on the GPU as Triton
# kernels that train: each has a forward and a backward pass, and autograd gets gradients for
# every input. This first half writes the simplest kernel that does it, the recurrent one, and
# derives its backward pass by hand; the second half runs chapter 10's chunked algebra on
# tensor cores, measures both kernels on a GPU, and fuses the small pieces of the block.
#
# By the end of this chapter you will be able to
#
# - read and modify a *fused recurrent* RWKV-7 kernel, where one program keeps a slice of the
#   state in registers and walks the sequence;
# - derive the backward pass of the generalized delta rule by hand, from the adjoint of the
#   state down to the gradient of the decay, and check it against autograd;
# - decide between storing every state for the backward pass and recomputing it from
#   checkpoints, with numbers for a real training shape, and read the backward kernel that
#   recomputes.
#
# The whole chapter rests on one observation about the recurrence (K×V layout, as everywhere in
# the book):
#
# $$ S_t = \underbrace{\big(\mathrm{diag}(e^{w_t}) + b_t a_t^\top\big)}_{G_t\ (K\times K)}\, S_{t-1} + k_t v_t^\top,
# \qquad o_t = \text{scale}\cdot S_t^\top r_t . $$
#
# The transition $G_t$ multiplies the state **from the left**. It mixes the rows of $S$ (the key
# channels) but never its columns (the value channels). Column $j$ of the state evolves on its
# own: $S_t[:, j] = G_t S_{t-1}[:, j] + v_t[j]\, k_t$. So the value dimension can be split
# across independent programs, exactly as for RWKV-6, even though the transition is no longer
# diagonal. The key dimension cannot be split: the term $a_t^\top S_{t-1}$ sums over all
# the rows of a column, so every program needs whole columns.

# %%
import rwkvlab

print(rwkvlab.device.describe())

# %%
import inspect

import matplotlib.pyplot as plt
import torch
from matplotlib.patches import FancyArrowPatch, Rectangle

from rwkvlab import wkv7
from rwkvlab.wkv7 import kernels_recurrent as kr
from rwkvlab.wkv7 import reference as ref

DEV = rwkvlab.device.device()


def inputs(B, T, H, K, V, seed=0, decay=1.0, dtype=torch.float32, N=None):
    """wkv7.random_inputs (chapter 10: log decay w in (-decay, 0), a = -κ̂, b = κ̂ ⊙ iclr) with the
    keys scaled by 1/√K and a float32 initial state [N, H, K, V], on the book's device."""
    return wkv7.random_inputs(B, T, H, K, V, seed=seed, dtype=dtype, decay=decay, key_scale=K ** -0.5,
                              with_state=True, N=N, device=DEV)


# %% [markdown]
# ## 1. Who owns what
#
# The kernel runs on a two-dimensional grid `(NV, N·H)`. Program `(i_v, i_nh)` owns one
# sequence and head (`i_nh`) and one block of `BV` value columns (`i_v`). It keeps the slice
# $S[:, \text{block } i_v]$ as a float32 tile of shape `[BK, BV]`, with `BK = K`: all the key
# rows are in one tile. At every step it loads six short vectors: $r_t, w_t, k_t, a_t, b_t$
# (length `K`) and its `BV` entries of $v_t$. Two of its three operations reduce over `K`, down
# the columns of its tile:
#
# - $sa = a_t^\top S_{t-1}$ (`BV` numbers: how much of $a_t$ each column holds),
# - $o_t = \text{scale}\cdot S_t^\top r_t$ (the read-out, after the update).
#
# The update between them is elementwise on the tile: a per-row decay, plus two rank-one
# terms, $b_t\, sa^\top$ and $k_t v_t^\top$. No program ever reads another program's columns.
# The picture shows one head's state cut into column blocks, and what flows through one
# program in one step.

# %%
K_pic, V_pic, BV_pic = 8, 16, 4
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [1.5, 1]})
colors = plt.cm.tab10.colors
for i_v in range(V_pic // BV_pic):
    ax1.add_patch(Rectangle((i_v * BV_pic, 0), BV_pic, K_pic, color=colors[i_v], alpha=0.5))
    ax1.text(i_v * BV_pic + BV_pic / 2, K_pic / 2, f"program\ni_v = {i_v}", ha="center", va="center", fontsize=9)
ax1.add_patch(Rectangle((-1.6, 0), 1, K_pic, color="0.8"))
ax1.text(-1.1, K_pic / 2, "r w k a b\n(length K)", rotation=90, ha="center", va="center", fontsize=8)
ax1.add_patch(Rectangle((BV_pic, -1.4), BV_pic, 0.8, color=colors[1], alpha=0.8))
ax1.text(BV_pic * 1.5, -1.0, "v_t[block]", ha="center", va="center", fontsize=8)
ax1.add_patch(FancyArrowPatch((BV_pic * 1.5, 0.3), (BV_pic * 1.5, K_pic - 0.3), arrowstyle="->", mutation_scale=14))
ax1.text(BV_pic * 1.5 + 0.2, K_pic + 0.8, "sa = aᵀS and o = Sᵀr: sums down each column", ha="center", fontsize=8)
ax1.set_xlim(-2, V_pic), ax1.set_ylim(K_pic + 1.5, -1.8)
ax1.set_xticks(range(0, V_pic + 1, BV_pic)), ax1.set_yticks([0, K_pic])
ax1.set_xlabel("value column j (V), blocks of BV"), ax1.set_ylabel("key row i (K), one tile")
ax1.set_title("one head's state S (K x V): columns never mix")
steps = ["load r,w,k,a,b (K)\nand v (BV)", "sa = aᵀ S\n(sum over K)", "S = e^w S + b saᵀ + k vᵀ\n(elementwise)",
         "o = scale Sᵀ r\n(sum over K)", "store o (BV)"]
for i, s in enumerate(steps):
    ax2.add_patch(Rectangle((0.05, i + 0.1), 0.9, 0.8, color=colors[i % 10], alpha=0.35))
    ax2.text(0.5, i + 0.5, s, ha="center", va="center", fontsize=8)
ax2.set_xlim(0, 1), ax2.set_ylim(len(steps), 0), ax2.axis("off")
ax2.set_title("one time step of one program")
plt.tight_layout()
plt.show()

# %% [markdown]
# The tile is `K·BV` float32 numbers: $64 \times 32 = 2048$ for RWKV-7's head size 64 on a GPU,
# 8 KiB spread over the registers of a few warps. In the interpreter there is a single V-block
# (`BV = V`), because each extra program costs time there. On a GPU, `BV = 32` doubles the
# number of programs. A training batch of $B = 4$, $H = 32$ then has 256 programs, about two per
# streaming multiprocessor of an H100, instead of one.
#
# ## 2. The fused recurrent forward kernel
#
# The loop body is the recurrence written on the tile. `bos` and `eos` bracket this program's
# sequence on the flattened time axis, so a packed batch of different lengths (`cu_seqlens`)
# only changes those two numbers. Every load is cast to float32, and the output goes back to
# the input dtype only when it is stored. The `STORE_CKPT` branch writes the state every `C`
# steps for the backward pass (Section 4).

# %%
print(inspect.getsource(kr.wkv7_fwd_recurrent_kernel.fn))

# %% [markdown]
# Three lines carry the whole recurrence: `sa` (a reduction down the columns), the update (a
# per-row decay plus two outer products) and the read-out (another column reduction). They come
# in the order the equation fixes. RWKV-7 reads the *updated* state $S_t$, unlike RWKV-6, which
# reads $S_{t-1}$ plus a bonus. Put the read-out above the update and you get a plausible kernel
# that is off by one token.
#
# Before anything is launched, the Python wrapper validates its input: shapes, one dtype,
# `w ≤ 0`, `K` and `V` powers of two in 16..128, float64 refused, `cu_seqlens` well formed. A
# bad argument raises `ValueError` naming it, and never reaches the kernel.

# %%
print(inspect.getsource(kr.check_inputs))
try:
    r, w, k, v, a, b, s0 = inputs(1, 4, 1, 16, 16)
    wkv7.triton_recurrent(r, -w, k, v, a, b)
    raise AssertionError("a positive log decay must be refused")
except ValueError as err:
    print("ValueError:", str(err)[:70], "...")
    assert str(err).startswith("w:")

# %% [markdown]
# The check, the package's `reference.forward_check`, compares each call with `wkv7.naive` in
# float64 on the same numbers (`reference.naive64` makes the float64 CPU copies). The shapes
# cover $T = 1$, odd $T$, two heads, $K \ne V$, an initial state with the final state returned,
# and a packed batch of three sequences of lengths 1, 17 and 22. *Triton II* puts the chunked
# kernel through the same check.

# %%
print(inspect.getsource(ref.forward_check))
ref.forward_check(wkv7.triton_recurrent, "triton_recurrent",
                  [(1, 1, 1, 16, 16), (1, 37, 2, 16, 16), (2, 19, 2, 16, 32)], device=DEV, tol=1e-5)

# %% [markdown]
# ## 3. The backward pass, derived
#
# Write $\bar x$ for $\partial L / \partial x$. The loss arrives as $\bar o_t$ for every token,
# plus $\bar S_T$ through the final state (zero if the final state is not used). It is cleanest
# to write one step as two stages, because the transition's input is $S_{t-1}$ while the
# read-out sees $S_t$:
#
# $$ S_t = G_t S_{t-1} + k_t v_t^\top,\quad G_t = \mathrm{diag}(e^{w_t}) + b_t a_t^\top;
# \qquad o_t = \text{scale}\cdot S_t^\top r_t . $$
#
# Let $\bar S_t$ be the gradient that reaches $S_t$ from the future: through $S_{t+1}$, or
# through the final state when $t = T$. Walking backwards, step $t$ does the following.
#
# **Read-out.** $o_t[j] = \text{scale}\sum_i S_t[i,j]\, r_t[i]$ is bilinear, so
#
# $$ \bar S_t \mathrel{+}= \text{scale}\cdot r_t\, \bar o_t^\top, \qquad \bar r_t = \text{scale}\cdot S_t\, \bar o_t . $$
#
# After this line, $\bar S_t$ is the *total* gradient of $S_t$: its read-out and its future.
#
# **The write $k_t v_t^\top$.** An outer product's gradient is the matrix applied to the
# other factor:
#
# $$ \bar k_t = \bar S_t\, v_t, \qquad \bar v_t = \bar S_t^\top k_t . $$
#
# **The transition.** For a product $S_t = G_t S_{t-1}$ the matrix gradients are
# $\bar G_t = \bar S_t S_{t-1}^\top$ (a $K\times K$ matrix) and $\bar S_{t-1} = G_t^\top \bar S_t$.
# We never form $\bar G_t$. We only need its pieces along the three ways $G_t$ depends on the
# inputs, $dG = \mathrm{diag}(e^{w}\odot dw) + db\, a^\top + b\, da^\top$:
#
# $$ \bar w_t = e^{w_t} \odot \mathrm{diag}(\bar G_t) = e^{w_t} \odot \mathrm{rowsum}\big(\bar S_t \odot S_{t-1}\big), $$
# $$ \bar b_t = \bar G_t\, a_t = \bar S_t\,(S_{t-1}^\top a_t) = \bar S_t\, sa_t, \qquad
#    \bar a_t = \bar G_t^\top b_t = S_{t-1}\,(\bar S_t^\top b_t). $$
#
# A formula that circulates states the decay gradient differently (misstatement 6 of chapter 16,
# there for RWKV-6; the same form is quoted for RWKV-7):
#
# > Gradient of decay w.r.t. w: `dw = -sum(dS * S_prev) * exp(w) * exp(-exp(w))`
#
# Both are right, for different parameterizations. The seed's $w$ lives in "log-log" space, with
# the decay factor $e^{-e^{w}}$, and $\frac{d}{dw}e^{-e^{w}} = -e^{w}e^{-e^{w}}$ produces its two
# exponentials. The kernels here follow FLA and take the *log* decay, factor $e^{w}$, whose
# derivative is $e^{w}$ itself. A model that keeps the log-log parameter applies the extra
# chain-rule factor $-e^{w'}$ outside the kernel, where autograd does it for free.
#
# **Hand the gradient to the previous state.**
#
# $$ \bar S_{t-1} = G_t^\top \bar S_t = \mathrm{diag}(e^{w_t})\,\bar S_t + a_t\,(b_t^\top \bar S_t), $$
#
# and at the end $\overline{\text{initial\_state}} = \bar S_0$. This is the forward recurrence
# transposed. The roles of $a$ and $b$ swap, and $\text{scale}\, r_t \bar o_t^\top$ plays the
# part of $k_t v_t^\top$. The same column argument holds: $G_t^\top$ acts from the left, so the
# columns of $\bar S$ are independent too, and the backward kernel uses the same grid as the
# forward. Summed over columns, the $K$-sized gradients ($\bar r, \bar k, \bar w, \bar a,
# \bar b$) come out of each program as partial sums over its V-block. They go to a
# `[NV, B, T, H, K]` buffer and are added up afterwards. $\bar v$ is complete in one program,
# because its sum runs over $K$.
#
# Before any kernel, here are the equations as a plain-torch loop for one head, checked against
# autograd through `wkv7.naive` in float64. If the algebra above were wrong by one transpose,
# this cell would fail.

# %%
def wkv7_backward_loop(r, w, k, v, a, b, S0, do, dST, scale):
    """The adjoint equations above, for one head: inputs [T, K] / [T, V], states [K, V]."""
    states = [S0]
    for t in range(len(r)):                               # forward, keeping every state
        S = states[-1]
        states.append(w[t].exp()[:, None] * S + torch.outer(b[t], a[t] @ S) + torch.outer(k[t], v[t]))
    grads = {n: torch.zeros_like(x) for n, x in zip("rwkvab", (r, w, k, v, a, b))}
    dS = dST.clone()
    for t in reversed(range(len(r))):
        S_prev, S_t = states[t], states[t + 1]
        dS = dS + scale * torch.outer(r[t], do[t])        # read-out
        grads["r"][t] = scale * S_t @ do[t]
        grads["k"][t] = dS @ v[t]                         # the write k v^T
        grads["v"][t] = dS.T @ k[t]
        grads["w"][t] = w[t].exp() * (dS * S_prev).sum(1)  # the decay
        grads["b"][t] = dS @ (a[t] @ S_prev)              # the rank-one correction
        grads["a"][t] = S_prev @ (dS.T @ b[t])
        dS = w[t].exp()[:, None] * dS + torch.outer(a[t], b[t] @ dS)   # G_t^T dS
    return grads, dS


T1, K1, V1 = 13, 6, 5
xs1 = [x[0, :, 0].double().cpu() for x in inputs(1, T1, 1, K1, V1, seed=2, decay=2.0)[:6]]
S01 = torch.randn(K1, V1, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
do1 = torch.randn(T1, V1, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
dST1 = torch.randn(K1, V1, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
by_hand, dS01 = wkv7_backward_loop(*xs1, S01, do1, dST1, scale=0.7)

leaves = [x.clone().requires_grad_() for x in xs1] + [S01.clone().requires_grad_()]
o1, ST1 = wkv7.naive(*(x[None, :, None] for x in leaves[:6]), scale=0.7,
                     initial_state=leaves[6][None, None], output_final_state=True)
auto = torch.autograd.grad((o1[0, :, 0] * do1).sum() + (ST1[0, 0] * dST1).sum(), leaves)
for name, g in zip("rwkvab", auto[:6]):
    rwkvlab.check(f"d{name}: adjoint loop vs autograd", by_hand[name], g, 1e-12, quiet=True)
rwkvlab.check("d initial_state: adjoint loop vs autograd", dS01, auto[6], 1e-12, quiet=True)
print("adjoint equations == autograd for r, w, k, v, a, b and the initial state (float64)  ok")

# %% [markdown]
# ## 4. Recompute or store? The memory bill
#
# The backward pass walks time in reverse and needs $S_{t-1}$ and $S_t$ at every step. The loop
# above kept all of them. That is $T$ states of $K \times V$ float32 numbers per sequence and
# head. There are three ways to get them back.
#
# 1. **Store every state** in the forward pass. There is no extra arithmetic, but for a training
#    shape the memory dwarfs the activations.
# 2. **Invert the step**: compute $S_{t-1} = G_t^{-1}(S_t - k_t v_t^\top)$ going backwards.
#    This is free in memory but useless in practice. $G_t$ is close to singular when the decay
#    is strong ($e^{w}$ as small as $e^{-8}$ is legal input), and errors grow by $\|G_t^{-1}\|$
#    at every step. It can even be exactly singular with a mild decay: by the determinant lemma,
#    $\det G = \prod_\kappa e^{w_\kappa}\,(1 - \sum_\kappa \text{iclr}_\kappa\hat\kappa_\kappa^2 e^{-w_\kappa})$,
#    which is 0 for iclr $= e^{w} = 0.9$ (chapter 08, section 6, computes it).
# 3. **Checkpoint every $C$ steps**: store $S$ only before steps $0, C, 2C, \dots$. The backward
#    pass takes the segments last to first. For each one it restarts from the checkpoint,
#    recomputes the segment's $C$ states into a small scratch buffer owned by the program, then
#    walks the segment backwards. The price is one extra forward pass (the state updates
#    only, without read-out).
#
# The kernels take option 3, with $C = 16$. The table puts numbers on it, for the benchmark's
# training shape.

# %%
Bm, Tm, Hm, Km, Vm = 4, 4096, 32, 64, 64
GiB = 2 ** 30
inputs_bytes = 6 * Bm * Tm * Hm * Km * 2                      # r, w, k, v, a, b in bfloat16
rows = [("store all (C = 1)", Bm * Hm * Tm * Km * Vm * 4, 0, "none")]
for C in (16, 64, 256):
    ckpt = Bm * Hm * -(-Tm // C) * Km * Vm * 4                # one state per segment
    scratch = Bm * Hm * (C + 1) * Km * Vm * 4                 # C + 1 states per program, all programs
    rows.append((f"checkpoint every C = {C}", ckpt, scratch, "one forward (no read-out)"))
print(f"B={Bm} T={Tm} H={Hm} K=V={Km}; the inputs r,w,k,v,a,b in bf16 take {inputs_bytes / GiB:.2f} GiB")
print(f"{'strategy':26s} {'saved states':>13s} {'scratch':>9s} {'total':>9s}  extra compute")
for name, saved, scratch, extra in rows:
    print(f"{name:26s} {saved / GiB:9.3f} GiB {scratch / GiB:5.3f} GiB {(saved + scratch) / GiB:5.3f} GiB  {extra}")
assert rows[0][1] == 8 * GiB                                   # storing all: 8 GiB for one layer
assert rows[1][1] * 16 == rows[0][1]                           # C = 16 saves 16x
assert min(r[1] + r[2] for r in rows) == rows[2][1] + rows[2][2]   # the sum is smallest near C = sqrt(T) = 64
assert 20 < rows[0][1] / inputs_bytes < 22                     # storing all: ~20x the inputs
assert 0.5 < (rows[1][1] + rows[1][2]) / GiB < 0.55 and 1.3 < (rows[1][1] + rows[1][2]) / inputs_bytes < 1.5

# %% [markdown]
# Storing everything costs 8 GiB for *one layer* of one batch, 20 times the layer's inputs.
# That settles it. Among the checkpoint spacings, the total (checkpoints $\propto T/C$ plus
# scratch $\propto C$) is smallest near $C = \sqrt{T} = 64$. The kernels still use
# $C = 16$, for a reason outside the table: 16 is the chunk size of the chunked kernel of
# *RWKV-7 in Triton II* (its §1), whose forward pass produces the state at every chunk start
# anyway. Those states *are* the checkpoints its own backward restarts from. With one spacing, both kernels save the
# same states (the recurrent one adds its small scratch), and at 0.53 GiB checkpoints plus
# scratch cost about 1.4 times the inputs they came from. Exercise 2 asks you to make $C$
# a parameter and measure the trade-off.
#
# The recomputation also explains why the backward pass costs more than the forward pass. Per
# step it does one recomputed update (three tile operations), then about nine tile operations
# for the gradients, where the forward did four. On an H100 the measured ratio is smaller than
# that count suggests: 8.9 ms forward and 23.9 ms forward + backward at B = 4, T = 4096, H = 32,
# K = V = 64 in bf16, so 15 ms against 9 ms (`benchmarks/results/h100_bench_vs_fla_2026-11-23.txt`),
# because both kernels spend much of their time waiting on loads rather than computing.
#
# ### The backward kernel
#
# Here is the kernel, after the two helpers it calls. Triton inlines them, so the split costs
# nothing (compiled for an H100/H200, the kernel's registers and spills came out the same:
# `benchmarks/NOTES.md`, "Kernels on a screen"). `_replay_segment` is the forward again over one
# segment. `_step_adjoint` is one token of the adjoint, the equations of Section 3 in the same
# order as the torch loop. The outer loop runs over segments from last to first. Phase 1
# recomputes the segment into `scratch`. Phase 2 walks it backwards, one `_step_adjoint` a
# token, and stores the six gradients' rows. `tl.debug_barrier()` separates the two phases. On
# a GPU, the threads that read a scratch entry are not necessarily the ones that wrote it, so
# the writes must be finished and visible first. The interpreter runs one program at a time
# and needs no barrier, but the kernel is written for both.

# %%
print(inspect.getsource(kr._replay_segment.fn))
print(inspect.getsource(kr._step_adjoint.fn))
print(inspect.getsource(kr.wkv7_bwd_recurrent_kernel.fn))

# %% [markdown]
# `torch.autograd.Function` glues the two kernels together. `forward` saves the inputs and the
# checkpoints, and `backward` launches the backward kernel with the incoming $\bar o$ and
# $\bar S_T$ (`None` when the final state was not requested):

# %%
print(inspect.getsource(kr._RecurrentFunction))

# %% [markdown]
# Now the check that matters for training: the gradients of all seven tensor inputs, with
# upstream gradients on both outputs, against autograd through `wkv7.naive` in float64. $T = 37$
# crosses two checkpoint boundaries, and the second case is a packed batch whose middle
# sequence is 2 tokens long. The comparison is the package's `reference.grad_check`, so that the
# chunked kernel of *Triton II* is held to exactly the same test.

# %%
print(inspect.getsource(ref.grad_check))
ref.grad_check(wkv7.triton_recurrent, inputs(1, 37, 2, 16, 32, seed=7, decay=2.0), "triton_recurrent (1, 37, 2, 16, 32)",
               tol=1e-5)
ref.grad_check(wkv7.triton_recurrent, inputs(1, 40, 2, 16, 16, seed=7, decay=2.0, N=3), "triton_recurrent varlen [7, 2, 31]",
               cu_seqlens=torch.tensor([0, 7, 9, 40], device=DEV), tol=1e-5);

# %% [markdown]
# ## Summary
#
# - RWKV-7's transition $G_t = \mathrm{diag}(e^{w_t}) + b_t a_t^\top$ acts on the state's rows,
#   so the state's *columns* are independent. The kernel splits the value dimension across
#   programs and keeps all the key rows of a column in one tile.
# - The fused recurrent kernel is the recurrence written on a register tile: one column
#   reduction ($a^\top S$), one elementwise update with two rank-one terms, one column reduction
#   for the read-out of the updated state.
# - The backward pass is the transposed recurrence:
#   $\bar S_{t-1} = \mathrm{diag}(e^{w_t})\bar S_t + a_t (b_t^\top \bar S_t)$, with the read-out's $\text{scale}\,r_t\bar o_t^\top$ injected at
#   every step. The gradients of $w, a, b$ pair $\bar S_t$ with $S_{t-1}$, and those of $r, k, v$
#   pair it with $S_t$, $v_t$ and $k_t$.
# - The states the backward pass needs are recomputed from checkpoints every 16 steps. That costs
#   one extra forward pass and saves 16× the memory of storing all states (8 GiB → 0.5 GiB per
#   layer at B = 4, T = 4096, H = 32).
#
# The recurrent kernel is a chain of $T$ dependent steps whose operations tensor cores cannot
# run. *RWKV-7 in Triton II* keeps its grid and its checkpoints, and replaces the steps by
# chapter 10's chunked algebra on `tl.dot`.
#
# ## Exercises
#
# Chapter 11 numbers its exercises across its two files: 1–4 and the self-checking 9–11 are
# here, 5–8 (the chunked kernel, speed and fusion) are at the end of *Triton II*.
#
# 1. **A transposed bug.** In `wkv7_backward_loop`, replace the last line's
#    `torch.outer(a[t], b[t] @ dS)` by `torch.outer(b[t], a[t] @ dS)` (the forward's order).
#    Which gradients does the check catch as wrong, and which stay right? Explain why from
#    Section 3.
# 2. **Checkpoint spacing.** Add a `checkpoint_every` argument to `triton_recurrent` (the
#    kernels already take `C` as a constant). Tabulate the saved bytes for $C \in \{8, 16, 64,
#    256\}$ at $T = 4096$, and on a GPU time the backward pass for each. Where is the best
#    trade-off, and why is it not exactly at $\sqrt{T}$?
# 3. **Splitting K.** For $K = 256$ one tile no longer fits. Sketch a kernel with two K-blocks
#    per column. Which of the three per-step operations need the two programs to communicate?
#    (Hint: $a^\top S$ and $S^\top r$ do; the update does not.)
# 4. **Inverting the step.** Write $S_{t-1} = G_t^{-1}(S_t - k_t v_t^\top)$ with the
#    Sherman–Morrison formula for $G_t^{-1}$, run it backwards from $S_T$ in float32 with
#    $w = -8$, and measure how fast the reconstructed states diverge from the true ones.
#
# ### Exercises that check themselves
#
# Each cell prints its exercise's statement, holds a solution between the markers (the student
# edition replaces it with a stub) and ends with `exercises.check`, which runs the function on
# seeded random cases against autograd through `wkv7.naive` (or `wkv7.step`) in float64 and says
# what is wrong if it is. All three run on a CPU; the kernel runs in the Triton interpreter.
#
# 9. The adjoint of one state update: the line that the reverse-time loop of the recurrent
#    backward repeats.

# %%
import torch

from rwkvlab import exercises

print(exercises.spec("11.9"))


def adjoint(G, w, a, b):
    ### BEGIN SOLUTION
    bG = torch.einsum("bhk,bhkv->bhv", b, G)           # bᵀ G: one row of length V per head
    return w.exp()[..., None] * G + a[..., None] * bG[..., None, :]
    ### END SOLUTION


exercises.check("11.9", adjoint)

# %% [markdown]
# 10. One RWKV-7 step as a Triton kernel: the body of the recurrent forward kernel for a single
#     token, with the value columns split over programs and a tail block to mask.

# %%
import torch

from rwkvlab import exercises  # (imported first: it selects the Triton interpreter on a CPU)
import triton
import triton.language as tl

print(exercises.spec("11.10"))


@triton.jit
def step_kernel(S, r, w, k, v, a, b, S_out, o, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                BV: tl.constexpr):
    ### BEGIN SOLUTION
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    o_k, o_v = tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    p_s = i_bh * K * V + o_k[:, None] * V + o_v[None, :]
    b_S = tl.load(S + p_s, mask=m_k[:, None] & m_v[None, :], other=0.)
    # (one load per line: compiled Triton takes no generator expressions, which the interpreter runs)
    b_r = tl.load(r + i_bh * K + o_k, mask=m_k, other=0.)
    b_w = tl.load(w + i_bh * K + o_k, mask=m_k, other=0.)
    b_k = tl.load(k + i_bh * K + o_k, mask=m_k, other=0.)
    b_a = tl.load(a + i_bh * K + o_k, mask=m_k, other=0.)
    b_b = tl.load(b + i_bh * K + o_k, mask=m_k, other=0.)
    b_v = tl.load(v + i_bh * V + o_v, mask=m_v, other=0.)
    b_sa = tl.sum(b_a[:, None] * b_S, axis=0)                                   # aᵀ S (old state)
    b_S = tl.exp(b_w)[:, None] * b_S + b_b[:, None] * b_sa[None, :] + b_k[:, None] * b_v[None, :]
    tl.store(S_out + p_s, b_S, mask=m_k[:, None] & m_v[None, :])
    tl.store(o + i_bh * V + o_v, tl.sum(b_r[:, None] * b_S, axis=0), mask=m_v)  # read the new state
    ### END SOLUTION


def triton_step(S, r, w, k, v, a, b):
    ### BEGIN SOLUTION
    B, H, K, V = S.shape
    S_out, o = torch.empty_like(S), S.new_empty(B, H, V)
    step_kernel[(triton.cdiv(V, 16), B * H)](S.contiguous(), *(x.contiguous() for x in (r, w, k, v, a, b)),
                                             S_out, o, K=K, V=V, BK=triton.next_power_of_2(K), BV=16)
    return o, S_out
    ### END SOLUTION


exercises.check("11.10", triton_step)

# %% [markdown]
# 11. The backward of one checkpointed segment, as far as its starting state: the read-outs and
#     the adjoint of exercise 9, from the last token to the first.

# %%
import torch

from rwkvlab import exercises

print(exercises.spec("11.11"))


def segment_backward(r, w, k, v, a, b, do, dS_end):
    ### BEGIN SOLUTION
    G = dS_end.clone()
    for t in reversed(range(r.shape[1])):
        G = G + r[:, t, :, :, None] * do[:, t, :, None, :]             # o_t = S_tᵀ r_t
        bG = torch.einsum("bhk,bhkv->bhv", b[:, t], G)
        G = w[:, t].exp()[..., None] * G + a[:, t, ..., None] * bG[..., None, :]
    return G
    ### END SOLUTION


exercises.check("11.11", segment_backward)
