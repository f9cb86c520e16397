"""growbench: measure what growing a transformer from a smaller pretrained one really saves."""

__version__ = "0.1.0"
