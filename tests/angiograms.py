"""Test files that look like what a catheter lab exports: 12-bit X-ray angiography (XA) DICOM cine runs, and the
16-bit PNG / TIFF frames that DICOM exports often become. Shared by test_images, test_dicom_data_path and
test_bad_inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder, set_pixel_data

BITS_STORED = 12
MAX_12_BIT = 2**BITS_STORED - 1


def ramp(height: int = 32, width: int = 64, lo: int = 0, hi: int = MAX_12_BIT) -> np.ndarray:
    """A 12-bit horizontal gradient, ``lo`` in the first column to ``hi`` in the last (uint16)."""
    return np.tile(np.linspace(lo, hi, width).round().astype(np.uint16), (height, 1))


def cine(frames: int = 3, height: int = 32, width: int = 64) -> np.ndarray:
    """A run of ``frames`` 12-bit frames, each a gradient over a different part of the range (frames x H x W)."""
    return np.stack([ramp(height, width, lo=400 * k, hi=MAX_12_BIT - 400 * k) for k in range(frames)])


def xa_dataset(pixels: np.ndarray, *, photometric: str = "MONOCHROME2", window: tuple[float, float] | None = None,
               rescale: tuple[float, float] | None = None) -> Dataset:
    """An XA image dataset holding ``pixels`` (frames x H x W, or H x W) as BitsAllocated 16 / BitsStored 12,
    with the tags a real run carries (and a Window Center / Width, a rescale, when given)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = uid.XRayAngiographicImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid.generate_uid()
    ds.SOPClassUID = uid.XRayAngiographicImageStorage
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid.generate_uid(), uid.generate_uid()
    ds.Modality, ds.Manufacturer, ds.PatientID, ds.PatientName = "XA", "Test Cathlab", "P012", "Anon^P012"
    ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber = "20260101", 3, 1
    ds.PositionerPrimaryAngle, ds.PositionerSecondaryAngle = 30.0, 20.0  # RAO 30, cranial 20: an LAD view
    ds.CineRate, ds.FrameTime = 15, 66.7
    set_pixel_data(ds, pixels, photometric, BITS_STORED)  # Rows, Columns, Bits*, NumberOfFrames, Pixel Data
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    return ds


def write_dicom(path: Path, ds: Dataset) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def without_pixel_data(path: Path) -> Path:
    """A DICOM file with every image tag but no Pixel Data element (as a header-only export writes)."""
    ds = xa_dataset(cine(1)[0])
    del ds.PixelData
    return write_dicom(path, ds)


def undecodable_syntax() -> uid.UID:
    """A compressed transfer syntax that real XA runs use and no decoder installed here reads."""
    missing = [ts for ts in (uid.JPEGLosslessSV1, uid.JPEGLSLossless, uid.HTJ2KLossless)
               if not get_decoder(ts).is_available]
    assert missing, "a decoder for every candidate syntax is installed: pick another syntax for this test"
    return missing[0]


def compressed_without_decoder(path: Path) -> tuple[Path, uid.UID]:
    """A 2-frame run whose pixel data is encapsulated in :func:`undecodable_syntax` (JPEG Lossless, as most
    catheter labs store runs), and that syntax."""
    syntax = undecodable_syntax()
    ds = xa_dataset(cine(2))
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3 not decoded here \xff\xd9"] * 2)
    ds["PixelData"].VR = "OB"
    return write_dicom(path, ds), syntax


def png16(path: Path, pixels: np.ndarray) -> Path:
    """``pixels`` (H x W, uint16) as a 16-bit grey PNG (PIL mode I;16), as DICOM exports write 12-bit frames."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint16)).save(path)
    return path


def tiff16(path: Path, pixels: np.ndarray) -> Path:
    """``pixels`` (H x W, uint16) as a 16-bit grey TIFF."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint16)).save(path, format="TIFF")
    return path
