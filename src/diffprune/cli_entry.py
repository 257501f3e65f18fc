"""How ``diffprune.cli.main`` runs the typer app: without typer's own handlers (so an interrupt and click's errors
reach ``main`` and print one line), and the ``DIFFPRUNE_DEBUG`` switch."""
from __future__ import annotations

import sys

import typer
from rich.console import Console


def invoke(app: typer.Typer, args: list[str], console: Console) -> None:
    """Run ``app`` on ``args`` as typer's ``app()`` would, less its handlers: an interrupt reaches ``main``
    as itself (not as typer's bare ``Exit(130)``), and click's own errors (an unknown option, a bad value)
    print one line instead of a usage box."""
    from typer._click.exceptions import ClickException, NoArgsIsHelpError  # typer carries its own click

    command = typer.main.get_command(app)
    try:
        with command.make_context("diffprune", list(args)) as ctx:
            command.invoke(ctx)
    except typer.Exit as e:  # --help, or a command's typer.Exit
        sys.exit(e.exit_code)
    except NoArgsIsHelpError as e:
        Console().print(e.ctx.get_help())
        sys.exit(e.exit_code)
    except ClickException as e:
        path = e.ctx.command_path if getattr(e, "ctx", None) is not None else "diffprune"
        what = " ".join(e.format_message().split())
        console.print(f"[bold red]error:[/] {what.rstrip('.')}, in `{path}`; see `{path} --help`", highlight=False,
                      soft_wrap=True)
        sys.exit(e.exit_code)
    sys.exit(0)  # as typer's app() does


def debug_flag(console: Console) -> bool:
    """``DIFFPRUNE_DEBUG`` as documented (1/true/yes/on; 0/false/no/off); another value is a one-line error."""
    from diffprune.io import env_flag  # numpy and yaml: only once a command runs

    try:
        return env_flag("DIFFPRUNE_DEBUG")
    except ValueError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
