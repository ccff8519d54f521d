"""What the daemon loads to score: the bundle and its sidecar schema, preprocessing, scores, the batched scorer.

Nothing here trains: architectures, training, evaluation and reports live in `monitor.training`.
"""
