"""Folder sources on a real filesystem: named pipes, sockets and devices, symlinks (files, folders, broken, loops).

Real files in tmp_path, real builds through the CLI, real DuckDB catalogs (:mod:`hostile_kit`'s Project).
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from hostile_kit import Project, encode, photo

from dsbuild.dedup.settings import DedupSettings
from dsbuild.verify import REASONS, analyze_file
from dsbuild.verify.settings import VerifySettings

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX filesystem objects")


def _two_classes(tmp_path: Path) -> Project:
    proj = Project(tmp_path / "p")
    proj.add("a", "rocket.png", encode(photo("rocket"), "PNG"))
    proj.add("b", "coffee.jpg", encode(photo("coffee"), "JPEG"))
    return proj


def test_fifo_and_socket_in_a_folder_are_rejected_at_once_never_opened(tmp_path: Path) -> None:
    """A named pipe would block a reader until a writer comes (the whole time_limit, then ``timeout``); a socket
    cannot be opened at all. Both are rejected from their stat: ``not a file``, the detail naming the kind."""
    proj = _two_classes(tmp_path)
    folder = proj.root / "images" / "a"
    os.mkfifo(folder / "pipe.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "s.jpg"))
    proj.set("verify", time_limit=3)
    try:
        code, out, err = proj.build()
    finally:
        sock.close()
    assert code == 0, out + err
    rows = proj.by_name()
    assert (rows["pipe.jpg"]["status"], rows["pipe.jpg"]["reason"]) == ("rejected", "not a file")
    assert rows["pipe.jpg"]["detail"] == "a named pipe (FIFO), not a regular file"
    assert (rows["s.jpg"]["reason"], rows["s.jpg"]["detail"]) == ("not a file", "a socket, not a regular file")
    assert rows["rocket.png"]["status"] == "ok" and rows["coffee.jpg"]["status"] == "ok"


def _open_for_writing(path: Path) -> None:
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


@pytest.mark.parametrize(("make", "detail"), [
    (lambda p: os.mkfifo(p), "a named pipe (FIFO), not a regular file"),
    (lambda p: p.symlink_to("/dev/null"), "a character device, not a regular file"),
], ids=["fifo", "device"])
def test_analyze_file_refuses_what_is_not_a_regular_file(tmp_path: Path, make, detail: str) -> None:
    path = tmp_path / "x.jpg"
    make(path)
    # Outside a worker nothing times a read out: a writer comes after 2 s so that a reader that opened the pipe
    # fails this test instead of hanging it (with no reader there the writer's open fails, ENXIO).
    writer = threading.Timer(2.0, _open_for_writing, args=(path,))
    writer.start()
    try:
        rec = analyze_file(path, verify=VerifySettings(time_limit=3), dedup=DedupSettings())
    finally:
        writer.cancel()
        writer.join()
    assert (rec.ok, rec.reason, rec.detail) == (False, "not a file", detail)
    assert rec.reason in REASONS
