-- The same picture (exact or near duplicate) under more than one label: decide which label is right
SELECT dataset, dup_group, n_images, labels, image_ids, paths
FROM conflicts
ORDER BY dataset, n_images DESC, dup_group;
