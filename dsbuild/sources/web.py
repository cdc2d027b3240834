"""Web sources of a dataset: discover links, download, verify, store, catalogue.

1. **Discover**: every class query goes to the dataset's engine
   (:mod:`dsbuild.sources.engines`); every ``urls`` file is read. Links and how each
   search ended are stored (``links``, ``searches``) before anything is
   downloaded, so an interrupted build resumes from the same links and a query
   already searched is not searched again (one that found no results is, with
   ``--retry-failed``).
2. **Plan**: a URL is fetched once per dataset, however many queries or labels
   return it; URLs that already succeeded (in any dataset) are not downloaded
   again but verified again from the store under this dataset's verify settings
   (the same bytes give the same outcome whichever build fetched them first) and held to this dataset's download
   policy as it is today (:func:`reuse_refusal`: hosts it allows, ``max_bytes``, ``respect_noai``, ``max_redirects``;
   also for accepted images when that policy changed since their download);
   failed ones (a timeout, a reset, a 404, a 5xx...) are fetched again only with
   ``--retry-failed``: the user asked for it. An outcome that a
   setting decided is evaluated again when that setting changed
   (:data:`RETRY_WHEN_CHANGED`: a URL refused as a private address after
   ``allow_private_hosts`` is set, one too large after ``max_bytes`` grew, ...),
   and accepted images are verified again from the store when the verify
   settings changed. When dsbuild's own checks changed (the verifier revision:
   :attr:`~dsbuild.sources.SourceRun.checks_changed`), every image with a stored copy
   is verified again from it, rejected ones too, and nothing is downloaded again: a
   download rejected before has no stored copy and keeps its outcome (counted).
3. **Fetch → verify → store** (the local backend): :func:`dsbuild.fetch.fetch_all` keeps each body
   of up to ``IN_MEMORY_BODY`` bytes in memory (larger ones stream to temp
   files); each complete body is verified and hashed by the executor
   (:mod:`dsbuild.executor`, worker processes) while downloads go on, and the
   worker writes an accepted body into the content-addressed store itself
   (temp file + rename: one write per image, no read back); a spilled file is
   renamed into the store. Downloads pause while more than ``MEMORY_BACKLOG``
   bytes wait for verification. Every URL tried becomes a ``fetches`` row and
   an ``items`` row, reported to the build's sink.

   With a remote backend (``[executor] backend = "ray"``) every step of 3 runs on
   the cluster's workers instead: each task downloads a batch of URLs
   (:class:`~dsbuild.executor.FetchJob`), verifies and stores the bodies there and
   returns the records; this process only writes the rows.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import unicodedata
from pathlib import Path

from dsbuild.catalog import Catalog, utcnow
from dsbuild.errors import DsbuildError, EngineError
from dsbuild.executor import Batch, Executor, FetchJob, InlineExecutor, LocalPoolExecutor, VerifyJob, make_executor
from dsbuild.fetch import IN_FLIGHT_MEMORY, IN_MEMORY_BODY, in_memory_limit  # noqa: F401 - the downloader's memory limits
from dsbuild.manifest import Dataset
from dsbuild.rows import blob_row, fetch_row, image_id_for, item_row
from dsbuild.sources import SourceRun, source_removed
from dsbuild.store import move_into_store
from dsbuild.verify.analyze import ImageRecord


# --------------------------------------------------------------------------- discovery


def engine_options(ds: Dataset, cls):
    """The :class:`dsbuild.sources.engines.EngineOptions` for a class's queries."""
    from dsbuild.sources.engines import EngineOptions

    return EngineOptions(limit=ds.per_query, adult_filter=ds.adult_filter, filters=dict(ds.filters),
                         endpoint=cls.endpoint or ds.endpoint, allow_private_hosts=ds.allow_private_hosts)


