"""Reading folders of images into an :class:`ImageSet`, checking every file on entry.

A labelled folder holds ``images/`` and ``labels/`` with the same file names; each label file is an
integer map (class indices, 0 = background) of its image's size.

One file is one sample: a 2D ``.npy``, a ``.png`` (grey or RGB, converted to grey), or a NIfTI file
(``.nii``/``.nii.gz``) whose 2D image is one sample and whose 3D volume is split into slices along its
last axis, with ids ``FILE#Z``. Values are kept as they are (float32); consumers normalise as they need.

A folder may be hostile (a candidate's samples): every file is bounded by :class:`ReadLimits` from what it
declares (its size on disk, the ``.npy`` header, the NIfTI header, the PNG header) before its pixel data is
decoded or decompressed, and a folder by its file count and the decoded bytes of all its files.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from gate.errors import InputError, LimitExceeded
from gate.imageset import ImageSet, ManifestEntry
from gate.textsafe import one_line

SUFFIXES = (".npy", ".png", ".nii", ".nii.gz")
#: read only by an image-reader plugin (spec.data.preprocess): DICOM files, and sub-folders of them (a series)
READER_SUFFIXES = (".dcm",)
READER_GROUP = "gate.readers"


@dataclasses.dataclass(frozen=True)
class ReadLimits:
    """What reading one folder may cost. The defaults admit real MRI with room to spare (a 512x512x512
    float64 volume, 8192x8192 slices, 100 000 files) and refuse what only a bomb needs."""

    #: one file on disk (an uncompressed 512x512x512 float32 NIfTI is 512 MiB)
    max_file_bytes: int = 2**30
    #: one 2D image (a .png, a 2D .npy or NIfTI), in pixels
    max_image_pixels: int = 8192 * 8192
    #: one volume (a 3D or 4D NIfTI, any .npy of more than 2 dimensions), in voxels: 512x512x1024
    max_volume_voxels: int = 2**28
    #: one file's array once decompressed and decoded, in bytes, as its header declares it
    max_decoded_bytes: int = 2**30
    #: supported image files in one folder (or listed by one manifest)
    max_files: int = 1_000_000
    #: the decoded bytes of all of one folder's files together (past ``in_memory_bytes`` they are on disk)
    max_set_bytes: int = 64 * 2**30
    #: a set's images are held in memory up to this many bytes; a larger set is written, as it is read, to an
    #: unlinked temporary file and mapped, so that reading a cohort holds one file in memory, not the set
    in_memory_bytes: int = 2**30
    #: one manifest file (a list of image paths, one per line)
    max_manifest_bytes: int = 256 * 2**20
    #: where a NIfTI file's data may start (its header extensions sit before it, and are read whole)
    max_nifti_offset: int = 16 * 2**20


DEFAULT_LIMITS = ReadLimits()


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _npy_header(path: Path) -> tuple[tuple[int, ...], int]:
    """Shape and item size from a ``.npy`` header (never a pickle: object dtypes are refused)."""
    from numpy.lib import format as npy

    with open(path, "rb") as f:
        version = npy.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = npy.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = npy.read_array_header_2_0(f)
        else:
            raise InputError(f"{one_line(path)}: unsupported .npy format version {version}")
    if dtype.hasobject:
        raise InputError(f"{one_line(path)}: .npy holds Python objects (a pickle), not numbers")
    return tuple(int(n) for n in shape), dtype.itemsize


def nifti_header(path: Path, limits: ReadLimits) -> tuple[tuple[int, ...], int]:
    """Shape and item size from the fixed part of a NIfTI-1/2 header: a few hundred bytes, read (and, for
    .nii.gz, decompressed) alone, before nibabel reads the extensions up to the data offset it declares."""
    import nibabel as nib

    opener = gzip.open if _suffix(path) == ".nii.gz" else open
    with opener(path, "rb") as f:
        raw = f.read(540)
    sizes = {int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big")}
    klass = nib.Nifti1Header if 348 in sizes else nib.Nifti2Header if 540 in sizes else None
    if klass is None or len(raw) < klass.template_dtype.itemsize:
        raise InputError(f"{one_line(path)}: not a NIfTI-1 or NIfTI-2 file (bad header size)")
    header = klass(raw[:klass.template_dtype.itemsize])
    offset = float(header["vox_offset"])
    if not offset <= limits.max_nifti_offset:
        raise LimitExceeded(f"{one_line(path)}: NIfTI data offset {offset:.0f} is over the limit of "
                            f"{limits.max_nifti_offset} bytes")
    return tuple(int(n) for n in header.get_data_shape()), header.get_data_dtype().itemsize


def _png_header(im) -> tuple[tuple[int, ...], int]:
    """Shape and decoded bytes per pixel from an opened (not loaded) PIL image."""
    per_band = {"1": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I": 4, "F": 4}.get(im.mode, 1)
    width, height = im.size
    return (height, width), per_band * len(im.getbands())


def check_file_size(path: Path, limits: ReadLimits) -> None:
    """Refuse a file larger on disk than ``limits.max_file_bytes``, before any of it is read."""
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        raise LimitExceeded(f"{one_line(path)}: file is {size} bytes, over the limit of {limits.max_file_bytes}")


def check_declared(path: Path, shape: tuple[int, ...], itemsize: int, limits: ReadLimits, spent: int = 0) -> int:
    """Refuse what a header declares past the limits, before anything is decoded; the decoded bytes.
    ``spent``: the decoded bytes of the files of the same set read before this one."""
    count = math.prod(shape)
    if len(shape) <= 2 and count > limits.max_image_pixels:
        raise LimitExceeded(f"{one_line(path)}: image declares {count} pixels {_dims(shape)}, over the limit of "
                            f"{limits.max_image_pixels}")
    if len(shape) > 2 and count > limits.max_volume_voxels:
        raise LimitExceeded(f"{one_line(path)}: volume declares {count} voxels {_dims(shape)}, over the limit of "
                            f"{limits.max_volume_voxels}")
    decoded = count * itemsize
    if decoded > limits.max_decoded_bytes:
        raise LimitExceeded(f"{one_line(path)}: declares {decoded} bytes once decoded {_dims(shape)}, over the "
                            f"limit of {limits.max_decoded_bytes}")
    if spent + decoded > limits.max_set_bytes:
        raise LimitExceeded(f"{one_line(path)}: with this file the set decodes to more than {limits.max_set_bytes} "
                            "bytes, the limit for one set")
    return decoded


def _dims(shape: tuple[int, ...]) -> str:
    return "(" + "x".join(map(str, shape)) + ")"


def read_array(path: Path, raw: bool = False, limits: ReadLimits = DEFAULT_LIMITS,
              spent: int = 0) -> tuple[np.ndarray, int]:
    """The file's array, as float32 (PNG scaled to [0, 1]) or, with ``raw``, as stored (label maps), and its
    decoded size in bytes; every limit is checked from the file's size and header first (``spent``: see
    :func:`check_declared`)."""
    kind = _suffix(path)
    try:
        check_file_size(path, limits)
        if kind == ".npy":
            decoded = check_declared(path, *_npy_header(path), limits, spent)
            arr = np.load(path, allow_pickle=False)
        elif kind == ".png":
            from PIL import Image

            try:
                opened = Image.open(path, formats=["PNG"])  # the header only; a .png must be a PNG
            except Image.DecompressionBombError:
                # PIL's own check (a process-wide setting, left as it is) fires past twice ~89M pixels
                raise LimitExceeded(f"{one_line(path)}: image declares more than {limits.max_image_pixels} "
                                    "pixels, the limit") from None
            with opened as im:
                decoded = check_declared(path, *_png_header(im), limits, spent)
                im.load()
                mode_max = {"I;16": 65535.0, "I": 65535.0, "F": 1.0}.get(im.mode, 255.0)
                if im.mode not in ("L", "I;16", "I", "F"):
                    im = im.convert("L")
                arr = np.asarray(im) if raw else np.asarray(im, dtype=np.float32) / mode_max
        else:
            import nibabel as nib

            decoded = check_declared(path, *nifti_header(path, limits), limits, spent)
            arr = np.asarray(nib.load(str(path)).dataobj)
            arr = np.squeeze(arr) if arr.ndim > 3 else arr
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - every reader failure becomes one clear line
        raise InputError(f"{one_line(path)}: cannot read image: {type(exc).__name__}: {one_line(exc)}") from None
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f"{one_line(path)}: expected real numbers, found dtype {arr.dtype}")
    return (arr if raw else arr.astype(np.float32, copy=False)), decoded


def list_entries(folder: Path, name: str, limits: ReadLimits, extra: tuple[str, ...] = ()) -> list[Path]:
    """Every entry directly in ``folder``, sorted by name: each must be a file of a supported suffix
    (:data:`SUFFIXES`, and ``extra`` for a reader plugin's own) or, with ``extra``, a sub-folder (a DICOM
    series). Anything else is an error naming it, never skipped: a file left out silently is a set that
    is not what its manifest claims. The listing stops past the limit."""
    entries, unknown = [], []
    with os.scandir(folder) as found:
        for entry in found:
            path = Path(entry.path)
            if entry.is_file() and _suffix(path) in SUFFIXES + extra:
                entries.append(path)
            elif entry.is_dir() and extra:
                entries.append(path)
            else:
                unknown.append(path)
            if len(entries) > limits.max_files:
                raise LimitExceeded(f"{one_line(folder)}: {name} folder holds more than {limits.max_files} "
                                    "image files, the limit")
    if unknown:
        first = sorted(unknown)[0]
        what = "a folder" if first.is_dir() else "a DICOM file" if _suffix(first) in READER_SUFFIXES else \
            "not an image file"
        hint = " (DICOM and series folders are read with spec.data.preprocess)" if what != "not an image file" \
            and not extra else ""
        raise InputError(f"{one_line(first)}: {what} in the {name} folder{hint}; it holds {len(unknown)} such "
                         f"entr{'y' if len(unknown) == 1 else 'ies'} (supported: {', '.join(SUFFIXES + extra)})")
    return sorted(entries)


def pair_labels(image_names: list[str], folder: Path, name: str, limits: ReadLimits,
                extra: tuple[str, ...] = ()) -> dict[str, Path]:
    """The label file of each image name in ``folder`` (``labels/``, the same file names); a missing or an
    extra label file is an error naming it. ``extra``: as :func:`list_entries`."""
    by_name = {p.name: p for p in list_entries(folder, f"{name} labels", limits, extra)}
    missing = [n for n in image_names if n not in by_name]
    if missing:
        raise InputError(f"{one_line(folder)}: no label file for {len(missing)} {name} image(s), e.g. "
                         f"{one_line(missing[0])} "
                         "(labels/ must hold a file of the same name for each image)")
    unmatched = sorted(set(by_name) - set(image_names))
    if unmatched:
        raise InputError(f"{one_line(folder / unmatched[0])}: a label file without an image in "
                         f"{one_line(folder.parent / 'images')}")
    return by_name


class _Spill:
    """Images appended one at a time, kept in memory up to ``limit`` bytes, past it written to an unlinked
    temporary file (only this process can reach it; the system removes it when the process ends) that the
    set then maps: memory follows one file, whatever the set's size."""

    def __init__(self, limit: int):
        self.limit, self.parts, self.n, self.bytes, self.file = limit, [], 0, 0, None

    def append(self, img: np.ndarray) -> None:
        img = np.ascontiguousarray(img, dtype=np.float32)
        if self.file is None and self.bytes + img.nbytes > self.limit:
            import tempfile

            self.file = tempfile.TemporaryFile(prefix="gate-images-")
            for part in self.parts:
                self.file.write(part.tobytes())
            self.parts = []
        if self.file is not None:
            self.file.write(img.tobytes())
        else:
            self.parts.append(img)
        self.n, self.bytes = self.n + 1, self.bytes + img.nbytes

    def array(self, shape: tuple[int, int]) -> np.ndarray:
        if self.file is None:
            return np.stack(self.parts)
        self.file.flush()
        # read-only: no check or plugin can change what was read
        return np.memmap(self.file, dtype=np.float32, mode="r", shape=(self.n, *shape))


