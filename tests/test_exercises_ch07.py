"""Wrong answers to chapter 07's exercises: each must fail its checker with the intended hint."""
from __future__ import annotations

import functools

import pytest
import torch

import rwkvlab  # noqa: F401  (first: it selects the Triton interpreter on a machine without a GPU)
import triton
import triton.language as tl
from rwkvlab import exercises


# ---------------------------------------------------------------------------- 07.7: the kernel
@triton.jit
def _kernel(r, k, v, w, u, o, h0, ht, scale, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
            BK: tl.constexpr, BV: tl.constexpr, MISTAKE: tl.constexpr):
    """The recurrent kernel with one mistake switched on by MISTAKE (0: none)."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    if MISTAKE == 3:                                    # only full value blocks: the tail is dropped
        m_v = o_v < (V // BV) * BV
    m_kv = m_k[:, None] & m_v[None, :]
    p_h = i_nh * K * V + o_k[:, None] * V + o_v[None, :]
    b_u = tl.load(u + i_h * K + o_k, mask=m_k, other=0.)
    b_h = tl.load(h0 + p_h, mask=m_kv, other=0.)
    for t in range(T):
        p_k = ((i_n * T + t) * H + i_h) * K + o_k
        p_v = ((i_n * T + t) * H + i_h) * V + o_v
        b_q = tl.load(r + p_k, mask=m_k, other=0.) * scale
        b_k = tl.load(k + p_k, mask=m_k, other=0.)
        b_w = tl.load(w + p_k, mask=m_k, other=0.)
        b_v = tl.load(v + p_v, mask=m_v, other=0.)
        b_kv = b_k[:, None] * b_v[None, :]
        if MISTAKE == 1:                                # update first, then read: the two lines swapped
            b_h = b_h * tl.exp(b_w)[:, None] + b_kv
            b_o = tl.sum((b_h + b_u[:, None] * b_kv) * b_q[:, None], axis=0)
        elif MISTAKE == 2:                              # the log decay used as the factor
            b_o = tl.sum((b_h + b_u[:, None] * b_kv) * b_q[:, None], axis=0)
            b_h = b_h * b_w[:, None] + b_kv
        elif MISTAKE == 4:                              # no bonus
            b_o = tl.sum(b_h * b_q[:, None], axis=0)
            b_h = b_h * tl.exp(b_w)[:, None] + b_kv
        else:
            b_o = tl.sum((b_h + b_u[:, None] * b_kv) * b_q[:, None], axis=0)
            b_h = b_h * tl.exp(b_w)[:, None] + b_kv
        tl.store(o + p_v, b_o, mask=m_v)
    tl.store(ht + p_h, b_h, mask=m_kv)


def _forward(r, k, v, w, u, scale, initial_state, mistake):
    B, T, H, K = r.shape
    V = v.shape[-1]
    o = torch.zeros(B, T, H, V, device=r.device)
    ht = torch.zeros(B, H, K, V, device=r.device)
    _kernel[(triton.cdiv(V, 16), B * H)](r, k, v, w, u, o, initial_state, ht, scale, T, H=H, K=K, V=V,
                                         BK=triton.next_power_of_2(K), BV=16, MISTAKE=mistake)
    return o, ht


def _named(fn, name, **kw):
    f = functools.partial(fn, **kw)
    f.__name__ = name
    return f


def test_the_right_kernel_passes():
    assert exercises.check("07.7", _named(_forward, "right", mistake=0)) == 4


# ---------------------------------------------------------------------------- 07.8: dw
def _pieces(r, k, v, w, scale, s0, do, dht):
    q = scale * r
    S, Ss = s0.clone(), [s0.clone()]
    for t in range(r.shape[1]):
        S = torch.exp(w[:, t])[..., None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        Ss.append(S)
    dS, dSs = dht.clone(), [None] * (r.shape[1] + 1)
    dSs[-1] = dS
    for t in reversed(range(r.shape[1])):
        dS = torch.exp(w[:, t])[..., None] * dS + q[:, t, :, :, None] * do[:, t, :, None, :]
        dSs[t] = dS
    r_dr = torch.stack([q[:, t] * torch.einsum("bhkv,bhv->bhk", Ss[t], do[:, t]) for t in range(r.shape[1])], 1)
    k_dk = torch.stack([k[:, t] * torch.einsum("bhkv,bhv->bhk", dSs[t + 1], v[:, t]) for t in range(r.shape[1])], 1)
    return Ss, dSs, r_dr, k_dk


def _rev(x):
    return x.flip(1).cumsum(1).flip(1)


def _dw_no_seed(r, k, v, w, u, scale, s0, do, dht):
    _, _, r_dr, k_dk = _pieces(r, k, v, w, scale, s0, do, dht)
    return _rev(r_dr) - r_dr - _rev(k_dk)


def _dw_inclusive(r, k, v, w, u, scale, s0, do, dht):
    Ss, _, r_dr, k_dk = _pieces(r, k, v, w, scale, s0, do, dht)
    return (dht * Ss[-1]).sum(-1)[:, None] + _rev(r_dr) - _rev(k_dk)


def _dw_direct_no_exp(r, k, v, w, u, scale, s0, do, dht):
    Ss, dSs, _, _ = _pieces(r, k, v, w, scale, s0, do, dht)
    return torch.stack([(dSs[t + 1] * Ss[t]).sum(-1) for t in range(r.shape[1])], 1)


def _dw_seed_notes(r, k, v, w, u, scale, s0, do, dht):
    Ss, dSs, _, _ = _pieces(r, k, v, w, scale, s0, do, dht)
    return torch.stack([-(dSs[t + 1] * Ss[t]).sum(-1) * torch.exp(w[:, t]) * torch.exp(-torch.exp(w[:, t]))
                        for t in range(r.shape[1])], 1)


# ---------------------------------------------------------------------------- 07.9: A_IJ
def _factors(q, k, w, I, J, BC, p_inclusive=False, with_gap=True):
    wI, wJ = w[:, I * BC:(I + 1) * BC], w[:, J * BC:(J + 1) * BC]
    p = wI.cumsum(1) if p_inclusive else wI.cumsum(1) - wI
    s = wJ.flip(1).cumsum(1).flip(1) - wJ
    gap = w[:, (J + 1) * BC:I * BC].sum(1, keepdim=True) if with_gap else 0.0
    return (q[:, I * BC:(I + 1) * BC] * torch.exp(p)) @ (k[:, J * BC:(J + 1) * BC] * torch.exp(s + gap)).transpose(1, 2)


def _block_inclusive_prefix(q, k, w, I, J, BC):
    return _factors(q, k, w, I, J, BC, p_inclusive=True)


def _block_no_gap(q, k, w, I, J, BC):
    return _factors(q, k, w, I, J, BC, with_gap=False)


def _block_suffix_as_difference(q, k, w, I, J, BC):
    """s_j as (sub-chunk total) - (inclusive prefix): right in exact arithmetic, not after a spike."""
    wI, wJ = w[:, I * BC:(I + 1) * BC], w[:, J * BC:(J + 1) * BC]
    p = wI.cumsum(1) - wI
    s = wJ.sum(1, keepdim=True) - wJ.cumsum(1)
    gap = w[:, (J + 1) * BC:I * BC].sum(1, keepdim=True)
    return (q[:, I * BC:(I + 1) * BC] * torch.exp(p)) @ (k[:, J * BC:(J + 1) * BC] * torch.exp(s + gap)).transpose(1, 2)


def _block_chunk_start(q, k, w, I, J, BC):
    """The factorisation Section 5 rejects: e^{c_{i-1}} and e^{-c_j} from the chunk's start."""
    c = w.cumsum(1)
    qI = q[:, I * BC:(I + 1) * BC] * torch.exp((c - w)[:, I * BC:(I + 1) * BC])
    kJ = k[:, J * BC:(J + 1) * BC] * torch.exp(-c[:, J * BC:(J + 1) * BC])
    return qI @ kJ.transpose(1, 2)


