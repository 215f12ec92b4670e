"""Local learning coefficient (LLC) estimation: SGLD sampler, λ̂, exact DLN values."""
from llc.aoyagi import dln_learning_coefficient
from llc.estimate import LLCResult, estimate_llc, estimate_llc_flat
from llc.sgld import SGLDConfig, SGLDDivergenceError, run_sgld

__all__ = [
    "LLCResult", "SGLDConfig", "SGLDDivergenceError", "dln_learning_coefficient",
    "estimate_llc", "estimate_llc_flat", "run_sgld",
]
