-- Build history: when, what, outcome
SELECT build_id, datasets, started_at, finished_at, outcome FROM builds ORDER BY build_id DESC;
