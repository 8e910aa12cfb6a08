"""Atomic writes: old file kept on failure, no temp files left, normal permissions, suffix kept for writers."""

import os
import stat

import pytest

from deblurgan.fsutil import atomic_path, atomic_write_bytes, atomic_write_text


def test_replaces_and_uses_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_write_text(tmp_path / "a" / "log.csv", "x,y\n1,2\n")
    finally:
        os.umask(old)
    assert p.read_text() == "x,y\n1,2\n"
    assert stat.S_IMODE(p.stat().st_mode) == 0o644  # not mkstemp's 0600
    atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"new"
    assert [q.name for q in p.parent.iterdir()] == ["log.csv"]


def test_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "model.onnx"
    p.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        assert tmp.suffix == ".onnx" and tmp.parent == tmp_path and tmp.name.startswith(".")
        tmp.write_bytes(b"half")
        raise RuntimeError("writer crashed")
    assert p.read_bytes() == b"old"
    assert [q.name for q in tmp_path.iterdir()] == ["model.onnx"]
