"""MRI as it arrives: NIfTI volumes and DICOM series read through MONAI, reoriented to RAS, resampled to
one spacing, sliced across one axis, their empty slices dropped (counted and named), and every slice padded
or cropped onto one grid. Registered in the ``gate.readers`` entry-point group; the core calls it for a
policy with ``spec.data.preprocess``.

Every file is bounded before its pixels are decoded, as the core's reader bounds its own: a NIfTI file by
its header (and by the size it would have once resampled), a DICOM file by its header read without pixels.
2D files (``.npy``, ``.png``, a 2D NIfTI) carry no orientation the reader could trust and no spacing: they
are taken as they are, then padded or cropped like any slice, and never dropped.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from gate.errors import InputError, LimitExceeded
from gate.imageio import (READER_SUFFIXES, ReadLimits, check_declared, check_file_size, check_image, is_label_map,
                          list_entries, nifti_header, pair_labels, read_array, sha256_file)
from gate.imageset import ImageSet, ManifestEntry
from gate.textsafe import one_line

#: a slice's foreground: voxels above this share of the volume's 99.5th percentile (robust to hot voxels)
FOREGROUND_LEVEL = 0.1
#: per-volume rows kept in the provenance (the totals always count every volume)
MAX_RECORDED_VOLUMES = 200
#: the RAS axis each slicing axis cuts across
_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}


@dataclasses.dataclass
class _Slices:
    """What one file gave: its 2D samples (and label maps) and what was done to get them."""

    ids: list[str]
    images: list[np.ndarray]
    labels: list[np.ndarray] | None
    record: dict[str, Any] | None  # None for a 2D file
    dropped: list[str]


class MriReader:
    """``read(folder, name, preprocess, grid, limits)``: the core's reader protocol (gate.imageio.read_folder)."""

    def __init__(self) -> None:
        # imported here, so that a missing imaging stack is the core's install hint (gate.imageio.image_reader)
        # and never an error blamed on the data
        import monai.transforms  # noqa: F401
        import pydicom  # noqa: F401

    def read(self, folder: Path, name: str, preprocess: Any, grid: tuple[int, int] | None,
             limits: ReadLimits) -> ImageSet:
        if not folder.is_dir():
            raise InputError(f"{one_line(folder)}: {name} folder does not exist")
        labels_dir = None
        if (folder / "images").is_dir():
            labels_dir = folder / "labels" if (folder / "labels").is_dir() else None
            folder = folder / "images"
        entries = list_entries(folder, name, limits, extra=READER_SUFFIXES)
        if not entries:
            raise InputError(f"{one_line(folder)}: {name} folder holds no images")
        label_of = pair_labels([p.name for p in entries], labels_dir, name, limits, READER_SUFFIXES) \
            if labels_dir else {}
        # a 2D file of a later set must already be on the train grid: it has no spacing to resample by
        grid_2d = tuple(grid) if grid is not None and preprocess.size is not None else None
        parts: list[_Slices] = []
        manifest: list[ManifestEntry] = []
        spent, label_spent = [0], [0]  # decoded bytes so far: images and labels each bounded as one set
        for entry in entries:
            parts.append(self._read_entry(entry, label_of.get(entry.name), preprocess, limits, spent, grid_2d,
                                          label_spent))
            manifest += _manifest(entry, limits)
            if entry.name in label_of:
                manifest += _manifest(label_of[entry.name], limits)
        ids = [i for p in parts for i in p.ids]
        images = [im for p in parts for im in p.images]
        if not images:
            raise InputError(f"{one_line(folder)}: every slice of the {name} set is empty (drop_empty: "
                             f"{preprocess.drop_empty})")
        target = _target(preprocess.size, grid, images)
        resized = sum(im.shape != tuple(target) for im in images) if target else 0
        if target:
            images = [_pad_or_crop(im, target) for im in images]
        else:
            _one_size(images, ids, name)
        labels = None
        if labels_dir is not None:
            maps = [lab for p in parts for lab in (p.labels or [])]
            labels = np.stack([_pad_or_crop(m, target) if target else m for m in maps]).astype(np.int64)
        for i, im in zip(ids, images):
            check_image(im, i)
        dropped = [d for p in parts for d in p.dropped]
        volumes = [p.record for p in parts if p.record is not None]
        record = {
            "reader": "gate_plugins.mri.reader (MONAI)",
            "settings": preprocess.model_dump(mode="json"),
            "grid": list(images[0].shape),
            "files": len(entries), "volumes": len(volumes), "slices": len(images),
            "slices_dropped": len(dropped), "dropped": dropped[:MAX_RECORDED_VOLUMES],
            "padded_or_cropped": int(resized),
            "per_volume": volumes[:MAX_RECORDED_VOLUMES],
        }
        return ImageSet(name=name, ids=tuple(ids), images=np.stack(images).astype(np.float32, copy=False),
                        manifest=tuple(manifest), labels=labels, preprocessing=record)

    def _read_entry(self, path: Path, label_path: Path | None, preprocess: Any, limits: ReadLimits,
                    spent: list[int], grid_2d: tuple[int, ...] | None, label_spent: list[int]) -> _Slices:
        kind = _kind(path, limits)
        if kind == "2d":
            arr, decoded = read_array(path, limits=limits, spent=spent[0])
            spent[0] += decoded
            arr = np.squeeze(arr) if arr.ndim > 2 else arr  # (X, Y, 1): one slice
            if grid_2d is not None and arr.ndim == 2 and arr.shape != grid_2d:
                raise InputError(f"{one_line(path)}: a 2D image of {arr.shape[0]}x{arr.shape[1]} but the train grid is "
                                 f"{grid_2d[0]}x{grid_2d[1]}; a 2D file carries no spacing to resample by, so it "
                                 "must already be on the train grid")
            if arr.ndim != 2:
                raise InputError(f"{one_line(path)}: expected a 2D image, got shape {arr.shape}")
            labels = None
            if label_path is not None:
                lab, decoded = read_array(label_path, raw=True, limits=limits, spent=label_spent[0])
                label_spent[0] += decoded
                labels = [_label_map(lab, label_path, arr.shape)]
            return _Slices([path.name], [arr], labels, None, [])
        volume, axcodes, zooms, affine = _load_volume(path, kind, preprocess, limits, spent)
        label_volume = None
        if label_path is not None:
            label_volume, _, _, label_affine = _load_volume(label_path, _kind(label_path, limits), preprocess, limits,
                                                            label_spent, label=True)
            if label_volume.shape != volume.shape:
                raise InputError(f"{one_line(label_path)}: label volume is {label_volume.shape} on the policy's grid "
                                 f"but its image is {volume.shape}")
            # the same shape is not the same place: a label stored with another affine would lie flipped or
            # shifted on its image without a word
            if not np.allclose(label_affine, affine, atol=1e-3 * max(zooms)):
                raise InputError(f"{one_line(label_path)}: its affine does not put it where its image is (labels "
                                 "must be stored on their image's grid)")
        return _slice_volume(path.name, volume, label_volume, preprocess, axcodes, zooms, label_path)


