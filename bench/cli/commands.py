"""What each command does with its parsed arguments: build the settings, call the job, print the outcome."""

from __future__ import annotations

import shlex
from pathlib import Path

from bench import logs
from bench.cli.inputs import (
    check_data_inputs,
    check_output_location,
    parse_budget,
    parse_method_args,
    parse_only,
    parse_prices,
)
from bench.errors import EXIT_CHECK_FAILED, EXIT_OK, BenchError


def _compare_config(args):
    """The comparison's settings, every one checked before anything is prepared or trained."""
    from bench import runner
    from bench.collectors.energy import carbon_intensity
    from bench.runner.prepare import check_micro_batch

    pair = _compare_pair(args.pair, args.small_from)
    methods = runner.method_list(args.methods)
    if not methods:
        raise BenchError(f"--methods {args.methods!r} names no method")
    method_args = parse_method_args(args.method_arg)
    unit, value, steps = parse_budget(args)
    only = parse_only(args.only, methods, args.seeds) if args.only is not None else None
    out = args.out or runner.default_out(pair)
    check_output_location(out, "--out")
    prices = check_data_inputs(args)
    carbon_intensity(args.country, prices.get("carbon"))
    check_micro_batch(args.micro_batch, pair.defaults.batch_size)
    data = None
    if args.corpus or args.tokenizer:
        defaults = pair.defaults
        data = runner.DataConfig(args.corpus, args.tokenizer, defaults.seq_len, defaults.batch_size,
                                 defaults.vocab_size)
    optional = {"eval_points": args.eval_points, "checkpoint_every": args.checkpoint_every}
    return runner.CompareConfig(
        pair=pair if args.small_from else args.pair, methods=methods, method_args=method_args, budget_unit=unit, budget_value=value,
        budget_steps=steps, parent_steps=args.parent_steps, seeds=args.seeds, quick=args.quick, data=data,
        small_from=args.small_from, out=out, resume=args.resume, device=args.device, dtype=args.dtype, lr=args.lr,
        price_file=args.price_file, prices=parse_prices(args.price), country=args.country,
        progress_bar=True, fresh=args.fresh, repair=args.repair, prepare_only=args.prepare,
        only=only, keep_checkpoints=args.keep_checkpoints, micro_batch=args.micro_batch,
        **{key: given for key, given in optional.items() if given is not None},
    )


def _compare_pair(text: str, small_from: str | None):
    """The pair of `--pair`; with `--small-from`, checked against the checkpoint's config (read, no weights): its
    family, its shape (SMALL, or read from it for `:LARGE`), and its position table against the run's sequences."""
    from bench.runner.parent import open_parent
    from bench.sizes import parent_pair, parse_pair

    if not small_from:
        return parse_pair(text)
    checkpoint = open_parent(small_from)
    pair = parent_pair(text, checkpoint.config, small_from)
    checkpoint.check_positions(pair.defaults.seq_len)
    return pair


def _resume_command(args, out: Path) -> str:
    """The command that continues this comparison: the same one, in the same run directory, with --resume."""
    tokens = [token for token in args.argv if token not in ("--fresh", "--debug")]
    if args.out is None:
        tokens += ["--out", str(out)]
    if not args.resume:
        tokens.append("--resume")
    return shlex.join(["bench", *tokens])


def _unfinished_runs(out: Path, methods: list[str], seeds: int) -> list[str]:
    from bench.records import FINISHED, RunDir, run_name

    names = [run_name(method, seed) for method in methods for seed in range(seeds)]
    return [name for name in names if (RunDir(out / "runs" / name).status() or {}).get("state") not in FINISHED]


def _result(line: str, text: str | None = None, **fields) -> None:
    """The command's outcome: its text (a report) and a last line; one `result` event with --log-json; with
    --quiet the last line only."""
    if logs.mode() == "json":
        logs.event("result", **{key: str(value) for key, value in fields.items()})
        return
    if text is not None and logs.mode() != "quiet":
        print(text)
    print(line)


