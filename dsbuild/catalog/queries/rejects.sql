-- Rejected and failed images by dataset and reason, with an example
SELECT dataset, status, reason, count(*) AS images, any_value(origin) AS example
FROM images
WHERE status IN ('rejected', 'failed')
GROUP BY dataset, status, reason
ORDER BY dataset, images DESC, reason;
