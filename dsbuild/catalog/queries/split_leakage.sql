-- Images of one picture in different splits: duplicate groups that straddle splits, and near-duplicate pairs that earlier builds drew into different splits (pair: their ids; `build --resplit` joins them); an image removed in review leaks no more
SELECT dataset, dup_group, splits, images, pair FROM (
    SELECT dataset, dup_group, list(DISTINCT split ORDER BY split) AS splits, count(*) AS images,
           NULL::VARCHAR[] AS pair
    FROM images
    WHERE dup_group IS NOT NULL AND split IS NOT NULL AND status IN ('ok', 'duplicate')
    GROUP BY dataset, dup_group
    HAVING count(DISTINCT split) > 1
    UNION ALL
    SELECT a.dataset, NULL, list_sort([a.split, b.split]), 2, [a.image_id, b.image_id]
    FROM (SELECT dataset, image_id, split, unnest(leak_with) AS other FROM images WHERE status IN ('ok', 'duplicate')) a
    JOIN images b ON b.dataset = a.dataset AND b.image_id = a.other AND b.status IN ('ok', 'duplicate')
    WHERE a.image_id < a.other
)
ORDER BY dataset, dup_group NULLS LAST, pair;
