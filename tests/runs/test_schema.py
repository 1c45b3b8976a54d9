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


def test_a_second_process_cannot_write_into_a_claimed_run(tmp_path):
    import subprocess
    import sys

    run = RunDir.create(tmp_path / "run", {"command": "test"})
    code = (
        "import sys; from weightshare.runs.rundir import RunDir; from weightshare.core.errors import RunDirError\n"
        f"try:\n    RunDir.open({str(run.path)!r}, write=True)\nexcept RunDirError as e:\n    print(e); sys.exit(3)\n"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert other.returncode == 3 and "another weightshare process" in other.stdout
    assert RunDir.open(run.path, write=True).path == run.path  # the same process may continue its own run
    run.release()
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
