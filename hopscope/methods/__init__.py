"""Analyses built on the engine: one subpackage or module per method (kept free of imports)."""
