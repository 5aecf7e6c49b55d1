"""Atomic writes flush the file before the rename and the directory after it."""
import os

from segbench.runs import atomic


def test_the_file_then_its_directory_are_fsynced_around_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    target = tmp_path / "metrics.json"
    atomic.write_json(target, {"status": "done"})
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    assert events[0][1].startswith(str(tmp_path / ".metrics.json.")) and events[2][1] == str(tmp_path)
    assert target.read_text() == '{\n  "status": "done"\n}\n'
