"""The review app's routes (Starlette): queue, browse, runs, predict, images by id, decisions.

:func:`create_app` returns the ASGI application wrapped in the :class:`~dsbuild.ui.security.Guard`.
Pages are jinja2 templates (``templates/*.html.j2``, autoescape on, undefined is an
error); the one script and style sheet are static files (``static/``), so the
Content-Security-Policy needs no inline script.

Decisions are written on one read-write connection the app keeps while they come
(:class:`~dsbuild.catalog.held.HeldCatalog`): opening the file per key press would cost
more than the write. The app gives it up within tens of milliseconds when another
dsbuild process asks (``status``, ``query``, ``review``, ``build`` wait for it), and
after ``UiConfig.catalog_idle_s`` without a decision, so other tools find the file free
while the reviewer pauses. Pages read on the held connection when there is one, else
open the catalog read-only for the request. DuckDB allows one process either one
read-write or any number of read-only connections to a file, so catalog access inside
the app is serialised by the holder's lock.

Routes (``{image_id}`` must look like an image id — letters, digits, ``_``/``-``, at
most 64 — and name an image of the dataset with a stored file; anything else is 404;
no path ever comes from a request):

==========================  ======  ==================================================
``/``                       GET     the review queue (filters: kind, label, split, decided, page, n)
``/browse``                 GET     images by class × split × status; ``where``: SQL over ``images``
``/runs``, ``/runs/{id}``   GET     model runs; a run's epochs, confusion matrix, comparison
``/predict``                GET     upload images, top-k labels from the latest model
``/thumb/{image_id}``       GET     a ≤160 px JPEG thumbnail (made once, cached beside the store)
``/image/{image_id}``       GET     a ≤640 px JPEG of the image (the focus view)
``/static/{name}``          GET     app.js, app.css (a fixed table, not a folder)
``/api/decide``             POST    JSON ``{"decisions": [{"image_id", "action", "new_label"?, "event_id"?}]}``
``/api/predict``            POST    the raw bytes of one image (``X-File-Name`` header for display), or several
                                    as ``multipart/form-data`` (a ``file`` part each; what the page sends)
==========================  ======  ==================================================

``/api/decide`` answers 200 with ``applied`` (events written: a decision that already stands,
such as a second keep, writes none), ``already_applied`` and the images' new states (each with
``event_id``: the event written for it, or null; a relabel to the label the image has is a keep, noted and named in
``notes`` as ``dsbuild review`` does for such a row: :func:`dsbuild.decisions.same_label_keep`), 400 for a malformed body, 409 with the reason
when the review refuses a decision (nothing applied; the reason says what to do in the app — the
error's ``in_app`` words, not the command line's "fix it and run again"), 503 with ``"busy": true``
while another process writes the catalog (the page retries; the error names the holder). An undo names the event it reverts (``event_id``,
as the page's undo does); it is refused (409) when another decision came after that one. An undo without ``event_id``
(or with ``null``) reverts the image's latest decision, whoever made it, as an ``undo`` row of ``dsbuild review
--decisions`` does (409 when it has none left). ``notes``: what the review says beside its counts, as ``dsbuild review``
prints it (e.g. an image undone to a label that is no longer a class); after an undo, first what it took back
(``undid relabel airplane → ship on image 7d733feb: its label is airplane again``), which the page shows.
``/api/predict`` answers 413 over the size limit, 415 when verification refuses the
file (the same sniffing, allow-list and limits as ``build``), 409 without a model. With several files it
answers 200 with ``results``, one per file in order: a refused file (over the limit, or refused by
verification) has its ``error``, the others their ``top`` labels — all predicted in one model run.
"""

from __future__ import annotations

import json
import math
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence
from urllib.parse import unquote, urlencode, urlsplit

from dsbuild.catalog.held import IDLE_S, HeldCatalog
from dsbuild.errors import CatalogBusy, DsbuildError
from dsbuild.ui.security import Guard, GuardSettings, allowed_hosts

if TYPE_CHECKING:  # pragma: no cover
    from dsbuild.manifest import Manifest

HERE = Path(__file__).parent
STATIC = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
"""The static files the app serves, by name (read once, at start)."""
IMAGE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
THUMB_PX, LARGE_PX = 160, 640
SIMILAR_K, SIMILAR_MAX = 20, 200
"""More like this: images shown by default (``?k=`` asks for up to SIMILAR_MAX), as ``dsbuild similar``'s ``-k``."""
MAX_DECISIONS = 5000
MAX_DECIDE_BODY = 1 << 20
TOP_K = 5
MAX_PREDICT_FILES = 20
"""Files in one ``/api/predict`` upload (the page sends more in several requests of this many)."""
MAX_PART_OVERHEAD = 2048
"""Bytes a multipart part may add to its file (boundary, headers) in the upload's total limit."""
CLASS_KEYS = tuple("1234567890") + tuple("qwertyiosdfhlzcvbm")
"""Keys for the classes (:func:`class_keys`): digits first, then letters the app does not use for actions
(``x`` remove, ``k`` keep, ``u`` undo, ``j`` next, ``g`` grid, ``a`` select all, ``n``/``p`` pages, ``?`` help)."""


