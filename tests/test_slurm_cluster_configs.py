"""cluster/*.yaml pass Ray's own cluster-launcher schema (what `ray up` checks), keep the shared storage path, and
start a cluster that strangers cannot use: token authentication on every node, the dashboard on loopback only, and
vertseg installed from the wheel of the launching checkout rather than whatever an index serves under that name."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
CONFIGS = ["onprem.yaml", "aws.yaml"]


def _prepared(name: str) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((CLUSTER / name).read_text()))
    validate_config(config)
    return config


def _commands(config: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    return [command for key in keys for command in config.get(key, [])]


def _ray_starts(config: dict) -> list[str]:
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    return [command for command in starts if re.search(r"/ray start\b", command)]


@pytest.mark.parametrize("name", CONFIGS)
def test_cluster_config_is_valid_for_ray_up(name):
    config = _prepared(name)
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("/shared/vertseg/venv/bin/ray" in command for command in starts)
    assert all("--num-gpus=" in command for command in _ray_starts(config))
    assert any("/shared/vertseg/runs" in command for command in config["setup_commands"])


@pytest.mark.parametrize("name", CONFIGS)
def test_every_ray_start_requires_the_shared_token(name):
    config = _prepared(name)
    starts = _ray_starts(config)
    assert len(starts) == 2  # head and workers
    assert all(re.search(r"(^|\s)RAY_AUTH_MODE=token\s", command) for command in starts), starts
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"  # Ray's default token path
    assert "chmod 600 ~/.ray/auth_token" in config["setup_commands"]


@pytest.mark.parametrize("name", CONFIGS)
def test_dashboard_stays_on_loopback(name):
    config = _prepared(name)
    (head,) = [command for command in _ray_starts(config) if "--head" in command]
    assert "--dashboard-host=127.0.0.1" in head
    assert not any("0.0.0.0" in command or "::" in command for command in _commands(config))


@pytest.mark.parametrize("name", CONFIGS)
def test_vertseg_is_installed_from_the_launched_wheel_not_by_name(name):
    config = _prepared(name)
    assert config["file_mounts"].get("~/vertseg-wheel") == "dist/cluster"
    installs = [command for command in _commands(config) if "pip install" in command]
    assert installs, "the head installs vertseg"
    for command in installs:
        words = shlex.split(re.sub(r"[;&|()]", " ", command))
        by_name = [w for w in words if re.fullmatch(r"vertseg(\[[^\]]*\])?([<>=!~].*)?", w)]
        assert not by_name, f"{name}: installs {by_name} from a package index: {command}"
    assert any("~/vertseg-wheel/vertseg-*.whl" in command and '"$wheel[cuda]"' in command for command in installs)


@pytest.mark.parametrize("path", ["vertseg/resources/slurm/ray-cluster.sbatch", "slurm/ray-cluster.sbatch"])
def test_slurm_job_starts_ray_with_a_per_job_token_and_a_loopback_dashboard(path):
    script = (ROOT / path).read_text()
    assert re.search(r"^export RAY_AUTH_MODE=token\b", script, re.M)
    assert re.search(r"^RAY_AUTH_TOKEN=\$\(od -An -tx1 -N32 /dev/urandom", script, re.M)  # 256 random bits per job
    assert re.search(r"^export RAY_AUTH_TOKEN$", script, re.M)
    starts = re.findall(r'"\$ray_bin" start .*', script)
    assert len(starts) == 2 and "--dashboard-host=127.0.0.1" in starts[0] and "0.0.0.0" not in script


@pytest.mark.parametrize("name", CONFIGS)
def test_head_setup_installs_exactly_the_synced_wheel(name, tmp_path):
    """The head's setup under bash, with /shared/vertseg in tmp_path and a pip that records its arguments."""
    import subprocess

    (command,) = yaml.safe_load((CLUSTER / name).read_text())["head_setup_commands"]
    shared, home = tmp_path / "shared", tmp_path / "home"
    (home / "vertseg-wheel").mkdir(parents=True)
    (shared / "venv" / "bin").mkdir(parents=True)
    pip = shared / "venv" / "bin" / "pip"
    pip.write_text('#!/bin/sh\nprintf "%s|" "$@" >> "$(dirname "$0")/calls"; echo >> "$(dirname "$0")/calls"\n')
    pip.chmod(0o755)
    (shared / "venv" / "bin" / "python").write_text("")
    (shared / "venv" / "bin" / "python").chmod(0o755)

    def run() -> subprocess.CompletedProcess:
        script = command.replace("/shared/vertseg", str(shared))
        return subprocess.run(["bash", "-c", script], env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
                              capture_output=True, text=True, timeout=60)

    empty = run()
    assert empty.returncode != 0 and "exactly one vertseg wheel" in empty.stderr
    wheel = home / "vertseg-wheel" / "vertseg-0.1.0-py3-none-any.whl"
    wheel.write_text("")
    assert run().returncode == 0
    calls = [line.split("|")[:-1] for line in (pip.parent / "calls").read_text().splitlines()]
    assert [w for w in calls[0] if "vertseg" in w] == [f"{wheel}[cuda]"]
    assert calls[1][-1] == str(wheel) and "--force-reinstall" in calls[1] and "--no-deps" in calls[1]
    (home / "vertseg-wheel" / "vertseg-0.2.0-py3-none-any.whl").write_text("")
    assert run().returncode != 0  # two builds: which one the cluster runs would be a guess
