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
# # Preface: how to read and run this book
#
# This book explains RWKV attention from the equations down to GPU kernels, and it proves what it
# says by running it. Every chapter is a notebook. Every mechanism is built several ways from a
# small package, `rwkvlab`, and each chapter asserts that the ways agree. If a sentence in the
# text and a cell in the notebook ever disagree, the test suite fails.
#
# After this preface you will know how to run the book on a laptop or a GPU, and how a chapter
# is laid out. You will also know the notation used everywhere. RWKV's notation has traps: the
# papers, the official code and flash-linear-attention each write the same things differently.
# The table in §3 fixes one convention for the whole book and says how to translate the others.
#
# **Who it is for.** Readers who know softmax attention and want to understand RWKV-4, RWKV-6
# and RWKV-7 well enough to derive them. Teachers who want material that checks itself.
# Kernel engineers who want to read, and then improve, the RWKV kernels of flash-linear-attention
# (FLA). `rwkvlab` keeps FLA's tensor layout, so what you learn here carries straight over.
#
# You need linear algebra, PyTorch, and a working knowledge of how a transformer computes
# attention. You do not need to know Triton: the kernels are introduced gently, and each one has
# a plain-torch twin that computes the same thing.

# %%
import rwkvlab

print(rwkvlab.device.describe())

# %% [markdown]
# ## 1. Running the book
#
# **Where the kernels run.** The line above says which mode this notebook is in. With a CUDA
# GPU, the Triton kernels compile and run on it. Without one, `import rwkvlab` switches Triton to
# its *interpreter* before any kernel is defined. The interpreter runs the very same kernel source
# on CPU tensors, one program instance at a time, in NumPy. It is slow, milliseconds per program
# per step. So on a CPU the chapters use tiny shapes (sequences of at most 64 tokens, a
# couple of heads, 16 channels), and on a GPU they use larger ones. You never set an environment
# variable yourself. (To force the interpreter on a GPU machine, for a comparison, set
# `RWKVLAB_DEVICE=cpu` before starting Python.)
#
# Chapters choose sizes with `rwkvlab.device.pick(cpu_value, gpu_value)`. Work that only makes
# sense on a GPU, such as large benchmarks or bf16 runs, sits behind `if rwkvlab.device.has_gpu():`
# and prints a note otherwise. Nothing is skipped silently.

# %%
mode = "gpu" if rwkvlab.device.has_gpu() else "interpreter"
assert rwkvlab.device.select() == mode
T_small = rwkvlab.device.pick(64, 4096)
assert T_small == (4096 if mode == "gpu" else 64)
print(f"mode: {mode}; a chapter that asks for pick(64, 4096) tokens gets {T_small}")

# %% [markdown]
# **Reading.** The chapters live in `notebooks/` as jupytext "percent" files, `NN_slug.py`:
# plain Python files in which `# %%` starts a code cell and `# %% [markdown]` starts a text cell.
# They diff cleanly in git and need no stored outputs. To read one as a notebook, start
# `jupyter lab notebooks`, then right-click a chapter and choose *Open With → Jupytext Notebook*. Run the
# cells from top to bottom. Edits you save go back into the `.py` file.
#
# **Running everything headless.** From the repository root,
#
# ```bash
# python -m rwkvlab run             # every chapter, in book order: did its checks hold, how long
# python -m rwkvlab run 02 06       # only the chapters whose file name contains 02 or 06
# pytest --nbval notebooks tests    # every cell of every chapter, plus the package's unit tests
# ```
#
# The first command answers "does my install work on this machine?". The last is the book's test
# suite. Under `--nbval`, each chapter cell is a test, and a cell fails when one of its
# assertions fails. Nothing is compared against stored outputs; the chapters' own checks are the
# tests. Each chapter runs in well under a minute on a laptop CPU.
#
# ## 2. The ladder every chapter climbs
#
# Each mechanism is built in the same order, and a chapter climbs as many rungs as it needs:
#
# 1. **Math.** The equation is derived in the text, in the notation below, and written out right
#    before the code that computes it.
# 2. **Naive.** A loop over time that you can check by hand. It is the reference, and the
#    chapters also run it in float64.
# 3. **Chunked (or parallel).** The same result from a few large tensor operations in plain
#    torch. This is the form that trains fast, and autograd differentiates it.
# 4. **Triton.** A kernel, first recurrent and then chunked, with the tiles named for what they
#    hold.
# 5. **Check.** A cell that asserts the rungs agree and prints one deterministic line.
#
# Later chapters import what earlier ones built; nothing is pasted twice. When the text
# discusses a function, the chapter prints the package's own source with `inspect.getsource`, so
# the code you read is the code that runs. The modules use the same names throughout
# (`naive`, `chunked`, `triton_recurrent`, `triton_chunked`, ...), so once you have seen one module
# you know where everything is in the next.
#
# The check is `rwkvlab.check(name, got, ref, tol)`. It computes the relative error
# $\lVert \text{got} - \text{ref} \rVert / \lVert \text{ref} \rVert$ in float64, prints one line, and
# raises `AssertionError` if the error exceeds `tol`. Outputs that come in pairs, such as an output
# and a final state, are compared element by element, and the worst error counts. The book's
# tolerances in float32 are $10^{-5}$ for naive against chunked and $10^{-4}$ for Triton.