@dataclass(frozen=True, kw_only=True)
class UiConfig:
    """What one app serves: ``dataset`` of ``manifest``'s catalog, on ``host``:``port`` with session ``token``.

    ``max_upload_bytes``: the predict upload limit (default: the dataset's ``verify.max_bytes``).
    ``thumbs_dir``: the thumbnail cache (default: ``thumbs/`` beside the catalog).
    ``page_size``: queue cards per page (1–500).
    ``catalog_idle_s``: the decisions' read-write connection is closed after this many
    seconds without a decision (other dsbuild processes get it at once by asking).
    """

    manifest: "Manifest"
    dataset: str
    host: str
    port: int
    token: str
    max_upload_bytes: int | None = None
    thumbs_dir: Path | None = None
    page_size: int = 60
    catalog_idle_s: float = IDLE_S

    @property
    def cookie(self) -> str:
        return f"dsbuild_ui_{self.port}"


def class_keys(labels: "Sequence[str]", *, scored: "Sequence[str]" = (),
               follow: "Mapping[str, str] | None" = None) -> dict[str, str]:
    """key → class (:data:`CLASS_KEYS` in order), stable through a review round: the keys are dealt to the classes
    the latest mislabel run scored (``scored``, in its order), so a class keeps its key while it is reviewed. A class
    renamed or merged since the run (``follow``: gone class → the class it went into) takes the key of its old name
    (a merge: of the first); the key of a class removed or split since is left unused, so no other key moves; the
    classes added since the run take the keys after the run's. Without a run, ``scored`` is the order the catalog
    first saw the classes in (:func:`dsbuild.cycle.class_key_order`); ``scored`` empty: ``labels`` in order. A new
    mislabel run deals them again, in its order. Classes past the last key get none."""
    now = set(labels)
    slots: list[str | None] = [c if c in now else None for c in scored]
    placed = {c for c in slots if c is not None}
    for i, old in enumerate(scored):
        new = (follow or {}).get(old)
        if slots[i] is None and new in now and new not in placed:
            slots[i] = new
            placed.add(new)
    slots += [c for c in labels if c not in placed]
    return {key: label for key, label in zip(CLASS_KEYS, slots) if label is not None}


def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["pct"] = lambda v: "" if _missing(v) else f"{float(v):.0%}"
    env.filters["num"] = lambda v, d=3: "" if _missing(v) else f"{float(v):.{d}f}"
    env.filters["text"] = lambda v: "" if _missing(v) else str(v)
    env.filters["qs"] = lambda d: urlencode({k: v for k, v in d.items() if v not in (None, "")})
    return env


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(isinstance(value, float) and math.isnan(value)) or (value != value)
    except (TypeError, ValueError):
        return False


def safe_link(url: Any) -> str | None:
    """``url`` when it is an http(s) URL with a host (a link may point there), else None (shown as text only)."""
    if _missing(url):
        return None
    try:
        parts = urlsplit(str(url))
    except ValueError:
        return None
    return str(url) if parts.scheme in ("http", "https") and parts.netloc else None


@dataclass
class _State:
    """The app's mutable parts: the catalog lock, the model lock, the static files, the templates.

    The dataset's classes (the relabel keys) are read per page from the catalog
    (:func:`dsbuild.cycle.dataset_classes`): an ``imagefolder`` dataset's classes are its folders,
    which a build may change while the app runs."""

    config: UiConfig
    held: Any = None  # the HeldCatalog: decisions' read-write connection and the app's catalog lock
    model: threading.Lock = field(default_factory=threading.Lock)
    static: dict[str, bytes] = field(default_factory=dict)
    env: Any = None


