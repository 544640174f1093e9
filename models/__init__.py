"""Models from the literature written as gendsl programs (installed as gendsl.models)."""
