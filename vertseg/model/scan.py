"""Mamba's selective scan off the fused CUDA kernels: a compiled CPU kernel (`scan_cpu.py`), a chunked
pure-PyTorch form for any other device or when numba is missing, and the step-by-step reference both must equal.

Every form follows the argument layout of `mamba_ssm.ops.selective_scan_interface.selective_scan_fn`:
`u`, `delta`, `z`: (B, D, L); `A`: (D, N); `B`, `C`: (B, N, L); `D`, `delta_bias`: (D,). The recurrence is

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t,    y_t = <C_t, h_t> + D * u_t,    y_t *= silu(z_t).
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

DEFAULT_CHUNK = 16  # short chunks keep the in-chunk log-decay sums small: no overflow, no precision loss
_DIRECT_LIMIT = {torch.float32: 60.0, torch.float64: 600.0}  # |in-chunk log-decay| kept below exp's overflow (~88 / ~709)
SEGMENT_ELEMENTS = 2**20  # state entries (batch x tokens x d_inner x d_state) scanned at once: 4 MB float32 temporaries stay cache-friendly (1.6-1.8x faster on CPU than 64 MB)


def _prepare(u, delta, A, B, C, delta_bias, delta_softplus):
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"selective scan: u and delta must both be (B, D, L), got {tuple(u.shape)} and {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != u.shape[1]:
        raise ValueError(f"selective scan: A must be (D={u.shape[1]}, N), got {tuple(A.shape)}")
    expected = (u.shape[0], A.shape[1], u.shape[2])
    if tuple(B.shape) != expected or tuple(C.shape) != expected:
        raise ValueError(f"selective scan: B and C must be {expected}, got {tuple(B.shape)} and {tuple(C.shape)}")
    dtype = torch.promote_types(u.dtype, torch.float32)
    u, delta, B, C = (t.to(dtype) for t in (u, delta, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return u, delta, A.to(dtype), B, C


def _finish(y, u, D, z, out_dtype):
    if D is not None:
        y = y + D.to(y.dtype)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(out_dtype)


def selective_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The recurrence one token at a time; slow, obviously correct, used only to check `selective_scan`."""
    out_dtype = u.dtype
    u, delta, A, B, C = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        decay = torch.exp(delta[:, :, t, None] * A)
        h = decay * h + (delta[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))
    return _finish(torch.stack(ys, dim=-1), u, D, z, out_dtype)


