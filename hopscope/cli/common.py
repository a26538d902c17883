"""Options and helpers shared by every CLI command."""

from __future__ import annotations

from typing import Optional

import typer

ModelOpt = typer.Option(None, "--model", "-m", help="Embedded name, local HF folder, .gguf file or hub id "
                        "(default: the embedded SmolLM2-135M-Instruct).")
DeviceOpt = typer.Option("cpu", "--device", help="torch device, e.g. cpu or cuda.")
DtypeOpt = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16.")
OutOpt = typer.Option(None, "--out", help="Run folder to write (default: runs/<command>-<timestamp>).")
ResumeOpt = typer.Option(None, "--resume", help="Finish an interrupted run folder, skipping what it holds.")
SeedOpt = typer.Option(0, "--seed", help="Random seed.")


def load(model: Optional[str], device: str = "cpu", dtype: str = "float32"):
    """Load a model for a CLI command, turning load errors into one clear message."""
    import hopscope
    from hopscope.models import ModelLoadError

    try:
        return hopscope.load_model(model, device=device, dtype=dtype)
    except (ModelLoadError, FileNotFoundError, ValueError) as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from err


def fail(message: str) -> None:
    """Print one clear error and exit with status 2."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)
