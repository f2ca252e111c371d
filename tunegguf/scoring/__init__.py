"""Scoring shared by the fine-tune and evaluate stages: last-position log-probs of a
Transformers model and the classification metrics computed from its predictions."""