def linear_recurrence(log_a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, chunk: int) -> torch.Tensor:
    """All states of h_t = exp(log_a_t) * h_{t-1} + b_t along dim 1 of (batch, L, ...) tensors, without a token loop.

    Inside each chunk, with S_t the cumulative sum of log_a, the state from a zero start is
    sum_{s<=t} exp(S_t - S_s) b_s = exp(S_t) * cumsum(exp(-S_s) b_s). The chunk is made short enough that
    |S| stays below `_DIRECT_LIMIT`, so exp(-S) cannot overflow and no precision is lost; single-step decays are
    floored at exp(-limit/2) (below float resolution of anything they multiply). The chunk ends form the same
    recurrence one level up, solved recursively in float64 (it is `chunk` times smaller, its sums longer), and
    each token then adds exp(S_t) times its chunk's start state.
    """
    limit = _DIRECT_LIMIT[b.dtype]
    step = 0.0
    if torch.jit.is_tracing():  # export (ONNX/TorchScript): a graph cannot branch on values; assume the steepest decay
        log_a, step = log_a.clamp_min(-limit / 2), limit / 2
    elif log_a.numel() and not log_a.is_meta:  # meta tensors (FLOP counting) carry no values
        low, high = torch.aminmax(log_a.detach())
        if low < -limit / 2:
            log_a = log_a.clamp_min(-limit / 2)
        step = max(min(-float(low), limit / 2), float(high))
    width = max(2, min(chunk, log_a.shape[1], int(limit // step) if step > 0 else chunk))
    length = log_a.shape[1]
    pad = (-length) % width
    if pad:  # log_a = 0 and b = 0: padded steps keep the state, and are cut off below
        log_a = torch.cat([log_a, log_a.new_zeros(log_a.shape[0], pad, *log_a.shape[2:])], dim=1)
        b = torch.cat([b, b.new_zeros(b.shape[0], pad, *b.shape[2:])], dim=1)
    shape = (b.shape[0], (length + pad) // width, width, *b.shape[2:])
    log_decay = torch.cumsum(log_a.reshape(shape), dim=2)
    decay = torch.exp(log_decay)
    intra = decay * torch.cumsum(torch.reciprocal(decay) * b.reshape(shape), dim=2)  # 1/exp(S): one exp per entry, not two
    if shape[1] == 1:
        start = h0[:, None]
    else:
        ends = linear_recurrence(log_decay[:, :, -1].double(), intra[:, :, -1].double(), h0.double(), chunk)
        start = torch.cat([h0[:, None], ends[:, :-1].to(h0.dtype)], dim=1)
    states = intra + decay * start[:, :, None]
    return states.reshape(shape[0], length + pad, *shape[3:])[:, :length]


def _scan_states(u, delta, A, B, C, h0, chunk):
    """y_t = <C_t, h_t> for one segment of prepared inputs, and the segment's last state."""
    log_a = (delta[..., None] * A[:, None]).transpose(1, 2)  # (batch, L, dim, n_state)
    b = ((delta * u)[:, :, None] * B[:, None]).permute(0, 3, 1, 2)
    states = linear_recurrence(log_a, b, h0, chunk)
    y = torch.matmul(states, C.transpose(1, 2)[..., None])[..., 0]  # (batch, L, dim): one batched matvec
    return y.transpose(1, 2), states[:, -1]


@cache
def compiled_cpu_scan():
    """`scan_cpu.compiled_scan`, or None when numba is not importable (the chunked scan then runs on CPU too)."""
    try:
        from vertseg.model.scan_cpu import compiled_scan
    except ImportError:
        return None
    return compiled_scan


def scan_backend(u: torch.Tensor) -> str:
    """'compiled' for CPU tensors when numba imports, else 'chunked' (meta tensors, GPUs without mamba_ssm, and
    while tracing for export: the numba kernel is opaque to the tracer)."""
    if torch.jit.is_tracing():
        return "chunked"
    return "compiled" if u.device.type == "cpu" and compiled_cpu_scan() is not None else "chunked"


def _chunked_scan(u, delta, A, B, C, chunk, segment_elements):
    """Segments of about `segment_elements` state entries, run one after the other; under autograd each segment is
    checkpointed (its states recomputed in backward, as the fused kernel does), so activation memory is that of the
    inputs, not of the (L, d_inner, d_state) states."""
    if chunk < 2:
        raise ValueError(f"selective scan: chunk must be >= 2 (got {chunk}); the chunk-end recurrence shrinks by it")
    batch, dim, length = u.shape
    per_token = batch * dim * A.shape[1]
    segment = max(chunk, segment_elements // per_token)
    state = u.new_zeros(batch, dim, A.shape[1])
    checkpointed = torch.is_grad_enabled()
    outputs = []
    for begin in range(0, length, segment):
        part = [t[..., begin : begin + segment] for t in (u, delta, B, C)]
        if checkpointed:
            y, state = checkpoint(_scan_states, part[0], part[1], A, part[2], part[3], state, chunk, use_reentrant=False)
        else:
            y, state = _scan_states(part[0], part[1], A, part[2], part[3], state, chunk)
        outputs.append(y)
    return torch.cat(outputs, dim=-1)


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    backend: str = "auto", chunk: int = DEFAULT_CHUNK, segment_elements: int = SEGMENT_ELEMENTS,
):
    """The selective scan by `backend`: 'compiled' (CPU, numba), 'chunked' (`linear_recurrence`, any device) or
    'auto' (`scan_backend`). `chunk` and `segment_elements` tune the chunked form only.

    Runs in at least float32; autocast is disabled here because the recurrence is unstable in fp16/bf16.
    """
    backend = scan_backend(u) if backend == "auto" else backend
    if backend not in ("compiled", "chunked"):
        raise ValueError(f"selective scan: backend must be 'auto', 'compiled' or 'chunked', got {backend!r}")
    if backend == "compiled" and compiled_cpu_scan() is None:
        raise ValueError("selective scan: the compiled backend needs numba (pip install numba)")
    out_dtype = u.dtype
    device_type = u.device.type if torch.amp.is_autocast_available(u.device.type) else "cpu"  # e.g. meta
    with torch.autocast(device_type=device_type, enabled=False):
        u, delta, A, B, C = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
        if backend == "compiled":
            y = compiled_cpu_scan()(u, delta, A, B, C)
        else:
            y = _chunked_scan(u, delta, A, B, C, chunk, segment_elements)
        return _finish(y, u, D, z, out_dtype)
