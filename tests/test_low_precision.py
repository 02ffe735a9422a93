"""The block re-statements in fp16 and bf16, the dtypes users run.

In fp32 a matmul rounds the same whatever its input's memory layout, so a re-statement that changes a layout
passes fp32 tests and could still fail its bit-for-bit first-use check on a user's GPU (a contiguous input
takes the fused-bias ``addmm``, a strided one ``matmul`` + add). On the CPU fp16 and bf16 linears are
layout-sensitive the same way, so these runs (random biases, as in a real checkpoint) stand in for the GPU:
all-recompute must equal no cache, and the pack must equal the module-output ceiling, bit for bit.
(ComfyUI's PixArt in fp16: tests/test_comfy_pixart_block.py.)
"""

from __future__ import annotations

import pytest
import torch

from bench import bench_comfy, bench_diffusers

DTYPES = ["bf16", "fp16"]


def _bit_identical(variants: dict) -> None:
    for name, v in variants.items():
        if "diff_vs_ref" in v:
            assert v["diff_vs_ref"] == 0.0, f"{name} differs from {v['ref']} by {v['diff_vs_ref']}"
    assert any(n.startswith(("engine ", "pack ")) for n in variants)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_cpu_stands_in_for_the_gpu_here(dtype):
    # The premise of this file: if this torch build rounds both layouts alike, the tests below lose their power.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 96, 64, generator=g).to(dtype).transpose(1, 2)  # a strided view, as ComfyUI's PixArt has
    w, b = torch.randn(128, 96, generator=g).to(dtype), torch.randn(128, generator=g).to(dtype)
    assert not torch.equal(torch.nn.functional.linear(x, w, b), torch.nn.functional.linear(x.contiguous(), w, b))


@pytest.mark.parametrize("dtype", DTYPES)
def test_comfy_flux_restatement_is_bit_identical_in_low_precision(comfy_dir, dtype):
    res = bench_comfy.main(
        [
            "--tiny",
            "--device",
            "cpu",
            "--variant",
            "flux",
            "--res",
            "64",
            "--steps",
            "3",
            "--rounds",
            "1",
            "--dtype",
            dtype,
            "--presets",
            "flux-dev-1024-fast,flux-dev-256-faster",
        ]
    )
    _bit_identical(res["variants"])
    assert res["variants"]["pack flux-dev-256-faster"]["stats"]["reused"] > 0


@pytest.mark.parametrize(
    "model,presets",
    [
        ("pixart-alpha", "pixart-alpha-256-fast,pixart-alpha-256-fastest"),
        ("flux-dev", "flux-dev-1024-fast,flux-dev-256-faster"),
    ],
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_diffusers_restatements_are_bit_identical_in_low_precision(model, presets, dtype):
    res = bench_diffusers.main(
        [
            "--tiny",
            "--device",
            "cpu",
            "--model",
            model,
            "--res",
            "64",
            "--steps",
            "3",
            "--rounds",
            "1",
            "--dtype",
            dtype,
            "--presets",
            presets,
        ]
    )
    _bit_identical(res["variants"])
