"""Atomic writes: whole files or none, with the permissions of any new file."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from weightshare.core.errors import RunDirError
from weightshare.core.io import atomic_write_bytes, load_tensors, read_json, save_tensors, write_json


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_get_the_permissions_the_umask_allows(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "f.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.bin").stat().st_mode) == 0o666 & ~umask


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    write_json(path, {"v": 1})
    with pytest.raises(TypeError):
        write_json(path, {"v": object()})
    assert read_json(path) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_json_is_strict_and_tensors_round_trip(tmp_path):
    write_json(tmp_path / "n.json", {"nan": float("nan"), "t": torch.tensor([1.5])})
    assert read_json(tmp_path / "n.json") == {"nan": None, "t": [1.5]}
    save_tensors(tmp_path / "t.safetensors", {"w": torch.arange(3.0)})
    assert torch.equal(load_tensors(tmp_path / "t.safetensors")["w"], torch.arange(3.0))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(RunDirError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")
