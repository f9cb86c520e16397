"""The jobs behind the command line, one module each: `compare` (a comparison into a run directory),
`parent` (pretrain a parent, or load one), `grow` (grow a checkpoint), `listing`; `prepare` holds what they
share (data, loop settings, the unit step) and `one_run` trains and records one run."""

from bench.runner.comparison import CompareConfig, compare, default_out, method_list, report
from bench.runner.grow import grow_command
from bench.runner.listing import listing
from bench.runner.parent import load_parent, pretrain, pretrain_command
from bench.runner.prepare import DataConfig, Prepared, prepare_data, scratch_step
from bench.sizes import parse_pair

__all__ = ["CompareConfig", "DataConfig", "Prepared", "compare", "default_out", "grow_command", "listing", "load_parent",
           "method_list", "parse_pair", "prepare_data", "pretrain", "pretrain_command", "report", "scratch_step"]
