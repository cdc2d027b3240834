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


def test_symlinks_keep_their_own_path_and_what_is_skipped_is_said(tmp_path: Path) -> None:
    """A symlinked file is read through its link, under the link's own path (its origin, in its class folder); a
    symlinked folder is followed once; a broken link and a loop are skipped, and the summary says so."""
    proj = _two_classes(tmp_path)
    a, b = proj.root / "images" / "a", proj.root / "images" / "b"
    (a / "link_to_coffee.jpg").symlink_to(Path("..") / "b" / "coffee.jpg")  # another class's file
    (a / "gone.jpg").symlink_to("missing.jpg")
    (a / "loop").symlink_to(".")
    extra = tmp_path / "elsewhere"
    extra.mkdir()
    (extra / "chelsea.png").write_bytes(encode(photo("chelsea"), "PNG"))
    (a / "more").symlink_to(extra)
    (b / "astronaut.png").write_bytes(encode(photo("astronaut"), "PNG"))
    code, out, err = proj.build()
    assert code == 0, out + err
    rows = {r["origin"]: r for r in proj.rows("SELECT * FROM images")}
    root = proj.root.resolve() / "images"
    assert {o: r["label"] for o, r in rows.items()} == {
        str(root / "a" / "rocket.png"): "a", str(root / "a" / "link_to_coffee.jpg"): "a",
        str(root / "a" / "more" / "chelsea.png"): "a",
        str(root / "b" / "coffee.jpg"): "b", str(root / "b" / "astronaut.png"): "b"}
    # The link and its target are one picture under two labels: a label conflict to review, not one origin.
    assert rows[str(root / "a" / "link_to_coffee.jpg")]["sha256"] == rows[str(root / "b" / "coffee.jpg")]["sha256"]
    assert rows[str(root / "a" / "more" / "chelsea.png")]["status"] == "ok"
    said = " ".join((out + err).split())
    assert f"ds: 1 broken symlink skipped (e.g. {a / 'gone.jpg'} → missing.jpg)" in said, said
    assert (f"ds: 1 symlinked folder skipped: it leads to a folder already read (a loop or a second link) "
            f"(e.g. {a / 'loop'} → .)") in said, said
    # The next build finds the same sources: nothing new, nothing set aside.
    code, out, err = proj.build()
    assert code == 0 and "set aside" not in out + err, out + err
    assert len(proj.rows("SELECT * FROM images WHERE status <> 'rejected'")) == 5
