-- Duplicate groups whose members sit in different splits (should be empty: dsbuild keeps groups together)
SELECT dataset, dup_group, list(DISTINCT split ORDER BY split) AS splits, count(*) AS images
FROM images
WHERE dup_group IS NOT NULL AND split IS NOT NULL
GROUP BY dataset, dup_group
HAVING count(DISTINCT split) > 1
ORDER BY dataset, dup_group;