# ---------------------------------------------------------------------------- 07.10: hs
def _states(k, v, w, s0, C, kind=""):
    S, hs = s0.clone(), []
    T = k.shape[1]
    for t0 in range(0, T, C):
        hs.append(S)
        kc, vc, wc = k[:, t0:t0 + C], v[:, t0:t0 + C], w[:, t0:t0 + C]
        if kind == "chunk_start":                        # k e^{c_last - c} as e^{c_last} · e^{-c}
            c = wc.cumsum(1)
            kt = kc * torch.exp(-c) * torch.exp(c[:, -1:])
        else:
            Q = _rev(wc) - (0 if kind == "inclusive" else wc)
            kt = kc * torch.exp(Q)
        S = torch.exp(wc.sum(1))[..., None] * S + torch.einsum("bthk,bthv->bhkv", kt, vc)
    hs = torch.stack(hs, 1)
    if kind == "shifted":
        hs = torch.cat([hs[:, 1:], S[:, None]], 1)
    return hs, S


WRONG = {
    "07.7": [(_named(_forward, "read_after_update", mistake=1), "the state BEFORE the update"),
             (_named(_forward, "log_decay_as_factor", mistake=2), "LOG decay"),
             (_named(_forward, "tail_block_dropped", mistake=3), "last value block"),
             (_named(_forward, "no_bonus", mistake=4), "missing the bonus")],
    "07.8": [(_dw_no_seed, "final state's pull is missing"), (_dw_inclusive, "off by one"),
             (_dw_direct_no_exp, "needs the factor exp"), (_dw_seed_notes, "formula often quoted")],
    "07.9": [(_block_inclusive_prefix, "decay of token i itself"), (_block_no_gap, "the gap is missing"),
             (_block_suffix_as_difference, "decay spikes"), (_block_chunk_start, "overflowed")],
    "07.10": [(_named(_states, "shifted", kind="shifted"), "off by one in the hand-off"),
              (_named(_states, "inclusive", kind="inclusive"), "own decay is included"),
              (_named(_states, "chunk_start", kind="chunk_start"), "overflowed")],
}


@pytest.mark.parametrize("id_,fn,hint", [(i, f, h) for i, lst in WRONG.items() for f, h in lst],
                         ids=[f"{i}-{f.__name__}" for i, lst in WRONG.items() for f, _ in lst])
def test_wrong_answer_fails_with_its_hint(id_, fn, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check(id_, fn)