def create_app(config: UiConfig):
    """The app for ``config`` (a Starlette application behind the :class:`~dsbuild.ui.security.Guard`).

    Raises DsbuildError when the dataset is not in the manifest.
    """
    from starlette.applications import Starlette
    from starlette.routing import Route

    config.manifest.dataset(config.dataset)  # a DsbuildError naming the known datasets
    state = _State(config=config)
    state.held = HeldCatalog(config.manifest.catalog, idle_s=config.catalog_idle_s)
    state.static = {name: (HERE / "static" / name).read_bytes() for name in STATIC}
    state.env = _environment()
    h = _Handlers(state)
    routes = [
        Route("/", h.queue, methods=["GET"]),
        Route("/browse", h.browse, methods=["GET"]),
        Route("/runs", h.runs, methods=["GET"]),
        Route("/runs/{run_id}", h.run, methods=["GET"]),
        Route("/predict", h.predict_page, methods=["GET"]),
        Route("/similar/{image_id}", h.similar_page, methods=["GET"]),
        Route("/thumb/{image_id}", h.thumb, methods=["GET"]),
        Route("/image/{image_id}", h.large, methods=["GET"]),
        Route("/static/{name}", h.static, methods=["GET"]),
        Route("/api/decide", h.decide, methods=["POST"]),
        Route("/api/predict", h.predict, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    guard = GuardSettings(token=config.token, hosts=allowed_hosts(config.host, config.port), cookie=config.cookie)
    wrapped = Guard(app, guard)
    wrapped.held = state.held  # the server closes it at exit (`wrapped.held.close()`)
    return wrapped


class _Handlers:
    def __init__(self, state: _State) -> None:
        self.s = state
        self.c = state.config

    # -- helpers ------------------------------------------------------------------------

    def _page(self, template: str, *, status: int = 200, **context: Any):
        from starlette.responses import HTMLResponse

        from dsbuild.ui.security import csrf_for

        html = self.s.env.get_template(template).render(dataset=self.c.dataset, csrf=csrf_for(self.c.token),
                                                        nav=template.split(".")[0], **context)
        return HTMLResponse(html, status_code=status)

    def _error_page(self, exc: DsbuildError):
        busy = isinstance(exc, CatalogBusy)
        return self._page("error.html.j2", status=503 if busy else 500, message=str(exc), busy=busy, title="error")

    def _read(self, fn):
        """``fn(cat)`` on the held connection, or with the catalog opened read-only; under the app's catalog lock."""
        from dsbuild.catalog import Catalog

        with self.s.held.using() as held:
            if held is not None:
                return fn(held)
            with Catalog.open_readonly(self.c.manifest.catalog) as cat:
                return fn(cat)

    # -- pages --------------------------------------------------------------------------------

    def queue(self, request):
        from starlette.responses import PlainTextResponse

        from dsbuild.catalog.app_queries import QUEUE_KINDS, dup_siblings, queue_kind_counts, queue_page

        q = request.query_params
        try:
            page = max(1, int(q.get("page", "1")))
            n = min(500, max(1, int(q.get("n", str(self.c.page_size)))))
        except ValueError:
            return PlainTextResponse("Error: page and n must be whole numbers", status_code=400)
        decided = {"yes": True, "no": False}.get(q.get("decided", ""))
        filters = {"kind": q.get("kind") or None, "label": q.get("label") or None, "split": q.get("split") or None}

        def read(cat):
            from dsbuild.cycle import class_key_order, run_flags_now

            run_id = cat.latest_mislabel_run(self.c.dataset)
            # The run's flags as they read today: a picture a build gave a new item (its class renamed, merged or
            # split) is flagged there, a suggestion of a renamed class names it as it is called now.
            ds = self.c.manifest.dataset(self.c.dataset)
            now = run_flags_now(cat, ds, run_id)
            order = class_key_order(cat, ds, now)
            run = {"moved": now.moved, "follow": now.follow}
            df, total = queue_page(cat, self.c.dataset, run_id, **filters, decided=decided, offset=(page - 1) * n,
                                   limit=n, **run)
            counts = queue_kind_counts(cat, self.c.dataset, run_id, **run)
            groups = sorted({g for g in df["dup_group"].dropna()}) if len(df) else []
            sib = dup_siblings(cat, self.c.dataset, groups)
            return now, order, run_id, df, total, counts, sib

        try:
            now, order, run_id, df, total, counts, sib = self._read(read)
        except DsbuildError as exc:
            return self._error_page(exc)
        cards = _cards(df, sib, gone=now.gone)
        classes = list(now.classes)
        pages = max(1, math.ceil(total / n))
        here = {**filters, "decided": q.get("decided") or None, "n": n if n != self.c.page_size else None}
        return self._page("queue.html.j2", title="review queue", cards=cards, total=total, page=page, pages=pages,
                          run_id=run_id, run_note=now.note(), counts=counts, kinds=QUEUE_KINDS, labels=classes,
                          keys=self._class_keys(classes, order),
                          filters=filters, decided=q.get("decided", ""), here=here, splits=("train", "valid", "test"))

    @staticmethod
    def _class_keys(classes: list[str], order: tuple[tuple[str, ...], dict[str, str]]) -> dict[str, str]:
        """The page's class keys (:func:`class_keys`), dealt in ``order``: :func:`dsbuild.cycle.class_key_order`
        (the manifest's order; for folder or labels-CSV classes the latest mislabel run's, or before any run the
        order the catalog first saw them in), so that a renamed class keeps its key and no other key moves."""
        scored, follow = order
        return class_keys(classes, scored=scored, follow=follow)

    def similar_page(self, request):
        """More like this: the image and the accepted images most similar to it (what `dsbuild similar` lists), as
        review cards the queue's keys decide about."""
        from starlette.responses import PlainTextResponse

        from dsbuild.catalog.app_queries import dup_siblings, image_cards
        from dsbuild.similar import similar_images

        image_id = request.path_params["image_id"]
        if not IMAGE_ID.fullmatch(image_id):
            return PlainTextResponse("Error: no such image", status_code=404)
        try:
            k = min(SIMILAR_MAX, max(1, int(request.query_params.get("k", str(SIMILAR_K)))))
        except ValueError:
            return PlainTextResponse("Error: k must be a whole number", status_code=400)
        error, found = None, None
        try:
            with self.s.held.lock:
                self.s.held.release()  # similar_images opens its own read-only connection
                found = similar_images(self.c.manifest, self.c.dataset, image_id, k=k, id_only=True)
        except CatalogBusy as exc:
            return self._error_page(exc)
        except DsbuildError as exc:  # no embeddings yet, a removed image: said above its card
            error = exc.in_app or str(exc)
        ids = [image_id, *([] if found is None else found["image_id"])]
        sims = {} if found is None else dict(zip(found["image_id"], found["similarity"]))

        def read(cat):
            from dsbuild.cycle import class_key_order, run_flags_now

            run_id = cat.latest_mislabel_run(self.c.dataset)
            ds = self.c.manifest.dataset(self.c.dataset)
            now = run_flags_now(cat, ds, run_id)
            df = image_cards(cat, self.c.dataset, run_id, ids, moved=now.moved, follow=now.follow)
            groups = sorted({g for g in df["dup_group"].dropna()}) if len(df) else []
            return now, class_key_order(cat, ds, now), df, dup_siblings(cat, self.c.dataset, groups)

        try:
            now, order, df, sib = self._read(read)
        except DsbuildError as exc:
            return self._error_page(exc)
        if df.empty or df["image_id"].iloc[0] != image_id:
            return PlainTextResponse("Error: no such image", status_code=404)
        cards = _cards(df, sib, gone=now.gone)
        classes = list(now.classes)
        for card in cards:
            card["similarity"] = sims.get(card["image_id"])
        cards[0]["subject"] = True
        return self._page("similar.html.j2", title="more like this", cards=cards, k=k, error=error,
                          labels=classes, keys=self._class_keys(classes, order),
                          image_id=image_id)

    def browse(self, request):
        from dsbuild.catalog.app_queries import browse_images, facets

        q = request.query_params
        where = q.get("where", "").strip()
        try:
            page = max(1, int(q.get("page", "1")))
        except ValueError:
            page = 1
        n = 120
        try:
            counts = self._read(lambda cat: facets(cat, self.c.dataset))
        except DsbuildError as exc:
            return self._error_page(exc)
        error = None
        try:
            with self.s.held.lock:
                self.s.held.release()  # the sandbox opens its own read-only connection
                df = browse_images(self.c.manifest.catalog, self.c.dataset, where or None, offset=(page - 1) * n, limit=n)
        except CatalogBusy as exc:
            return self._error_page(exc)
        except DsbuildError as exc:  # the user's WHERE clause: shown above the (empty) grid
            import pandas as pd

            error, df = str(exc), pd.DataFrame()
        total = int(df["total"].iloc[0]) if len(df) else 0
        return self._page("browse.html.j2", title="browse", rows=df.to_dict("records"), total=total, where=where,
                          page=page, pages=max(1, math.ceil(total / n)), facets=counts, error=error,
                          status=400 if error else 200)

    def runs(self, request):
        from dsbuild.catalog.app_queries import all_runs

        try:
            df = self._read(lambda cat: all_runs(cat, self.c.dataset))
        except DsbuildError as exc:
            return self._error_page(exc)
        return self._page("runs.html.j2", title="runs", runs=df.to_dict("records"))

    def run(self, request):
        from starlette.responses import PlainTextResponse

        from dsbuild.catalog.app_queries import run_detail

        run_id = request.path_params["run_id"]
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,200}", run_id):
            return PlainTextResponse("Error: no such run", status_code=404)

        def read(cat):
            row = run_detail(cat, self.c.dataset, run_id)
            parent = run_detail(cat, self.c.dataset, row["parent_run"]) if row and not _missing(row.get("parent_run")) else None
            return row, parent

        try:
            row, parent = self._read(read)
        except DsbuildError as exc:
            return self._error_page(exc)
        if row is None:
            return PlainTextResponse("Error: no such run", status_code=404)
        return self._page("run.html.j2", title=f"run {run_id}", run=row, parent=parent, epochs=_json(row.get("epochs")) or [],
                          confusion=_json(row.get("confusion")), per_class=_json(row.get("per_class")),
                          parent_per_class=_json(parent.get("per_class")) if parent else None)

    def predict_page(self, request):
        from dsbuild.catalog.app_queries import latest_model_run
        from dsbuild.cycle import dataset_classes, did_not_learn_note, model_classes_note, saved_model_classes

        def read(cat):
            return latest_model_run(cat, self.c.dataset), dataset_classes(cat, self.c.manifest.dataset(self.c.dataset))

        try:
            model, classes = self._read(read)
        except DsbuildError as exc:
            return self._error_page(exc)
        # A model trained before a class was renamed, merged or removed answers with the old classes: say so once.
        note = (model_classes_note(self.c.dataset, model["run_id"], saved_model_classes(model["model_path"]), classes)
                if model else None)
        # A model that `train` said did not learn is still used (its answers may be worth a look): say so first.
        learned = did_not_learn_note(self.c.dataset, model) if model else None
        return self._page("predict.html.j2", title="predict", model=model, note=note, learned=learned,
                          limit=self._upload_limit())

    # -- images ----------------------------------------------------------------------------

    def _image(self, request, size: int):
        from starlette.responses import PlainTextResponse, Response

        from dsbuild.catalog.app_queries import image_file
        from dsbuild.ui.thumbs import cached_thumbnail

        image_id = request.path_params["image_id"]
        if not IMAGE_ID.fullmatch(image_id):
            return PlainTextResponse("Error: no such image", status_code=404)
        try:
            found = self._read(lambda cat: image_file(cat, self.c.dataset, image_id))
        except CatalogBusy as exc:
            return PlainTextResponse(f"Error: {exc}", status_code=503)
        if found is None:
            return PlainTextResponse("Error: no such image", status_code=404)
        path, sha = found
        data = cached_thumbnail(self._thumbs_dir(), sha, path, size)
        if data is None:
            return PlainTextResponse("Error: the stored image cannot be read", status_code=404)
        return Response(data, media_type="image/jpeg")

    def thumb(self, request):
        return self._image(request, THUMB_PX)

    def large(self, request):
        return self._image(request, LARGE_PX)

    def _thumbs_dir(self) -> Path:
        return self.c.thumbs_dir or (Path(self.c.manifest.catalog).parent / "thumbs")

    def static(self, request):
        from starlette.responses import PlainTextResponse, Response

        name = request.path_params["name"]
        if name not in self.s.static:
            return PlainTextResponse("Error: not found", status_code=404)
        return Response(self.s.static[name], media_type=STATIC[name])

    # -- decisions -----------------------------------------------------------------------------

    async def decide(self, request):
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import JSONResponse

        body = await _read_body(request, MAX_DECIDE_BODY)
        if body is None:
            return JSONResponse({"error": f"request body over {MAX_DECIDE_BODY} bytes"}, status_code=413)
        try:
            decisions = _parse_decisions(body)
            bulk = _bulk_accept(body)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        try:
            applied, states, skipped, notes = await run_in_threadpool(self._apply, decisions, bulk)
        except CatalogBusy as exc:
            return JSONResponse({"error": exc.in_app or str(exc), "busy": True}, status_code=503)
        except DsbuildError as exc:  # the review refused: its reason and what to do, in the app's words
            return JSONResponse({"error": exc.in_app or str(exc)}, status_code=409)
        n_skipped = sum(skipped.values())
        return JSONResponse({"applied": applied, "already_applied": len(decisions) - applied - n_skipped, "states": states,
                             "skipped": n_skipped, "skipped_why": "; ".join(
                                 f"skipped {n} image{'' if n == 1 else 's'} {why}" for why, n in skipped.items()),
                             "notes": notes})

    def _apply(self, decisions, bulk: bool = False) -> tuple[int, list[dict], dict[str, int], list[str]]:
        """Apply ``decisions``: (events written, the images' new states, reason → decisions skipped, the review's
        notes: :attr:`dsbuild.cycle.ReviewSummary.notes`). A state's
        ``event_id`` is the event this request wrote for the image (what the page's undo names), None when its
        decision changed nothing. ``bulk``: the suggestions of a selection (grid + Enter): images whose standing
        decision is a person's are skipped (:func:`dsbuild.cycle.review_dataset`'s ``bulk_accept``)."""
        from dsbuild.catalog.app_queries import image_states, latest_event_ids, standing_events
        from dsbuild.cycle import review_dataset

        ids = [d.image_id for d in decisions]
        read: list = []

        def after(cat) -> None:
            read.append((image_states(cat, self.c.dataset, ids), latest_event_ids(cat, self.c.dataset, ids)))

        undo_ids = [d.image_id for d in decisions if d.action == "undo"]
        with self.s.held.writing() as cat:  # the app's write lock: no other event comes between the two reads
            before = latest_event_ids(cat, self.c.dataset, ids)
            tops = standing_events(cat, self.c.dataset, undo_ids) if undo_ids else {}
            summary = review_dataset(self.c.manifest, self.c.dataset, decisions=decisions, source="ui", catalog=cat,
                                     on_commit=after, bulk_accept=bulk)
        df, latest = read[0]
        out, undid = [], []
        for rec in df.to_dict("records"):
            iid = rec["image_id"]
            new = latest.get(iid) if latest.get(iid) != before.get(iid) else None
            out.append({"image_id": iid, "label": rec["label"], "status": rec["status"],
                        "last_review": None if _missing(rec["last_review"]) else rec["last_review"],
                        "decided": bool(rec["decided"]), "event_id": new,
                        "state": _state_text(rec["last_review"], rec["label"], rec["status"])})
            if new is not None and iid in tops:
                undid.append((iid, tops[iid], rec["label"], rec["status"]))
        notes = list(summary.notes)
        if undid:  # the README: undo "names the decision it takes back"
            notes.insert(0, _undone_text(undid))
        return summary.applied, out, dict(summary.skipped), notes

    # -- predict -----------------------------------------------------------------------------

    def _upload_limit(self) -> int:
        ds = self.c.manifest.dataset(self.c.dataset)
        return int(self.c.max_upload_bytes or ds.verify.max_bytes)

    async def predict(self, request):
        """One image (the raw body, ``X-File-Name``) or several (``multipart/form-data``, a ``file`` part each: what
        the page sends, so that one model run predicts them all)."""
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import JSONResponse

        if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            return await self._predict_many_request(request)
        name = unquote(request.headers.get("x-file-name", "upload"))[:200] or "upload"
        limit = self._upload_limit()
        body = await _read_body(request, limit)
        if body is None:
            return JSONResponse({"file": name, "error": _over_limit(name, limit)}, status_code=413)
        try:
            (result,) = await run_in_threadpool(self._predict, [(name, body)])
        except DsbuildError as exc:
            code = 503 if isinstance(exc, CatalogBusy) else 409
            return JSONResponse({"file": name, "error": str(exc)}, status_code=code)
        status = 415 if "error" in result else 200
        return JSONResponse(result, status_code=status)

    async def _predict_many_request(self, request):
        """``/api/predict`` with several files: 200 with ``results``, one per ``file`` part in order (a refused file's
        ``error`` says why, the others are predicted); 413 when the request is over :data:`MAX_PREDICT_FILES` files
        of the upload limit each; 400 for a malformed form or no file in it; 409 without a model."""
        from starlette.concurrency import run_in_threadpool
        from starlette.requests import Request
        from starlette.responses import JSONResponse

        limit = self._upload_limit()
        total = MAX_PREDICT_FILES * (limit + MAX_PART_OVERHEAD)
        too_big = JSONResponse({"error": f"the upload is over {total:,} bytes in all (at most {MAX_PREDICT_FILES} "
                                         f"files of {limit:,} bytes, the dataset's verify.max_bytes) — send fewer "
                                         "files at once"}, status_code=413)
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > total):
            return too_big
        seen = 0

        async def counted() -> dict:  # the body as it arrives, read no further than ``total`` bytes
            nonlocal seen
            message = await request.receive()
            seen += len(message.get("body", b""))
            if seen > total:
                raise _UploadTooBig
            return message

        try:
            form = await Request(request.scope, counted).form(max_files=MAX_PREDICT_FILES, max_fields=MAX_PREDICT_FILES)
        except _UploadTooBig:
            return too_big
        except Exception as exc:  # noqa: BLE001 - python-multipart's errors: a malformed form is the client's
            return JSONResponse({"error": f"the upload is not a readable multipart form ({exc}) — send each image as a "
                                          f"'file' part, at most {MAX_PREDICT_FILES} at once"}, status_code=400)
        try:
            files = []
            for part in form.getlist("file"):
                if isinstance(part, str):
                    continue
                name = (part.filename or "upload")[:200]
                # a file over the limit is not read (None stands in): its result says why
                big = part.size is not None and part.size > limit
                files.append((name, None if big else await part.read()))
        finally:
            await form.close()
        if not files:
            return JSONResponse({"error": "the upload has no 'file' part — pick or drop image files"}, status_code=400)
        try:
            results = await run_in_threadpool(self._predict, files, limit)
        except DsbuildError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503 if isinstance(exc, CatalogBusy) else 409)
        return JSONResponse({"results": results})

    def _predict(self, files: list[tuple[str, bytes | None]], limit: int | None = None) -> list[dict]:
        """Predict ``files`` ((name, bytes) each) with the latest model, in one run: a result per file, in order —
        ``file``, ``run_id``, ``format``, ``width``, ``height``, ``top`` (the top-k labels), or ``file`` and
        ``error`` for a file over ``limit`` bytes (``None`` bytes: one not read for its size) or refused by verification (the build's sniffing, allow-list and
        limits: :func:`dsbuild.verify.analyze_bytes`; then opened under the same settings). Raises DsbuildError
        when there is no model."""
        import tempfile

        from dsbuild.catalog.app_queries import latest_model_run
        from dsbuild.formats import extension
        from dsbuild.verify import analyze_bytes

        ds = self.c.manifest.dataset(self.c.dataset)
        results: list[dict] = []
        good: list[tuple[int, Any]] = []  # (index in results, the verification record)
        for name, data in files:
            if data is None or (limit is not None and len(data) > limit):
                results.append({"file": name, "error": _over_limit(name, limit)})
                continue
            rec = analyze_bytes(data, verify=ds.verify, dedup=ds.dedup, with_quality=False)
            if not rec.ok:
                results.append({"file": name, "error": f"{name} was refused: {rec.reason} ({rec.detail}) — upload a "
                                                       f"{', '.join(ds.verify.formats)} image"})
                continue
            good.append((len(results), rec))
            results.append({"file": name})
        if not good:
            return results
        model = self._read(lambda cat: latest_model_run(cat, self.c.dataset))
        if model is None:
            raise DsbuildError(f"no trained model for '{self.c.dataset}' — run `dsbuild train {self.c.dataset}` first")
        from dsbuild.model.predict import predict

        with tempfile.TemporaryDirectory(prefix="dsbuild-ui-") as tmp:
            paths = []
            for k, (i, rec) in enumerate(good):
                path = Path(tmp) / f"upload{k}.{extension(rec.format)}"
                path.write_bytes(files[i][1])
                paths.append(path)
            with self.s.model:
                df = predict(Path(model["model_path"]).parent, paths, verify=ds.verify)
        for (i, rec), (_, row) in zip(good, df.iterrows()):
            name = results[i]["file"]
            if not _missing(row.get("error")):
                results[i] = {"file": name, "error": f"{name}: {row['error']}"}
                continue
            probs = sorted(((c[5:], float(row[c])) for c in df.columns if c.startswith("prob_")), key=lambda t: -t[1])
            results[i] = {"file": name, "run_id": model["run_id"], "format": rec.format, "width": rec.width,
                          "height": rec.height, "top": [{"label": lab, "probability": p} for lab, p in probs[:TOP_K]]}
        return results


