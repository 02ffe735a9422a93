"""Random-weight metric models written to local files, in the layouts the real weight files have.

The evaluation loads metric models only from disk; these builders write files
that the real loading code then reads (FID Inception state dict, LPIPS's two
weight files, a transformers CLIP folder, a tiny ImageReward checkpoint). Random
weights exercise the code path, not the metric's meaning.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def write_inception(path: Path, seed: int = 0) -> Path:
    """pytorch-fid-style FID Inception state dict with variance-preserving random weights."""
    from ecad_core.metrics.fid import build_fid_inception

    torch.manual_seed(seed)
    net = build_fid_inception()
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        elif isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=0.01)
    path.parent.mkdir(parents=True, exist_ok=True)
    # half precision: half the file to write; the loader copies it into float32 parameters
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}, path)
    return path


CACHE_DIR = Path(__file__).resolve().parents[2] / ".cache" / "eval-test-weights"


def cached_inception() -> Path:
    """One random FID Inception file shared by the evaluation tests (written once, atomically)."""
    path = CACHE_DIR / "fid_inception_random_v1.pth"
    if not path.is_file():
        tmp = write_inception(CACHE_DIR / f".tmp-{os.getpid()}.pth")
        os.replace(tmp, path)
    return path


def write_lpips(folder: Path, seed: int = 0) -> Path:
    """``alex.pth`` (lpips linear layers, lpips key names) and ``alexnet-owt-7be5be79.pth`` (torchvision AlexNet)."""
    from torchvision.models import alexnet

    from ecad_core.metrics.lpips import CHANNELS

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(alexnet(weights=None).state_dict(), folder / "alexnet-owt-7be5be79.pth")
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(CHANNELS)}
    torch.save(lin, folder / "alex.pth")
    return folder


def write_clip(folder: Path, seed: int = 0) -> Path:
    """A tiny transformers CLIPModel + processor (byte-level vocabulary, no merges) saved with save_pretrained."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    torch.manual_seed(seed)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    cfg = CLIPConfig(
        text_config=dict(
            small, vocab_size=len(vocab), max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1
        ),
        vision_config=dict(small, image_size=32, patch_size=8),
        projection_dim=16,
    )
    proc = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok,
    )
    CLIPModel(cfg).save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


def write_imagereward(folder: Path) -> Path:
    """A tiny ImageReward in the official layout (``ImageReward.pt``, ``med_config.json``, ``tokenizer/``);
    returns the checkpoint path. Its scores are checked against the official code in test_imagereward.py."""
    from .imagereward_fixture import write_tiny_imagereward

    return write_tiny_imagereward(folder)
