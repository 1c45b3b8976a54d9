"""Optuna studies: trials are run directories, failures are results, workers share one study in any storage."""

from __future__ import annotations

import json
import uuid

import pytest

optuna = pytest.importorskip("optuna")

from weightshare.core.errors import MismatchError, RunDirError, TrainingDiverged  # noqa: E402
from weightshare.runs.rundir import RunDir  # noqa: E402
from weightshare.search import study as study_module  # noqa: E402
from weightshare.search.config import TuneConfig  # noqa: E402
from weightshare.search.study import load_study, prepare_study, tune  # noqa: E402


def _trials(study_dir):
    return sorted(p.name for p in (study_dir / "trials").iterdir())


@pytest.mark.parametrize("storage", ["journal", "postgresql"])
def test_two_workers_share_one_study_and_every_trial_is_recorded_once(storage, pretrained, quick_dc, tmp_path, request):
    url = request.getfixturevalue("postgres_url") if storage == "postgresql" else None
    settings = TuneConfig(trials=4, workers=2, storage=url, study_name=f"test-{uuid.uuid4().hex[:8]}", startup_trials=2)
    result = tune(pretrained, quick_dc, tmp_path / "study", settings, progress=False)
    assert result["counts"] == {"complete": 4, "pruned": 0, "fail": 0}
    study = load_study(prepare_study(pretrained, quick_dc, tmp_path / "study", settings))
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert _trials(tmp_path / "study") == [f"trial_{n:04d}" for n in range(4)]
    for t in trials:  # each trial's figures are those of the file its run directory holds
        report = json.loads((tmp_path / "study" / t.user_attrs["run_dir"] / "report.json").read_text())
        assert t.values == [report["errors"]["decoded"]["val_error"], report["file"]["bytes"]]
        assert report["file"]["bytes"] == (tmp_path / "study" / t.user_attrs["run_dir"] / "model.wsz").stat().st_size
    params = {tuple(sorted(t.params.items())) for t in trials}
    assert len(params) == 4  # the workers drew different settings (seed + worker)


def test_running_again_continues_the_study_and_another_recipe_is_refused(pretrained, quick_dc, tmp_path):
    study_dir = tmp_path / "study"
    tune(pretrained, quick_dc, study_dir, TuneConfig(trials=2), progress=False)
    first = (study_dir / "trials" / "trial_0000" / "report.json").stat().st_mtime_ns
    result = tune(pretrained, quick_dc, study_dir, TuneConfig(trials=3), progress=False)
    assert result["counts"]["complete"] == 3 and _trials(study_dir) == ["trial_0000", "trial_0001", "trial_0002"]
    assert (study_dir / "trials" / "trial_0000" / "report.json").stat().st_mtime_ns == first  # not run again
    other = quick_dc.updated({"dc": {"kept": [0.5]}})
    with pytest.raises(MismatchError, match="records another study \\(its recipe differ"):
        tune(pretrained, other, study_dir, TuneConfig(trials=4), progress=False)


def test_a_study_recorded_before_a_setting_existed_continues_and_a_change_is_named(pretrained, quick_dc, tmp_path):
    study_dir = tmp_path / "study"
    spec = prepare_study(pretrained, quick_dc, study_dir, TuneConfig(trials=1))
    record = json.loads((study_dir / "study.json").read_text())
    del record["recipe"]["finish"]["dense_param_bits"]  # what a version without that setting recorded
    (study_dir / "study.json").write_text(json.dumps(record))
    assert prepare_study(pretrained, quick_dc, study_dir, TuneConfig(trials=1)).study_name == spec.study_name
    other = quick_dc.updated({"finish": {"dense_param_bits": 4}, "train": {"weight_decay": 1e-4}})
    with pytest.raises(MismatchError) as refused:
        prepare_study(pretrained, other, study_dir, TuneConfig(trials=1))
    assert f"weight_decay {quick_dc.train.weight_decay!r} -> 0.0001" in str(refused.value)
    assert "finish.dense_param_bits 0 -> 4" in str(refused.value)


def test_failed_trials_are_recorded_and_the_study_goes_on(pretrained, quick_dc, tmp_path, monkeypatch):
    real = study_module.compress

    def flaky(source, config, out, **kwargs):
        if out.name == "trial_0001":
            raise TrainingDiverged("the loss became nan in epoch 1")
        if out.name == "trial_0002":
            raise RuntimeError("a bug")
        return real(source, config, out, **kwargs)

    monkeypatch.setattr(study_module, "compress", flaky)
    result = tune(pretrained, quick_dc, tmp_path / "study", TuneConfig(trials=4), progress=False)
    assert result["counts"] == {"complete": 2, "pruned": 0, "fail": 2}
    study = load_study(prepare_study(pretrained, quick_dc, tmp_path / "study", TuneConfig(trials=4)))
    errors = {t.number: t.user_attrs.get("error") for t in study.get_trials()}
    assert errors == {0: None, 1: "TrainingDiverged: the loss became nan in epoch 1", 2: "RuntimeError: a bug", 3: None}
    assert {row["trial"] for row in result["pareto"]} <= {0, 3}


