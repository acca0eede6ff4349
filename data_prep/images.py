"""Angiograms of any depth -> 8-bit images that sam3's loader reads as they are, with a record of the windowing.

sam3's COCO loader opens every image with ``PIL.Image.open(f).convert("RGB")``. That is faithful for 8-bit
grey or colour files (:data:`FAITHFUL_MODES`) and wrong for the rest: a 12-bit frame saved as a 16-bit PNG
(PIL mode ``I;16``) is clipped at 255 and comes out nearly white, and 32-bit and float images are not what
they look like either (palette and 1-bit images are: :data:`SAM3_READS`). DICOM is not read at all.

:func:`read_image` reads one frame (``frame``, counted from 0) of a PNG, TIFF, JPEG, BMP or DICOM file and
maps it linearly onto 0-255. The ``method`` of its record says which input range became 0-255 (``window``,
in the file's own units: DICOM modality units after the rescale, else stored values):

* ``voi_lut``, ``window`` (DICOM): the file's VOI LUT, else its first Window Center / Width, applied after
  its Modality LUT or rescale, with pydicom's ``apply_modality_lut`` and ``apply_voi_lut``; the LUT's or
  window's output range becomes 0-255.
* ``bits_stored`` (DICOM without a VOI LUT or window): the whole range of BitsStored (a 12-bit frame:
  0-4095), through the rescale.
* ``bit_depth`` (16- and 32-bit integer PNG/TIFF, which carry no window): 0 to 2^bits - 1, ``bits`` being
  the smallest depth that holds the frame's largest value (a 12-bit frame in a 16-bit PNG: 0-4095) unless
  the caller fixes it (``bits``, ``--bits``: give it for a whole dataset so that every frame gets the same
  mapping).
* ``min_max`` (float images, and integer ones holding negative values): the frame's own minimum-maximum.
* ``8bit``: 8-bit images, kept as they are; palette, alpha and 1-bit images become the grey or RGB image
  that PIL's ``convert`` makes of them (alpha dropped, as sam3 drops it).

MONOCHROME1 DICOM (white = low values) is inverted (``inverted``) so vessels are dark, as in MONOCHROME2.
Compressed DICOM is decoded by pydicom's decoder plugins; when none is installed for the file's transfer
syntax, the :class:`~common.errors.InputError` names the syntax and the package(s) to install.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.misc import is_dicom
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut, apply_windowing, get_decoder, pixel_array
from pydicom.pixels.utils import get_nr_frames

from common.errors import InputError

#: PIL modes whose pixels sam3's ``Image.convert("RGB")`` keeps as they are (alpha is dropped).
FAITHFUL_MODES = frozenset({"L", "LA", "RGB", "RGBA"})
#: PIL modes sam3's ``Image.convert("RGB")`` reads as what the image looks like: the faithful ones, and palette
#: and 1-bit images (their colours, their black and white). The validator accepts these.
SAM3_READS = FAITHFUL_MODES | {"P", "PA", "1"}
#: File suffixes read as images (DICOM files are also recognised without one, by their preamble).
SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")
_DICOM_SUFFIXES = (".dcm", ".dicom")
#: The command that converts images sam3 would not read faithfully.
CONVERT_COMMAND = "python -m data_prep.convert_images"

_CONVERTED_BY_PIL = {"P": "RGB", "PA": "RGB", "1": "L", "LA": "L", "RGBA": "RGB"}  # as sam3 would see them
_PIP_NAMES = {"gdcm": "python-gdcm"}  # pydicom's requirement name -> the package pip installs


@dataclass(frozen=True)
class Converted:
    """One frame as 8 bits: ``pixels`` (uint8, H x W grey or H x W x 3 RGB) and ``windowing``, the JSON-ready
    record of how it was mapped (``source``, ``frame``, ``frames``, ``mode``, ``method``, ``window``,
    ``inverted``; ``bits`` for ``bit_depth``)."""

    pixels: np.ndarray
    windowing: dict

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as PIL gives it."""
        return self.pixels.shape[1], self.pixels.shape[0]


