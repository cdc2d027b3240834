"""The catalog's schema: tables (private, changed only by migrations) and views (the public contract).

Tables, columns may change with migrations:

* ``items``        one row per image source of a dataset (a file or a URL): provenance,
                   status/reason, the content hash, split, duplicate group.
* ``blobs``        one row per stored content (sha256): path in the store, size, format,
                   dimensions, pixel digest, quality scores.
* ``fetches``      one row per URL tried (engine, query, rank, HTTP status, outcome, reason).
* ``links`` / ``searches``  discovered links and how each search ended (resumable crawls).
* ``label_events`` append-only label/status changes; the current label is a view.
* ``model_runs``   one row per train/retrain/mislabels run (with the image ids of its train and valid
                   splits, ``train_ids`` / ``valid_ids``); ``issue_rows`` the flags of a run.
* ``builds``       one row per build (start, end, counts, outcome).

Views, columns may be added, never renamed: ``images``, ``label_issues``, ``runs``
(see DESIGN.md), plus ``conflicts``, ``label_history``, ``fetch_log``,
``label_issues_all`` and ``neighbours`` (each accepted image's most similar accepted images by embedding,
schema 5; accepted only since schema 7).
Deprecated names stay beside their replacements (schema 4):
``quality_flags`` (comma-joined text) beside ``quality_issues`` (a LIST);
``ood_score`` (high = unusual) beside cleanlab's ``outlier_score`` (low = unusual);
``label_issues`` rows are the ones flagged, and ``is_label_issue`` says which
of them are cleanlab label issues (the rest: ``kind = 'conflict'``).

:data:`MIGRATIONS` maps each schema version to the statements that reach it from
the version before; :class:`dsbuild.catalog.db.Catalog` runs the missing ones in
one transaction, then (re)creates :data:`VIEWS`.
"""

from __future__ import annotations

QUALITY_ISSUES_OF = "CASE WHEN {flags} IS NULL THEN NULL WHEN {flags} = '' THEN []::VARCHAR[] ELSE string_split({flags}, ',') END"
"""SQL: the ``quality_issues`` LIST of a comma-joined ``quality_flags`` text (format with ``flags=`` its expression)."""

SCHEMA_VERSION = 9

MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE IF NOT EXISTS meta (key VARCHAR, value VARCHAR)""",
        """CREATE TABLE IF NOT EXISTS items (
            dataset VARCHAR NOT NULL,
            image_id VARCHAR NOT NULL,
            origin VARCHAR NOT NULL,
            source VARCHAR NOT NULL,          -- folder | urls | query
            engine VARCHAR,
            query VARCHAR,
            rank INTEGER,
            page_url VARCHAR,
            class_label VARCHAR NOT NULL,     -- the label its source gave (original_label)
            sha256 VARCHAR,
            status VARCHAR NOT NULL,          -- ok | rejected | duplicate | failed
            reason VARCHAR,
            detail VARCHAR,
            split VARCHAR,
            given_split VARCHAR,              -- the split an imported ImageFolder tree gave (kept as is)
            dup_group VARCHAR,
            dup_of VARCHAR,
            dup_distance INTEGER,
            conflict BOOLEAN DEFAULT false,
            phash VARCHAR,
            src_size BIGINT,
            src_mtime_ns BIGINT,
            first_seen TIMESTAMP NOT NULL,
            updated_at TIMESTAMP NOT NULL,
            build_id INTEGER
        )""",
        """CREATE TABLE IF NOT EXISTS blobs (
            sha256 VARCHAR NOT NULL,
            path VARCHAR NOT NULL,
            bytes BIGINT,
            format VARCHAR,
            width INTEGER,
            height INTEGER,
            mode VARCHAR,
            frames INTEGER,
            pixel_sha VARCHAR,
            q_dark DOUBLE,
            q_light DOUBLE,
            q_blurry DOUBLE,
            q_low_information DOUBLE,
            q_grayscale DOUBLE,
            q_odd_aspect_ratio DOUBLE,
            created_at TIMESTAMP NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS fetches (
            dataset VARCHAR NOT NULL,
            url VARCHAR NOT NULL,
            final_url VARCHAR,
            engine VARCHAR,
            query VARCHAR,
            rank INTEGER,
            page_url VARCHAR,
            label VARCHAR,
            http_status INTEGER,
            bytes BIGINT,
            content_type VARCHAR,
            fetched_at TIMESTAMP,
            outcome VARCHAR,                  -- ok | failed | rejected
            reason VARCHAR,
            transient BOOLEAN,
            attempts INTEGER,
            elapsed_s DOUBLE,
            sha256 VARCHAR,
            build_id INTEGER
        )""",
        """CREATE TABLE IF NOT EXISTS links (
            dataset VARCHAR NOT NULL,
            label VARCHAR NOT NULL,
            url VARCHAR NOT NULL,
            engine VARCHAR NOT NULL,          -- an engine name, or 'urls' for URL lists
            query VARCHAR NOT NULL,           -- the query, or the URL list file
            rank INTEGER,
            page_url VARCHAR,
            discovered_at TIMESTAMP NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS searches (
            dataset VARCHAR NOT NULL,
            label VARCHAR NOT NULL,
            engine VARCHAR NOT NULL,
            query VARCHAR NOT NULL,
            wanted INTEGER,
            links INTEGER,
            pages INTEGER,
            outcome VARCHAR,
            message VARCHAR,
            searched_at TIMESTAMP NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS label_events (
            event_id BIGINT NOT NULL,
            dataset VARCHAR NOT NULL,
            image_id VARCHAR NOT NULL,
            changed_at TIMESTAMP NOT NULL,
            source VARCHAR NOT NULL,          -- e.g. review:decisions.csv, review:suggestions@0.9
            action VARCHAR NOT NULL,          -- relabel | remove | keep | undo
            old_label VARCHAR,
            new_label VARCHAR,
            old_status VARCHAR,
            new_status VARCHAR,
            label_quality DOUBLE,
            note VARCHAR
        )""",
        """CREATE TABLE IF NOT EXISTS model_runs (
            run_id VARCHAR NOT NULL,
            dataset VARCHAR NOT NULL,
            kind VARCHAR NOT NULL,            -- train | retrain | mislabels
            arch VARCHAR,
            started_at TIMESTAMP,
            finished_at TIMESTAMP,
            status VARCHAR,                   -- running | ok | failed | interrupted
            error VARCHAR,
            n_train INTEGER,
            n_valid INTEGER,
            error_rate DOUBLE,
            accuracy DOUBLE,
            model_path VARCHAR,
            params JSON,
            epochs JSON,
            confusion JSON,
            per_class JSON,
            valid_ids JSON,
            duration_s DOUBLE,
            parent_run VARCHAR
        )""",
        """CREATE TABLE IF NOT EXISTS issue_rows (
            run_id VARCHAR NOT NULL,
            dataset VARCHAR NOT NULL,
            image_id VARCHAR NOT NULL,
            kind VARCHAR NOT NULL,            -- label | conflict | ood
            given_label VARCHAR,
            suggested_label VARCHAR,
            label_quality DOUBLE,
            suggested_confidence DOUBLE,
            ood_score DOUBLE,
            is_issue BOOLEAN,
            rank INTEGER
        )""",
        """CREATE TABLE IF NOT EXISTS builds (
            build_id INTEGER NOT NULL,
            datasets VARCHAR,
            pid INTEGER,
            started_at TIMESTAMP NOT NULL,
            finished_at TIMESTAMP,
            outcome VARCHAR,                  -- running | ok | interrupted | failed
            summary JSON
        )""",
    ],
    2: [
        # Quality flags (CleanVision's checks with the dataset's thresholds) and the dataset-relative size score.
        "ALTER TABLE items ADD COLUMN IF NOT EXISTS quality_flags VARCHAR",
        "ALTER TABLE items ADD COLUMN IF NOT EXISTS q_odd_size DOUBLE",
    ],
    3: [
        # What verification learned about a file it rejected (the blob row exists only for accepted ones): the
        # sniffed format, the declared size, the bytes; and what decoders said about any file without rejecting it.
        "ALTER TABLE items ADD COLUMN IF NOT EXISTS format VARCHAR",
        "ALTER TABLE items ADD COLUMN IF NOT EXISTS width INTEGER",
        "ALTER TABLE items ADD COLUMN IF NOT EXISTS height INTEGER",
        "ALTER TABLE items ADD COLUMN IF NOT EXISTS bytes BIGINT",
        "ALTER TABLE items ADD COLUMN IF NOT EXISTS warnings VARCHAR[]",
    ],
    4: [
        # Catalogs written by the arch branch before it met schema 3 above (never released) say 3 without its
        # columns: add them again (IF NOT EXISTS: nothing happens for a released v3 catalog).
        "ALTER TABLE items ADD COLUMN IF NOT EXISTS format VARCHAR",
        "ALTER TABLE items ADD COLUMN IF NOT EXISTS width INTEGER",
        "ALTER TABLE items ADD COLUMN IF NOT EXISTS height INTEGER",
        "ALTER TABLE items ADD COLUMN IF NOT EXISTS bytes BIGINT",
        "ALTER TABLE items ADD COLUMN IF NOT EXISTS warnings VARCHAR[]",
        # cleanlab's names beside the old ones (kept, deprecated): outlier_score runs as cleanlab's
        # OutOfDistribution score (low = more unusual); ood_score = 1 - outlier_score.
        "ALTER TABLE issue_rows ADD COLUMN IF NOT EXISTS outlier_score DOUBLE",
        "UPDATE issue_rows SET outlier_score = 1 - ood_score WHERE ood_score IS NOT NULL",
        # The quality flags as a LIST beside the comma-joined text (kept, deprecated).
        "ALTER TABLE items ADD COLUMN IF NOT EXISTS quality_issues VARCHAR[]",
        "UPDATE items SET quality_issues = " + QUALITY_ISSUES_OF.format(flags="quality_flags"),
    ],
    5: [
        # What a mislabel run scored (images, labels, splits, settings, reviews) as a digest: the run is shown
        # again, not scored again, while the same inputs would give the same result.
        "ALTER TABLE model_runs ADD COLUMN IF NOT EXISTS inputs_digest VARCHAR",
        # + the view review_state (an image is reviewed while a decision about it is not undone).
        # Near-duplicate signals per blob (issue 17): the phash of the mirror, 3 rotations and central
        # 90/80/70 % crops (dsbuild.dedup.neardup.VIEW_NAMES, 16-hex each, comma-joined) and the effective
        # side in px; the embeddings themselves live beside the catalog (features/<spec>/*.parquet).
        "ALTER TABLE blobs ADD COLUMN IF NOT EXISTS phash_views VARCHAR",
        "ALTER TABLE blobs ADD COLUMN IF NOT EXISTS eff_side DOUBLE",
        # cleanlab's OutOfDistribution score on the embeddings (low = more unusual), and Datalab's outlier flag.
        "ALTER TABLE items ADD COLUMN IF NOT EXISTS outlier_score DOUBLE",
        "ALTER TABLE items ADD COLUMN IF NOT EXISTS is_outlier BOOLEAN",
        # Each accepted image's nearest images by embedding cosine, from the build's neighbour search.
        """CREATE TABLE IF NOT EXISTS knn (
            dataset VARCHAR NOT NULL,
            image_id VARCHAR NOT NULL,
            rank INTEGER NOT NULL,            -- 1 = the most similar other image
            neighbour_id VARCHAR NOT NULL,
            similarity DOUBLE                 -- cosine of the embeddings
        )""",
    ],
    6: [
        # The image ids a train/retrain run learned from (its train split then; valid_ids has its valid split):
        # retrain compares two models only on images neither trained on, also after `build --resplit`.
        # NULL for runs recorded before.
        "ALTER TABLE model_runs ADD COLUMN IF NOT EXISTS train_ids JSON",
    ],
    # No table changes: the `neighbours` view lists accepted images only (review applied, as `dsbuild similar`
    # searches), ranked among them; `knn` holds a few spare neighbours for it (dsbuild.dedup.neardup.NEIGHBOUR_SPARE).
    # `images` shows no outlier score for an image removed in review (they are the accepted images' scores).
    7: [],
    8: [
        # Near duplicates in different splits that no duplicate group joins: drawn splits that earlier builds gave
        # them are kept when a later build finds them near each other (no image moves); the image ids of the
        # other side, so that `status` and @split_leakage name the leak until `build --resplit`. NULL: none.
        "ALTER TABLE items ADD COLUMN IF NOT EXISTS leak_with VARCHAR[]",
    ],
    9: [
        # Whether a download's response said X-Robots-Tag: noai / noimageai, recorded whatever respect_noai was, so
        # that a stored download is held to respect_noai when it is turned on later. NULL: fetched before the record.
        "ALTER TABLE fetches ADD COLUMN IF NOT EXISTS noai BOOLEAN",
        # The redirects followed to the body (a stored download is held to a lower max_redirects set later).
        "ALTER TABLE fetches ADD COLUMN IF NOT EXISTS redirects INTEGER",
    ],
}

VIEWS = [
    # The current label/status of an image is its latest label event, else its source's.
    """CREATE OR REPLACE VIEW latest_events AS
        SELECT * EXCLUDE (rn) FROM (
            SELECT *, row_number() OVER (PARTITION BY dataset, image_id ORDER BY event_id DESC) AS rn
            FROM label_events) WHERE rn = 1""",
    # Review decisions form a stack per image (each decision pushes, each undo pops): live_decisions is the
    # stack's depth, last_review / last_review_quality the decision on top (NULL once every one is undone).
    # The top is the latest decision that brought the stack to its final depth.
    """CREATE OR REPLACE VIEW review_state AS
        WITH d AS (
            SELECT dataset, image_id, event_id, action, label_quality,
                   sum(CASE WHEN action = 'undo' THEN -1 ELSE 1 END)
                       OVER (PARTITION BY dataset, image_id ORDER BY event_id) AS depth
            FROM label_events),
        f AS (SELECT dataset, image_id, arg_max(depth, event_id) AS live FROM d GROUP BY ALL),
        t AS (SELECT d.dataset, d.image_id, f.live,
                     arg_max({'action': d.action, 'quality': d.label_quality}, d.event_id)
                         FILTER (WHERE d.action <> 'undo' AND d.depth = f.live) AS top
              FROM d JOIN f USING (dataset, image_id) GROUP BY ALL)
        SELECT dataset, image_id, live AS live_decisions, top.action AS last_review, top.quality AS last_review_quality
        FROM t""",
    """CREATE OR REPLACE VIEW images AS
        SELECT i.dataset, i.image_id, b.path, i.origin, i.engine, i.query,
               coalesce(e.new_label, i.class_label) AS label,
               i.class_label AS original_label,
               i.split,
               CASE WHEN e.new_status IS NOT NULL AND i.status IN ('ok', 'duplicate') THEN e.new_status ELSE i.status END AS status,
               CASE WHEN e.new_status = 'rejected' AND i.status IN ('ok', 'duplicate') THEN 'removed in review' ELSE i.reason END AS reason,
               coalesce(b.width, i.width) AS width, coalesce(b.height, i.height) AS height,
               coalesce(b.format, i.format) AS format, coalesce(b.bytes, i.bytes, f.bytes) AS bytes,
               i.sha256, i.phash, i.dup_group,
               i.dup_of, i.dup_distance, i.conflict, i.detail, i.source, i.rank, i.page_url,
               coalesce(r.live_decisions, 0) > 0 AS reviewed, r.last_review,
               b.q_dark, b.q_light, b.q_blurry, b.q_low_information, b.q_grayscale, b.q_odd_aspect_ratio,
               i.q_odd_size, i.quality_flags, i.first_seen, i.updated_at, i.quality_issues,
               coalesce(i.warnings, []::VARCHAR[]) AS warnings,
               -- outlier scores are of the accepted images: none for an image removed in review since the build
               CASE WHEN e.new_status = 'rejected' AND i.status IN ('ok', 'duplicate') THEN NULL ELSE i.outlier_score END
                   AS outlier_score,
               CASE WHEN e.new_status = 'rejected' AND i.status IN ('ok', 'duplicate') THEN NULL ELSE i.is_outlier END
                   AS is_outlier,
               b.eff_side, i.leak_with
        FROM items i
        LEFT JOIN blobs b USING (sha256)
        LEFT JOIN latest_events e USING (dataset, image_id)
        LEFT JOIN review_state r USING (dataset, image_id)
        LEFT JOIN (SELECT dataset, url, any_value(bytes) AS bytes FROM fetches GROUP BY ALL) f
               ON f.dataset = i.dataset AND f.url = i.origin AND i.source <> 'folder'""",
    """CREATE OR REPLACE VIEW runs AS
        SELECT run_id, dataset, kind, arch, started_at, finished_at, n_train, n_valid, error_rate,
               accuracy, model_path, status, error, duration_s, parent_run, params, epochs, confusion, per_class
        FROM model_runs""",
    """CREATE OR REPLACE VIEW label_issues_all AS
        SELECT r.dataset, r.image_id, im.path, im.origin, r.given_label, r.suggested_label,
               r.label_quality, r.rank, r.run_id, r.kind, r.suggested_confidence, r.ood_score,
               im.label AS current_label, im.reviewed,
               r.outlier_score, (r.kind = 'label' AND r.is_issue) AS is_label_issue
        FROM issue_rows r LEFT JOIN images im USING (dataset, image_id)
        WHERE r.is_issue""",
    """CREATE OR REPLACE VIEW label_issues AS
        SELECT * FROM label_issues_all
        WHERE run_id IN (SELECT arg_max(run_id, started_at) FROM model_runs
                         WHERE kind = 'mislabels' AND status = 'ok' GROUP BY dataset)""",
    """CREATE OR REPLACE VIEW conflicts AS
        SELECT dataset, dup_group, count(*) AS n_images, count(DISTINCT label) AS n_labels,
               list(DISTINCT label ORDER BY label) AS labels, list(image_id ORDER BY image_id) AS image_ids,
               list(path ORDER BY image_id) AS paths
        FROM images WHERE dup_group IS NOT NULL AND status IN ('ok', 'duplicate')
        GROUP BY dataset, dup_group HAVING count(DISTINCT label) > 1""",
    """CREATE OR REPLACE VIEW label_history AS
        SELECT dataset, image_id, event_id, changed_at, source, action, old_label, new_label, old_status, new_status, note
        FROM label_events""",
    """CREATE OR REPLACE VIEW fetch_log AS SELECT * FROM fetches""",
    # Accepted images only (status ok/duplicate after review, what `dsbuild similar` searches), as subject and as
    # neighbour: a review's remove takes the image out at once, an undo brings it back; `rank` counts among them.
    """CREATE OR REPLACE VIEW neighbours AS
        SELECT k.dataset, k.image_id, row_number() OVER w AS rank, k.neighbour_id, k.similarity, a.label,
               b.label AS neighbour_label, b.split AS neighbour_split, b.status AS neighbour_status, a.path,
               b.path AS neighbour_path
        FROM knn k
        JOIN images a ON a.dataset = k.dataset AND a.image_id = k.image_id
        JOIN images b ON b.dataset = k.dataset AND b.image_id = k.neighbour_id
        WHERE a.status IN ('ok', 'duplicate') AND b.status IN ('ok', 'duplicate')
        WINDOW w AS (PARTITION BY k.dataset, k.image_id ORDER BY k.rank)
        QUALIFY row_number() OVER w <= 10""",

]