# %%
import torch

g = torch.Generator().manual_seed(0)
x = torch.randn(3, 4, generator=g)
rwkvlab.check("preface: a tensor against its own copy", x, x.clone())
rwkvlab.check("preface: float32 rounding of a float64 tensor", x.double().sin().float(), x.double().sin(), 1e-6)

# %% [markdown]
# A check that fails says so, with the name you gave it, and then raises. Here a
# deliberate error of one part in a thousand is caught; the `try` block exists only to show the
# failure without stopping the notebook, and the cell asserts that the failure did happen.

# %%
y = x * (1 + 1e-3)
try:
    rwkvlab.check("preface: a 1e-3 perturbation at tolerance 1e-5", y, x, 1e-5)
except AssertionError as err:
    caught = err
else:
    caught = None
assert caught is not None and "exceeds" in str(caught)
assert abs(rwkvlab.rel_err(y, x) - 1e-3) < 1e-6
print("caught:", caught)

# %% [markdown]
# ## 3. Notation
#
# One set of symbols is used everywhere in the book. The first column is the book's name, which
# is also the argument name in `rwkvlab`.
#
# | symbol | name | shape in `rwkvlab` | meaning |
# |---|---|---|---|
# | $r$ | receptance | `[B, T, H, K]` | RWKV's query. In RWKV-4 it is a sigmoid gate; from RWKV-5 on it reads the state like a query |
# | $k$ | key | `[B, T, H, K]` | what a token is stored under |
# | $v$ | value | `[B, T, H, V]` | what a token stores |
# | $w$ | decay | `[B, T, H, K]` | **log decay**, $w \le 0$; the per-step factor is $e^{w} \in (0, 1]$ |
# | $u$ | bonus | `[H, K]` | extra weight for the current token: RWKV-4 adds it to $k_t$ in the exponent, RWKV-5/6 scale $k_t v_t^\top$ by it |
# | $a$, $b$ | transition vectors | `[B, T, H, K]` | RWKV-7's rank-one term $b\,(a^\top S)$; models pass $a = -\hat\kappa$, $b = \hat\kappa \odot \mathrm{iclr}$ |
# | $\hat\kappa$ | removal key | `[B, T, H, K]` | RWKV-7's key, L2-normalised per head, used to remove old content |
# | $S$ (or $h$) | state | `[N, H, K, V]`, float32 | per head a $K \times V$ matrix: rows are key channels, columns value channels; an `initial_state` of any float dtype is cast to float32 |
# | `cu_seqlens` | sequence boundaries | `[N + 1]`, int | packed variable-length input: `B == 1`, sequence $n$ is tokens `cu_seqlens[n]:cu_seqlens[n+1]` |
# | `scale` | read-out scale | a finite real number | multiplies $r$; RWKV uses 1, softmax attention $K^{-1/2}$; not `bool`, NaN or ±inf |
#
# Here $B$ is the batch, $T$ time, $H$ heads, $K$ the key (and receptance) width per head, and $V$
# the value width per head. $N = B$, or $N$ = the number of packed sequences when `cu_seqlens` is
# given. Outputs have the input dtype; states and accumulation are float32. AFT (Chapter 2) has
# no heads and uses `[B, T, D]`, with its own $Q, K, V$ as in its paper. RWKV-4's WKV (Chapters
# 3–4) also treats every channel as a head of its own: `[B, T, C]`, with $w$ and $u$ of shape `[C]`.
#
# The linear-attention recurrences of Parts II and III, in this layout, are
#
# $$
# \text{RWKV-6:}\quad o_t = \mathrm{scale}\cdot r_t^\top\big(S_{t-1} + \mathrm{diag}(u)\,k_t v_t^\top\big),\qquad
# S_t = \mathrm{diag}(e^{w_t})\,S_{t-1} + k_t v_t^\top
# $$
# $$
# \text{RWKV-7:}\quad S_t = \mathrm{diag}(e^{w_t})\,S_{t-1} + b_t\,(a_t^\top S_{t-1}) + k_t v_t^\top,\qquad
# o_t = \mathrm{scale}\cdot S_t^\top r_t
# $$
#
# Note what each one reads. RWKV-6 reads the state *before* adding the current token, which gets
# the bonus $u$ instead. RWKV-7 reads the state *after* the update.
#
# ### Decay: one quantity, four spellings
#
# Every RWKV version has a per-channel decay, and each writes it differently. The kernels in
# this book take the log of the per-step factor, as FLA's do. Here is how each version's
# parameter maps onto it:
#
# | version | as written in the paper | what reaches the kernel here ($w$ = log factor) |
# |---|---|---|
# | RWKV-4 | $w \ge 0$ with factor $e^{-w}$; the code stores `time_decay` with $w = e^{\text{time\_decay}}$ | $-e^{\text{time\_decay}}$ in the official kernel; `rwkvlab.wkv4` alone takes the paper's $w \ge 0$ itself (Chapter 3) |
# | RWKV-5 | factor $w = \exp(-\exp(\omega))$ | $-e^{\omega}$ |
# | RWKV-6 | factor $w_t = \exp(-\exp(d_t))$, data-dependent | $-e^{d_t}$ |
# | RWKV-7 | factor $w_t = \exp(-e^{-0.5}\sigma(d_t))$ | $-e^{-0.5}\sigma(d_t) \in (-0.6065, 0)$ |
#
# A positive log decay (for `wkv4`, a negative $w$) would make the state grow without bound, so
# `rwkvlab` rejects it with a `ValueError` naming the argument. Passing the log rather than the
# factor also keeps strong decays representable: $\exp(-\exp(d))$ is exactly 0 in float32 once $d$
# passes about 4.65 (and in float64 past about 6.62), while $-e^{d}$ is an ordinary number. The cell below checks the
# conversions, this underflow, and RWKV-7's range, in the paper's form and in its code's.

