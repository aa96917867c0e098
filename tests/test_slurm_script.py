"""The rendered sbatch script: syntax, directives, Ray start lines for 1 and 4 nodes, GPU flags, quoting of hostile
names, and its runtime behaviour (teardown, resume on requeue, USR1 -> checkpoint + requeue) under bash.

One Slurm node exists here, so the multi-node control flow runs against recording stand-ins for `srun`,
`scontrol` and `ray`; tests/test_slurm_integration.py runs the same template under the real Slurm.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from vertseg.launch.script import Command, LaunchError, SlurmOptions, render

HOSTILE = ["a b", "it's", 'say "hi"', "$(touch PWNED)", "`touch PWNED`", "x; touch PWNED", "\\", "", "*", "\n"]

STUBS = {
    "srun": """#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$REC/srun"
while [[ $1 == -* ]]; do shift; done
exec "$@"
""",
    "scontrol": """#!/usr/bin/env bash
case "$1 $2" in
  "show hostnames") printf '%s\\n' $FAKE_NODES ;;
  "show config") echo "KillWait                = 5 sec" ;;
  requeue*) echo "$2" >> "$REC/requeue" ;;
esac
""",
    "ray": """#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$REC/ray"
[[ $FAKE_CMD == ray-dies ]] && exit 1
[[ $FAKE_CMD == ray-dies-once && $(grep -c -- --head "$REC/ray") == 1 ]] && exit 1
exec sleep 300
""",
    "python": """#!/usr/bin/env bash
if [[ $1 == - ]]; then
  cat > /dev/null; echo "$3" > "$REC/wait"
  [[ $FAKE_CMD == ray-dies ]] && exec sleep 30
  if [[ $FAKE_CMD == ray-dies-once ]]; then  # joins only once the second head has started
    until (( $(cat "$REC/ray" 2>/dev/null | grep -c -- --head) >= 2 )); do sleep 0.1; done
  fi
  exit 0
fi
printf '%s\\0' "$0" "$@" > "$REC/argv"
echo "$RAY_ADDRESS $RAY_AUTH_MODE ${#RAY_AUTH_TOKEN}" > "$REC/env"
if [[ $FAKE_CMD == run || $FAKE_CMD == stubborn ]]; then
  if [[ $FAKE_CMD == run ]]; then trap 'echo term > "$REC/term"; exit 143' TERM; else trap 'echo term > "$REC/term"' TERM; fi
  touch "$REC/started"
  for _ in $(seq 300); do sleep 0.1; done
