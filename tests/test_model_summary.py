"""Parameter/FLOP counts per ablation variant, and the `vertseg model summary` command."""

from __future__ import annotations

from typer.testing import CliRunner

from vertseg.cli.main import app
from vertseg.model import ModelConfig, build_model
from vertseg.model.summary import SCAN_FLOPS_PER_STATE, model_cost, summarize, variant_configs


def test_counts_match_a_real_model_and_an_analytic_conv():
    cfg = ModelConfig(base_width=4, bottleneck="none", identification_branch=False)
    cost = model_cost("x", cfg, (16, 16, 16))
    assert cost.parameters == sum(p.numel() for p in build_model(cfg).parameters())
    first_conv = 2 * 1 * 4 * 27 * 16**3  # 2 * C_in * C_out * k^3 * voxels
    assert cost.forward_flops > first_conv and cost.scan_flops == 0


def test_scan_flops_follow_the_bottleneck_tokens():
    cfg = ModelConfig(base_width=4)
    cost = model_cost("x", cfg, (32, 16, 16), batch=2)
    tokens, d_inner = 4 * 2 * 2, 2 * 32
    assert cost.scan_flops == SCAN_FLOPS_PER_STATE * 2 * tokens * d_inner * cfg.mamba_d_state


def test_variants_cover_the_ablations_and_costs_order_sensibly():
    costs = {c.name: c for c in summarize(ModelConfig(base_width=4), (32, 32, 32))}
    assert set(costs) == set(variant_configs(ModelConfig()))
    assert "CBAM id" not in costs and len(costs) == 8
    assert costs["seg-only baseline"].parameters < costs["configured"].parameters
    assert costs["Mamba@all encoder stages"].scan_flops > 10 * costs["configured"].scan_flops
    assert costs["no bottleneck block"].parameters < costs["configured"].parameters


def test_convolutional_flops_scale_with_voxels_and_large_patches_cost_no_memory():
    cfg = ModelConfig(bottleneck="none")  # counted on the meta device: a 512^3 patch allocates nothing
    small, large = model_cost("a", cfg, (256, 256, 256)), model_cost("b", cfg, (512, 512, 512))
    assert 7.9 < large.forward_flops / small.forward_flops < 8.1


def test_cli_model_summary():
    result = CliRunner().invoke(app, ["model", "summary", "--set", "model.base_width=4", "--patch", "32x32x32"])
    assert result.exit_code == 0, result.output
    assert "Mamba@all encoder stages" in result.output and "Transformer bottleneck" in result.output
    bad = CliRunner().invoke(app, ["model", "summary", "--patch", "30x32x32"])
    assert bad.exit_code != 0 and "divisible by 8" in bad.output
    wrong = CliRunner().invoke(app, ["model", "summary", "--set", "model.bottleneck=lstm"])
    assert wrong.exit_code == 2 and "model.bottleneck" in wrong.output
