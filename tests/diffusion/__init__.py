"""The diffusion tests (a package, so that its conftest.py is not a second top-level ``conftest`` module)."""
