"""The ``hopscope`` command line: one Typer app, each area adding its commands through ``register``.

:func:`main` is the one place that turns the errors bad input raises, in any command, into one line
``error: <message>`` and exit status 2; ``HOPSCOPE_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import logging
from typing import Sequence

import typer

from hopscope.cli.common import debugging

app = typer.Typer(help="hopscope: locate, explain and repair multi-hop reasoning failures in LMs.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)

# Modules under hopscope/cli/ that define ``register(app)``; each owns its commands.
AREAS = ("core", "data", "runs", "compare", "probe", "backpatch", "inject", "recall", "repair", "study", "sweep")


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


# What bad input raises (ModelLoadError, RecordError, SpanNotFound... are ValueErrors; OSError covers missing,
# unreadable or clashing files and folders and a model folder transformers cannot read). Anything else is a bug
# and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, OSError, NotImplementedError)


def error_line(err: BaseException) -> str:
    """The one line ``main`` prints for ``err``: its message, whitespace collapsed."""
    if isinstance(err, KeyError) and err.args:
        text = str(err.args[0])
    elif isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.strerror}: {err.filename}" + (f" -> {err.filename2}" if err.filename2 else "")
    else:
        text = str(err)
    text = " ".join(text.split())
    return text or type(err).__name__


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is bad input (or an out-of-memory device), not a bug."""
    return isinstance(err, USER_ERRORS) or type(err).__name__ == "OutOfMemoryError"


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``hopscope`` script (``argv``: the arguments, default ``sys.argv[1:]``).

    Bad input in any command ends in one line on stderr, ``error: <message>``, with exit status 2;
    set ``HOPSCOPE_DEBUG=1`` to see the traceback instead.
    """
    # the hub client logs every retry of an unreachable host as a warning: the error line says it once
    logging.getLogger("huggingface_hub.utils._http").setLevel(logging.ERROR)
    try:
        app(args=list(argv) if argv is not None else None, prog_name="hopscope")
    except Exception as err:  # noqa: BLE001 - sorted below: bad input gets one line, a bug its traceback
        if not is_user_error(err) or debugging():
            raise
        typer.secho(f"error: {error_line(err)}", fg=typer.colors.RED, err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
