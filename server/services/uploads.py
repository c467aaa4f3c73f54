"""Read an uploaded file into a ``Volume``: format detection, integrity checks, DICOM series.

Only the pixel array and its geometry (spacing, origin, direction) leave this module;
every other header field — in particular the patient-identifying DICOM tags and NIfTI /
NRRD / MetaImage free-text fields — is dropped here and never stored or logged. Errors
are ``BadInput``/``UnsupportedMediaType`` with a message naming the problem (never the
header contents).
"""

from __future__ import annotations

import gzip
import math
import struct
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from registration.io.volume import Volume
from server.errors import BadInput, UnsupportedMediaType

# Upload formats: name -> filename suffixes.
FORMATS: dict[str, tuple[str, ...]] = {
    "nifti": (".nii.gz", ".nii"),
    "nrrd": (".nrrd",),
    "mha": (".mha",),
    "dicom-zip": (".zip",),
}
_ACCEPTED = "NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage (.mha) or a DICOM series as .zip"
_MAX_ZIP_MEMBERS = 5000


@dataclass
class ConvertedUpload:
    volume: Volume
    source_format: str
    pixel_type: str


def format_from_filename(filename: str) -> str:
    lower = filename.lower()
    for name, suffixes in FORMATS.items():
        if lower.endswith(suffixes):
            return name
    suffix = "".join(Path(lower).suffixes) or "(none)"
    raise UnsupportedMediaType(f"unsupported file type {suffix!r}; expected {_ACCEPTED}")


def strip_format_suffix(filename: str) -> str:
    lower = filename.lower()
    for suffixes in FORMATS.values():
        for suffix in suffixes:
            if lower.endswith(suffix):
                return filename[: -len(suffix)]
    return filename


def read_upload(path: Path, filename: str, max_bytes: int) -> ConvertedUpload:
    """Read ``path`` (the uploaded bytes, named ``filename`` by the client) into a Volume."""
    fmt = format_from_filename(filename)
    if path.stat().st_size == 0:
        raise BadInput(f"the uploaded file {filename!r} is empty")
    if fmt == "nifti":
        _check_nifti(path, max_bytes)
        image = _read_sitk(path, ".nii.gz" if _is_gzip(path) else ".nii", "NIfTI")
    elif fmt == "nrrd":
        _check_nrrd(path)
        image = _read_sitk(path, ".nrrd", "NRRD")
    elif fmt == "mha":
        _check_metaimage(path)
        image = _read_sitk(path, ".mha", "MetaImage")
    else:
        image = _read_dicom_zip(path, max_bytes)
    volume = _to_volume(image, fmt)
    return ConvertedUpload(volume=volume, source_format=fmt, pixel_type=str(volume.array.dtype))


def _to_volume(image, fmt: str) -> Volume:
    try:
        volume = Volume.from_sitk(image)
    except ValueError as exc:
        raise BadInput(f"the {fmt} file is not a usable volume: {exc}") from None
    if min(volume.shape_zyx) < 1 or volume.array.size < 2:
        raise BadInput(f"the {fmt} volume is empty (size {volume.shape_zyx})")
    if not np.issubdtype(volume.array.dtype, np.number) or np.iscomplexobj(volume.array):
        raise BadInput(f"unsupported pixel type {volume.array.dtype} (expected real numbers)")
    if not np.all(np.isfinite(volume.array)):
        raise BadInput("the volume contains NaN or infinite values")
    # Geometry only; the new Volume carries no header fields of the source.
    return Volume(
        np.ascontiguousarray(volume.array), volume.spacing_xyz, volume.origin_xyz, volume.direction
    )


def _read_sitk(path: Path, suffix: str, label: str):
    # SimpleITK picks the reader by suffix, so give the bytes a name it understands.
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        named = Path(tmp) / f"upload{suffix}"
        named.hardlink_to(path)
        try:
            return sitk.ReadImage(str(named))
        except RuntimeError:
            raise BadInput(f"could not read the {label} file: it is corrupt or truncated") from None


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def _check_magic(path: Path, magic: bytes, label: str) -> None:
    with path.open("rb") as handle:
        if handle.read(len(magic)) != magic:
            raise BadInput(f"the file is not a {label} file (wrong header)")


def _header_lines(path: Path, limit: int = 65536) -> list[str]:
    with path.open("rb") as handle:
        head = handle.read(limit)
    return head.decode("latin-1").splitlines()


def _check_nrrd(path: Path) -> None:
    """An attached NRRD: its header must not point the reader at another file on the server."""
    _check_magic(path, b"NRRD", "NRRD")
    for line in _header_lines(path)[1:]:
        if not line.strip():
            return  # end of the header
        key = line.split(":", 1)[0].strip().lower()
        if key in ("data file", "datafile"):
            raise BadInput("an .nrrd upload must hold its pixel data (no 'data file' field)")
    raise BadInput("the NRRD header has no end (truncated file?)")


def _check_metaimage(path: Path) -> None:
    """A MetaImage whose pixel data is in the file itself (ElementDataFile = LOCAL)."""
    fields: dict[str, str] = {}
    for line in _header_lines(path):
        key, sep, value = line.partition("=")
        if not sep:
            break
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            break  # the last header field; pixel data follows
    if "NDims" not in fields or "ElementDataFile" not in fields:
        raise BadInput("the file is not a MetaImage (.mha) file (no NDims/ElementDataFile header)")
    if fields["ElementDataFile"] != "LOCAL":
        raise BadInput("a .mha upload must hold its pixel data (ElementDataFile = LOCAL)")


