"""Wrong answers to chapter 01's exercises: each must fail its checker with the intended hint."""
from __future__ import annotations

import pytest
import torch

from rwkvlab import exercises  # first: importing rwkvlab picks the Triton interpreter on a CPU

import triton  # noqa: E402
import triton.language as tl  # noqa: E402


# ---- 01.6: causal softmax attention ----------------------------------------------------------
def _attend(q, k, v, scale, drop, dim=-1):
    """drop(T) -> [T, T] bool, True where the score is set to -inf."""
    s = torch.einsum("bthk,bihk->bhti", q, k) * scale
    p = torch.softmax(s.masked_fill(drop(q.shape[1]), float("-inf")), dim=dim)
    return torch.einsum("bhti,bihv->bthv", p, v)


def _future(T):
    return torch.ones(T, T, dtype=torch.bool).triu(1)


def _no_mask(q, k, v, scale):
    return _attend(q, k, v, scale, lambda T: torch.zeros(T, T, dtype=torch.bool))


def _wrong_triangle(q, k, v, scale):
    return _attend(q, k, v, scale, lambda T: torch.ones(T, T, dtype=torch.bool).tril(-1))


def _strict_mask(q, k, v, scale):
    return _attend(q, k, v, scale, lambda T: torch.ones(T, T, dtype=torch.bool).triu(0))


def _softmax_over_queries(q, k, v, scale):
    return _attend(q, k, v, scale, _future, dim=-2)


def _no_scale(q, k, v, scale):
    return _attend(q, k, v, 1.0, _future)


def _unstable(q, k, v, scale):
    s = torch.einsum("bthk,bihk->bhti", q, k) * scale
    e = torch.exp(s).masked_fill(_future(q.shape[1]), 0.0)
    return torch.einsum("bhti,bihv->bthv", e / e.sum(-1, keepdim=True), v)


# ---- 01.7: the online-softmax update ---------------------------------------------------------
def _no_rescale(m, ell, a, s, v):
    m_new = torch.maximum(m, s.amax(-1))
    p = torch.exp(s - m_new[:, None])
    return m_new, ell + p.sum(-1), a + p @ v


def _old_max(m, ell, a, s, v):
    m_new = torch.maximum(m, s.amax(-1))
    alpha, p = torch.exp(m - m_new), torch.exp(s - m_new[:, None])
    return m, alpha * ell + p.sum(-1), alpha[:, None] * a + p @ v


def _ell_only(m, ell, a, s, v):
    m_new = torch.maximum(m, s.amax(-1))
    alpha, p = torch.exp(m - m_new), torch.exp(s - m_new[:, None])
    return m_new, alpha * ell + p.sum(-1), a + p @ v


def _unshifted(m, ell, a, s, v):
    p = torch.exp(s)
    return torch.maximum(m, s.amax(-1)), ell + p.sum(-1), a + p @ v


