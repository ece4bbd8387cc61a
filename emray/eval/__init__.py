"""Evaluation: generation, the judge (client, cache, pool, local server) and the four criteria."""
