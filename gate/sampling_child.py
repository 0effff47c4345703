"""The only gate code that runs beside candidate code: inside the sandbox, load the generator from a
read-only local copy of its artifacts, draw the batches the plan asks for, and stream each raw output
back as one ``.npy`` record on a private file descriptor (no pickle, in either direction).

It holds nothing worth stealing: no key, no secret, no state, no network. Everything it sends back is
checked again on the trusted side (:mod:`gate.sandbox`), so a generator that replaces this module's
functions can only send wrong arrays, which the trusted side refuses or scores.

Usage (by :func:`gate.sandbox.sample_in_sandbox` only): ``python -I -m gate.sampling_child INPUT MODEL``
where ``INPUT`` holds ``plan.json`` (and ``labels.npy`` for a conditional generator).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _protocol_stream():
    """Keep the real stdout for the protocol and send everything else written to fd 1 (the generator's
    own prints, MLflow's warnings) to stderr, so that nothing but records reaches the trusted side."""
    proto = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return proto


def main(argv: list[str]) -> int:
    proto = _protocol_stream()
    input_dir, model_dir = Path(argv[0]), Path(argv[1])
    asked = json.loads((input_dir / "plan.json").read_text(encoding="utf-8"))

    import warnings

    import numpy as np

    warnings.filterwarnings("ignore")  # MLflow's dependency and type-hint warnings say nothing about the model
    import mlflow.pyfunc

    from gate.generator import draw_batch
    from gate.sandbox import SamplingPlan

    model = mlflow.pyfunc.load_model(str(model_dir))
    plan = SamplingPlan(**asked)
    labels = np.load(input_dir / "labels.npy", allow_pickle=False) if plan.mode == "conditional" else None
    for b, start, k in plan.spans():
        try:
            out = draw_batch(model, plan, b, start, k, labels)
            arr = np.asarray(out)
            if arr.dtype == object:
                raise TypeError(f"the generator returned {type(out).__name__} of objects, not numbers")
        except Exception as exc:  # noqa: BLE001 - reported as the generator's failure on this batch
            print(f"gate-sampler: batch {b}: {type(exc).__name__}: {str(exc)[:400]}", file=sys.stderr)
            return 1
        np.lib.format.write_array(proto, np.ascontiguousarray(arr), allow_pickle=False)
    proto.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
