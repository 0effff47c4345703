"""The memorization validator: Calibrated Memorization Index per candidate sample."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from gate.errors import InputError
from gate.validators import CheckContext, CheckOutput, Figure, MetricDef
from gate_plugins.memorization import figures, maths
from gate_plugins.memorization.extractors import build_extractor


class MemorizationParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    extractor: Literal["efficientnet-lite0", "scattering-j3l8", "mri-core"] = Field(
        "efficientnet-lite0", description="feature extractor (chosen by the README's benchmark)")
    checkpoint: Path | None = Field(None, description="local MRI-CORE checkpoint (extractor: mri-core)")
    prefilter_sigma: float = Field(2.0, ge=0, le=10, description="Gaussian low-pass (pixels) before features")
    covariance: Literal["ledoit_wolf", "empirical"] = Field(
        "ledoit_wolf", description="covariance behind the ZCA whitening; 'empirical' is the paper's")
    null_splits: int = Field(10, ge=1, le=100, description="random disjoint half-splits of train for the null")
    null_seed: int = Field(1234, ge=0, description="seed of the null's splits (the authors' code uses 1234)")
    mi_threshold: float = Field(3.0, allow_inf_nan=False,
                                description="a sample is flagged when its MI exceeds this z-score")


class MemorizationValidator:
    name: ClassVar[str] = "memorization"
    Params: ClassVar[type[BaseModel]] = MemorizationParams
    columns: ClassVar[tuple[str, ...]] = (
        "sample_id", "similarity", "mi", "oni", "nn_train_id", "consensus", "flagged")
    metrics: ClassVar[tuple[MetricDef, ...]] = (
        MetricDef("mi_mean", "mi", "mean", "mean Memorization Index (z-score against the train null)"),
        MetricDef("oni_mean", "oni", "mean", "mean Overfit/Novelty Index, -tanh(MI): -1 copy, +1 novel"),
        MetricDef("mi_max", "mi", "max", "largest Memorization Index of any sample"),
        MetricDef("fraction_flagged", "flagged", "mean", "share of samples whose MI exceeds mi_threshold"),
        MetricDef("similarity_mean", "similarity", "mean", "mean aggregated 1-NN cosine similarity s"),
    )

    def run(self, context: CheckContext, params: MemorizationParams) -> CheckOutput:
        train, cand = context.train, context.candidate
        if len(train) < 4:
            raise InputError(f"{train.name}: the memorization null needs at least 4 train images, got {len(train)}")
        if train.shape != cand.shape:
            raise InputError(f"candidate images are {cand.shape} but train images are {train.shape}")
        for label, imgs in (("train", train.images), ("candidate", cand.images)):
            if not np.isfinite(imgs).all():
                raise InputError(f"{label} images contain non-finite values")
        extractor = build_extractor(params.extractor, params.checkpoint, params.prefilter_sigma)
        tick = context.progress(f"memorization: {extractor.name} features", len(train) + len(cand))
        f_train = extractor.extract(train.images, context.batch_size, tick)
        f_cand = extractor.extract(cand.images, context.batch_size, tick)
        layers = list(extractor.layers)

        model = maths.MemorizationIndex(params.covariance, params.null_splits, params.null_seed)
        model.fit([f_train[k] for k in layers])
        scores = model.score([f_cand[k] for k in layers])
        nn_first = scores.nn_index[0]
        table = pd.DataFrame({
            "sample_id": list(cand.ids),
            "similarity": scores.similarity,
            "mi": scores.mi,
            "oni": scores.oni,
            "nn_train_id": [train.ids[i] for i in nn_first],
            "consensus": scores.consensus,
            "flagged": (scores.mi > params.mi_threshold).astype(int),
        })
        for k, layer in enumerate(layers):
            table[f"similarity_{layer}"] = scores.per_layer[k]

        null_mi = (model.null_ - model.mu0_) / model.sigma0_
        order = np.argsort(-scores.similarity)[:8]
        pairs = [(int(i), int(nn_first[i]), float(scores.similarity[i]), cand.ids[i], train.ids[nn_first[i]])
                 for i in order]
        return CheckOutput(
            table=table,
            provenance={
                "extractor": extractor.name,
                "extractor_layers": layers,
                "extractor_weights_sha256": extractor.weights_sha256(),
                "prefilter_sigma": params.prefilter_sigma,
            },
            diagnostics={
                "null_mu0": model.mu0_, "null_sigma0": model.sigma0_, "null_size": int(len(model.null_)),
                "null_splits": params.null_splits,
                "whitening_shrinkage": {layer: w.shrinkage for layer, w in zip(layers, model.whiteners_)},
                "train_size": len(train), "candidate_size": len(cand),
            },
            figures=[
                Figure("MI and ONI against the null", figures.histograms(scores.mi, null_mi, params.mi_threshold),
                       "Null: each train image of a random half against the other half (10 splits)."),
                Figure("Most similar candidate/train pairs",
                       figures.top_pairs(cand.images, train.images, pairs),
                       "Top row: candidate; bottom row: its nearest train image at the first layer."),
            ],
        )
