"""The selective scan as a compiled CPU kernel (numba): what `mamba_ssm`'s CUDA kernel is to the GPU.

The chunked pure-PyTorch scan materialises (L, d_inner, d_state) tensors several times over and is memory-bound on
a CPU. Here each (batch, channel) pair runs the recurrence token by token in compiled code with its d_state
entries in registers, channels in parallel: O(L * d_inner * d_state) arithmetic and no state tensor in memory.
Backward recomputes the states of one channel at a time (as the fused kernel does) and runs the adjoint recurrence
in reverse, so autograd keeps only the inputs.

Threads: numba's `workqueue` layer (unless NUMBA_THREADING_LAYER says otherwise), because GNU OpenMP aborts in
children forked after it ran (DataLoader workers); workqueue is not safe for concurrent callers, hence the lock.
Thread count follows `torch.get_num_threads()`, so Ray and DDP workers keep their CPU share.
"""

from __future__ import annotations

import math
import os
import threading

import numba
import numpy as np
import torch
from torch.autograd.function import once_differentiable

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

_FASTMATH = {"contract", "reassoc", "arcp", "nsz"}  # no 'nnan'/'ninf': NaN and inf must reach the loss checks
_KERNEL_LOCK = threading.Lock()
_LOG2_E = 1.4426950408889634
_LN2_HIGH, _LN2_LOW = 0.693145751953125, 1.42860682030941723212e-6  # Cody-Waite split: x - i*ln2 stays exact
_EXP_LIMIT = 700.0  # exp(+-700) is inside float64's exponent range, so the 2^i bit pattern below is valid


@numba.njit(inline="always", fastmath=_FASTMATH)
def _fill_decays(dt, a_row, decays, exponent_bits):
    """decays[k] = exp(dt * a_row[k]) in float64 (error ~1e-14), written so the loops vectorise.

    libm's scalar exp was most of the kernel's time (one per state entry and token); here exp(x) = 2^i * exp(r)
    with |r| <= ln2/2, exp(r) by its degree-11 Taylor polynomial and 2^i built from its IEEE-754 bit pattern.
    """
    for k in range(decays.shape[0]):
        x = min(max(dt * a_row[k], -_EXP_LIMIT), _EXP_LIMIT)
        i = math.floor(x * _LOG2_E + 0.5)
        r = (x - i * _LN2_HIGH) - i * _LN2_LOW
        poly = 1.0 / 39916800
        for coefficient in (1.0 / 3628800, 1.0 / 362880, 1.0 / 40320, 1.0 / 5040, 1.0 / 720, 1.0 / 120,
                            1.0 / 24, 1.0 / 6, 0.5, 1.0, 1.0):
            poly = poly * r + coefficient
        exponent_bits[k] = (np.int64(i) + 1023) << 52
        decays[k] = poly
    scale = exponent_bits.view(np.float64)
    for k in range(decays.shape[0]):
        decays[k] *= scale[k]


@numba.njit(parallel=True, fastmath=_FASTMATH, cache=True)
def _forward_kernel(u, delta, A, B, C):
    """y (batch, dim, L) from u, delta (batch, dim, L), A (dim, n), B and C (batch, L, n)."""
    batch, dim, length = u.shape
    n_state = A.shape[1]
    y = np.empty_like(u)
    A64 = A.astype(np.float64)
    for job in numba.prange(batch * dim):
        b, d = job // dim, job % dim
        state = np.zeros(n_state, dtype=u.dtype)
        decays = np.empty(n_state, dtype=np.float64)
        exponent_bits = np.empty(n_state, dtype=np.int64)
        a_row = A64[d]
        for t in range(length):
            dt = delta[b, d, t]
            _fill_decays(np.float64(dt), a_row, decays, exponent_bits)
            drive = dt * u[b, d, t]
            out = 0.0
            for k in range(n_state):
                state[k] = decays[k] * state[k] + drive * B[b, t, k]
                out += state[k] * C[b, t, k]
            y[b, d, t] = out
    return y


