"""cluster/*.yaml pass Ray's own cluster-launcher schema (what `ray up` checks) and keep the shared storage path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"


@pytest.mark.parametrize("name", ["onprem.yaml", "aws.yaml"])
def test_cluster_config_is_valid_for_ray_up(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((CLUSTER / name).read_text()))
    validate_config(config)
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("/shared/vertseg/venv/bin/ray" in command for command in starts)
    assert all("--num-gpus=" in command for command in starts if " start " in command)
    assert any("/shared/vertseg/runs" in command for command in config["setup_commands"])
