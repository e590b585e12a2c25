"""The backend's sub-commands: serve, export, resync, requeue (argument parsing, what they do, their errors)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ovaal_backend.cli import build_parser, main
from tests.helpers.fake_label_studio import add_scenes, answer_round, drain, started


def test_parser_knows_the_backend_commands():
    parser = build_parser()
    assert parser.parse_args(["serve"]).command == "serve"
    args = parser.parse_args(["export", "--project", "3", "--out", "x"])
    assert (args.command, args.project, args.out) == ("export", 3, "x")
    assert parser.parse_args(["resync", "--project", "3"]).project == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "--out", "x"])


@pytest.mark.parametrize("argv", [["export", "--project", "5", "--out", "OUT"], ["resync", "--project", "5"]])
def test_unknown_project_is_one_error_line(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:9")
    argv = [str(tmp_path / a) if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "project" in err and "5" in err


def test_bad_setting_is_one_error_line(monkeypatch, capsys):
    monkeypatch.setenv("LOG_LEVEL", "chatty")
    assert main(["resync", "--project", "1"]) == 2
    assert "log_level" in capsys.readouterr().err


def test_gunicorn_parent_does_not_import_torch():
    # The parent only supervises the worker; torch (and the app) load in the worker after the fork
    code = ("import sys, ovaal_backend.cli as c, ovaal_backend.backend.wsgi; c.build_parser().parse_args(['serve']); "
            "print(sorted({'torch', 'flask'} & set(sys.modules)))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert run.stdout.strip() == "[]"


def test_requeue_runs_a_failed_round_again_in_process(tmp_path, fake, monkeypatch, capsys):
    """Without a queue a round job that failed for good holds its project too (shown in metrics, not re-run);
    `requeue` releases it and the backend's worker runs the round again in its process."""
    truth = add_scenes(fake, 2)
    driver = started(tmp_path, fake)
    driver.ctx.model.path.write_bytes(b"not a checkpoint")  # the cause: the training job fails on it
    answer_round(fake, driver, truth, 0)
    drain(driver)
    held = driver.metrics()["failed_job"]
    assert (held["job"], held["round"], driver.phase) == ("g0-v1-r0", 0, "training")
    assert "UnpicklingError" in held["reason"] and not driver.needs_step()

    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.delenv("REDIS_URL", raising=False)
    driver.ctx.model.path.unlink()  # the cause fixed
    assert main(["requeue", "--project", "1"]) == 0
    assert "the backend runs it again in its own process" in capsys.readouterr().out
    drain(driver)
    assert driver.model_version == "ovaal-1" and driver.phase == "querying" and driver.metrics()["failed_job"] is None
    assert main(["requeue", "--project", "1"]) == 2
    assert "project 1 has no round job that failed for good (phase querying)" in capsys.readouterr().err
    assert main(["requeue", "--project", "7"]) == 2
    assert "holds no project 7" in capsys.readouterr().err
