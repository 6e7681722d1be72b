"""The ``scoresde`` command: train, train-classifier, sample, inpaint, likelihood, compare and demo
(examples: ``scoresde --help``).

Every subcommand has ``--help`` with its defaults. A bad argument, a missing or corrupt
checkpoint, data of the wrong shape or an unknown method prints one line
``scoresde <command>: error: <what is wrong>`` on stderr and exits with status 2 (usage) or 1
(anything else), without a traceback (set ``SCORESDE_TRACEBACK=1`` to see one). Output files
are written to a temporary name and renamed, so a failed run leaves no partial file. Under
``torchrun`` only rank 0 prints (results, status lines, bars, warnings) and writes; an error is
printed by each process that hits it (:mod:`scoresde.cli.ranks`).

This module imports only the parser (:mod:`scoresde.cli.parser`, so ``--help`` is fast) and
runs the command: :mod:`scoresde.cli.commands` holds one ``cmd_<name>`` per subcommand, the
work behind them is in :mod:`~scoresde.cli.training`, :mod:`~scoresde.cli.samples`,
:mod:`~scoresde.cli.measure`, :mod:`~scoresde.cli.compare`, :mod:`~scoresde.cli.guided` (class-conditional
sampling, the classifier), :mod:`~scoresde.cli.inpainting` and :mod:`~scoresde.cli.demo` (shared helpers:
:mod:`~scoresde.cli.common`; option types: :mod:`~scoresde.cli.options`).
"""
from __future__ import annotations

import os
import sys
import warnings

# the parser's names were defined in this module before it was split; they stay importable from it
from .parser import (DIVERGENCES, GIVEN, MODELS, OBJECTIVES, SDES, CLIError, _add_common,  # noqa: F401
                     _add_sampler_options, _decay, _device, _Formatter, _mark_given, _methods, _nonneg_int,
                     _Parser, _positive_float, _positive_int, _Store, _StoreTrue, _unit_float, build_parser,
                     given_options)

__all__ = ["main", "build_parser", "CLIError", "given_options"]


def main(argv=None) -> int:
    """Entry point of the ``scoresde`` console script; returns the exit status."""
    parser = build_parser()
    command = "scoresde"
    try:
        args = parser.parse_args(argv)
        command = f"scoresde {args.command}"
        from .ranks import check_single, env_rank, env_world
        rank = env_rank()
        if rank != 0:  # under torchrun: rank 0 alone prints
            args.quiet = True
            command = f"{command} (process {rank} of {env_world()})"
        check_single(args.command)
        from . import commands
        with warnings.catch_warnings():
            _one_line_warnings(command, show=rank == 0)
            return int(getattr(commands, "cmd_" + args.command.replace("-", "_"))(args) or 0)
    except SystemExit as e:  # --help / --version
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    except CLIError as e:
        _print_error(e.prog or command, e, e.status)
        return e.status
    except Exception as e:  # one line, no traceback: the CLI's contract
        _print_error(command, e, 1)
        return 1


def _one_line_warnings(command: str, show: bool = True) -> None:
    """Show warnings as ``scoresde <command>: warning: <message>`` lines on stderr, each text once
    (none with ``show=False``: a process other than torchrun's rank 0, whose rank 0 says the same)."""
    if not show:
        warnings.simplefilter("ignore")
        return
    seen = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        if text not in seen:
            seen.add(text)
            print(f"{command}: warning: {text}", file=sys.stderr, flush=True)

    warnings.simplefilter("always")  # dedup by text here, not by code location
    warnings.showwarning = show


def _print_error(command: str, e: BaseException, status: int) -> None:
    if os.environ.get("SCORESDE_TRACEBACK"):
        import traceback
        traceback.print_exception(e)
    msg = " ".join(str(e).split()) or type(e).__name__
    if not isinstance(e, (CLIError, ValueError, TypeError, FileNotFoundError)):
        msg = f"{type(e).__name__}: {msg}"
    print(f"{command}: error: {msg}", file=sys.stderr)
