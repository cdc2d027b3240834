"""The ``urls`` source: URL list files, the :class:`Link` every source yields, and the URL normalisation every engine shares.

A URL list is either

* a text file: one URL per line; blank lines and lines starting with ``#`` are skipped; or
* a CSV file (``.csv`` suffix, or a first line that is a ``url`` / ``url,label`` header)
  with a ``url`` column and an optional ``label`` column; or
* a TSV file (``.tsv`` suffix, or a first line that is a ``url<TAB>label`` header): the same, with tabs between
  the fields (a URL's commas need no quoting there). A tab inside a line of a text list is reported with
  how to give a tab-separated list.

A CSV (or TSV) has a ``url`` column and an optional ``label`` column. With ``url`` alone,
  each line is one whole URL (commas included; a line that is one quoted field
  is unquoted). With ``url,label`` an unquoted URL with commas is read up to
  the row's last comma (the label holds none), and the label must be a label
  (and, in a build, a class of the dataset); with other columns a row may not
  have more fields than the header. A row that cannot be read so (a URL with
  commas and no label, most likely) is reported with its line and skipped — a
  URL is never cut.

A URL in one matching pair of quotes (pasted from a sheet or JSON) is that URL (:func:`unquote_url`); other
quoting is reported with what to remove.

Bad lines (not http/https, unparsable, credentials, too long, not UTF-8) are
reported as problems naming the file and line; the other lines proceed. The same
URL (after normalisation) is kept once, at its first line.

Normalisation (:func:`normalize_url`) makes "the same URL" mean the same bytes
on the wire while never changing what the server receives: scheme and host
are lower-cased, an IDN host becomes punycode, the default port is dropped,
the fragment is dropped, an empty path becomes ``/``; the path and query keep
their bytes, except that characters which are not allowed in a URL (non-ASCII,
spaces, controls, ``"<>`{}``, a ``%`` not followed by two hex digits) are
percent-encoded as UTF-8 (IRI → URI, RFC 3987 §3.1). Existing ``%XX`` escapes
are kept as they are.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from dsbuild.errors import DsbuildError, closest
from dsbuild.formats import not_regular

MAX_URL_LENGTH = 4096
ENGINE_NAME = "urls"
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Characters kept as they are in path and query: RFC 3986 unreserved + reserved
# (without '#') plus the few that browsers send unescaped (WHATWG path set).
_KEEP = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/?[]@!$&'()*+,;=|\\^"
)
_HEX = frozenset("0123456789abcdefABCDEF")
_HOST_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")


@dataclass(frozen=True, kw_only=True)
class Link:
    """One discovered image link with its provenance.

    ``url`` is normalised (see :func:`normalize_url`);
    ``rank`` is 1-based within the query (URL lists: the line number);
    ``page_url`` is the results page the link came from (``None`` for URL
    lists); ``label`` is the class named by a URL list's ``label`` column.
    """

    url: str
    engine: str
    query: str
    rank: int
    page_url: str | None = None
    label: str | None = None


def _encode_component(text: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        escape = text[i + 1 : i + 3]
        if ch == "%" and len(escape) == 2 and all(c in _HEX for c in escape):  # keep an existing %XX as is
            out.append(text[i : i + 3])
            i += 3
            continue
        if ch in _KEEP:
            out.append(ch)
        else:
            try:
                data = ch.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("is not valid Unicode (a lone surrogate)") from None
            out.append("".join(f"%{b:02X}" for b in data))
        i += 1
    return "".join(out)


def _encode_host(host: str) -> str:
    if host.startswith("[") or ":" in host:  # IPv6 literal (urlsplit already validated the brackets)
        return "[" + host.strip("[]").lower() + "]"
    host = host.lower()
    if not host.isascii():
        try:
            import idna

            host = idna.encode(host, uts46=True).decode("ascii")
        except ImportError:  # pragma: no cover - idna ships with requests
            host = host.encode("idna").decode("ascii")
        except Exception as err:  # idna.IDNAError and friends
            raise ValueError(f"has an invalid international host name ({err})") from None
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    # Numeric forms such as 2130706433 or 0x7f.1 pass here: refusing them is the SSRF guard's job.
    if not all(_HOST_LABEL.match(label) for label in labels):
        raise ValueError(f"has an invalid host name {host!r}")
    return host


def normalize_url(url: str) -> str:
    """The canonical form of an http(s) URL (see module doc); ValueError says why it is not one.

    >>> normalize_url("HTTP://Example.COM:80/a b/café.jpg?q=é#top")
    'http://example.com/a%20b/caf%C3%A9.jpg?q=%C3%A9'
    """
    if not isinstance(url, str):
        raise ValueError("is not text")
    text = url.strip()
    if not text:
        raise ValueError("is empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError("contains control characters")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as err:
        raise ValueError(f"cannot be parsed ({err})") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"is not an http(s) URL (scheme {scheme!r})" if scheme else "is not an http(s) URL (no scheme)")
    if parts.username is not None or parts.password is not None:
        raise ValueError("contains credentials (user:password@) — not stored or sent")
    if not parts.hostname:
        raise ValueError("has no host")
    if port == 0:
        raise ValueError("has port 0")
    host = _encode_host(parts.hostname)
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    path = _encode_component(parts.path) or "/"
    query = _encode_component(parts.query)
    result = urlunsplit((scheme, netloc, path, query, ""))
    if len(result) > MAX_URL_LENGTH:
        if len(url.strip()) > MAX_URL_LENGTH:
            raise ValueError(f"is longer than {MAX_URL_LENGTH} characters")
        # Non-ASCII characters are sent as %XX escapes (one to four bytes, three characters each).
        raise ValueError(f"is {len(result)} characters once percent-encoded as it is sent, longer than "
                         f"{MAX_URL_LENGTH}")
    return result


def _show(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _single_field(text: str) -> str:
    """A line of a one-column CSV: the CSV value when the line is exactly one quoted field, else the line itself."""
    stripped = text.strip()
    if stripped.startswith('"') and stripped.endswith('"') and len(stripped) > 1:
        try:
            cells = next(csv.reader([stripped], strict=True))
        except csv.Error:
            return stripped
        if len(cells) == 1:
            return cells[0]
    return stripped


# Quotes a URL is pasted in from a spreadsheet, a JSON array or code: opening → closing (typographic ones too).
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "\u201e": "\u201c"}


def unquote_url(text: str) -> str:
    """A URL written in one matching pair of quotes (``"https://…"``, ``'https://…'``, ``“https://…”``): the URL
    inside, as wget users expect a pasted list to work; any other text as it is.

    A URL never starts with a quote (its scheme does) and never ends with a double one (a raw ``"`` is not allowed
    in a URL), so the quotes are not part of it. What is still quoted in another way — a quote left open, two
    quoted values, a JSON array's ``"…",`` — raises ValueError saying what to remove (it was read as a URL with
    no scheme).
    """
    s = text.strip()
    if not s:
        return text
    first, last = s[0], s[-1]
    if first in _QUOTES:
        close = _QUOTES[first]
        inner = s[1:-1] if len(s) > 1 and last == close else None
        if inner is not None and inner.strip() and close not in inner and first not in inner:
            return inner
        if inner is None and s.rstrip(",;").endswith(close) and len(s.rstrip(",;")) > 1:
            tail = s[len(s.rstrip(",;")):]
            raise ValueError(f"is a quoted URL followed by {tail!r} (a line copied from a JSON array or code?) — "
                             f"remove the quotes and the {tail!r}: one bare URL a line")
        if inner is None:
            raise ValueError(f"starts with a quote ({first}) that is not closed at the end of the line — remove the "
                             "quote: one bare URL a line")
        raise ValueError("holds more than one quoted value (or quotes inside quotes) — one bare URL a line, "
                         "without quotes")
    if last in ('"', "\u201d"):  # '…' may end a URL (it is allowed in one); a double quote cannot
        raise ValueError(f"ends with a quote ({last}) that no quote opens — remove it")
    return text


def _label_problem(label: str) -> str | None:
    from dsbuild.manifest import label_problem

    return label_problem(label)


def _is_header(cells: list[str]) -> bool:
    return bool(cells) and cells[0].strip().lower() == "url"


def _row(text: str, delimiter: str, **kw) -> list[str]:
    return next(csv.reader([text], delimiter=delimiter, **kw), [])




def _strip_inline_comment(text: str) -> str:
    """``text`` without a comment after whitespace (``URL  # note``, ``URL,label  # note``), in every kind of list:
    a URL holds no raw space before a ``#``, so the note is no part of it. A ``#`` inside a double-quoted CSV field
    stays (a quoted label may hold one)."""
    quoted = False
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif ch == "#" and not quoted and i > 0 and text[i - 1].isspace():
            return text[:i].rstrip()
    return text


def _looks_utf16(head: bytes) -> bool:
    """UTF-16 without a BOM: ASCII text in it has a NUL at every other byte, and none between."""
    even, odd = head[0::2], head[1::2]
    nul = lambda part: part.count(0) / max(1, len(part))  # noqa: E731
    return len(head) >= 8 and max(nul(even), nul(odd)) >= 0.9 and min(nul(even), nul(odd)) <= 0.1


def _header_cells(text: str, delimiter: str) -> list[str]:
    """The cells of a line that may be a header; none when it cannot be read as CSV (a field past csv's size
    limit: a line of data, not a header)."""
    try:
        return _row(text, delimiter)
    except csv.Error:
        return []


def read_url_list(path: Path) -> tuple[list[Link], list[str]]:
    """Read a URL list file; return (links in file order, problems).

    Each Link has ``engine="urls"``, ``query=str(path)``, ``rank`` = its line
    number, ``page_url=None`` and ``label`` from a CSV ``label`` column (None
    when absent or empty). Problems are lines like
    ``vr.txt line 7: 'ftp://x/a.jpg' is not an http(s) URL (scheme 'ftp') — skipped``.
    Raises DsbuildError only when the file cannot be read at all or a CSV has
    no ``url`` column.
    """
    path = Path(path)
    what = not_regular(path)
    if what is not None and not path.is_dir():  # a named pipe or a device: reading it may never end
        raise DsbuildError(f"URL list {path} is {what} — `urls` takes files of URLs")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DsbuildError(f"URL list {path} not found — check `urls` in the manifest") from None
    except IsADirectoryError:
        raise DsbuildError(f"URL list {path} is a folder — `urls` takes files; use `folders` for images") from None
    except OSError as err:
        raise DsbuildError(f"cannot read URL list {path}: {err.strerror or err}") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in data[:65536]:
        kind = "UTF-16 text" if data.startswith((b"\xff\xfe", b"\xfe\xff")) or _looks_utf16(data[:2000]) else \
            "binary (it contains NUL bytes)"
        raise DsbuildError(f"URL list {path} is {kind}, not UTF-8 — save it as UTF-8 text, one URL a line (or a CSV "
                           "with a url column)")

    name = path.name
    problems: list[str] = []
    lines: list[tuple[int, str]] = []  # (line number, text) of content lines
    # Any line end counts (LF, CRLF, or a bare CR as old Mac exports write): a URL cannot hold one.
    for number, raw in enumerate(re.split(rb"\r\n|\r|\n", data), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"{name} line {number}: not valid UTF-8 — skipped")
            continue
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            continue
        lines.append((number, text))

    suffix = path.suffix.lower()
    first = lines[0][1] if lines else ""
    if suffix == ".tsv" or (suffix != ".csv" and "\t" in first.strip() and _is_header(_header_cells(first, "\t"))):
        sep, kind = "\t", "TSV"
    else:
        sep, kind = ",", "CSV"
    is_csv = suffix in (".csv", ".tsv") or (bool(lines) and _is_header(_header_cells(first, sep)))
    entries: list[tuple[int, str, str | None]] = []  # (line, url text, label)
    if is_csv:
        if not lines:
            return [], problems
        header = [c.strip().lower() for c in _header_cells(first, sep)]
        if "url" not in header:
            local = [c for c in header if c in ("file", "fname", "filename", "name", "path", "image")]
            fix = (f"it lists local files ({local[0]} column): give it as labels_csv = \"…/{path.name}\" in the "
                   f"dataset's table instead of urls (file paths relative to the CSV's folder, one label column, "
                   f"optional split or is_valid)" if local else
                   f"the first row must be a header such as url{'<TAB>' if sep == chr(9) else ','}label")
            written = [c.strip() for c in _header_cells(first, sep)]
            near = next(((w, "url") for w in written if w and closest(w.lower(), ["url"])), None) if not local else None
            if near is not None:
                fix = f"rename column '{near[0]}' to url; " + fix
            raise DsbuildError(
                f"URL list {path} line {lines[0][0]}: {kind} header {lines[0][1].strip()!r} has no 'url' column — {fix}"
            )
        url_col = header.index("url")
        label_col = header.index("label") if "label" in header else None
        extra = [c for c in header if c not in ("url", "label")]
        if extra:
            miss = next((c for c in extra if label_col is None and closest(c, ["label"])), None)
            hint = f"; rename column '{miss}' to label if it holds the labels" if miss else ""
            problems.append(f"{name} line {lines[0][0]}: column(s) {', '.join(extra)} ignored (only url and label are "
                            f"read){hint}")
        for number, text in lines[1:]:
            text = _strip_inline_comment(text)
            if len(header) == 1:
                # One column: the whole line is the URL (URLs hold commas: CDN resize paths such as w_303,h_170),
                # unquoted from CSV only when the line is one quoted field.
                entries.append((number, _single_field(text), None))
                continue
            try:
                cells = _row(text, sep, strict=True)
            except csv.Error as err:
                problems.append(f"{name} line {number}: not a valid {kind} row ({err}) — skipped")
                continue
            if len(cells) > len(header):  # fewer is fine: trailing columns left out
                if sep == "," and header == ["url", "label"] and '"' not in text:
                    # An unquoted URL with commas, then its label: the label is the last field and holds no comma,
                    # so the URL is everything before the last comma, byte for byte.
                    head, _, tail = text.rpartition(",")
                    cells = [head, tail]
                else:
                    why = "a tab inside a URL?" if sep == "\t" else "a URL with an unquoted comma? quote it"
                    problems.append(f"{name} line {number}: {len(cells)} fields where the header has {len(header)} "
                                    f"({why}) — skipped")
                    continue
            if url_col >= len(cells) or not cells[url_col].strip():
                problems.append(f"{name} line {number}: no url — skipped")
                continue
            label = cells[label_col].strip() if label_col is not None and label_col < len(cells) else ""
            if label and _label_problem(label):
                problems.append(f"{name} line {number}: label {label!r} {_label_problem(label)} "
                                "(a URL with an unquoted comma? quote it) — skipped")
                continue
            entries.append((number, cells[url_col], label or None))
    else:
        # "URL  # note": a comment after whitespace, as on a line of its own (a URL holds no raw space before a '#';
        # it was fetched as '…%20', the note dropped as a fragment).
        entries = [(number, _strip_inline_comment(text), None) for number, text in lines]

    links: list[Link] = []
    first_line: dict[str, tuple[int, str | None]] = {}
    for number, text, label in entries:
        try:
            url = normalize_url(unquote_url(text))
        except ValueError as err:
            if not is_csv and "\t" in text.strip():  # url<TAB>label in a list read as text: say how it is read
                problems.append(f"{name} line {number}: {_show(text.strip())} contains a tab — skipped; a "
                                "tab-separated list needs a header line url<TAB>label (or the .tsv suffix and that "
                                "header)")
            else:
                problems.append(f"{name} line {number}: {_show(text.strip())} {err} — skipped")
            continue
        if url in first_line:
            line0, label0 = first_line[url]
            if label != label0:
                problems.append(
                    f"{name} line {number}: same URL as line {line0} with another label "
                    f"({label!r} vs {label0!r}) — kept line {line0}"
                )
            else:
                problems.append(f"{name} line {number}: duplicate of line {line0} — skipped")
            continue
        first_line[url] = (number, label)
        links.append(Link(url=url, engine=ENGINE_NAME, query=str(path), rank=number, page_url=None, label=label))
    return links, problems


def dedupe_links(links: Iterable[Link]) -> list[Link]:
    """Links with each URL once (first occurrence wins): "the same URL is fetched once per dataset".

    URLs from engines and URL lists are already normalised, so equal strings
    mean the same resource.
    """
    seen: set[str] = set()
    out: list[Link] = []
    for link in links:
        if link.url not in seen:
            seen.add(link.url)
            out.append(link)
    return out
