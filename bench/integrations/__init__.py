"""Adapters that put `bench.meter`'s bill into other training frameworks (`bench.integrations.transformers`:
a `transformers.Trainer` callback). Each imports its framework only when it is imported itself."""
