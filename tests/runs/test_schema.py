"""The run-directory schema: every artifact named once, method records kept apart from them."""

from __future__ import annotations

import pytest

from weightshare.runs import schema
from weightshare.runs.rundir import RunDir


def test_every_artifact_has_its_own_path():
    paths = [a.path for a in schema.ARTIFACTS]
    assert len(paths) == len(set(paths))
    assert {a.stage for a in schema.ARTIFACTS} <= {"any", "pretrain", "compress", "plot", "sensitivity"}


def test_records_cannot_take_an_artifact_name_or_leave_the_run(tmp_path):
    run = RunDir.create(tmp_path / "run", {"command": "test"})
    run.write_record("mixture_epochs/epoch_0001.json", {"a": 1})
    assert (tmp_path / "run" / "mixture_epochs" / "epoch_0001.json").is_file()
    for bad in ("report.json", "../outside.json", "/tmp/abs.json"):
        with pytest.raises(ValueError, match="cannot be named"):
            run.write_record(bad, {})
    assert run.has(schema.CONFIG) and not run.has(schema.REPORT)