def is_image_file(path: Path) -> bool:
    """Whether ``path`` is a file to read as an image when a folder is listed: one of :data:`SUFFIXES`, or a
    DICOM file by content; a DICOM object that is no image (no Rows: a structured report, a DICOMDIR, a
    presentation state, as XA exports hold beside their runs) is not."""
    if not path.is_file():
        return False
    if _is_dicom_file(path):
        try:
            return "Rows" in pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 (an unreadable DICOM is refused, by name, when it is read)
            return True
    return path.suffix.lower() in SUFFIXES


def frame_count(path: Path) -> int:
    """How many frames ``path`` holds (DICOM NumberOfFrames, TIFF pages; 1 for other images)."""
    if _is_dicom_file(path):
        return int(get_nr_frames(_read_dicom(path, pixels=False), warn=False))
    try:
        with Image.open(path) as im:
            return getattr(im, "n_frames", 1)
    except Exception as err:  # noqa: BLE001 (PIL raises many types for unreadable files)
        raise _unreadable(path, err) from err


def read_image(path: Path, *, frame: int = 0, bits: int | None = None) -> Converted:
    """Frame ``frame`` of the image or DICOM file ``path`` as 8 bits, with its windowing (see the module doc).

    ``bits`` fixes the depth of integer PNG/TIFF (``bit_depth``); DICOM uses its BitsStored. Raises
    :class:`InputError` naming the file (and frame) for anything it cannot read faithfully."""
    path = Path(path)
    if _is_dicom_file(path):
        return _read_dicom_frame(path, frame)
    return _read_pil_frame(path, frame, bits)


def check_bits(bits: int | None) -> None:
    """Refuse a ``--bits`` that is no bit depth of integer image values (8 to 32)."""
    if bits is not None and not 8 <= bits <= 32:
        raise InputError(f"--bits {bits}: give the bit depth of the images' values, from 8 to 32")


def kept_as_is(windowing: dict) -> bool:
    """Whether the file behind a :func:`read_image` record can be used unchanged: a single-frame image of one of
    :data:`FAITHFUL_MODES` (8-bit grey or RGB, not DICOM), which sam3 reads faithfully; copying or linking it keeps
    it byte for byte."""
    return windowing["frames"] == 1 and windowing["mode"] in FAITHFUL_MODES


def write_png(image: Converted, path: Path) -> None:
    """Save ``image``'s pixels as an 8-bit PNG (mode L or RGB) at ``path``."""
    Image.fromarray(image.pixels).save(path, format="PNG")


def sam3_mode_problem(path: Path, mode: str) -> str | None:
    """Why sam3's loader would not read the image ``path`` of PIL ``mode`` faithfully, with what to do (the
    command that converts it); None if it would."""
    if mode in SAM3_READS:
        return None
    kind = _convertible_kind(mode)
    if kind is not None:
        return (f"is a {kind} image (PIL mode {mode}), which sam3's loader (Image.convert('RGB')) does not read "
                f"faithfully; convert it to 8 bits with `{CONVERT_COMMAND} {path} --out NEW_FOLDER` (or the whole "
                "folder) and point file_name at the PNG it writes")
    return (f"is an image of PIL mode {mode}, which neither sam3's loader nor {CONVERT_COMMAND} reads faithfully; "
            "re-export it as 8-bit grayscale (or 16-bit grayscale, then convert it)")


def _convertible_kind(mode: str) -> str | None:
    """What a PIL ``mode`` outside :data:`FAITHFUL_MODES` that :func:`read_image` converts holds; None for the
    modes it does not read (CMYK, YCbCr, LAB, HSV, ...)."""
    if mode.startswith("I;16"):
        return "16-bit"
    if mode == "I" or mode.startswith("I;32"):
        return "32-bit integer"
    return {"F": "floating-point", "P": "palette", "PA": "palette", "1": "1-bit"}.get(mode)


# --- DICOM ------------------------------------------------------------------------------------------------


def _is_dicom_file(path: Path) -> bool:
    return path.suffix.lower() in _DICOM_SUFFIXES or (path.is_file() and is_dicom(path))


def _read_dicom(path: Path, *, pixels: bool) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except FileNotFoundError as err:
        raise InputError(f"{path}: no such file") from err
    except Exception as err:  # noqa: BLE001 (InvalidDicomError, or what a truncated file makes the parser raise)
        raise InputError(f"{path}: cannot be read as DICOM ({type(err).__name__}: {err}); re-export it") from err


