"""The ``urls`` source: URL list files (text / CSV) and URL normalisation."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from fake_engines import FakeEngineServer

from dsbuild.sources.urls import Link, dedupe_links, normalize_url, read_url_list
from dsbuild.sources.urls import MAX_URL_LENGTH
from dsbuild.errors import DsbuildError

# --------------------------------------------------------------------------- normalize_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://example.com/a.jpg", "http://example.com/a.jpg"),
        ("HTTPS://Example.COM/A.jpg", "https://example.com/A.jpg"),  # path case is kept
        ("http://example.com:80/a.jpg", "http://example.com/a.jpg"),
        ("https://example.com:443/a.jpg", "https://example.com/a.jpg"),
        ("http://example.com:8080/a.jpg", "http://example.com:8080/a.jpg"),
        ("http://example.com", "http://example.com/"),
        ("http://example.com/a.jpg#section", "http://example.com/a.jpg"),
        ("  http://example.com/a.jpg \t", "http://example.com/a.jpg"),
        ("http://example.com/a b.jpg", "http://example.com/a%20b.jpg"),
        ("http://example.com/café.jpg?q=ä", "http://example.com/caf%C3%A9.jpg?q=%C3%A4"),
        ("http://example.com/%e2%82%ac.jpg", "http://example.com/%e2%82%ac.jpg"),  # existing escapes kept byte for byte
        ("http://example.com/100%.jpg?p=50%", "http://example.com/100%25.jpg?p=50%25"),  # a lone % is escaped
        ("http://example.com/a.jpg?b=2&a=1", "http://example.com/a.jpg?b=2&a=1"),  # query order kept
        ("http://example.com/a.jpg?x=%2F", "http://example.com/a.jpg?x=%2F"),
        ('http://example.com/{a}"<b>`', "http://example.com/%7Ba%7D%22%3Cb%3E%60"),
        ("https://bücher.de/straße.jpg", "https://xn--bcher-kva.de/stra%C3%9Fe.jpg"),
        ("http://例え.jp/画像.png", "http://xn--r8jz45g.jp/%E7%94%BB%E5%83%8F.png"),
        ("http://[2001:DB8::1]:8080/a.jpg", "http://[2001:db8::1]:8080/a.jpg"),
        ("http://127.0.0.1:8765/img/1.jpg", "http://127.0.0.1:8765/img/1.jpg"),
    ],
)
def test_normalize_url(url: str, expected: str) -> None:
    assert normalize_url(url) == expected
    assert normalize_url(expected) == expected  # idempotent


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("", "is empty"),
        ("example.com/a.jpg", "is not an http(s) URL (no scheme)"),
        ("ftp://example.com/a.jpg", "is not an http(s) URL (scheme 'ftp')"),
        ("file:///etc/passwd", "is not an http(s) URL (scheme 'file')"),
        ("javascript:alert(1)", "is not an http(s) URL (scheme 'javascript')"),
        ("data:image/png;base64,iVBO", "is not an http(s) URL (scheme 'data')"),
        ("http://", "has no host"),
        ("http:///a.jpg", "has no host"),
        ("http://user:pw@example.com/a.jpg", "contains credentials (user:password@) — not stored or sent"),
        ("http://example.com:99999/a.jpg", "cannot be parsed (Port out of range 0-65535)"),
        ("http://example.com:0/a.jpg", "has port 0"),
        ("http://[::1/a.jpg", "cannot be parsed (Invalid IPv6 URL)"),
        ("http://exa mple.com/a.jpg", "has an invalid host name 'exa mple.com'"),
        ("http://a..b/a.jpg", "has an invalid host name 'a..b'"),
        ("http://example.com/a\nb.jpg", "contains control characters"),
        ("http://example.com/" + "a" * MAX_URL_LENGTH, f"is longer than {MAX_URL_LENGTH} characters"),
        ("http://example.com/" + "é" * 1000, "is 6019 characters once percent-encoded as it is sent, longer than 4096"),
    ],
)
def test_normalize_url_rejects(url: str, reason: str) -> None:
    with pytest.raises(ValueError) as err:
        normalize_url(url)
    assert str(err.value) == reason


def test_normalised_iri_reaches_the_server_as_utf8_escapes(fake_engine: FakeEngineServer) -> None:
    url = normalize_url(f"{fake_engine.url}/img/café 0001.jpg?größe=groß")
    response = requests.get(url, timeout=5)
    assert response.status_code == 200
    assert response.content[:3] == b"\xff\xd8\xff"  # a real JPEG
    assert fake_engine.requests[-1] == "/img/caf%C3%A9%200001.jpg?gr%C3%B6%C3%9Fe=gro%C3%9F"


# --------------------------------------------------------------------------- text lists


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def test_text_list_skips_blank_and_comment_lines_and_reports_bad_ones(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "vr_urls.txt",
        "# VR headsets, collected by hand\n"
        "https://example.com/vr/1.jpg\n"
        "\n"
        "   \n"
        "ftp://example.com/vr/2.jpg\n"
        "  https://Example.com:443/vr/3.jpg#zoom  \n"
        "not a url\n"
        "    # an indented comment\n"
        "https://example.com/vr/4 (copy).jpg\n"
        "https://example.com/vr/5.jpg   # the blue one\n",  # variant hunt 3: fetched as 5.jpg%20%20%20
    )
    links, problems = read_url_list(path)
    assert links == [
        Link(url="https://example.com/vr/1.jpg", engine="urls", query=str(path), rank=2),
        Link(url="https://example.com/vr/3.jpg", engine="urls", query=str(path), rank=6),
        Link(url="https://example.com/vr/4%20(copy).jpg", engine="urls", query=str(path), rank=9),
        Link(url="https://example.com/vr/5.jpg", engine="urls", query=str(path), rank=10),
    ]
    assert problems == [
        "vr_urls.txt line 5: 'ftp://example.com/vr/2.jpg' is not an http(s) URL (scheme 'ftp') — skipped",
        "vr_urls.txt line 7: 'not a url' is not an http(s) URL (no scheme) — skipped",
    ]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("file:///etc/passwd", "'file:///etc/passwd' is not an http(s) URL (scheme 'file') — skipped"),
        ("http://", "'http://' has no host — skipped"),
        ("https://admin:secret@intranet/a.jpg", "'https://admin:secret@intranet/a.jpg' contains credentials (user:password@) — not stored or sent — skipped"),
        ("http://example.com:70000/a.jpg", "'http://example.com:70000/a.jpg' cannot be parsed (Port out of range 0-65535) — skipped"),
        ("http://[fe80::1/a.jpg", "'http://[fe80::1/a.jpg' cannot be parsed (Invalid IPv6 URL) — skipped"),
        ("http://example.com/" + "x" * 5000, "'http://example.com/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...' is longer than 4096 characters — skipped"),
    ],
)  # fmt: skip
def test_bad_line_table(tmp_path: Path, line: str, problem: str) -> None:
    path = write(tmp_path, "list.txt", f"https://example.com/ok.jpg\n{line}\nhttps://example.com/ok2.jpg\n")
    links, problems = read_url_list(path)
    assert [link.rank for link in links] == [1, 3]
    assert problems == [f"list.txt line 2: {problem}"]


def test_invalid_utf8_line_is_reported_and_the_rest_proceed(tmp_path: Path) -> None:
    path = write(tmp_path, "list.txt", b"https://example.com/a.jpg\nhttps://example.com/\xff\xfe.jpg\r\nhttps://example.com/b.jpg\r\n")
    links, problems = read_url_list(path)
    assert [link.url for link in links] == ["https://example.com/a.jpg", "https://example.com/b.jpg"]
    assert problems == ["list.txt line 2: not valid UTF-8 — skipped"]


def test_bom_and_crlf_are_handled(tmp_path: Path) -> None:
    path = write(tmp_path, "list.txt", b"\xef\xbb\xbfhttps://example.com/a.jpg\r\nhttps://example.com/b.jpg\r\n")
    links, problems = read_url_list(path)
    assert [link.url for link in links] == ["https://example.com/a.jpg", "https://example.com/b.jpg"]
    assert problems == []


@pytest.mark.parametrize("name, text", [
    ("cr.txt", "https://a.example/1.jpg\rhttps://a.example/2.jpg\r"),
    ("cr.csv", "url,label\rhttps://a.example/1.jpg,cat\rhttps://a.example/2.jpg,cat\r"),
    ("mixed.txt", "https://a.example/1.jpg\r\nhttps://a.example/2.jpg\n"),
])
def test_a_bare_cr_ends_a_line(tmp_path: Path, name: str, text: str) -> None:
    """Variant hunt 3: a list with old-Mac line ends (a bare CR) ended the build with a csv traceback."""
    path = tmp_path / name
    path.write_bytes(text.encode())
    links, problems = read_url_list(path)
    assert ([link.url for link in links], problems) == (["https://a.example/1.jpg", "https://a.example/2.jpg"], [])


def test_a_stray_cr_inside_a_line_splits_it_and_names_the_part_that_is_no_url(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_bytes(b"https://a.example/1.jpg\rjunk\nhttps://a.example/2.jpg\n")
    links, problems = read_url_list(path)
    assert [link.url for link in links] == ["https://a.example/1.jpg", "https://a.example/2.jpg"]
    assert problems == ["list.txt line 2: 'junk' is not an http(s) URL (no scheme) — skipped"]


@pytest.mark.parametrize("data, kind", [
    ("\ufeffhttps://a.example/1.jpg\r\n".encode("utf-16-le"), "UTF-16 text"),
    ("https://a.example/1.jpg\n".encode("utf-16-be"), "UTF-16 text"),
    (b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(200), "binary (it contains NUL bytes)"),
])
def test_a_utf16_or_binary_list_is_refused_with_what_to_do(tmp_path: Path, data: bytes, kind: str) -> None:
    path = tmp_path / "list.txt"
    path.write_bytes(data)
    with pytest.raises(DsbuildError) as err:
        read_url_list(path)
    assert str(err.value) == (f"URL list {path} is {kind}, not UTF-8 — save it as UTF-8 text, one URL a line (or a "
                              "CSV with a url column)")


def test_a_line_longer_than_csvs_field_limit_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_text("https://a.example/" + "x" * 200_000 + ".jpg\nhttps://a.example/2.jpg\n")
    links, problems = read_url_list(path)
    assert [link.url for link in links] == ["https://a.example/2.jpg"]
    assert len(problems) == 1 and problems[0].startswith("list.txt line 1: ") and problems[0].endswith(" — skipped")


def test_duplicates_are_kept_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "list.txt",
        "https://example.com/a.jpg\n"
        "HTTPS://EXAMPLE.com:443/a.jpg#again\n"  # the same URL once normalised
        "https://example.com/b.jpg\n"
        "https://example.com/a.jpg\n",
    )
    links, problems = read_url_list(path)
    assert [(link.url, link.rank) for link in links] == [("https://example.com/a.jpg", 1), ("https://example.com/b.jpg", 3)]
    assert problems == ["list.txt line 2: duplicate of line 1 — skipped", "list.txt line 4: duplicate of line 1 — skipped"]


def test_empty_and_comment_only_files_give_nothing(tmp_path: Path) -> None:
    assert read_url_list(write(tmp_path, "empty.txt", "")) == ([], [])
    assert read_url_list(write(tmp_path, "comments.txt", "# nothing yet\n\n")) == ([], [])
    assert read_url_list(write(tmp_path, "empty.csv", "")) == ([], [])


# --------------------------------------------------------------------------- CSV lists


def test_csv_with_labels(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "extra.csv",
        "url,label\n"
        "https://example.com/1.jpg,glasses\n"
        '"https://example.com/2.jpg?a=1,2",sunglasses\n'  # a quoted URL with a comma
        "https://example.com/3.jpg,\n"  # empty label → None
        "https://example.com/4.jpg\n"  # missing label column → None
        "# a comment row\n"
        ",glasses\n"
        "mailto:someone@example.com,glasses\n"
        "https://example.com/1.jpg,sunglasses\n",
    )
    links, problems = read_url_list(path)
    assert [(link.url, link.label, link.rank) for link in links] == [
        ("https://example.com/1.jpg", "glasses", 2),
        ("https://example.com/2.jpg?a=1,2", "sunglasses", 3),
        ("https://example.com/3.jpg", None, 4),
        ("https://example.com/4.jpg", None, 5),
    ]
    assert problems == [
        "extra.csv line 7: no url — skipped",
        "extra.csv line 8: 'mailto:someone@example.com' is not an http(s) URL (scheme 'mailto') — skipped",
        "extra.csv line 9: same URL as line 2 with another label ('sunglasses' vs 'glasses') — kept line 2",
    ]


def test_csv_header_is_detected_in_a_txt_file_and_extra_columns_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "list.txt", "URL,Label,source\nhttps://example.com/1.jpg,VR,flickr\n")
    links, problems = read_url_list(path)
    assert [(link.url, link.label) for link in links] == [("https://example.com/1.jpg", "VR")]
    assert problems == ["list.txt line 1: column(s) source ignored (only url and label are read)"]


def test_csv_with_label_before_url(tmp_path: Path) -> None:
    path = write(tmp_path, "list.csv", "label,url\nVR,https://example.com/1.jpg\n")
    links, problems = read_url_list(path)
    assert [(link.url, link.label) for link in links] == [("https://example.com/1.jpg", "VR")]
    assert problems == []


def test_csv_without_url_column_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "list.csv", "link,label\nhttps://example.com/1.jpg,VR\n")
    with pytest.raises(DsbuildError) as err:
        read_url_list(path)
    assert str(err.value) == (
        f"URL list {path} line 1: CSV header 'link,label' has no 'url' column — "
        f"the first row must be a header such as url,label"
    )


def test_a_url_csv_header_near_miss_names_the_column_expected(tmp_path: Path) -> None:
    path = write(tmp_path, "list.csv", "URLs,label\nhttps://example.com/1.jpg,VR\n")
    with pytest.raises(DsbuildError) as err:
        read_url_list(path)
    assert str(err.value) == (f"URL list {path} line 1: CSV header 'URLs,label' has no 'url' column — rename column "
                              "'URLs' to url; the first row must be a header such as url,label")
    path = write(tmp_path, "list2.csv", "url,lable\nhttps://example.com/1.jpg,VR\n")
    links, problems = read_url_list(path)
    assert [(link.url, link.label) for link in links] == [("https://example.com/1.jpg", None)]
    assert problems == ["list2.csv line 1: column(s) lable ignored (only url and label are read); rename column "
                        "'lable' to label if it holds the labels"]


# --------------------------------------------------------------------------- tab-separated lists


def test_tsv_with_labels(tmp_path: Path) -> None:
    """Variant hunt finding 9: a TSV list (url<TAB>label) read as a text list, every line 'contains control
    characters'. A .tsv (or a first line that is a url<TAB>… header) is read like a CSV with tabs."""
    path = write(
        tmp_path,
        "extra.tsv",
        "url\tlabel\n"
        "https://example.com/1.jpg\tglasses\n"
        "https://example.com/w_30,h_20/2.jpg\tsunglasses\n"  # commas in a URL need no quotes in a TSV
        "https://example.com/3.jpg\t\n"  # empty label → None
        "https://example.com/4.jpg\n"  # missing label column → None
        "# a comment row\n"
        "\tglasses\n"
        "https://example.com/5.jpg\tglasses\tflickr\n",
    )
    links, problems = read_url_list(path)
    assert [(link.url, link.label, link.rank) for link in links] == [
        ("https://example.com/1.jpg", "glasses", 2),
        ("https://example.com/w_30,h_20/2.jpg", "sunglasses", 3),
        ("https://example.com/3.jpg", None, 4),
        ("https://example.com/4.jpg", None, 5),
    ]
    assert problems == [
        "extra.tsv line 7: no url — skipped",
        "extra.tsv line 8: 3 fields where the header has 2 (a tab inside a URL?) — skipped",
    ]