def check_web_settings(ds: Dataset) -> list[str]:
    """Problems with the dataset's engine options, found without touching the network.

    (The downloader's settings, ``[fetch]``, were checked when the manifest loaded.)
    """
    problems: list[str] = []
    if any(c.queries for c in ds.classes):
        from dsbuild.sources.engines import get_engine

        try:
            engine = get_engine(ds.engine)
            for cls in ds.classes:
                if cls.queries:
                    engine.validate(engine_options(ds, cls))
        except DsbuildError as exc:
            return [f"datasets.{ds.name}: {exc}"]
        for cls in ds.classes:
            for query in cls.queries:
                try:
                    engine.check_query(query, engine_options(ds, cls))
                except DsbuildError as exc:  # one query's fault (a greedy site that is no URL): named before the build
                    problems.append(f"datasets.{ds.name}.classes.{cls.name}: {exc}")
    return problems


def engine_failure(engine: str, query: str, exc: BaseException, kept: int):
    """The ``error`` outcome of a query whose engine library raised: one line, the links found before it kept."""
    from dsbuild.sources.engines import Outcome

    text = " ".join(str(exc).split()) or "no message"
    if len(text) > 160:
        text = text[:157] + "..."
    message = (f"{engine} failed while reading the results for {query!r}: {type(exc).__name__}: {text} — "
               f"stopped this query after {kept} links; the other queries go on (the engine's pages may have changed)")
    return Outcome(reason="error", message=message, pages=0, links=kept)


def discover(cat: Catalog, run: SourceRun) -> tuple[set[tuple[str, str]], set[tuple[str, str, str]]]:
    """Search every query not searched yet (or searched for fewer links) and read every URL list.

    Returns the web sources the manifest lists today: ``(label, query)`` of every query and
    ``(label, url list file, url)`` of every URL read from a list (links of other sources stay in the
    catalog's record of what was found, but are no longer fetched nor catalogued)."""
    from dsbuild.sources.engines import get_engine
    from dsbuild.sources.urls import read_url_list

    ds, progress = run.dataset, run.progress

    searches = [(cls, q) for cls in ds.classes for q in cls.queries]
    listed: set[tuple[str, str, str]] = set()
    # A query whose last search found nothing is searched again with --retry-failed (the engine may have been empty,
    # or answered a page that read as empty, that time).
    empty = cat.empty_searches(ds.name) if run.retry_failed else set()
    todo = [(cls, q) for cls, q in searches if (cat.searched(ds.name, cls.name, ds.engine, q) or 0) < ds.per_query
            or (cls.name, ds.engine, q) in empty]
    # Endpoint (None: the engine's own host) → why it cannot be reached: no query sent there can succeed, so the
    # rest of them are not sent; a class with another endpoint is still searched.
    unreachable: dict[str | None, str] = {}
    if todo:
        engine = get_engine(ds.engine)
        with progress.stage(f"{ds.name}: search ({ds.engine})", len(todo)) as bar:
            for cls, query in todo:
                options = engine_options(ds, cls)
                if options.endpoint in unreachable:
                    bar.advance(1, links=0)
                    continue
                links = []
                try:
                    stream = engine.links(query, options)
                    for l in stream:
                        links.append({"url": l.url, "rank": l.rank, "page_url": l.page_url})
                    outcome = stream.outcome
                except EngineError as exc:
                    # The engine host (this endpoint) cannot be reached: no query sent there can succeed.
                    unreachable[options.endpoint] = str(exc)
                    bar.advance(1, links=0)
                    continue
                except DsbuildError:
                    raise  # a setting no query of this engine can work with: the build stops with one line
                except Exception as exc:  # noqa: BLE001 - an engine library's bug or a page it cannot read: this query only
                    outcome = engine_failure(ds.engine, query, exc, len(links))
                cat.record_search(dataset=ds.name, label=cls.name, engine=ds.engine, query=query, wanted=ds.per_query,
                                  links=links, pages=outcome.pages, outcome=outcome.reason, message=outcome.message)
                if not outcome.ok:
                    run.sink.note(f"query {query!r} ({cls.name}): {outcome.message}")
                bar.advance(1, links=len(links))
    for message in unreachable.values():
        run.sink.note(message)
    if unreachable and not any(c.folders or c.urls for c in ds.classes) and not len(cat.dataset_links(ds.name)):
        raise EngineError(next(iter(unreachable.values())))

    for cls in ds.classes:
        for url_file in cls.urls:
            links, problems = read_url_list(url_file)
            rows = []
            classes = {c.name for c in ds.classes}
            for link in links:
                if link.label is not None and link.label not in classes:
                    nfc = unicodedata.normalize("NFC", link.label)
                    same = [c for c in classes if unicodedata.normalize("NFC", c) == nfc]
                    if same:  # the class in another Unicode form (a Mac's NFD): that class, as for folder names
                        link = dataclasses.replace(link, label=same[0])
                if link.label is not None and link.label not in classes:
                    # Not a class of this dataset: a class written in another case, else as likely the tail of a URL
                    # cut at an unquoted comma as a label.
                    fold = unicodedata.normalize("NFC", link.label).casefold()
                    near = [c for c in sorted(classes) if unicodedata.normalize("NFC", c).casefold() == fold]
                    why = (f"did you mean {near[0]!r}? labels must match a class exactly" if near else
                           "a URL with an unquoted comma? quote it")
                    problems.append(f"{url_file.name} line {link.rank}: label {link.label!r} is not a class of this "
                                    f"dataset ({why}) — skipped")
                    continue
                if link.label is not None and link.label != cls.name:
                    problems.append(f"{url_file.name} line {link.rank}: label {link.label!r} differs from class {cls.name!r}; using {cls.name!r}")
                rows.append({"url": link.url, "rank": link.rank, "page_url": None})
                listed.add((cls.name, str(url_file), link.url))
            cat.record_search(dataset=ds.name, label=cls.name, engine="urls", query=str(url_file), wanted=len(rows),
                              links=rows, pages=0, outcome="exhausted", message=f"{len(rows)} URLs")
            for problem in problems[:20]:
                run.sink.note(problem)
            if len(problems) > 20:
                run.sink.note(f"{url_file.name}: … and {len(problems) - 20} more problems")
    return {(cls.name, q) for cls, q in searches}, listed


