"""rwkvlab.rwkv4: the RWKV-4 block's pieces; rwkvlab.model.x040: its model, parallel mode == RNN mode."""
import pytest
import torch

import rwkvlab  # noqa: F401
from rwkvlab import rel_err, rwkv4, wkv4
from rwkvlab.model import x040


DEV = rwkvlab.device.device()  # where the Triton WKV kernel can run


def rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_token_shift_moves_by_one_and_returns_the_last_input():
    x = rand(2, 5, 3)
    prev, last = rwkv4.token_shift(x)
    assert torch.equal(prev[:, 0], torch.zeros(2, 3)) and torch.equal(prev[:, 1:], x[:, :-1])
    assert torch.equal(last, x[:, -1])
    carried = rand(2, 3, seed=1)
    prev, _ = rwkv4.token_shift(x, carried)
    assert torch.equal(prev[:, 0], carried)


def test_mix_weights_the_current_token_with_mu():
    x, xp = rand(4, 3), rand(4, 3, seed=1)
    assert torch.equal(rwkv4.mix(x, xp, torch.ones(3)), x)
    assert torch.equal(rwkv4.mix(x, xp, torch.zeros(3)), xp)


def test_paper_initialisation_of_decay_and_bonus():
    tm = rwkv4.TimeMix(8, layer_id=1, n_layer=3)
    i = torch.arange(8.0)
    assert torch.allclose(tm.time_decay, -5 + 8 * (i / 7) ** (0.7 + 1.3 * 0.5))
    assert torch.allclose(tm.time_first, 0.5 * (((i + 1) % 3) - 1) + torch.log(torch.tensor(0.3)))
    assert (tm.decay() > 0).all()


def test_channel_mix_touches_only_positions_t_and_t_plus_1():
    torch.manual_seed(0)
    cm = rwkv4.ChannelMix(6)
    x = rand(1, 9, 6)
    y, _ = cm(x)
    x2 = x.clone()
    x2[0, 4] += rand(6, seed=3)
    y2, _ = cm(x2)
    changed = (y2 - y).abs().amax(dim=-1)[0] > 0
    assert changed.nonzero().flatten().tolist() == [4, 5]


@pytest.mark.parametrize("impl", ["naive", "recurrent", "chunked", "triton_recurrent"])
def test_model_parallel_equals_rnn_mode(impl):
    model = x040.RWKV4(vocab=20, C=16, n_layer=2, seed=1).to(DEV)
    idx = torch.randint(0, 20, (2, 11), generator=torch.Generator().manual_seed(0)).to(DEV)
    with torch.no_grad():
        logits, state = model(idx, impl=impl)
        s = None
        outs = []
        for t in range(idx.shape[1]):
            o, s = model.step(idx[:, t], s)
            outs.append(o)
    assert rel_err(torch.stack(outs, 1), logits) <= 1e-5
    for a, b in zip(s, state):
        assert rel_err(list(a), list(b)) <= 1e-5


def test_state_size_does_not_grow_with_length_and_segments_chain():
    model = x040.RWKV4(vocab=10, C=8, n_layer=3, seed=2)
    idx = torch.randint(0, 10, (1, 23), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, s_full = model(idx)
        a, s1 = model(idx[:, :7])
        b, s2 = model(idx[:, 7:], s1)
    assert rel_err(torch.cat([a, b], 1), full) <= 1e-5
    sizes = {sum(x.numel() for layer in s for x in layer) for s in (s1, s2, s_full)}
    assert sizes == {5 * 3 * 8}  # 5 vectors of C per layer ("5DL"), whatever T


def test_gradients_flow_through_the_triton_path_like_the_chunked_one():
    idx = torch.randint(0, 12, (2, 9), generator=torch.Generator().manual_seed(2)).to(DEV)
    grads = {}
    for impl in ("chunked", "triton_recurrent"):
        model = x040.RWKV4(vocab=12, C=16, n_layer=2, seed=3).to(DEV)
        logits, _ = model(idx, impl=impl)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx.flatten()).backward()
        grads[impl] = [p.grad.clone() for p in model.parameters()]
    for a, b in zip(grads["triton_recurrent"], grads["chunked"]):
        assert rel_err(a, b) <= 1e-4


def test_bad_inputs_raise_value_errors_naming_the_argument():
    model = x040.RWKV4(vocab=10, C=8, n_layer=1)
    with pytest.raises(ValueError, match=r"^idx:"):
        model(torch.zeros(2, 3))  # float, not token ids
    with pytest.raises(ValueError, match=r"^idx:"):
        model(torch.full((1, 3), 10))
    with pytest.raises(ValueError, match=r"^token:"):
        model.step(torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^state:"):
        model(torch.zeros(1, 3, dtype=torch.long), state=[None, None])
    with pytest.raises(ValueError, match=r"^impl:"):
        model(torch.zeros(1, 3, dtype=torch.long), impl="fast")
    with pytest.raises(ValueError, match=r"^x:"):
        rwkv4.token_shift(rand(3, 4))
    with pytest.raises(ValueError, match=r"^shift_state:"):
        rwkv4.token_shift(rand(2, 3, 4), rand(3, 4))
    with pytest.raises(ValueError, match=r"^C:"):
        x040.RWKV4(vocab=10, C=0)


def test_time_mix_uses_paper_w_not_the_raw_parameter():
    tm = rwkv4.TimeMix(4)
    x = rand(1, 6, 4)
    with torch.no_grad():
        o, _, _ = tm(x)
        prev, _ = rwkv4.token_shift(x)
        r, k, v = tm.rkv(x, prev)
        y, _ = wkv4.naive(k.double(), v.double(), torch.exp(tm.time_decay).double(), tm.time_first.double())
        ref = tm.output(torch.sigmoid(r) * y.float())
    assert rel_err(o, ref) <= 1e-5
