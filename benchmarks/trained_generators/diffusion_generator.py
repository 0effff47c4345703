"""A trained MONAI diffusion model behind gate's generator contract.

``DiffusionGenerator`` is an unconditional :class:`gate.generator.ImageGenerator`: ``generate(n, seed)``
draws ``n`` images with ``monai.networks.schedulers.DDIMScheduler`` from a
``monai.networks.nets.DiffusionModelUNet`` trained at 32 x 32 (see ``train.py``), upsamples them
bilinearly to 128 x 128 and clips them to [0, 1]. All randomness (the starting noise, and the noise
of each step) comes from one ``torch.Generator`` seeded with ``seed``: the same ``(n, seed)`` gives the
same images.

Sampler settings, as measured on the shipped weights (``measure.py``): DDIM's deterministic form
(eta 0) leaves these tiny nets' errors in the images (grey, speckled backgrounds, three times the
background level; fewer of the memorizer's samples within NCC 0.97 of a training slice); its
stochastic form (eta 1) corrects them as DDPM sampling does. 50 steps rather than 20 bring the
memorizer's copies closer still (the detector's mean MI over three seeds -0.25 -> 0.16) and leave
the generalizer's samples less smooth (about a quarter fewer of them flagged by the detector); 50
steps of 16 images take about 2-4 s on one CPU thread.

Its weights come from the MLflow artifact ``weights`` (``load_context``), or from a file
(:meth:`DiffusionGenerator.from_file`) in process. This module is not installed, so
:func:`gate.generator.log_generator` pickles the class by value; it needs only torch and monai in
the sampler's environment.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gate.generator import ImageGenerator

#: the tiny UNet both shipped models use (~270 k parameters, no attention)
NET_CONFIG = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "channels": (16, 32, 32),
              "attention_levels": (False, False, False), "num_res_blocks": 1, "norm_num_groups": 8}
#: DDPM training schedule (the DDIM sampler is built with the same one)
SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "schedule": "linear_beta"}
OUTPUT_SIZE = 128


def build_net(config: dict):
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet(**config)


def to_model_space(images: np.ndarray, resolution: int):
    """[n, H, W] in [0, 1] -> torch [n, 1, r, r] in [-1, 1] (antialiased bilinear downsampling)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 1) * 2 - 1


def load_checkpoint(path: str | Path):
    """The net (float32, eval mode) and the checkpoint dict written by ``train.py``."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    config = dict(ckpt["net_config"])
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    net = build_net(config)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()})
    return net.eval(), ckpt


class DiffusionGenerator(ImageGenerator):
    """Samples a trained diffusion UNet by DDIM: ``steps`` inference steps, ``eta`` (0 deterministic DDIM,
    1 its stochastic form), ``batch`` images at a time, ``threads`` torch threads while sampling."""

    def __init__(self, steps: int = 50, eta: float = 1.0, batch: int = 32, threads: int = 1):
        self.steps, self.eta, self.batch, self.threads = int(steps), float(eta), int(batch), int(threads)
        self._net = None
        self._ckpt = None

    def __getstate__(self):  # the net is rebuilt from the artifact, never pickled with the model
        state = dict(self.__dict__)
        state["_net"] = state["_ckpt"] = None
        return state

    @classmethod
    def from_file(cls, path: str | Path, **kwargs) -> "DiffusionGenerator":
        gen = cls(**kwargs)
        gen._load(path)
        return gen

    def load_context(self, context):
        self._load(context.artifacts["weights"])

    def _load(self, path) -> None:
        self._net, ckpt = load_checkpoint(path)
        self._ckpt = {k: v for k, v in ckpt.items() if k != "state_dict"}

    @property
    def resolution(self) -> int:
        return int(self._ckpt["resolution"])

    def generate(self, n: int, seed: int) -> np.ndarray:
        import torch

        if self._net is None:
            raise RuntimeError("no weights loaded: log with artifacts={'weights': ...} or use from_file")
        n = int(n)
        if n <= 0:
            return np.zeros((0, OUTPUT_SIZE, OUTPUT_SIZE), np.float32)
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            # self.device is where gate asks it to sample (spec.candidate.device); the random stream is the
            # device's own, so the same (n, seed) gives the same images on the same kind of device
            device = torch.device(self.device)
            self._net.to(device)
            g = torch.Generator(device=device).manual_seed(int(seed))
            r = self.resolution
            noise = torch.randn((n, 1, r, r), generator=g, device=device)  # then each step's noise (eta > 0)
            with torch.inference_mode():
                out = torch.cat([self._sample(noise[i:i + self.batch], g) for i in range(0, n, self.batch)])
            return out[:, 0].cpu().numpy().astype(np.float32)
        finally:
            torch.set_num_threads(threads)

    def timesteps(self, scheduler):
        """An evenly spaced grid, 999, 979, ..., 19 for 50 of 1000 steps, whose last step lands on the clean
        image: ``DDIMScheduler.step`` goes from ``t`` to ``t - T // steps``, while ``set_timesteps``
        spaces its grid by ``(T - 1) / (steps - 1)``; with that grid the two disagree at every step
        and the samples come out noisier (measured: background 0.08 instead of 0.06 at eta 0)."""
        import torch

        scheduler.set_timesteps(self.steps)  # sets num_inference_steps, which step() reads
        stride = scheduler.num_train_timesteps // self.steps
        return torch.arange(self.steps - 1, -1, -1) * stride + stride - 1

    def _sample(self, x, generator):
        import torch
        import torch.nn.functional as F
        from monai.networks.schedulers import DDIMScheduler

        scheduler = DDIMScheduler(**self._ckpt["scheduler_config"], clip_sample=True)
        for t in self.timesteps(scheduler):
            eps = self._net(x, torch.full((len(x),), int(t), dtype=torch.long, device=x.device))
            x, _ = scheduler.step(eps, int(t), x, eta=self.eta, generator=generator)
        img = (x.clamp(-1, 1) + 1) / 2
        img = F.interpolate(img, size=(OUTPUT_SIZE, OUTPUT_SIZE), mode="bilinear", align_corners=False)
        return img.clamp(0, 1)