# ---- 01.8: the key-block loop of the flash kernel, with one thing wrong ------------------------
@triton.jit
def _flash(q_ptr, k_ptr, v_ptr, o_ptr, T, H, K, V, scale,
           BT: tl.constexpr, BS: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
           MASK: tl.constexpr, RESCALE: tl.constexpr, SCALE: tl.constexpr):
    i_bh, i_t = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = i_t * BT + tl.arange(0, BT)
    o_k, o_v = tl.arange(0, BK), tl.arange(0, BV)
    m_t, m_k, m_v = o_t < T, o_k < K, o_v < V
    b_q = tl.load(q_ptr + ((i_b * T + o_t[:, None]) * H + i_h) * K + o_k[None, :],
                  mask=m_t[:, None] & m_k[None, :], other=0.0)
    b_m = tl.full([BT], float("-inf"), dtype=tl.float32)
    b_l = tl.zeros([BT], dtype=tl.float32)
    b_acc = tl.zeros([BT, BV], dtype=tl.float32)
    hi = tl.minimum((i_t + 1) * BT, T)
    for s0 in range(0, hi, BS):
        o_s = s0 + tl.arange(0, BS)
        m_s = o_s < T
        b_k = tl.load(k_ptr + ((i_b * T + o_s[:, None]) * H + i_h) * K + o_k[None, :],
                      mask=m_s[:, None] & m_k[None, :], other=0.0)
        b_v = tl.load(v_ptr + ((i_b * T + o_s[:, None]) * H + i_h) * V + o_v[None, :],
                      mask=m_s[:, None] & m_v[None, :], other=0.0)
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision="ieee")
        if SCALE:
            b_s = b_s * scale
        if MASK:
            b_s = tl.where(o_s[None, :] <= o_t[:, None], b_s, float("-inf"))
        else:                                   # only the padding past T is masked
            b_s = tl.where(m_s[None, :], b_s, float("-inf"))
        m_new = tl.maximum(b_m, tl.max(b_s, axis=1))
        alpha = tl.exp(b_m - m_new)
        if not RESCALE:
            alpha = alpha * 0.0 + 1.0
        b_p = tl.exp(b_s - m_new[:, None])
        b_l = b_l * alpha + tl.sum(b_p, axis=1)
        b_acc = b_acc * alpha[:, None] + tl.dot(b_p, b_v, input_precision="ieee")
        b_m = m_new
    tl.store(o_ptr + ((i_b * T + o_t[:, None]) * H + i_h) * V + o_v[None, :], b_acc / b_l[:, None],
             mask=m_t[:, None] & m_v[None, :])


def _flash_wrapper(mask=True, rescale=True, use_scale=True):
    def flash_forward(q, k, v, scale):
        B, T, H, K = q.shape
        V = v.shape[-1]
        o = torch.empty(B, T, H, V, dtype=torch.float32, device=q.device)
        BK, BV = max(16, triton.next_power_of_2(K)), max(16, triton.next_power_of_2(V))
        _flash[(B * H, triton.cdiv(T, 16))](q.contiguous(), k.contiguous(), v.contiguous(), o, T, H, K, V, scale,
                                            BT=16, BS=16, BK=BK, BV=BV, MASK=mask, RESCALE=rescale, SCALE=use_scale)
        return o
    return flash_forward


_diag_unmasked = _flash_wrapper(mask=False)
_diag_unmasked.__name__ = "_diag_unmasked"
_kernel_no_rescale = _flash_wrapper(rescale=False)
_kernel_no_rescale.__name__ = "_kernel_no_rescale"
_kernel_no_scale = _flash_wrapper(use_scale=False)
_kernel_no_scale.__name__ = "_kernel_no_scale"


def _returns_transposed(q, k, v, scale):
    return _flash_wrapper()(q, k, v, scale).transpose(1, 2)


WRONG = {
    "01.6": [(_no_mask, "no causal mask"), (_wrong_triangle, "wrong triangle"), (_strict_mask, "drops the diagonal"),
             (_softmax_over_queries, "over the queries"), (_no_scale, "missing the scale"),
             (_unstable, "NaN or Inf.*\nhint: scores s = scale")],
    "01.7": [(_no_rescale, "not rescaled"), (_old_max, "new max is not returned|return m_new"), (_ell_only, "only ell"),
             (_unshifted, "ell must be")],
    "01.8": [(_diag_unmasked, "diagonal tile is not masked"), (_kernel_no_rescale, "not rescaled"),
             (_kernel_no_scale, "missing the scale"), (_returns_transposed, "expected shape")],
}


def test_correct_flash_wrapper_passes():
    assert exercises.check("01.8", _flash_wrapper()) == 4


@pytest.mark.parametrize("id_,fn,hint", [(i, f, h) for i, lst in WRONG.items() for f, h in lst],
                         ids=[f"{i}-{f.__name__}" for i, lst in WRONG.items() for f, _ in lst])
def test_wrong_answer_fails_with_its_hint(id_, fn, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check(id_, fn)
