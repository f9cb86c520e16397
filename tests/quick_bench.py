"""`bench` with a one-round, one-repeat calibration, for tests that start it as a process (`python tests/quick_bench.py
compare ...`, or as torchrun's script): the calibration's statistics are not what they test, and it would otherwise
take most of their time."""

from bench import calibration

calibration.ROUNDS = calibration.REPEATS = 1

from bench.cli import main  # after the calibration settings, as the tests want them

raise SystemExit(main())
