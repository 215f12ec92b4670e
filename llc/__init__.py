"""Local learning coefficient (LLC) estimation: samplers on one chain driver, λ̂, exact DLN values."""
from llc.aoyagi import dln_learning_coefficient
from llc.chain import ChainConfig, ChainDivergenceError
from llc.estimate import LLCResult, estimate_llc, estimate_llc_flat
from llc.samplers import SAMPLERS
from llc.sghmc import SGHMCConfig, SGNHTConfig, run_sghmc, run_sgnht
from llc.sgld import SGLDConfig, SGLDDivergenceError, run_sgld

__all__ = [
    "ChainConfig", "ChainDivergenceError", "LLCResult", "SAMPLERS", "SGHMCConfig", "SGLDConfig",
    "SGLDDivergenceError", "SGNHTConfig", "dln_learning_coefficient", "estimate_llc", "estimate_llc_flat",
    "run_sghmc", "run_sgld", "run_sgnht",
]