def read_manifest(path: Path, name: str, limits: ReadLimits) -> list[Path]:
    """The image files a manifest lists (one path per line; blank lines and ``#`` comments skipped; a
    relative path is relative to the manifest's folder), for a set spread over storage. Each must be a
    file of a supported suffix; the first that is not is an error naming its line."""
    if path.stat().st_size > limits.max_manifest_bytes:
        raise LimitExceeded(f"{one_line(path)}: {name} manifest is larger than {limits.max_manifest_bytes} bytes, "
                            "the limit")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{one_line(path)}: {name} manifest is not UTF-8 text (one image path per line)") from None
    files = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        file = Path(line) if Path(line).is_absolute() else path.parent / line
        if not file.is_file() or _suffix(file) not in SUFFIXES:
            why = "is not a file" if not file.is_file() else f"is not a supported image ({', '.join(SUFFIXES)})"
            raise InputError(f"{one_line(path)}:{number}: {one_line(line, 200)} {why}")
        files.append(file)
        if len(files) > limits.max_files:
            raise LimitExceeded(f"{one_line(path)}: {name} manifest lists more than {limits.max_files} image "
                                "files, the limit")
    return files


def read_image_folder(folder: Path | str, name: str, limits: ReadLimits = DEFAULT_LIMITS) -> ImageSet:
    """All supported files directly in ``folder`` (sorted by name) as one checked image set; a folder
    with ``images/`` (and ``labels/``) inside is read as a labelled set; a ``.txt`` file is a manifest
    listing the files (:func:`read_manifest`, in its order). ``limits`` bound every file and the folder (a
    labelled set's images and labels each count as one set). Files are read one at a time, with their
    hashes; a set larger than ``limits.in_memory_bytes`` is mapped from disk (:class:`_Spill`)."""
    folder = Path(folder)
    if folder.is_file() and folder.suffix == ".txt":
        return _read_files(read_manifest(folder, name, limits), folder, name, limits)
    if not folder.is_dir():
        raise InputError(f"{one_line(folder)}: {name} folder does not exist")
    if (folder / "images").is_dir():
        images = read_image_folder(folder / "images", name, limits)
        if not (folder / "labels").is_dir():
            return images
        return _with_labels(images, folder / "labels", name, limits)
    return _read_files(list_entries(folder, name, limits), folder, name, limits)