def _kind(path: Path, limits: ReadLimits) -> str:
    """"2d", "nifti" (a volume) or "dicom" (a file or a series folder), from the name and the header; a
    header that cannot be read is one clear line."""
    name = path.name.lower()
    if path.is_dir() or path.suffix.lower() in READER_SUFFIXES:
        return "dicom"
    if name.endswith((".nii", ".nii.gz")):
        try:
            shape, _ = nifti_header(path, limits)
        except (InputError, LimitExceeded):
            raise
        except Exception as exc:  # noqa: BLE001 - a corrupt header is one clear line
            raise InputError(f"{one_line(path)}: cannot read image header: {type(exc).__name__}: "
                             f"{one_line(exc)}") from None
        return "nifti" if len([n for n in shape if n > 1]) >= 3 else "2d"  # (X, Y) and (X, Y, 1): one slice
    return "2d"


def _load_volume(path: Path, kind: str, preprocess: Any, limits: ReadLimits, spent: list[int],
                 label: bool = False) -> tuple[np.ndarray, str, tuple[float, ...], np.ndarray]:
    """The volume on RAS axes at the policy's spacing, [X, Y, Z] float32 (labels: nearest, integers), with
    the orientation and spacing it was stored in, and its affine on the policy's grid. Bounded from its header
    before a voxel is decoded."""
    from monai.data import MetaTensor
    from monai.transforms import EnsureChannelFirst, Orientation, Spacing

    try:
        if kind == "nifti":
            check_file_size(path, limits)
            shape, itemsize = nifti_header(path, limits)
            shape = tuple(n for n in shape if n > 1) if len(shape) > 3 else shape
            if len(shape) != 3:
                raise InputError(f"{one_line(path)}: expected a 3D volume, got shape {shape} (one volume per file)")
            spent[0] += check_declared(path, shape, itemsize, limits, spent[0])
            from monai.data import NibabelReader

            reader = NibabelReader()
        else:
            shape, itemsize = _dicom_declared(path, limits)
            spent[0] += check_declared(path, shape, itemsize, limits, spent[0])
            from monai.data import PydicomReader  # imported only for DICOM: it logs about GPU decoders

            reader = PydicomReader(fname_regex=r"(?i).*\.dcm$" if path.is_dir() else "")
        import nibabel as nib

        # the reader itself, not LoadImage: LoadImage builds every reader MONAI has, and the GPU DICOM one
        # warns on a machine without nvImageCodec at every call
        data, meta = reader.get_data(reader.read(str(path)))
        image = EnsureChannelFirst()(MetaTensor(np.asarray(data, dtype=np.float32), meta=meta))
        if image.ndim != 4 or image.shape[0] != 1:
            raise InputError(f"{one_line(path)}: expected one 3D volume, got {tuple(image.shape)} (channels first; "
                             "a DICOM series is a sub-folder of .dcm files)")
        if kind == "dicom" and math.prod(image.shape[1:]) != math.prod(shape):
            raise InputError(f"{one_line(path)}: the DICOM series loaded as {tuple(image.shape[1:])} but its headers "
                             f"declare {shape}: some files were not read as slices of one series")
        axcodes = "".join(nib.aff2axcodes(np.asarray(image.affine, dtype=np.float64)))
        zooms = _zooms(image)
        if not all(math.isfinite(z) and z > 0 for z in zooms):
            raise InputError(f"{one_line(path)}: its affine gives voxel sizes {zooms}, not a volume's")
        image = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(image)
        if preprocess.spacing:
            out = tuple(max(1, math.ceil(n * z / preprocess.spacing)) for n, z in zip(image.shape[1:], _zooms(image)))
            # what resampling would allocate (float32, and as much again for the sampling grid), before it does
            spent[0] += check_declared(path, out, 8, limits, spent[0])
            image = Spacing(pixdim=(preprocess.spacing,) * 3, mode="nearest" if label else "bilinear")(image)
        arr = np.asarray(image.array if hasattr(image, "array") else image)[0]
        affine = np.asarray(image.affine, dtype=np.float64)
    except (InputError, LimitExceeded):
        raise
    except Exception as exc:  # noqa: BLE001 - every reader failure becomes one clear line
        raise InputError(f"{one_line(path)}: cannot read volume: {type(exc).__name__}: {one_line(exc)}") from None
    if label:
        if not is_label_map(arr):
            raise InputError(f"{one_line(path)}: a label map must hold non-negative integers (class indices)")
        return np.round(arr).astype(np.int64), axcodes, zooms, affine
    return arr.astype(np.float32, copy=False), axcodes, zooms, affine


