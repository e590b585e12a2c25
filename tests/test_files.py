"""Atomic writes: a reader sees the old file or the new one, and a failed write changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from ovaal_backend import files
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


def temp_name(target: str, pid: int, owner: str | None = None) -> str:
    """The name ``write_atomically`` gives a temporary file of ``target`` written by process ``pid``."""
    return f"{target}.abc123.{owner or files._owner()}.{pid}.tmp"


def test_only_temp_files_whose_writer_is_gone_are_removed_at_start(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        (tmp_path / "1" / "images").mkdir(parents=True)
        (tmp_path / "1" / "model.pt").write_bytes(b"weights")
        kept = [tmp_path / "1" / temp_name("model.pt", live.pid),  # a live writer on this machine
                tmp_path / "1" / temp_name("model.pt", 4242, "other-host_1"),  # another machine, fresh
                tmp_path / "1" / "model.ptabc123.tmp"]  # an older name without its writer, fresh
        gone = [tmp_path / "1" / "images" / temp_name("x.png", dead.pid),  # its writer died
                tmp_path / "1" / temp_name("masks.npz", 4242, "other-host_1"),  # another machine, a day old
                tmp_path / "1" / "old.ptq.tmp"]
        for path in kept + gone:
            path.write_bytes(b"half")
        day_old = time.time() - files.STALE_TEMP_SECONDS - 60
        for path in gone[1:]:
            os.utime(path, (day_old, day_old))
        assert files.remove_stale_temp_files(tmp_path) == 3
        assert all(p.exists() for p in kept) and not any(p.exists() for p in gone)
        assert files.remove_stale_temp_files(tmp_path / "missing") == 0
    finally:
        live.kill()
        live.wait()


def test_a_temporary_file_names_its_writer(tmp_path):
    seen = []
    write_atomically(tmp_path / "state.json", lambda handle: seen.extend(p.name for p in tmp_path.iterdir()))
    (name,) = seen
    assert name.startswith("state.json.") and name.endswith(f".{files._owner()}.{os.getpid()}.tmp")
    assert files.remove_stale_temp_files(tmp_path) == 0


def test_model_dir_lock_refuses_a_second_holder(tmp_path):
    with files.lock_model_dir(tmp_path / "models"):
        with pytest.raises(files.ModelDirBusyError, match=f"MODEL_DIR {tmp_path / 'models'} is already served by "
                                                          f"pid {os.getpid()}"):
            files.lock_model_dir(tmp_path / "models")
    files.lock_model_dir(tmp_path / "models").close()  # free again once the holder closed it