def _nifti_bytes(path: Path, max_bytes: int):
    """Yield the uncompressed bytes of a (possibly gzipped) NIfTI file in chunks."""
    if _is_gzip(path):
        try:
            with gzip.open(path, "rb") as handle:
                total = 0
                while chunk := handle.read(1 << 20):
                    total += len(chunk)
                    if total > max_bytes:
                        raise BadInput(f"the NIfTI file decompresses to more than {max_bytes} bytes")
                    yield chunk
        except (EOFError, OSError, zlib.error):
            raise BadInput("corrupt or truncated NIfTI: the gzip stream is incomplete or damaged") from None
    else:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                yield chunk


def _check_nifti(path: Path, max_bytes: int) -> None:
    """Header sanity and that all voxel data is present (SimpleITK reads truncated files silently)."""
    header = b""
    total = 0
    for chunk in _nifti_bytes(path, max_bytes):
        if len(header) < 540:
            header += chunk[: 540 - len(header)]
        total += len(chunk)
    if len(header) < 348:
        raise BadInput("corrupt or truncated NIfTI: shorter than a NIfTI header")
    expected = _nifti_expected_bytes(header)
    if total < expected:
        raise BadInput(f"truncated NIfTI: {expected} bytes expected from the header, {total} present")


def _nifti_expected_bytes(header: bytes) -> int:
    for endian in "<>":
        (sizeof_hdr,) = struct.unpack(endian + "i", header[:4])
        if sizeof_hdr == 348:
            if header[344:347] == b"ni1":
                raise BadInput("a NIfTI .hdr/.img pair cannot be uploaded; convert to .nii.gz")
            if header[344:348] != b"n+1\x00":
                raise BadInput("not a NIfTI file (bad magic string)")
            dims = struct.unpack(endian + "8h", header[40:56])
            (bitpix,) = struct.unpack(endian + "h", header[72:74])
            (vox_offset,) = struct.unpack(endian + "f", header[108:112])
            break
        if sizeof_hdr == 540:
            if len(header) < 540:
                raise BadInput("corrupt or truncated NIfTI-2: shorter than its header")
            dims = struct.unpack(endian + "8q", header[16:80])
            (bitpix,) = struct.unpack(endian + "h", header[14:16])
            (vox_offset,) = struct.unpack(endian + "q", header[168:176])
            break
    else:
        raise BadInput("not a NIfTI file (bad header size field)")
    if not math.isfinite(vox_offset) or vox_offset < 0:
        raise BadInput("corrupt NIfTI header (invalid vox_offset)")
    ndim = int(dims[0])
    if not 1 <= ndim <= 7 or any(int(d) < 1 for d in dims[1 : ndim + 1]) or bitpix <= 0:
        raise BadInput("corrupt NIfTI header (invalid dimensions or bit depth)")
    voxels = int(np.prod([int(d) for d in dims[1 : ndim + 1]], dtype=np.int64))
    return int(vox_offset) + voxels * int(bitpix) // 8


def _read_dicom_zip(path: Path, max_bytes: int):
    if not zipfile.is_zipfile(path):
        raise BadInput("the .zip upload is not a valid zip archive")
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        root = Path(tmp)
        _extract_zip_safely(path, root, max_bytes)
        series: list[tuple[int, list[str]]] = []
        folders = [root, *sorted(p for p in root.rglob("*") if p.is_dir())]
        for folder in folders[:1000]:
            for series_id in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
                files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_id)
                series.append((len(files), list(files)))
        if not series:
            raise BadInput("the zip does not contain a DICOM series")
        # Several series (e.g. a localizer beside the main acquisition): take the largest.
        _, files = max(series, key=lambda item: item[0])
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        reader.MetaDataDictionaryArrayUpdateOff()
        reader.LoadPrivateTagsOff()
        try:
            image = reader.Execute()
        except RuntimeError:
            raise BadInput("could not read the DICOM series in the zip: corrupt or inconsistent files") from None
        if image.GetDimension() == 2:
            image = sitk.JoinSeries(image)
        return image


def _extract_zip_safely(path: Path, target: Path, max_bytes: int) -> None:
    with zipfile.ZipFile(path) as archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if not members:
            raise BadInput("the zip is empty")
        if len(members) > _MAX_ZIP_MEMBERS:
            raise BadInput(f"the zip holds more than {_MAX_ZIP_MEMBERS} files")
        if sum(m.file_size for m in members) > 4 * max_bytes:
            raise BadInput("the zip's contents are larger than the upload limit allows")
        for index, member in enumerate(members):
            # Flat, numbered names: no path from the archive is trusted (zip-slip) or kept.
            folder = target / Path(member.filename).parent.as_posix().replace("/", "_").replace("..", "_")
            folder.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(member) as source, (folder / f"{index:05d}.dcm").open("wb") as out:
                    while chunk := source.read(1 << 20):
                        out.write(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError):
                raise BadInput("the zip archive is corrupt") from None