def _zooms(image) -> tuple[float, ...]:
    """Voxel sizes along the array's axes, from a MetaTensor's affine."""
    affine = np.asarray(image.affine, dtype=np.float64)
    return tuple(float(z) for z in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))


def _dicom_declared(path: Path, limits: ReadLimits) -> tuple[tuple[int, ...], int]:
    """Shape and item size of a DICOM file or series from its headers alone (pixels never read here)."""
    import pydicom

    files, others = [], []
    if path.is_dir():
        import os

        with os.scandir(path) as found:
            for entry in found:
                ok = entry.is_file(follow_symlinks=False) and Path(entry.name).suffix.lower() in READER_SUFFIXES
                (files if ok else others).append(Path(entry.path))
                if len(files) > limits.max_files:
                    raise LimitExceeded(f"{one_line(path)}: DICOM series of more than {limits.max_files} files, "
                                        "the limit")
        files.sort()
        if others:
            raise InputError(f"{one_line(sorted(others)[0])}: not a .dcm file (a regular file, not a link) in the "
                             f"DICOM series folder {one_line(path.name)}")
    else:
        files = [path]
    for f in files:
        check_file_size(f, limits)
    if not files:
        raise InputError(f"{one_line(path)}: an empty folder (a DICOM series folder holds .dcm files)")
    if len(files) > limits.max_files:
        raise LimitExceeded(f"{one_line(path)}: DICOM series of more than {limits.max_files} files, the limit")
    rows = cols = frames = 0
    itemsize = 1
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            r, c = int(ds.Rows), int(ds.Columns)
            n = int(getattr(ds, "NumberOfFrames", 1) or 1)
            itemsize = max(itemsize, int(ds.BitsAllocated) // 8 * int(getattr(ds, "SamplesPerPixel", 1) or 1))
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{one_line(f)}: not a readable DICOM image ({type(exc).__name__}: {one_line(exc)})") \
                from None
        rows, cols, frames = max(rows, r), max(cols, c), frames + n
        if rows * cols * frames > limits.max_volume_voxels:
            break  # check_declared names the limit
    return (rows, cols, frames), max(itemsize, 1)


def _slice_volume(name: str, volume: np.ndarray, labels: np.ndarray | None, preprocess: Any, axcodes: str,
                  zooms: tuple[float, ...], label_path: Path | None) -> _Slices:
    """Slices across the policy's axis, in radiological view (rows from anterior or superior down), the
    empty ones dropped by their foreground fraction."""
    axis = _AXES[preprocess.axis]
    bad = ~np.isfinite(volume)
    if bad.any():
        raise InputError(f"{one_line(name)}: {int(bad.sum())} non-finite voxels (NaN or inf) once resampled")
    level = FOREGROUND_LEVEL * float(np.percentile(volume, 99.5)) if volume.size else 0.0
    ids, images, maps, dropped = [], [], [], []
    for z in range(volume.shape[axis]):
        img = np.take(volume, z, axis=axis).T[::-1]
        sid = f"{name}#{z}"
        if preprocess.drop_empty and float((img > level).mean()) < preprocess.drop_empty:
            dropped.append(sid)
            continue
        ids.append(sid)
        images.append(np.ascontiguousarray(img))
        if labels is not None:
            maps.append(np.ascontiguousarray(np.take(labels, z, axis=axis).T[::-1]))
    record = {"file": name, "stored_axcodes": axcodes, "stored_spacing_mm": [round(z, 4) for z in zooms],
              "ras_shape": list(volume.shape), "slices": len(ids), "dropped": len(dropped)}
    return _Slices(ids, images, maps if labels is not None else None, record, dropped)


def _target(size: Any, grid: tuple[int, int] | None, images: list[np.ndarray]) -> tuple[int, int] | None:
    """The grid of this set: the policy's [H, W]; with ``size: train``, the train set's (``grid``, from the
    core, for every set after the train set) or, for the train set itself, its largest slice."""
    if isinstance(size, tuple):
        return tuple(size)  # type: ignore[return-value]
    if size == "train":
        if grid is not None:
            return tuple(grid)  # type: ignore[return-value]
        return max(im.shape[0] for im in images), max(im.shape[1] for im in images)
    return None


def _pad_or_crop(img: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """Centred, at the image's own scale (no interpolation): MONAI's ResizeWithPadOrCrop, padding with zeros
    (MRI background; a label map's background class)."""
    if img.shape == tuple(target):
        return img
    from monai.transforms import ResizeWithPadOrCrop

    out = ResizeWithPadOrCrop(spatial_size=target, mode="constant")(img[None])
    return np.asarray(out.array if hasattr(out, "array") else out)[0].astype(img.dtype, copy=False)


def _one_size(images: list[np.ndarray], ids: list[str], name: str) -> None:
    first = images[0].shape
    odd = next((i for i, im in enumerate(images) if im.shape != first), None)
    if odd is not None:
        raise InputError(f"{one_line(ids[odd])}: shape {images[odd].shape} differs from {one_line(ids[0])} {first}; "
                         f"all {name} slices must have one size (or set spec.data.preprocess.size)")


def _label_map(lab: np.ndarray, path: Path, shape: tuple[int, ...]) -> np.ndarray:
    if lab.ndim != 2 or lab.shape != shape or not is_label_map(lab):
        raise InputError(f"{one_line(path)}: a label map must be non-negative integers of its image's size {shape}")
    return lab.astype(np.int64)


def _manifest(path: Path, limits: ReadLimits) -> list[ManifestEntry]:
    if path.is_dir():
        return [ManifestEntry(str(f), sha256_file(f)) for f in sorted(path.iterdir()) if f.is_file()]
    return [ManifestEntry(str(path), sha256_file(path))]