def test_tsv_header_is_detected_in_a_txt_file(tmp_path: Path) -> None:
    path = write(tmp_path, "list.txt", "URL\tLabel\tsource\nhttps://example.com/1.jpg\tVR\tflickr\n")
    links, problems = read_url_list(path)
    assert [(link.url, link.label) for link in links] == [("https://example.com/1.jpg", "VR")]
    assert problems == ["list.txt line 1: column(s) source ignored (only url and label are read)"]


def test_tsv_without_url_column_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "list.tsv", "link\tlabel\nhttps://example.com/1.jpg\tVR\n")
    with pytest.raises(DsbuildError) as err:
        read_url_list(path)
    assert str(err.value) == (
        f"URL list {path} line 1: TSV header 'link\\tlabel' has no 'url' column — "
        f"the first row must be a header such as url<TAB>label"
    )


def test_a_tab_in_a_text_list_line_says_how_to_give_a_tab_separated_list(tmp_path: Path) -> None:
    path = write(tmp_path, "list.txt", "https://example.com/1.jpg\tVR\n\thttps://example.com/2.jpg\t\n")
    links, problems = read_url_list(path)
    assert [link.url for link in links] == ["https://example.com/2.jpg"]  # tabs around a URL are blanks
    assert problems == [
        "list.txt line 1: 'https://example.com/1.jpg\\tVR' contains a tab — skipped; a tab-separated list needs a "
        "header line url<TAB>label (or the .tsv suffix and that header)",
    ]


