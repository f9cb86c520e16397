"""growbench: measure what growing a transformer from a smaller pretrained one really saves."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`bench.meter` (and `bench.Meter`), imported on first use so that `import bench` stays light."""
    if name in ("meter", "Meter"):
        from bench import metering

        return getattr(metering, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
