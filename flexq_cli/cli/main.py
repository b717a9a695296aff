"""The ``flexq`` entry point: the Typer app and the one error boundary that turns known errors into one line."""

from __future__ import annotations

import os
import signal
import sys

import typer

from ..errors import FlexQError
from . import analyze, bench, calibrate, eval, generate, quantize

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="FlexQ: post-training INT6 (W6A6/W6A8) quantization for LLaMA-family models.")
app.command("calibrate")(calibrate.command)
app.command("analyze")(analyze.command)
app.command("quantize")(quantize.command)
app.command("eval")(eval.command)
app.command("generate")(generate.command)
app.command("bench")(bench.command)


def _usage_errors() -> tuple[type, ...]:
    """Click's usage-error base class: typer vendors its own click in recent releases, plain click before."""
    errors = []
    try:
        import click

        errors.append(click.ClickException)
    except ImportError:
        pass
    typer_base = getattr(getattr(typer, "exceptions", None), "TyperException", None)
    if typer_base is not None:
        errors.append(typer_base)
    return tuple(errors)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a CI job's timeout, ``kill``), unwound like Ctrl-C so that no partial output is left behind."""


_terminated = []  # set by the SIGTERM handler: typer reports any interrupt as exit code 130


def _on_sigterm(signum, frame):
    _terminated.append(signum)
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    """Run the app; return the exit code. Set FLEXQ_DEBUG=1 for full tracebacks."""
    debug = bool(os.environ.get("FLEXQ_DEBUG"))
    try:
        result = app(args=argv, prog_name="flexq", standalone_mode=False)
        code = result if isinstance(result, int) else 0  # typer turns Ctrl-C into exit code 130
    except typer.Exit as exc:
        code = exc.exit_code
    except (KeyboardInterrupt, typer.Abort):
        code = 130
    except _usage_errors() as exc:
        exc.show()
        return getattr(exc, "exit_code", 2)
    except FlexQError as exc:
        if debug:
            raise
        print(f"flexq: error: {exc.message}" + (f" (hint: {exc.hint})" if exc.hint else ""), file=sys.stderr)
        return exc.exit_code
    except ValueError as exc:  # invalid settings rejected by a config's __post_init__
        if debug:
            raise
        print(f"flexq: error: {exc} (hint: see flexq COMMAND --help; FLEXQ_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 2
    if code == 130 and _terminated:
        code = 143
    if code in (130, 143):
        print(f"flexq: {'terminated' if code == 143 else 'interrupted'}; no output was left behind", file=sys.stderr)
    return code


def run() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)
    sys.exit(main())