def test_a_trial_left_running_by_a_stopped_command_is_failed_and_replaced(pretrained, quick_dc, tmp_path):
    study_dir = tmp_path / "study"
    tune(pretrained, quick_dc, study_dir, TuneConfig(trials=1), progress=False)
    study = load_study(prepare_study(pretrained, quick_dc, study_dir, TuneConfig(trials=1)))
    study.ask()  # what a worker killed mid-trial leaves in the journal: trial 1, RUNNING for ever
    result = tune(pretrained, quick_dc, study_dir, TuneConfig(trials=3), progress=False)
    states = {t.number: (t.state.name, t.user_attrs.get("error")) for t in load_study(
        prepare_study(pretrained, quick_dc, study_dir, TuneConfig(trials=3))).get_trials()}  # fmt: skip
    assert states == {
        0: ("COMPLETE", None),
        1: ("FAIL", "interrupted: the command running it was stopped"),
        2: ("COMPLETE", None),
    }
    assert result["counts"] == {"complete": 2, "pruned": 0, "fail": 1}


def test_a_second_command_on_the_same_study_directory_is_refused(pretrained, quick_dc, tmp_path):
    import fcntl

    study_dir = tmp_path / "study"
    study_dir.mkdir()
    with open(study_dir / ".lock", "w") as other:  # another process's claim
        other.write("4242")
        other.flush()
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        refused = f"another weightshare process \\(pid 4242\\) is writing into {study_dir}"
        with pytest.raises(RunDirError, match=refused):
            tune(pretrained, quick_dc, study_dir, TuneConfig(trials=1), progress=False)
    assert sorted(p.name for p in study_dir.iterdir()) == [".lock"]  # nothing written


def _fake_compress(val_errors, nbytes, test_errors):
    """A compression run that writes one metrics row per epoch with the given validation errors."""

    def run(source, config, out, *, on_epoch=None, **kwargs):
        trial = int(out.name.removeprefix("trial_"))
        run_dir = RunDir.create(out, {"command": "compress"})
        rows = []
        for epoch, val in enumerate(val_errors[trial]):
            rows.append({"phase": "retrain", "epoch": epoch + 1, "val_error": val})
            run_dir.write_metrics(rows)
            if on_epoch is not None:
                on_epoch(epoch, None)
        decoded = {"val_error": val_errors[trial][-1], "test_error": test_errors[trial]}
        return {"errors": {"decoded": decoded}, "file": {"bytes": nbytes[trial], "cr_all": 68904 / nbytes[trial]},
                "paper_style": {"cr_all": 1.0}, "totals": {"nnz": 1, "weights": 2, "unique_values": 2},
                "warnings": []}  # fmt: skip

    return run


def test_a_byte_budget_makes_one_objective_and_the_pruner_stops_bad_trials(pretrained, quick_dc, tmp_path, monkeypatch):
    quick = quick_dc.updated({"train": {"epochs": 4}, "dc": {"prune_epochs": 4}})
    val = {n: [9.0, 8.0, 7.0, 6.0 - n * 0.1] for n in range(6)} | {6: [60.0, 60.0, 60.0, 60.0]}
    nbytes = {n: 1000 + 100 * n for n in range(7)} | {3: 5000}
    test = dict.fromkeys(range(7), 50.0) | {0: 1.0}  # trial 0 has the best test error: it must not matter
    monkeypatch.setattr(study_module, "compress", _fake_compress(val, nbytes, test))
    settings = TuneConfig(trials=7, max_bytes=2000, startup_trials=7)
    result = tune(pretrained, quick, tmp_path / "study", settings, progress=False)
    assert result["counts"] == {"complete": 6, "pruned": 1, "fail": 0}
    study = load_study(prepare_study(pretrained, quick, tmp_path / "study", settings))
    pruned = [t for t in study.get_trials() if t.state.name == "PRUNED"]
    assert [t.number for t in pruned] == [6] and pruned[0].user_attrs["pruned_at_epoch"] == 2
    # Within 2,000 bytes (trial 3's 5,000-byte file is out), the front by validation error, never test error:
    assert [row["trial"] for row in result["pareto"]] == [0, 1, 2, 4, 5]
    assert result["pareto"][-1]["val_error"] == pytest.approx(5.5)


def test_a_recipe_without_validation_split_searches_on_one(pretrained, quick_dc, tmp_path):
    spec = prepare_study(
        pretrained, quick_dc.updated({"data": {"val_size": 0}}), tmp_path, TuneConfig(search_val_size=123)
    )
    assert spec.config.data.val_size == 123
    assert json.loads((tmp_path / "study.json").read_text())["recipe"]["data"]["val_size"] == 123
