"""Mamba's selective scan in pure PyTorch: a chunked parallel form and the step-by-step reference it must equal.

Both functions follow the argument layout of `mamba_ssm.ops.selective_scan_interface.selective_scan_fn`:
`u`, `delta`, `z`: (B, D, L); `A`: (D, N); `B`, `C`: (B, N, L); `D`, `delta_bias`: (D,). The recurrence is

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t,    y_t = <C_t, h_t> + D * u_t,    y_t *= silu(z_t).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

DEFAULT_CHUNK = 64  # short chunks keep the in-chunk log-decay sums small, so float32 loses no precision
SEGMENT_ELEMENTS = 2**24  # state entries (batch x tokens x d_inner x d_state) scanned at once: ~64 MB per float32 temporary


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


def _signed_log(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log of the positive and of the negative part of x; zero parts map to log(tiny), contributing < tiny."""
    tiny = torch.finfo(x.dtype).tiny
    return torch.log(x.clamp_min(tiny)), torch.log((-x).clamp_min(tiny))


def _scan_states(u, delta, A, B, C, h0, chunk):
    """y_t = <C_t, h_t> for one segment (inputs prepared, L a multiple of `chunk`), and the segment's last state."""
    batch, dim, length = u.shape
    n_state = A.shape[1]
    n_chunks = length // chunk
    # every tensor below is (batch, n_chunks, chunk, dim, n_state) or a slice of it
    delta_c = delta.reshape(batch, dim, n_chunks, chunk).permute(0, 2, 3, 1)
    u_c = u.reshape(batch, dim, n_chunks, chunk).permute(0, 2, 3, 1)
    B_c = B.reshape(batch, n_state, n_chunks, chunk).permute(0, 2, 3, 1)
    C_c = C.reshape(batch, n_state, n_chunks, chunk).permute(0, 2, 3, 1)
    log_decay = torch.cumsum(delta_c[..., None] * A, dim=2)
    log_pos, log_neg = _signed_log((delta_c * u_c)[..., None] * B_c[:, :, :, None, :])
    intra = torch.exp(log_decay + torch.logcumsumexp(log_pos - log_decay, dim=2)) - torch.exp(
        log_decay + torch.logcumsumexp(log_neg - log_decay, dim=2)
    )
    chunk_decay = torch.exp(log_decay[:, :, -1])
    carried = [h0]
    for c in range(n_chunks):
        carried.append(chunk_decay[:, c] * carried[-1] + intra[:, c, -1])
    start = torch.stack(carried[:-1], dim=1)
    states = intra + torch.exp(log_decay) * start[:, :, None]
    y = torch.einsum("bctdn,bctn->bdct", states, C_c).reshape(batch, dim, length)
    return y, carried[-1]


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    chunk: int = DEFAULT_CHUNK, segment_elements: int = SEGMENT_ELEMENTS,
):
    """Vectorised selective scan: exact in-chunk sums via log-decay cumsums, then a short loop over chunks.

    Inside a chunk, with S_t the cumulative sum of delta*A (<= 0), the state from a zero start is
    h_t = sum_{s<=t} exp(S_t - S_s) b_s; it is evaluated as exp(S_t + logcumsumexp(log b_s - S_s)) with the
    positive and negative parts of b kept apart, which never overflows. Chunk ends are then chained,
    H_c = exp(S_end) H_{c-1} + h_end, in L/chunk steps, and each token adds exp(S_t) H_{c-1}.
    Long sequences are cut into segments of about `segment_elements` state entries, run one after the other
    (recomputed in backward via checkpointing), so memory stays bounded at full-resolution placements.
    Runs in at least float32; autocast is disabled here because the recurrence is unstable in fp16/bf16.
    """
    out_dtype = u.dtype
    with torch.autocast(device_type=u.device.type, enabled=False):
        u, delta, A, B, C = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
        batch, dim, length = u.shape
        chunk = max(1, min(chunk, length))
        pad = (-length) % chunk
        if pad:  # zero delta and input on padded tokens: they leave the states unchanged and are cut off below
            u_p, delta_p, B_p, C_p = (F.pad(t, (0, pad)) for t in (u, delta, B, C))
        else:
            u_p, delta_p, B_p, C_p = u, delta, B, C
        per_token = batch * dim * A.shape[1]
        segment = max(chunk, segment_elements // per_token // chunk * chunk)
        state = u.new_zeros(batch, dim, A.shape[1])
        outputs = []
        checkpointed = torch.is_grad_enabled() and length + pad > segment
        for begin in range(0, length + pad, segment):
            part = [t[..., begin : begin + segment] for t in (u_p, delta_p, B_p, C_p)]
            if checkpointed:
                y, state = checkpoint(_scan_states, part[0], part[1], A, part[2], part[3], state, chunk, use_reentrant=False)
            else:
                y, state = _scan_states(part[0], part[1], A, part[2], part[3], state, chunk)
            outputs.append(y)
        y = torch.cat(outputs, dim=-1)[..., :length]
        return _finish(y, u, D, z, out_dtype)
