"""Image bombs are refused from what their headers declare, before any pixel is decoded or decompressed."""

import gzip
import time
import tracemalloc
import zlib

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_policy
from gate.cli import app
from gate.errors import InputError, LimitExceeded
from gate.imageio import read_image_folder

MIB = 2**20


def _refused(folder, **kwargs):
    """read_image_folder's LimitExceeded, with the seconds and the peak of traced memory it took."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(LimitExceeded) as info:
            read_image_folder(folder, "candidate", **kwargs)
        return str(info.value), time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _nifti_gz_declaring(path, shape, dtype=np.float32, payload_members=0, vox_offset=352.0, extension=False):
    """A .nii.gz whose header declares ``shape``: gzip members of 16 MiB of zeros follow it, so that the file
    holds (and would decompress to) exactly what the header promises at a few KiB per member."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header["vox_offset"] = vox_offset
    head = header.binaryblock + (b"\x01\x00\x00\x00" if extension else b"\x00\x00\x00\x00")
    zeros = gzip.compress(bytes(16 * MIB), compresslevel=9)
    with open(path, "wb") as f:
        f.write(gzip.compress(head + bytes(int(vox_offset) - len(head))))
        for _ in range(payload_members):
            f.write(zeros)
    return path


def test_nifti_gz_declaring_2_4_gb_is_refused_from_its_header(tmp_path):
    folder = tmp_path / "bomb"
    folder.mkdir()
    shape = (1024, 1024, 572)  # float32: 2 399 141 888 bytes, 143 members of 16 MiB
    path = _nifti_gz_declaring(folder / "bomb.nii.gz", shape, payload_members=143)
    assert path.stat().st_size < 4 * MIB
    with gzip.open(path) as f:  # the file really holds what it declares (checked on its first members)
        f.seek(352 + 64 * MIB)
    message, seconds, peak = _refused(folder)
    assert message == (f"{path}: volume declares 599785472 voxels (1024x1024x572), over the limit of "
                       f"{2**28}")
    assert seconds < 1.0 and peak < 8 * MIB, (seconds, peak)  # nothing was decompressed but the header


def test_nifti_whose_extensions_would_be_read_whole_is_refused(tmp_path):
    # a small image whose data "starts" 1 GB in: nibabel would read (decompress) everything before it
    folder = tmp_path / "ext"
    folder.mkdir()
    path = _nifti_gz_declaring(folder / "ext.nii.gz", (64, 64), vox_offset=1e9, extension=True)
    message, seconds, _ = _refused(folder)
    assert message == f"{path}: NIfTI data offset 1000000000 is over the limit of {16 * MIB} bytes"
    assert seconds < 1.0


def test_npy_whose_header_claims_a_huge_shape_is_refused_unread(tmp_path):
    folder = tmp_path / "npy"
    folder.mkdir()
    path = folder / "huge.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (200000, 200000)})
        f.write(bytes(4096))
    message, seconds, peak = _refused(folder)
    assert message == f"{path}: image declares 40000000000 pixels (200000x200000), over the limit of {8192 * 8192}"
    assert seconds < 1.0 and peak < 8 * MIB


def test_npy_of_python_objects_is_refused_from_its_header(tmp_path):
    folder = tmp_path / "obj"
    folder.mkdir()
    np.save(folder / "pickle.npy", np.array([[object()] * 8] * 8), allow_pickle=True)
    with pytest.raises(InputError) as info:
        read_image_folder(folder, "candidate")
    assert str(info.value) == f"{folder / 'pickle.npy'}: .npy holds Python objects (a pickle), not numbers"


@pytest.fixture(scope="module")
def png_bomb(tmp_path_factory):
    """A valid 10000x10000 grey PNG of zeros (~100 KB): past gate's pixel limit, under the one at which PIL
    itself refuses (it only warns), so without gate's check it is decoded into 100 MB, then 400 MB of float32."""
    width = height = 10000
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    packer = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then the row
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()

    def chunk(kind, body):
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    folder = tmp_path_factory.mktemp("png") / "bomb"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data)
                                      + chunk(b"IEND", b""))
    return folder