# --------------------------------------------------------------------------- planning + fetching


#: Recorded reasons (of rejected or failed downloads and verifications) that a setting decides, and the
#: settings sections (:data:`dsbuild.pipeline.SETTINGS_SECTIONS`) whose change makes the build try them again.
RETRY_WHEN_CHANGED: dict[str, tuple[str, ...]] = {
    "private address": ("network",),
    "noai": ("noai",),
    "too many redirects": ("redirects",),
    "too large": ("max_bytes", "verify"),
    "too small": ("verify",),
    "odd aspect ratio": ("verify",),
    "decompression bomb": ("verify",),
    "unsupported format": ("verify",),
}

_VERIFIED = ("ok", "duplicate")


def _retry(old, changed: frozenset[str]) -> bool:
    """A recorded rejection or failure whose deciding setting changed since."""
    return old.status in ("rejected", "failed") and any(s in changed for s in RETRY_WHEN_CHANGED.get(old.reason, ()))


def _verified(old) -> bool:
    return old.status in _VERIFIED or str(old.reason or "").startswith("quality:")


def ingest(cat: Catalog, run: SourceRun) -> set[str]:
    """Discover, fetch, verify and report the web sources of ``run.dataset`` (see module doc); return the image
    ids of every link of the sources the manifest lists today (a query or URL taken out: its links are skipped)."""
    ds, sink = run.dataset, run.sink
    queries, listed = discover(cat, run)
    links = cat.dataset_links(ds.name)
    if not links.empty:
        listed_now = [(lb, q, u) in listed if e == "urls" else (lb, q) in queries
                      for lb, q, u, e in zip(links["label"], links["query"], links["url"], links["engine"])]
        links = links[listed_now]
    current = {image_id_for(ds.name, lb, u) for lb, u in zip(links["label"], links["url"])}
    if links.empty:
        return current
    _ingest_links(cat, run, links)
    return current


