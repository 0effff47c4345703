"""The square canvas of dihedral matching: a 90-degree rotation of a non-square image is only defined on a
square canvas, so a non-square set is matched centred on one, at its own scale. Every validator that reads
the shared reference cache pads the same way and names the padded set by the same digest."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from gate.imageset import ImageSet


def pad_to_square(images: np.ndarray) -> np.ndarray:
    """[n, H, W] centred on a zero (background) canvas of side max(H, W)."""
    h, w = images.shape[1:]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    return np.pad(images, ((0, 0), (top, side - h - top), (left, side - w - left)))


def on_square_canvas(images: ImageSet | None) -> ImageSet | None:
    """The set padded to a square canvas (labels alike; ids and files unchanged); a square set as it is."""
    if images is None or images.shape[0] == images.shape[1]:
        return images
    labels = None if images.labels is None else pad_to_square(images.labels)
    return dataclasses.replace(images, images=pad_to_square(images.images), labels=labels)


def canvas_digest(images: ImageSet) -> str:
    """The digest that names ``images`` on the square canvas: its manifest's, marked when it was padded (the
    padded pixels are not the files' pixels, so cached features of the two must never be confused)."""
    digest = images.manifest_sha256()
    if images.shape[0] == images.shape[1]:
        return digest
    return hashlib.sha256(f"{digest}|square canvas {max(images.shape)}".encode()).hexdigest()
