"""``sensorloop job resume``: which savepoint or retained checkpoint a job resumes from."""

from __future__ import annotations

import os
from pathlib import Path

from control.stack import latest_restore_point, record_savepoint, recorded_savepoints
from settings import load_config


def config_in(tmp_path: Path):
    return load_config(None, env={}, flags={"stack.run_dir": str(tmp_path / "run"),
                                            "flink.state_dir": str(tmp_path / "flink")})


def state_folder(folder: Path, written_at: float, complete: bool = True) -> Path:
    folder.mkdir(parents=True)
    if complete:
        (folder / "_metadata").write_bytes(b"flink")
        os.utime(folder / "_metadata", (written_at, written_at))
    return folder


def test_a_job_killed_after_its_savepoint_resumes_from_the_newer_retained_checkpoint(tmp_path):
    cfg = config_in(tmp_path)
    savepoint = state_folder(tmp_path / "flink/savepoints/serving/savepoint-abc", 1_000.0)
    record_savepoint(cfg, "serving", savepoint.as_uri())
    # the resumed run checkpointed after the savepoint, then died (kill -9); its last complete one counts
    state_folder(tmp_path / "flink/checkpoints/serving/job1/chk-3", 900.0)
    newest = state_folder(tmp_path / "flink/checkpoints/serving/job2/chk-12", 2_000.0)
    state_folder(tmp_path / "flink/checkpoints/serving/job2/chk-13", 2_100.0, complete=False)  # still being written
    state_folder(tmp_path / "flink/checkpoints/learning/job3/chk-1", 3_000.0)  # another job's

    point = latest_restore_point(cfg, "serving")
    assert (point.kind, point.location) == ("checkpoint", newest.resolve().as_uri())
    assert recorded_savepoints(cfg, "serving")[-1].location == savepoint.as_uri()


def test_a_savepoint_taken_after_the_last_checkpoint_wins_and_a_deleted_one_is_skipped(tmp_path):
    cfg = config_in(tmp_path)
    state_folder(tmp_path / "flink/checkpoints/serving/job1/chk-7", 1_000.0)
    kept = state_folder(tmp_path / "flink/savepoints/serving/savepoint-1", 1_500.0)
    record_savepoint(cfg, "serving", kept.as_uri())
    record_savepoint(cfg, "serving", (tmp_path / "flink/savepoints/serving/savepoint-deleted").as_uri())

    point = latest_restore_point(cfg, "serving")
    assert point.kind == "savepoint" and point.location == kept.as_uri()
    assert latest_restore_point(cfg, "learning") is None


def test_a_remote_savepoint_is_trusted_without_a_local_look(tmp_path):
    cfg = config_in(tmp_path)
    record_savepoint(cfg, "learning", "s3://state/savepoints/learning/savepoint-9")
    point = latest_restore_point(cfg, "learning")
    assert (point.kind, point.location) == ("savepoint", "s3://state/savepoints/learning/savepoint-9")
