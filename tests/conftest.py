"""Shared guards for the test suite."""
import pytest
import torch


def _precision_flags():
    return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)


@pytest.fixture(autouse=True)
def float32_stays_float32():
    """No test may leave torch's TF32 switches changed for the tests after it: on a GPU they turn
    float32 matrix products into TF32 ones for the whole process (the official ``rwkv`` package sets
    them when it is imported), and every 1e-5 comparison after that fails far from its cause."""
    before = _precision_flags()
    yield
    after = _precision_flags()
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = before
    assert after == before, f"this test changed torch's (matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark) {before} -> {after}"
