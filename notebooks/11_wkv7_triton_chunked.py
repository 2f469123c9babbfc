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
# # RWKV-7 in Triton II: the chunked kernels, speed, and fusion
#
# *RWKV-7 in Triton I* wrote the recurrent kernel: a grid of `(NV, N·H)` programs, each holding
# a `[K, BV]` slice of one head's state in registers and walking its sequence token by token;
# a backward pass derived by hand as the transposed recurrence; and checkpoints every 16 tokens,
# from which the backward kernel recomputes the states it needs. That kernel is correct and
# trains, but it is a chain of $T$ dependent steps made of reductions and outer products,
# which tensor cores cannot run. Chapter 10 derived the cure in plain torch: the chunked WY/UT
# form, where everything inside a chunk is a matrix product. This chapter puts that form into
# Triton, measures both kernels on a GPU, and then looks at the rest of an RWKV-7 block.
#
# By the end of this chapter you will be able to
#
# - read the *chunked* kernel: a launch parallel over chunks that builds each chunk's matrices
#   (factored on `tl.dot` where that is safe, exactly where it is not, and the UT transform by
#   repeated squaring) and stores every piece in the form the state pass uses it, then a state
#   pass on the recurrent kernel's grid that only loads and multiplies, the next chunk's loads
#   in flight while this chunk computes;
# - read its backward pass, which restarts each chunk from the state the forward saved, and
#   see why its decay gradient stays exact when the true gradient is $10^{-9}$ of the others;
# - say what bfloat16 inputs and tf32 tensor cores cost in accuracy, and where each launch
#   stands against the memory and compute ceilings of an H200;
# - fuse the small elementwise pieces of an RWKV-7 block, and count the bytes the fusion saves.
#
# The whole chapter rests on one split of chapter 10's chunk step. With $E = W S + U$, a chunk
# turns its start state $S$ into its outputs and its end state by
#
# $$ O = \text{scale}\cdot\big((r\odot e^{c_t}) S + A_{rk} V + A_{rb} E\big),\qquad
#    S \leftarrow \mathrm{diag}(e^{c_C}) S + (k \odot e^{c_C - c})^\top V + (b \odot e^{c_C - c})^\top E , $$
#
# and every matrix in it except $S$ ($A_{rk}$, $A_{rb}$, $W$, $U$ and the decays) depends on
# the chunk's inputs alone. That part can be computed for all chunks at once; only the
# products with $S$ form a chain.

# %%
import rwkvlab

print(rwkvlab.device.describe())

# %%
import functools
import inspect

import matplotlib.pyplot as plt
import torch
from matplotlib.patches import Rectangle

from rwkvlab import wkv7
from rwkvlab.checking import rel_err
from rwkvlab.wkv7 import kernels_chunked as kc
from rwkvlab.wkv7 import reference as ref

DEV = rwkvlab.device.device()
colors = plt.cm.tab10.colors


def inputs(B, T, H, K, V, seed=0, decay=1.0, dtype=torch.float32, N=None):
    """The inputs of Triton I's checks: wkv7.random_inputs with keys scaled by 1/√K, log decay
    in (-decay, 0) and a float32 initial state [N, H, K, V], on the book's device."""
    return wkv7.random_inputs(B, T, H, K, V, seed=seed, dtype=dtype, decay=decay, key_scale=K ** -0.5,
                              with_state=True, N=N, device=DEV)


# %% [markdown]
# Every check below compares a kernel with `ref.naive64`, the loop of `wkv7.naive` on float64
# CPU copies of the same numbers. The checks over several shapes and of the gradients are
# `ref.forward_check` and `ref.grad_check`, the tests *Triton I* put the recurrent kernel
# through (it prints their source).

# %% [markdown]
# ## 1. The chunked kernel: chapter 10's algebra on `tl.dot`
#
# The recurrent kernel does $O(KV)$ work per token in a chain of $T$ dependent steps. Its inner
# operations are reductions and outer products, which tensor cores cannot run. The chunked form
# of chapter 10 reorganizes the same arithmetic. Inside a chunk of $C$ tokens everything is a
# matrix product; only the hand-off from chunk to chunk is sequential. In chapter 10's symbols,
# with $c_t = \sum_{j \le t} w_j$ the running log decay inside the chunk:
#
# $$ A_{ab}[t,i] = \textstyle\sum_\kappa a_{t\kappa}\, e^{c_{t-1,\kappa} - c_{i\kappa}}\, b_{i\kappa}\ (i<t), \qquad
#    A_{rk}[t,i] = \textstyle\sum_\kappa r_{t\kappa}\, e^{c_{t\kappa} - c_{i\kappa}}\, k_{i\kappa}\ (i\le t), $$
#
# with $A_{ak}$ and $A_{rb}$ defined likewise. Then
#
# $$ \mathcal T = (I - A_{ab})^{-1},\quad W = \mathcal T\,(a \odot e^{c_{t-1}}),\quad U = \mathcal T A_{ak} V,\quad
#    E = W S + U, $$
# $$ O = \text{scale}\cdot\big((r\odot e^{c_t}) S + A_{rk} V + A_{rb} E\big),\qquad
#    S \leftarrow \mathrm{diag}(e^{c_C}) S + (k \odot e^{c_C - c})^\top V + (b \odot e^{c_C - c})^\top E . $$
#
# The kernel splits that work by what it depends on. Everything in the first line, and $W$ and
# $U$, depends on the chunk's inputs only, never on the state: it can be computed for all
# chunks at once. Only $E$, $O$ and the hand-off touch $S$. So there are two launches.
#
# 1. **`wkv7_fwd_prep_kernel`, parallel over (chunks × heads).** One program per chunk and head
#    builds the four pairwise matrices, $\mathcal T$, $W$ and $U$. It stores, at the chunk's
#    token rows, every state-free piece of the three lines above in the form the state pass
#    will use it: $W$, $U$, $A_{rk}V$ and $A_{rb}$ in float32; the decayed rows
#    $k\odot e^{c_C-c}$, $b\odot e^{c_C-c}$ and $r\odot e^{c}$ in the input's type when that is
#    16-bit (each is one input times a factor in $(0, 1]$, so 16 bits lose little beyond the
#    input's own rounding), float32 otherwise; and per chunk the decay $e^{c_C}$. It also
#    checks every value it reads (NaN, ±Inf, a positive $w$): the inputs are read here anyway,
#    so the check costs no pass of its own. One int32 flag is raised by `tl.atomic_max`, and only when it is set does the
#    host run its full check, which names the argument.
# 2. **`wkv7_fwd_chunked_kernel`, the state pass.** The recurrent kernel's grid (*Triton I*, §1): program
#    `(i_v, i_nh)` walks its sequence chunk by chunk with its state tile in registers. Per chunk
#    it loads what the prep stored and does five products, nothing else: $E = WS + U$, the two
#    of $O$ that involve the state ($O$ starts from the stored $A_{rk}V$), and the two of the
#    hand-off. Each product accumulates into the previous one (`tl.dot(..., acc=...)`), so the
#    state's update occupies one `[K, BV]` tile of registers, not three. Its loop is a chain:
#    chunk $i+1$ needs the state chunk $i$ hands off. So the loads of chunk $i+1$, which do not
#    depend on the state, are issued *before* chunk $i$'s products and carried through the loop
#    (`TUNE["prefetch"]`): the chain waits less on memory at each link (§4: 2.9 → 2.4 µs a
#    chunk at the training shape). It stores each
#    chunk-start state for the backward, and checks the initial state, which only it reads,
#    into the same flag.
#
# Inside the prep kernel, three choices.
#
# - **Pairwise matrices: factored where it is safe, exact where it is not.** Chapter 10's first
#   trap: $e^{c_t - c_i} = e^{c_t} e^{-c_i}$ turns $A_{rk}$ into one `tl.dot`,
#   $(r\odot e^{c})(k\odot e^{-c})^\top$, but $e^{-c_i}$ overflows float32 once $-c_i > 88.7$,
#   and a 16-token chunk with $w = -8$ gets there (the cell below). Its second trap is
#   rounding: $e^{c_t}e^{-c_i}$ carries the rounding of both running sums, a relative error of
#   about $(|c_t| + |c_i|)\cdot 2^{-24}$. Both are harmless while the chunk's total decay is
#   small, so the kernel decides per chunk. If every channel's decay over the chunk,
#   $-c_C$, is at most `FACTORED_SPAN` $= 40$, the four matrices are eight small `tl.dot`s
#   (factors at most $e^{40}$, errors at most about $5\cdot10^{-6}$). Otherwise the chunk takes
#   the exact path: a `[BT, BT, BK]` block of exponents, each a cumulative sum of $w$ masked to
#   its own interval, so every exponent is $\le 0$ and exact to float32. Real RWKV-7 layers
#   always take the first branch (their $w \ge -e^{-1/2}$ gives $-c_C \le 9.7$ in 16 tokens); a
#   decay spike sends its chunk, and only its chunk, to the second.
# - **A declared bound removes the exact path.** `triton_chunked(..., lower_bound=-e^{-1/2})`
#   compiles the prep kernel without it, so fewer registers and no branch. The promise is
#   checked in the same pass as the other values: a $w$ below the bound is a `ValueError`,
#   never a wrong answer.
# - **$\mathcal T$ by repeated squaring.** For a strictly lower $N = A_{ab}$, $N^C = 0$, so
#   $(I - N)^{-1} = I + N + \dots + N^{C-1} = (I + N)(I + N^2)(I + N^4)(I + N^8)$ at $C = 16$:
#   six small products instead of $C - 1$ dependent substitution steps that pull rows out of a
#   register tile with masks. They run in full float32 (`"ieee"`), whatever the input dtype.
#
# Two interpreter facts shape the code. `tl.dot` needs every tile dimension $\ge 16$, so the
# chunk is 16 or 32 (at 64 the backward's tiles outgrow an H200's shared memory). `tl.dot` on
# bfloat16 operands returns garbage in the interpreter. Every operand here is computed in
# float32 anyway, so the kernel never feeds bf16 to `tl.dot`. On a GPU the precision is chosen
# per dtype: float32 inputs get full-precision (`"ieee"`) dots, so that they meet the 1e-5
# budget of every float32 check here (they come out near $10^{-7}$); 16-bit inputs get tf32
# tensor cores.
#
# The cell shows trap 1 on one chunk. The factorized form overflows, and the pairwise form
# stays finite and matches float64.

# %%
C16 = 16
r, w, k, v, a, b, s0 = inputs(1, C16, 1, 16, 16, seed=9)
w = torch.full_like(w, -8.0)
c = w[0, :, 0].double().cpu().float().cumsum(0)                       # [C, K] running log decay
factorized = torch.tril((r[0, :, 0].cpu() * c.exp()) @ (k[0, :, 0].cpu() * (-c).exp()).T)
print(f"w = -8 over a chunk of {C16}: -c_C = {-c[-1, 0].item():.0f}, e^(-c_C) in float32 = {(-c[-1, 0]).exp().item()}")
assert not torch.isfinite(factorized).all()                             # inf * 0 = nan
got = wkv7.triton_chunked(r, w, k, v, a, b, initial_state=s0, output_final_state=True)
assert all(torch.isfinite(x).all() for x in got)
rwkvlab.check("triton_chunked, w = -8 everywhere, vs naive", got,
              ref.naive64(r, w, k, v, a, b, s0, output_final_state=True), 1e-5)

# %% [markdown]
# That is the first reason for the exact path. Chapter 10's second trap is the rounding of
# running sums: after a decay spike ($w = -10^4$ on one token) every later $c$ is about
# $-10^4$, its float32 spacing is $10^{-3}$, and any exponent formed from it, whether as
# $c_t - c_i$ or as $e^{c_t}e^{-c_i}$, is off by that much. The first version of this kernel
# formed `c[:, None, :] - c[None, :, :]` and lost three digits there (output and gradients off by
# $2\cdot10^{-4}$ at chunks of 16 and $10^{-3}$ at 32). Now a spike makes its chunk's decay
# exceed `FACTORED_SPAN`, and that chunk builds each factor from its own interval:
# `_pair_decays` below. The cell counts which chunks of the spike input take which path, and
# checks both kernels against float64 at float32 accuracy.

# %%
print(inspect.getsource(kc._pairs.fn))
print(inspect.getsource(kc._pair_decays.fn))
xs_spike = inputs(1, 40, 2, 16, 16, seed=5)
w_spike = torch.full_like(xs_spike[1], -0.01)
w_spike[:, 11, :, ::2] = -1e4
w_spike[:, 27, :, 1::2] = -1e3
xs_spike[1] = w_spike
for Cs in (16, 32):
    pad = torch.zeros(1, -40 % Cs, 2, 16)
    span = (-torch.cat([w_spike.cpu(), pad], 1).unflatten(1, (-1, Cs)).sum(2)).amax(-1)   # [1, chunks, H]
    exact = span > kc.FACTORED_SPAN
    print(f"C={Cs}: {exact.sum().item()} of {exact.numel()} (chunk, head) pairs take the exact path: "
          f"chunks {sorted(set(exact.nonzero()[:, 1].tolist()))}")
    assert exact.any() and not exact.all()
want_spike = ref.naive64(*xs_spike, output_final_state=True)
for name, impl in [("triton_recurrent", wkv7.triton_recurrent), ("triton_chunked C=16", wkv7.triton_chunked),
                   ("triton_chunked C=32", functools.partial(wkv7.triton_chunked, chunk_size=32))]:
    got_spike = impl(*xs_spike[:6], initial_state=xs_spike[6], output_final_state=True)
    rwkvlab.check(f"{name}, decay spikes w = -1e4 / -1e3, vs float64", got_spike, want_spike, 2e-6)

# %% [markdown]
# The identity behind $\mathcal T$, checked in float64 on a real chunk's $A_{ab}$ (from the
# package's torch `reference.intra_chunk_matrices`): the product of the four factors equals the
# triangular solve, and $N^{16}$ is exactly zero.

# %%
r, w, k, v, a, b, s0 = inputs(1, C16, 1, 16, 16, seed=10)
N_ab = ref.intra_chunk_matrices(*(x[0, :, 0].cpu().double() for x in (r, w, k, a, b)))["A_ab"]
eye16 = torch.eye(C16, dtype=torch.float64)
prod, P = eye16 + N_ab, N_ab
for _ in range(3):
    P = P @ P
    prod = prod + prod @ P
solve = torch.linalg.solve_triangular(eye16 - N_ab, eye16, upper=False, unitriangular=True)
print(f"max |(I+N)(I+N^2)(I+N^4)(I+N^8) - (I-N)^-1| = {(prod - solve).abs().max().item():.1e}, "
      f"max |N^16| = {torch.linalg.matrix_power(N_ab, 16).abs().max().item():.1e}")
