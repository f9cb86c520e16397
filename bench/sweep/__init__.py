"""`bench sweep`: where growth stops paying. One comparison per (budget, parent steps) point, each a normal run
directory, and a report of savings against budget with the break-even budget of every method.

Layout: points.py (budget specs, the plan, the point directories), run.py (planning, the time estimate, one
`runner.compare` per point), analysis.py (every point through `bench.report.analyse`; amortisation, break-even,
equal-budget quality), fit.py (the labelled power-law extrapolation), tables.py (the tables of report.md and the
terminal, breakeven.csv, extrapolated.csv), plots.py (plots/*.png), report.py (`build_sweep_report`: sweep.csv and
every file above, report.md), command.py (`add_arguments`, `run`).

Nothing is imported here: the command line imports bench.sweep.command on every `bench` invocation, so import each
name from its module (bench.sweep.report.build_sweep_report, bench.sweep.analysis.break_evens, ...).
"""