@numba.njit(parallel=True, fastmath=_FASTMATH, cache=True)
def _backward_kernel(u, delta, A, B, C, grad_y, groups):
    """Gradients of sum(grad_y * y) for u, delta, A, B, C; channels split into `groups` parallel workers.

    With h_t = a_t h_{t-1} + dt_t u_t B_t, a_t = exp(dt_t A), y_t = <C_t, h_t>, the adjoint g_t = dL/dh_t obeys
    g_t = grad_y_t C_t + a_{t+1} g_{t+1}. B and C are shared by all channels, so each group sums its own copy.
    """
    batch, dim, length = u.shape
    n_state = A.shape[1]
    grad_u = np.empty_like(u)
    grad_delta = np.empty_like(u)
    grad_A = np.zeros_like(A)
    grad_B = np.zeros((groups, batch, length, n_state), dtype=u.dtype)
    grad_C = np.zeros((groups, batch, length, n_state), dtype=u.dtype)
    A64 = A.astype(np.float64)
    for group in numba.prange(groups):
        states = np.empty((length + 1, n_state), dtype=u.dtype)
        decays = np.empty((length, n_state), dtype=np.float64)
        exponent_bits = np.empty(n_state, dtype=np.int64)
        adjoint = np.empty(n_state, dtype=u.dtype)
        for d in range(group, dim, groups):
            a_row = A64[d]
            for b in range(batch):
                states[0, :] = 0.0
                for t in range(length):
                    dt = delta[b, d, t]
                    _fill_decays(np.float64(dt), a_row, decays[t], exponent_bits)
                    drive = dt * u[b, d, t]
                    for k in range(n_state):
                        states[t + 1, k] = decays[t, k] * states[t, k] + drive * B[b, t, k]
                adjoint[:] = 0.0
                for t in range(length - 1, -1, -1):
                    dt = delta[b, d, t]
                    u_t = u[b, d, t]
                    g_out = grad_y[b, d, t]
                    g_dt = 0.0
                    g_u = 0.0
                    for k in range(n_state):
                        g_h = adjoint[k] + g_out * C[b, t, k]
                        grad_C[group, b, t, k] += g_out * states[t + 1, k]
                        through_decay = g_h * decays[t, k] * states[t, k]
                        g_dt += a_row[k] * through_decay + g_h * u_t * B[b, t, k]
                        g_u += g_h * B[b, t, k]
                        grad_B[group, b, t, k] += g_h * dt * u_t
                        grad_A[d, k] += dt * through_decay
                        adjoint[k] = g_h * decays[t, k]
                    grad_delta[b, d, t] = g_dt
                    grad_u[b, d, t] = g_u * dt
    return grad_u, grad_delta, grad_A, grad_B.sum(axis=0), grad_C.sum(axis=0)


def _kernel_inputs(u, delta, A, B, C) -> tuple[torch.Tensor, ...]:
    """Contiguous detached inputs; B and C token-major so the inner loop over d_state reads consecutive memory."""
    return tuple(t.detach().contiguous() for t in (u, delta, A, B.transpose(1, 2), C.transpose(1, 2)))


def _threads() -> int:
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    return threads


class _CompiledScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C):
        inputs = _kernel_inputs(u, delta, A, B, C)
        ctx.save_for_backward(*inputs)  # the layout backward needs, so it copies nothing again
        with _KERNEL_LOCK:
            _threads()
            return torch.from_numpy(_forward_kernel(*(t.numpy() for t in inputs)))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        inputs = ctx.saved_tensors
        with _KERNEL_LOCK:
            groups = min(_threads(), inputs[0].shape[1])
            grads = _backward_kernel(*(t.numpy() for t in inputs), grad_y.contiguous().numpy(), groups)
        grad_u, grad_delta, grad_A, grad_B, grad_C = (torch.from_numpy(g) for g in grads)
        return grad_u, grad_delta, grad_A, grad_B.transpose(1, 2), grad_C.transpose(1, 2)


@torch.compiler.disable  # numba calls cannot be traced; `train.compile` graphs break here, as around a custom kernel
def compiled_scan(u, delta, A, B, C) -> torch.Tensor:
    """y_t = <C_t, h_t> for prepared CPU inputs of one float dtype (float32 or float64), differentiable."""
    return _CompiledScan.apply(u, delta, A, B, C)