def _ingest_links(cat: Catalog, run: SourceRun, links) -> None:
    ds, sink = run.dataset, run.sink
    known = {r.image_id: r for r in cat.known_items(ds.name).itertuples(index=False)}
    reverify = "verify" in run.changed or run.checks_changed
    # Only dsbuild's checks changed (an upgrade): everything is verified again from the store, nothing downloaded.
    recheck_only = run.checks_changed and "verify" not in run.changed

    by_url: dict[str, list] = {}
    retried: set[str] = set()
    stored: list[tuple[str, object, str]] = []  # accepted before: verified again from the store
    # Accepted before and unchanged, but the download policy changed since: held to today's policy (no download).
    policy_changed = bool({"network", "max_bytes", "noai", "redirects"} & run.changed)
    recheck_policy: list[tuple[str, object, str]] = []
    refetch: set[str] = set()  # image ids whose stored file may be downloaded again when it is gone
    kept = cat.stored_blobs(r.sha256 for r in known.values()) if reverify else {}  # sha256 → stored file
    for link in links.itertuples(index=False):
        iid = image_id_for(ds.name, link.label, link.url)
        old = known.get(iid)
        has_sha = old is not None and isinstance(old.sha256, str)
        # A rejected image with a stored copy (accepted by an earlier build, rejected since): verified again from it.
        if has_sha and (source_removed(old) or reverify and (_verified(old) or old.sha256 in kept)):
            if not source_removed(old):  # one back in the manifest is verified again from the store, but not retried
                retried.add(iid)
            if source_removed(old) or not recheck_only:
                refetch.add(iid)
            stored.append((iid, link, old.sha256))
            sink.found(1)
            continue
        if old is not None and _retry(old, run.changed):
            retried.add(iid)
        elif old is not None and not source_removed(old) and (old.status != "failed" or not run.retry_failed):
            if policy_changed and has_sha and _verified(old):
                recheck_policy.append((iid, link, old.sha256))
                sink.found(1)
                continue
            if run.checks_changed and has_sha and old.status == "rejected":  # rejected on verification, no copy kept
                sink.not_rechecked("rejected downloads, no copy of them stored (not downloaded again)")
            sink.found(1, skipped=1)
            continue
        sink.found(1)
        by_url.setdefault(link.url, []).append((iid, link))
    now = utcnow()
    if recheck_policy:
        kept_now = _refuse_by_policy(cat, run, recheck_policy, now=now, retried={iid for iid, _l, _s in recheck_policy})
        sink.found(0, skipped=len(kept_now))
    if stored:
        stored = _refuse_by_policy(cat, run, stored, now=now, retried=retried)
    if stored:
        by_url = _verify_stored(cat, run, stored, by_url, now=now, retried=retried, refetch=refetch)
    if not by_url:
        return

    # URLs that succeeded before (in another dataset, under another class, or before the verify settings changed):
    # not downloaded again, but verified again from the store under this dataset's verify settings — the record
    # stored with the blob is the outcome under the settings of whichever build fetched it first.
    again: list[tuple[str, object, str]] = []
    for url, (_, sha, path, status, size, ctype, _final, _noai, _hops) in cat.fetched_ok(list(by_url)).items():
        again.extend((iid, link, sha) for iid, link in by_url.pop(url))
    if again:
        again = _refuse_by_policy(cat, run, again, now=now, retried=retried)
    if again:
        by_url = _verify_stored(cat, run, again, by_url, now=now, retried=retried)
    if not by_url:
        return
    if run.executor.backend == "local":
        _fetch_and_verify(run, by_url, now=now, retried=retried)
    else:
        _fetch_on_workers(run, by_url, now=now, retried=retried)


def _refuse_by_policy(cat: Catalog, run: SourceRun, entries: list, *, now, retried: set[str]) -> list:
    """The entries of ``entries`` — ``(image_id, link, sha256)`` of downloads an earlier build stored, about to be
    used again without a download — that today's download policy allows; the others are catalogued ``rejected``
    with the reason a download would get today (:func:`reuse_refusal`). Nothing is deleted from the store: the copy
    is used again once the policy allows it (the outcome is retried when that setting changes)."""
    if not entries:
        return entries
    records = cat.fetched_ok(list(dict.fromkeys(link.url for _iid, link, _sha in entries)))
    keep, resolved = [], {}
    for iid, link, sha in entries:
        record = records.get(link.url)
        refusal = None if record is None else reuse_refusal(run.dataset, link.url, record[6], record[4], resolved,
                                                            noai=record[7], redirects=record[8])
        if refusal is None:
            keep.append((iid, link, sha))
            continue
        reason, detail = refusal
        run.sink.add(item=_item(run.dataset, iid, link, None, run.build_id, now, status="rejected", reason=reason,
                                detail=detail), retried=iid in retried)
    return keep


