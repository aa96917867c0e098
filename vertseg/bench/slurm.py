"""`vertseg bench slurm`: what a Slurm job costs on top of running the same command directly.

The same `vertseg preprocess` of phantom scans runs twice: directly (it starts a local Ray itself) and through
`vertseg submit` (queue, Ray head from the job script, the command joining it, teardown). The job's log
timestamps split the overhead into queueing, Ray start-up and teardown. Needs a reachable Slurm whose nodes see the
working directory; slurm/local-slurm.sh gives a one-node one.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from vertseg.bench.report import markdown_table, write_section
from vertseg.launch import slurm

DATA = ["--set", "data.spacing_mm=4.0", "--set", "data.chunk_size=[32,32,32]"]
_STAMP = re.compile(r"^vertseg\[\d+\.\d+ (\d\d:\d\d:\d\d\.\d+)\]: (.*)$", re.M)


def _log_times(text: str, day: dt.date) -> dict[str, float]:
    """Epoch seconds of the job script's milestones, from its `vertseg[JOB.RESTART HH:MM:SS.mmm]: ...` lines."""
    marks = {"start": "nodes ", "joined": "all ", "exited": "command exited", "stopped": "Ray stopped"}
    found = {}
    for stamp, message in _STAMP.findall(text):
        for key, prefix in marks.items():
            if message.startswith(prefix) and key not in found:
                clock = dt.datetime.combine(day, dt.datetime.strptime(stamp, "%H:%M:%S.%f").time())
                found[key] = clock.timestamp()
    missing = set(marks) - set(found)
    if missing:
        raise RuntimeError(f"job log lacks the milestones {sorted(missing)}")
    return found


def _wait(job_id: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = slurm.job_state(job_id)
        if state not in slurm.ACTIVE_STATES:
            return str(state)
        time.sleep(0.5)
    raise RuntimeError(f"job {job_id} did not finish within {timeout_s:.0f} s")


def run_slurm_bench(cases: int = 2, cpus: int = 2, workdir: Path = Path("slurm-bench")) -> Path:
    slurm.run_client(["sinfo", "--noheader"])  # a clear error now rather than a job that never runs
    workdir = workdir.absolute()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    vertseg = [sys.executable, "-m", "vertseg"]
    run = lambda args: subprocess.run([*vertseg, *args], cwd=workdir, check=True, capture_output=True, text=True)  # noqa: E731
    run(["synth", "scans", "--cases", str(cases), "--seed", "0"])

    start = time.monotonic()
    run(["preprocess", "scans", "--out", "direct.zarr", "--workers", "1", *DATA])
    direct_s = time.monotonic() - start

    submitted = time.time()
    out = run(["submit", "--cpus-per-task", str(cpus), "--job-name", "vs-bench", "--log-dir", "logs", "--signal", "0",
               "--", "preprocess", "scans", "--out", "job.zarr", "--workers", "1", *DATA]).stdout
    job_id = out.split()[2]
    state = _wait(job_id, 900)
    done = time.time()
    if state != "COMPLETED":
        raise RuntimeError(f"benchmark job {job_id} ended {state}; see {slurm.log_file(job_id)}")
    marks = _log_times(slurm.log_file(job_id).read_text(), dt.date.today())

    parts = [
        ("direct `vertseg preprocess` (starts its own local Ray)", direct_s),
        ("submit to job start (sbatch, queue, scheduling)", marks["start"] - submitted),
        ("Ray head up and all nodes joined", marks["joined"] - marks["start"]),
        ("command in the job (joins the job's Ray)", marks["exited"] - marks["joined"]),
        ("teardown (Ray stopped)", marks["stopped"] - marks["exited"]),
        ("whole job, submit to COMPLETED seen", done - submitted),
    ]
    rows = [[name, f"{seconds:.1f}", f"{seconds / direct_s:.2f}"] for name, seconds in parts]
    body = (
        f"{cases} phantom scans preprocessed with 1 worker, directly and as a one-node job "
        f"(`--cpus-per-task {cpus}`). Ratios are to the direct run.\n\n"
        + markdown_table(["phase", "seconds", "x direct"], rows)
    )
    shutil.rmtree(workdir, ignore_errors=True)  # kept only when the bench fails, for its logs
    command = f"vertseg bench slurm --cases {cases} --cpus {cpus}"
    return write_section("slurm", "Slurm job overhead (vertseg submit)", command, body)
