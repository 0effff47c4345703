"""The default back end: a MONAI 2D UNet trained on CPU, deterministic given the seed."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from gate.errors import ValidatorError


class TimeBudgetExceeded(ValidatorError):
    """The check ran past its ``time_budget_s``: not validated (exit 3)."""


def build_unet(n_classes: int, channels: tuple[int, ...]) -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=1, out_channels=n_classes, channels=channels,
                strides=(2,) * (len(channels) - 1), num_res_units=2)


def _divisible(images: np.ndarray, channels: tuple[int, ...]) -> np.ndarray:
    """[n, H, W] padded (centred, zeros) to sizes the UNet's downsamplings divide: a 217x255 slice would
    otherwise come back from the decoder one pixel off its skip connection. MONAI's DivisiblePad."""
    from monai.transforms import DivisiblePad

    k = 2 ** (len(channels) - 1)
    if all(n % k == 0 for n in images.shape[1:]):
        return images
    return np.asarray(DivisiblePad(k=k, mode="constant")(images))  # n is the "channel" axis: H, W are padded


def _crop_back(maps: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Undo :func:`_divisible` (its symmetric pad is undone by a centred crop)."""
    if maps.shape[1:] == tuple(shape):
        return maps
    from monai.transforms import CenterSpatialCrop

    return np.asarray(CenterSpatialCrop(roi_size=shape)(maps))


def train_unet(images: np.ndarray, labels: np.ndarray, n_classes: int, *, epochs: int, batch_size: int, lr: float,
               channels: tuple[int, ...], seed: int, deadline: float | None = None,
               progress: Callable[[int], None] = lambda _n: None, device: str = "cpu") -> torch.nn.Module:
    """Train with Dice + cross-entropy and Adam. ``deadline`` (a ``time.monotonic()`` value) ends the
    run with :class:`TimeBudgetExceeded`; ``progress`` is told after each epoch. The network is built and
    initialised on the CPU (the same weights for a seed on any device), then moved to ``device``; the
    batches' order comes from a CPU generator, so only the arithmetic differs between devices."""
    from monai.losses import DiceCELoss

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = build_unet(n_classes, channels).to(device)
    x = torch.from_numpy(np.ascontiguousarray(_divisible(images, channels), dtype=np.float32))[:, None]
    y = torch.from_numpy(np.ascontiguousarray(_divisible(labels, channels), dtype=np.int64))[:, None]
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), lr)
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            b = perm[i:i + batch_size]
            opt.zero_grad()
            loss_fn(net(x[b].to(device)), y[b].to(device)).backward()
            opt.step()
            if deadline is not None and time.monotonic() > deadline:
                raise TimeBudgetExceeded(f"time budget ran out during epoch {epoch + 1} of {epochs}")
        progress(1)
    return net.eval()


def predict(net: torch.nn.Module, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    out = []
    channels = tuple(net.channels)
    device = next(net.parameters()).device
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            batch = _divisible(images[i:i + batch_size], channels)
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))[:, None]
            maps = net(x.to(device)).argmax(1).cpu().numpy().astype(np.uint8)
            out.append(_crop_back(maps, images.shape[1:]))
    return np.concatenate(out) if out else np.zeros((0, *images.shape[1:]), np.uint8)


class MonaiBackend:
    """Train on one labelled set, score per case on the test set."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device  # resolved by the validator: "cpu", "cuda" or "cuda:N"

    def fit_score(self, images, labels, test_images, test_labels, n_classes, params, seed, deadline,
                  progress) -> dict[str, np.ndarray]:
        from gate_plugins.segmentation.metrics import per_case

        try:
            net = train_unet(images, labels, n_classes, epochs=params.epochs, batch_size=params.batch_size,
                             lr=params.learning_rate, channels=tuple(params.channels), seed=seed, deadline=deadline,
                             progress=progress, device=self.device)
        except TimeBudgetExceeded as e:
            raise TimeBudgetExceeded(f"segmentation: time_budget_s = {params.time_budget_s:g} ran out ({e})") from None
        pred = predict(net, test_images)
        return {**per_case(pred, test_labels, n_classes), "prediction": pred}

    def versions(self) -> dict[str, str]:
        import monai

        return {"monai": monai.__version__, "torch": torch.__version__}
