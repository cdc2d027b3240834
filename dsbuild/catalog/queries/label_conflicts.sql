-- The same picture (exact or near duplicate) under more than one label, with its source files (label: origin): decide which label is right
SELECT c.dataset, c.dup_group, c.n_images, c.labels, c.image_ids,
       (SELECT list(i.label || ': ' || i.origin ORDER BY i.image_id) FROM images i
        WHERE i.dataset = c.dataset AND list_contains(c.image_ids, i.image_id)) AS origins
FROM conflicts c
ORDER BY c.dataset, c.n_images DESC, c.dup_group;
