"""`bench` command line: argument parsing, early validation and exit codes; the work is done by the functions it calls.

Exit codes (bench/errors.py):
  0    ok
  1    `bench check` found a regression; or some runs of a comparison failed after the others finished (the
       failures are listed, then the command that retries them)
  2    bad input, or an output location that cannot be used (a read-only folder, a file where a folder belongs,
       permission denied): one line on stderr
  3    an environment fault (disk full, quota exceeded, out of memory, an I/O error, another torchrun process
       gone): one line on stderr; for `compare` a second line with the command that continues (`--resume`)
  4    an internal error (a bug in growbench): one line on stderr
  130  interrupted: for `compare`, finished runs are kept and the command that continues is printed
  129, 138, 143  stopped by SIGHUP, SIGUSR1, SIGTERM (128 + the signal's number): a run that was training finishes
       its step and writes a checkpoint there first; then as 130 (bench/stopping.py)
No error prints a traceback; `bench --debug ...` re-raises it, traceback and all.

Under torchrun (`torchrun --nproc-per-node N -m bench compare ...`) rank 0 runs the command and its exit code is
rank 0's; the other ranks train their part of each run (bench/distributed.py). When a rank stops on an error, the
others' collectives fail: they say "another torchrun process left the run" (exit 3), and torchrun reports the failure.

Everything that can be checked without data is checked before anything is prepared or trained: the pair, the
methods and each of their settings, the budget, the run selection, the output location, the corpus paths, the
tokenizer folder, the parent checkpoint's path, the price table, the country and the device.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys

from bench import distributed, logs, stopping
from bench.cli.commands import COMMANDS
from bench.cli.parser import apply_config_file, build_parser
from bench.errors import EXIT_CHECK_FAILED, EXIT_ENVIRONMENT, EXIT_INTERRUPTED, EXIT_OK, Stopped, exit_code_and_message

__all__ = ["build_parser", "main"]

TRAINING_COMMANDS = ("compare", "pretrain", "grow", "sweep")
"""The commands whose trainings torchrun's other ranks take part in (the rest run on rank 0 alone)."""
RERUN_COMMANDS = ("pretrain", "grow")
"""Continued by running them again as they were (a parent's pretraining continues from its checkpoint)."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(message)s")
    logging.getLogger("bench").setLevel(logging.INFO)  # one-off notices such as the first corpus extraction
    with stopping.handlers():  # SIGTERM, SIGHUP, SIGUSR1: a graceful stop (bench/stopping.py)
        return _run(argv)


def _run(argv: list[str]) -> int:
    debug = "--debug" in (argv[:argv.index("--")] if "--" in argv else argv)
    args = None
    try:
        args = apply_config_file(build_parser(), argv)
        args.argv = argv
        logs.configure("json" if args.log_json else "quiet" if args.quiet
                       else "lines" if getattr(args, "no_progress", False) else "auto")
        world = distributed.start(getattr(args, "device", "cpu"))
        if not world.leader:  # torchrun: rank 0 runs the command, this rank trains its part of each run
            if args.command in TRAINING_COMMANDS:
                from bench.runner.one_run import follow_run

                distributed.follow(follow_run)
            distributed.stop()
            return EXIT_OK
        code = COMMANDS[args.command](args)
        distributed.finish()
        distributed.stop()
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (Exception, KeyboardInterrupt, Stopped) as error:
        if debug:
            raise
        code, message = exit_code_and_message(error)
        if isinstance(error, Stopped) and not distributed.world().leader:  # rank 0 says where they stopped
            return code
        resume = getattr(args, "resume_command", None)
        if isinstance(error, Stopped) and resume is None and getattr(args, "command", None) in RERUN_COMMANDS:
            resume = shlex.join(["bench", *argv])
        if code == EXIT_INTERRUPTED or isinstance(error, Stopped):
            print(("interrupted" if code == EXIT_INTERRUPTED else message)
                  + ("; finished runs are kept. Continue with:" if resume else ""), file=sys.stderr)
            if resume:
                print(f"  {resume}", file=sys.stderr)
            return code
        print(f"bench: error: {message}", file=sys.stderr)
        if resume and code in (EXIT_ENVIRONMENT, EXIT_CHECK_FAILED):
            print(f"continue with: {resume}", file=sys.stderr)
        return code
