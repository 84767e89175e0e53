"""The `scs-probe` entry point: the command group, whose commands load on first use, and `main`, the one place
where the library's typed errors (`scs_probe.errors`) become one line on stderr naming the flag, and an exit
code: 2 for usage errors, 1 for bad files and failed runs, 130 when interrupted.

The command modules import torch only inside their commands, so `scs-probe --help`, `scs-probe CMD --help`
and usage errors answer at once."""

from __future__ import annotations

import importlib
import os
import sys
import warnings

import click

from .. import cpu_memory, errors
from ..schema import escape_controls
from ..zoo import trust_model_code
from .options import BACKEND_ENV, BACKENDS, flag

# command -> "module:attribute" under scs_probe.cli, loaded when the command is asked for (Click's LazyGroup)
COMMANDS = {
    "train": "training:train", "sweep": "training:sweep", "tune": "training:tune",
    "saliency": "analyses:saliency", "pgd": "analyses:pgd", "compare": "analyses:compare",
    "norms": "analyses:norms", "report": "analyses:report",
    "zoo": "inspection:zoo", "inspect": "inspection:inspect",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported by name when used or listed."""

    def __init__(self, *args, lazy_commands: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands

    def list_commands(self, ctx):
        return sorted([*super().list_commands(ctx), *self.lazy_commands])

    def get_command(self, ctx, cmd_name):
        if cmd_name not in self.lazy_commands:
            return super().get_command(ctx, cmd_name)
        module, attr = self.lazy_commands[cmd_name].split(":")
        return getattr(importlib.import_module(f"{__package__}.{module}"), attr)


@click.group(cls=LazyGroup, lazy_commands=COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
             epilog="CPU memory: freed tensors are kept for reuse and large ones put on huge pages, so the process "
                    "keeps its peak memory until it exits (scs_probe/cpu_memory.py); opt out with "
                    f"{cpu_memory.OPT_OUT}=0 and THP_MEM_ALLOC_ENABLE=0.")
@click.version_option(package_name="scs-probe")
@click.option("--backend", type=click.Choice(BACKENDS, case_sensitive=False), default=None,
              help="How sharpened layers run their elementwise work: fused by TorchInductor (compiled; auto: for "
                   f"large batches) or as eager torch ops [env {BACKEND_ENV}; default auto].")
@click.pass_context
def cli(ctx, backend):
    """Does Sharpened Cosine Similarity beat convolution? Train the study's variants and compare them."""
    env = os.environ.get(BACKEND_ENV, "").strip()
    if backend is None and env and env.lower() not in BACKENDS:  # a usage error now, not a traceback mid-run
        raise click.UsageError(f"{BACKEND_ENV}={env!r} is not a backend: expected one of {', '.join(BACKENDS)}")
    ctx.obj = {"backend": backend}  # applied by each command once its options parsed (options.ProbeCommand)


def _one_line_warnings(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {escape_controls(' '.join(str(message).split()))}", file=sys.stderr)


def _message(e: errors.ScsProbeError) -> str:
    """The library's message, with the flags that act on it."""
    if isinstance(e, errors.RunExistsError):
        return f"{e}; pass --resume to continue it or choose another --out"
    if isinstance(e, errors.ResumeConflict):
        return f"{e} ({flag(e.option)})"
    if isinstance(e, errors.UntrustedModelCode):
        return f"{e}; pass {flag(e.option)} if you trust it"
    if isinstance(e, errors.DataError) and e.missing:
        return f"{e}; pass --data-dir DIR"
    if isinstance(e, errors.DataMismatch):
        return f"{e} (--data-dir, or --dataset imagefolder:DIR)"
    if isinstance(e, errors.Busy):
        return f"{e}; try again once it has ended"
    return str(e)


def _error(text: str) -> None:
    click.echo(f"scs-probe: error: {escape_controls(' '.join(text.split()))}", err=True)  # names from files: no
    # escape sequence reaches the terminal


def argv_command(argv) -> str | None:
    """The subcommand named on the command line (`argv`, else the process'), or None."""
    args = sys.argv[1:] if argv is None else list(argv)
    return next((a for a in args if a in COMMANDS), None)


def main(argv=None) -> int:
    # Freed tensors reused, large ones on huge pages: without this, every fresh activation costs thousands of page
    # faults, which on a VM can take longer than the elementwise pass that fills it (see scs_probe/cpu_memory.py).
    cpu_memory.configure()
    warnings.showwarning = _one_line_warnings
    try:
        with trust_model_code(False):  # what this command trusts ends with it (in-process callers, tests)
            rv = cli.main(args=argv, prog_name="scs-probe", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
        click.echo("\nscs-probe: interrupted; checkpoints are intact (train continues with --resume, sweep and tune "
                   "when run again)", err=True)
        return 130
    except click.ClickException as e:
        _error(e.format_message())
        return e.exit_code
    except errors.OptionError as e:
        _error(f"{flag(e.option)}: {e.message}")
        return 2
    except errors.DeviceUnavailable as e:
        _error(f"--device: {e}")
        return 2
    except (errors.ResumeConflict, errors.StudyConflict) as e:  # options that cannot change on resume: usage
        _error(_message(e))
        return 2
    except errors.ScsProbeError as e:
        _error(_message(e))
        return 1
    except OSError as e:  # a folder that cannot be written (read-only, full, another user's): what, where, and why
        where = f"{e.filename}: " if e.filename else ""
        _error(f"{where}{e.strerror or e}" + ("; the checkpoints written so far are intact"
                                                                     if argv_command(argv) in ("train", "sweep", "tune")
                                                                     else ""))
        return 1
