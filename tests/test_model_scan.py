"""Both selective-scan backends (compiled CPU kernel, chunked PyTorch) against a step-by-step recurrence written
here, independently of `vertseg.model.scan`: values, gradients, autocast, and which backend runs where."""

from __future__ import annotations

import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest
import torch

from vertseg.model.scan import scan_backend, selective_scan, selective_scan_reference

BACKENDS = ["compiled", "chunked"]


def recurrence(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Mamba's selective scan from its definition, one token at a time in float64 (all channels and state entries
    of a token at once), differentiable:

        dt = softplus(delta + delta_bias),   h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t,
        y_t = C_t . h_t + D u_t,   y_t <- y_t z_t sigmoid(z_t)

    u, delta, z: (batch, channel, L); A: (channel, N); B, C: (batch, N, L); h: (batch, channel, N).
    """
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.double().view(1, -1, 1)
    if delta_softplus:
        delta = torch.log1p(torch.exp(delta))
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float64)
    ys = []
    for t in range(u.shape[2]):
        dt = delta[:, :, t].unsqueeze(-1)  # (batch, channel, 1)
        h = torch.exp(dt * A.unsqueeze(0)) * h + dt * B[:, :, t].unsqueeze(1) * u[:, :, t].unsqueeze(-1)
        y = (h * C[:, :, t].unsqueeze(1)).sum(-1)
        if D is not None:
            y = y + D.double().unsqueeze(0) * u[:, :, t]
        if z is not None:
            zt = z[:, :, t].double()
            y = y * zt * torch.sigmoid(zt)
        ys.append(y)
    return torch.stack(ys, dim=-1)


def test_recurrence_by_hand_and_the_production_reference():
    """The test's recurrence on two tokens worked out by hand, and `selective_scan_reference` (the benchmarks'
    baseline) against it."""
    one = torch.ones(1, 1, 2, dtype=torch.float64)
    u, delta = torch.tensor([[[1.0, 2.0]]], dtype=torch.float64), 0.5 * one
    A, B, C = torch.tensor([[-2.0]], dtype=torch.float64), 3 * one, torch.tensor([[[1.0, -1.0]]], dtype=torch.float64)
    h1 = 0.5 * 3 * 1.0
    h2 = math.exp(-1.0) * h1 + 0.5 * 3 * 2.0
    expected = torch.tensor([[[h1 + 0.1 * 1.0, -h2 + 0.1 * 2.0]]], dtype=torch.float64)
    torch.testing.assert_close(recurrence(u, delta, A, B, C, D=torch.tensor([0.1], dtype=torch.float64)), expected)
    args = _inputs(2, 3, 4, 40, seed=9)
    torch.testing.assert_close(selective_scan_reference(**args, delta_softplus=True),
                               recurrence(**args, delta_softplus=True), rtol=0, atol=1e-9)


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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("length", [1, 5, 64, 131, 4096])
def test_scan_equals_recurrence(length, backend):
    args = _inputs(2, 3, 4, length, seed=length)
    expected = recurrence(**args, delta_softplus=True)
    assert length < 64 or expected.abs().max() > 5.0  # long sequences really accumulate state
    got = selective_scan(**args, delta_softplus=True, backend=backend)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("chunk,segment_elements", [(2, 2**24), (16, 64 * 2 * 3 * 4), (32, 100 * 2 * 3 * 4)])
def test_scan_chunking_and_segments_do_not_change_the_result(chunk, segment_elements):
    args = _inputs(2, 3, 4, 700, seed=1)
    expected = recurrence(**args, delta_softplus=True)
    got = selective_scan(**args, delta_softplus=True, backend="chunked", chunk=chunk, segment_elements=segment_elements)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scan_survives_strong_decay_without_overflow(backend):
    args = _inputs(1, 2, 3, 300, seed=2)
    args["delta"] = args["delta"].abs() * 40  # decays down to exp(-160) per step: naive exp(-cumsum) would overflow
    args["delta_bias"] = None
    got = selective_scan(**args, backend=backend)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, recurrence(**args), rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scan_gradcheck(backend):
    args = _inputs(2, 3, 3, 10, seed=3)
    names = ("u", "delta", "A", "B", "C", "D", "z")
    tensors = [args[n].clone().requires_grad_() for n in names]

    def fn(*ts):
        return selective_scan(**dict(zip(names, ts)), delta_bias=args["delta_bias"], delta_softplus=True,
                              backend=backend, chunk=4)

    assert torch.autograd.gradcheck(fn, tensors)


def _long_sequence_grads(run, args):
    leaves = {name: args[name].clone().requires_grad_() for name in ("u", "delta", "A", "B", "C")}
    run({**args, **leaves}).square().sum().backward()
    return {name: leaf.grad for name, leaf in leaves.items()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_sequence_backward_equals_reference_backward(backend):
    args = _inputs(2, 5, 3, 600, seed=4)
    got = _long_sequence_grads(
        lambda a: selective_scan(**a, delta_softplus=True, backend=backend, chunk=8, segment_elements=96), args)
    expected = _long_sequence_grads(lambda a: recurrence(**a, delta_softplus=True), args)
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-9, atol=1e-6, msg=name)


def test_compiled_scan_propagates_nan():
    args = _inputs(1, 2, 3, 20, seed=6)
    args["u"][0, 1, 7] = float("nan")
    got = selective_scan(**args, backend="compiled")
    assert torch.isnan(got[0, 1, 7:]).all() and torch.isfinite(got[0, 0]).all() and torch.isfinite(got[0, 1, :7]).all()


def _compiled_scan_sum(seed: int) -> float:
    return float(selective_scan(**_inputs(2, 8, 4, 300, seed=seed), backend="compiled").sum())


def test_compiled_scan_runs_in_forked_children_and_concurrent_threads():
    """DataLoader workers fork after the parent trained (GNU OpenMP would abort them); Ray Train runs the loop in a
    thread beside others (numba's workqueue pool must not be entered twice at once)."""
    expected = [_compiled_scan_sum(seed) for seed in range(4)]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        assert list(pool.map(_compiled_scan_sum, range(4))) == expected
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(_compiled_scan_sum, range(4))) == expected


def test_auto_backend_is_compiled_on_cpu_and_chunked_elsewhere():
    assert scan_backend(torch.zeros(1)) == "compiled"
    assert scan_backend(torch.zeros(1, device="meta")) == "chunked"
    args = _inputs(1, 2, 3, 4)
    with pytest.raises(ValueError, match="backend must be"):
        selective_scan(**args, backend="fast")


@pytest.mark.parametrize("backend", BACKENDS)
def test_scan_runs_in_float32_under_autocast(backend):
    args = {k: v.float() for k, v in _inputs(1, 4, 2, 50, seed=5).items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = selective_scan(**args, delta_softplus=True, backend=backend)
    assert got.dtype == torch.float32
    expected = recurrence(**{k: v.double() for k, v in args.items()}, delta_softplus=True)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


def test_scan_rejects_mismatched_shapes():
    args = _inputs(1, 2, 3, 8)
    args["B"] = args["B"][..., :5]
    with pytest.raises(ValueError, match="B and C must be"):
        selective_scan(**args)
