"""`vertseg bench model`: cost of the Mamba bottleneck vs self-attention, of the scan, and of each ablation variant.

All ratios compare runs made in this process on the same device. On CPU, "memory" is the activation memory
autograd keeps for backward (sum of saved tensors; deterministic, allocator-independent); on CUDA it is the
peak allocated memory of the step (`torch.cuda.max_memory_allocated`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import torch

from vertseg.bench.report import markdown_table, write_section
from vertseg.model import ModelConfig, SegIdOutput, build_model
from vertseg.model.mamba import Mamba, MambaBlock3d, fused_mamba_inner
from vertseg.model.scan import selective_scan, selective_scan_reference
from vertseg.model.summary import model_cost, variant_configs
from vertseg.model.transformer import TransformerBlock3d


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Fastest wall time of `fn` after one warm-up call (the minimum is the least disturbed by other load)."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def step_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Bytes: peak allocated on CUDA; on CPU the tensors autograd saves for backward during `fn`."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def _loss(out: torch.Tensor | SegIdOutput) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out.float().square().mean()
    loss = sum(s.float().mean() for s in out.seg)
    return loss if out.identification is None else loss + out.identification.float().mean()


def forward_backward(module: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        module.zero_grad(set_to_none=True)
        _loss(module(x)).backward()

    return step


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def bottleneck_scaling(device: torch.device, tokens: list[int], channels: int, cfg: ModelConfig, repeats: int) -> str:
    """Mamba vs Transformer block at the bottleneck width, as the number of bottleneck voxels grows."""
    torch.manual_seed(0)
    blocks = {
        "Mamba": MambaBlock3d(channels, cfg.mamba_d_state, cfg.mamba_d_conv, cfg.mamba_expand, cfg.mamba_bidirectional),
        "Transformer": TransformerBlock3d(channels, cfg.transformer_heads, cfg.transformer_mlp_ratio),
    }
    results: dict[str, list[tuple[float, int]]] = {name: [] for name in blocks}
    for n in tokens:
        x = torch.randn(1, channels, n // 64, 8, 8, device=device, requires_grad=True)
        for name, block in blocks.items():
            step = forward_backward(block.to(device), x)
            results[name].append((timed(step, device, repeats), step_memory(step, device)))
    rows = []
    for i, n in enumerate(tokens):
        (tm, mm), (tt, mt) = results["Mamba"][i], results["Transformer"][i]
        growth = [f"{results[k][i][0] / results[k][0][0]:.1f}x" for k in blocks]
        rows.append([n, f"{tm * 1e3:.1f}", f"{tt * 1e3:.1f}", f"{tt / tm:.2f}", *growth, _mib(mm), _mib(mt)])
    headers = ["tokens", "Mamba ms", "Transformer ms", "Transformer / Mamba", f"Mamba time vs {tokens[0]}",
               f"Transformer time vs {tokens[0]}", "Mamba MiB", "Transformer MiB"]
    exponents = {name: growth_exponent(tokens, [t for t, _ in results[name]]) for name in blocks}
    return markdown_table(headers, rows) + (
        f"\n\nMeasured growth, time ~ tokens^k from a log-log fit over {tokens[0]}-{tokens[-1]} tokens: "
        + ", ".join(f"{name} k = {k:.2f}" for name, k in exponents.items())
        + " (k = 1 linear, k = 2 quadratic); the memory columns are the activations kept for backward."
    )


def growth_exponent(sizes: list[int], seconds: list[float]) -> float:
    """Least-squares slope of log(time) against log(size)."""
    import math

    xs, ys = [math.log(s) for s in sizes], [math.log(t) for t in seconds]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def scan_vs_recurrence(device: torch.device, length: int, dim: int, n_state: int, repeats: int) -> tuple[str, dict]:
    """Both scan backends against the step-by-step recurrence, forward and forward+backward.

    Returns the table and the speed-ups over the recurrence per (pass, backend)."""
    g = torch.Generator().manual_seed(0)
    u, delta, z = (torch.randn(1, dim, length, generator=g).to(device) for _ in range(3))
    B, C = (torch.randn(1, n_state, length, generator=g).to(device) for _ in range(2))
    A = -torch.arange(1, n_state + 1, dtype=torch.float32).repeat(dim, 1).to(device)
    D, bias = torch.ones(dim, device=device), torch.full((dim,), -3.0, device=device)
    candidates = {
        "compiled": partial(selective_scan, backend="compiled"),
        "chunked": partial(selective_scan, backend="chunked"),
        "naive": selective_scan_reference,
    }
    rows, speedups = [], {}
    for label, grad in (("forward", False), ("forward+backward", True)):
        times = {}
        for name, fn in candidates.items():
            leaf = u.clone().requires_grad_(grad)

            def step(fn=fn, leaf=leaf, grad=grad):
                with torch.set_grad_enabled(grad):
                    y = fn(leaf, delta, A, B, C, D, z, bias, True)
                    if grad:
                        y.sum().backward()

            times[name] = timed(step, device, repeats)
        for name in ("compiled", "chunked"):
            speedups[label, name] = times["naive"] / times[name]
        rows.append([label, *(f"{times[name] * 1e3:.1f}" for name in candidates),
                     f"{speedups[label, 'compiled']:.1f}x", f"{speedups[label, 'chunked']:.1f}x"])
    y_ref = selective_scan_reference(u, delta, A, B, C, D, z, bias, True)
    errors = {name: (candidates[name](u, delta, A, B, C, D, z, bias, True) - y_ref).abs().max().item()
              for name in ("compiled", "chunked")}
    table = markdown_table(["pass", "compiled ms", "chunked ms", "naive ms", "compiled speed-up", "chunked speed-up"], rows)
    return table + (
        f"\n\nL = {length}, d_inner = {dim}, d_state = {n_state}, float32, {torch.get_num_threads()} threads; "
        f"max |compiled - naive| = {errors['compiled']:.2e}, max |chunked - naive| = {errors['chunked']:.2e}. "
        "compiled = the numba kernel `vertseg/model/scan_cpu.py` (CPU default); chunked = the pure-PyTorch "
        "`linear_recurrence` (other devices without mamba_ssm, or no numba)."
    ), speedups


def variant_costs(device: torch.device, cfg: ModelConfig, patch: tuple[int, int, int], repeats: int) -> str:
    """Full-model forward+backward per patch for each ablation variant, relative to the configured model."""
    rows, base = [], None
    for name, variant in variant_configs(cfg).items():
        torch.manual_seed(0)
        model = build_model(variant).to(device)
        x = torch.randn(1, variant.in_channels, *patch, device=device)
        step = forward_backward(model, x)
        seconds, memory = timed(step, device, repeats), step_memory(step, device)
        cost = model_cost(name, variant, patch)
        base = base or (seconds, memory, cost.forward_flops)
        rows.append([name, f"{cost.parameters / 1e6:.2f}", f"{cost.forward_flops / 1e9:.1f}", f"{seconds:.2f}",
                     f"{seconds / base[0]:.2f}", _mib(memory), f"{memory / base[1]:.2f}"])
        del model, step
    headers = ["variant", "params (M)", "forward GFLOP", "fwd+bwd s", "time vs configured", "MiB", "memory vs configured"]
    return markdown_table(headers, rows)


def fused_vs_pure(device: torch.device, length: int, channels: int, repeats: int) -> str:
    """mamba_ssm's fused kernels against the pure-PyTorch path with the same weights (CUDA only)."""
    torch.manual_seed(0)
    fused = Mamba(channels).to(device)
    pure = Mamba(channels, use_fast_path=False).to(device)
    pure.load_state_dict(fused.state_dict(), strict=True)
    x = torch.randn(2, length, channels, device=device, requires_grad=True)
    err = (fused(x) - pure(x)).abs().max().item()
    t_fused = timed(lambda: fused(x).sum().backward(), device, repeats)
    t_pure = timed(lambda: pure(x).sum().backward(), device, repeats)
    return markdown_table(
        ["L", "fused ms", "pure PyTorch ms", "pure / fused", "max |fused - pure|"],
        [[length, f"{t_fused * 1e3:.2f}", f"{t_pure * 1e3:.2f}", f"{t_pure / t_fused:.1f}x", f"{err:.2e}"]],
    )


