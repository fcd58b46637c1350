"""Decode untrusted image bytes (PNG, JPEG, other PIL formats, DICOM) into one 8-bit grayscale array.

Every failure, whatever the input, surfaces as :class:`InvalidImageError` with a stable ``reason``:
``empty``, ``not_an_image``, ``truncated``, ``too_small``, ``decompression_bomb``, ``no_pixel_data``,
``unsupported`` (and ``unreadable`` from :func:`decode_file`).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from care_companion.config import Settings
from care_companion.errors import InvalidImageError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
DICOM_MAGIC = b"DICM"
DICOM_MAGIC_OFFSET = 128

# PIL plugins we let loose on untrusted bytes: common raster formats with a real magic number.
_PIL_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP", "PPM", "JPEG2000")
# Percentiles used to stretch DICOM data that carries no window and fills little of its stored bit range.
_ROBUST_LOW, _ROBUST_HIGH = 0.5, 99.5
# Without a window, data spanning at least this share of the range its stored bits hold is shown over that range.
_MIN_RANGE_SHARE = 0.25
# ITU-R BT.601 luma weights for RGB -> gray.
_LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class DecodeLimits:
    """What image sizes decoding accepts; defaults are those of :class:`~care_companion.config.Settings`.

    Attributes:
        min_side: images whose shorter side is below this many pixels are rejected ("too_small").
        max_pixels: images with more pixels (checked from the header, before decoding) are rejected
            ("decompression_bomb").
    """

    min_side: int = Settings.model_fields["min_image_side"].default
    max_pixels: int = Settings.model_fields["max_image_pixels"].default

    @classmethod
    def from_settings(cls, settings: Settings) -> DecodeLimits:
        """The limits configured by ``settings.min_image_side`` and ``settings.max_image_pixels``."""
        return cls(min_side=settings.min_image_side, max_pixels=settings.max_image_pixels)


DEFAULT_LIMITS = DecodeLimits()


def sniff_format(data: bytes) -> str | None:
    """The container format told by the first bytes: "png", "jpeg", "dicom" or ``None`` when unrecognised.

    Args:
        data: the file contents (only the first ~140 bytes are looked at).
    """
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC or _looks_like_raw_dicom(data):
        return "dicom"
    return None


def _looks_like_raw_dicom(data: bytes) -> bool:
    """True when ``data`` starts like a DICOM data set written without preamble (group 0002 or 0008)."""
    if len(data) < 8 or int.from_bytes(data[0:2], "little") not in (0x0002, 0x0008):
        return False
    if int.from_bytes(data[2:4], "little") > 0x00FF:
        return False
    vr = data[4:6]
    if vr.isalpha() and vr.isupper():  # explicit VR
        return True
    return int.from_bytes(data[4:8], "little") < min(len(data), 1024)  # implicit VR: a small first length


def decode_image(data: bytes, *, name: str = "", limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode image bytes into a 2-D ``uint8`` grayscale array, rejecting anything unusable.

    Args:
        data: the raw file contents (PNG, JPEG, BMP, TIFF, GIF, WebP, PPM, JPEG 2000 or DICOM).
        name: file name or other label used in error messages.
        limits: the smallest side and largest pixel count accepted ("too_small", "decompression_bomb").

    Raises:
        InvalidImageError: for every input that does not give a usable image; ``reason`` says why.
    """
    label = name or "image"
    if not data:
        raise InvalidImageError(f"{label}: the file is empty (0 bytes)", reason="empty")
    fmt = sniff_format(data)
    try:
        with warnings.catch_warnings():
            # Decoder warnings (PIL's bomb warning, pydicom's tag complaints) are not ours to show: we check
            # sizes ourselves and fail loudly on real problems.
            warnings.simplefilter("ignore")
            image = _decode_dicom(data, label, limits) if fmt == "dicom" else _decode_pil(data, fmt, label, limits)
    except InvalidImageError:
        raise
    except Exception as exc:  # decoders raise anything on hostile bytes; callers only ever see ours
        if fmt is None:
            raise InvalidImageError(f"{label}: not a recognised image format", reason="not_an_image") from exc
        raise InvalidImageError(
            f"{label}: the {fmt.upper()} data is cut short or corrupt ({type(exc).__name__}: {exc})",
            reason="truncated",
        ) from exc
    _check_size(image.shape[1], image.shape[0], label, limits)
    return np.ascontiguousarray(image, dtype=np.uint8)