def _read_dicom_frame(path: Path, frame: int) -> Converted:
    ds = _read_dicom(path, pixels=True)
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise InputError(f"{path}: holds no pixel data (no (7FE0,0010) Pixel Data element: a DICOMDIR, report or "
                         "presentation state?); give the image file of the run instead")
    frames = int(get_nr_frames(ds, warn=False))
    _check_frame(path, frame, frames)
    _check_decoder(path, ds)
    try:
        stored = pixel_array(ds, index=frame)
    except Exception as err:  # noqa: BLE001 (pydicom's decoders raise many types for corrupt data)
        raise InputError(f"{path}: frame {frame} cannot be decoded ({type(err).__name__}: {err}); re-export "
                         "the file") from err
    photometric = str(ds.get("PhotometricInterpretation", ""))
    record = {"source": path.name, "frame": frame, "frames": frames, "mode": f"DICOM {photometric}"}
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        pixels, method, window = _grey_dicom(ds, stored)
        if photometric == "MONOCHROME1":
            pixels = 255 - pixels
    elif stored.ndim == 3:  # RGB, or YBR that pydicom converted to RGB
        stored_range = _stored_range(ds)
        pixels, method, window = _scaled(stored, *stored_range), "bits_stored", stored_range
    else:
        raise InputError(f"{path}: PhotometricInterpretation {photometric!r} is not supported (MONOCHROME1, "
                         "MONOCHROME2 or RGB); re-export the run as grayscale")
    return Converted(pixels, {**record, "method": method, "window": [float(v) for v in window],
                              "inverted": photometric == "MONOCHROME1"})


def _check_decoder(path: Path, ds: pydicom.Dataset) -> None:
    """Refuse compressed pixel data that no installed pydicom decoder plugin reads, naming what to install."""
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None or not syntax.is_compressed:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as err:
        raise InputError(f"{path}: the pixel data is compressed as {syntax.name} ({syntax}), which pydicom "
                         "cannot decode; re-export the run uncompressed or as JPEG Lossless") from err
    if decoder.is_available:
        return
    commands = " or ".join(f"`pip install {' '.join(packages)}`"
                           for packages in _packages_to_install(decoder.missing_dependencies))
    raise InputError(f"{path}: the pixel data is compressed as {syntax.name} ({syntax}) and no installed pydicom "
                     f"decoder reads it; install a decoder ({commands or 'pydicom knows of none'}) and rerun")


def _packages_to_install(missing: list[str]) -> list[list[str]]:
    """pydicom's ``Decoder.missing_dependencies`` lines (``"pylibjpeg - requires pylibjpeg>=2.0 and
    pylibjpeg-libjpeg>=2.1"``) as the pip packages of each plugin."""
    options = []
    for line in missing:
        _, found, requirements = line.partition(" - requires ")
        if found:
            names = [re.split(r"[<>=!~ ]", r.strip(), maxsplit=1)[0] for r in re.split(r",| and ", requirements)]
            options.append([_PIP_NAMES.get(n, n) for n in names if n and n != "numpy"])
    return options


def _stored_range(ds: pydicom.Dataset) -> tuple[int, int]:
    """The values BitsStored can hold (signed when PixelRepresentation is 1)."""
    bits = int(ds.BitsStored)
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if ds.get("PixelRepresentation", 0) == 1 else (0, 2**bits - 1)


