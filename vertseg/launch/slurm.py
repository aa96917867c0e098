"""Slurm client calls for `vertseg submit/jobs/logs`: every call has a timeout (a client facing a dead controller
waits for minutes) and fails with a message that names the command.

Finished jobs leave squeue; without slurmdbd `sacct` is unavailable, so their state comes from the controller
(`scontrol`, kept for MinJobAge) or the job-completion file, and their log path from the submission record.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from vertseg.io import atomic_write_text
from vertseg.launch.script import COMMENT, log_path

CLIENT_TIMEOUT_S = 30
ACTIVE_STATES = frozenset(
    {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
     "SUSPENDED", "STAGE_OUT", "SIGNALING", "STOPPED"}
)


class SlurmError(RuntimeError):
    """A Slurm client call failed; the message names the command and Slurm's own words."""


@dataclass(frozen=True)
class JobRecord:
    """What `vertseg submit` remembers about a job (the controller forgets finished jobs)."""

    job_id: str
    name: str
    command: str
    log: str
    script: str
    submitted: str


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    name: str
    state: str
    elapsed: str = ""
    nodes: str = ""
    reason: str = ""
    log: str = ""


def run_client(args: list[str], timeout: float = CLIENT_TIMEOUT_S) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise SlurmError(f"{args[0]} not found: run this on a Slurm login node (or install slurm-client)") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(
            f"`{' '.join(args)}` gave no answer within {timeout:.0f} s: is slurmctld reachable "
            f"(SLURM_CONF={os.environ.get('SLURM_CONF', '<default>')})?"
        ) from None
    if done.returncode != 0:
        raise SlurmError(f"`{' '.join(args)}` failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def state_dir() -> Path:
    """Where submissions are recorded: $VERTSEG_STATE_DIR, else $XDG_STATE_HOME/vertseg, else ~/.local/state."""
    if os.environ.get("VERTSEG_STATE_DIR"):
        return Path(os.environ["VERTSEG_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "vertseg"


def registry_path() -> Path:
    return state_dir() / "slurm-jobs.jsonl"


def parse_job_id(sbatch_output: str) -> str:
    """`sbatch --parsable` prints `ID` or `ID;CLUSTER`."""
    first = sbatch_output.strip().split(";")[0]
    if not first.isdigit():
        raise SlurmError(f"sbatch printed no job id: {sbatch_output.strip()!r}")
    return first


def submit(script_text: str, script_path: Path, name: str, log_dir: Path, command: str) -> JobRecord:
    """Write the script, submit it and record the submission; returns the job's record."""
    atomic_write_text(script_path, script_text)
    log_dir.mkdir(parents=True, exist_ok=True)  # Slurm does not create the --output directory
    job_id = parse_job_id(run_client(["sbatch", "--parsable", str(script_path)]))
    record = JobRecord(job_id, name, command, str(log_path(log_dir, name, job_id)), str(script_path),
                       time.strftime("%Y-%m-%dT%H:%M:%S"))
    registry_path().parent.mkdir(parents=True, exist_ok=True)
    with open(registry_path(), "a", encoding="utf-8") as handle:  # one short O_APPEND write: never torn
        handle.write(json.dumps(asdict(record)) + "\n")
    return record


def read_registry() -> dict[str, JobRecord]:
    path = registry_path()
    if not path.exists():
        return {}
    records = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = JobRecord(**json.loads(line))
        except (json.JSONDecodeError, TypeError):
            continue  # a line from an older vertseg or a hand edit: skip it rather than hide every job
        records[record.job_id] = record
    return records


def parse_squeue(text: str) -> list[JobStatus]:
    """Rows of `squeue -o %i\\t%j\\t%T\\t%M\\t%D\\t%R\\t%k`, keeping jobs that `vertseg submit` marked."""
    jobs = []
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) == 7 and fields[6] == COMMENT:
            jobs.append(JobStatus(*fields[:6]))
    return jobs


def parse_scontrol_job(text: str) -> dict[str, str]:
    """`scontrol show job ID` as a dict. Path fields fill their own line and may contain blanks."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        stripped = line.strip()
        key = stripped.split("=", 1)[0]
        if key in {"StdOut", "StdErr", "StdIn", "WorkDir", "Command"}:
            fields[key] = stripped.split("=", 1)[1]
            continue
        for match in re.finditer(r"(\w[\w:/]*)=(\S*)", stripped):
            fields.setdefault(match.group(1), match.group(2))
    return fields


def parse_jobcomp(text: str, job_ids: set[str]) -> dict[str, str]:
    """Final states from a jobcomp/filetxt file (`JobId=.. UserId=.. Name=.. JobState=..`); last line wins."""
    states = {}
    for line in text.splitlines():
        job = re.search(r"\bJobId=(\d+)", line)
        state = re.search(r"\bJobState=(\S+)", line)
        if job and state and job.group(1) in job_ids:
            states[job.group(1)] = state.group(1)
    return states


def jobcomp_file() -> Path | None:
    """The job-completion file, when the cluster writes one (JobCompType=jobcomp/filetxt) and we may read it."""
    config = dict(
        (key.strip(), value.strip())
        for key, _, value in (line.partition("=") for line in run_client(["scontrol", "show", "config"]).splitlines())
    )
    location = config.get("JobCompLoc", "")
    if config.get("JobCompType") != "jobcomp/filetxt" or not os.access(location, os.R_OK):
        return None
    return Path(location)


def jobs() -> list[JobStatus]:
    """This user's vertseg jobs: live ones from squeue, finished ones from the controller or the jobcomp file."""
    live = parse_squeue(
        run_client(["squeue", "--me", "--states=all", "--noheader", "--format=%i\t%j\t%T\t%M\t%D\t%R\t%k"])
    )
    records = read_registry()
    seen = {job.job_id for job in live}
    rows = [JobStatus(**{**asdict(job), "log": records[job.job_id].log if job.job_id in records else ""}) for job in live]
    gone = [record for job_id, record in records.items() if job_id not in seen]
    final = {}
    if gone:
        path = jobcomp_file()
        final = parse_jobcomp(path.read_text(errors="replace"), {r.job_id for r in gone}) if path else {}
    rows += [JobStatus(r.job_id, r.name, final.get(r.job_id, "UNKNOWN"), log=r.log) for r in gone]
    return sorted(rows, key=lambda job: int(job.job_id))


def job_state(job_id: str) -> str | None:
    """The controller's state of a job, or None once it has forgotten the job."""
    try:
        fields = parse_scontrol_job(run_client(["scontrol", "show", "job", job_id]))
    except SlurmError as error:
        if "Invalid job id" in str(error):
            return None
        raise
    return fields.get("JobState")


def log_file(job_id: str) -> Path:
    """A job's log: from the submission record, else from the controller."""
    record = read_registry().get(job_id)
    if record is not None:
        return Path(record.log)
    try:
        fields = parse_scontrol_job(run_client(["scontrol", "show", "job", job_id]))
    except SlurmError as error:
        raise SlurmError(f"job {job_id} was not submitted by vertseg here and Slurm does not know it: {error}") from None
    return Path(fields["StdOut"])


def follow(path: Path, job_id: str, poll_s: float = 1.0) -> Iterator[str]:
    """Yield the log's text as it grows until the job has finished (a pending job has no log yet)."""
    offset = 0
    while True:
        state = job_state(job_id)
        if path.exists():
            with open(path, encoding="utf-8", errors="replace") as handle:
                handle.seek(offset)
                chunk = handle.read()
                offset = handle.tell()
            if chunk:
                yield chunk
        if state is None or state.split()[0] not in ACTIVE_STATES:
            return
        time.sleep(poll_s)
