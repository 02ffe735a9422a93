"""The cache engine (ECAD's reuse semantics), its CUDA-graph mode and torch.compile boundary. Host-independent."""

from .engine import CacheEngine, RunStats, UnitTimer, signature, tree_nbytes, unit_timing
from .step0 import Step0Memo

__all__ = ["CacheEngine", "RunStats", "Step0Memo", "UnitTimer", "signature", "tree_nbytes", "unit_timing"]
