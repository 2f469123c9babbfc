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
# # References, the API contract, and common misstatements about RWKV
#
# This appendix is what the chapters cite. It has three parts:
#
# 1. **the API contract**: the shapes, conventions and signatures every implementation in the
#    package keeps, stated once and checked against the package;
# 2. **common misstatements about RWKV, and what is true**: claims that circulate in notes,
#    blog posts and summaries, each with the primary source that settles it and the chapter
#    whose cells check it;
# 3. **references**: every paper the book cites, by arXiv id, and every code base, by
#    repository and path. A cell at the end reads all chapters and the package and asserts
#    that every arXiv id they cite is listed here.

# %%
import rwkvlab

print(rwkvlab.device.describe())

# %%
import inspect
import re

import torch

from rwkvlab import book, wkv6, wkv7
from rwkvlab import model as M

# %% [markdown]
# ## 1. The API contract
#
# The package's layout follows flash-linear-attention (FLA), so that a reader can move to it:
#
# * tensors are `[B, T, H, K]` (batch, time, head, key channel); values `[B, T, H, V]`;
# * the decay `w` is passed as the **log** decay, $w \le 0$, per-step factor $e^{w}$;
# * states are `[N, H, K, V]` in float32 (float64 inputs keep float64), with `N = B`, or
#   `N = len(cu_seqlens) − 1` when several sequences are packed into one row (`B == 1`);
# * the state is kept in **K×V** layout (rows are key channels); the RWKV-7 paper and the
#   official CUDA kernels keep the transpose (chapter 8, §4).
#
# The two WKV operators, each in four implementations (`naive`, `chunked`, `triton_recurrent`,
# `triton_chunked`; the chunked ones take `chunk_size=` and a few tuning arguments after these):
#
# ```
# rwkvlab.wkv6.<impl>(r, k, v, w, u, scale=1.0, initial_state=None, output_final_state=False, cu_seqlens=None)
#     -> (o, final_state or None)
#     o_t = scale · r_tᵀ (S_{t-1} + diag(u) k_t v_tᵀ),    S_t = diag(exp(w_t)) S_{t-1} + k_t v_tᵀ
#
# rwkvlab.wkv7.<impl>(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False, cu_seqlens=None)
#     -> (o, final_state or None)
#     S_t = diag(exp(w_t)) S_{t-1} + b_t (a_tᵀ S_{t-1}) + k_t v_tᵀ,    o_t = scale · S_tᵀ r_t
# ```
#
# RWKV-7 models call the second with $a = -\hat\kappa$, $b = \hat\kappa\odot\mathrm{iclr}$ and
# $k = \tilde k$ (chapter 12). Every implementation differentiates with respect to every tensor
# input, `initial_state` included, with gradients flowing through `final_state`; takes any
# $T \ge 1$; returns `o` in the input dtype and accumulates in float32; and raises `ValueError`
# naming the argument and what was expected when an input is wrong.
# Both `triton_chunked` kernels also take `check_values=True`. Their forward finds NaN, Inf or
# a log decay out of range while it reads the inputs, and reading that flag back is the
# forward's one host–device synchronization. `check_values=False` skips the value check and
# the wait; shapes, dtypes and devices are still checked, and NaN in is then NaN out, as in
# FLA's kernels, which check nothing (chapter 11 measures what the wait costs).
#
# The models (`rwkvlab.model`, chapters 12–14): RWKV-6 (`x060`) and RWKV-7 (`x070`) as in the
# official RWKV-LM code, with its parameter names, so `model.state_dict()` is an official
# checkpoint and `rwkvlab.model.load(path)` reads one. `model(idx, state=None) -> (logits,
# state)` runs the parallel mode (`idx` a LongTensor `[B, T]`, logits `[B, T, vocab]`);
# `model.step(token, state=None) -> (logits, state)` runs the RNN mode (`token` `[B]`, logits
# `[B, vocab]`); `state=None` is a fresh state, and the two modes agree (chapter 13). Chapter 04's
# small RWKV-4 model (`x040`, class `RWKV4`) keeps the same two calls, with its own state of five
# vectors per block and random weights (`load` reads RWKV-6 and RWKV-7 checkpoints only).
#
# The cell below holds the package to the parts of this contract that a signature and a small
# run can show.