assert (prod - solve).abs().max() < 1e-12 and torch.linalg.matrix_power(N_ab, 16).abs().max() == 0

# %% [markdown]
# Here are the two launches. The prep kernel's body is `_prep_tiles` (section 4's folded forward
# reuses it): match each block of its lines to the choices above. In the state pass, find the
# five products and the loads issued one chunk ahead.

# %%
print(inspect.getsource(kc._unit_lower_inverse.fn))
print(inspect.getsource(kc._prep_tiles.fn))
print(inspect.getsource(kc.wkv7_fwd_prep_kernel.fn))
print(inspect.getsource(kc._state_tile.fn))
print(inspect.getsource(kc._chunk_pieces.fn))
print(inspect.getsource(kc.wkv7_fwd_chunked_kernel.fn))

# %% [markdown]
# ### Who owns what in the two launches
#
# The two launches cut the same work along different axes.
#
# - **The prep kernel's grid is `(chunks, H)`.** Program `(i_c, i_h)` owns the `C` token rows of
#   one chunk of one head. It reads their $r, w, k, v, a, b$ and writes its pieces at exactly
#   those rows: $W$, and the three decayed rows (`[C, K]` each), $U$ and $A_{rk}V$ (`[C, V]`),
#   $A_{rb}$ (`[C, C]`), plus the chunk's decay $e^{c_C}$ (`[K]`). No program reads what another
#   writes, so all of them can run at once.
# - **The state pass's grid is `(NV, N·H)`**, the recurrent kernel's. Program `(i_v, i_nh)` owns
#   the tile $S[:, i_v\cdot BV : (i_v+1)\cdot BV]$ of one sequence·head, `[K, BV]` float32 in
#   registers. It walks that sequence's chunks in order, reads at each one what the prep stored
#   there, and writes its `BV` columns of the output and the chunk-start state (the checkpoint).
#
# The cell first records the grids of a real call and checks them against that arithmetic. A
# small stand-in for each kernel object notes the grid it is launched with, then launches. Then
# it draws both grids for a small shape. In the interpreter `kc.block_v(V)` returns `V`, a single
# V-block, because each extra program costs time there. On a GPU it is `kc.gpu_block_v`: the
# launch table's largest block, `min(V, kc.TUNE["fwd"][2])`, halved (to 32 columns at least)
# while twice the programs would still fit one per multiprocessor. At RWKV-7's head size,
# V = 64, the training shape gives each program all of V (NV = 1, 128 programs on 132
# multiprocessors); B = 1, H = 8 gets two blocks of 32. The picture takes V = 128 so that the
# split shows.

# %%
from unittest import mock

from rwkvlab.checking import GridRecorder

print(inspect.getsource(GridRecorder))

CHUNK = inspect.signature(kc.triton_chunked).parameters["chunk_size"].default   # 16
Bs, Ts, Hs, Ks, Vs = 2, 40, 2, 16, 16
xs_g = inputs(Bs, Ts, Hs, Ks, Vs, seed=18)
prep_rec, state_rec = GridRecorder(kc.wkv7_fwd_prep_kernel), GridRecorder(kc.wkv7_fwd_chunked_kernel)
# fold=False: these two launches by name (on a GPU, a grid this small would take section 4's folded ones)
with mock.patch.dict(kc.TUNE, fold=False), mock.patch.object(kc, "wkv7_fwd_prep_kernel", prep_rec), \
        mock.patch.object(kc, "wkv7_fwd_chunked_kernel", state_rec):
    wkv7.triton_chunked(*xs_g[:6], initial_state=xs_g[6])
