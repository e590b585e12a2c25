"""Atomic writes: a reader sees the old file or the new one, and a failed write changes nothing."""

from __future__ import annotations

import pytest

from ovaal_backend.files import write_atomically


def test_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "state.json"
    write_atomically(path, lambda handle: handle.write(b"old"))
    write_atomically(path, lambda handle: handle.write(b"new"))
    assert path.read_bytes() == b"new"
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "state.json"
    write_atomically(path, lambda handle: handle.write(b"old"))

    def half_then_fail(handle):
        handle.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_stale_temp_files_are_removed_at_start(tmp_path):
    from ovaal_backend.files import remove_stale_temp_files

    (tmp_path / "1" / "images").mkdir(parents=True)
    (tmp_path / "1" / "model.pt").write_bytes(b"weights")
    (tmp_path / "1" / "model.ptabc123.tmp").write_bytes(b"half")
    (tmp_path / "1" / "images" / "x.pngq.tmp").write_bytes(b"half")
    assert remove_stale_temp_files(tmp_path) == 2
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["model.pt"]
    assert remove_stale_temp_files(tmp_path / "missing") == 0
