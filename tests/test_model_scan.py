"""The pure-PyTorch selective scan against the step-by-step recurrence, its gradients, and its autocast behaviour."""

from __future__ import annotations

import pytest
import torch

from vertseg.model.scan import selective_scan, selective_scan_reference


def _inputs(batch, dim, n_state, length, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=dtype)  # noqa: E731
    return dict(
        u=rand(batch, dim, length),
        delta=0.5 * rand(batch, dim, length),
        A=-4 * torch.rand(dim, n_state, generator=g, dtype=dtype),
        B=rand(batch, n_state, length),
        C=rand(batch, n_state, length),
        D=rand(dim),
        z=rand(batch, dim, length),
        delta_bias=0.3 * rand(dim),
    )


@pytest.mark.parametrize("length", [1, 5, 64, 131, 4096])
def test_scan_equals_recurrence(length):
    args = _inputs(2, 3, 4, length, seed=length)
    expected = selective_scan_reference(**args, delta_softplus=True)
    assert length < 64 or expected.abs().max() > 5.0  # long sequences really accumulate state
    torch.testing.assert_close(selective_scan(**args, delta_softplus=True), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("chunk,segment_elements", [(2, 2**24), (16, 64 * 2 * 3 * 4), (32, 100 * 2 * 3 * 4)])
def test_scan_chunking_and_segments_do_not_change_the_result(chunk, segment_elements):
    args = _inputs(2, 3, 4, 700, seed=1)
    expected = selective_scan_reference(**args, delta_softplus=True)
    got = selective_scan(**args, delta_softplus=True, chunk=chunk, segment_elements=segment_elements)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_scan_survives_strong_decay_without_overflow():
    args = _inputs(1, 2, 3, 300, seed=2)
    args["delta"] = args["delta"].abs() * 40  # decays down to exp(-160) per step: naive exp(-cumsum) would overflow
    args["delta_bias"] = None
    got = selective_scan(**args)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, selective_scan_reference(**args), rtol=0, atol=1e-6)


def test_scan_gradcheck():
    args = _inputs(1, 2, 3, 10, seed=3)
    names = ("u", "delta", "A", "B", "C", "D", "z")
    tensors = [args[n].clone().requires_grad_() for n in names]

    def fn(*ts):
        return selective_scan(**dict(zip(names, ts)), delta_bias=args["delta_bias"], delta_softplus=True, chunk=4)

    assert torch.autograd.gradcheck(fn, tensors)


def test_segmented_backward_equals_reference_backward():
    args = _inputs(1, 2, 3, 200, seed=4)
    grads = []
    for run in (
        lambda a: selective_scan(**a, delta_softplus=True, chunk=8, segment_elements=48),
        lambda a: selective_scan_reference(**a, delta_softplus=True),
    ):
        u = args["u"].clone().requires_grad_()
        run({**args, "u": u}).square().sum().backward()
        grads.append(u.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-6)


def test_scan_runs_in_float32_under_autocast():
    args = {k: v.float() for k, v in _inputs(1, 4, 2, 50, seed=5).items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = selective_scan(**args, delta_softplus=True)
    assert got.dtype == torch.float32
    expected = selective_scan_reference(**{k: v.double() for k, v in args.items()}, delta_softplus=True)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


def test_scan_rejects_mismatched_shapes():
    args = _inputs(1, 2, 3, 8)
    args["B"] = args["B"][..., :5]
    with pytest.raises(ValueError, match="B and C must be"):
        selective_scan(**args)