assert prep_rec.grids == [(Bs * -(-Ts // CHUNK), Hs)]                  # one program per chunk and head
assert state_rec.grids == [(-(-Vs // kc.block_v(Vs)), Bs * Hs)]        # V-blocks x sequence·heads
print(f"launched at B={Bs} T={Ts} H={Hs} V={Vs}, C={CHUNK}: prep grid {prep_rec.grids[0]}, "
      f"state pass grid {state_rec.grids[0]} (block_v(V) = {kc.block_v(Vs)} on this machine)")


def gpu_block_v(V, name="fwd", programs=None):
    """kc.block_v as it is on an H200 (132 multiprocessors)."""
    return kc.gpu_block_v(V, name, programs, sms=132)


Bt, Tt, Ht, Kt, Vt = 4, 4096, 32, 64, 64
print(f"on a GPU at B={Bt} T={Tt} H={Ht} K=V={Kt}: prep {Bt * -(-Tt // CHUNK) * Ht} programs of one chunk; "
      f"state pass {-(-Vt // gpu_block_v(Vt, programs=Bt * Ht)) * Bt * Ht} programs "
      f"(BV = {gpu_block_v(Vt, programs=Bt * Ht)}), each walking {-(-Tt // CHUNK)} chunks in order; "
      f"at B=1 H=8 BV = {gpu_block_v(Vt, programs=8)}")
assert gpu_block_v(Vt, programs=Bt * Ht) == 64 and gpu_block_v(Vt, programs=8) == 32

Bp, Tp, Hp, Kp, Vp = 2, 48, 2, 64, 128                # the picture's shape
BVp = gpu_block_v(Vp)                                 # no program count: the table's block, 64
NVp, n_seq_ch = -(-Vp // BVp), -(-Tp // CHUNK)        # V-blocks; chunks per sequence
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 3.8), gridspec_kw={"width_ratios": [1.1, 1]})
for i_c in range(Bp * n_seq_ch):
    i_n, t0 = divmod(i_c, n_seq_ch)
    for i_h in range(Hp):
        ax1.add_patch(Rectangle((i_c + 0.04, i_h + 0.06), 0.92, 0.88, color=colors[i_n], alpha=0.35))
        ax1.text(i_c + 0.5, i_h + 0.5, f"tokens\n{t0 * CHUNK}..{(t0 + 1) * CHUNK - 1}\nwrites\nW U pieces", ha="center",
                 va="center", fontsize=7)
ax1.set_xlim(0, Bp * n_seq_ch), ax1.set_ylim(Hp, 0)
ax1.set_xticks([i + 0.5 for i in range(Bp * n_seq_ch)], [f"i_c={i}\n(n={i // n_seq_ch})" for i in range(Bp * n_seq_ch)],
               fontsize=7)
ax1.set_yticks([h + 0.5 for h in range(Hp)], [f"i_h={h}" for h in range(Hp)], fontsize=8)
ax1.set_title(f"prep: grid ({Bp * n_seq_ch}, {Hp}) = chunks x heads, all at once\n"
              f"each at its rows: W, k/b/r decayed [{CHUNK}, K]; U, A_rk V [{CHUNK}, V]; A_rb [{CHUNK}, {CHUNK}]; e^c_C [K]",
              fontsize=9)
for i_nh in range(Bp * Hp):
    for i_v in range(NVp):
        y = i_nh * NVp + i_v
        ax2.add_patch(Rectangle((0.04, y + 0.1), n_seq_ch + 0.9, 0.8, color=colors[i_v + 2], alpha=0.25))
        ax2.text(0.5, y + 0.5, f"S[:, {i_v * BVp}:{(i_v + 1) * BVp}]\n[{Kp}, {BVp}]", ha="center", va="center",
                 fontsize=6.5)
        for j in range(n_seq_ch):
            ax2.text(j + 1.5, y + 0.5, f"chunk {j}\nckpt, o", ha="center", va="center", fontsize=6.5)
            ax2.annotate("", xy=(j + 1.08, y + 0.5), xytext=(j + 0.92, y + 0.5), arrowprops=dict(arrowstyle="->"))
ax2.set_xlim(0, n_seq_ch + 1), ax2.set_ylim(Bp * Hp * NVp, 0), ax2.set_xticks([])
ax2.set_yticks([y + 0.5 for y in range(Bp * Hp * NVp)],
               [f"i_v={y % NVp}, i_nh={y // NVp}" for y in range(Bp * Hp * NVp)], fontsize=7)
ax2.set_title(f"state pass: grid ({NVp}, {Bp * Hp}) = V-blocks x sequence·heads (GPU tiling, BV = {BVp})\n"
              "each: its state tile in registers, the chunks in order", fontsize=9)
plt.tight_layout()
plt.show()
assert NVp * BVp == Vp and NVp == 2                                       # the V-blocks tile V exactly
assert (Bp * n_seq_ch * Hp) * CHUNK == Bp * Tp * Hp                      # prep programs tile the token rows

# %% [markdown]
# The two grids differ in shape as much as in size. At the training shape the prep has 32768
# programs with one chunk each, far more than the 132 multiprocessors. The state pass has 128,
# fewer than one per multiprocessor, and each of them runs 256 chunks one after another. All
# the parallel work went into the first launch. What is left in the second is a chain, and
# Section 4 measures what one link of it costs.

# %% [markdown]
# A picture of what one chunk computes: the four pairwise matrices, and the UT transform of
# $A_{ab}$, for one 16-token chunk of realistic inputs. They are made with the package's torch
# functions, `reference.intra_chunk_matrices` and `reference.ut_transform`, which compute the
# same matrices as the kernel's registers. $A_{rk}$ and $A_{rb}$ are lower triangular *with*
# the diagonal (a token reads its own write). $A_{ab}$ and $A_{ak}$ are strictly lower (the
# removal at $t$ sees only earlier writes). $\mathcal T$ is unit lower triangular.

# %%
r, w, k, v, a, b, s0 = inputs(1, C16, 1, 16, 16, seed=10)
mats = ref.intra_chunk_matrices(*(x[0, :, 0].cpu() for x in (r, w, k, a, b)))
Tut = ref.ut_transform(mats["A_ab"])
fig, axes = plt.subplots(1, 5, figsize=(15, 3.2))
for ax, (name, M) in zip(axes, [("A_rk (i ≤ t)", mats["A_rk"]), ("A_rb (i ≤ t)", mats["A_rb"]),
                                ("A_ak (i < t)", mats["A_ak"]), ("A_ab (i < t)", mats["A_ab"]),
                                ("T = (I - A_ab)^-1", Tut)]):
    lim = M.abs().max().item()
    ax.imshow(M.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_title(name, fontsize=10), ax.set_xlabel("i (source token)"), ax.set_ylabel("t")
plt.tight_layout()
plt.show()
assert torch.equal(torch.triu(mats["A_ab"]), torch.zeros(C16, C16))          # strictly lower
assert torch.allclose(torch.diagonal(Tut), torch.ones(C16))                  # unit diagonal
assert torch.allclose(Tut @ (torch.eye(C16) - mats["A_ab"]), torch.eye(C16), atol=1e-5)

# %% [markdown]
# And the check, on the shapes *Triton I* checked the recurrent kernel on, plus $K = 32 > V$ at
# $T = 33$, one token past two chunks. $T = 37$ is not a multiple of the chunk either. Its last chunk is loaded with masked rows, whose zeros ($w = 0$,
# $k = a = b = 0$) leave the state unchanged. The packed batch has a sequence of one token.

# %%
ref.forward_check(wkv7.triton_chunked, "triton_chunked",
                  [(1, 1, 1, 16, 16), (1, 37, 2, 16, 16), (2, 19, 2, 16, 32), (1, 33, 1, 32, 16)], device=DEV,
                  tol=1e-5)

# %% [markdown]
# ## 2. The chunked kernel's backward pass
#
# The chunked backward kernel differentiates chapter 10's algebra chunk by chunk. It uses the
# same grid as the forward and walks the chunks from last to first, carrying $\bar S$ in
# registers the way the recurrent backward carries it from token to token. For each chunk it
# reloads the chunk's start state, which the forward saved, and recomputes what the forward
# had in registers: the pairwise matrices, $\mathcal T$, $W$, $A_{ak}V$ and $E$. Then it runs
# the adjoint of every line, bottom to top. Write $k^{\mathrm e} = k\odot e^{c_C - c}$ and
# $b^{\mathrm e} = b\odot e^{c_C - c}$ for the keys decayed to the chunk's end,
# $\tilde a = a\odot e^{c_{t-1}}$ and $\tilde r = r\odot e^{c_t}$ for those seen from its start,
# and $\gamma = e^{c_C}$. The read-out's scale is folded into $\bar O$. With $\bar S'$ the
# gradient arriving at the chunk's end state:
#
# $$ \bar E = A_{rb}^\top \bar O + b^{\mathrm e}\,\bar S', \qquad
#    \bar S = \mathrm{diag}(\gamma)\,\bar S' + \tilde r^\top \bar O + W^\top \bar E, $$
# $$ \bar V = A_{rk}^\top \bar O + k^{\mathrm e}\,\bar S' + A_{ak}^\top\,\mathcal T^\top \bar E, $$
# $$ \bar A_{rb} = \bar O E^\top,\quad \bar A_{rk} = \bar O V^\top,\quad
#    \bar A_{ak} = \mathcal T^\top \bar E\, V^\top,\quad
#    \bar{\tilde a} = \mathcal T^\top \bar W \ \text{ with } \bar W = \bar E S^\top . $$
#
# Each $\bar A$ is masked to its matrix's triangle. The triangular inverse needs one line of its
# own. From $\mathcal T (I - A_{ab}) = I$, a perturbation gives $d\mathcal T = \mathcal T\, dA_{ab}\,
# \mathcal T$, so
#
# $$ \bar{\mathcal T} = \bar W \tilde a^\top + \bar E\,(A_{ak}V)^\top, \qquad
#    \bar A_{ab} = \mathcal T^\top\, \bar{\mathcal T}\, \mathcal T^\top . $$
#
# With the recomputation, that is about two dozen small `tl.dot`s per chunk. The pairwise
# matrices then pass their gradients to $r, k, a, b$ along the path the forward took for that
# chunk (`_pair_grads` makes the same test on the same numbers). On the factored path that is
# eight more `tl.dot`s: with $\tilde r = r\odot e^{c}$ and $\hat k = k\odot e^{-c}$,
# $\bar{\tilde r} = \bar A_{rk}\hat k + \bar A_{rb}\hat b$ and $\bar{\hat k} = \bar A_{rk}^\top\tilde r
# + \bar A_{ak}^\top\tilde a$, and each factor hands $x\odot\bar x$ to the exponent it carries,
# $+$ for $e^{c}$ and $-$ for $e^{-c}$. On the exact path they go through the same
# `[BT, BT, BK]` blocks of exponentials the forward built. For example,
# $A_{rk}[t,i] = \sum_\kappa r_{t\kappa} e^{c_{t\kappa}-c_{i\kappa}} k_{i\kappa}$ sends
# $\bar A_{rk}[t,i]\, e^{c_t - c_i} k_i$ to $\bar r_t$, and the mirror-image term to $\bar k_i$.
#
# **The decay gradient, and chapter 10's second trap.** Every exponent in the chunk is a sum of
# log decays over an interval: $c_t - c_i = \sum_{i<j\le t} w_j$, $c_C - c_t = \sum_{j>t} w_j$,
# and so on. So $\bar w_j$ is the sum of the gradients of all the exponents whose interval
# contains $j$. The obvious way to compute it is the first draft of this kernel: add each
# pairwise term to $\bar c_t$ with $+$ and to $\bar c_i$ with $-$, then take one reverse
# cumulative sum. That adds and then cancels the diagonal terms ($e^{c_t - c_t} = 1$, an
# $O(1)$ number for any decay), and with $w = -8$ the true $\bar w$ is about $e^{-8}$ times
# smaller. Measured on that draft, the float32 error of $\bar w$ was $4\times 10^{-4}$ at
# $w = -8$ and $60$ (everything lost) at $w = -20$ (a recorded measurement of code that no
# longer exists; chapter 10, §6, measures the same effect live on the torch form). The kernel
# avoids the cancellation by leaving out the exponents that are zero by construction: the
# diagonal of the read-out family, and the first sub-diagonal of the removal family, whose
# exponent $c_{t-1} - c_{t-1}$ is also empty. It then takes the remaining sums over $t$ as
# products with 0/1 triangular matrices on `tl.dot`:
#
# $$ \bar w_j = \sum_{t \ge j} \bar c_t + \sum_{t > j} \bar c^{\,-}_t + \sum_{t<j} q_t + \gamma\odot\bar\gamma,
# \qquad q = \bar k^{\mathrm e}\odot k^{\mathrm e} + \bar b^{\mathrm e}\odot b^{\mathrm e}, $$
#
# where $\bar c_t$ and $\bar c^{\,-}_t$ are the gradients with respect to $c_t$ and $c_{t-1}$
# wherever they appear in the remaining exponents (with a plus where an interval ends, a minus
# where it starts), $q_t$ collects the exponents $c_C - c_t$ that run from token $t$ to the
# chunk's end, and the last term is the same for every $j$ (every $w_j$ is inside $c_C$). A
# pairwise term that is still added with $+$ and $-$ has a non-empty interval, so it carries a
# factor $e^{w}$ or smaller and is no larger than the gradient it contributes to: nothing of
# size $O(1)$ is subtracted any more. (The factored path does subtract: its diagonal terms
# $\tilde r_t\hat k_t$ enter with $+$ and $-$. It runs only where the chunk's decay is at most
# `FACTORED_SPAN`, so $\bar w$ is not tiny there, and the cancellation costs float32 rounding
# of numbers of its own size.) The check below puts a
# constant $w = -20$ on every channel, which makes the true $\bar w$ about $10^{-9}$ of the other
# gradients.
#
# The code, in the order it is called: the factored pairs' gradients; `_row_grads`, which gives
# each row its own decay factor's share and takes the three 0/1 sums of $\bar w_j$ above;
# `_chunk_grads`, one chunk's recomputation and adjoint, which calls them; and the sequential
# kernel that walks the chunks.

# %%
print(inspect.getsource(kc._pair_grads_factored.fn))
print(inspect.getsource(kc._row_grads.fn))
print(inspect.getsource(kc._chunk_grads.fn))
print(inspect.getsource(kc.wkv7_bwd_chunked_kernel.fn))

# %%
ref.grad_check(wkv7.triton_chunked, inputs(1, 37, 2, 16, 32, seed=7, decay=2.0), "triton_chunked (1, 37, 2, 16, 32)",
               tol=1e-5)
ref.grad_check(wkv7.triton_chunked, inputs(1, 40, 2, 16, 16, seed=7, decay=2.0, N=3), "triton_chunked varlen [7, 2, 31]",
               cu_seqlens=torch.tensor([0, 7, 9, 40], device=DEV))

r, w, k, v, a, b, s0 = inputs(1, 40, 1, 16, 16, seed=15)
w = torch.full_like(w, -20.0)
do = torch.randn(1, 40, 1, 16, generator=torch.Generator().manual_seed(16)).to(DEV)
x64 = [x.detach().double().cpu().requires_grad_() for x in (r, w, k, v, a, b)]
want_dw = torch.autograd.grad((wkv7.naive(*x64)[0] * do.cpu().double()).sum(), x64[1])[0]
for name in ("triton_chunked", "triton_recurrent"):
    xk = [x.clone().requires_grad_() for x in (r, w, k, v, a, b)]
    got_dw = torch.autograd.grad((getattr(wkv7, name)(*xk)[0] * do).sum(), xk[1])[0]
    rwkvlab.check(f"{name}: dw at w = -20 everywhere vs float64", got_dw, want_dw, 1e-5)
print(f"(|dw| ~ {want_dw.abs().max().item():.0e}: tiny, and still exact to float32)")
assert want_dw.abs().max() < 1e-6

# %% [markdown]
# ### What flows where
#
# The backward never sees the forward's registers. What connects them is the checkpoints, the
# state at every chunk start, which the state pass writes (float32, one `[K, V]` state per
# chunk and head, `[n_chunks, H, K, V]`). The backward kernel has the state pass's grid,
# `(NV, N·H)`, and each program walks its sequence from the last chunk to the first with
# $\bar S$ in registers. At each chunk it reloads the checkpoint, rebuilds the pairwise matrices,
# $\mathcal T$, $W$, $U$ and $E$ from it and the inputs (the prep kernel's $W$, $U$, $A$ are not
# kept), runs the adjoint, and hands $\bar S$ on to the chunk before. $\bar v$ sums over $K$, so
# it is complete in one program. The five K-sized gradients sum over $V$, so each V-block writes
# its own partial sum to an `[NV, B, T, H, K]` buffer, and the host adds those up after the launch.
# With one V-block, as on the H200, they are written directly in the input dtype.
#
# That is the *sequential* schedule, one launch. Its loop carries the same chain the forward's
# state pass carried before this chapter's prep launch took the state-free work out of it: per
# chunk, the pairs, $\mathcal T$, $W$, $U$ and the whole adjoint, all waiting on the $\bar S$
# of the chunk after. With 128 programs (B = 4, H = 32) that is one program per multiprocessor
# and the machine is full. With 8 (B = 1, H = 8) it is not: 124 of the H200's 132
# multiprocessors idle while 8 programs each walk 4096 chunks (54.6 ms for the backward in the
# breakdown record, against 3.5 ms at B = 4 for the same number of chunk steps).
#
# So the backward has a second, *parallel* schedule, the forward's split applied to the
# adjoint. Of the chunk's lines only one involves the next chunk,
# $$ \bar E = A_{rb}^\top \bar O + \hat b\,\bar S', \qquad
#    \bar S = \mathrm{diag}(e^{c_C})\,\bar S' + \tilde r^\top \bar O + W^\top \bar E , $$
# and everything it needs besides $\bar S'$ is a piece the forward's prep stored: $W$,
# $\tilde r = r\odot e^{c}$, $\hat b = b\odot e^{c_C-c}$, $A_{rb}$, $e^{c_C}$. A light *dS pass*
# (`wkv7_bwd_dstate_kernel`, the state pass's grid, three products per chunk, the next chunk's
# pieces prefetched) walks the chunks backwards and stores each chunk's $\bar S'$ beside its
# checkpoint. Then `wkv7_bwd_parallel_kernel`, one program per (V-block, chunk, head), runs the
# same chunk body as the sequential schedule (`_chunk_grads`), from the checkpoint $S$ and the
# stored $\bar S'$, for every chunk at once. The cost is memory: the forward keeps its pieces for
# the backward, and $\bar S'$ takes as much room as the checkpoints. `kc.bwd_schedule` takes
# the parallel schedule on a GPU and the sequential one in the interpreter (`"auto"`,
# `TUNE["bwd_schedule"]`); both are checked against autograd through `wkv7.naive` by the test
# suite. Section 4 times both on the H200: the parallel one was built for few sequences, and
# turned out faster at B = 4, H = 32 too.
#
# The cell checks the facts the picture rests on. The checkpoints of a real forward are the
# states of `wkv7.naive` at the chunk starts; the sequential backward is launched on the state
# pass's grid; and the parallel schedule, launched on its two grids, gives the same gradients.

# %%
r, w, k, v, a, b, s0 = xs_g
_, _, ckpt_g, _, _ = kc.fwd(r, w, k, v, a, b, 1.0, s0, False, None, True, CHUNK)
n_c = -(-Ts // CHUNK)
starts = [s0.double().cpu()] + [ref.naive64(*(x[:, :i * CHUNK] for x in xs_g[:6]), s0, output_final_state=True)[1]
                                for i in range(1, n_c)]
rwkvlab.check(f"checkpoints of the forward vs naive states at tokens {[i * CHUNK for i in range(n_c)]}",
              ckpt_g.view(Bs, n_c, Hs, Ks, Vs).transpose(0, 1), torch.stack(starts), 1e-5)
bwd_rec = GridRecorder(kc.wkv7_bwd_chunked_kernel)
xk = [x.clone().requires_grad_() for x in xs_g]
# the sequential schedule by name: on a GPU "auto" would pick the parallel one
with mock.patch.dict(kc.TUNE, bwd_schedule="sequential"), mock.patch.object(kc, "wkv7_bwd_chunked_kernel", bwd_rec):
    wkv7.triton_chunked(*xk[:6], initial_state=xk[6])[0].sum().backward()
assert bwd_rec.grids == [(-(-Vs // kc.block_v(Vs, "bwd")), Bs * Hs)] and state_rec.grids[0][1] == Bs * Hs
print(f"backward grid {bwd_rec.grids[0]}: V-blocks x sequence·heads, as the state pass's {state_rec.grids[0]}")
g_seq = [x.grad.clone() for x in xk]

ds_rec, par_rec = GridRecorder(kc.wkv7_bwd_dstate_kernel), GridRecorder(kc.wkv7_bwd_parallel_kernel)
xk = [x.clone().requires_grad_() for x in xs_g]
with mock.patch.dict(kc.TUNE, bwd_schedule="parallel"), mock.patch.object(kc, "wkv7_bwd_dstate_kernel", ds_rec), \
        mock.patch.object(kc, "wkv7_bwd_parallel_kernel", par_rec):
    wkv7.triton_chunked(*xk[:6], initial_state=xk[6])[0].sum().backward()
assert ds_rec.grids == state_rec.grids and par_rec.grids == [(1, Bs * -(-Ts // CHUNK), Hs)]
rwkvlab.check(f"parallel schedule (dS pass grid {ds_rec.grids[0]}, gradient grid {par_rec.grids[0]}) vs sequential",
              [x.grad for x in xk], g_seq, 1e-6)

n_pic = 4
NVb_t = -(-Vt // gpu_block_v(Vt, "bwd"))
ckpt_mib = Bt * -(-Tt // CHUNK) * Ht * Kt * Vt * 4 / 2 ** 20
fig, ax = plt.subplots(figsize=(13, 3.6))
ax.set_xlim(-1.6, 12.4), ax.set_ylim(-0.2, 3.5), ax.axis("off")
xs_box = [0.2 + 2.3 * i for i in range(n_pic)]
for i, x0 in enumerate(xs_box):
    ax.add_patch(Rectangle((x0, 2.55), 1.9, 0.7, fc=colors[0], alpha=0.3))
    ax.text(x0 + 0.95, 2.9, f"chunk {i}: E, o,\nhand-off S", ha="center", va="center", fontsize=7.5)
    ax.add_patch(Rectangle((x0 + 0.35, 1.55), 1.2, 0.55, fc=colors[2], alpha=0.35))
    ax.text(x0 + 0.95, 1.82, f"ckpt {i}\n[K, V] float32", ha="center", va="center", fontsize=7)
    ax.add_patch(Rectangle((x0, 0.15), 1.9, 0.95, fc=colors[3], alpha=0.3))
    ax.text(x0 + 0.95, 0.62, f"chunk {i}: reload ckpt {i},\nrecompute A, T, W, U, E,\nadjoint -> grads, dS",
            ha="center", va="center", fontsize=7)
    ax.annotate("", xy=(x0 + 0.95, 2.1), xytext=(x0 + 0.95, 2.55), arrowprops=dict(arrowstyle="->"))
    ax.annotate("", xy=(x0 + 0.95, 1.1), xytext=(x0 + 0.95, 1.55), arrowprops=dict(arrowstyle="->"))
    if i + 1 < n_pic:
        ax.annotate("", xy=(x0 + 2.3, 2.9), xytext=(x0 + 1.9, 2.9), arrowprops=dict(arrowstyle="->"))
        ax.annotate("", xy=(x0 + 1.9, 0.62), xytext=(x0 + 2.3, 0.62), arrowprops=dict(arrowstyle="->", color="C3"))
        ax.text(x0 + 2.1, 0.82, "dS", ha="center", fontsize=7, color="C3")
ax.text(-0.8, 2.9, "forward\nstate pass\n(chunks in order)", ha="center", va="center", fontsize=8)
ax.text(-0.8, 1.82, "device\nmemory", ha="center", va="center", fontsize=8)
ax.text(-0.8, 0.62, "backward\n(last chunk\nto first)", ha="center", va="center", fontsize=8)
ax.text(0.1, -0.1, "dh0 = dS after chunk 0", fontsize=7, color="C3")
ax.add_patch(Rectangle((9.5, 0.15), 2.85, 0.95, fc="0.9"))
ax.text(10.92, 0.62, "dv: complete per program\ndr, dw, dk, da, db: one partial per\n"
        "V-block [NV, B, T, H, K]; host sums NV", ha="center", va="center", fontsize=7)
ax.annotate("", xy=(9.5, 0.62), xytext=(xs_box[-1] + 1.9, 0.62), arrowprops=dict(arrowstyle="->"))
ax.set_title(f"the backward at B={Bt}, T={Tt}, H={Ht}, K=V={Kt} on a GPU: {NVb_t * Bt * Ht} programs (NV = {NVb_t}), "
             f"{-(-Tt // CHUNK)} chunks each; checkpoints {ckpt_mib:.0f} MiB", fontsize=9)
plt.show()
assert ckpt_mib == 512                                   # Triton I, §4: "checkpoint every C = 16", 0.5 GiB

# %% [markdown]
# ## 3. Every rung agrees
#
# On one input, the four implementations of RWKV-7 in the package: the loop, the torch chunked
# form of chapter 10, the recurrent kernel of *Triton I* and the chunked kernel of this chapter.
# All are compared with the float64 loop.

# %%
r, w, k, v, a, b, s0 = inputs(2, 29, 2, 16, 16, seed=11)
want = ref.naive64(r, w, k, v, a, b, s0, output_final_state=True)
for name in ("naive", "chunked", "triton_recurrent", "triton_chunked"):
    got = getattr(wkv7, name)(r, w, k, v, a, b, initial_state=s0, output_final_state=True)
    rwkvlab.check(f"wkv7.{name} (float32) vs naive (float64)", got, want, 1e-5)

# %% [markdown]
# ## 4. On a GPU: bfloat16 and speed
#
# With a GPU the same kernels compile, and the checks move to training-sized shapes in
# bfloat16. A bf16 input keeps 8 significant bits, a relative rounding error of up to
# $2^{-8} \approx 4\times 10^{-3}$ per number. The kernels accumulate in float32, so that rounding does not compound,
# and the book's stated tolerance for bf16 outputs and gradients is $10^{-2}$ relative to a
# float64 loop on the same (rounded) inputs, about three times what an H200 measured
# ($3.4\times10^{-3}$ at worst, `benchmarks/results/h200_wkv7_v4_2026-12-01.txt`). The test
# suite checks the same bound.

# %% [markdown]
# ### What tf32 does to the in-chunk factors
#
# That tolerance covers the whole pipeline. Inside the prep kernel one step deserves its own
# numbers. With 16-bit inputs the factored pairwise matrices
# $A_{rk} = (r\odot e^{c})(k\odot e^{-c})^\top$ (and the three others, $W$, $U$ and the state
# pass's products) run on tf32 tensor cores. The float32 operands keep only 10 of their 23
# mantissa bits there. Two errors meet in these factors.
#
# - **float32 running sums.** $e^{c_t}e^{-c_i}$ carries the rounding of both $c_t$ and $c_i$,
#   a relative error of up to about $(|c_t| + |c_i|)\cdot 2^{-24}$. It grows with the chunk's decay
#   span $-c_C$, and `FACTORED_SPAN = 40` caps it near $2\cdot 40\cdot 2^{-24} \approx 5\cdot10^{-6}$.
# - **tf32 operands.** Rounding an operand to nearest costs up to $2^{-11} \approx 4.9\cdot10^{-4}$,
#   whatever the span. Dropping the low 13 bits costs up to $2^{-10}$. Triton's `"tf32"` dot feeds
#   the float32 bits to the tensor cores unrounded (the hardware ignores the low 13), so the GPU
#   truncates unless a kernel rounds first. Torch's and cuBLAS's tf32 round to nearest. The
#   difference is discussed in triton-lang/triton issue #4574 (references, chapter 16).
#
# The cell emulates one chunk of the 16-bit path in torch on a CPU. The inputs come from
# `wkv7.random_inputs` (8 heads, $K = V = 64$), rounded to bf16, with $w$ rescaled so that the
# largest channel decay over the chunk, $-c_C$, sweeps from 1 to 40. In float32 it computes
# the four matrices as the kernel does, then $\mathcal T$ by squaring (`"ieee"`, plain float32), $W$, $U$, $E$ and the chunk's output
# $O$ from a float32 start state. It does this three times: every product in float32, tf32
# rounded to nearest, and tf32 truncated. The reference is float64 on the same rounded inputs:
# `reference.intra_chunk_matrices`, `reference.ut_transform`, and the same three lines for $W$,
# $U$ and $O$, checked against `wkv7.naive` on the chunk. The first panel isolates the decay
# factor $e^{c_t}e^{-c_i}$ itself, against the exact $e^{\sum_{i<j\le t} w_j}$, for every pair
# and channel.

# %%
NSQ = kc._squarings(CHUNK)


def to_tf32(x, how):
    """float32 -> tf32 (10 mantissa bits) by bit masking: "round" to nearest (ties away, as
    cvt.rna), "trunc" drops the low 13 bits (a tensor core fed float32 bits); "ieee": unchanged."""
    if how == "ieee":
        return x
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000 if how == "round" else bits) & -0x2000).view(torch.float32)


def chunk_16bit_path(r, w, k, v, a, b, S, how):
    """One chunk of the prep kernel and the state pass on the factored path, in float32 torch,
    every tl.dot with DOT_PREC = `how` (T's squarings are always "ieee"). Inputs [H, C, K]."""
    dot = lambda x, y: to_tf32(x, how) @ to_tf32(y, how)                     # noqa: E731
    c = w.cumsum(-2)
    c_prev = torch.nn.functional.pad(c[..., :-1, :], (0, 0, 1, 0))
    r_dec, a_dec, k_inv, b_inv = r * c.exp(), a * c_prev.exp(), k * (-c).exp(), b * (-c).exp()
    incl, strict = torch.ones(CHUNK, CHUNK).tril(), torch.ones(CHUNK, CHUNK).tril(-1)
    out = {"A_rk": dot(r_dec, k_inv.mT) * incl, "A_rb": dot(r_dec, b_inv.mT) * incl,
           "A_ak": dot(a_dec, k_inv.mT) * strict, "A_ab": dot(a_dec, b_inv.mT) * strict}
    Tm, P = torch.eye(CHUNK) + out["A_ab"], out["A_ab"]
    for _ in range(NSQ):
        P = P @ P
        Tm = Tm + Tm @ P
    W, U = dot(Tm, a_dec), dot(Tm, dot(out["A_ak"], v))
    E = dot(W, S) + U
    return out | {"T": Tm, "W": W, "U": U, "O": dot(r_dec, S) + dot(out["A_rk"], v) + dot(out["A_rb"], E)}


def chunk_float64(r, w, k, v, a, b, S):
    """The same quantities from the package's float64 pieces (every exponent over its own interval)."""
    m = ref.intra_chunk_matrices(r, w, k, a, b)
    Tm = ref.ut_transform(m["A_ab"])
    W, U = Tm @ m["a_start"], Tm @ m["A_ak"] @ v
    O = m["r_start"] @ S + m["A_rk"] @ v + m["A_rb"] @ (W @ S + U)
    return {n: m[n] for n in ("A_rk", "A_rb", "A_ak", "A_ab")} | {"T": Tm, "W": W, "U": U, "O": O}


H8, K64 = 8, 64
x64 = wkv7.random_inputs(1, CHUNK, H8, K64, K64, seed=19, dtype=torch.float64, key_scale=K64 ** -0.5,
                         with_state=True)
heads = [x[0].transpose(0, 1) for x in x64[:6]]                                 # [H, C, K]
S_f32 = x64[6][0].float()
o_naive = wkv7.naive(*(x.bfloat16().double() for x in x64[:6]), initial_state=x64[6])[0][0].transpose(0, 1)
assert rel_err(chunk_float64(*(x.bfloat16().double() for x in heads), x64[6][0])["O"], o_naive) < 1e-12



def factor_error(w):
    """Max relative error of e^{c_t} e^{-c_i} in float32 over all pairs i <= t and channels, against the
    exact e^{w_{i+1} + ... + w_t}; with the max of the bound (|c_t| + |c_i|) 2^-24, and the share of
    running sums c_t that float32 holds exactly."""
    c32 = w.cumsum(-2)
    fac32 = c32.exp()[:, :, None, :] * (-c32).exp()[:, None, :, :]              # [H, t, i, K]
    fac64 = ref.segment_log_decays(w.double()).exp()
    lower = torch.ones(CHUNK, CHUNK, dtype=torch.bool).tril()[None, :, :, None].expand_as(fac64)
    ca = c32.double().abs()
    bound = (ca[:, :, None, :] + ca[:, None, :, :]) * 2 ** -24
    err = (fac32.double() - fac64).abs() / fac64
    assert (err - bound - 3 * 2 ** -24)[lower].max() <= 0    # + the roundings of two exps and a product
    exact = (c32.double() == w.double().cumsum(-2)).double().mean().item()
    return err[lower].max().item(), bound[lower].max().item(), exact


spans, fac16, fac32, mat_err = [], [], [], {how: [] for how in ("ieee", "round", "trunc")}
for target in (1, 2, 5, 10, 20, 30, 40):
    w_t = heads[1] * target / (-heads[1].sum(-2, keepdim=True)).amax(-1, keepdim=True)
    x16 = [x.bfloat16().float() for x in (heads[0], w_t, *heads[2:])]          # bf16-rounded, as float32
    spans.append((-x16[1].double().sum(-2)).amax().item())
    assert spans[-1] <= kc.FACTORED_SPAN * 1.001                                # the factored path's range
    fac16.append(factor_error(x16[1]))                                          # w in bf16 (16-bit path)
    fac32.append(factor_error(w_t.float()))                                     # w in float32 (float32 path)
    want = chunk_float64(*(x.double() for x in x16), S_f32.double())
    for how in mat_err:
        got = chunk_16bit_path(*x16, S_f32, how)
        mat_err[how].append({n: rel_err(got[n], want[n]) for n in want})

print(f"{'-c_C':>5} {'bound':>7} {'bf16 w':>7} {'f32 w':>7} |" + "".join(f" {how + ': A':>12} {'T':>7} {'O':>7} |" for how in mat_err))
for i, s in enumerate(spans):
    cells = "".join(f" {max(mat_err[how][i][n] for n in ('A_rk', 'A_rb', 'A_ak', 'A_ab')):12.1e}"
                    f" {mat_err[how][i]['T']:7.1e} {mat_err[how][i]['O']:7.1e} |" for how in mat_err)
    print(f"{s:5.1f} {fac32[i][1]:7.1e} {fac16[i][0]:7.1e} {fac32[i][0]:7.1e} |{cells}")
print(f"running sums c_t exact in float32: {min(f[2] for f in fac16):.0%} with bf16 w, "
      f"{max(f[2] for f in fac32):.0%} at most with float32 w")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.6))
ax1.plot(spans, [f[0] for f in fac16], "o-", label="e^{c_t} e^{-c_i} in float32, w in bf16")
ax1.plot(spans, [f[0] for f in fac32], "s-", label="the same, w in float32")
ax1.plot(spans, [f[1] for f in fac32], "k--", label="(|c_t| + |c_i|) 2^-24")
for level, name in ((2 ** -11, "tf32 round, 2^-11"), (2 ** -10, "tf32 truncate, 2^-10")):
    ax1.axhline(level, color="0.5", lw=0.8), ax1.text(1, level * 1.25, name, fontsize=8, color="0.3")
ax1.set_yscale("log"), ax1.set_ylim(top=3e-3), ax1.set_xlabel("the chunk's largest decay span -c_C")
ax1.set_ylabel("relative error")
ax1.set_title("one decay factor, elementwise", fontsize=10), ax1.legend(fontsize=7, loc="center right")
for how, style in (("ieee", "o-"), ("round", "s-"), ("trunc", "^-")):
    label = {"ieee": "float32", "round": "tf32 round", "trunc": "tf32 truncate"}[how]
    ax2.plot(spans, [max(e[n] for n in ("A_rk", "A_rb", "A_ak", "A_ab")) for e in mat_err[how]], style,
             label=f"A, {label}")
    ax2.plot(spans, [e["O"] for e in mat_err[how]], style, alpha=0.4, label=f"O, {label}")
ax2.axhline(2 ** -11, color="0.5", lw=0.8)
ax2.set_yscale("log"), ax2.set_xlabel("the chunk's largest decay span -c_C"), ax2.set_ylabel("||got - f64|| / ||f64||")
ax2.set_title("the four matrices and the chunk's output, normwise", fontsize=10), ax2.legend(fontsize=7, ncol=3)
plt.tight_layout()
plt.show()
worst = {how: max(max(e.values()) for e in mat_err[how]) for how in mat_err}
assert max(f[0] for f in fac16) < 4 * 2 ** -24                            # bf16 w: a few roundings, any span
assert fac32[-1][0] > 5 * fac32[0][0] and max(f[0] for f in fac32) < 5e-6   # float32 w: grows, under the cap
assert worst["ieee"] < 1e-6 < 2e-4 < worst["round"] < 2 ** -10 < worst["trunc"] < 2 ** -9
assert all(max(e["O"] for e in mat_err[how]) < 2 * min(e["O"] for e in mat_err[how]) for how in ("round", "trunc"))

# %% [markdown]
# The numbers say three things.
#
# 1. **The float32 bound holds, and with bf16 inputs it is not even approached.** With float32
#    log decays the factor's error grows with $-c_C$ as the bound says: $1.7\cdot10^{-7}$ at a
#    span of 1, $3.5\cdot10^{-6}$ at 40, under $(|c_t| + |c_i|)\cdot 2^{-24} = 4.8\cdot10^{-6}$.
#    With bf16 log decays every running sum here is exact in float32. A sum of 16 numbers with
#    8-bit significands needs only a few more bits than they have, unless a channel mixes tiny
#    and large decays. So the factor is off only by the rounding of two exponentials and a
#    product, about $1.5\cdot10^{-7}$ at every span.
# 2. **tf32 is the error, by three orders of magnitude.** With full float32 products every
#    quantity is good to about $10^{-7}$. With tf32 the matrices and the output sit near
#    $2^{-11}$ ($3\cdot10^{-4}$) when rounded and near $2^{-10}$ ($8\cdot10^{-4}$ to
#    $1.1\cdot10^{-3}$) when truncated, flat across the sweep. The `FACTORED_SPAN` cap guards
#    against overflow and against the float32 error, which even with float32 decays at a span of
#    40 stays about 100 times below tf32's. It is not what sets the 16-bit path's accuracy.
# 3. **It is well inside the budget.** $\mathcal T$ comes out more accurate than $A_{ab}$ (its
#    squarings run in IEEE float32, and $A_{ab}$ is small). The output's worst, $1.1\cdot10^{-3}$
#    truncated, is about 10 times below the $10^{-2}$ tolerance, and it is smaller than
#    bf16's own rounding, $2^{-9}$. The H200 records agree (bf16 against float64 on the same
#    inputs, $B = 2$, $T = 512$, $H = 4$). With the decayed rows kept in float32
#    (`benchmarks/results/h200_wkv7_v3_2026-12-01.txt`) the float32 final state is off by
#    $3.4\times10^{-4}$, the same order as the emulation; storing those rows in bf16, as the
#    kernel now does for 16-bit inputs (`h200_wkv7_v4_2026-12-01.txt`), adds one bf16 rounding
#    per row and takes the state to $1.2\times10^{-3}$. The bf16 output is off by
#    $2.1\times10^{-3}$ in both, about the size of bf16's rounding, and every gradient by at
#    most $3.4\times10^{-3}$.

# %% [markdown]
# Measured on one NVIDIA H200 (Triton 3.6, torch 2.11, fla-core 0.6.0; B = 4, H = 32, K = V = 64,
# bfloat16; `triton.testing.do_bench` medians in ms, the public function's value checks
# included). These are recorded numbers, not computed by this chapter. The records, in
# `benchmarks/results/`: `h200_wkv7_v4_2026-12-01.txt` (this design; its first section is the
# shipped settings at T = 4096, its second the same script one commit earlier, with float32
# decayed rows and the whole V per program, at four shapes, with FLA's
# `chunk_rwkv7(..., lower_bound=-e^{-1/2})` timed in the same process);
# `h200_wkv7_v4_breakdown_2026-12-01.txt` (each launch alone, `benchmarks/gpu_wkv7_breakdown.py`);
# `h200_wkv7_v3_2026-12-01.txt` (v3: the same two launches, but a state pass that recomputed the
# decays and loaded the raw inputs); `h200_wkv7_v2_2026-12-01.txt` (FLA's default). The first
# row is the first design (one kernel, the pairwise `[16, 16, 64]` blocks for every chunk and
# the substitution loop), from the RWKV-7 issue's measurement on the same kind of machine.
#
# | kernel | T | forward | forward + backward |
# |---|---|---|---|
# | `triton_chunked`, first design | 4096 | 14.7 | 62.0 |
# | `triton_recurrent` | 4096 | 7.30 | 20.1 |
# | `triton_chunked(..., lower_bound)`, v3 | 4096 | 1.61 | 5.77 |
# | `triton_chunked` (any $w \le 0$), this design | 4096 | 1.97 | 8.81 |
# | `triton_chunked(..., lower_bound=-e^{-1/2})`, this design | 4096 | 1.55 | 5.51 |
# | FLA `chunk_rwkv7` (default) | 4096 | 1.92 | 6.95 |
# | FLA `chunk_rwkv7(..., lower_bound=-e^{-1/2})` | 4096 | 1.17 | 4.65 (v3's run) |
# | `triton_chunked(..., lower_bound)` / FLA lower_bound | 1024 | 0.49 / 0.40 | — |
# | same | 16384 | 5.71 / 4.59 | — |
# | same, B = 1, H = 8; v3 17.5 | 65536 | 8.76 / 4.01 | — |
# | same, V split in two (breakdown record) | 65536 | 7.08 | — |
#
# The factored pairwise matrices and the squared inverse (v2) made the chunked kernel 9× faster
# forward and 11× faster forward + backward than the first design. Moving the state-free work
# into a parallel prep launch (v3) gained nothing by itself: its state pass still recomputed
# the decays from $w$ and waited on about ten loads per chunk, some 6 µs a chunk whatever its
# V-block. This design takes the rest out of the chain. The prep stores each piece ready to
# multiply, the state pass does five accumulating products and has the next chunk's loads in
# flight, and the state pass now costs 2.4 µs a chunk at B = 4 (0.62 ms; 0.75 ms with the
# prefetch switched off, the breakdown record). At B = 1, H = 8 the forward fell from 17.5 to
# 8.8 ms, and to 7.1 ms when each head's V is split over two programs (eight programs leave
# 124 of the 132 multiprocessors idle; the split is now automatic, `kc.gpu_block_v`).
#
# Against FLA with the bound declared, in one process: 0.82× its speed forward at T = 1024,
# 0.76× at 4096 and 0.80× at 16384, and about 0.84× forward + backward at 4096 (FLA's time from
# v3's process). At B = 1, H = 8 it is about 0.57×. So the targets are not met. The breakdown
# record says where the time is now. At B = 4, T = 4096 the prep launch takes 0.88 ms, more
# than the state pass: 32,768 programs of 182 registers each, at three times its memory floor.
# The backward kernel takes 3.46 ms, 63 % of a training step. At this shape it is the
# sequential schedule, one kernel that recomputes each chunk's matrices inside its chain; the
# parallel schedule of section 2 was then timed against it (below) and replaced it on the GPU. `benchmarks/NOTES.md` keeps the log.

# %% [markdown]
# ### The roofline of each launch
#
# How far is each launch from what the hardware allows? Count, at the benchmark's shape, the
# bytes each one moves and the tensor-core FLOPs it does, and divide by the H200's measured
# ceilings: 4.1 TB/s for a device-to-device copy (bytes read + written) and ~790 TFLOP/s for a
# bf16 matmul (`benchmarks/NOTES.md`, "Ceilings").
#
# - **Bytes.** The prep reads $r, w, k, v, a, b$ in bf16 and writes its pieces: $W$, $U$,
#   $A_{rk}V$ and $A_{rb}$ in float32, the three decayed rows (float32 in the run the cell
#   reads: the record was taken before they went 16-bit) and $e^{c_C}$. The state pass reads the
#   pieces and its columns of $v$, and writes $o$ (bf16), the final state and the checkpoints
#   (the breakdown times it as training runs it). The backward reads $r, w, k, v, a, b, \bar o$
#   and the checkpoints, and writes the six gradients. Every V-block re-reads the K-sized rows,
#   so those bytes count `NV` times (`NV = 1` at this shape). One assumption: `_prefixes` loads
#   $w$ three times, at the chunk's rows and shifted one row up and one down (the prep and the
#   backward do). The cell assumes all three loads miss the cache (`W_LOADS = 3`), which is
#   pessimistic: the shifted rows overlap 15 of 16 rows with the first load and would mostly
#   hit L1/L2.
# - **FLOPs.** One entry per `tl.dot` per chunk: its `(m, n, k)`, at `2mnk` FLOPs. The cell
#   counts the `tl.dot(` calls in the kernels' own source, so the list cannot silently miss a
#   product. The floor counts every product at the bf16 rate. The 16-bit path's dots are tf32,
#   which Hopper runs at half that rate, and $\mathcal T$'s squarings are IEEE float32 on the
#   ordinary cores. Even so, the compute floor stays tens of microseconds.
#
# The measured times come from the breakdown record of the H200 run, which the cell reads and
# parses: `benchmarks/results/h200_wkv7_v4_breakdown_2026-12-01.txt`, each launch timed alone,
# rows `C=16 bounded` and `C=16 any w` at B = 4, T = 4096, H = 32 and at B = 1, T = 65536, H = 8.
# So each launch meets its own floor.

# %%
import re
from pathlib import Path

record = Path(rwkvlab.__file__).resolve().parents[1] / "benchmarks/results/h200_wkv7_v4_breakdown_2026-12-01.txt"
measured = {(int(m[1]), int(m[2]), int(m[3]), m[4]): dict(prep=float(m[5]), state=float(m[6]), bwd=float(m[7]))
            for m in re.finditer(r"B=(\d+) T=(\d+) H=(\d+) C=16 (bounded|any w)\s+prep ([\d.]+) .*?state ([\d.]+) "
                                 r".*?bwd kernel ([\d.]+)", record.read_text())}
assert len(measured) == 4, measured                    # 2 shapes x (bounded, any w): the shipped settings' rows

Br, Tr, Hr, Kr, Vr = 4, 4096, 32, 64, 64
BW, PEAK = 4.1e12, 790e12                               # H200: copy bytes/s, bf16 matmul FLOP/s
NV, NVb = 1, 1                                          # the record's V-blocks: the whole V per program
PIECE = 4                                               # the record's decayed rows: float32 (bytes each)
W_LOADS = 3                                             # assumption: w's shifted loads miss the cache


def tensor(width, size):
    """Bytes of one [B, T, H, width] tensor of `size`-byte numbers."""
    return Br * Tr * Hr * width * size


n_ch = Br * -(-Tr // CHUNK) * Hr                        # (chunk, head) pairs
ckpt_bytes, state_bytes = n_ch * Kr * Vr * 4, Br * Hr * Kr * Vr * 4
grads_k = 5 * tensor(Kr, 2) if NVb == 1 else 5 * NVb * tensor(Kr, 4)   # dr dw dk da db (or float32 partials)
pieces_k = tensor(Kr, 4) + 3 * tensor(Kr, PIECE) + tensor(CHUNK, 4) + n_ch * Kr * 4   # W, k/b/r decayed, A_rb, e^c_C
pieces_v = 2 * tensor(Vr, 4)                                                          # U, A_rk V
traffic = {                                             # (bytes read, bytes written)
    "prep": ((4 + W_LOADS) * tensor(Kr, 2) + tensor(Vr, 2), pieces_k + pieces_v),
    "state pass": (NV * pieces_k + pieces_v + tensor(Vr, 2), tensor(Vr, 2) + state_bytes + ckpt_bytes),
    "backward": (NVb * (4 + W_LOADS) * tensor(Kr, 2) + 2 * tensor(Vr, 2) + ckpt_bytes, grads_k + tensor(Vr, 2)),
}
C, K_, BV, BVb = CHUNK, Kr, Vr // NV, Vr // NVb
pairs = [(C, C, K_)] * 4                                # _pairs_factored: the four pairwise matrices
inverse = [(C, C, C)] * (2 * NSQ)                       # _unit_lower_inverse: NSQ squarings, 2 dots each
dots = {                                                # (m, n, k) per tl.dot, per chunk and program
    "prep": pairs + inverse + [(C, K_, C), (C, Vr, C), (C, Vr, C), (C, Vr, C)],     # W, A_ak V, T (A_ak V), A_rk V
    "state pass": [(C, BV, K_), (C, BV, K_), (C, BV, C), (K_, BV, C), (K_, BV, C)],  # WS, (r e^c) S, A_rb E; hand-off
    "backward": pairs + inverse + [(C, K_, C), (C, BVb, C), (C, BVb, K_), (C, BVb, C)]       # recompute
    + [(C, BVb, C), (C, BVb, K_), (C, C, BVb), (C, C, BVb), (C, K_, BVb), (C, K_, BVb), (C, K_, BVb)]
    + [(C, K_, BVb), (C, BVb, C), (C, BVb, C), (C, BVb, K_), (C, BVb, C), (C, K_, C), (C, C, K_), (C, C, BVb)]
    + [(C, C, BVb), (C, C, C), (C, C, C), (K_, BVb, C), (K_, BVb, C)]                # dA_ak, dA_ab, dS
    + [(C, K_, C)] * 8 + [(C, K_, C)] * 3,              # _pair_grads_factored, then dw's 0/1 sums
}
n_dots = lambda f: inspect.getsource(f.fn).count("tl.dot(")                      # noqa: E731
assert len(dots["prep"]) == n_dots(kc._pairs_factored) + NSQ * n_dots(kc._unit_lower_inverse) + n_dots(kc._prep_tiles)
assert len(dots["state pass"]) == n_dots(kc.wkv7_fwd_chunked_kernel)
assert len(dots["backward"]) == (n_dots(kc._pairs_factored) + NSQ * n_dots(kc._unit_lower_inverse)
                                 + n_dots(kc._pair_grads_factored) + n_dots(kc._chunk_grads) + n_dots(kc._row_grads))
programs = {"prep": n_ch, "state pass": n_ch * NV, "backward": n_ch * NVb}         # chunk steps, all programs
flops = {n: programs[n] * sum(2 * m * nn * kk for m, nn, kk in dots[n]) for n in dots}
floor = {n: max(sum(traffic[n]) / BW, flops[n] / PEAK) * 1e3 for n in dots}      # ms

print(f"B={Br} T={Tr} H={Hr} K=V={Kr} bf16, C={CHUNK}, NV={NV}, w loaded {W_LOADS}x; the state pass with its "
      f"{ckpt_bytes / 2**20:.0f} MiB of checkpoints (the backward's restart points)")
print(f"{'launch':11s} {'read':>9s} {'written':>9s} {'memory floor':>13s} {'tl.dot FLOPs':>13s} {'compute floor':>14s}"
      f" {'measured':>9s} {'x floor':>8s}")
key = {"prep": "prep", "state pass": "state", "backward": "bwd"}
for n in dots:
    t = measured[(Br, Tr, Hr, "bounded")][key[n]]
    print(f"{n:11s} {traffic[n][0] / 2**20:5.0f} MiB {traffic[n][1] / 2**20:5.0f} MiB {sum(traffic[n]) / BW * 1e3:9.3f} ms "
          f"{flops[n] / 1e9:8.1f} GFLOP {flops[n] / PEAK * 1e3:10.3f} ms {t:7.3f} ms {t / floor[n]:7.1f}x")
op_floor = (6 * tensor(Kr, 2) + tensor(Vr, 2)) / BW * 1e3   # the operator itself: inputs once, o once
handoff = 2 * (pieces_k + pieces_v) / BW * 1e3
print(f"the operator's own floor (6 inputs read, o written once): {op_floor:.3f} ms; the two launches' "
      f"{floor['prep'] + floor['state pass']:.3f} ms, of which {handoff:.3f} ms the pieces written and read back and "
      f"{ckpt_bytes / BW * 1e3:.3f} ms the checkpoints")
per_chunk = {(B_, T_, H_): m["state"] / -(-T_ // CHUNK) * 1e3 for (B_, T_, H_, n), m in measured.items() if n == "bounded"}
print("state pass time / chunks per program: "
      + ", ".join(f"B={B_} T={T_} H={H_} ({B_ * H_} programs) {us:.2f} us" for (B_, T_, H_), us in per_chunk.items()))
m_lb, m_any = measured[(Br, Tr, Hr, "bounded")], measured[(Br, Tr, Hr, "any w")]
print(f"any w (the exact path compiled in): prep {m_any['prep']:.3f} ms, state {m_any['state']:.3f} ms, "
      f"backward {m_any['bwd']:.3f} ms")
assert all(sum(traffic[n]) / BW > 2 * flops[n] / PEAK for n in dots)      # every launch: bytes, not FLOPs, bound it
assert all(m_lb[key[n]] > 1.5 * floor[n] for n in dots)                     # and each runs well above its floor
assert all(2 < us < 3 for us in per_chunk.values())                         # ~2.3-2.4 us a chunk, 8 or 128 programs
assert m_lb["prep"] > m_lb["state"] and m_lb["bwd"] > 3 * m_lb["state"]     # the state pass is no longer the cost

# %% [markdown]
# The floors tell a story in three parts. First, every launch is memory-bound on paper: its
# bytes take ten or more times longer than its products at the bf16 rate, and still several
# times longer at tf32's half rate.
#
# Second, the state pass has moved close to its floor: 1.7 times it, at about 2.3 TB/s. It is
# now partly bound by bandwidth, and the bandwidth goes to the split itself. The pieces the
# prep writes and the state pass reads back cost 0.41 ms of the two launches' 0.71 ms floor,
# against the operator's own 0.115 ms, and the checkpoints another 0.13 ms. That is why the
# decayed rows now travel in 16 bits for 16-bit inputs (the breakdown record: state pass 0.62
# → 0.56 ms, prep 0.88 → 0.82 ms), and why the float32 $W$, $U$, $A_{rk}V$ are the next bytes
# to question.
#
# Third, the per-chunk time. Divide the state pass's time by the chunks one program walks:
# 2.4 µs per chunk at B = 4 (128 programs) and 2.3 µs at B = 1, H = 8 (8 programs), against
# v3's 6 and 4 µs. At B = 1 that is still latency. Eight programs cannot fill the machine's
# bandwidth, and each waits for a chain of five dependent products per chunk. Splitting V gives
# twice the programs (7.1 ms instead of 8.8). Longer chunks would give fewer links, which is
# FLA's choice (64-token chunks in its state pass, built from 16-token pieces).
#
# What the floors do not show is where most of a training step goes. The backward runs at
# 9 times its floor. Its sequential schedule is the v3 design carried into the gradient: one
# kernel that, chunk by chunk, recomputes the pairwise matrices, $\mathcal T$, $W$ and $U$, and
# then runs the adjoint, all inside its chain. The forward's lesson applies to it unchanged:
# the parallel schedule keeps only the products with $\bar S$ in its sequential launch. It pays
# off most where the grid is small, and a little even at B = 4, H = 32, once its kernel runs
# on 4 warps (the last part of this section).

# %% [markdown]
# ### Beside FLA, kernel by kernel, and the one wait
#
# An end-to-end time mixes two things: the time the GPU spends in kernels, and the time it
# spends waiting for the host. A profile separates them. `benchmarks/gpu_kernel_profile.py` runs
# FLA's `chunk_rwkv7(..., lower_bound)` and `triton_chunked(..., lower_bound)` on the same
# inputs in one process under `torch.profiler`, and lists every GPU kernel with its mean time
# per forward. The record is `benchmarks/results/h200_kernel_profile_2026-12-01.txt`. The cell
# reads it, and maps FLA's six launches onto the two of this chapter: everything that does not
# touch the state against the prep, the state recurrence and the output against the state pass.

# %%
results = Path(rwkvlab.__file__).resolve().parents[1] / "benchmarks/results"
prof = {}
for line in (results / "h200_kernel_profile_2026-12-01.txt").read_text().splitlines():
    if m := re.match(r"(FLA|ours) .*: ([\d.]+) us of GPU kernels per call", line):
        who, prof[m[1]] = m[1], {"total": float(m[2])}
    elif m := re.match(r"\s+([\d.]+) us\s+[\d.]+ %\s+(\w+)", line):
        prof[who][m[2]] = float(m[1])
state_free = ("chunk_rwkv6_fwd_cumsum_kernel", "chunk_dplr_fwd_A_kernel_intra_tensorcore",
              "prepare_wy_repr_fwd_kernel_safe", "wu_fwd_kernel")          # FLA: no state in these
with_state = ("chunk_dplr_fwd_kernel_h", "chunk_dplr_fwd_kernel_o")        # the recurrence, then o from it
fla_free, fla_state = (sum(prof["FLA"][n] for n in group) for group in (state_free, with_state))
ours_free, ours_state = prof["ours"]["wkv7_fwd_prep_kernel"], prof["ours"]["wkv7_fwd_chunked_kernel"]
print(f"B=4 T=4096 H=32 K=V=64 bf16, forward, mean GPU time per call (us):")
print(f"{'':34s} {'FLA':>8s} {'ours':>8s}")
print(f"{'state-free work (FLA: 4 launches)':34s} {fla_free:8.1f} {ours_free:8.1f}")
print(f"{'state and output (FLA: 2 launches)':34s} {fla_state:8.1f} {ours_state:8.1f}")
print(f"{'all kernels':34s} {prof['FLA']['total']:8.1f} {prof['ours']['total']:8.1f}"
      f"   ours / FLA {prof['ours']['total'] / prof['FLA']['total']:.2f}")
assert abs(fla_free + fla_state - prof["FLA"]["total"]) < 1 and len(prof["FLA"]) == 7   # six launches, all mapped

# %% [markdown]
# The GPU does about the same amount of work either way: this chapter's two launches take
# within a few percent of FLA's six. Yet the forward as a caller times it was 1.5 ms against
# FLA's 1.17 (the table above). The rest is waiting. The forward checks the values it reads
# (NaN, Inf, a decay out of range) inside the prep kernel, and sets one flag; the host reads
# that flag back before it returns, so that bad input is a `ValueError` and never an answer.
# Reading it makes the host wait until the GPU has finished. Only then does the host start the
# next call's work: the argument checks, the allocations, two launches. On that machine's CPU
# this costs a few hundred microseconds, and the GPU idles through all of it. FLA's forward
# never waits, so its host work for the next call overlaps the kernels of this one.
#
# `triton_chunked(..., check_values=False)` skips the check and the wait (shapes, dtypes and
# devices are still checked). The record `h200_v5_check_values_2026-12-01.txt` times both in
# one process beside FLA:

# %%
v5 = (results / "h200_v5_check_values_2026-12-01.txt").read_text()
rows = {}
for m in re.finditer(r"(wkv[67]) B=(\d+) T=(\d+) H=(\d+) fwd ours check on ([\d.]+)\s+ours check off ([\d.]+)\s+FLA ([\d.]+)", v5):
    rows[(m[1], int(m[2]), int(m[3]), int(m[4]))] = tuple(float(m[i]) for i in (5, 6, 7))
print(f"{'forward, bf16 (ms)':24s} {'checked':>8s} {'unchecked':>10s} {'FLA':>7s} {'FLA / unchecked':>16s}")
for (kind, B_, T_, H_), (on, off, fla) in rows.items():
    print(f"{kind} B={B_} T={T_:<5d} H={H_:<2d} {on:8.3f} {off:10.3f} {fla:7.3f} {fla / off:13.2f}x")
fb = {m[1]: (float(m[2]), float(m[3])) for m in re.finditer(
    r"(wkv[67]) B=4 T=4096 H=32 fwd\+bwd ours check on ([\d.]+) off ([\d.]+)", v5)}
print("forward + backward, B=4 T=4096 H=32: " + ", ".join(f"{k} checked {a:.3f}, unchecked {b:.3f} ms" for k, (a, b) in fb.items()))
sched = {m[1]: float(m[2]) for m in re.finditer(r"fwd\+bwd check off, backward (\w+): ([\d.]+)", v5)}
print(f"wkv7 B=1 T=65536 H=8 forward + backward: backward on the sequential schedule {sched['sequential']:.1f} ms, "
      f"on the parallel one {sched['parallel']:.1f} ms ({sched['sequential'] / sched['parallel']:.1f}x)")
assert all(off < on for (_, _, T_, _), (on, off, _) in rows.items() if T_ >= 4096)   # the wait costs at T ≥ 4096...
assert sched["parallel"] < sched["sequential"] / 3             # ...and the parallel backward pays where B·H is small

# %% [markdown]
# Without the wait this chapter's forward is 7 % slower than FLA's at T = 4096 and about
# 1.5 times faster at T = 1024, where FLA's six launches weigh more against less work; RWKV-6's
# kernels of chapter 07, which read their flag the same way, gain the same at T = 4096 (at
# T = 1024 their unchecked row came out slower than the checked one, 0.39 against 0.35 ms: one
# run, at a size where a forward is a few launches and the difference is within its noise;
# wkv7's rows at that size gained). At B = 1, H = 8 the
# state pass remains the gap: sixteen programs, each walking 4096 chunks one after another. The
# same record times the two backward schedules of section 2 where they differ most: at B = 1,
# H = 8 the parallel one takes a training step from about 61 ms to about 15.
#
# Which default is right? The check is what makes bad input an error instead of a NaN, and a
# reader calling the kernel by hand wants it. A model calling it once per layer per step, on
# values its own code produced, wants the GPU's queue kept full. So the check stays on by
# default, and `check_values=False` is the documented way to buy back the wait, as a choice
# the caller makes; the models make it.
#
# The wait itself can also be made shorter without giving anything up. The flag is final as
# soon as the last launch that sets it is done, and that is the prep when there is no initial
# state (the state pass checks only the initial state, which it reads). So the forward now
# queues a copy of the flag into pinned host memory right after the prep, with an event behind
# it (`kernels_common.FlagRead`), launches the state pass, and waits for the event only. While
# the host waits and then prepares its next call, the state pass keeps the GPU busy. RWKV-6's
# forward does the same after its state pass, with its output pass behind it. The records
# above predate this. The prediction was 1.50 → about 1.2 ms checked at T = 4096; the benchmark
# at the end of this part measured 1.11, beside FLA's 1.17.

# %% [markdown]
# ### Folding chunks: one product per step
#
# At B = 1, H = 8 the state pass is sixteen programs, each walking 4096 chunks of 16 tokens
# one after another. Every chunk puts two dependent products on the chain: $E = WS + U$, then
# the hand-off that needs $E$. At that size the chain is the whole cost. Chapter 10's torch
# form already writes the hand-off differently:
#
# $$S_{j+1} = P_j S_j + Q_j, \qquad O_j = R_j S_j + L_j,$$
#
# with $P_j = \operatorname{diag}(e^{c_C}) + \hat b^	op W$ ($K	imes K$),
# $Q_j = \hat k^	op V + \hat b^	op U$, $R_j = 	ilde r + A_{rb} W$ and
# $L_j = A_{rk}V + A_{rb}U$, none of which depends on the state. Affine maps compose. Write
# $S_j = ar P S + ar Q$ for the state at chunk $j$ of a step, in terms of the state $S$ at
# the step's start; before the first chunk $ar P = I$ and $ar Q = 0$. Then chunk $j$ reads
# out $O_j = (R_jar P)\,S + (R_jar Q + L_j)$, and the next chunk sees
# $(ar P, ar Q) \leftarrow (P_jar P,\; P_jar Q + Q_j)$.
#
# So a prep launch can fold four chunks of 16 into one step of 64 tokens. `wkv7_fwd_fold_kernel`
# makes each chunk's pieces with the same body as the prep (`_prep_tiles`), then stores per
# token $R_jar P$ and $R_jar Q + L_j$, and per step $ar P$ and $ar Q$. The state pass,
# `wkv7_fwd_folded_kernel`, then does per 64 tokens one product on its chain,
# $S \leftarrow ar P S + ar Q$, and one beside it, the output. The decay on $ar P$'s
# diagonal, $e^{\sum c_C}$, is stored apart and applied in float32, because a tf32 operand
# would round it at every step. What the fold gives up is the checkpoints: the backward restarts
# from the state at every chunk of 16, and the folded pass never stops there. So it serves
# forwards that take no gradient. Whether it pays depends on the grid, and the next section
# measures both sides; `kc.TUNE["fold"] = "auto"` folds only where the state pass alone would
# fill under half the multiprocessors (`kc.folds`).
#
# The cell runs it on two packed sequences whose lengths are not multiples of 64, and checks
# it against the float64 loop and against the unfolded forward:

# %%
xs_f = inputs(1, 170, 2, 16, 16, seed=31, decay=0.1, N=2)
cu_f = torch.tensor([0, 101, 170], device=xs_f[0].device)
want_f = ref.naive64(*xs_f[:6], xs_f[6], output_final_state=True, cu_seqlens=cu_f.cpu())
with mock.patch.dict(kc.TUNE, fold=False):       # unfolded by name ("auto" would fold this grid on a GPU)
    plain_f = wkv7.triton_chunked(*xs_f[:6], initial_state=xs_f[6], output_final_state=True, cu_seqlens=cu_f)
fold_grid = GridRecorder(kc.wkv7_fwd_fold_kernel)
with mock.patch.dict(kc.TUNE, fold=True), mock.patch.object(kc, "wkv7_fwd_fold_kernel", fold_grid):
    got_f = wkv7.triton_chunked(*xs_f[:6], initial_state=xs_f[6], output_final_state=True, cu_seqlens=cu_f)
print(f"steps of {kc.FOLD_TOKENS} tokens: fold grid {fold_grid.grids[0]} "
      f"(sequences of 101 and 69 tokens: 2 + 2 steps, 2 heads)")
rwkvlab.check("folded forward vs naive float64 (o, final state)", got_f, want_f, 1e-5)
rwkvlab.check("folded forward vs the unfolded one", got_f, plain_f, 1e-5)
assert fold_grid.grids == [(4, 2)]

# %% [markdown]
# ### Where the kernels stand: the recorded benchmark
#
# Three records from the H200 close this part (torch 2.11, Triton 3.6, fla-core 0.6.0;
# B = 4, H = 32 unless said, K = V = 64, bf16, `do_bench` medians in ms). The first,
# `benchmarks/results/h200_wkv7_v6_breakdown_2026-12-01.txt`
# (`python benchmarks/gpu_wkv7_breakdown.py --quick`), times each launch alone under variants of
# `kc.TUNE`: it is how the folded forward and the two backward schedules were judged. The
# second and third time the public function beside FLA's `chunk_rwkv7(..., lower_bound=-e^{-1/2})`
# in one process, with the settings the first record chose:
# `benchmarks/results/bench_h200_wkv7_2026-12-01.csv` has ours with and without the value check
# (`python -m rwkvlab bench --kinds wkv7 --impls triton_chunked_lb,fla.chunk_rwkv7_lb`; its run
# stopped at its time limit during T = 16384), and `bench_h200_wkv7_2026-12-02.csv` has all four
# target shapes, ours without the check (`--impls =triton_chunked_lb_unchecked,=fla.chunk_rwkv7_lb`).

# %%
bd = (results / "h200_wkv7_v6_breakdown_2026-12-01.txt").read_text()
brk = {}
for m in re.finditer(r"B=(\d) T=(\d+) H=(\d+) C=16 bounded (\{.*?\})?\s*(?:\[.*?\])?\s*prep ([\d.]+).*?"
                     r"state ([\d.]+).*?fwd as called ([\d.]+)\s+backward ([\d.]+|nan|\(none)", bd):
    brk[(int(m[1]), m[4] or "{}")] = (float(m[5]), float(m[6]), float(m[7]), m[8])
fold4, fold1 = brk[(4, "{'fold': True}")], brk[(1, "{'fold': True}")]
plain4, plain1 = brk[(4, "{}")], brk[(1, "{}")]
print(f"{'forward, launches alone (ms)':34s} {'prep':>6s} {'state':>6s} {'total':>6s}")
for label, row in (("B=4 H=32 T=4096 unfolded", plain4), ("B=4 H=32 T=4096 folded", fold4),
                   ("B=1 H=8 T=65536 unfolded", plain1), ("B=1 H=8 T=65536 folded", fold1)):
    print(f"{label:34s} {row[0]:6.3f} {row[1]:6.3f} {row[2]:6.3f}")
seq4 = float(brk[(4, "{'bwd_schedule': 'sequential'}")][3])
par4 = float(brk[(4, "{'bwd_schedule': 'parallel', 'bwd': (4, 1, 64)}")][3])
seq1 = float(brk[(1, "{'bwd_schedule': 'sequential'}")][3])
par1 = float(brk[(1, "{'bwd_schedule': 'parallel', 'bwd': (4, 1, 64)}")][3])
print(f"backward, B=4 H=32 T=4096: sequential (8 warps) {seq4:.2f}, parallel (4 warps) {par4:.2f} ms")
print(f"backward, B=1 H=8 T=65536: sequential {seq1:.1f}, parallel (4 warps) {par1:.2f} ms")
assert fold1[2] < plain1[2] and fold4[2] > plain4[2]     # the fold wins only where the grid is small
assert par4 < seq4 and par1 < seq1                       # the parallel schedule wins at both shapes

# %% [markdown]
# The fold does what it was built for, and less than predicted. At B = 1, H = 8 the state pass
# fell from 5.7 to 2.4 ms, a quarter of the links at 1.7 times the cost per link. But the fold's
# prep, with two $64\times64\times64$ products per chunk on top of the ordinary prep, takes
# 2.0 ms where 1.0–1.5 was predicted (`benchmarks/NOTES.md`), and the forward lands at 4.4 ms,
# not 3–3.5. At B = 4, H = 32 the GPU is already full, the shorter chain saves little, and the
# fold's prep makes the forward twice as slow. Hence the rule in `kc.folds`. The backward's two
# schedules were closer than section 2's picture suggested: once its kernel ran on 4 warps
# instead of 8 (fewer registers per program, more programs resident), the parallel schedule
# beat the sequential one at B = 4, H = 32 too, so it is now the schedule on every GPU
# (`kc.bwd_schedule`), and the sequential one runs in the interpreter.
#
# The fold's prep was the part to fix, and its algebra says how. $P_j$ is a scaling of the
# identity plus a rank-16 term, so $\bar P$ never has to meet it as a $K\times K$ matrix. Keep
# $\bar P = \operatorname{diag}(G) + N$, with $G$ the product of the chunks' decays so far; then
# $R_j\bar P = R_j\odot G + R_jN$, and
# $N \leftarrow g_j\odot N + \hat b_j^\top\,(W_j\odot G + W_jN)$, $G \leftarrow g_jG$. Every product is
# now $16\times K$ by $K\times K$ or $K\times16$ by $16\times K$, a quarter of a $K\times K\times K$
# product, about half the multiply-adds per chunk in all, and the compiled kernel spills 88 bytes
# per thread instead of 208 (`benchmarks/compile_check.py`). The records above are of the earlier
# form; this one is checked against the float64 loop (the cell of the previous section runs it).
# Its prediction, written before it ran: the fold's prep 2.05 → 1.35–1.55 ms at B = 1, H = 8,
# T = 65536, the forward 4.44 → 3.7–3.95. A later session timed it
# (`benchmarks/results/h200_wkv7_v7_breakdown_2026-12-01.txt`, the same script with
# `--match fold`):

# %%
bd7 = (results / "h200_wkv7_v7_breakdown_2026-12-01.txt").read_text()
b1 = bd7[bd7.index("--shape 1,65536,8"):]          # the call that timed only B = 1, H = 8
fold7 = {}
for m in re.finditer(r"B=1 T=65536 H=8 C=16 bounded (\{.*?\})?\s*prep ([\d.]+).*?state ([\d.]+).*?"
                     r"fwd as called ([\d.]+)", b1):
    fold7[m[1] or "{}"] = (float(m[2]), float(m[3]), float(m[4]))
for label, key in (("folded, 4 warps", "{'fold': True}"), ("folded, prep on 8 warps", "{'fold': True, 'fold_prep': (8, 1)}"),
                   ("folded, no value check", "{'fold': True, 'check': False}")):
    print(f"B=1 H=8 T=65536 {label:26s} prep {fold7[key][0]:.3f}  state {fold7[key][1]:.3f}  forward {fold7[key][2]:.3f} ms")
old_prep, new_prep = brk[(1, "{'fold': True}")][0], fold7["{'fold': True}"][0]
print(f"the fold's prep: {old_prep:.2f} ms before the rebuild, {new_prep:.2f} after (predicted 1.35-1.55)")
assert new_prep < old_prep                                  # faster, but by far less than predicted
assert fold7["{'fold': True, 'fold_prep': (8, 1)}"][2] < fold7["{'fold': True}"][2]

# %% [markdown]
# A miss: the prep fell by 6 %, not by a quarter. Halving the multiply-adds did not halve the
# time because the products were not what it waited on. Each chunk's step is a chain (the new
# $N$ needs the previous one) of seven small products whose operands are built elementwise in
# registers, and at 255 registers a program the multiprocessor holds too few of them to hide
# each product's latency; 8 warps instead of 4 spill less (32 bytes instead of 88) and took
# 1.86 ms, so `TUNE["fold_prep"]` is now `(8, 1)`. The folded forward at B = 1, H = 8 is
# 4.29 ms checked (4.18 without the value check, with the prep on 4 warps); FLA's 4.05 was measured in an earlier process,
# so the ratio, about 0.94–0.97×, was a cross-process estimate; the same-process record below
# puts it at 0.97×.
# The public function beside FLA, with these settings:

# %%
from rwkvlab import bench


def record(name):
    """{(impl, B, T, H): (fwd ms, fwd+bwd ms, x floor)} for a recorded bench CSV's dense rows."""
    return {(r["impl"], int(r["B"]), int(r["T"]), int(r["H"])): (float(r["fwd_ms"]), float(r["fwdbwd_ms"]),
                                                                  float(r["x_floor"]))
            for r in bench.read_csv(bench.RESULTS / name) if r["layout"] == "dense" and r["status"] == "ok"}


dec1, dec2 = record("bench_h200_wkv7_2026-12-01.csv"), record("bench_h200_wkv7_2026-12-02.csv")
ours, fla_lb = "triton_chunked_lb_unchecked", "fla.chunk_rwkv7_lb"
shapes = [(4, 1024, 32), (4, 4096, 32), (4, 16384, 32), (1, 65536, 8)]
print(f"{'B, T, H':16s} {'ours fwd':>9s} {'f+b':>7s} {'FLA fwd':>8s} {'f+b':>7s}   FLA/ours fwd, f+b   ours x floor (FLA)")
ratio = {}
for B_, T_, H_ in shapes:
    (f, fb, xf), (g, gb, xg) = dec2[(ours, B_, T_, H_)], dec2[(fla_lb, B_, T_, H_)]
    ratio[(B_, T_, H_)] = (g / f, gb / fb)
    print(f"{B_}, {T_:5d}, {H_:2d}      {f:9.3f} {fb:7.3f} {g:8.3f} {gb:7.3f}   {g / f:6.2f}x {gb / fb:5.2f}x"
          f"       {xf:5.1f} ({xg:.1f})")
chk, unchk = dec1[("triton_chunked_lb", 4, 4096, 32)], dec1[(ours, 4, 4096, 32)]
print(f"the value check at T=4096 (2026-12-01 record): fwd {unchk[0]:.3f} -> {chk[0]:.3f} ms, "
      f"fwd+bwd {unchk[1]:.3f} -> {chk[1]:.3f}")
assert all(min(ratio[s_]) >= 1.0 for s_ in shapes[:3]) and max(ratio[shapes[3]]) < 1.0

# the forward's bytes per token and head (K = V = 64, bf16 inputs, chunk 16), with the pieces'
# types as kc.TUNE sets them: the floor counts r, w, k, v, a, b read and o written once; the two
# launches also write the prep's pieces and read them back (the chunk decays G, K floats a chunk, left out)
e, Kb, Vb = 2, 64, 64
wu_e, piece_e = (e if kc.TUNE["wu"] == "input" else 4), (e if kc.TUNE["pieces"] == "input" else 4)
pieces_b = wu_e * (Kb + 2 * Vb) + piece_e * 3 * Kb + 4 * 16          # W, U, A_rk V; k, b, r decayed; A_rb
floor_b = 6 * Kb * e + Vb * e
moved_b = floor_b + 2 * pieces_b + Vb * e                            # + pieces out and back in, v read again
x16 = dec2[(ours, 4, 16384, 32)][2]
print(f"bytes per token and head: floor {floor_b}, pieces {pieces_b}, both launches {moved_b} "
      f"= {moved_b / floor_b:.1f}x the floor, of the {x16:.1f}x measured at T=16384")
assert 5 < x16 < 10 and moved_b / floor_b < x16 / 2

# %% [markdown]
# Where that leaves the targets. At B = 4, H = 32 the chapter's kernel is at least as fast as
# FLA's fastest configuration at every length, forward and forward + backward. At T = 1024 it
# is three times faster forward and nearly twice with the backward: FLA runs six launches and
# some host work per call, and at this size they weigh most. At T = 4096 and 16384 the lead is
# about 14 % forward and 3 % with the backward. That is parity, not the 1.5× aimed for. The
# default, which checks the values it reads, gives up part of that lead: at T = 4096 it was
# 1.05× and 1.00× of FLA in the earlier record (the output's second line; section 4 measured
# the wait).
#
# Two targets are missed. At B = 1, H = 8, T = 65536 the forward is 3 % slower than FLA's and the
# training step 11 % slower. Here only eight sequence·heads share 132 multiprocessors, so a
# forward that must keep its checkpoints for the backward cannot take the fold (section 4), and
# the state pass is a chain of 4096 dependent chunk steps at about 1.4 µs each. The backward's
# state pass is the same kind of chain, run backwards. Folding those two chains as well
# (checkpoints every 64 tokens, and the backward recomputing the three chunks in between) is the
# next design to try. The forward at T = 16384 is 9× its memory floor, not the 5× aimed for
# (FLA's is 10×). The floor counts only the inputs read and the output written, but the prep also
# writes about 1.2 KB of pieces per token and head, most of them float32, and the state pass
# reads them back. The last line of the output above counts those trips: they bring the bytes to
# about 4× the floor, under half of the measured 9×. The rest is latency: the prep's arithmetic
# (the 16×16 inverse, the W and U products) and the state pass's chain. A single-pass forward
# that never stores the pieces would remove the trips but not the arithmetic, so 5× would need
# both.
# `benchmarks/NOTES.md` keeps the log and what to try next.
#
# The cell below repeats the bf16 check and a small timing when a GPU is present. Without one,
# it prints a note: the interpreter would take hours at these shapes.

# %%
if rwkvlab.device.has_gpu():
    import triton

    xs = inputs(2, 1024, 4, 64, 64, seed=12, dtype=torch.bfloat16)
    want = ref.naive64(*xs, output_final_state=True)
    for name in ("triton_recurrent", "triton_chunked"):
        f = getattr(wkv7, name)
        rwkvlab.check(f"{name} bf16 (2, 1024, 4, 64, 64) vs naive float64",
                      f(*xs[:6], initial_state=xs[6], output_final_state=True), want, 1e-2)
    # the timing inputs: one seeded draw at B=1, H=8, tiled to B=4, H=32 (a kernel's time does not
    # depend on the values; drawing all 200M numbers in float64 took 5.9 of this cell's 10.9 s on an
    # H200 machine, benchmarks/results/h200_block_cells_2026-12-03.txt)
    xb = [x.repeat(4, 1, 4, 1) for x in inputs(1, 4096, 8, 64, 64, seed=13, dtype=torch.bfloat16)[:6]]
    print(f"{'kernel':24s} forward ms (B=4, T=4096, H=32, K=V=64, bf16)")
    for name in ("triton_recurrent", "triton_chunked", "chunked"):
        f = getattr(wkv7, name)
        with torch.no_grad():
            ms = triton.testing.do_bench(lambda: f(*xb), warmup=10, rep=50)
        print(f"{name:24s} {ms:8.2f}")
else:
    print("no GPU: the bf16 check and the timing run only on a GPU (see the table above and "
          "tests/test_wkv7_triton.py, which switches to large bf16 shapes there)")

# %% [markdown]
# ## 5. The block pieces around the state update, and one fused kernel
#
# The WKV operator is the expensive part of an RWKV-7 block, but not the only one. Around it
# sit small elementwise pieces. Chapter 12 builds the whole block from their torch forms in
# `rwkvlab.rwkv7_ops`:
#
# - **token shift and mixing** (`token_shift`, `addcmul_mix`): each projection's input is
#   $x + (x_{\text{prev}} - x)\odot\mu_\square$, six times, for $\square \in \{r, w, k, v, a, g\}$;
# - **the key update** (`k_update`): the replacement key $\tilde k = k \odot (1 + (a - 1)\odot \alpha)$;
# - **the removal key** (`removal_key`): $\hat\kappa = \mathrm{normalize}(k\odot\xi)$ per head;
# - **the output correction** (`output_correction`): the bonus
#   $\big(\sum_{\text{head}} r\odot\tilde k\odot\rho\big)\, v$, added after the per-head norm;
# - **channel mixing** (`channel_mix`): $\mathrm{relu}(x_k W_{k'})^2 W_{v'}$.
#
# FLA ships Triton kernels for several of these (`fused_addcmul`, `fused_k_update`,
# `gate_output_correction`, and a channel-mixing kernel). None of them does much arithmetic.
# Every one is *memory-bound*: a GPU reads and writes bytes far more slowly than it multiplies.
# Fusing pays when it removes trips through memory, so the useful question is how many bytes
# each version moves. The token shift with its six mixes is the clearest case, and it is the one
# fused here. The torch form is short:

# %%
from torch.utils._python_dispatch import TorchDispatchMode

from rwkvlab import rwkv7_ops
from rwkvlab.wkv7 import kernels_fused as kf

print(inspect.getsource(rwkv7_ops.addcmul_mix))


class CountBytes(TorchDispatchMode):
    """Sum the bytes each eager torch op reads and writes (views move no data and are skipped)."""
    FACTORIES = {"aten.new_zeros.default", "aten.zeros_like.default", "aten.empty_like.default"}

    def __init__(self):
        super().__init__()
        self.ops, self.total = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            read = [] if str(func) in self.FACTORIES else torch.utils._pytree.tree_leaves((args, kwargs))
            moved = [t for t in read + torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
            self.ops += 1
            self.total += sum(t.numel() * t.element_size() for t in moved)
        return out


Bx, Tx, Cx = 2, 64, 256
x = torch.randn(Bx, Tx, Cx)
mus = [torch.rand(1, 1, Cx) for _ in range(6)]
with CountBytes() as eager:
    x_prev, _ = rwkv7_ops.token_shift(x)
    want = rwkv7_ops.addcmul_mix(x, x_prev, *mus)
unit = x.numel() * x.element_size()                      # one pass over a [B, T, C] tensor
print(f"eager torch: {eager.ops} kernels, {eager.total / unit:.1f} tensor-sized passes through memory")
assert eager.ops == 15 and round(eager.total / unit) == 35

# %% [markdown]
# Eager torch launches 15 kernels (a zero first row and the shifted copy, the difference, then
# a multiply and an add per mix), and together they move 35 tensor-sized passes: each mix reads `xx`, writes
# `xx·μ`, reads it back with `x`, and writes the result. The fused kernel moves **8**. It
# reads each block of `x` twice, once at the block's rows and once one row up (the second
# read mostly hits the cache), and it writes the six mixes once each. The mixing vectors are a
# few KiB. So the fusion cuts memory traffic by $35/8 \approx 4.4\times$. At $B = 4$,
# $T = 4096$, $C = 2048$ in bfloat16 a pass is 64 MiB: 2.2 GiB eager against 0.5 GiB fused. If
# time followed bytes at the ~3 TB/s an H100 sustains for a device-to-device copy, that would
# be about 0.8 ms against 0.2 ms.
#
# The first measurement on an H100 fell far short of that: eager 1.17 ms, fused 1.00 ms, only
# 1.2× faster. Counting bytes found the culprit, and it was outside the kernel. The fused
# function's argument checks then included the book's usual NaN scan,
# `torch.isfinite(x).all()`. That is five more eager kernels (abs, compare, compare, multiply,
# reduce), about 8 tensor-sized passes of their own, and a host synchronization for `x` and for
# each of the six $\mu$. The kernel's 8 passes had become 16, plus seven round trips to the
# CPU. The torch pieces skip that scan on purpose (`rwkv7_ops` checks types and shapes only;
# its comment says why). The eager side had no such cost, and 35 passes in 1.17 ms is about
# 2 TB/s, so it was running near the memory's speed. The fused function now validates the
# way `rwkv7_ops` does: types and shapes, no scan, no synchronization. When a GPU is present,
# the cell at the end of this section prints the current times and effective bandwidths. The
# lesson is about accounting. The byte count gives the *bound*, and when a measurement misses
# it, count the bytes of *everything* the call does, not only the kernel you wrote. The same
# counter measures the scan on a bfloat16 `x`:

# %%
x_bf16 = x.bfloat16()
with CountBytes() as scan:
    rwkvlab.validate.tensor("x", x_bf16)                 # the NaN scan the fused wrapper used to do
passes = scan.total / (x_bf16.numel() * x_bf16.element_size())
print(f"NaN scan of x: {scan.ops} ops (the last one copies the answer to the CPU), {passes:.1f} passes")
assert scan.ops == 6 and round(passes) == 8

# %% [markdown]
# The backward kernel is fused the same way. $\bar x_t$ collects
# $\sum_m \bar x_{m,t}\odot(1-\mu_m)$ from its own row and $\sum_m \bar x_{m,t+1}\odot\mu_m$ from the
# row below (unless that row starts a new sequence). The shift state gets the first row's
# $\mu$-share. Each row block writes one partial sum per $\mu_m$, and the partial sums are
# added up afterwards.

# %%
print(inspect.getsource(kf._mix_fwd_kernel.fn))
print(inspect.getsource(kf._mix_bwd_kernel.fn))

# %% [markdown]
# The kernel agrees with the torch pieces, with a shift state carried from a previous segment,
# in the forward pass and in the gradients of $x$, all six $\mu$ and the shift state:

# %%
gen = torch.Generator().manual_seed(14)
x64 = torch.randn(2, 37, 96, generator=gen, dtype=torch.float64)
mu64 = [torch.rand(1, 1, 96, generator=gen, dtype=torch.float64) for _ in range(6)]
shift64 = torch.randn(2, 96, generator=gen, dtype=torch.float64)
douts = [torch.randn(2, 37, 96, generator=gen, dtype=torch.float64) for _ in range(6)]
leaves64 = [t.requires_grad_() for t in [x64, *mu64, shift64]]
mixes64 = rwkv7_ops.addcmul_mix(leaves64[0], rwkv7_ops.token_shift(leaves64[0], leaves64[7])[0], *leaves64[1:7])
dwant = torch.autograd.grad(sum((o * d).sum() for o, d in zip(mixes64, douts)), leaves64)
leaves = [t.detach().float().to(DEV).requires_grad_() for t in leaves64]
mixes = kf.fused_addcmul(leaves[0], *leaves[1:7], shift_state=leaves[7])
dgot = torch.autograd.grad(sum((o * d.float().to(DEV)).sum() for o, d in zip(mixes, douts)), leaves)
rwkvlab.check("fused_addcmul: six mixes vs rwkv7_ops", mixes, mixes64, 1e-6)
rwkvlab.check("fused_addcmul: grads of x, six mu, shift_state vs autograd", dgot, dwant, 1e-6)

# %% [markdown]
# The other pieces are fused in other places, and why is itself instructive. The key update
# $\tilde k = k\odot(1 + (a-1)\odot\alpha)$ cannot join the pass above, because $a$ comes out of
# a LoRA applied to one of the mixes; it belongs in the epilogue of that LoRA's matmul, or in a
# small kernel of its own, as in FLA. The output correction needs a per-head sum
# of $r\odot\tilde k\odot\rho$, which fits naturally into the per-head GroupNorm that runs just
# before it: one kernel reads the WKV output, normalizes each head, adds the bonus and applies
# the gate $g$. That kernel is `kf.fused_output`; the next cell counts what it saves. Channel
# mixing is two matrix products around $\mathrm{relu}(\cdot)^2$. Its squared ReLU belongs in the
# first product's epilogue, which is where any matmul library with custom epilogues puts it.
#
# `fused_output`'s program owns a block of rows and one head, because both the norm's
# statistics and the bonus's sum are per head. It reads $o, r, \tilde k, v, g$ once and writes
# the result once: six passes. Its backward is the usual group-norm adjoint,
# $\bar o = \sigma^{-1}\big(\bar{\hat x} - \operatorname{mean}(\bar{\hat x}) - \hat x\,
# \operatorname{mean}(\bar{\hat x}\odot\hat x)\big)$ with $\bar{\hat x} = \bar z\odot\gamma$, beside
# the bonus's ($\bar v = s\,\bar z$, $\bar s = \sum \bar z\odot v$, then $\bar r$, $\bar k$,
# $\bar\rho$ from $s = \sum r\odot\rho\odot\tilde k$), with $\gamma, \beta, \rho$ summed per block
# of rows. The model's time mix takes both fused kernels by default on a GPU
# (`rwkvlab.model.x070.FUSED`), and the test suite holds the two paths to the same logits and
# parameter gradients.

# %%
H_t, N_t = Cx // 64, 64
o_t, r_t, k_t, v_t, g_t = (torch.randn(Bx, Tx, Cx) for _ in range(5))
gn_w, gn_b, rho_t = torch.randn(Cx), torch.randn(Cx), torch.randn(H_t, N_t)
with CountBytes() as eager_tail:
    y_t = torch.nn.functional.group_norm(o_t.reshape(Bx * Tx, Cx), H_t, gn_w, gn_b, 64e-5).reshape(Bx, Tx, Cx)
    want_t = (y_t + rwkv7_ops.output_correction(r_t, k_t, v_t, rho_t, H_t)) * g_t
print(f"GroupNorm + bonus + gate, eager torch: {eager_tail.ops} kernels, "
      f"{eager_tail.total / unit:.1f} tensor-sized passes; fused_output: 1 kernel, 6 passes")
got_t = kf.fused_output(*(t.to(DEV) for t in (o_t, r_t, k_t, v_t, g_t)), gn_w.to(DEV), gn_b.to(DEV),
                        rho_t.to(DEV), H_t, 64e-5)
rwkvlab.check("fused_output vs group_norm + output_correction + gate", got_t, want_t, 1e-5)
assert eager_tail.total / unit > 2 * 6

# %%
if rwkvlab.device.has_gpu():
    import triton

    xg = torch.randn(4, 4096, 2048, device=DEV, dtype=torch.bfloat16)
    mug = [torch.rand(1, 1, 2048, device=DEV, dtype=torch.bfloat16) for _ in range(6)]
    t_eager = triton.testing.do_bench(lambda: rwkv7_ops.addcmul_mix(xg, rwkv7_ops.token_shift(xg)[0], *mug))
    t_fused = triton.testing.do_bench(lambda: kf.fused_addcmul(xg, *mug))
    print(f"token shift + 6 mixes, B=4 T=4096 C=2048 bf16: eager {t_eager:.3f} ms, fused {t_fused:.3f} ms "
          f"({t_eager / t_fused:.1f}x)")
    pass_bytes = xg.numel() * xg.element_size()
    print(f"effective bandwidth: eager {35 * pass_bytes / t_eager / 1e9:.2f} TB/s, "
          f"fused {8 * pass_bytes / t_fused / 1e9:.2f} TB/s")
else:
    print("no GPU: the timing of eager vs fused mixing runs only on a GPU")

# %% [markdown]
# ## Summary
#
# - The chunked kernel runs chapter 10's WY/UT algebra in two launches. A prep launch, parallel
#   over (chunks × heads), builds each chunk's pairwise matrices, $\mathcal T = (I - A_{ab})^{-1}$
#   by repeated squaring, $W$ and $U$, stores every state-free piece ready to multiply, and
#   checks the input values on the way. A state pass on the recurrent kernel's grid does only
#   the five products with the state ($E = WS + U$, the output's two, the hand-off's two), with
#   the next chunk's loads in flight, and saves each chunk-start state as the backward's
#   checkpoint.
# - The pairwise matrices are factored products on `tl.dot` where the chunk's whole decay is at
#   most `FACTORED_SPAN` $= 40$ (always, for released RWKV-7 decays), and built exactly, with
#   every exponent a sum over its own interval, where it is not. A declared `lower_bound` removes
#   the exact path.
# - The backward restarts each chunk from its checkpoint, recomputes the forward's matrices and
#   runs the adjoint of every line, with $\bar A_{ab} = \mathcal T^\top \bar{\mathcal T}
#   \mathcal T^\top$ for the triangular inverse. Its decay gradient leaves out the exponents that
#   are zero by construction, so it stays exact to float32 for strong decays.
# - With 16-bit inputs the in-chunk products run on tf32 tensor cores, which cost about
#   $2^{-11}$ (rounded) to $2^{-10}$ (truncated) relative error, far above the float32 rounding of
#   the factored decays and well inside the $10^{-2}$ tolerance for bf16.
# - On an H200 at B = 4, T = 4096, H = 32, the chunked kernel with the bound declared takes
#   1.55 ms forward and 5.51 ms forward + backward, against FLA's 1.17 and 4.65 ms. The state
#   pass, once latency-bound at about 6 µs per chunk, runs at 2.4 µs and 1.7 times its memory
#   floor, now that the prep stores every piece ready to multiply and the next chunk's loads
#   overlap this chunk's products.
# - A profile puts the two launches' GPU time about 4 % above FLA's six. Most of the end-to-end
#   gap was the host waiting: reading the value check's flag makes every forward wait for the
#   GPU. Without the check (`check_values=False`, which the models use) the forward takes
#   1.26 ms against FLA's 1.17 at T = 4096 and 0.34 against 0.50 at T = 1024.
# - Where B·H is small, the backward's parallel schedule takes a training step from 61 to
#   15 ms (B = 1, H = 8, T = 65536). The folded forward, which composes four chunks into one
#   affine map per 64-token step, shortens the state pass's chain fourfold for forwards without
#   a gradient; it is built and checked, but not yet timed.
# - The small pieces of the block are memory-bound, so count bytes. Token shift with six mixes
#   moves 35 tensor-sized passes in eager torch and 8 in one fused kernel. That is a bound on
#   the gain, and a measurement that misses it means some bytes went uncounted: here, a NaN
#   scan in the argument checks that cost as much as the kernel.
#
# Chapter 12 assembles the whole RWKV-7 block from the official formulas, and its model runs on
# any of the four rungs checked in Section 3.
#
# ## Exercises
#
# Chapter 11 numbers its exercises across its two files: 1–4 and the self-checking 9–11 (the
# recurrent kernel and its adjoint) are at the end of *Triton I*; 12 is self-checking too.
#
# 5. **What the prefetch buys.** The state pass loads chunk $i+1$'s pieces before chunk $i$'s
#    products (`kc._chunk_pieces`, `TUNE["prefetch"]`). Predict how much it saves per chunk at
#    B = 1, H = 8, where each program has a multiprocessor to itself, and at B = 4, H = 32. Then
#    switch it off with `kc.TUNE["prefetch"] = False`, check against `wkv7.naive` that nothing
#    else changed, and time both on a GPU with `python benchmarks/gpu_wkv7_breakdown.py
#    --quick`. (The breakdown record has the answer at B = 4: 0.62 against 0.75 ms.) Then try
#    (b): move the output out of the state pass into a third launch parallel over chunks, so
#    that the sequential kernel carries only $E$ and $S$. What must the state pass store for it,
#    and what does that cost in bytes at the training shape?
# 6. **Fuse the output correction.** Write a Triton kernel that takes the WKV output, applies
#    the per-head GroupNorm (eps $= 64\times 10^{-5}$), adds
#    `rwkv7_ops.output_correction` and multiplies by the gate $g$, in one pass. Count its bytes
#    the way Section 5 does, and check it against the torch pieces.
# 7. **Strong decay in half precision.** With float16 inputs, what is the smallest log decay
#    whose factor $e^{w}$ survives the load? Does the kernel lose anything by computing
#    `tl.exp(b_w)` in float32 after the load?
# 8. **How close to the bound?** On a GPU, time `kf._FusedAddcmul.apply` alone next to
#    `kf.fused_addcmul` and to the eager pieces, and profile the kernel with Nsight Compute
#    (`ncu --set full`). What fraction of the DRAM bandwidth does it reach? Try other `BR`, `BC`
#    and `num_warps`. Then put the NaN scan back and measure what it costs.
# 12. **Fold two chunks into one step** (self-checking). Section 4's folded forward composes
#     the chunks' affine maps. Write the composition for two chunks, in torch: the cell below
#     prints the specification and checks your function against the float64 loop over both
#     chunks' tokens.

# %%
import torch

from rwkvlab import exercises

print(exercises.spec("11.12"))


def fold(P1, Q1, R1, L1, P2, Q2, R2, L2):
    ### BEGIN SOLUTION
    R = torch.cat([R1, R2 @ P1], dim=-2)              # chunk 2 reads S_2 = P1 S_1 + Q1
    O = torch.cat([L1, R2 @ Q1 + L2], dim=-2)
    return R, O, P2 @ P1, P2 @ Q1 + Q2                # chunk 2's map acts after chunk 1's
    ### END SOLUTION


exercises.check("11.12", fold)

# %% [markdown]
# A short answer to exercise 7 (the student edition hides it):
#
# ### BEGIN SOLUTION
# 7. The kernels load the log decay $w$, not the factor $e^{w}$, and float16 holds any $w$ down
#    to $-65504$. The load loses only the rounding of $w$ itself, at most $|w|\cdot 2^{-11}$,
#    which changes the factor by the same relative amount ($3\cdot10^{-4}$ at the released floor
#    $w \approx -0.61$). Had the factor been stored in float16, it would turn subnormal below
#    $w = \ln 2^{-14} \approx -9.7$ and round to zero below $w = \ln 2^{-25} \approx -17.3$.
#    Computing `tl.exp(b_w)` in float32 after the load loses nothing: the factor stays a normal
#    float32 number down to $w \approx -87.3$ and non-zero down to $w \approx -104$.
# ### END SOLUTION