def _read_files(files: list[Path], folder: Path, name: str, limits: ReadLimits) -> ImageSet:
    if not files:
        raise InputError(f"{one_line(folder)}: {name} folder holds no images ({', '.join(SUFFIXES)})")
    ids: list[str] = []
    images = _Spill(limits.in_memory_bytes)
    first: tuple[int, ...] | None = None
    manifest: list[ManifestEntry] = []
    spent = 0
    for path in files:
        arr, decoded = read_array(path, limits=limits, spent=spent)
        spent += decoded
        if arr.ndim == 3 and _suffix(path) in (".nii", ".nii.gz"):
            slices = [(f"{path.name}#{z}", arr[..., z]) for z in range(arr.shape[-1])]
            labels = [f"{path}#{z}" for z in range(arr.shape[-1])]
        elif arr.ndim == 2:
            slices, labels = [(path.name, arr)], [str(path)]
        else:
            raise InputError(f"{one_line(path)}: expected a 2D image (or a 3D NIfTI volume), "
                             f"got shape {arr.shape}")
        for (sid, img), label in zip(slices, labels):
            check_image(img, label)
            first = img.shape if first is None else first
            if img.shape != first:
                raise InputError(f"{one_line(path.parent / sid)}: shape {img.shape} differs from "
                                 f"{one_line(ids[0])} {first}; "
                                 f"all {name} images must have one size")
            ids.append(sid)
            images.append(img)
        manifest.append(ManifestEntry(str(path), sha256_file(path)))
    return ImageSet(name=name, ids=tuple(ids), images=images.array(first), manifest=tuple(manifest))


