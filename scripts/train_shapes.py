"""Train the shapes test models (bench/trained.py) and write bench/weights/shapes-{family}.safetensors.

Deterministic: seeded data, initial weights and noise, single-threaded torch. About 3 min of CPU time per model.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/train_shapes.py pixart flux
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import trained


def train(family: str, steps: int, batch_size: int, lr: float, seed: int = 0, log_every: int = 200):
    torch.set_num_threads(1)
    model = trained.build(family).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    t0, avg = time.perf_counter(), None
    for i in range(steps):
        x0, caps = trained.batch(batch_size, rng)
        text = trained.encode(caps)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.sigmoid(torch.randn(batch_size, generator=gen))  # logit-normal: mid times weigh most
        xt = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise
        loss = torch.nn.functional.mse_loss(trained.velocity(model, family, xt, t, text), noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        v = loss.item()
        avg = v if avg is None else 0.98 * avg + 0.02 * v
        if (i + 1) % log_every == 0:
            print(f"{family} step {i + 1}/{steps} loss {avg:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return model.eval(), {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "final_loss": avg,
                          "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("families", nargs="+", choices=trained.FAMILIES)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch-size", type=int, default=24)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--out-dir", default=str(trained.WEIGHTS))
    a = ap.parse_args(argv)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for fam in a.families:
        model, info = train(fam, a.steps, a.batch_size, a.lr)
        imgs = trained.sample(model, fam, trained.HELD_OUT, list(range(len(trained.HELD_OUT))), 20)
        info["held_out_match"] = trained.fraction_matching(imgs, trained.HELD_OUT)
        path = out / f"shapes-{fam}.safetensors"
        trained.save(model, fam, path, info)
        print(f"{fam}: wrote {path} ({path.stat().st_size / 1e6:.2f} MB): {info}", flush=True)


if __name__ == "__main__":
    main()
