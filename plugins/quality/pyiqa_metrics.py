"""pyiqa's no-reference metrics, through the optional extra ``gate-mri[pyiqa]``.

pyiqa is PolyForm-Noncommercial licensed and needs torchvision (hence torch 2.14.1), so it is never a
hard dependency and is imported only when a policy asks for one of its metrics. Only PIQE and entropy
run from the wheel alone; NIQE and BRISQUE need parameter files that pyiqa would download, so here
they need a local path (``pyiqa_weights``), and asking for them without one is a policy error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gate.errors import InputError

# metric -> what its local weights file must hold (None: runs from the wheel alone)
SUPPORTED: dict[str, str | None] = {
    "piqe": None,
    "entropy": None,
    "niqe": "a MATLAB .mat with mu_prisparam (1x36) and cov_prisparam (36x36); `gate fit-niqe` makes one "
            "from your real slices",
    "brisque": "a torch file holding (sv_coef, sv), BRISQUE's SVR weights (trained on opinion scores, "
               "so they cannot be fitted from unlabelled MRI)",
}
INSTALL_HINT = ("pyiqa is an optional extra (PolyForm-Noncommercial licence, needs torchvision): install it in its "
                "own environment with `pip install torch==2.14.1 torchvision==0.29.1` then "
                "`pip install 'gate-mri[pyiqa]'`")


def missing_weights(metrics: tuple[str, ...], weights: dict[str, Path]) -> list[str]:
    """Messages for the metrics asked for that need a weights file and have none."""
    return [f"pyiqa metric {m!r} needs a local weights file (gate never downloads): set "
            f"params.pyiqa_weights.{m} to {SUPPORTED[m]}" for m in metrics if SUPPORTED[m] and m not in weights]


def _pyiqa():
    try:
        import pyiqa
    except ImportError as e:
        raise InputError(f"params.pyiqa asks for pyiqa metrics but pyiqa cannot be imported ({e}): {INSTALL_HINT}") from e
    return pyiqa


class PyiqaScorer:
    """Scores [n, H, W] images in [0, 1] with each requested pyiqa metric, batch by batch on the CPU."""

    def __init__(self, metrics: tuple[str, ...], weights: dict[str, Path], batch_size: int = 32,
                 niqe_block: int = 32):
        problems = missing_weights(metrics, weights)
        if problems:
            raise InputError(problems[0])
        pyiqa = _pyiqa()
        self.batch_size = batch_size
        self.niqe_block = niqe_block
        self.weights = {m: Path(p) for m, p in weights.items() if m in metrics}
        self.models = {}
        for m in metrics:
            path = weights.get(m)
            if path is not None and not Path(path).is_file():
                raise InputError(f"params.pyiqa_weights.{m}: {path} is not a file")
            kwargs = {"pretrained_model_path": str(path)} if path is not None else {}
            try:
                self.models[m] = pyiqa.create_metric(m, device="cpu", as_loss=False, **kwargs)
            except Exception as e:  # noqa: BLE001 - pyiqa's own errors name no input; ours does
                raise InputError(f"pyiqa metric {m!r} could not be created from {path or 'the wheel'}: "
                                 f"{type(e).__name__}: {e}") from e

    @property
    def columns(self) -> list[str]:
        return [f"pyiqa_{m}" for m in self.models]

    def provenance(self) -> dict[str, object]:
        import pyiqa

        from gate.imageio import sha256_file

        return {"pyiqa_version": getattr(pyiqa, "__version__", "unknown"),
                "pyiqa_weights_sha256": {m: sha256_file(Path(p)) for m, p in self.weights.items()}}

    def score(self, images: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        out: dict[str, list[np.ndarray]] = {c: [] for c in self.columns}
        with torch.no_grad():
            for i in range(0, len(images), self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(images[i:i + self.batch_size], dtype=np.float32))
                x = x[:, None].clamp(0, 1).repeat(1, 3, 1, 1)  # pyiqa's metrics take RGB in [0, 1]
                for m, model in self.models.items():
                    score = self._niqe(model, x) if m == "niqe" else model(x)
                    out[f"pyiqa_{m}"].append(score.detach().double().reshape(-1).numpy())
        return {c: np.concatenate(v) if v else np.zeros(0) for c, v in out.items()}


    def _niqe(self, model, x):
        """pyiqa's NIQE with the fitted parameters but blocks of ``niqe_block`` px: its default 96 px
        block leaves a 128 px slice a single block, which makes the score meaningless."""
        from pyiqa.archs.func_util import diff_round
        from pyiqa.archs.niqe_arch import niqe

        net = model.net
        gray = diff_round(x[:, :1] * 255.0).double()
        n = len(gray)
        return niqe(gray, net.mu_pris_param.to(gray).repeat(n, 1), net.cov_pris_param.to(gray).repeat(n, 1, 1),
                    self.niqe_block, self.niqe_block)


def fit_niqe_params(images: np.ndarray, out: Path, block: int = 32) -> int:
    """Fit NIQE's pristine model with pyiqa's own feature code on real slices (background-free blocks of
    ``block`` px at two scales) and write the ``.mat`` that ``pyiqa_weights.niqe`` takes. Returns the
    number of blocks used."""
    _pyiqa()
    import scipy.io
    import torch
    from pyiqa.archs.func_util import normalize_img_with_gauss
    from pyiqa.archs.niqe_arch import compute_feature
    from pyiqa.matlab_utils import blockproc, imresize

    img = torch.from_numpy(np.asarray(images, dtype=np.float64))[:, None] * 255.0
    feats = []
    for scale in (1, 2):
        feats.append(blockproc(normalize_img_with_gauss(img, padding="replicate"), [block // scale] * 2,
                               fun=compute_feature))
        if scale == 1:
            img = imresize(img / 255.0, scale=0.5, antialiasing=True) * 255.0
    f = torch.cat(feats, -1).reshape(-1, 36).numpy()
    f = f[np.isfinite(f).all(1)]
    if len(f) < 40:
        raise InputError(f"only {len(f)} usable {block}-px blocks to fit NIQE: need at least 40 (more slices)")
    out.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(out, {"mu_prisparam": f.mean(0)[None], "cov_prisparam": np.cov(f, rowvar=False)})
    return len(f)
