"""The cost of sampling the candidate in isolation against sampling it in the validating process.

One generator (the demo's new-subject renderer, paired, 128x128) is logged to a sqlite registry,
downloaded once, and sampled 64 images at a time: in process (the old design: unpickled beside the
verdict and the key), in a separate process with a clean environment (`process`), and under
bubblewrap (`bubblewrap`: namespaces, read-only model copy). Prints seconds per 64 samples (median of
``--repeats``), and how much of it is the sampler's start (import MLflow and unpickle) rather than
the generator's own work.

    python benchmarks/sandbox.py [--repeats 3] [--samples 64]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--samples", type=int, default=64)
    args = ap.parse_args()

    import mlflow

    from gate.generator import assemble_samples, log_generator, sample_generator
    from gate.registry import download_model, resolve_model
    from gate.sandbox import BUBBLEWRAP, PROCESS, SamplingPlan, SandboxLimits, probe_isolation, sample_in_sandbox
    from gate_plugins.mri.generators import NovelSubjectGenerator

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        mv, _ = log_generator(NovelSubjectGenerator(), "bench", tracking_uri=uri)
        model_dir = download_model(resolve_model(f"models:/bench/{mv.version}", uri), uri, tmp / "dl")
        plan = SamplingPlan("paired", args.samples, 0, 16)
        tiny = SamplingPlan("paired", 1, 0, 1)
        limits = SandboxLimits(timeout_s=600, threads=2)

        def in_process(p: SamplingPlan):
            model = mlflow.pyfunc.load_model(str(model_dir))
            return sample_generator(model, p.n, p.seed, p.batch_size, mode=p.mode)

        def isolated(level: str):
            def draw(p: SamplingPlan):
                return assemble_samples(sample_in_sandbox(model_dir, p, limits, level), p)
            return draw

        ways = [("in process (old: no isolation)", in_process), ("separate process (`process`)", isolated(PROCESS))]
        if probe_isolation() == BUBBLEWRAP:
            ways.append(("bubblewrap (`bubblewrap`)", isolated(BUBBLEWRAP)))
        rows = []
        for name, draw in ways:
            full, start = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                s = draw(plan)
                full.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                draw(tiny)
                start.append(time.perf_counter() - t0)
                assert len(s) == args.samples
            rows.append((name, statistics.median(full), statistics.median(start)))
    base = rows[0][1]
    print(f"| sampling {args.samples} samples (128x128, paired) | seconds | vs in process | one-sample call "
          f"(start-up) |")
    print("|---|---|---|---|")
    for name, full, start in rows:
        print(f"| {name} | {full:.2f} | {full - base:+.2f} s | {start:.2f} |")


if __name__ == "__main__":
    main()