def read_folder(folder: Path | str, name: str, preprocess: Any = None, grid: tuple[int, int] | None = None,
                limits: ReadLimits = DEFAULT_LIMITS) -> ImageSet:
    """A data folder as the policy says to read it: as it is (``preprocess`` None, :func:`read_image_folder`)
    or, with a ``spec.data.preprocess``, through the installed image-reader plugin, onto ``grid`` (the train
    set's [H, W], for every set after the train set)."""
    if preprocess is None:
        return read_image_folder(folder, name, limits)
    return image_reader().read(Path(folder), name, preprocess, grid, limits)


def image_reader() -> Any:
    """The one plugin of the ``gate.readers`` group (gate-mri's MONAI reader); a missing one, or one whose
    imaging stack is not installed, is a configuration error that says what to install."""
    import importlib.metadata

    from gate.errors import ConfigError
    from gate.validators import extras_hint

    found = list(importlib.metadata.entry_points(group=READER_GROUP))
    if not found:
        raise ConfigError("spec.data.preprocess needs an image-reader plugin (the 'gate.readers' entry-point "
                          "group is empty): pip install 'gate-mri[mri]'")
    if len(found) > 1:
        raise ConfigError(f"more than one image-reader plugin is installed ({', '.join(sorted(e.name for e in found))}); "
                          "keep one")
    ep = found[0]
    try:
        return ep.load()()
    except ModuleNotFoundError as exc:
        hint = extras_hint(ep.dist, exc.name)
        if not hint:
            raise
        raise ConfigError(f"spec.data.preprocess: the image reader {ep.value} needs {exc.name!r}, which is not "
                          f"installed{hint}") from None