# --------------------------------------------------------------------------- files that cannot be read


def test_missing_file_and_folder_are_errors(tmp_path: Path) -> None:
    with pytest.raises(DsbuildError) as err:
        read_url_list(tmp_path / "nope.txt")
    assert str(err.value) == f"URL list {tmp_path / 'nope.txt'} not found — check `urls` in the manifest"
    with pytest.raises(DsbuildError) as err:
        read_url_list(tmp_path)
    assert str(err.value) == f"URL list {tmp_path} is a folder — `urls` takes files; use `folders` for images"


def test_a_named_pipe_is_refused_without_waiting_on_it(tmp_path: Path) -> None:
    """Reading a named pipe waits for a writer: a URL list that is one is refused from its stat."""
    import os
    import subprocess
    import sys

    fifo = tmp_path / "urls.txt"
    os.mkfifo(fifo)
    # In a child process with a timeout: a regression would block in open(), not hang the test run.
    code = ("from dsbuild.sources.urls import read_url_list\nfrom dsbuild.errors import DsbuildError\n"
            f"try:\n    read_url_list({str(fifo)!r})\nexcept DsbuildError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == (f"URL list {fifo} is a named pipe (FIFO), not a regular file — `urls` takes "
                                  "files of URLs"), out.stderr


# --------------------------------------------------------------------------- one URL once per dataset