# %%
d = torch.linspace(-8, 5, 101, dtype=torch.float64)
factor6 = torch.exp(-torch.exp(d))                          # RWKV-6's factor, in (0, 1)
log6 = -torch.exp(d)                                        # what the kernel receives
assert torch.allclose(torch.log(factor6), log6) and (log6 < 0).all()
# the factor itself underflows where its log is still an ordinary number: one reason to pass logs
d_big = torch.tensor([6.62, 20.0], dtype=torch.float64)
assert (torch.exp(-torch.exp(d_big)) == 0).all() and torch.isfinite(-torch.exp(d_big)).all()
assert torch.exp(-torch.exp(torch.tensor(6.55, dtype=torch.float64))) > 0        # float64: gone between 6.55 and 6.62
assert torch.exp(-torch.exp(torch.tensor(4.65))) == 0 < torch.exp(-torch.exp(torch.tensor(4.6)))  # float32: at 4.65

log7 = -torch.exp(torch.tensor(-0.5, dtype=torch.float64)) * torch.sigmoid(d)
assert (log7 < 0).all() and (log7 > -0.6066).all()
w7_code = -torch.nn.functional.softplus(-d) - 0.5          # what the official RWKV-7 code computes
assert torch.allclose(-torch.exp(w7_code), log7)           # ... and then exp(-exp(w)): the same factor
print(f"RWKV-7 decay factor lies in ({torch.exp(log7.min()):.4f}, 1): e^(-e^-0.5) = "
      f"{torch.exp(-torch.exp(torch.tensor(-0.5))):.4f}")

