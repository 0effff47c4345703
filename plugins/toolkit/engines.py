"""Where feature extraction runs: in this process (``local``, the default) or on a Ray cluster (``ray``).

The Ray engine is Ray Data's ``map_batches`` over an actor pool: each actor builds one extractor from its
spec (name, checkpoint, prefilter, device) and extracts the batches it is given; a batch carries the rows'
positions, so the features are put back in order whatever order the batches finish in, and a batch that
is lost with its worker is run again by Ray (Ray Data restarts a map actor that dies and retries the batches
it held). It connects
the way Ray does: ``ray.init()`` joins the cluster named by ``RAY_ADDRESS`` when it is set, else starts one
on this machine. Ray is an optional extra (``pip install 'gate-mri[ray]'``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

Progress = Callable[[int], None]
#: images put into Ray's object store at once (bounds the driver's memory for a large set)
CHUNK_IMAGES = 4096


class Engine(Protocol):
    name: str

    def extract(self, images, batch_size: int, progress: Progress) -> dict[str, np.ndarray]: ...

    def index(self, rows: np.ndarray, exact_limit: int | None = None): ...

    def describe(self) -> dict: ...


@dataclasses.dataclass(frozen=True)
class ExtractorSpec:
    """What an actor needs to build the same extractor as this process (plain values: it is pickled)."""

    name: str
    checkpoint: str | None = None
    prefilter_sigma: float = 0.0
    device: str = "cpu"

    def build(self):
        from gate_plugins.toolkit.extractors import build_extractor

        return build_extractor(self.name, Path(self.checkpoint) if self.checkpoint else None, self.prefilter_sigma,
                               self.device)


@dataclasses.dataclass
class LocalEngine:
    """Extraction in this process, by the extractor already built."""

    extractor: object
    name: str = "local"

    def extract(self, images, batch_size: int, progress: Progress) -> dict[str, np.ndarray]:
        return self.extractor.extract(images, batch_size, progress)

    def index(self, rows: np.ndarray, exact_limit: int | None = None):
        from gate_plugins.toolkit.search import EXACT_LIMIT, NeighbourIndex

        return NeighbourIndex(exact_limit=EXACT_LIMIT if exact_limit is None else exact_limit).fit(rows)

    def describe(self) -> dict:
        return {"engine": "local"}


class _ExtractBatches:
    """A Ray Data actor: one extractor, built once, applied to batches of row positions of a chunk."""

    def __init__(self, spec: ExtractorSpec, chunk: list, layers: list[str]):
        import ray

        self.extractor, self.layers = spec.build(), layers
        # the chunk's ObjectRef arrives inside a list, so that Ray passes the reference and the actor reads
        # the array from the object store itself (zero-copy), once
        self.images = ray.get(chunk[0])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = np.asarray(batch["data"], dtype=np.int64)
        feats = self.extractor.extract(self.images[rows], max(1, len(rows)), lambda _n: None)
        return {"id": rows, **{f"layer_{k}": np.asarray(feats[layer]) for k, layer in enumerate(self.layers)}}


class _SearchShard:
    """A Ray actor holding one contiguous shard of the reference rows, indexed as this process would."""

    def __init__(self, rows: list, offset: int, exact_limit: int | None):
        import ray

        from gate_plugins.toolkit.search import EXACT_LIMIT, NeighbourIndex

        self.offset = offset
        self.index = NeighbourIndex(exact_limit=EXACT_LIMIT if exact_limit is None else exact_limit).fit(ray.get(rows[0]))

    def describe(self) -> dict:
        return self.index.describe()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sims, ids = self.index.search(queries, k)
        return sims, np.where(ids < 0, -1, ids + self.offset)


class ShardedIndex:
    """The reference rows split into ``shards`` contiguous parts, one actor each (spread over the nodes); a
    search asks every shard for its top k and merges them: the top k of the union is the top k overall."""

    def __init__(self, ray, rows: np.ndarray, shards: int, exact_limit: int | None = None):
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        self.ray, self.ntotal = ray, len(rows)
        bounds = np.linspace(0, len(rows), min(shards, max(1, len(rows))) + 1).astype(int)
        actor = ray.remote(num_cpus=0, scheduling_strategy="SPREAD")(_SearchShard)
        self.shards = [actor.remote([ray.put(rows[a:b])], int(a), exact_limit) for a, b in zip(bounds, bounds[1:])]

    def describe(self) -> dict:
        return {"kind": "sharded", "rows": self.ntotal, "shards": len(self.shards),
                "shard": self.ray.get(self.shards[0].describe.remote()) if self.shards else None}

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        ref = self.ray.put(np.ascontiguousarray(queries, dtype=np.float32))
        parts = self.ray.get([shard.search.remote(ref, k) for shard in self.shards])
        sims = np.concatenate([p[0] for p in parts], axis=1)
        ids = np.concatenate([p[1] for p in parts], axis=1)
        sims = np.where(ids < 0, -np.inf, sims)
        # by similarity, then by row: ties resolve to the lowest row whatever shard held it
        order = np.lexsort((ids, -sims), axis=1)[:, :k] if sims.size else np.zeros((len(queries), 0), np.int64)
        return np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)


@dataclasses.dataclass
class RayEngine:
    """Extraction as Ray Data ``map_batches`` over ``workers`` actors (each with a GPU when the cluster has
    them), ``CHUNK_IMAGES`` images at a time."""

    spec: ExtractorSpec
    layers: list[str]
    workers: int = 2
    name: str = "ray"

    def _connect(self):
        import ray

        if not ray.is_initialized():
            ray.init(logging_level="ERROR", log_to_driver=False)  # RAY_ADDRESS, when set, names the cluster
        return ray

    def extract(self, images, batch_size: int, progress: Progress) -> dict[str, np.ndarray]:
        ray = self._connect()
        n = len(images)
        out: dict[str, np.ndarray] = {}
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        for start in range(0, n, CHUNK_IMAGES):
            chunk = np.ascontiguousarray(images[start:min(n, start + CHUNK_IMAGES)], dtype=np.float32)
            ref = ray.put(chunk)
            # the positions are made here (no read task: on a small machine the actors may hold every CPU)
            # one block per batch, so that every actor gets work
            blocks = np.array_split(np.arange(len(chunk)), max(1, -(-len(chunk) // batch_size)))
            mapped = ray.data.from_numpy(blocks).map_batches(
                _ExtractBatches, fn_constructor_kwargs={"spec": self.spec, "chunk": [ref], "layers": self.layers},
                batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=self.workers), num_cpus=1,
                num_gpus=gpus, batch_format="numpy")
            done = np.zeros(len(chunk), bool)
            for batch in mapped.iter_batches(batch_size=None, batch_format="numpy"):
                rows = np.asarray(batch["id"], dtype=np.int64)
                for k, layer in enumerate(self.layers):
                    feats = np.asarray(batch[f"layer_{k}"])
                    if layer not in out:
                        out[layer] = np.zeros((n, feats.shape[1]), feats.dtype)
                    out[layer][start + rows] = feats
                fresh = ~done[rows]
                done[rows] = True
                progress(int(fresh.sum()))
            if not done.all():  # fail closed: a row without features would compare as zeros
                raise RuntimeError(f"the Ray engine returned features for {int(done.sum())} of {len(chunk)} images")
            del ref
        if n == 0:
            return {layer: np.zeros((0, 0), np.float32) for layer in self.layers}
        return out

    def index(self, rows: np.ndarray, exact_limit: int | None = None) -> ShardedIndex:
        """The search over ``rows``, sharded over ``workers`` actors."""
        return ShardedIndex(self._connect(), rows, self.workers, exact_limit)

    def describe(self) -> dict:
        ray = self._connect()
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        return {"engine": "ray", "ray": ray.__version__, "workers": self.workers, "nodes": len(nodes),
                "cluster_cpus": ray.cluster_resources().get("CPU", 0),
                "cluster_gpus": ray.cluster_resources().get("GPU", 0)}


def engine_problem(name: str) -> str | None:
    """What rules an engine out before anything runs (one line), or None."""
    if name == "ray":
        try:
            import ray.data  # noqa: F401
        except ImportError:
            return "compute.engine: ray needs Ray Data, which is not installed: pip install 'gate-mri[ray]'"
    return None


def build_engine(name: str, extractor, spec: ExtractorSpec, workers: int | None = None) -> Engine:
    """``local`` or ``ray``; Ray missing is one line saying what to install."""
    if name == "local":
        return LocalEngine(extractor)
    if name != "ray":
        raise ValueError(f"unknown engine {name!r} (local or ray)")
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        raise RuntimeError("engine: ray needs Ray Data: pip install 'gate-mri[ray]' (or ray[data])") from None
    return RayEngine(spec, list(extractor.layers), workers or 2)
