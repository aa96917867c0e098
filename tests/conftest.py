"""Shared fixtures. One Ray instance serves the whole test session (a Ray start costs ~20 s on 2 cores).

`make test` runs two pytest-xdist workers (`--dist loadgroup`): every test that uses the session Ray instance runs
on one worker (one Ray per session, as before); the other tests of a module stay together (module fixtures such as
the real Slurm are built once). Most of the end-to-end tests wait on subprocesses and daemons, so the two cores are kept busy meanwhile.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

TEST_DATA = Path(__file__).parent / "data"

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")
for _name in ("COLUMNS", "LINES"):  # pytest-xdist workers set 80x24; the CLI would honour it and wrap its tables
    os.environ.pop(_name, None)
VERTSEG_HOME = tempfile.mkdtemp(prefix="vertseg-home-")
os.environ["VERTSEG_HOME"] = VERTSEG_HOME  # never the developer's weights registry


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(VERTSEG_HOME, ignore_errors=True)


@pytest.hookimpl(wrapper=True)  # a wrapper runs before every plain hook, pytest-xdist's (which reads the groups) too
def pytest_collection_modifyitems(config, items):
    for item in items:
        group = "ray" if "ray_cluster" in item.fixturenames else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))
    return (yield)


@pytest.fixture(scope="session")
def test_data() -> Path:
    return TEST_DATA


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A local Ray instance shared by every test that needs Ray; code under test joins it with address='auto'."""
    import ray

    tmp = Path("/tmp") / f"vsray{os.getpid()}"
    ray.init(num_cpus=4, include_dashboard=False, _temp_dir=str(tmp), log_to_driver=False)
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    yield ray
    os.environ.pop("RAY_ADDRESS", None)
    ray.shutdown()