def test_png_bomb_is_refused_before_it_is_decoded(png_bomb):
    from PIL import Image

    limit_before = Image.MAX_IMAGE_PIXELS
    message, seconds, peak = _refused(png_bomb)
    assert message == f"{png_bomb / 'bomb.png'}: image declares 100000000 pixels (10000x10000), over the limit of {8192 * 8192}"
    assert seconds < 1.0 and peak < 8 * MIB
    assert Image.MAX_IMAGE_PIXELS == limit_before  # PIL's process-wide setting is left alone


def _npy_folder(folder, n, size=64):
    folder.mkdir()
    for i in range(n):
        np.save(folder / f"s{i}.npy", np.zeros((size, size), np.float32))
    return folder


def test_file_size_file_count_and_set_size_limits(tmp_path):
    from gate.imageio import ReadLimits

    folder = _npy_folder(tmp_path / "five", 5)
    one = 64 * 64 * 4
    assert read_image_folder(folder, "candidate", ReadLimits()).images.shape == (5, 64, 64)
    message, _, _ = _refused(folder, limits=ReadLimits(max_file_bytes=one))
    assert message == f"{folder / 's0.npy'}: file is {one + 128} bytes, over the limit of {one}"
    message, _, _ = _refused(folder, limits=ReadLimits(max_files=4))
    assert message == f"{folder}: candidate folder holds more than 4 image files, the limit"
    message, _, _ = _refused(folder, limits=ReadLimits(max_set_bytes=3 * one))
    assert message == (f"{folder / 's3.npy'}: with this file the set decodes to more than {3 * one} bytes, "
                       "the limit for one set")


def test_the_defaults_admit_real_mri_volumes():
    from gate.imageio import ReadLimits, check_declared

    limits = ReadLimits()
    assert check_declared("t1.nii.gz", (512, 512, 512), 4, limits) == 512**3 * 4
    assert check_declared("t1.nii.gz", (512, 512, 512), 8, limits) == 512**3 * 8
    assert check_declared("slice.png", (4096, 4096), 2, limits) == 4096**2 * 2


def test_a_hostile_file_name_is_not_echoed_raw(tmp_path):
    folder = tmp_path / "names"
    folder.mkdir()
    (folder / "x\n::error::forged\x1b[31m.npy").write_bytes(b"not an array")
    with pytest.raises(InputError) as info:
        read_image_folder(folder, "candidate")
    message = str(info.value)
    assert "\n" not in message and "\x1b" not in message
    assert "x\\x0a::error::forged\\x1b[31m.npy: cannot read image" in message


def test_gate_validate_exits_2_naming_the_limit(tmp_path, mri):
    folder = tmp_path / "samples"
    folder.mkdir()
    _nifti_gz_declaring(folder / "bomb.nii.gz", (1024, 1024, 572))
    policy = write_policy(tmp_path / "p.yaml", mri["train"])
    started = time.perf_counter()
    res = CliRunner().invoke(app, ["validate", "--policy", str(policy), "--samples", str(folder),
                                   "--out", str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == 2, res.output
    assert "volume declares 599785472 voxels (1024x1024x572), over the limit of 268435456" in res.output
    assert time.perf_counter() - started < 30


def test_a_png_must_be_a_png(tmp_path):
    # PIL picks its decoder from the content: a ".png" that is another format would reach another decoder
    from PIL import Image

    folder = tmp_path / "fake"
    folder.mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "gif.png", format="GIF")
    with pytest.raises(InputError) as info:
        read_image_folder(folder, "candidate")
    assert str(info.value).startswith(f"{folder / 'gif.png'}: cannot read image: UnidentifiedImageError")