def reuse_refusal(ds: Dataset, url: str, final_url: str | None, size: int | None,
                  resolved: dict | None = None, *, noai: bool | None = None,
                  redirects: int | None = None) -> tuple[str, str] | None:
    """``(reason, detail)`` when a download stored by an earlier build (``url``, redirected to ``final_url``, a body
    of ``size`` bytes, its response marked ``X-Robots-Tag: noai`` when ``noai``) is one ``ds``'s download policy
    refuses today — a host it no longer allows (``allow_private_hosts``, ``allowed_networks``: the host as written or
    as it resolves now), a body over its fetch ``max_bytes``, a noai mark under ``respect_noai``, more ``redirects``
    than its ``max_redirects`` (unknown, None, for a download recorded before they were: not refused) — else None.
    ``resolved``: host → addresses, shared between calls (a host name is resolved once per build)."""
    import socket
    from urllib.parse import urlsplit

    from dsbuild.netguard import literal_ip

    fetch = ds.fetch_settings
    policy = fetch.policy()
    kept = "the copy an earlier build downloaded stays in the store, unused"
    resolved = {} if resolved is None else resolved
    for address in dict.fromkeys(u for u in (url, final_url) if u):
        try:
            host = urlsplit(address).hostname
        except ValueError:
            continue
        if not host or policy.allow_private:
            continue
        ip = literal_ip(host)
        if ip is not None:
            refused = None if policy.allows(ip) else f"{host} is"
        else:
            if host not in resolved:
                try:
                    resolved[host] = [r[4][0] for r in socket.getaddrinfo(host, None)]
                except OSError:  # no answer now: a download would fail, not be refused; the copy is not judged
                    resolved[host] = []
            bad = [a for a in resolved[host] if not policy.allows(a)]
            refused = f"{host} resolves to {bad[0]}," if bad else None
        if refused:
            return "private address", (f"{refused} a private or loopback address, which this dataset's settings do "
                                       f"not allow: {kept} — {private_hosts_hint(ds.name)}")
    if noai and fetch.respect_noai:
        return "noai", (f"the server marked this image X-Robots-Tag: noai (or noimageai) when an earlier build "
                        f"downloaded it: {kept} — set respect_noai = false in [datasets.{ds.name}.fetch] to use it")
    if redirects is not None and redirects > fetch.max_redirects:
        return "too many redirects", (f"the download took {redirects} redirect{'s' if redirects != 1 else ''}, more "
                                      f"than max_redirects {fetch.max_redirects} of [datasets.{ds.name}.fetch]: {kept} "
                                      f"— raise max_redirects to use it")
    if size is not None and size > fetch.max_bytes:
        return "too large", (f"the download is {size} bytes, more than max_bytes {fetch.max_bytes} of "
                             f"[datasets.{ds.name}.fetch]: {kept} — raise max_bytes to use it")
    return None


def _verify_stored(cat: Catalog, run: SourceRun, stored: list, by_url: dict[str, list], *, now,
                   retried: set[str], refetch: set[str] | None = None) -> dict[str, list]:
    """Verify downloads again from their stored files under the dataset's verify settings; report the items.

    ``stored``: (image_id, link, sha256). One with no stored blob (an image rejected on verification has a
    sha256 but no blob) or whose file is gone joins ``by_url`` (downloaded again) when its id is in ``refetch``
    (None: every one); any other keeps its outcome, counted by the sink (:meth:`~dsbuild.sources.Sink.not_rechecked`).
    Returns ``by_url``. An accepted image's blob row is refreshed with what this verification read
    (:meth:`dsbuild.catalog.Catalog.refresh_blobs`, through the sink).
    """
    import os

    ds = run.dataset
    jobs, links = [], {}
    for iid, link, sha in stored:
        blob = cat.blob_record(sha)
        path = None if blob is None else blob.store_path
        if path is None or not os.path.exists(path):
            if refetch is None or iid in refetch:
                by_url.setdefault(link.url, []).append((iid, link))
            else:
                run.sink.not_rechecked("their stored copy is gone from the store (not downloaded again)")
                run.sink.found(0, skipped=1)
            continue
        links[iid] = link
        jobs.append(VerifyJob(iid, str(path), ds.verify, ds.dedup, run.store))
    with run.progress.stage(f"{ds.name}: verify again (stored)", len(jobs)) as bar, \
            make_executor(len(jobs), workers=run.workers, settings=run.executor) as executor:
        bar.ready(executor.startup_note())  # the rate counts from here, not from Ray's start-up
        for job, rec in executor.map(jobs):
            run.sink.add(item=_item(ds, job.key, links[job.key], rec, run.build_id, now),
                         blob=blob_row(rec, now) if rec.ok else None, retried=job.key in retried)
            bar.advance(1)
    return by_url