def _compare(args) -> int:
    from bench import runner

    config = _compare_config(args)
    args.resume_command = _resume_command(args, config.out)
    out = runner.compare(config, echo=logs.echo)
    if config.prepare_only:
        _result(f"results: {out}/ (prepared; no run trained yet: continue with --resume, or --only RUN,... per job)",
                run_dir=out, state="prepared")
        return EXIT_OK
    if config.only is not None:
        missing = _unfinished_runs(out, config.methods, config.seeds)
        if missing:
            _result(f"results: {out}/ (no report yet: {len(missing)} run(s) not finished: {', '.join(missing)}; "
                    f"then: bench report {out})", run_dir=out, state="incomplete", unfinished=",".join(missing))
            return EXIT_OK
    report = runner.report(out)
    _result(f"results: {out}/ (report: {out / 'report.md'})", report.text, run_dir=out, report=out / "report.md")
    return EXIT_OK


def _pretrain(args) -> int:
    from bench import runner
    from bench.runner.prepare import check_micro_batch
    from bench.sizes import defaults_for, get_size

    size = get_size(args.size)
    check_micro_batch(args.micro_batch, defaults_for(size).batch_size)
    if args.out is not None:
        check_output_location(args.out, "--out")
    check_data_inputs(args)
    folder = runner.pretrain_command(args.size, args.steps, args.out, args.corpus, args.tokenizer, args.device,
                                     args.dtype, args.lr, True, micro_batch=args.micro_batch)
    _result(f"parent: {folder / 'model'} (curve and bill in {folder}/)", parent=folder / "model")
    return EXIT_OK


def _report(args) -> int:
    from bench import runner

    if args.run_dir.is_dir():
        check_output_location(args.run_dir, "report: run directory")
    report = runner.report(args.run_dir, args.target)
    _result(f"report: {args.run_dir / 'report.md'}", report.text, report=args.run_dir / "report.md")
    return EXIT_OK


def _check(args) -> int:
    from bench.check import check

    result = check(args.run_dir, args.baseline, allow_incomplete=args.allow_incomplete)
    _result(f"check: {'passed' if result.ok else 'FAILED'}", result.text, ok=result.ok, failures=len(result.failures))
    return EXIT_OK if result.ok else EXIT_CHECK_FAILED


def _baseline(args) -> int:
    from bench.check import write_baseline

    check_output_location(args.out, "--out", folder=False)
    write_baseline(args.run_dir, args.out, allow_incomplete=args.allow_incomplete, reproductions=args.reproduction)
    _result(f"baseline: {args.out}", baseline=args.out)
    return EXIT_OK


def _list(args) -> int:
    from bench import runner

    print(runner.listing())
    return EXIT_OK


def _grow(args) -> int:
    from bench import runner
    from bench.methods import check_method_args, make_method
    from bench.runner.prepare import check_micro_batch
    from bench.sizes import defaults_for, get_size

    method_args = parse_method_args(args.method_arg)
    check_method_args(method_args, [args.method], "the --method")
    make_method(args.method, method_args.get(args.method))
    check_micro_batch(args.micro_batch, defaults_for(get_size(args.to)).batch_size)
    check_output_location(args.out, "--out")
    prices = check_data_inputs(args)
    out = runner.grow_command(args.method, args.source, args.to, args.out, method_args, args.seed, args.corpus,
                              args.tokenizer, args.device, args.dtype, True, prices=prices,
                              micro_batch=args.micro_batch)
    _result(f"grown checkpoint: {out}", checkpoint=out)
    return EXIT_OK


def _sweep(args) -> int:
    from bench.sweep.command import run

    return run(args, echo=logs.echo)


COMMANDS = {"compare": _compare, "pretrain": _pretrain, "report": _report, "check": _check,
            "baseline": _baseline, "list": _list, "grow": _grow, "sweep": _sweep}


