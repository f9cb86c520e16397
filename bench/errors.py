"""The exceptions that mean something to the command line; each has its exit code (see bench/cli.py)."""


class BenchError(Exception):
    """Bad input: unknown size or method, a shrinking pair, a missing corpus, a budget too small (exit 2)."""


class RunsFailed(Exception):
    """Some runs of a comparison failed after the others finished (exit 1)."""