fi
exit 0
""",
}


def options(tmp_path: Path, **changes) -> SlurmOptions:
    return SlurmOptions(job_name=changes.pop("job_name", "vs-test"), log_dir=tmp_path / "logs", **changes)


def render_to(tmp_path: Path, opts: SlurmOptions, command: Command) -> Path:
    path = tmp_path / "job.sbatch"
    path.write_text(render(opts, command, tmp_path))
    return path


def directives(text: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in text.splitlines() if line.startswith("#SBATCH ")]


@pytest.fixture
def stubs(tmp_path: Path) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, body in STUBS.items():
        (folder / name).write_text(body)
        (folder / name).chmod(0o755)
    (tmp_path / "rec").mkdir()
    return folder


def run_job(tmp_path: Path, stubs: Path, script: Path, nodes: list[str], restart: int = 0, mode: str = "exit",
            **popen) -> subprocess.Popen:
    env = {
        **os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "REC": str(tmp_path / "rec"), "FAKE_CMD": mode,
        "FAKE_NODES": " ".join(nodes), "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": ",".join(nodes),
        "SLURM_RESTART_COUNT": str(restart),
    }
    return subprocess.Popen(["bash", str(script)], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def wait_started(tmp_path: Path) -> None:
    for _ in range(300):
        if (tmp_path / "rec" / "started").exists():
            return
        time.sleep(0.1)
    raise AssertionError("the command never started")


def rec(tmp_path: Path, name: str) -> str:
    path = tmp_path / "rec" / name
    return path.read_text() if path.exists() else ""


@pytest.mark.parametrize("nodes", [1, 4])
def test_rendered_script_is_valid_bash_with_the_requested_directives(tmp_path, nodes):
    opts = options(tmp_path, nodes=nodes, cpus_per_task=2, mem="16G", time="01:00:00", partition="gpu",
                   account="proj-1", qos="normal", constraint="a100&ib", signal_seconds=120)
    path = render_to(tmp_path, opts, Command("train", ("--store", "s.zarr"), "/venv/bin/python"))
    subprocess.run(["bash", "-n", str(path)], check=True)
    found = directives(path.read_text())
    for expected in (f"--nodes={nodes}", "--ntasks-per-node=1", "--cpus-per-task=2", "--mem=16G", "--time=01:00:00",
                     "--partition=gpu", "--account=proj-1", "--qos=normal", "--constraint=a100&ib",
                     "--signal=B:USR1@120", "--requeue", "--job-name=vs-test", "--comment=vertseg",
                     f'--output="{tmp_path}/logs/%x-%j.out"', "--open-mode=append"):
        assert expected in found
    assert not any("gpu" in line for line in found if line.startswith(("--gres", "--gpus")))


@pytest.mark.parametrize("nodes", [["n1"], ["n1", "n2", "n3", "n4"]])
def test_ray_head_here_workers_by_srun_then_the_command_then_teardown(tmp_path, stubs, nodes):
    opts = options(tmp_path, nodes=len(nodes), cpus_per_task=3, gpus_per_node=2, node_wait_s=7)
    script = render_to(tmp_path, opts, Command("train", ("--store", "s.zarr"), str(stubs / "python")))
    job = run_job(tmp_path, stubs, script, nodes)
    out, _ = job.communicate(timeout=60)
    assert job.returncode == 0, out

    ray = rec(tmp_path, "ray").splitlines()
    head = [line for line in ray if "--head" in line]
    workers = [line for line in ray if "--head" not in line]
    port = 20000 + 4242 % 99 * 128
    assert len(head) == 1 and f"--port={port}" in head[0] and "--temp-dir=/tmp/ray_4242" in head[0]
    for line in ray:
        assert "--block" in line and "--num-cpus=3" in line and "--num-gpus=2" in line
        assert f"--min-worker-port={port + 10}" in line and f"--max-worker-port={port + 127}" in line
    srun = rec(tmp_path, "srun").splitlines()
    if len(nodes) == 1:
        assert srun == [] and workers == []
    else:
        assert len(srun) == 1 and "--nodes=3 --ntasks=3 --ntasks-per-node=1 --exclude=n1" in srun[0]
        assert len(workers) == 1 and f"--address={rec(tmp_path, 'env').split()[0]}" in workers[0]
    assert rec(tmp_path, "wait").split() == [str(len(nodes))]

    argv = rec(tmp_path, "argv").split("\0")[:-1]
    assert argv == [str(stubs / "python"), "-m", "vertseg", "train", "--store", "s.zarr", "--name", "vs-test"]
    address, mode, token_length = rec(tmp_path, "env").split()
    assert address.endswith(f":{port}") and mode == "token" and token_length == "64"
    assert "stopping Ray" in out and not Path("/tmp/ray_4242").exists()
    assert rec(tmp_path, "requeue") == ""


def test_a_ray_launcher_that_dies_fails_the_job_before_the_command_runs(tmp_path, stubs):
    script = render_to(tmp_path, options(tmp_path), Command("train", (), str(stubs / "python")))
    job = run_job(tmp_path, stubs, script, ["n1"], mode="ray-dies")
    out, _ = job.communicate(timeout=60)
    assert job.returncode == 1 and "the Ray cluster did not come up after 3 attempt(s)" in out
    assert rec(tmp_path, "argv") == ""
    heads = [line for line in rec(tmp_path, "ray").splitlines() if "--head" in line]
    assert len(heads) == 3 and len({line.split("--port=")[1].split()[0] for line in heads}) == 3


def test_a_ray_head_that_times_out_once_is_started_again_on_fresh_ports(tmp_path, stubs):
    script = render_to(tmp_path, options(tmp_path), Command("train", (), str(stubs / "python")))
    job = run_job(tmp_path, stubs, script, ["n1"], mode="ray-dies-once")
    out, _ = job.communicate(timeout=60)
    assert job.returncode == 0 and "attempt 2 of 3" in out, out
    heads = [line for line in rec(tmp_path, "ray").splitlines() if "--head" in line]
    second_port = 20000 + (4242 + 41) % 99 * 128
    assert len(heads) == 2 and f"--port={second_port}" in heads[1] and f"--port={second_port}" not in heads[0]
    assert f"--min-worker-port={second_port + 10}" in heads[1]
    assert rec(tmp_path, "env").split()[0].endswith(f":{second_port}")


def test_requeued_training_resumes_the_same_run(tmp_path, stubs):
    script = render_to(tmp_path, options(tmp_path), Command("train", ("--store", "s.zarr"), str(stubs / "python")))
    job = run_job(tmp_path, stubs, script, ["n1"], restart=1)
    out, _ = job.communicate(timeout=60)
    assert rec(tmp_path, "argv").split("\0")[:-1][-3:] == ["--name", "vs-test", "--auto-resume"], out


def test_warning_signal_stops_the_command_then_requeues(tmp_path, stubs):
    script = render_to(tmp_path, options(tmp_path), Command("train", ("--store", "s.zarr"), str(stubs / "python")))
    job = run_job(tmp_path, stubs, script, ["n1"], mode="run")
    wait_started(tmp_path)
    job.send_signal(signal.SIGUSR1)
    out, _ = job.communicate(timeout=60)
    assert rec(tmp_path, "term") == "term\n", out
    assert rec(tmp_path, "requeue") == "4242\n"
    assert out.index("stopping Ray") < out.index("requeueing job 4242")
    assert job.returncode == 143


def test_warning_signal_without_requeue_only_stops_the_command(tmp_path, stubs):
    opts = options(tmp_path, requeue=False)
    script = render_to(tmp_path, opts, Command("train", (), str(stubs / "python")))
    assert "--no-requeue" in directives(script.read_text())
    job = run_job(tmp_path, stubs, script, ["n1"], mode="run")
    wait_started(tmp_path)
    job.send_signal(signal.SIGUSR1)
    out, _ = job.communicate(timeout=60)
    assert rec(tmp_path, "term") == "term\n" and rec(tmp_path, "requeue") == "", out


def test_scancel_term_stops_the_command_without_requeue(tmp_path, stubs):
    script = render_to(tmp_path, options(tmp_path), Command("tune", ("--sweep", "s.yaml"), str(stubs / "python")))
    job = run_job(tmp_path, stubs, script, ["n1"], mode="run")
    wait_started(tmp_path)
    job.send_signal(signal.SIGTERM)
    out, _ = job.communicate(timeout=60)
    assert rec(tmp_path, "term") == "term\n" and rec(tmp_path, "requeue") == ""
    assert "stopping Ray" in out


def test_a_command_that_ignores_sigterm_is_killed_before_slurms_kill_wait(tmp_path, stubs):
    script = render_to(tmp_path, options(tmp_path), Command("train", (), str(stubs / "python")))
    job = run_job(tmp_path, stubs, script, ["n1"], mode="stubborn")
    wait_started(tmp_path)
    start = time.monotonic()
    job.send_signal(signal.SIGTERM)
    out, _ = job.communicate(timeout=60)
    assert "killed after 2 s" in out and "stopping Ray" in out
    assert time.monotonic() - start < 5  # KillWait = 5 s in the stub's config


def test_hostile_arguments_reach_the_command_unchanged(tmp_path, stubs):
    args = tuple(word for hostile in HOSTILE for word in ("--set", hostile))
    script = render_to(tmp_path, options(tmp_path), Command("preprocess", args, str(stubs / "python")))
    subprocess.run(["bash", "-n", str(script)], check=True)
    job = run_job(tmp_path, stubs, script, ["n1"])
    out, _ = job.communicate(timeout=60)
    assert job.returncode == 0, out
    argv = rec(tmp_path, "argv").split("\0")[:-1]
    assert argv == [str(stubs / "python"), "-m", "vertseg", "preprocess", *args]
    assert not list(tmp_path.rglob("PWNED"))


def test_hostile_log_dir_and_workdir_are_quoted(tmp_path, stubs):
    odd = tmp_path / "a b $(touch PWNED) 100%"
    odd.mkdir()
    opts = SlurmOptions(job_name="vs-odd", log_dir=odd / "logs")
    text = render(opts, Command("predict", ("x",), str(stubs / "python")), odd)
    assert f'--output="{tmp_path}/a b $(touch PWNED) 100%%/logs/%x-%j.out"' in directives(text)
    script = odd / "job.sbatch"
    script.write_text(text)
    job = run_job(tmp_path, stubs, script, ["n1"])
    out, _ = job.communicate(timeout=60)
    assert job.returncode == 0, out
    assert not list(tmp_path.rglob("PWNED"))


@pytest.mark.parametrize("bad", [
    {"job_name": "a b"}, {"job_name": "x;rm"}, {"job_name": "$(id)"}, {"job_name": ""}, {"partition": "gpu debug"},
    {"account": 'a"b'}, {"gres": "gpu:1", "gpus_per_node": 1}, {"nodes": 0}, {"cpus_per_task": 0},
    {"sbatch_args": ("--mail-user=a b",)}, {"sbatch_args": ("exclusive",)}, {"log_dir": Path("relative")},
    {"log_dir": Path('/tmp/a"b')},
])
def test_options_slurm_or_bash_would_misread_are_refused(tmp_path, bad):
    fields = {"job_name": "ok", "log_dir": tmp_path, **bad}
    with pytest.raises(LaunchError):
        render(SlurmOptions(**fields), Command("train"), tmp_path)


def test_unknown_subcommand_is_refused(tmp_path):
    with pytest.raises(LaunchError, match="choose one of train, tune, preprocess, predict"):
        render(options(tmp_path), Command("evaluate"), tmp_path)


@pytest.mark.parametrize(("gpu_options", "directive", "ray_gpus"), [
    ({"gpus_per_node": 4}, "--gpus-per-node=4", "4"),
    ({"gres": "gpu:a100:2"}, "--gres=gpu:a100:2", "2"),
    ({"gres": "gpu:3,nvme:1"}, "--gres=gpu:3,nvme:1", "3"),
    ({}, None, "0"),
])
def test_gpu_requests_set_the_directive_and_rays_gpu_count(tmp_path, gpu_options, directive, ray_gpus):
    text = render(options(tmp_path, **gpu_options), Command("train"), tmp_path)
    found = directives(text)
    if directive:
        assert directive in found
    assert not any(line.startswith(("--gres", "--gpus")) for line in found if line != directive)
    assert f"num_gpus={ray_gpus}\n" in text


def test_explicit_name_and_resume_are_kept(tmp_path):
    text = render(options(tmp_path), Command("train", ("--name", "mine", "--resume"), "/p/python"), tmp_path)
    assert "--name mine --resume)" in text and "--name vs-test" not in text
    assert "resume_on_requeue=0" in text
