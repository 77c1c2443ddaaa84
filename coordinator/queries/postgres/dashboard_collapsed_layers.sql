SELECT metric, rate, seed, layer, min(level) AS first_level FROM collapsed_layers
 WHERE sweep_id = $1 AND control IS NULL GROUP BY metric, rate, seed, layer ORDER BY metric, rate, seed, layer LIMIT $2