def test_dedupe_links_across_sources(tmp_path: Path) -> None:
    a, _ = read_url_list(write(tmp_path, "a.txt", "https://example.com/1.jpg\nhttps://example.com/2.jpg\n"))
    b, _ = read_url_list(write(tmp_path, "b.csv", "url,label\nhttps://EXAMPLE.com/2.jpg,x\nhttps://example.com/3.jpg,x\n"))
    engine_link = Link(url="https://example.com/3.jpg", engine="bing", query="q", rank=1, page_url="https://www.bing.com/")
    merged = dedupe_links([*a, *b, engine_link])
    assert [(link.url, link.query.rsplit("/", 1)[-1]) for link in merged] == [
        ("https://example.com/1.jpg", "a.txt"),
        ("https://example.com/2.jpg", "a.txt"),
        ("https://example.com/3.jpg", "b.csv"),
    ]


# --------------------------------------------------------------------------- quoted URLs (pasted from a sheet or JSON)


def test_a_url_in_one_pair_of_quotes_is_that_url_in_a_text_list(tmp_path: Path) -> None:
    """A quoted URL was 'is not an http(s) URL (no scheme)': one matching pair of quotes (straight or typographic)
    around the whole URL is taken off, as a pasted list is meant; any other quoting says what to remove."""
    path = write(tmp_path, "pasted.txt",
                 '"https://a.example/1.jpg"\n'
                 "'https://a.example/2.jpg'\n"
                 "\u201chttps://a.example/3.jpg\u201d\n"
                 '  "https://a.example/4.jpg"   # from the sheet\n'
                 '"https://a.example/5.jpg",\n'
                 '"https://a.example/6.jpg\n'
                 'https://a.example/7.jpg"\n'
                 '"https://a.example/8.jpg" "https://a.example/9.jpg"\n'
                 "https://a.example/1.jpg\n")
    links, problems = read_url_list(path)
    assert [(link.url, link.rank) for link in links] == [
        ("https://a.example/1.jpg", 1), ("https://a.example/2.jpg", 2), ("https://a.example/3.jpg", 3),
        ("https://a.example/4.jpg", 4)]
    assert problems == [
        "pasted.txt line 5: '\"https://a.example/5.jpg\",' is a quoted URL followed by ',' (a line copied from a JSON "
        "array or code?) — remove the quotes and the ',': one bare URL a line — skipped",
        "pasted.txt line 6: '\"https://a.example/6.jpg' starts with a quote (\") that is not closed at the end of the "
        "line — remove the quote: one bare URL a line — skipped",
        "pasted.txt line 7: 'https://a.example/7.jpg\"' ends with a quote (\") that no quote opens — remove it — skipped",
        "pasted.txt line 8: '\"https://a.example/8.jpg\" \"https://a.example/9.jpg\"' holds more than one quoted value "
        "(or quotes inside quotes) — one bare URL a line, without quotes — skipped",
        "pasted.txt line 9: duplicate of line 1 — skipped",
    ]


