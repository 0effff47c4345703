"""Train two real, tiny MONAI diffusion models on the shipped MRI slices: one that memorizes, one that
generalizes (as far as 96 slices allow), for the memorization gate to be shown on.

- ``memorizer``: 8 train slices (of subjects 1-4), trained long on nothing else, so that its samples
  come back as those slices.
- ``generalizer``: all 96 train slices (subjects 1-4 x 24), a fixed small step budget and early
  stopping on the denoising loss of held-out subjects 101-102 (fixed noise and timesteps, so the
  curve is not noise); the best checkpoint is kept.

Both are ``monai.networks.nets.DiffusionModelUNet`` trained with a ``DDPMScheduler`` (epsilon
prediction, 1000 steps) at 32 x 32 (the slices are downsampled with antialiasing; the wrapper in
``diffusion_generator.py`` samples with DDIM and upsamples to 128 x 128). Weights are stored as
float16 beside the config that rebuilds the net. Seeded, single-threaded, CPU: about 7 minutes
for both (memorizer 2500 steps ~3.5 min, generalizer ~950 steps ~2.5-3 min, on a shared 2-core box).

Why 32 x 32 and these budgets (measured): at 48 and 64 px, smaller nets of about this one's cost per
step ((8, 16, 32) and (8, 16, 32, 32)) left the memorizer's samples at median NCC 0.95 and 0.92 from
their slices after 2500 and 2000 steps; this net at 32 px reaches the resolution's ceiling (median NCC
0.986, against 0.985 for a train slice's own 32 px round trip). 1500 steps leave it at ~0.96.

    python benchmarks/trained_generators/train.py [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method.*")  # gate's base class

from diffusion_generator import NET_CONFIG, SCHEDULER_CONFIG, build_net, to_model_space  # noqa: E402

TRAIN_SUBJECTS = range(1, 5)       # the tests' train set: subjects 1-4 x 24 slices
SLICES_PER_SUBJECT = 24
VAL_SUBJECTS = range(101, 103)     # early stopping only: neither train, nor the tests' holdout (201-204)
RESOLUTION = 32
#: the memorizer's 8 slices: levels spread over the brain, two per train subject (neighbouring levels of
#: one subject look alike, so a random pick could hold near-twins)
MEMORIZER_LEVELS = (1, 4, 7, 10, 13, 16, 19, 22)


def memorizer_indices() -> np.ndarray:
    """The rows of ``subject_slices(TRAIN_SUBJECTS, 24)`` the memorizer is trained on."""
    n_subjects = len(TRAIN_SUBJECTS)
    return np.array([(k % n_subjects) * SLICES_PER_SUBJECT + z for k, z in enumerate(MEMORIZER_LEVELS)])


def denoising_loss(net, scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    noisy = scheduler.add_noise(x0, noise, t)
    return F.mse_loss(net(noisy, t), noise)


def train_model(name: str, x: torch.Tensor, *, steps: int, batch: int, lr: float, seed: int,
                val: torch.Tensor | None = None, eval_every: int = 50, patience: int = 4,
                ema_decay: float = 0.0, log_every: int = 100) -> tuple[torch.nn.Module, dict]:
    """Train a fresh net on ``x`` ([n, 1, R, R] in [-1, 1]). With ``val``: early stopping on its fixed-noise
    denoising loss, keeping the best (EMA) weights. Returns the net and a summary row."""
    from monai.networks.schedulers import DDPMScheduler

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = build_net(NET_CONFIG)
    ema = copy.deepcopy(net).eval() if ema_decay else None
    scheduler = DDPMScheduler(**SCHEDULER_CONFIG)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    sched_lr = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    n = len(x)
    if val is not None:  # the same noise and timesteps at every evaluation: 4 draws per validation slice
        vgen = torch.Generator().manual_seed(seed + 1)
        vx = val.repeat(4, 1, 1, 1)
        vnoise = torch.randn(vx.shape, generator=vgen)
        vt = torch.randint(0, scheduler.num_train_timesteps, (len(vx),), generator=vgen)
    best, best_state, best_step, bad, history = float("inf"), None, 0, 0, []
    t0 = time.perf_counter()
    running = []
    stopped = "budget"
    step = 0
    for step in range(1, steps + 1):
        net.train()
        idx = torch.randperm(n, generator=gen)[:batch] if batch < n else torch.arange(n)
        x0 = x[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.num_train_timesteps, (len(x0),), generator=gen)
        loss = denoising_loss(net, scheduler, x0, noise, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched_lr.step()
        if ema is not None:
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), net.parameters()):
                    pe.lerp_(p, 1 - ema_decay)
        running.append(loss.item())
        if step % log_every == 0:
            print(f"  {name} step {step:5d}  loss {np.mean(running[-log_every:]):.4f}  {time.perf_counter() - t0:6.1f} s",
                  flush=True)
        if val is not None and step % eval_every == 0:
            judged = ema if ema is not None else net
            judged.eval()
            with torch.no_grad():
                v = sum(float(denoising_loss(judged, scheduler, vx[i:i + 64], vnoise[i:i + 64], vt[i:i + 64]))
                        * len(vx[i:i + 64]) for i in range(0, len(vx), 64)) / len(vx)
            history.append((step, v))
            mark = ""
            if v < best - 1e-5:
                best, best_step, bad, mark = v, step, 0, " *"
                best_state = copy.deepcopy(judged.state_dict())
            else:
                bad += 1
            print(f"  {name} step {step:5d}  val loss {v:.4f}{mark}", flush=True)
            if bad >= patience:
                stopped = f"early stop (no val improvement in {patience * eval_every} steps)"
                break
    seconds = time.perf_counter() - t0
    final = ema if ema is not None else net
    if best_state is not None:
        final.load_state_dict(best_state)
    final.eval()
    row = {"model": name, "slices": n, "steps": step, "epochs": step * min(batch, n) / n, "seconds": seconds,
           "final_train_loss": float(np.mean(running[-50:])), "best_val_loss": best if val is not None else None,
           "best_step": best_step if val is not None else step, "stopped": stopped, "history": history}
    return final, row


def save(net: torch.nn.Module, path: Path, meta: dict) -> int:
    state = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in net.state_dict().items()}
    torch.save({"format": 1, "net_config": NET_CONFIG, "scheduler_config": SCHEDULER_CONFIG,
                "resolution": RESOLUTION, "state_dict": state, "meta": meta}, path)
    return path.stat().st_size


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "weights")
    ap.add_argument("--quick", action="store_true", help="a few steps only (a smoke test; the weights memorize nothing)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from gate_plugins.mri.subjects import subject_slices

    t0 = time.perf_counter()
    train, train_ids = subject_slices(TRAIN_SUBJECTS, SLICES_PER_SUBJECT)
    val, _ = subject_slices(VAL_SUBJECTS, SLICES_PER_SUBJECT)
    print(f"data: {len(train)} train slices, {len(val)} validation slices ({time.perf_counter() - t0:.1f} s)")
    x_train, x_val = to_model_space(train, RESOLUTION), to_model_space(val, RESOLUTION)
    pick = memorizer_indices()
    print("memorizer slices:", ", ".join(train_ids[i] for i in pick))
    scale = 0.05 if args.quick else 1.0
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    mem, row = train_model("memorizer", x_train[pick], steps=max(20, int(2500 * scale)), batch=8, lr=2e-3, seed=0,
                           log_every=250 if not args.quick else 10)
    row["bytes"] = save(mem, args.out / "memorizer.pt",
                        {"train_subjects": list(TRAIN_SUBJECTS), "slices_per_subject": SLICES_PER_SUBJECT,
                         "train_rows": pick.tolist(), "train_ids": [train_ids[i] for i in pick],
                         **{k: v for k, v in row.items() if k != "history"}})
    rows.append(row)
    gen, row = train_model("generalizer", x_train, steps=max(20, int(1200 * scale)), batch=16, lr=1e-3, seed=1,
                           val=x_val, eval_every=50 if not args.quick else 10, patience=4, ema_decay=0.99,
                           log_every=100 if not args.quick else 10)
    row["bytes"] = save(gen, args.out / "generalizer.pt",
                        {"train_subjects": list(TRAIN_SUBJECTS), "slices_per_subject": SLICES_PER_SUBJECT,
                         "train_rows": list(range(len(train))), "val_subjects": list(VAL_SUBJECTS),
                         **row})
    rows.append(row)
    print()
    print("| model | train slices | steps | epochs | time (s) | final train loss | best val loss (step) | stopped | "
          "weights |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        val_cell = "-" if r["best_val_loss"] is None else f"{r['best_val_loss']:.4f} ({r['best_step']})"
        print(f"| {r['model']} | {r['slices']} | {r['steps']} | {r['epochs']:.0f} | {r['seconds']:.0f} | "
              f"{r['final_train_loss']:.4f} | {val_cell} | {r['stopped']} | {r['bytes'] / 1024:.0f} KiB |")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; weights in {args.out}")


if __name__ == "__main__":
    main()
