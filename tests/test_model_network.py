"""The dual-branch U-Net: shapes of every ablation variant, the encode/decode contract, and what each switch changes."""

from __future__ import annotations

import pytest
import torch

from vertseg.model import ModelConfig, SegIdOutput, build_model

SHAPE = (2, 1, 16, 16, 8)
VARIANTS = {
    "default": {},
    "transformer": {"bottleneck": "transformer"},
    "no_bottleneck": {"bottleneck": "none"},
    "mamba_all_stages": {"mamba_placement": "all_encoder_stages"},
    "bidirectional": {"mamba_bidirectional": True},
    "cbam_none": {"cbam_placement": "none"},
    "cbam_both": {"cbam_placement": "both"},
    "seg_only": {"identification_branch": False},
    "extended_protocol": {"num_classes": 26},
}


def _model(**overrides):
    torch.manual_seed(0)
    return build_model(ModelConfig(base_width=4, **overrides))


def _names(model) -> set[str]:
    return set(dict(model.named_parameters()))


@pytest.mark.parametrize("name", VARIANTS)
def test_output_shapes_of_every_variant(name):
    overrides = VARIANTS[name]
    model = _model(**overrides)
    out = model(torch.randn(SHAPE))
    assert isinstance(out, SegIdOutput)
    assert [tuple(s.shape) for s in out.seg] == [(2, 1, 16, 16, 8), (2, 1, 8, 8, 4), (2, 1, 4, 4, 2)]
    if overrides.get("identification_branch") is False:
        assert out.identification is None
    else:
        assert out.identification.shape == (2, overrides.get("num_classes", 24) + 1, 4, 4, 2)
    loss = sum(s.mean() for s in out.seg) + (0 if out.identification is None else out.identification.mean())
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_encode_decode_equals_forward():
    model = _model().eval()
    x = torch.randn(SHAPE)
    features = model.encode(x)
    assert [f.shape[-3:] for f in features] == [(16, 16, 8), (8, 8, 4), (4, 4, 2), (2, 2, 1)]
    split, whole = model.decode(features), model(x)
    for a, b in zip(split.seg + [split.identification], whole.seg + [whole.identification]):
        torch.testing.assert_close(a, b)


def test_model_has_no_buffers_so_ema_teachers_stay_identical_across_ranks():
    assert list(_model().buffers()) == []


def test_bidirectional_adds_exactly_a_reverse_mamba():
    uni, bi = _names(_model()), _names(_model(mamba_bidirectional=True))
    assert uni < bi
    added = bi - uni
    assert added and all(n.startswith("bottleneck.mamba_reverse.") for n in added)
    assert {n.replace("mamba_reverse", "mamba") for n in added} == {n for n in uni if n.startswith("bottleneck.mamba.")}


def test_all_encoder_stage_placement_adds_mamba_to_the_other_stages_only():
    base, everywhere = _names(_model()), _names(_model(mamba_placement="all_encoder_stages"))
    added = everywhere - base
    assert base < everywhere
    assert {n.split(".")[1] for n in added} == {"0", "1", "2"}
    assert all(n.split(".")[0] == "stage_mamba" and n.split(".")[2] in ("norm", "mamba") for n in added)


def test_bottleneck_switch_replaces_only_the_bottleneck():
    mamba, attention, none = (_names(_model(bottleneck=b)) for b in ("mamba", "transformer", "none"))
    rest = {n for n in mamba if not n.startswith("bottleneck.")}
    assert {n for n in attention if not n.startswith("bottleneck.")} == rest
    assert none == rest
    assert "bottleneck.qkv.weight" in attention and "bottleneck.mamba.A_log" in mamba


def test_cbam_and_branch_switches():
    default = _names(_model())
    no_cbam = _names(_model(cbam_placement="none"))
    both = _names(_model(cbam_placement="both"))
    seg_only = _names(_model(identification_branch=False))
    assert {n for n in default - no_cbam} and all(n.startswith("id_") for n in default - no_cbam)
    assert all(n.startswith("seg_up.") and ".attention." in n for n in both - default)
    assert default - both == set()
    assert all(n.startswith("id_") for n in default - seg_only) and seg_only < default


def test_bad_input_size_is_a_clear_error():
    with pytest.raises(ValueError, match=r"divisible by 8"):
        _model()(torch.randn(1, 1, 16, 16, 12))
    with pytest.raises(ValueError, match=r"\(B, 1, D, H, W\)"):
        _model()(torch.randn(1, 2, 16, 16, 16))


def test_mixed_precision_forward_is_finite():
    model = _model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(SHAPE))
    assert all(torch.isfinite(s.float()).all() for s in out.seg)
    assert torch.isfinite(out.identification.float()).all()


@pytest.mark.parametrize("stages,shape", [(3, (1, 1, 8, 8, 4)), (5, (1, 1, 32, 16, 16))])
def test_other_depths_keep_the_output_contract(stages, shape):
    out = _model(num_stages=stages)(torch.randn(shape))
    z, y, x = shape[2:]
    assert [tuple(s.shape[2:]) for s in out.seg] == [(z, y, x), (z // 2, y // 2, x // 2), (z // 4, y // 4, x // 4)]
    assert out.identification.shape == (1, 25, z // 4, y // 4, x // 4)