# --------------------------------------------------------------------------- helpers


class _UploadTooBig(Exception):
    """An upload's body went past its limit while it was read."""


def _over_limit(name: str, limit: int) -> str:
    """Why an upload of ``name`` is refused for its size (``limit``: the upload limit)."""
    return f"{name} is over the upload limit of {limit:,} bytes (the dataset's verify.max_bytes) — use a smaller image"


async def _read_body(request, limit: int) -> bytes | None:
    """The request body, or None when it is (or declares) more than ``limit`` bytes (read no further)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                return None
        except ValueError:
            return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _bulk_accept(body: bytes) -> bool:
    """The ``bulk_accept`` flag of a ``/api/decide`` body (already parsed once by :func:`_parse_decisions`): true when the
    page accepts the suggestions of a selection (grid + Enter), whose person-decided images are skipped."""
    flag = json.loads(body).get("bulk_accept", False)
    if not isinstance(flag, bool):
        raise ValueError("\"bulk_accept\" must be true or false")
    if flag and any(d.get("action") != "relabel" for d in json.loads(body)["decisions"] if isinstance(d, dict)):
        raise ValueError("\"bulk_accept\" takes relabel decisions only (the suggestions of the selected cards)")
    return flag


def _parse_decisions(body: bytes) -> list:
    """The :class:`~dsbuild.decisions.Decision` list of a ``/api/decide`` body; ValueError says what is wrong."""
    from dsbuild.decisions import ACTIONS, Decision

    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("the body is not JSON — send {\"decisions\": [{\"image_id\", \"action\", \"new_label\"}]}") from None
    items = doc.get("decisions") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise ValueError("\"decisions\" must be a non-empty list")
    if len(items) > MAX_DECISIONS:
        raise ValueError(f"at most {MAX_DECISIONS} decisions per request")
    out = []
    for k, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise ValueError(f"decision {k} is not an object")
        image_id, action, new_label = item.get("image_id"), item.get("action"), item.get("new_label")
        undoes = item.get("event_id")
        if not isinstance(image_id, str) or not IMAGE_ID.fullmatch(image_id):
            raise ValueError(f"decision {k}: bad image_id")
        if action not in ACTIONS:
            raise ValueError(f"decision {k}: action must be one of {', '.join(ACTIONS)}")
        if action == "relabel" and (not isinstance(new_label, str) or not new_label):
            raise ValueError(f"decision {k}: relabel needs a new_label")
        if undoes is not None and (action != "undo" or isinstance(undoes, bool) or not isinstance(undoes, int)):
            raise ValueError(f"decision {k}: event_id (the decision an undo reverts) must be a whole number, with undo only")
        out.append(Decision(image_id=image_id, action=action, new_label=new_label if action == "relabel" else None,
                            undoes=undoes))
    return out


def _cards(df: Any, siblings: Any, *, gone: dict[str, str]) -> list[dict]:
    """Review cards (dicts for ``_card.html.j2``) from rows of ``queue_page`` / ``image_cards``, the members of
    their duplicate groups (``dup_siblings``) and the classes the mislabel run scored that are gone, with why
    (``RunFlagsNow.gone``: removed, split)."""
    by_group: dict[str, list[dict]] = {}
    for rec in siblings.to_dict("records"):
        by_group.setdefault(rec["dup_group"], []).append(rec)
    cards = []
    for rec in df.to_dict("records"):
        rec["origin_link"] = safe_link(rec["origin"])
        rec["siblings"] = [s for s in by_group.get(rec["dup_group"], []) if s["image_id"] != rec["image_id"]]
        rec["state"] = _state_text(rec["last_review"], rec["label"], rec["status"])
        rec["similarity"], rec["subject"] = None, False  # more like this sets them
        # A suggestion of a class removed or split since the run: shown with why, and no Enter on it.
        why = gone.get(rec["suggested_label"]) if isinstance(rec["suggested_label"], str) else None
        rec["suggestion_gone"] = f"'{rec['suggested_label']}' is no longer a class ({why}): pick a class with its key" if why else ""
        rec["quality"] = (list(rec["quality_issues"]) if rec["quality_issues"] is not None
                          and not _missing_list(rec["quality_issues"]) else [])
        cards.append(rec)
    return cards


def _undone_text(undid: list[tuple[str, dict, Any, Any]]) -> str:
    """What an undo took back, for the page's message: (image_id, the event undone, label and status after) each.
    One image: ``undid relabel airplane → ship on image 7d733feb…: its label is airplane again``; several: the
    decisions counted (``undid 3 decisions: relabel cat → dog ×2, remove ×1``)."""
    def what(ev: dict) -> str:
        if ev["action"] == "relabel":
            return f"relabel {ev['old_label']} → {ev['new_label']}"
        if ev["action"] == "keep":
            return f"keep ({ev['new_label']})"
        return str(ev["action"])

    if len(undid) == 1:
        iid, ev, label, status = undid[0]
        by = "" if ev.get("source") == "ui" else f" (by {ev.get('source')})"
        after = f"its label is {label} again" if ev["action"] == "relabel" else (
            f"it is back, status {status}, label {label}" if ev["action"] == "remove" else f"label {label}, undecided")
        return f"undid {what(ev)}{by} on image {iid[:8]}: {after}"
    counts: dict[str, int] = {}
    for _iid, ev, _label, _status in undid:
        counts[what(ev)] = counts.get(what(ev), 0) + 1
    return f"undid {len(undid)} decisions: " + ", ".join(f"{w} ×{n}" for w, n in counts.items())


def _state_text(last_review: Any, label: Any, status: Any) -> str:
    """What a card says about its image's latest review decision ("" when undecided)."""
    if _missing(last_review) or last_review == "undo":
        return ""
    if last_review == "relabel":
        return f"relabelled → {label}"
    if last_review == "remove":
        return "removed"
    if last_review == "keep":
        kept = f"kept as {label}"
        return kept if status in ("ok", "duplicate") else f"{kept} (status {status})"
    return str(last_review)


def _missing_list(value: Any) -> bool:
    try:
        return len(value) == 0
    except TypeError:
        return True


def _json(value: Any) -> Any:
    if _missing(value) or value == "":
        return None
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return None
