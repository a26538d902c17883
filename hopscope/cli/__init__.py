"""The ``hopscope`` command line: one Typer app, each area adding its commands through ``register``."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(help="hopscope: locate, explain and repair multi-hop reasoning failures in LMs.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)

# Modules under hopscope/cli/ that define ``register(app)``; each owns its commands.
AREAS = ("core", "data", "runs", "compare", "probe", "backpatch", "inject", "recall", "study", "sweep")


def _register_all() -> None:
    for area in AREAS:
        try:
            module = importlib.import_module(f"hopscope.cli.{area}")
        except ModuleNotFoundError as err:
            if err.name == f"hopscope.cli.{area}":
                continue  # area not present in this build
            raise
        module.register(app)


_register_all()


def main() -> None:
    """Entry point of the ``hopscope`` script."""
    app()