# %% [markdown]
# ### Three conventions that cause most errors
#
# **Row vectors or column vectors.** The RWKV-5/6/7 papers and the GLA paper treat vectors
# as *rows* and apply matrices on the right. In their notation, $k^\top v$ is an outer product
# and $r\,S$ is a read-out. DeltaNet and most linear-algebra texts use *columns*, and write
# $v k^\top$ and $S q$ for the same objects. This book writes vectors as columns: $k_t v_t^\top$
# is an outer product, and $r_t^\top S$ is a read-out. When a chapter quotes a paper, it says
# which convention the quote uses.
#
# **State orientation.** In RWKV-5/6 the state is $\sum k^\top v$: rows index key channels, and the
# decay scales rows, $\mathrm{diag}(w)\,S$. The RWKV-7 paper and its code store the *transpose*,
# $\sum v^\top \tilde k$, with the decay acting on columns, $S\,\mathrm{diag}(w)$. The paper says so
# itself (§4.1). `rwkvlab` uses the $K \times V$ orientation for every version, as FLA does, so a
# chapter that compares with RWKV-7's official code transposes at that boundary.
#
# **The token-shift $\mu$ flip.** Every RWKV block mixes each token with the previous one, but
# the weight is written two ways. The RWKV-4 paper and the v4/v5 code (`time_mix_*`) use
# $\mu \odot x_t + (1-\mu)\odot x_{t-1}$, so $\mu$ weights the *current* token. The Eagle/Finch
# and RWKV-7 papers, and the v6/v7 code (`time_maa_*`, `x_r`, ...), use
# $\mathrm{lerp}(x_t, x_{t-1}, \mu) = x_t + (x_{t-1} - x_t)\odot\mu$, so $\mu$ weights the
# *previous* token. The two agree when one $\mu$ is one minus the other. The v5 code still uses
# `time_mix`, so the Eagle paper's $\mu$ equals `1 - time_mix` there.

# %%
xt, xprev = torch.randn(2, 8, generator=g)
mu = torch.rand(8, generator=g)
rwkv4_style = mu * xt + (1 - mu) * xprev                     # μ weights the current token
lerp_style = xt + (xprev - xt) * (1 - mu)                    # μ' = 1 − μ weights the previous token
rwkvlab.check("preface: token shift, time_mix μ vs lerp with 1 − μ", lerp_style, rwkv4_style, 1e-6)

# the same read-out in both vector conventions: row r·S equals column Sᵀr
S, r = torch.randn(4, 3, generator=g), torch.randn(4, generator=g)
rwkvlab.check("preface: row-vector r S vs column-vector Sᵀ r", r[None, :] @ S, (S.T @ r)[None, :], 1e-6)

