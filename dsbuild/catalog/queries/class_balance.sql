-- Accepted images per dataset, label and split, with each label's share of its split
SELECT dataset, label, split, count(*) AS images,
       round(100.0 * count(*) / sum(count(*)) OVER (PARTITION BY dataset, split), 1) AS pct_of_split
FROM images
WHERE status = 'ok'
GROUP BY dataset, label, split
ORDER BY dataset, label, split;