# %%
CONTRACT = {
    wkv6: ["r", "k", "v", "w", "u", "scale", "initial_state", "output_final_state", "cu_seqlens"],
    wkv7: ["r", "w", "k", "v", "a", "b", "scale", "initial_state", "output_final_state", "cu_seqlens"],
}
DEFAULTS = {"scale": 1.0, "initial_state": None, "output_final_state": False, "cu_seqlens": None}
for mod, names in CONTRACT.items():
    for impl in ("naive", "chunked", "triton_recurrent", "triton_chunked"):
        params = inspect.signature(getattr(mod, impl)).parameters
        assert list(params)[: len(names)] == names, f"{mod.__name__}.{impl}: {list(params)}"
        assert all(params[n].default == d for n, d in DEFAULTS.items()), f"{mod.__name__}.{impl} defaults"

g = torch.Generator().manual_seed(0)
B, T, H, K, V = 2, 5, 3, 4, 6
r, k, a = (torch.randn(B, T, H, K, generator=g) for _ in range(3))
v = torch.randn(B, T, H, V, generator=g)
w = -torch.rand(B, T, H, K, generator=g)
u = torch.randn(H, K, generator=g)
a = torch.nn.functional.normalize(a, dim=-1)
o6, S6 = wkv6.naive(r, k, v, w, u, output_final_state=True)
o7, S7 = wkv7.naive(r, w, k, v, -a, 0.5 * a, output_final_state=True)
assert o6.shape == o7.shape == (B, T, H, V) and S6.shape == S7.shape == (B, H, K, V)
assert S6.dtype == S7.dtype == torch.float32 and wkv6.naive(r, k, v, w, u)[1] is None
o6_half = wkv6.naive(r.bfloat16(), k.bfloat16(), v.bfloat16(), w.bfloat16(), u.bfloat16())[0]
assert o6_half.dtype == torch.bfloat16                                   # the output keeps the input dtype
try:
    wkv7.naive(r, w, k, v[:, :, :, :2].transpose(1, 2), -a, a)         # v with the wrong shape
except ValueError as err:
    assert str(err).startswith("v:"), err
    print("bad input:", err)
else:
    raise AssertionError("a wrong shape must raise ValueError")

m7 = M.RWKV7(M.Config7.make(40, 32, 2, head_size=16)).init_weights("random", seed=0)
idx = torch.randint(0, 40, (2, 7), generator=g)
with torch.no_grad():
    logits, state = m7(idx)
    steps, st = [], None
    for t in range(7):
        lg, st = m7.step(idx[:, t], st)
        steps.append(lg)
assert logits.shape == (2, 7, 40) and steps[0].shape == (2, 40)
rwkvlab.check("contract: model(idx) vs model.step token by token", torch.stack(steps, 1), logits, 1e-5)
print("the signatures, defaults, shapes and dtypes above match the contract")

