"""Maximum inner-product search over unit rows that stays exact where it matters.

Up to ``exact_limit`` rows the search is exact (faiss ``IndexFlatIP``: blocked matrix products). Above it
an inverted file of 8-bit scalar-quantised codes proposes ``k * k_factor`` candidates per query, from
``nprobe`` of its ``nlist`` lists, and the candidates are re-ranked by their exact inner products with the
stored rows (faiss ``IndexRefineFlat``). Every similarity returned is therefore exact; only a neighbour
that no probed list holds can be missed, and ``nprobe`` is chosen at build time as the smallest that
finds every exact nearest neighbour of a calibration sample (``calibrate``). The sizes and the limit come
from ``benchmarks/search_scale.py`` (README, "Search at scale").
"""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np

#: rows up to which search is exact: at gate's query counts (a few thousand) exact search of this many
#: rows takes seconds on a laptop (benchmarks/search_scale.py), and an inverted file costs more to build
EXACT_LIMIT = 2_000_000
#: candidates re-ranked exactly per neighbour asked for
K_FACTOR = 8
#: queries whose exact nearest neighbours calibrate ``nprobe`` at build time
CALIBRATION_QUERIES = 1000
#: the share of the calibration queries whose exact nearest neighbour must be found
CALIBRATION_RECALL = 1.0


def lists_for(n_rows: int) -> int:
    """``nlist``: a power of two near ``4 sqrt(N)`` (faiss's guideline for IVF), at least 1."""
    return max(1, 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n_rows)))))


@dataclasses.dataclass
class NeighbourIndex:
    """``fit`` on the reference rows, ``search`` the queries: (similarities [n, k], row ids [n, k])."""

    exact_limit: int = EXACT_LIMIT
    k_factor: int = K_FACTOR
    calibration_queries: int = CALIBRATION_QUERIES
    seed: int = 0

    def fit(self, rows: np.ndarray) -> "NeighbourIndex":
        import faiss

        rows = np.ascontiguousarray(rows, dtype=np.float32)
        n, d = rows.shape
        self.n_rows_, self.dim_ = n, d
        if n <= self.exact_limit:
            self.kind_, self.nlist_, self.nprobe_ = "exact", 0, 0
            self.index_ = faiss.IndexFlatIP(d)
            self.index_.add(rows)
            return self
        self.kind_, self.nlist_ = "ivf-sq8-refined", lists_for(n)
        index = faiss.index_factory(d, f"IVF{self.nlist_},SQ8,RFlat", faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(self.seed)
        # k-means on a sample of 64 rows per list, seeded, as faiss advises (39 to 256 per centroid)
        sample = rows[np.sort(rng.choice(n, min(n, 64 * self.nlist_), replace=False))]
        faiss.extract_index_ivf(index).cp.seed = self.seed
        index.train(sample)
        index.add(rows)
        index.k_factor = self.k_factor
        self.index_ = index
        self.nprobe_ = self.calibrate(rows, rng)
        return self

    def calibrate(self, rows: np.ndarray, rng: np.random.Generator) -> int:
        """The smallest power-of-two ``nprobe`` at which the index finds, for every calibration query, its exact
        nearest neighbour. The queries are reference rows, each asking for its nearest *other* row: a draw
        from the reference's own distribution, as a novel sample is, whose neighbour is not itself."""
        import faiss

        queries = rows[rng.choice(len(rows), min(len(rows), self.calibration_queries), replace=False)]
        flat = faiss.downcast_index(self.index_.refine_index)  # the exact rows the candidates are re-ranked on
        truth = flat.search(queries, 2)[0][:, 1]
        ivf = faiss.extract_index_ivf(self.index_)
        nprobe = 1
        while True:
            ivf.nprobe = nprobe
            found = self.index_.search(queries, 2)[0][:, 1]
            if np.mean(found >= truth - 1e-6) >= CALIBRATION_RECALL or nprobe >= self.nlist_:
                return nprobe
            nprobe *= 2

    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        if self.kind_ != "exact":
            faiss.extract_index_ivf(self.index_).nprobe = self.nprobe_
        sims, ids = self.index_.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, self.n_rows_))
        return sims, ids

    @property
    def ntotal(self) -> int:
        return self.n_rows_

    def describe(self) -> dict:
        """What a report records about the search that produced its neighbours."""
        return {"kind": self.kind_, "rows": self.n_rows_, "nlist": self.nlist_, "nprobe": self.nprobe_,
                "k_factor": self.k_factor if self.kind_ != "exact" else None, "exact_limit": self.exact_limit}

    @property
    def nbytes(self) -> int:
        """Memory the index holds: the rows (exact), or the codes, ids and the rows re-ranked on (approximate)."""
        per_row = 4 * self.dim_ if self.kind_ == "exact" else self.dim_ + 8 + 4 * self.dim_
        return self.n_rows_ * per_row

    def to_bytes(self) -> np.ndarray:
        """The fitted index as bytes (for the authenticated feature cache: faiss reads only what gate wrote)."""
        import faiss

        # through a Python callback, not faiss.serialize_index: its std::vector<uint8> proxy is SWIG's, and a
        # SWIG library loaded earlier (SimpleITK) takes that type over, so the conversion fails after it
        buf = io.BytesIO()
        faiss.write_index(self.index_, faiss.PyCallbackIOWriter(buf.write))
        return np.frombuffer(buf.getvalue(), np.uint8)

    @classmethod
    def from_bytes(cls, data: np.ndarray, meta: dict) -> "NeighbourIndex":
        import faiss

        out = cls(exact_limit=int(meta["exact_limit"]), k_factor=int(meta.get("k_factor") or K_FACTOR))
        out.index_ = faiss.read_index(faiss.PyCallbackIOReader(io.BytesIO(np.asarray(data, np.uint8).tobytes()).read))
        out.kind_, out.n_rows_, out.nlist_, out.nprobe_ = meta["kind"], int(meta["rows"]), int(meta["nlist"]), \
            int(meta["nprobe"])
        out.dim_ = out.index_.d
        if out.kind_ != "exact":
            out.index_.k_factor = out.k_factor
        return out
