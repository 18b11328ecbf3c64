"""`fsac`: the workstation command line (typer).

Heavy imports (torch, open_clip, onnx) happen inside the commands, so `fsac --help` is quick.
User errors (`FsacError`) print one line and exit with status 2, without a traceback; so do
the machine's refusals a user fixes outside fsac (a full disk, a read-only folder, no
permission, too many open files), which name the file where the system call did.
"""

from __future__ import annotations

import errno
import sys

import click
import typer

from fsac import __version__
from fsac.errors import FsacError
from fsac.calibration import cli as calibration_cli
from fsac.export import bench as export_bench
from fsac.export import cli as export_cli
from fsac.runtime import bench as runtime_bench
from fsac.runtime import bench_files as runtime_bench_files
from fsac.runtime import bench_isa as runtime_bench_isa
from fsac.train import cli as train_cli

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="CLIP-FSAC few-shot anomaly classification: train, evaluate, export, calibrate.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print figures (timings, memory, ratios).")
app.add_typer(bench_app, name="bench")

app.command("train")(train_cli.train_command)
app.command("eval")(train_cli.eval_command)
app.command("synth")(train_cli.synth_command)
app.command("explain")(train_cli.explain_command)
app.command("demo")(train_cli.demo_command)
app.command("models")(train_cli.models_command)
app.command("export")(export_cli.export_command)
app.command("engine")(export_cli.engine_command)
app.command("calibrate")(calibration_cli.calibrate_command)
app.command("quantize")(calibration_cli.quantize_command)
bench_app.command("train")(train_cli.bench_train_command)
bench_app.command("export")(export_bench.bench_export_command)
bench_app.command("runtime")(runtime_bench.bench_runtime_command)
bench_app.command("isa")(runtime_bench_isa.bench_isa_command)
bench_app.command("files")(runtime_bench_files.bench_files_command)


@app.command("version")
def version_command() -> None:
    """Print the fsac version."""
    typer.echo(__version__)


def _click_classes(name: str) -> tuple[type, ...]:
    """The exception class `name` of click and of the click that typer >= 0.29 vendors
    (`typer._click`): a fresh install gets the vendored one, whose usage errors are not
    `click.exceptions.*` and used to escape as a 40-line traceback."""
    found = [getattr(click.exceptions, name)]
    try:
        from typer._click import exceptions as vendored
    except ImportError:
        vendored = None
    if vendored is not None and hasattr(vendored, name):
        found.append(getattr(vendored, name))
    return tuple(found)


_EXIT = _click_classes("Exit")
_ABORT = _click_classes("Abort")
_USAGE = _click_classes("UsageError")
_CLICK = _click_classes("ClickException")


def _usage_line(e: Exception) -> str:
    """One line for a usage error: the message, and where to read more."""
    msg = " ".join(e.format_message().split())  # type: ignore[attr-defined]
    ctx = getattr(e, "ctx", None)
    where = f"{ctx.command_path} --help" if ctx is not None and getattr(ctx, "command_path", None) else "fsac --help"
    return f"fsac: error: {msg} (see `{where}`)"


# OSErrors that are the machine's state, not fsac's bug: one line, no traceback.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EMFILE,
                       errno.ENFILE, errno.EIO, errno.ENOTDIR, errno.EISDIR, errno.EEXIST}


def main(argv: list[str] | None = None) -> int:
    try:
        returned = app(args=argv, prog_name="fsac", standalone_mode=False)
    except FsacError as e:
        print(f"fsac: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"fsac: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except _EXIT as e:
        return e.exit_code
    except _USAGE as e:
        print(_usage_line(e), file=sys.stderr)
        return 2
    except _CLICK as e:
        print(f"fsac: error: {' '.join(e.format_message().split())}", file=sys.stderr)
        return 2 if e.exit_code in (None, 1) else e.exit_code
    except (*_ABORT, KeyboardInterrupt):
        print("fsac: interrupted", file=sys.stderr)
        return 130
    # Without standalone mode, typer (>= 0.29) does not raise an Exit: it returns its code, and
    # turns Ctrl-C into exit code 130, returned the same way (before, `fsac` then exited 0, so a
    # script's `fsac export && deploy` went on without a model file). fsac's commands return a
    # dict or None, never an int, so an int here is such an exit code.
    if isinstance(returned, int) and not isinstance(returned, bool):
        if returned == 130:
            print("fsac: interrupted", file=sys.stderr)
        return returned
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