def _with_labels(images: ImageSet, folder: Path, name: str, limits: ReadLimits = DEFAULT_LIMITS) -> ImageSet:
    """Attach the label maps in ``folder`` (same file names as the images) to ``images``."""
    image_files = [Path(e.path) for e in images.manifest]
    by_name = pair_labels([p.name for p in image_files], folder, name, limits)
    maps: list[np.ndarray] = []
    manifest = list(images.manifest)
    spent = 0
    for img_path in image_files:
        path = by_name[img_path.name]
        arr, decoded = read_array(path, raw=True, limits=limits, spent=spent)
        spent += decoded
        arr = np.squeeze(arr) if arr.ndim > 3 else arr
        slices = [arr[..., z] for z in range(arr.shape[-1])] if arr.ndim == 3 else [arr]
        for z, lab in enumerate(slices):
            label = one_line(f"{path}#{z}" if arr.ndim == 3 else path)
            if not is_label_map(lab):
                raise InputError(f"{label}: a label map must hold non-negative integers (class indices)")
            maps.append(lab.astype(np.int64))
        manifest.append(ManifestEntry(str(path), sha256_file(path)))
    if len(maps) != len(images) or any(m.shape != images.shape for m in maps):
        odd = next((i for i, m in enumerate(maps) if m.shape != images.shape), len(maps) - 1)
        raise InputError(f"{one_line(folder)}: label map for {one_line(images.ids[min(odd, len(images) - 1)])} "
                         "is "
                         f"{maps[odd].shape if maps else ()} but the images are {images.shape}")
    return ImageSet(name=name, ids=images.ids, images=images.images, manifest=tuple(manifest),
                    labels=np.stack(maps).astype(np.int64))


def is_label_map(arr: np.ndarray) -> bool:
    """Whether ``arr`` holds only non-negative integers (class indices), whatever its dtype."""
    return bool(np.isfinite(arr).all() and (arr == np.round(arr)).all() and (arr >= 0).all())


def check_image(img: np.ndarray, label: str) -> None:
    """``label`` names the image in the error: a path, ``PATH#Z`` or a generated sample id."""
    label = one_line(label)
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
