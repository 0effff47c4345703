"""An ordered, validated set of 2D images with the provenance of every file."""

from __future__ import annotations

import dataclasses

import numpy as np


def content_digest(images: np.ndarray) -> str:
    """sha256 of the pixel data as float32: the identity of images that never were files."""
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(images, dtype=np.float32).tobytes()).hexdigest()


@dataclasses.dataclass(frozen=True)
class ManifestEntry:
    """One file behind an image set: its path and content hash."""

    path: str
    sha256: str


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """``images`` is float32 [n, H, W]; ``ids`` names each image (``FILE`` or ``FILE#Z``); ``labels``,
    when the set is labelled, holds one integer label map per image, [n, H, W]."""

    name: str
    ids: tuple[str, ...]
    images: np.ndarray
    manifest: tuple[ManifestEntry, ...] = ()
    labels: np.ndarray | None = None
    #: what reading did to the files (spec.data.preprocess: grid, slices dropped, files padded): provenance
    preprocessing: dict | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 3 or len(self.ids) != len(self.images):
            raise ValueError(f"{self.name}: images must be [n, H, W] with one id per image")
        if self.labels is not None and (self.labels.shape != self.images.shape
                                        or not np.issubdtype(self.labels.dtype, np.integer)):
            raise ValueError(f"{self.name}: labels must be integer maps shaped like the images")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def manifest_sha256(self) -> str:
        """One digest for the whole set: of its files (independent of order), or, for images that
        never were files (a generator's samples), of the pixel data itself."""
        import hashlib

        if not self.manifest:
            if self.labels is None:
                return content_digest(self.images)
            return hashlib.sha256((content_digest(self.images) + content_digest(self.labels)).encode()).hexdigest()
        h = hashlib.sha256()
        for entry in sorted(self.manifest, key=lambda e: e.path):
            h.update(f"{entry.path}\0{entry.sha256}\n".encode())
        if self.preprocessing is not None:
            # the same files read onto another grid (axis, spacing, size, drop_empty, reader) are other
            # images: cached features of one must never stand for the other
            import json

            how = {k: self.preprocessing.get(k) for k in ("reader", "settings", "grid", "slices")}
            h.update(json.dumps(how, sort_keys=True).encode())
        return h.hexdigest()
