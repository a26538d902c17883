"""Options and helpers shared by every CLI command (each command takes the same run options)."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import typer

ModelOpt = typer.Option(None, "--model", "-m", help="Embedded name, local HF folder, .gguf file or hub id "
                        "(default: the embedded SmolLM2-135M-Instruct).")
DeviceOpt = typer.Option("cpu", "--device", help="torch device, e.g. cpu or cuda.")
DtypeOpt = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16 (scores are computed in float32).")
OutOpt = typer.Option(None, "--out", help="Run folder to write (default: runs/<command>-<timestamp>).")
ResumeOpt = typer.Option(None, "--resume", help="Finish an interrupted run folder, skipping what it holds.")
SeedOpt = typer.Option(0, "--seed", help="Random seed.")
ThreadsOpt = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice).")
QuickOpt = typer.Option(False, "--quick", help="A small smoke-test size (verdicts are marked indicative).")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")


def configure(threads: Optional[int] = None) -> None:
    """Process-wide settings every command applies first (torch threads; a wrong ``HOPSCOPE_LINEAR`` fails)."""
    from hopscope.engine.linear import env_problem

    if (problem := env_problem()) is not None:
        fail(problem)
    if threads is not None:
        if threads < 1:
            fail(f"--threads must be at least 1, got {threads}")
        import torch

        torch.set_num_threads(threads)


def load(model: Optional[str], device: str = "cpu", dtype: str = "float32"):
    """Load a model for a CLI command, turning load errors into one clear message."""
    import hopscope
    from hopscope.models import ModelLoadError

    try:
        return hopscope.load_model(model, device=device, dtype=dtype)
    except (ModelLoadError, FileNotFoundError, ValueError) as err:
        if debugging():
            raise
        fail(str(err))


def debugging() -> bool:
    """``HOPSCOPE_DEBUG=1``: errors keep their traceback instead of becoming one line."""
    return os.environ.get("HOPSCOPE_DEBUG", "").strip() not in ("", "0")


def fail(message: str) -> None:
    """Print one clear error and exit with status 2."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors bad input raises (ValueError, KeyError, FileNotFoundError, ...) into one line."""
    try:
        yield
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, NotImplementedError, TypeError) as err:
        if debugging():
            raise
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        fail(str(msg))
