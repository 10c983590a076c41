"""The SMT model: `SMTModel(config)`, and analytic size estimates autotune uses before building
one (`estimate_memory`, `estimate_flops`, `count_params` work from the config alone)."""
from smt.model.estimate import MemoryEstimate, count_params, estimate_flops, estimate_memory
from smt.model.smt import Memory, SMTModel

__all__ = ["Memory", "MemoryEstimate", "SMTModel", "count_params", "estimate_flops", "estimate_memory"]
