-- Each image's most similar images by embedding cosine (filter: WHERE image_id = '...')
SELECT dataset, image_id, label, rank, neighbour_id, neighbour_label, similarity, neighbour_split, neighbour_status
FROM neighbours
ORDER BY dataset, image_id, rank;