# %% [markdown]
# ### A word on sources
#
# The book cites papers by arXiv id and code by repository and path; the appendix
# (`16_references.py`) lists them all, restates the package's API contract, and collects the
# **common misstatements about RWKV** that circulate in notes and summaries, each with the
# primary source that settles it and the chapter whose cells check it. Where a widely read
# account simplifies, the chapters follow the papers and the official code, say what is true,
# and show it with a check. Three examples you will meet:
#
# - RWKV-6's output is sometimes written as a read of $h_t$, the state *after* the update.
#   RWKV-6 reads $S_{t-1}$, and the current token enters only through the bonus $u$
#   (chapter 5, §2).
# - RWKV-7's decay is sometimes written $\exp(-\exp(w))$ with no limit on $w$, which is
#   RWKV-6's form. RWKV-7's official code does apply $\exp(-\exp(w))$, but only to
#   $w = -\mathrm{softplus}(-d) - 0.5 = \log\sigma(d) - 0.5$, so its factor is
#   $\exp(-e^{-0.5}\sigma(d))$ (the paper's Eq. 12), which can never go below about 0.545 per step.
# - RWKV-7 is often credited with "NC¹ expressivity". What the RWKV-7 paper claims is narrower:
#   proofs that its generalised delta rule can solve problems outside TC⁰, assuming the widely
#   held conjecture TC⁰ ≠ NC¹. Constructions of this kind use transitions that act as exact
#   reflections or permutations (an eigenvalue of −1), which needs an in-context learning rate
#   of 2. With the released parameterisation (decay factors above 0.545, in-context learning
#   rates in (0, 1)), every eigenvalue of the transition lies strictly inside the unit circle:
#   our own derivation, checked numerically in Part III (chapters 8 and 9), which works through
#   what that does and does not allow.
#
# ## 4. Map of the book
#
# The book has four parts and an appendix. **Part I** builds the baseline (softmax attention and its quadratic
# cost) and AFT, the attention-free model RWKV grew out of. It then derives RWKV-4's WKV with its
# decay and bonus, and puts it in a whole block with token shift and channel mixing, in both
# parallel and RNN form. **Part II** is RWKV-6. The state becomes a $K\times V$ matrix, the decay
# becomes data-dependent, and the recurrence is rewritten chunk by chunk, first in torch and
# then as Triton kernels with a backward pass. **Part III** is RWKV-7. It starts from the delta rule,
# read as one step of online gradient descent, asks what that buys (associative recall, state
# tracking) and what it does not, and then derives the chunked form with the WY representation
# and builds its kernels. **Part IV** assembles whole RWKV-6 and RWKV-7 models from the official
# formulas, shows that the parallel and recurrent modes agree, and trains small models on a laptop.
# It ends beyond RWKV: two chapters numbered 14 with the training chapter show that DeltaNet,
# Gated DeltaNet, KDA and DeltaProduct are calls to the same `wkv7` kernel, and train the
# state-tracking result of negative eigenvalues on it.
# The **Appendix** is a teacher's guide to running a class on the book, and the references,
# the API contract and the common misstatements about RWKV.
#
# The manifest, `book.toml`, is the single list of chapters; the README's contents and the
# runner read it too.

# %%
from rwkvlab import book

chapters = book.chapters()
parts = list(dict.fromkeys(c.part for c in chapters))
assert len(parts) == 5 and parts[-1] == "Appendix" and chapters[0].file == "00_preface.py"
for part in parts:
    print(part)
    for c in chapters:
        if c.part == part:
            print(f"   {c.file[:2]}  {c.title}")

# %% [markdown]
# ## 5. How to use a chapter
#
# Read the text, run the cells, and change things. The checks make that safe: change a formula in
# a copy of a function and `rwkvlab.check` tells you at once whether it still computes the same
# thing. Every chapter ends with numbered exercises, and most of them end in a check of
# their own. When a chapter gives a number (an error, a slope, a byte count), a cell has computed
# and asserted it. When it says something overflows or fails, a cell shows it failing.
#
# ## Summary
#
# - The book runs anywhere: Triton kernels compile on a CUDA GPU and run in the interpreter on a
#   CPU, with the shapes chosen by `rwkvlab.device.pick`; `pytest --nbval notebooks tests` is
#   the test suite, and the chapters' own assertions are its tests.
# - Every mechanism climbs the same ladder (math, naive, chunked, Triton, check), and every check
#   prints one line from `rwkvlab.check`.
# - One notation holds throughout: column vectors, a $K \times V$ state, decay passed as its log
#   (`wkv4` excepted: it takes the RWKV-4 paper's $w \ge 0$), and RWKV-4's $\mu$ on the current
#   token versus the later papers' $\mu$ on the previous one.
#
# ## Exercises
#
# 1. Run `python -m rwkvlab run 00 01 02` and note the time of each chapter. Then time the cells
#    of Chapter 1 one by one: which take longest, and is it the Triton cells or the measurements?
# 2. Using `rwkvlab.check`, find the smallest tolerance at which the float32 check in §2 above
#    still passes. How does it compare with float32's machine epsilon ($\approx 1.2\cdot 10^{-7}$)?
# 3. Convert an RWKV-4 `time_decay` value of $-5$ to the log decay a kernel receives here, and
#    to the per-step factor. How many steps does a token's weight take to halve?
# 4. Write the RWKV-6 read-out $o_t$ for one head in the papers' row-vector convention, and check
#    numerically that it equals the column form in §3.
