import os

import pytest
import torch

import rwkvlab
from rwkvlab import check, rel_err


def test_device_switch_sets_the_interpreter_without_a_gpu():
    if torch.cuda.is_available() and os.environ.get("RWKVLAB_DEVICE") != "cpu":
        assert rwkvlab.device.has_gpu()
    else:
        assert os.environ.get("TRITON_INTERPRET") == "1"
        assert rwkvlab.device.interpreting()
        assert "interpreter" in rwkvlab.device.describe()


def test_check_passes_and_prints_one_line(capsys):
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    err = check("same", x, x.clone())
    assert err == 0.0
    assert capsys.readouterr().out.strip() == "same: rel err 0e+00 (tol 1e-05)  ok"


def test_check_fails_loudly():
    x = torch.ones(4)
    with pytest.raises(AssertionError, match="exceeds"):
        check("off", x * 1.01, x, tol=1e-3)


def test_check_compares_every_tensor_of_a_tuple():
    a, b = torch.ones(3), torch.ones(2)
    assert rel_err((a, b), (a, b * 2)) == pytest.approx(0.5)
    assert rel_err((a, torch.tensor([float("nan")])), (a, b[:1])) == float("inf")
    with pytest.raises(ValueError, match=r"^check: shape"):
        rel_err(a, b)


def test_command_line_toc_matches_manifest(capsys):
    from rwkvlab.__main__ import main

    assert main(["toc"]) == 0
    assert "00_preface.py" in capsys.readouterr().out


def test_kernel_device_rejects_tensors_where_the_kernels_do_not_run():
    from rwkvlab import validate

    here = torch.zeros(2, device=rwkvlab.device.device())
    validate.kernel_device("q", here)
    elsewhere = torch.zeros(2, device="meta")
    with pytest.raises(ValueError, match=r"^q: the Triton kernels run on"):
        validate.kernel_device("q", elsewhere)


def test_randn_is_seeded_and_the_same_numbers_in_every_dtype():
    a = rwkvlab.randn(3, 4, seed=5)
    assert a.dtype == torch.float32 and a.shape == (3, 4)
    assert torch.equal(a, rwkvlab.randn(3, 4, seed=5))
    assert not torch.equal(a, rwkvlab.randn(3, 4, seed=6))
    b = rwkvlab.randn(3, 4, seed=5, dtype=torch.float64, scale=2.0)
    assert b.dtype == torch.float64 and torch.equal((b / 2).float(), a)
