"""A URL list never changes a URL: what reaches the server is exactly the URL as listed, also after redirects.

Kind of fault (issue 11, kind 8): an unquoted URL with commas in a CSV URL list
(CDN resize paths such as ``…/w_303,h_170,q_90/…``) was cut at the first comma
and the cut URL fetched; servers that sign URLs reject any re-encoding of their
percent-escapes. A line that cannot be read unambiguously is reported with its
file and line and skipped; every other URL is requested byte for byte as listed
(and every redirect target as the server sent it).

Inputs: URL lists (CSV with ``url,label``, CSV with ``url`` only, plain text)
pointing at a loopback server that answers a real JPEG only at the exact raw
request targets it expects (anything else is 404) and records every request line.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hostile_kit import Project, encode, photo

SIGNED = [  # raw request targets a signing server would accept only exactly so
    "/sig/a%2Fb%7E%41c.jpg?x=%2B+y&s=AbC%3d%3D",
    "/sig/lower%2fcase%3a.jpg?q=%e2%82%ac",
    "/sig/keep/~user/(1)!'*;,@$.jpg",
    "/sig/space%20and%25percent.jpg?a=1&a=2&b",
    "/sig/double%252Fescaped.jpg",
]
COMMA = [
    "/cdn/fill/w_303,h_170,al_c,q_90/photo-1.jpg",
    "/cdn/fill/w_400,h_300/photo-2.jpg",
    "/cdn/fill/w_500,h_200,c_fit/photo-3.jpg",
]
REDIRECTS = {  # request target -> Location it answers with (each Location must be requested verbatim)
    "/go/1": "/sig/after%2Fredirect%7e.jpg?t=%2b",
    "/go/2": "/sig/after,comma%3B.jpg",
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[str] = []
        names = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "clock", "immunohistochemistry")
        targets = SIGNED + COMMA + list(REDIRECTS.values()) + ["/plain/one.jpg", "/plain/two.jpg"]
        self.images = {t: encode(photo(names[i % len(names)], (120 + i, 90)), "JPEG") for i, t in enumerate(targets)}

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        target = self.path  # the raw request target, as the client sent it
        self.server.seen.append(target)
        if target in REDIRECTS:
            self.send_response(302)
            self.send_header("Location", REDIRECTS[target])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self.server.images.get(target)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def server():
    srv = _Server()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _project(tmp_path, files: dict[str, dict[str, str]]) -> Project:
    """``files``: class -> {file name: contents}; each class reads its URL list files."""
    proj = Project(tmp_path)
    lists = tmp_path / "lists"
    lists.mkdir()
    for label, named in files.items():
        paths = []
        for name, text in named.items():
            (lists / name).write_text(text)
            paths.append(f"lists/{name}")
        proj.classes[label] = {"urls": paths}
    proj.set("", allow_private_hosts=True)
    proj.set("dedup", near=False)
    proj.write_manifest()
    return proj


def test_signed_urls_and_redirects_are_sent_byte_for_byte(tmp_path, server) -> None:
    b = server.base
    listed = [b + t for t in SIGNED] + [b + "/go/1", b + "/go/2"]
    proj = _project(tmp_path, {"signed": {"signed.txt": "\n".join(listed) + "\n"},
                               "plain": {"plain.txt": f"{b}/plain/one.jpg\n{b}/plain/two.jpg\n"}})
    code, out, err = proj.cli("build")
    assert code == 0, out + err
    assert set(SIGNED) <= set(server.seen)
    for start, location in REDIRECTS.items():
        assert start in server.seen and location in server.seen, server.seen
    assert not [t for t in server.seen if t not in server.images and t not in REDIRECTS], server.seen
    rows = {r["origin"]: r for r in proj.rows("SELECT origin, status, reason FROM images")}
    assert set(rows) == set(listed) | {b + "/plain/one.jpg", b + "/plain/two.jpg"}  # origins exactly as listed
    assert {r["status"] for r in rows.values()} == {"ok"}, rows
    finals = {r["url"]: r["final_url"] for r in proj.rows("SELECT url, final_url FROM fetches")}
    assert finals[b + "/go/1"] == b + REDIRECTS["/go/1"]
    assert finals[b + "/go/2"] == b + REDIRECTS["/go/2"]


def test_csv_with_a_label_column_reads_comma_urls_whole_and_skips_ambiguous_lines(tmp_path, server) -> None:
    b = server.base
    text = (
        "url,label\n"
        f"{b}{COMMA[0]},waves\n"         # line 2: unquoted commas, then a label: the URL is all before the last comma
        f'"{b}{COMMA[1]}",waves\n'        # line 3: quoted
        f"{b}/plain/one.jpg,waves\n"      # line 4
        f"{b}{COMMA[2]}\n"                # line 5: unquoted commas, no label: the 'label' would be a URL piece
        f"{b}/cdn/fill/w_1,h_2.jpg\n"     # line 6: one comma, no label: 'h_2.jpg' is no class of the dataset
        f"{b}{COMMA[0]},waves,extra\n"    # line 7: a label then one more field: skipped, not guessed
    )
    proj = _project(tmp_path, {"waves": {"waves.csv": text}, "other": {"other.txt": f"{b}/plain/two.jpg\n"}})
    code, out, err = proj.cli("build")
    assert code == 0, out + err
    said = " ".join((out + err).split())
    for line in (5, 6, 7):
        assert f"waves.csv line {line}:" in said, line
    assert "waves.csv line 2:" not in said and "waves.csv line 3:" not in said
    cut = [t for t in server.seen if t not in server.images]
    assert cut == [], f"requests for URLs that were never listed: {cut}"
    origins = {r["origin"]: r["status"] for r in proj.rows("SELECT origin, status FROM images")}
    assert origins == {b + COMMA[0]: "ok", b + COMMA[1]: "ok", b + "/plain/one.jpg": "ok", b + "/plain/two.jpg": "ok"}


def test_a_one_column_csv_takes_each_whole_line(tmp_path, server) -> None:
    b = server.base
    text = "url\n" + "".join(f"{b}{t}\n" for t in COMMA) + f'"{b}/plain/one.jpg"\n'
    proj = _project(tmp_path, {"flowers": {"flowers.csv": text}, "other": {"other.txt": f"{b}/plain/two.jpg\n"}})
    code, out, err = proj.cli("build")
    assert code == 0, out + err
    assert set(COMMA) <= set(server.seen)
    assert [t for t in server.seen if t not in server.images] == []
    origins = {r["origin"]: r["status"] for r in proj.rows("SELECT origin, status FROM images WHERE label = 'flowers'")}
    assert origins == {**{b + t: "ok" for t in COMMA}, b + "/plain/one.jpg": "ok"}
