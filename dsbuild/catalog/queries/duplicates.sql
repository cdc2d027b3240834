-- Duplicate groups: every member, its representative and its Hamming distance to it
SELECT dataset, dup_group, image_id, status, label, split, dup_of, dup_distance, width, height, origin
FROM images
WHERE dup_group IS NOT NULL
ORDER BY dataset, dup_group, status DESC, image_id;
