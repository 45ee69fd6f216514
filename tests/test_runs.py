"""Run folders: ownership by command and settings (``run.json``), the lock against a
second writer, stale temporary files, permissions from the umask, ``fsync`` before
the rename, and figures that fail without costing the numbers."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from theory import runs
from theory.runs import LOCK_FILE, RUN_FILE, RunFolder, RunFolderError, claim_run

SETTINGS = {"lr": 0.05, "sizes": (3, 10)}


def test_a_claim_records_the_command_and_its_settings(tmp_path):
    with claim_run(tmp_path / "run", "simulate study", SETTINGS) as folder:
        assert isinstance(folder, RunFolder) and folder.path == tmp_path / "run"
        folder.write_json("results.json", {"x": 1})
    record = json.loads((tmp_path / "run" / RUN_FILE).read_text())
    assert record == {"command": "simulate study", "settings": {"lr": 0.05, "sizes": [3, 10]}}
    with claim_run(tmp_path / "run", "simulate study", dict(SETTINGS)):  # the same command resumes / rewrites
        pass


def test_another_command_or_other_settings_are_refused(tmp_path):
    with claim_run(tmp_path, "deepnet train", SETTINGS) as folder:
        folder.write_json("results.json", {"x": 1})
    with pytest.raises(RunFolderError, match=r"holds a run of `deepnet train`, not of `deepnet spectrum`"), claim_run(tmp_path, "deepnet spectrum", SETTINGS):
        pytest.fail("entered")
    with pytest.raises(RunFolderError, match=r"other settings \(lr: 0\.05 there, 0\.1 here\)"), claim_run(tmp_path, "deepnet train", {**SETTINGS, "lr": 0.1}):
        pytest.fail("entered")
    assert json.loads((tmp_path / "results.json").read_text()) == {"x": 1}  # untouched
    assert json.loads((tmp_path / RUN_FILE).read_text())["command"] == "deepnet train"


def test_nested_settings_differences_are_named(tmp_path):
    with claim_run(tmp_path, "c", {"config": {"a": 1, "b": [1, 2]}}) as folder:
        folder.write_text("x.txt", "x")
    with pytest.raises(RunFolderError, match=r"config\.b: \[1, 2\] there, \[1, 3\] here"), claim_run(tmp_path, "c", {"config": {"a": 1, "b": [1, 3]}}):
        pass


def test_a_folder_holding_only_run_json_may_be_taken_over(tmp_path):
    with claim_run(tmp_path, "simulate study", SETTINGS):
        pass  # failed before writing anything
    with claim_run(tmp_path, "simulate theorem", {"other": True}):
        pass
    assert json.loads((tmp_path / RUN_FILE).read_text())["command"] == "simulate theorem"


def test_a_foreign_non_empty_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match=r"is not empty \(notes\.txt\) and holds no run\.json"), claim_run(tmp_path, "simulate study", SETTINGS):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing added to a foreign folder


def test_a_damaged_run_json_is_named(tmp_path):
    (tmp_path / "results.json").write_text("{}")
    (tmp_path / RUN_FILE).write_text("{not json")
    with pytest.raises(RunFolderError, match=r"run\.json is damaged .*delete the folder"), claim_run(tmp_path, "simulate study", SETTINGS):
        pass


def test_a_file_or_an_unusable_place_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match=r"exists and is not a folder"), claim_run(tmp_path / "file", "c", {}):
        pass
    with pytest.raises(RunFolderError, match=r"cannot create the run folder .*file/sub"), claim_run(tmp_path / "file" / "sub", "c", {}):
        pass


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(RunFolderError, match=r"cannot write to the run folder"), claim_run(tmp_path, "c", {}):
            pass
    finally:
        tmp_path.chmod(0o700)


def test_a_second_writer_is_refused_with_the_first_ones_pid(tmp_path):
    with claim_run(tmp_path, "c", {}), pytest.raises(RunFolderError, match=rf"in use by another run \(pid {os.getpid()}\)"), \
            claim_run(tmp_path, "c", {}):  # the second claim inside the first
        pass
    with claim_run(tmp_path, "c", {}):  # released at the end of the block
        pass


def test_the_lock_of_another_process_is_refused_and_released_when_it_dies(tmp_path):
    code = ("import sys, time; from theory.runs import claim_run\n"
            "with claim_run(sys.argv[1], 'c', {}):\n    print('held', flush=True); time.sleep(60)\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderError, match=rf"in use by another run \(pid {child.pid}\)"), claim_run(tmp_path, "c", {}):
            pass
    finally:
        child.kill()
        child.wait()
    with claim_run(tmp_path, "c", {}):  # the kernel drops a dead process's lock
        pass


def test_stale_temporary_files_are_removed_on_claim(tmp_path):
    (tmp_path / "attribution").mkdir()
    stale = [tmp_path / ".results.json.abc123.tmp", tmp_path / "attribution" / ".a.json.x.tmp"]
    for path in stale:
        path.write_text("half")
    (tmp_path / RUN_FILE).write_text(json.dumps({"command": "c", "settings": {}}))
    with claim_run(tmp_path, "c", {}):
        assert not any(p.exists() for p in stale)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_get_the_users_permissions(tmp_path, umask):
    old = os.umask(umask)
    try:
        folder = RunFolder(tmp_path)
        paths = [folder.write_json("a.json", {"x": 1}), folder.write_text("b.md", "b"), folder.save_torch("c.pt", {"x": 1})]
    finally:
        os.umask(old)
    for path in paths:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_results_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(runs.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(runs.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    folder = RunFolder(tmp_path)
    folder.write_json("results.json", {"x": 1})
    folder.save_torch("checkpoint.pt", {"x": 1})
    assert events == ["fsync", "replace", "fsync", "replace"]


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    folder = RunFolder(tmp_path)
    with pytest.raises(Exception, match="pickle"):  # fails inside the write, after the temporary file exists
        folder.save_torch("checkpoint.pt", {"f": lambda: 0})
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_failing_figure_is_reported_and_keeps_the_numbers(tmp_path, capsys):
    folder = RunFolder(tmp_path)
    folder.write_json("results.json", {"x": 1})

    def broken():
        raise ValueError("Data cannot be log-scaled")

    assert folder.try_figure("curves.png", broken) is None
    assert folder.figure_errors == {"curves.png": "ValueError: Data cannot be log-scaled"}
    assert "figure " in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_a_lock_file_is_the_only_trace_of_a_claim(tmp_path):
    with claim_run(tmp_path, "c", {}):
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE, RUN_FILE]
