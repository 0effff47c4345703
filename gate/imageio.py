"""Reading folders of images into an :class:`ImageSet`, checking every file on entry.

A labelled folder holds ``images/`` and ``labels/`` with the same file names; each label file is an
integer map (class indices, 0 = background) of its image's size.

One file is one sample: a 2D ``.npy``, a ``.png`` (grey or RGB, converted to grey), or a NIfTI file
(``.nii``/``.nii.gz``) whose 2D image is one sample and whose 3D volume is split into slices along its
last axis, with ids ``FILE#Z``. Values are kept as they are (float32); consumers normalise as they need.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from gate.errors import InputError
from gate.imageset import ImageSet, ManifestEntry

SUFFIXES = (".npy", ".png", ".nii", ".nii.gz")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_one(path: Path, raw: bool = False) -> np.ndarray:
    """The file's array, as float32 (PNG scaled to [0, 1]) or, with ``raw``, as stored (label maps)."""
    kind = _suffix(path)
    try:
        if kind == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif kind == ".png":
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                mode_max = {"I;16": 65535.0, "I": 65535.0, "F": 1.0}.get(im.mode, 255.0)
                if im.mode not in ("L", "I;16", "I", "F"):
                    im = im.convert("L")
                arr = np.asarray(im) if raw else np.asarray(im, dtype=np.float32) / mode_max
        else:
            import nibabel as nib

            arr = np.asarray(nib.load(str(path)).dataobj)
            arr = np.squeeze(arr) if arr.ndim > 3 else arr
    except Exception as exc:  # noqa: BLE001 - every reader failure becomes one clear line
        raise InputError(f"{path}: cannot read image: {type(exc).__name__}: {exc}") from None
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f"{path}: expected real numbers, found dtype {arr.dtype}")
    return arr if raw else arr.astype(np.float32, copy=False)


def read_image_folder(folder: Path | str, name: str) -> ImageSet:
    """All supported files directly in ``folder`` (sorted by name) as one checked image set; a folder
    with ``images/`` (and ``labels/``) inside is read as a labelled set."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: {name} folder does not exist")
    if (folder / "images").is_dir():
        images = read_image_folder(folder / "images", name)
        if not (folder / "labels").is_dir():
            return images
        return _with_labels(images, folder / "labels", name)
    files = sorted(p for p in folder.iterdir() if p.is_file() and _suffix(p) in SUFFIXES)
    if not files:
        raise InputError(f"{folder}: {name} folder holds no images ({', '.join(SUFFIXES)})")
    ids: list[str] = []
    images: list[np.ndarray] = []
    manifest: list[ManifestEntry] = []
    for path in files:
        arr = _read_one(path)
        if arr.ndim == 3 and _suffix(path) in (".nii", ".nii.gz"):
            slices = [(f"{path.name}#{z}", arr[..., z]) for z in range(arr.shape[-1])]
            labels = [f"{path}#{z}" for z in range(arr.shape[-1])]
        elif arr.ndim == 2:
            slices, labels = [(path.name, arr)], [str(path)]
        else:
            raise InputError(f"{path}: expected a 2D image (or a 3D NIfTI volume), got shape {arr.shape}")
        for (sid, img), label in zip(slices, labels):
            check_image(img, label)
            ids.append(sid)
            images.append(img)
        manifest.append(ManifestEntry(str(path), sha256_file(path)))
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        first = images[0].shape
        odd = next(i for i, im in enumerate(images) if im.shape != first)
        raise InputError(f"{folder}/{ids[odd]}: shape {images[odd].shape} differs from {ids[0]} {first}; "
                         f"all {name} images must have one size")
    return ImageSet(name=name, ids=tuple(ids), images=np.stack(images), manifest=tuple(manifest))


def _with_labels(images: ImageSet, folder: Path, name: str) -> ImageSet:
    """Attach the label maps in ``folder`` (same file names as the images) to ``images``."""
    by_name = {p.name: p for p in folder.iterdir() if p.is_file() and _suffix(p) in SUFFIXES}
    image_files = [Path(e.path) for e in images.manifest]
    missing = [p.name for p in image_files if p.name not in by_name]
    if missing:
        raise InputError(f"{folder}: no label file for {len(missing)} {name} image(s), e.g. {missing[0]} "
                         "(labels/ must hold a file of the same name for each image)")
    extra = sorted(set(by_name) - {p.name for p in image_files})
    if extra:
        raise InputError(f"{folder}/{extra[0]}: a label file without an image in {folder.parent / 'images'}")
    maps: list[np.ndarray] = []
    manifest = list(images.manifest)
    for img_path in image_files:
        path = by_name[img_path.name]
        arr = _read_one(path, raw=True)
        arr = np.squeeze(arr) if arr.ndim > 3 else arr
        slices = [arr[..., z] for z in range(arr.shape[-1])] if arr.ndim == 3 else [arr]
        for z, lab in enumerate(slices):
            label = f"{path}#{z}" if arr.ndim == 3 else str(path)
            if not is_label_map(lab):
                raise InputError(f"{label}: a label map must hold non-negative integers (class indices)")
            maps.append(lab.astype(np.int64))
        manifest.append(ManifestEntry(str(path), sha256_file(path)))
    if len(maps) != len(images) or any(m.shape != images.shape for m in maps):
        odd = next((i for i, m in enumerate(maps) if m.shape != images.shape), len(maps) - 1)
        raise InputError(f"{folder}: label map for {images.ids[min(odd, len(images) - 1)]} is "
                         f"{maps[odd].shape if maps else ()} but the images are {images.shape}")
    return ImageSet(name=name, ids=images.ids, images=images.images, manifest=tuple(manifest),
                    labels=np.stack(maps).astype(np.int64))


def is_label_map(arr: np.ndarray) -> bool:
    """Whether ``arr`` holds only non-negative integers (class indices), whatever its dtype."""
    return bool(np.isfinite(arr).all() and (arr == np.round(arr)).all() and (arr >= 0).all())


def check_image(img: np.ndarray, label: str) -> None:
    """``label`` names the image in the error: a path, ``PATH#Z`` or a generated sample id."""
    if img.ndim != 2:
        raise InputError(f"{label}: expected a 2D image, got shape {img.shape}")
    if min(img.shape) < 8:
        raise InputError(f"{label}: image of shape {img.shape} is too small (at least 8x8)")
    bad = ~np.isfinite(img)
    if bad.any():
        raise InputError(f"{label}: {int(bad.sum())} non-finite values (NaN or inf)")


def check_same_size(reference: ImageSet, other: ImageSet) -> None:
    if reference.shape != other.shape:
        raise InputError(f"{other.name} images are {other.shape[0]}x{other.shape[1]} but {reference.name} "
                         f"images are {reference.shape[0]}x{reference.shape[1]}; all sets must have one size")
