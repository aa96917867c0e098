"""Parsing of Slurm client output (samples captured from slurm 22.05) and `vertseg submit --dry-run`."""

from __future__ import annotations

import subprocess

import pytest
from typer.testing import CliRunner

from cli_text import normalised
from vertseg.cli.main import app
from vertseg.launch import slurm

SCONTROL_JOB = """JobId=7 JobName=vs-train
   UserId=root(0) GroupId=root(0) MCS_label=N/A
   JobState=RUNNING Reason=None Dependency=(null)
   Requeue=1 Restarts=1 BatchFlag=1 Reboot=0 ExitCode=0:0
   Command=/tmp/my jobs/vs-train.sbatch
   WorkDir=/work/my project
   Comment=vertseg 
   StdErr=/tmp/sl a b/vs-train-7.out
   StdIn=/dev/null
   StdOut=/tmp/sl a b/vs-train-7.out
   Power=
"""

SQUEUE = "7\tvs-train\tRUNNING\t1:02\t1\tvm\tvertseg\n8\tother\tPENDING\t0:00\t1\t(Priority)\t(null)\n"

JOBCOMP = (
    "JobId=5 UserId=root(0) GroupId=root(0) Name=vs-pre JobState=COMPLETED Partition=debug TimeLimit=UNLIMITED\n"
    "JobId=6 UserId=root(0) GroupId=root(0) Name=vs-train JobState=CANCELLED Partition=debug TimeLimit=1\n"
    "JobId=6 UserId=root(0) GroupId=root(0) Name=vs-train JobState=COMPLETED Partition=debug TimeLimit=1\n"
    "JobId=9 UserId=root(0) GroupId=root(0) Name=x JobState=FAILED Partition=debug TimeLimit=1\n"
)


def test_scontrol_job_keeps_paths_with_blanks():
    fields = slurm.parse_scontrol_job(SCONTROL_JOB)
    assert fields["StdOut"] == "/tmp/sl a b/vs-train-7.out"
    assert fields["WorkDir"] == "/work/my project"
    assert fields["JobState"] == "RUNNING" and fields["Restarts"] == "1" and fields["Comment"] == "vertseg"


def test_squeue_rows_keep_only_vertseg_jobs():
    assert slurm.parse_squeue(SQUEUE) == [slurm.JobStatus("7", "vs-train", "RUNNING", "1:02", "1", "vm")]


def test_jobcomp_gives_the_last_final_state_of_our_jobs():
    assert slurm.parse_jobcomp(JOBCOMP, {"5", "6"}) == {"5": "COMPLETED", "6": "COMPLETED"}


@pytest.mark.parametrize(("text", "job_id"), [("123\n", "123"), ("45;cluster\n", "45")])
def test_sbatch_parsable_output(text, job_id):
    assert slurm.parse_job_id(text) == job_id


def test_sbatch_without_a_job_id_is_an_error():
    with pytest.raises(slurm.SlurmError, match="no job id"):
        slurm.parse_job_id("sbatch: error: Batch job submission failed\n")


def test_client_timeouts_and_missing_clients_are_clear_errors():
    with pytest.raises(slurm.SlurmError, match="gave no answer within 1 s"):
        slurm.run_client(["sleep", "5"], timeout=1)
    with pytest.raises(slurm.SlurmError, match="not found"):
        slurm.run_client(["sbatch-that-does-not-exist"])


def test_submit_dry_run_prints_a_valid_script_for_the_train_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["submit", "--dry-run", "--nodes", "4", "--gpus-per-node", "2", "--job-name",
                                      "vs-run1", "--", "train", "--store", "my store.zarr", "--cpu-workers", "1"])
    assert result.exit_code == 0, result.output
    subprocess.run(["bash", "-n"], input=result.output, text=True, check=True)
    assert "#SBATCH --nodes=4" in result.output and "#SBATCH --gpus-per-node=2" in result.output
    assert "train --store 'my store.zarr' --cpu-workers 1 --address auto --name vs-run1)" in result.output
    assert not (tmp_path / "slurm-logs").exists()


def test_submit_refuses_commands_that_are_not_jobs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["submit", "--dry-run", "--", "evaluate", "x"])
    assert result.exit_code == 2 and "choose one of train, tune, preprocess, predict" in normalised(result.output)


def test_jobs_without_slurm_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    result = CliRunner().invoke(app, ["jobs"])
    assert result.exit_code == 1 and "squeue not found" in normalised(result.output)


def test_bench_reads_the_job_milestones_from_the_log():
    import datetime as dt

    from vertseg.bench.slurm import _log_times

    text = ("vertseg[5.0 10:00:01.250]: nodes vm; Ray head 1.2.3.4:20000\nnoise\n"
            "vertseg[5.0 10:00:09.000]: all 1 node(s) joined\nvertseg[5.0 10:00:09.100]: running: x\n"
            "vertseg[5.0 10:00:20.500]: command exited with status 0\nvertseg[5.0 10:00:21.000]: Ray stopped\n")
    marks = _log_times(text, dt.date(2026, 1, 2))
    assert marks["joined"] - marks["start"] == pytest.approx(7.75)
    assert marks["stopped"] - marks["exited"] == pytest.approx(0.5)
    with pytest.raises(RuntimeError, match="milestones"):
        _log_times(text.split("noise")[0], dt.date(2026, 1, 2))