def decode_file(path: Path, *, limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Read and decode an image file into a 2-D ``uint8`` grayscale array.

    Args:
        path: the file to read.
        limits: the sizes accepted, as for :func:`decode_image`.

    Raises:
        InvalidImageError: reason "unreadable" when the file cannot be read, else as :func:`decode_image`.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidImageError(f"{path}: cannot read the file ({exc.strerror or exc})", reason="unreadable") from exc
    return decode_image(data, name=str(path), limits=limits)


def _check_size(width: int, height: int, label: str, limits: DecodeLimits) -> None:
    """Reject images that are too large to decode safely or too small to be useful."""
    min_side, max_pixels = limits.min_side, limits.max_pixels
    if width * height > max_pixels:
        raise InvalidImageError(
            f"{label}: {width}x{height} pixels is more than the allowed {max_pixels} (possible decompression bomb)",
            reason="decompression_bomb",
        )
    if min(width, height) < min_side:
        raise InvalidImageError(
            f"{label}: {width}x{height} pixels is too small (shorter side must be at least {min_side})",
            reason="too_small",
        )


def _to_u8(unit: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (clipping outside) to ``uint8``."""
    return np.rint(np.clip(np.nan_to_num(unit, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)


def _scale_range(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linearly map ``[low, high]`` to [0, 1]; a flat image maps to 0."""
    if not np.isfinite(low) or not np.isfinite(high) or high <= low:
        return np.zeros(values.shape, dtype=np.float64)
    return (values.astype(np.float64) - low) / (high - low)


def _rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """Luma of an (H, W, 3+) array, same value scale as the input, as float64."""
    return np.asarray(rgb[..., :3], dtype=np.float64) @ _LUMA


# --------------------------------------------------------------------------------------------------- PIL


def _decode_pil(data: bytes, fmt: str | None, label: str, limits: DecodeLimits) -> np.ndarray:
    """Decode with PIL, checking the header size before any pixel is decompressed."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if fmt == "png" and data.rfind(b"IEND") == -1:
        raise InvalidImageError(f"{label}: the PNG file is cut short (no end chunk)", reason="truncated")
    try:
        img = Image.open(io.BytesIO(data), formats=list(_PIL_FORMATS))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImageError(
            f"{label}: the header claims an enormous image (possible decompression bomb)", reason="decompression_bomb"
        ) from exc
    except UnidentifiedImageError as exc:
        if fmt is None:
            raise InvalidImageError(f"{label}: not a recognised image format", reason="not_an_image") from exc
        raise InvalidImageError(
            f"{label}: the {fmt.upper()} header is cut short or corrupt", reason="truncated"
        ) from exc
    with img:
        _check_size(img.size[0], img.size[1], label, limits)
        try:
            img.load()  # full decode: a truncated stream raises here (LOAD_TRUNCATED_IMAGES stays False)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InvalidImageError(f"{label}: possible decompression bomb", reason="decompression_bomb") from exc
        except Exception as exc:
            raise InvalidImageError(
                f"{label}: the {img.format or 'image'} data is cut short or corrupt ({exc})", reason="truncated"
            ) from exc
        try:
            oriented = ImageOps.exif_transpose(img) or img
        except Exception:  # a broken EXIF block must not reject good pixels
            oriented = img
        return _pil_to_gray(oriented, label)


def _pil_to_gray(img: Any, label: str) -> np.ndarray:
    """Convert a loaded PIL image of any common mode to 8-bit grayscale (alpha is dropped)."""
    mode = img.mode
    if mode == "L":
        return np.asarray(img, dtype=np.uint8)
    if mode == "1":
        return np.asarray(img.convert("L"), dtype=np.uint8)
    if mode in ("LA", "La"):
        return np.asarray(img, dtype=np.uint8)[..., 0]
    if mode in ("P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        return _to_u8(_rgb_to_gray(np.asarray(img.convert("RGB"))) / 255.0)
    if mode == "F" or mode.startswith("I"):
        values = np.asarray(img).astype(np.float64)
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            return np.zeros(values.shape[:2], dtype=np.uint8)
        return _to_u8(_scale_range(values, float(finite.min()), float(finite.max())))
    raise InvalidImageError(f"{label}: unsupported image mode {mode!r}", reason="unsupported")


# ------------------------------------------------------------------------------------------------- DICOM


def has_pixel_data(ds: Any) -> bool:
    """Whether a DICOM data set holds an image (integer, float or double-float pixel data)."""
    return any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def dicom_study_uid(data: bytes) -> str | None:
    """The StudyInstanceUID of a DICOM file (its header only), or None: not DICOM, none given, or not a UID."""
    import re

    import pydicom

    has_preamble = data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=not has_preamble, stop_before_pixels=True)
        uid = str(ds.get("StudyInstanceUID", "") or "")
    except Exception:  # not DICOM: no study UID
        return None
    return uid if re.fullmatch(r"[0-9.]{1,64}", uid) else None


def _decode_dicom(data: bytes, label: str, limits: DecodeLimits) -> np.ndarray:
    """Decode a DICOM file's first frame to display-ready 8-bit grayscale."""
    import pydicom
    from pydicom.uid import UID

    has_preamble = data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=not has_preamble)
    except Exception as exc:
        raise InvalidImageError(f"{label}: the DICOM file is cut short or corrupt ({exc})", reason="truncated") from exc
    if len(ds) == 0:
        raise InvalidImageError(f"{label}: the DICOM file is cut short (no data elements)", reason="truncated")
    if not has_pixel_data(ds):
        if "Rows" in ds or "Columns" in ds:  # pydicom stops quietly at EOF: image attributes but no pixels = cut
            raise InvalidImageError(f"{label}: the DICOM file is cut short before its pixel data", reason="truncated")
        raise InvalidImageError(f"{label}: the DICOM file has no pixel data (e.g. a report)", reason="no_pixel_data")
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows <= 0 or cols <= 0:
        raise InvalidImageError(f"{label}: the DICOM file does not give the image size", reason="truncated")
    _check_size(cols, rows, label, limits)

    if not hasattr(ds, "file_meta"):
        ds.file_meta = pydicom.dataset.FileMetaDataset()
    if not ds.file_meta.get("TransferSyntaxUID"):
        ds.file_meta.TransferSyntaxUID = UID(_native_syntax(ds))
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    _require_decoder(syntax, label)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR") and int(ds.get("SamplesPerPixel", 1)) != 3:
        raise InvalidImageError(f"{label}: unsupported DICOM photometric {photometric!r}", reason="unsupported")

    from pydicom.pixels import pixel_array

    try:
        arr = pixel_array(ds, index=0)  # first frame only
    except InvalidImageError:
        raise
    except Exception as exc:
        raise InvalidImageError(
            f"{label}: the DICOM pixel data is cut short or corrupt ({exc})", reason="truncated"
        ) from exc
    if arr.ndim == 3 and arr.shape[-1] == 3:
        return _dicom_colour(arr, ds, photometric)
    if arr.ndim != 2:
        raise InvalidImageError(f"{label}: unsupported DICOM pixel layout {arr.shape}", reason="unsupported")
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        return _dicom_colour(apply_color_lut(arr, ds), ds, photometric)
    return _dicom_gray(arr, ds, photometric == "MONOCHROME1")


def _native_syntax(ds: Any) -> str:
    """Transfer syntax of a data set read without file meta, from how pydicom found it encoded."""
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    implicit, little = ds.original_encoding
    if implicit:
        return str(ImplicitVRLittleEndian)
    return str(ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian)


def _require_decoder(syntax: Any, label: str) -> None:
    """Raise "unsupported" when no installed plugin decodes this transfer syntax."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise InvalidImageError(
            f"{label}: DICOM transfer syntax {syntax.name} is not supported", reason="unsupported"
        ) from exc
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
        raise InvalidImageError(
            f"{label}: cannot decompress DICOM {syntax.name} here (needs {missing})", reason="unsupported"
        )


def _dicom_gray(arr: np.ndarray, ds: Any, invert: bool) -> np.ndarray:
    """Modality LUT, then the first VOI LUT or window when present, else the range the stored bits hold (a robust
    stretch for data filling little of it), then polarity; see docs/guide/serving.md (DICOM input)."""
    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(arr, ds))
    unit: np.ndarray | None = None
    try:
        if ds.get("VOILUTSequence"):
            unit = _apply_voi_lut_table(values, ds)
        elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
            unit = _apply_window(values, ds)
    except Exception:  # malformed window/LUT: fall back to the data's own range rather than reject the image
        unit = None
    if unit is None:
        unit = _without_window(values, ds)
    if invert:
        unit = 1.0 - np.clip(unit, 0.0, 1.0)
    return _to_u8(unit)


def _without_window(values: np.ndarray, ds: Any) -> np.ndarray:
    """Values without a VOI transform mapped to [0, 1]: over the range the stored bits hold (through the modality
    LUT), so a film saved as DICOM reads as the same pixels as its PNG (8 bits as they are; 16 bits scaled by
    257 back to them); data spanning under a quarter of that range (a declared bit depth the detector does not
    use) are stretched between their 0.5 and 99.5 percentiles instead."""
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.float64)
    stored = _stored_range(ds)
    if stored is not None and float(finite.max()) - float(finite.min()) >= _MIN_RANGE_SHARE * (stored[1] - stored[0]):
        return _scale_range(values, *stored)
    low, high = np.percentile(finite, [_ROBUST_LOW, _ROBUST_HIGH])
    if high <= low:
        low, high = float(finite.min()), float(finite.max())
    return _scale_range(values, float(low), float(high))


def _stored_range(ds: Any) -> tuple[float, float] | None:
    """The lowest and highest value the stored bits can hold, after the modality LUT (None: bit depth unknown)."""
    from pydicom.pixels import apply_modality_lut

    bits = int(ds.get("BitsStored") or 0)
    if not 1 <= bits <= 32:
        return None
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    ends = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2**bits - 1])
    try:
        mapped = np.asarray(apply_modality_lut(ends, ds), dtype=np.float64)
    except Exception:  # a malformed modality LUT: the stored range is unknown
        return None
    low, high = float(mapped.min()), float(mapped.max())
    return (low, high) if high > low else None


def _apply_window(values: np.ndarray, ds: Any) -> np.ndarray:
    """The first Window Center/Width (LINEAR, LINEAR_EXACT or SIGMOID, via pydicom) mapped to [0, 1]."""
    from pydicom.pixels import apply_windowing

    out = np.asarray(apply_windowing(values, ds, index=0), dtype=np.float64)
    # pydicom's output range depends on bit depth and rescale: find it by windowing two extreme inputs.
    bounds = np.asarray(apply_windowing(np.array([-(2.0**40), 2.0**40]), ds, index=0), dtype=np.float64)
    return _scale_range(out, float(bounds.min()), float(bounds.max()))


def _apply_voi_lut_table(values: np.ndarray, ds: Any) -> np.ndarray:
    """The first VOI LUT Sequence item as a lookup table, mapped to [0, 1] by the table's own range.

    Done here rather than with pydicom's ``apply_voi`` because that indexes 8-bit tables through ``uint8``
    and so wraps around for tables longer than 256 entries (pydicom 3.0).
    """
    item = ds.VOILUTSequence[0]
    entries, first = int(item.LUTDescriptor[0]) or 2**16, int(item.LUTDescriptor[1])
    data = item.LUTData
    if isinstance(data, bytes | bytearray):
        little = ds.original_encoding[1] is not False
        table = np.frombuffer(data, dtype="<u2" if little else ">u2").astype(np.float64)
    else:
        table = np.atleast_1d(np.asarray(data, dtype=np.float64))
    table = table[:entries]
    index = np.clip(np.rint(values.astype(np.float64)) - first, 0, table.size - 1).astype(np.int64)
    return _scale_range(table[index], float(table.min()), float(table.max()))


def _dicom_colour(rgb: np.ndarray, ds: Any, photometric: str) -> np.ndarray:
    """Luma of an RGB DICOM frame (8- or 16-bit samples)."""
    if rgb.dtype == np.uint8:
        full = 255.0
    elif photometric == "PALETTE COLOR":
        full = 65535.0 if rgb.dtype.itemsize > 1 else 255.0
    else:
        full = float(2 ** int(ds.get("BitsStored", 8)) - 1)
    return _to_u8(_rgb_to_gray(rgb) / full)


def display_png(data: bytes, *, name: str = "", limits: DecodeLimits = DEFAULT_LIMITS) -> bytes:
    """A stored upload (PNG, JPEG, DICOM...) as an 8-bit grayscale PNG a browser can show: the pixels the model
    read, before resizing (DICOM windowed and inverted as :func:`decode_image` does)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(decode_image(data, name=name, limits=limits), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()
