"""The model: architecture, preprocessing, scores, the saved bundle, the batched scorer, training."""