def _item(ds: Dataset, iid: str, link, rec: ImageRecord | None, build_id: int, now, *, status=None, reason=None, detail=None):
    return item_row(dataset=ds.name, image_id=iid, origin=link.url, source="urls" if link.engine == "urls" else "query",
                    label=link.label, rec=rec, status=status, reason=reason, detail=detail,
                    engine=None if link.engine == "urls" else link.engine, query=link.query, rank=link.rank,
                    page_url=link.page_url, build_id=build_id, now=now)


VERIFY_CHUNK = 8  # bodies per worker task: one task per image costs ~0.2 ms of the parent's CPU in IPC
MEMORY_BACKLOG = 256_000_000  # downloads pause while this many body bytes wait for verification


class BodyVerifier:
    """Verifies downloaded bodies with the executor, in small batches, as they arrive.

    ``add`` is called from the download thread; finished batches land on ``done`` as
    ``("batch", (results, batch))`` and the main thread takes their records with
    :meth:`records`. A worker that dies (a decoder crash on a hostile file) costs only
    that file: the executor re-runs the batches it held (:class:`~dsbuild.executor.LocalPoolExecutor`)
    and a fresh pool takes the next batches. ``executor`` is the run's backend
    (:func:`~dsbuild.executor.make_executor`); without one, ``use_pool`` picks a
    local pool of ``workers``, else the main thread verifies in-process
    (:class:`~dsbuild.executor.InlineExecutor`, for tests).
    """

    def __init__(self, ds: Dataset, done: queue.Queue, *, workers: int | None = None, use_pool: bool = False,
                 store: Path | None = None, executor: Executor | None = None) -> None:
        self.ds, self.done = ds, done
        self.lock = threading.Lock()
        self.pending: list = []
        self.outstanding = 0  # batches handed out whose records the main thread has not taken yet
        self.held_bytes = 0  # in-memory bodies added whose records the main thread has not taken yet
        self.store = store  # where workers write accepted in-memory bodies
        self.executor = executor or (LocalPoolExecutor(workers) if use_pool else InlineExecutor())

    @property
    def pool(self):
        """The executor's process pool, if it has one (replaced after a worker crash)."""
        return getattr(self.executor, "pool", None)

    def jobs(self, results: list) -> list[VerifyJob]:
        """Executor jobs: an in-memory body is verified and, when accepted, written into the store by the worker."""
        return [VerifyJob(res.url, res.data, self.ds.verify, self.ds.dedup, self.store) if res.data is not None
                else VerifyJob(res.url, str(res.path), self.ds.verify, self.ds.dedup, None) for res in results]

    def backlogged(self) -> bool:
        """Downloads should wait: too many body bytes are waiting for verification (called by the fetch thread)."""
        return self.held_bytes > MEMORY_BACKLOG

    def add(self, res) -> None:
        with self.lock:
            self.held_bytes += len(res.data) if res.data is not None else 0
            self.pending.append(res)
            if len(self.pending) < VERIFY_CHUNK:
                return
            batch, self.pending = self.pending, []
        self._submit(batch)

    def flush(self) -> None:
        with self.lock:
            batch, self.pending = self.pending, []
        if batch:
            self._submit(batch)

    def _submit(self, results: list) -> None:
        with self.lock:
            self.outstanding += 1
        handle = self.executor.submit(self.jobs(results))
        handle.add_done_callback(lambda b, results=results: self.done.put(("batch", (results, b))))

    def records(self, results: list, batch: Batch) -> list[ImageRecord]:
        """The verification records of ``results`` (main thread; an in-process batch is verified here)."""
        with self.lock:
            self.outstanding -= 1
            self.held_bytes -= sum(len(res.data) for res in results if res.data is not None)
        return batch.result()

    def busy(self) -> bool:
        """Bodies still waiting for a batch, or batches not yet taken by the main thread."""
        with self.lock:
            return bool(self.pending) or self.outstanding > 0

    def shutdown(self, *, cancel: bool = False) -> None:
        self.executor.shutdown(cancel=cancel)


