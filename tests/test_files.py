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