def run_model_bench(cfg: ModelConfig, quick: bool, command: str) -> str:
    cpu = torch.device("cpu")
    channels = min(cfg.base_width * 2 ** (cfg.num_stages - 1), cfg.max_width)
    tokens = [512, 1024, 2048, 4096] if quick else [512, 1024, 2048, 4096, 8192, 16384]
    patch = (64, 32, 32) if quick else (128, 64, 64)
    repeats = 3
    parts = [
        f"### Bottleneck block: Mamba vs Transformer (CPU, {channels} channels, forward+backward, batch 1)\n\n"
        + bottleneck_scaling(cpu, tokens, channels, cfg, repeats),
    ]
    scan_table, speedups = scan_vs_recurrence(cpu, 1024 if quick else 4096, 2 * channels, cfg.mamba_d_state, repeats)
    verdicts = "; ".join(f"{label} {speedups[label, 'compiled']:.1f}x ({'met' if speedups[label, 'compiled'] >= 10 else 'NOT met'})"
                         for label in ("forward", "forward+backward"))
    parts.append(f"### Selective scan (CPU default backend) vs step-by-step recurrence\n\n{scan_table}\n\n"
                 f"Target >= 10x for the CPU default: {verdicts}.")
    parts.append(f"### Ablation variants, full model per {'x'.join(map(str, patch))} patch (CPU, batch 1)\n\n"
                 + variant_costs(cpu, cfg, patch, 2))
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        parts.append(f"### Bottleneck block on {torch.cuda.get_device_name(0)} (float32)\n\n"
                     + bottleneck_scaling(gpu, [512, 1024, 2048, 4096, 8192, 16384, 32768], channels, cfg, 5))
        parts.append(f"### Ablation variants on {torch.cuda.get_device_name(0)}, per 128x64x64 patch (float32)\n\n"
                     + variant_costs(gpu, cfg, (128, 64, 64), 5))
        if fused_mamba_inner() is not None:
            parts.append("### mamba_ssm fused kernels vs pure PyTorch (same weights)\n\n" + fused_vs_pure(gpu, 4096, channels, 10))
        else:
            parts.append("mamba_ssm is not importable here, so the fused-kernel comparison was skipped.")
    body = "\n\n".join(parts)
    write_section("model", "Model: Mamba vs attention, selective scan, ablation variants", command, body)
    return body