def in_memory_limit(concurrency: int) -> int:
    """Largest body kept in memory while downloading: IN_MEMORY_BODY, less at high concurrency (≥ 256 kB)."""
    return max(256_000, min(IN_MEMORY_BODY, IN_FLIGHT_MEMORY // max(1, concurrency)))


def _fetch_and_verify(run: SourceRun, by_url: dict[str, list], *, now, retried: set[str] = frozenset()) -> None:
    """Download ``by_url`` concurrently; verify the bodies with the executor, in batches, as they arrive."""
    from dsbuild.fetch import FetchRequest, fetch_all

    ds, sink = run.dataset, run.sink
    settings = ds.fetch_settings
    incoming = run.store / ".incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    done: queue.Queue = queue.Queue()
    # The run's executor backend; ``local`` always verifies in worker processes (dsbuild.executor.local_executor):
    # the C libraries' stderr captured per image, a per-image time limit, a crash costs one worker.
    executor = make_executor(len(by_url), workers=run.workers, settings=run.executor)
    verifier = BodyVerifier(ds, done, store=run.store, executor=executor)
    stop = threading.Event()

    def on_result(res) -> None:
        if res.outcome == "ok" and (res.path is not None or res.data is not None):
            verifier.add(res)
        else:
            done.put(("one", res))

    def run_fetch() -> None:
        try:
            fetch_all([FetchRequest(url=u) for u in by_url], settings=settings, dest_dir=incoming,
                      on_result=on_result, stop=stop, in_memory=in_memory_limit(settings.concurrency),
                      hold=verifier.backlogged)
        except BaseException as exc:  # surfaced in the main thread
            done.put(("error", exc))
        finally:
            verifier.flush()
            done.put(("end", None))

    thread = threading.Thread(target=run_fetch, name="dsbuild-fetch", daemon=True)
    expected = len(by_url)
    seen = 0
    fetch_ended = False
    error: BaseException | None = None
    try:
        with run.progress.stage(f"{ds.name}: fetch + verify", expected) as bar:
            bar.ready(executor.startup_note())
            thread.start()
            while seen < expected and not (fetch_ended and error is not None):
                try:
                    kind, payload = done.get(timeout=0.05)
                except queue.Empty:
                    verifier.flush()  # a partial batch waits no longer than this when downloads slow down
                    if fetch_ended and done.empty() and not verifier.busy():
                        break
                    continue
                if kind == "end":
                    fetch_ended = True
                    continue
                if kind == "error":
                    error = payload
                    continue
                if kind == "one":
                    pairs = [(payload, None)]
                else:
                    results, batch = payload
                    pairs = list(zip(results, verifier.records(results, batch)))
                for res, rec in pairs:
                    seen += 1
                    _handle(run, res, rec, by_url[res.url], now=now, retried=retried)
                counts = sink.tally()
                bar.advance(len(pairs), ok=counts["ok"], failed=counts["failed"], rejected=counts["rejected"])
    except BaseException:
        stop.set()
        verifier.shutdown(cancel=True)
        raise
    finally:
        verifier.shutdown()
        thread.join(timeout=30)
    sink.flush()
    if error is not None:
        if isinstance(error, (DsbuildError, KeyboardInterrupt)):
            raise error
        raise DsbuildError(f"download stage failed: {type(error).__name__}: {error}") from error


def _fetch_on_workers(run: SourceRun, by_url: dict[str, list], *, now, retried: set[str] = frozenset()) -> None:
    """Download, verify, hash, score and store every URL on the executor's workers (a remote backend: the
    bodies never pass through this process); catalogue the records batch by batch as they come back."""
    ds = run.dataset
    jobs = [FetchJob(url, url, ds.fetch_settings, ds.verify, ds.dedup, run.store) for url in by_url]
    executor = make_executor(len(jobs), workers=run.workers, settings=run.executor)
    try:
        with run.progress.stage(f"{ds.name}: fetch + verify", len(jobs)) as bar:
            bar.ready(executor.startup_note())
            for job, fetched in executor.map(jobs, ordered=False):
                _handle(run, fetched.fetch, fetched.record, by_url[job.url], now=now, retried=retried)
                counts = run.sink.tally()
                bar.advance(1, ok=counts["ok"], failed=counts["failed"], rejected=counts["rejected"])
    except BaseException:
        executor.shutdown(cancel=True)
        raise
    executor.shutdown()
    run.sink.flush()


def _handle(run: SourceRun, res, rec: ImageRecord | None, links, *, now, retried: set[str] = frozenset()) -> None:
    """Turn one fetch result (+ its verification record, for a downloaded body) into fetch, blob and item rows."""
    ds, sink = run.dataset, run.sink
    if res.outcome == "ok":
        if res.path is None:  # an in-memory body: the worker stored it if it was accepted
            if rec.ok:
                sink.add(blob=blob_row(rec, now))
        elif rec.ok:
            stored = move_into_store(run.store, rec.sha256, Path(res.path), rec.format)
            rec = dataclasses.replace(rec, store_path=str(stored))
            sink.add(blob=blob_row(rec, now))
        else:
            Path(res.path).unlink(missing_ok=True)
    first = links[0][1]
    sink.add(fetch=fetch_row(ds.name, res, first, rec.sha256 if rec is not None and rec.ok else None, run.build_id))
    for iid, link in links:
        if res.outcome == "ok":
            sink.add(item=_item(ds, iid, link, rec, run.build_id, now), retried=iid in retried)
        else:
            status = "failed" if res.outcome == "failed" else "rejected"
            reason, detail = item_reason(res.reason, res.http_status, url=res.final_url or res.url, dataset=ds.name)
            sink.add(item=_item(ds, iid, link, None, run.build_id, now, status=status, reason=reason, detail=detail),
                     retried=iid in retried)


def private_hosts_hint(dataset: str) -> str:
    """What allows a dataset's downloads from a loopback/private host: the two settings, where they go."""
    return (f"set allow_private_hosts = true in [datasets.{dataset}] to fetch from your own network, "
            f"or add its network to allowed_networks in [datasets.{dataset}.fetch]")


def item_reason(fetch_reason: str | None, http_status: int | None, *, url: str | None = None,
                dataset: str | None = None) -> tuple[str | None, str | None]:
    """An image's (reason, detail) for a refused download, in the verify stage's words.

    The downloader sniffs a body's kind before storing it (``not an image (html)``); the
    catalog says ``not an image`` with ``content is html`` as the detail, as verification
    does for a local file (and ``unsupported format`` for ``unsupported image (avif)``), so
    one problem has one reason (``GROUP BY reason``). A ``private address`` names the refused
    host of ``url`` (the last URL requested) and the settings of ``dataset`` that allow it.
    """
    import re
    from urllib.parse import urlsplit

    from dsbuild.netguard import literal_ip

    detail = f"http {http_status}" if http_status else None
    m = re.fullmatch(r"(not an image|unsupported image) \((\w+)\)", fetch_reason or "")
    if m:
        reason = "not an image" if m.group(1) == "not an image" else "unsupported format"
        return reason, f"content is {m.group(2)}" + (f"; {detail}" if detail else "")
    if fetch_reason == "private address":
        try:
            host = urlsplit(url).hostname if url else None
        except ValueError:
            host = None
        what = "the host is" if not host else f"{host} is" if literal_ip(host) is not None else f"{host} resolves to"
        return fetch_reason, f"{what} a private or loopback address — {private_hosts_hint(dataset or 'NAME')}"
    return fetch_reason, detail