@pytest.mark.parametrize("name, text", [
    ("two.csv", "url,label\n'https://a.example/1.jpg',cat\n\"\"\"https://a.example/2.jpg\"\"\",cat\n"),
    ("one.csv", "url\n'https://a.example/1.jpg'\n\"\"\"https://a.example/2.jpg\"\"\"\n"),
    ("two.tsv", "url\tlabel\n'https://a.example/1.jpg'\tcat\n\"\"\"https://a.example/2.jpg\"\"\"\tcat\n"),
])
def test_a_quoted_url_in_a_csv_cell_is_that_url(tmp_path: Path, name: str, text: str) -> None:
    """CSV's own quoting was undone but a cell still in quotes (single quotes; a JSON string exported as a CSV
    field) was 'no scheme': the same one pair of quotes is taken off the cell."""
    links, problems = read_url_list(write(tmp_path, name, text))
    assert ([link.url for link in links], problems) == (["https://a.example/1.jpg", "https://a.example/2.jpg"], [])


def test_inline_comments_end_the_line_in_lists_with_a_header_too(tmp_path: Path) -> None:
    """Trial 12: a list with the header line `url` (read as a one-column CSV) kept the spaces before an inline
    `# note`, and the URL was fetched as `…?dup=1%20%20`. The rule is the text list's in every kind of list: whitespace
    then `#` starts a comment; a `#` with no space before it is the URL's fragment; a quoted field keeps its `#`."""
    one = write(tmp_path, "one.txt", "url\nhttp://h/a.png?dup=1  # same image again\nhttp://h/b.jpg#top\n")
    links, problems = read_url_list(one)
    assert [link.url for link in links] == ["http://h/a.png?dup=1", "http://h/b.jpg"] and problems == []
    two = write(tmp_path, "two.csv", 'url,label\nhttp://h/c.jpg,shark  # the big one\nhttp://h/d.jpg\t# tabbed,x\n'
                                     '"http://h/e.jpg","no. #5"\n')
    links, problems = read_url_list(two)
    assert [(link.url, link.label) for link in links] == [("http://h/c.jpg", "shark"), ("http://h/d.jpg", None),
                                                         ("http://h/e.jpg", "no. #5")]
    assert problems == []
    tsv = write(tmp_path, "three.tsv", "url\tlabel\nhttp://h/f.jpg\twhale # note\n")
    assert [(link.url, link.label) for link in read_url_list(tsv)[0]] == [("http://h/f.jpg", "whale")]
