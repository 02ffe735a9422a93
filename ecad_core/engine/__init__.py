"""The cache engine (ECAD's reuse semantics), its CUDA-graph mode and torch.compile boundary. Host-independent."""

from .engine import CacheEngine, RunStats, UnitTimer, signature, tree_nbytes, unit_timing

__all__ = ["CacheEngine", "RunStats", "UnitTimer", "signature", "tree_nbytes", "unit_timing"]