# %% [markdown]
# ## 2. Common misstatements about RWKV, and what is true
#
# Each entry: the claim as it circulates, what is true, the primary source, and where the book
# checks it with a cell.
#
# 1. **"The KV cache is forced by the query dependence of the weights."** It is forced by the
#    exponential kernel $e^{q\cdot k}$. Linear attention keeps query-dependent weights with a
#    fixed $K\times V$ state; AFT-full has no query in its weights and still needs every key.
#    Source: Katharopoulos et al. 2020 (arXiv 2006.16236), Zhai et al. 2021 (arXiv 2105.14103).
#    Checked: chapter 1, §8 (the rank of the past-to-future block), chapter 2, §7.
# 2. **"AFT-local is a sliding window."** Outside the window AFT-local's bias is 0, not
#    $-\infty$: distant tokens still count, with weight $e^{K}$. Source: Zhai et al. 2021, §3.2
#    ("maintains global connectivity regardless of the window size"). Checked: chapter 2, §6.
# 3. **"RWKV-4's $u$ is a multiplier," and equation numbers given without a paper version.**
#    $u$ is added to the current token's key inside the exponent, $e^{u + k_t}$; the WKV is
#    Eq. 16 of the final RWKV paper and Eq. 14 of its arXiv v1. Source: Peng et al. 2023
#    (arXiv 2305.13048). Checked: chapters 3 and 4 (question 1).
# 4. **"Token shift has no state."** True in parallel mode, where $x_{t-1}$ is the previous
#    input row; in RNN mode each sub-block must carry the previous token's input, $C$ numbers
#    per sub-block per layer. Source: Peng et al. 2023, App. D (the state of the RNN form).
#    Checked: chapter 4 ("Is there state?"), and chapter 1, §7 counts them in the state size.
# 5. **"RWKV-6 reads the updated state, $o_t = r_t^\top(h_t + \operatorname{diag}(u)k_tv_t^\top)$."**
#    RWKV-5/6 read the state *before* the token, $S_{t-1}$, plus the bonus. The $h_t$ form is
#    the same recurrence with receptance $r\odot e^{w_t}$ and a token-dependent bonus
#    $(1+u)\odot e^{-w_t}$, so with data-dependent decay it is not RWKV-6 as parameterised.
#    Source: Peng et al. 2024 (arXiv 2404.05892), Eqs. 8–9; RWKV-LM `RWKV-v5/cuda/wkv6_cuda.cu`.
#    Checked: chapter 5, §2.
# 6. **"RWKV-6's decay gradient is $-\sum(dS\odot S_{t-1})\,e^{w}e^{-e^{w}}$."** That is the
#    gradient for the raw parameter of RWKV-LM's CUDA kernel, whose factor is $e^{-e^{w}}$. For
#    the log decay the kernels here and FLA's take, it is $e^{w}\odot\mathrm{rowsum}(\bar S_t
#    \odot S_{t-1})$. Source: Peng et al. 2024, Eq. 18 (the decay's parameterisation). Checked
#    against autograd: chapter 7 (and chapter 11 for RWKV-7).
# 7. **"RWKV-7's decay factor is $\exp(-\exp(w))$"** (with nothing said about $w$). The official
#    code soft-clamps first, $w = -\mathrm{softplus}(-d) - 0.5$, so the factor is
#    $\exp(-e^{-0.5}\sigma(d)) \in (0.545, 1)$ per token. Source: Peng et al. 2025
#    (arXiv 2503.14456), Eq. 12; RWKV-LM `RWKV-v7/train_temp/src/model.py`, `RWKV_Tmix_x070`.
#    Checked: chapter 8, §4; chapter 12, §1.
# 8. **"$S_t = \operatorname{diag}(\cdot)\,S_{t-1} + S_{t-1}\alpha\beta^\top + k\otimes v$, $o_t = S_tr_t$."**
#    That mixes two layouts (a decay from the left, a rank-one term from the right). In the
#    paper's V×K layout the whole transition acts from the right; in the K×V layout of this book
#    and FLA it acts from the left: $S_t = (\operatorname{diag}(e^{w}) + ba^\top)S_{t-1} +
#    kv^\top$, $o_t = S_t^\top r_t$. Source: Peng et al. 2025, §4.1 and Eqs. 16–17. Checked:
#    chapter 8, §4; chapter 10; chapter 12.
# 9. **"In RWKV-7 the bonus is absorbed into the transition."** RWKV-7 keeps an explicit bonus,
#    $(r_t\cdot(\rho\odot\tilde k_t))\,v_t$, added *after* the per-head norm (in RWKV-5/6 the
#    bonus sits inside the read-out, before the norm). Source: Peng et al. 2025, Eqs. 20–21.
#    Checked: chapter 12.
# 10. **"RWKV-7's update is a step of gradient descent."** It is one exactly when the written
#    key equals $\mathrm{iclr}\odot\hat\kappa$ (and plain SGD also needs no decay); the released
#    model decouples the written key, so its update is a gradient step plus an extra write. The
#    decay, where present, is *decoupled* weight decay: the gradient is taken at the undecayed
#    state. Source: Peng et al. 2025, related-work section (the "relaxed value replacement
#    rule"). Checked: chapter 8, §§3–4.
# 11. **"RWKV-7's transition is a Householder matrix with eigenvalues in $[-1, 1]$."** With the
#    released ranges every eigenvalue is real and in $(e^{-e^{-0.5}} - 1, 1) \approx (-0.455, 1)$:
#    no reflection, and spectral radius below 1 in exact arithmetic (float32 can round a decay
#    factor to 1). A reflection needs an iclr of 2. Source: our derivation (chapter 8, §6); the
#    paper's Eq. 19 calls $G$ "a scaled approximation" of a Householder matrix. Checked:
#    chapter 8, §6, on 3000 sampled transitions.
# 12. **"RWKV-7 has NC¹ expressivity; RWKV-6 and attention are TC⁰."** These are conditional
#    results (on TC⁰ ≠ NC¹, log precision, fixed depth) about specific parameterisations; the
#    released RWKV-7 transitions cannot make the swap that the state-tracking constructions use.
#    Sources: Merrill, Petty & Sabharwal 2024 (arXiv 2404.08819); Merrill & Sabharwal 2023
#    (TACL, "The Parallelism Tradeoff"); Grazzi et al. 2025 (arXiv 2411.12537); Peng et al.
#    2025. Checked: chapter 9, §§3–4.
# 13. **"The chunked RWKV-7 form costs $O(BTHKV/C)$."** The state-sized work $TKV$ does not
#    shrink with the chunk size $C$; what shrinks is the number of sequential steps, $T/C$.
#    Source: our count (chapter 10). Checked: chapter 10's cost section.
#
# ## 3. References
#
# ### Papers
#
# | cited as | paper | id |
# |---|---|---|
# | Vaswani et al. 2017 | Attention Is All You Need | arXiv 1706.03762 |
# | Dao et al. 2022 | FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness | arXiv 2205.14135 |
# | Katharopoulos et al. 2020 | Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention | arXiv 2006.16236 |
# | Zhai et al. 2021 | An Attention Free Transformer | arXiv 2105.14103 |
# | Peng et al. 2023 | RWKV: Reinventing RNNs for the Transformer Era (EMNLP Findings 2023) | arXiv 2305.13048 |
# | Peng et al. 2024 | Eagle and Finch: RWKV with Matrix-Valued States and Dynamic Recurrence (RWKV-5/6) | arXiv 2404.05892 |
# | Peng et al. 2025 | RWKV-7 "Goose" with Expressive Dynamic State Evolution | arXiv 2503.14456 |
# | Sun et al. 2023 | Retentive Network: A Successor to Transformer for Large Language Models (RetNet) | arXiv 2307.08621 |
# | Yang et al. 2024 (GLA) | Gated Linear Attention Transformers with Hardware-Efficient Training | arXiv 2312.06635 |
# | Yang et al. 2024 (DeltaNet) | Parallelizing Linear Transformers with the Delta Rule over Sequence Length | arXiv 2406.06484 |
# | Dao & Gu 2024 | Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured State Space Duality (Mamba-2) | arXiv 2405.21060 |
# | Arora et al. 2023 | Zoology: Measuring and Improving Recall in Efficient Language Models (MQAR) | arXiv 2312.04927 |
# | Merrill, Petty & Sabharwal 2024 | The Illusion of State in State-Space Models | arXiv 2404.08819 |
# | Merrill & Sabharwal 2023 | The Parallelism Tradeoff: Limitations of Log-Precision Transformers (TACL) | arXiv 2207.00729 |
# | Grazzi et al. 2025 | Unlocking State-Tracking in Linear RNNs Through Negative Eigenvalues (ICLR 2025) | arXiv 2411.12537 |
# | Sarrof et al. 2024 | The Expressive Capacity of State Space Models: A Formal Language Perspective | arXiv 2405.17394 |
# | Shazeer 2020 | GLU Variants Improve Transformer (GeGLU, SwiGLU) | arXiv 2002.05202 |
# | So et al. 2021 | Primer: Searching for Efficient Transformers for Language Modeling (squared ReLU) | arXiv 2109.08668 |
# | Loshchilov & Hutter 2019 | Decoupled Weight Decay Regularization (AdamW) | arXiv 1711.05101 |
# | Yang, Kautz & Hatamizadeh 2024 | Gated Delta Networks: Improving Mamba2 with Delta Rule (Gated DeltaNet) | arXiv 2412.06464 |
# | Kimi Team 2025 | Kimi Linear: An Expressive, Efficient Attention Architecture (Kimi Delta Attention) | arXiv 2510.26692 |
# | Siems et al. 2025 | DeltaProduct: Improving State-Tracking in Linear RNNs via Householder Products | arXiv 2502.10297 |
# | Sun et al. 2024 | Learning to (Learn at Test Time): RNNs with Expressive Hidden States (TTT) | arXiv 2407.04620 |
# | Behrouz, Zhong & Mirrokni 2025 | Titans: Learning to Memorize at Test Time | arXiv 2501.00663 |
# | von Oswald et al. 2025 | MesaNet: Sequence Modeling by Locally Optimal Test-Time Training | arXiv 2506.05233 |
# | Guo et al. 2025 | Log-Linear Attention | arXiv 2506.04761 |
# | Barrington 1989 | Bounded-width polynomial-size branching programs recognize exactly those languages in NC¹ | J. Comput. Syst. Sci. 38(1) |
# | Widrow & Hoff 1960 | Adaptive switching circuits (the delta / LMS rule) | IRE WESCON Convention Record |
# | Bischof & Van Loan 1987 | The WY representation for products of Householder matrices | SIAM J. Sci. Stat. Comput. 8(1) |
# | Joffrain et al. 2006 | Accumulating Householder transformations, revisited (the UT transform) | ACM Trans. Math. Softw. 32(2) |
#
# ### Code
#
# | code base | what the book reads there |
# |---|---|
# | BlinkDL/RWKV-LM, `RWKV-v4/cuda/wkv_cuda.cu`, `RWKV-v4/src/model.py` | RWKV-4's WKV kernel and its parameterisation (chapters 3–4) |
# | BlinkDL/RWKV-LM, `RWKV-v5/cuda/wkv6_cuda.cu`, `RWKV-v5/src/model.py` (`RWKV_Tmix_x060`) | RWKV-6's kernel: read, then update (chapter 5); the x060 block (chapter 13) |
# | BlinkDL/RWKV-LM, `RWKV-v7/train_temp/src/model.py` (`RWKV_Tmix_x070`), `RWKV-v5/cuda/wkv7_cuda.cu` | the RWKV-7 block, its names and initialisation, and its kernel (chapters 8, 12) |
# | fla-org/flash-linear-attention, `fla/ops/rwkv6/`, `fla/ops/rwkv7/`, `fla/ops/delta_rule/`, `fla/layers/rwkv7.py` | the layout and log-decay convention this book follows; chunked RWKV-6/7 and the WY/UT chunk algebra (chapters 5–11) |
# | BlinkDL/ChatRWKV, `rwkv_pip_package/src/rwkv/model.py` (the `rwkv` pip package) | the official inference runtime; it keeps RWKV-4's state as `(aa, bb, pp)`, our $(a', b', p)$ of chapter 3 |
# | karpathy/char-rnn, `data/tinyshakespeare/input.txt` | the text of `data/shakespeare.txt` (chapter 14) |
# | triton-lang/triton, issue #4574 and pull request #9295 | `tl.dot` with `input_precision="tf32"` passes float32 operands to the tensor cores without rounding them (the hardware drops the low 13 bits), less accurate than round-to-nearest tf32; the later option rounds first (chapter 11, *Triton II* §4) |
# | BlinkDL/RWKV-LM, `RWKV-v8/README.md`, `RWKV-v8/251014_rosa_1bit_layer.py`, `RWKV-v7/rwkv_v8_rc00_demo.py` | RWKV-8 "Heron": ROSA's suffix-automaton lookup and DeepEmbed's per-token channel-mix scale (the family chapter, §6) |
#
# The cell below keeps this list honest: it collects every arXiv id that the chapters and the
# package cite and asserts that each is in the table of papers above.

# %%
ROOT = book.root()
ARXIV = re.compile(r"arXiv:?\s*(\d{4}\.\d{4,5})")
this_file = ROOT / "notebooks" / "16_references.py"
listed = set(ARXIV.findall(this_file.read_text(encoding="utf-8").split("### Papers", 1)[1].split("### Code", 1)[0]))
cited = {}
sources = [p for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py")) if p != this_file]
sources += sorted((ROOT / "rwkvlab").rglob("*.py"))
for path in sources:
    for arxiv_id in ARXIV.findall(path.read_text(encoding="utf-8")):
        cited.setdefault(arxiv_id, []).append(path.relative_to(ROOT).as_posix())
missing = {i: sorted(set(p)) for i, p in cited.items() if i not in listed}
print(f"{len(cited)} arXiv ids cited in {len(sources)} files; {len(listed)} papers listed here")
assert not missing, f"cited but not in the references: {missing}"
