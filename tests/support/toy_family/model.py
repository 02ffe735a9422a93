"""The toy transformer both hosts' toy adapters serve: an embedding and blocks of a ``mix`` and an ``mlp`` unit."""

from __future__ import annotations

import torch


class ToyBlock(torch.nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.mix = torch.nn.Linear(width, width)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(width, 2 * width), torch.nn.GELU(), torch.nn.Linear(2 * width, width)
        )

    def forward(self, x):
        x = x + self.mix(x)
        return x + self.mlp(x)


class ToyTransformer(torch.nn.Module):
    def __init__(self, width: int = 8, depth: int = 3):
        super().__init__()
        self.config = {"_class_name": "ToyTransformer", "width": width, "depth": depth}
        self.toy_embed = torch.nn.Linear(width, width)
        self.layers = torch.nn.ModuleList(ToyBlock(width) for _ in range(depth))

    def forward(self, hidden_states, timestep=None):
        x = self.toy_embed(hidden_states)
        for blk in self.layers:
            x = blk(x)
        return x
