"""The one exception type that means "the user gave bad input" (exit code 2, one line on stderr)."""


class BenchError(Exception):
    """Bad input: unknown size or method, a shrinking pair, a missing corpus, a budget too small."""
