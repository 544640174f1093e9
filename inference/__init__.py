"""Variational inference, estimators and training for gendsl models (installed as gendsl.inference)."""
