-- Quality flags (dark, light, blurry, low_information, grayscale, odd_aspect_ratio, odd_size) with their scores
SELECT dataset, image_id, label, split, status, quality_flags, width, height,
       round(q_dark, 3) AS dark, round(q_light, 3) AS light, round(q_blurry, 3) AS blurry,
       round(q_low_information, 3) AS low_information, round(q_odd_aspect_ratio, 3) AS odd_aspect_ratio,
       round(q_odd_size, 3) AS odd_size, path, origin
FROM images
WHERE quality_flags <> '' OR reason LIKE 'quality:%'
ORDER BY dataset, quality_flags, image_id;
