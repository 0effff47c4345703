"""The webhook service end to end: a real ``mlflow server`` sending signed webhooks to ``gate serve``.

Measures, on this machine: (1) ten versions created at once: the time until every one carries its
signed result, for 1 and 2 workers; (2) the window during which a protected alias set by hand on a
failed version still resolves to it before the service puts it back (the guard plugin has none);
(3) the cost of receiving one delivery (signature, durable queue, audit line, both fsync'ed).

    python benchmarks/webhook_service.py [--policy P] [--versions 10] [--workers 1 2]

The default policy is the memorization check alone on the demo data (64 samples), so that the
numbers speak of the service rather than of the validators; give ``--policy policies/default.yaml``
for the full check (its train/holdout are the demo's, built with ``gate demo``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

MODEL = "bench-gen"
SECRET = "benchmark-secret"


def write_policy(path: Path, train: Path, holdout: Path) -> Path:
    path.write_text(f"""apiVersion: gate/v1
kind: ValidationPolicy
metadata: {{name: webhook-benchmark, owner: benchmarks}}
spec:
  candidate: {{n_samples: 64, seed: 0, batch_size: 16}}
  data: {{train: {train}, holdout: {holdout}}}
  checks:
    - id: memorization
      validator: memorization
      rules: [{{metric: fraction_flagged, lte: 0.05, severity: block}}]
""")
    return path


def wait_for(predicate, timeout_s: float, what: str, step: float = 0.2):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise TimeoutError(f"{what} after {timeout_s} s")


def register_at_once(client, name: str, sources: list) -> dict[str, str]:
    """Copies of the sources as new versions of ``name``, all at once through the REST API: version → kind."""
    with concurrent.futures.ThreadPoolExecutor(len(sources)) as pool:
        created = list(pool.map(lambda mv: client.copy_model_version(f"models:/{mv.name}/{mv.version}", name),
                                sources))
    return {str(mv.version): mv.tags["kind"] for mv in created}


def run_batch(root: Path, uri: str, client, policy: Path, key: Path, sources: list, workers: int,
              extras: bool) -> dict:
    from gate.local_server import LocalGateService

    name = f"{MODEL}-w{workers}"
    service = LocalGateService(root / f"service-w{workers}", uri, policy, key, SECRET, workers=workers,
                               model_names=(name,))
    service.start()
    hook = client.create_webhook(name=f"gate-w{workers}", url=service.webhook_url, secret=SECRET,
                                 events=["model_version.created", "model_version_alias.created"])
    time.sleep(1.5)  # MLFLOW_WEBHOOK_CACHE_TTL
    try:
        client.create_registered_model(name)
        t0 = time.time()
        kinds = register_at_once(client, name, sources)
        finished = wait_for(lambda: len(service.events("validation.finished")) == len(kinds) and
                            service.events("validation.finished"), 1800, "validations")
        wall = time.time() - t0
        latency = [dt_seconds(e["time"]) - t0 for e in finished]
        per_job = [e["data"]["seconds"] for e in finished]
        wrong = [e for e in finished if (e["data"]["verdict"] == "pass") != (kinds[e["data"]["version"]] == "novel")]
        window = alias_window(client, service, name, kinds) if extras else None
        deliveries = delivery_cost(service) if extras else None
        return {"workers": workers, "versions": len(kinds), "wall": wall, "p50": statistics.median(latency),
                "max": max(latency), "job": statistics.median(per_job), "wrong": len(wrong), "window": window,
                "delivery": deliveries}
    finally:
        client.delete_webhook(hook.webhook_id)
        service.stop()


def dt_seconds(iso: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(iso).timestamp()


def alias_window(client, service, name: str, kinds: dict[str, str], repeats: int = 5) -> list[float]:
    """Seconds during which @champion still resolved to a failed version after it was set by hand."""
    passing = next(v for v, k in kinds.items() if k == "novel")
    failing = [v for v, k in kinds.items() if k != "novel"]
    client.set_registered_model_alias(name, "champion", passing)
    wait_for(lambda: service.events("alias.allowed", version=passing), 60, "the approved holder")
    windows = []
    for i in range(repeats):
        bad = failing[i % len(failing)]
        client.set_registered_model_alias(name, "champion", bad)
        t0 = time.time()
        wait_for(lambda: str(client.get_model_version_by_alias(name, "champion").version) != bad, 60,
                 "the alias to move back", step=0.02)
        windows.append(time.time() - t0)
        time.sleep(0.5)  # let the revert's own delivery be checked before the next round
    return windows


def delivery_cost(service, n: int = 200) -> float:
    """Milliseconds per signed delivery received, recorded and audited (sequential)."""
    from gate.serve.signature import sign

    t0 = time.time()
    for i in range(n):
        body = json.dumps({"entity": "model_version_tag", "action": "set",
                           "data": {"name": "other", "version": "1", "key": "k", "value": str(i)}}).encode()
        ts, did = str(int(time.time())), f"bench-{i}-{os.getpid()}"
        status = service.post({"Content-Type": "application/json", "X-MLflow-Delivery-Id": did,
                               "X-MLflow-Timestamp": ts, "X-MLflow-Signature": sign(SECRET, did, ts, body)}, body)
        assert status == 202, status
    return (time.time() - t0) / n * 1000


def main(args: argparse.Namespace) -> None:
    import mlflow

    from gate import attestation as A
    from gate.generator import log_generator
    from gate.local_server import local_mlflow_server, webhook_delivery_env
    from gate_plugins.mri.demo_data import build_demo_data
    from gate_plugins.mri.generators import CopyingGenerator, NovelSubjectGenerator

    with tempfile.TemporaryDirectory(prefix="gate-webhook-bench-") as tmp:
        root = Path(tmp)
        paths = build_demo_data(root / "data")
        policy = args.policy or write_policy(root / "policy.yaml", paths["train"], paths["holdout"])
        private, _ = A.generate_keypair()
        (root / "gate.key").write_bytes(private)
        (root / "mlflow").mkdir()
        with local_mlflow_server(root / "mlflow", env=webhook_delivery_env()) as uri:
            client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
            novel, _ = log_generator(NovelSubjectGenerator(), "sources", tracking_uri=uri, tags={"kind": "novel"})
            copier, _ = log_generator(CopyingGenerator(), "sources", tracking_uri=uri, tags={"kind": "copier"},
                                      artifacts={"train_slices": str(paths["train_slices"]),
                                                 "train_labels": str(paths["train_labels"])})
            sources = [novel, copier] * (args.versions // 2) + [novel] * (args.versions % 2)
            rows = [run_batch(root, uri, client, policy, root / "gate.key", sources, w, w == args.workers[-1])
                    for w in args.workers]
    print(f"\n{args.versions} versions created at once; {os.cpu_count()} CPU cores; policy: "
          f"{args.policy or 'memorization only, 64 samples, demo data'}\n")
    print("| workers | all validated | latency p50 | latency max | one validation (median) | wrong verdicts |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['wall']:.1f} s | {r['p50']:.1f} s | {r['max']:.1f} s | {r['job']:.1f} s | "
              f"{r['wrong']} |")
    last = rows[-1]
    w = last["window"]
    print(f"\n@champion set by hand on a failed version, put back by the service: window median "
          f"{statistics.median(w) * 1000:.0f} ms, max {max(w) * 1000:.0f} ms over {len(w)} tries (the guard plugin: 0)")
    print(f"receiving one signed delivery (verify, queue, audit; fsync'ed): {last['delivery']:.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=Path, default=None)
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    main(parser.parse_args())
