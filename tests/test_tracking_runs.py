"""Runs that do not mix: a fresh `vertseg train` never re-attaches an MLflow run by name, a resume continues the
recorded run only when the config and the store manifest are unchanged, and any run name survives MLflow's filters.

Real MLflow on a SQLite file; single-process training (`--cpu-workers 0`) on a one-case phantom store."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from typer.testing import CliRunner

from training_phantoms import TINY, make_store
from vertseg.cli.main import app

NAME = "it's"  # a quote: MLflow's filter parser once choked on it
SETS = TINY + ["train.method=fsl", "train.loader_workers=0", "train.schedule.epochs=1",
               "train.schedule.iterations_per_epoch=1", "train.schedule.e_cons=0", "train.schedule.e_ramp=1",
               "train.optim.labeled_batch_size=1"]


def shows(output: str, *parts: str) -> bool:
    """Every part appears in the CLI output, whatever the console's line wrapping (whitespace is ignored)."""
    text = "".join(output.split())
    return all("".join(part.split()) in text for part in parts)


def run_id_of(result) -> str:
    """The MLflow run id `vertseg train` prints on its last line."""
    found = re.search(r"MLflowrun([0-9a-f]{32})", "".join(result.output.split()))
    assert found, result.output
    return found.group(1)


def train(store, out, uri, *extra, sets=()):
    args = ["train", "--store", str(store), "--cpu-workers", "0", "--out", str(out), "--mlflow-uri", uri, *extra]
    return CliRunner().invoke(app, args + [x for item in [*SETS, *sets] for x in ("--set", item)])


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """One finished run named `it's` (lr 0.01) in a SQLite tracking store."""
    import mlflow

    root = tmp_path_factory.mktemp("tracking")
    store = make_store(root / "s.zarr", {"training": 1, "validation": 1})
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.MlflowClient(uri).search_experiments()  # creates the tables (slow): kept as an empty store for copies
    shutil.copy(root / "mlflow.db", root / "empty.db")
    result = train(store, root / "runs", uri, "--name", NAME)
    assert result.exit_code == 0, result.output
    return {"root": root, "store": store, "uri": uri, "run_id": run_id_of(result), "client": mlflow.MlflowClient(uri)}


def test_quoted_run_name_trains_and_records_its_identity(first):
    run = first["client"].get_run(first["run_id"])
    identity = json.loads((first["root"] / "runs" / NAME / "identity.json").read_text())
    assert run.info.run_name == NAME and run.data.params["train.optim.lr"] == "0.01"
    assert run.data.params["vertseg.config_sha256"] == run.data.tags["vertseg.config_sha256"] == identity["config_sha256"]
    assert run.data.tags["vertseg.store_manifest_sha256"] == identity["store_manifest_sha256"]
    assert identity["config"]["train.optim.lr"] == "0.01"
    record = json.loads((first["root"] / "runs" / NAME / "mlflow_run.json").read_text())
    assert record == {"run_id": first["run_id"], "tracking_uri": first["uri"]}  # what a resume re-attaches to


def test_fresh_run_under_an_existing_name_gets_its_own_mlflow_run(first, tmp_path):
    result = train(first["store"], tmp_path / "runs", first["uri"], "--name", NAME, sets=["train.optim.lr=0.05"])
    assert result.exit_code == 0, result.output
    run_id = run_id_of(result)
    assert run_id != first["run_id"]
    assert first["client"].get_run(run_id).data.params["train.optim.lr"] == "0.05"
    assert first["client"].get_run(first["run_id"]).data.params["train.optim.lr"] == "0.01"


@pytest.mark.parametrize("flag", ["--resume", "--auto-resume"])
def test_resume_with_a_changed_config_is_refused_naming_the_keys(first, flag):
    result = train(first["store"], first["root"] / "runs", first["uri"], "--name", NAME, flag,
                   sets=["train.optim.lr=0.05", "train.seed=7"])
    assert result.exit_code == 2, result.output
    assert shows(result.output, "config changed", "train.optim.lr: 0.01 -> 0.05", "train.seed: 42 -> 7")
    assert not shows(result.output, "store manifest") and not shows(result.output, "train.optim.momentum")


def test_resume_on_a_changed_store_is_refused(first, tmp_path):
    store = shutil.copytree(first["store"], tmp_path / "moved.zarr")
    unchanged = train(store, first["root"] / "runs", first["uri"], "--name", NAME, "--resume")
    assert unchanged.exit_code == 0, unchanged.output  # a moved but identical store is the same data
    manifest = json.loads((store / "manifest.json").read_text())
    case = manifest["splits"].pop("validation")[0]
    manifest["splits"]["training"].append(case)
    manifest["cases"][case]["split"] = "training"
    (store / "manifest.json").write_text(json.dumps(manifest))
    result = train(store, first["root"] / "runs", first["uri"], "--name", NAME, "--resume")
    assert result.exit_code == 2 and shows(result.output, "store manifest changed"), result.output
    assert not shows(result.output, "config changed")


def test_resume_reattaches_the_recorded_run_and_refuses_another_tracking_store(first, tmp_path):
    resumed = train(first["store"], first["root"] / "runs", first["uri"], "--name", NAME, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert shows(resumed.output, f"MLflow run {first['run_id']}")
    assert first["client"].get_run(first["run_id"]).info.status == "FINISHED"
    elsewhere = f"sqlite:///{shutil.copy(first['root'] / 'empty.db', tmp_path / 'other.db')}"
    result = train(first["store"], first["root"] / "runs", elsewhere, "--name", NAME, "--resume")
    assert result.exit_code == 2, result.output
    assert shows(result.output, first["run_id"], f"--mlflow-uri {first['uri']}")


def test_run_name_must_be_one_folder(first, tmp_path):
    result = train(first["store"], tmp_path / "runs", first["uri"], "--name", "../escaped")
    assert result.exit_code == 2 and shows(result.output, "single folder name"), result.output
    assert not (tmp_path / "escaped").exists()


def test_resume_of_a_run_without_identity_is_refused(first, tmp_path):
    """Run folders written before identities existed cannot prove they match; they are not continued blindly."""
    run_dir = tmp_path / "runs" / "old"
    shutil.copytree(first["root"] / "runs" / NAME, run_dir)
    (run_dir / "identity.json").unlink()
    result = train(first["store"], tmp_path / "runs", "none", "--name", "old", "--resume")
    assert result.exit_code == 2 and shows(result.output, "identity.json is missing"), result.output


@pytest.mark.parametrize("name", ["it's", 'say "hi"', "both ' and \"", "back\\slash", "a_b%"])
def test_finished_trial_is_found_by_its_exact_name(first, name):
    """A sweep's trial lookup filters by run name: quotes, backslashes and LIKE wildcards must neither break the
    filter nor match another run."""
    from vertseg.tuning.tracking import TAG_PARENT, TAG_TRIAL, finished_child

    client = first["client"]
    experiment = client.get_experiment_by_name("vertseg").experiment_id
    parent = client.create_run(experiment, run_name="sweep").info.run_id
    ids = {}
    for run_name in (name, "".join("x" if c in "'\"\\%_" else c for c in name)):  # the second: a LIKE look-alike
        run = client.create_run(experiment, run_name=run_name, tags={TAG_PARENT: parent, TAG_TRIAL: "k"})
        client.set_terminated(run.info.run_id, "FINISHED")
        ids[run_name] = run.info.run_id
    found = finished_child(client, parent, name)
    assert found is not None and found.info.run_id == ids[name]
    assert finished_child(client, parent, name + "!") is None