def _grey_dicom(ds: pydicom.Dataset, stored: np.ndarray) -> tuple[np.ndarray, str, tuple[float, float]]:
    """A MONOCHROME frame through pydicom's modality and VOI transforms, scaled to 8 bits: pixels, method,
    window (the input range, in modality units, that spans the output)."""
    values = apply_modality_lut(stored, ds)
    ignored = ""
    try:
        # apply_voi_lut's own choice: the VOI LUT Sequence when it is complete, else Window Center / Width
        lut = ds.get("VOILUTSequence")
        if lut and lut[0].get("LUTDescriptor") is not None and lut[0].get("LUTData") is not None:
            entries, first, depth = (int(v) for v in lut[0].LUTDescriptor)
            window = (first, first + (entries or 2**16) - 1)
            data = np.asarray(lut[0].LUTData).ravel()
            # vendors often declare 16 bits for 12-bit entries: scale by the entries' own range
            out_lo, out_hi = (int(data.min()), int(data.max())) if data.size and data.max() > data.min() \
                else (0, 2**depth - 1)
            return _scaled(apply_voi_lut(values, ds), out_lo, out_hi), "voi_lut", window
        if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
            center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
            out_lo, out_hi = apply_windowing(np.array([-np.inf, np.inf]), ds)  # the window's output range
            return (_scaled(apply_voi_lut(values, ds), out_lo, out_hi), "window",
                    (center - width / 2, center + width / 2))
    except (ValueError, NotImplementedError) as err:  # pydicom refuses a width < 1, a LUT depth it cannot apply
        ignored = f" (the file's VOI LUT / window is invalid and was ignored: {err})"
    lo, hi = sorted(apply_modality_lut(np.array(_stored_range(ds)), ds).tolist())
    return _scaled(values, lo, hi), "bits_stored" + ignored, (lo, hi)


def _first(value: object) -> float:
    """The first of a value that may list alternatives (several windows): the one apply_voi_lut applies."""
    return float(value[0] if isinstance(value, MultiValue) else value)


# --- PNG, TIFF and other images PIL reads ---------------------------------------------------------------


def _read_pil_frame(path: Path, frame: int, bits: int | None) -> Converted:
    try:
        with Image.open(path) as im:
            frames = getattr(im, "n_frames", 1)
            _check_frame(path, frame, frames)
            im.seek(frame)
            im.load()
            mode = im.mode
            if mode not in FAITHFUL_MODES and _convertible_kind(mode) is None:
                raise InputError(f"{path}: PIL mode {mode} is not an image mode this project can map to 8 bits "
                                 "(grey or RGB of 8 bits, grey of 16 or 32 bits, float, palette); re-export it as "
                                 "grayscale PNG, TIFF or DICOM")
            pixels = np.asarray(im.convert(_CONVERTED_BY_PIL[mode]) if mode in _CONVERTED_BY_PIL else im)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 (PIL raises many types for unreadable files)
        raise _unreadable(path, err) from err
    record = {"source": path.name, "frame": frame, "frames": frames, "mode": mode}
    if pixels.dtype == np.uint8:
        return Converted(pixels, {**record, "method": "8bit", "window": [0.0, 255.0], "inverted": False})
    if pixels.dtype.kind == "f" or pixels.min() < 0:
        lo, hi = float(pixels.min()), float(pixels.max())
        return Converted(_scaled(pixels, lo, hi),
                         {**record, "method": "min_max", "window": [lo, hi], "inverted": False})
    largest = int(pixels.max())
    depth = bits if bits is not None else max(8, largest.bit_length())
    if largest >= 2**depth:
        raise InputError(f"{path}: frame {frame} holds the value {largest}, more than {depth} bits (--bits) can; "
                         f"pass --bits {largest.bit_length()} or more")
    window = (0.0, float(2**depth - 1))
    return Converted(_scaled(pixels, *window), {**record, "method": "bit_depth", "bits": depth, "window": list(window),
                                                "inverted": False})


# --- shared ------------------------------------------------------------------------------------------------


def _check_frame(path: Path, frame: int, frames: int) -> None:
    if not 0 <= frame < frames:
        raise InputError(f"{path}: frame {frame} is out of range: the file holds {frames} frame(s), numbered 0 to "
                         f"{frames - 1}; pass a frame index in that range")


def _scaled(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``values`` mapped linearly from [lo, hi] onto 0-255 (rounded, clipped) as uint8."""
    span = (hi - lo) or 1.0
    return np.clip(np.rint((np.asarray(values, dtype=np.float64) - lo) * (255.0 / span)), 0, 255).astype(np.uint8)


def _unreadable(path: Path, err: Exception) -> InputError:
    if isinstance(err, FileNotFoundError):
        return InputError(f"{path}: no such file")
    return InputError(f"{path}: cannot be read as an image ({type(err).__name__}: {str(err)[:120]}); re-export it")
