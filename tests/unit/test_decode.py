"""Decoding untrusted bytes: every format we accept, and every way a file can be unusable."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from care_companion.config import Settings
from care_companion.errors import InvalidImageError
from care_companion.imaging.decode import DEFAULT_LIMITS, DecodeLimits, decode_file, decode_image, sniff_format
from tests.conftest import shared_path
from tests.helpers import dicom_bytes

# ------------------------------------------------------------------------------------------- builders


def _ramp(height: int = 80, width: int = 100, high: int = 255, dtype: type = np.uint8) -> np.ndarray:
    """Columns rising from 0 (left) to ``high`` (right)."""
    return np.tile(np.linspace(0, high, width), (height, 1)).round().astype(dtype)


def _pil_bytes(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def _png(array: np.ndarray) -> bytes:
    return _pil_bytes(Image.fromarray(array))


def _jpeg(array: np.ndarray) -> bytes:
    return _pil_bytes(Image.fromarray(array), "JPEG", quality=95)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming ``width`` x ``height`` 8-bit gray, an empty IDAT and IEND."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


_dicom = dicom_bytes


def _reason(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS, *, name: str = "") -> str:
    with pytest.raises(InvalidImageError) as info:
        decode_image(data, name=name, limits=limits)
    return info.value.reason


# --------------------------------------------------------------------------------------------- sniff


def test_sniff_format_recognises_magic_bytes() -> None:
    ramp = _ramp()
    assert sniff_format(_png(ramp)) == "png"
    assert sniff_format(_jpeg(ramp)) == "jpeg"
    assert sniff_format(_dicom(ramp.astype(np.uint16))) == "dicom"
    assert sniff_format(_dicom(ramp.astype(np.uint16), preamble=False)) == "dicom"
    assert sniff_format(b"") is None
    assert sniff_format(b"hello world, not an image at all") is None
    assert sniff_format(_pil_bytes(Image.fromarray(ramp), "BMP")) is None  # PIL still decodes it


# -------------------------------------------------------------------------------------------- PIL side


def test_8bit_png_round_trips_exactly() -> None:
    ramp = _ramp()
    out = decode_image(_png(ramp), name="ramp.png")
    assert out.dtype == np.uint8 and out.shape == (80, 100)
    np.testing.assert_array_equal(out, ramp)


def test_16bit_png_is_scaled_by_its_actual_range() -> None:
    data = _ramp(high=1000, dtype=np.uint16) + 1000  # 1000..2000: would be near black if divided by 257
    encoded = _png(data)
    assert Image.open(io.BytesIO(encoded)).mode.startswith("I")
    out = decode_image(encoded)
    assert out.dtype == np.uint8
    assert out[:, 0].max() == 0 and out[:, -1].min() == 255
    assert np.all(np.diff(out[0].astype(int)) >= 0)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA"])
def test_colour_modes_become_luma(mode: str) -> None:
    rgb = np.zeros((80, 100, 3), dtype=np.uint8)
    rgb[:, :50] = (255, 0, 0)
    rgb[:, 50:] = (0, 0, 255)
    image = Image.fromarray(rgb)
    if mode == "RGBA":
        image.putalpha(128)
    elif mode == "P":
        image = image.quantize(colors=4)
    elif mode == "LA":
        image = image.convert("LA")
    out = decode_image(_png(np.asarray(image)) if mode != "P" else _pil_bytes(image))
    assert out.shape == (80, 100)
    assert abs(int(out[0, 0]) - 76) <= 2  # 0.299 * 255
    assert abs(int(out[0, -1]) - 29) <= 2  # 0.114 * 255


def test_jpeg_decodes_to_gray() -> None:
    ramp = _ramp()
    out = decode_image(_jpeg(np.stack([ramp] * 3, axis=-1)))
    assert out.shape == (80, 100)
    assert np.abs(out.astype(int) - ramp).max() <= 8


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
@pytest.mark.parametrize("keep", [0.5, 0.9, 40 / 1000])
def test_truncated_files_fail(fmt: str, keep: float) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (200, 200), dtype=np.uint8)  # incompressible
    data = _png(noise) if fmt == "png" else _jpeg(noise)
    cut = data[: max(40, int(len(data) * keep))]
    assert _reason(cut, name=f"cut.{fmt}") == "truncated"


def test_empty_random_and_tiny_inputs() -> None:
    assert _reason(b"") == "empty"
    assert _reason(np.random.default_rng(1).bytes(5000)) == "not_an_image"
    assert _reason(b"GIF89a nonsense") in {"not_an_image", "truncated"}
    assert _reason(_png(_ramp(10, 10))) == "too_small"
    assert _reason(_png(_ramp(80, 63)), DecodeLimits(min_side=64)) == "too_small"
    assert decode_image(_png(_ramp(20, 30)), limits=DecodeLimits(min_side=16)).shape == (20, 30)


def test_limits_default_to_the_settings_and_follow_them() -> None:
    fields = Settings.model_fields
    assert DecodeLimits() == DEFAULT_LIMITS == DecodeLimits(min_side=64, max_pixels=100_000_000)
    assert (DEFAULT_LIMITS.min_side, DEFAULT_LIMITS.max_pixels) == (
        fields["min_image_side"].default,
        fields["max_image_pixels"].default,
    )
    limits = DecodeLimits.from_settings(Settings(min_image_side=16, max_image_pixels=2_000))
    assert limits == DecodeLimits(min_side=16, max_pixels=2_000)
    assert _reason(_png(_ramp(40, 60)), limits) == "decompression_bomb"
    assert decode_image(_png(_ramp(20, 30)), limits=limits).shape == (20, 30)
    with pytest.raises(AttributeError):
        limits.min_side = 1  # type: ignore[misc]


def test_error_detail_names_the_file() -> None:
    with pytest.raises(InvalidImageError) as info:
        decode_image(b"", name="scans/patient7.png")
    assert "scans/patient7.png" in info.value.detail
    assert info.value.code == "invalid_image"


def test_decompression_bomb_header_is_refused() -> None:
    assert _reason(_png_header_only(100_000, 100_000)) == "decompression_bomb"


def test_size_is_checked_before_decoding() -> None:
    # The IDAT is empty, so decoding would fail as truncated: the bomb check must come first.
    assert _reason(_png_header_only(5000, 5000), DecodeLimits(max_pixels=1_000_000)) == "decompression_bomb"


def test_large_compressible_image_over_the_limit_is_refused() -> None:
    data = _png(np.zeros((1000, 1000), dtype=np.uint8))
    assert len(data) < 10_000
    assert _reason(data, DecodeLimits(max_pixels=500_000)) == "decompression_bomb"
    assert decode_image(data, limits=DecodeLimits(max_pixels=1_000_000)).shape == (1000, 1000)


# ------------------------------------------------------------------------------------------- DICOM


def test_dicom_monochrome2_window_is_applied() -> None:
    ramp = _ramp(high=4095, dtype=np.uint16)
    out = decode_image(_dicom(ramp, bits_stored=12, WindowCenter=2048, WindowWidth=1024))
    row = out[0]
    assert row[ramp[0] < 1500].max() == 0
    assert row[ramp[0] > 2600].min() == 255
    assert 100 < int(row[np.argmin(np.abs(ramp[0].astype(int) - 2048))]) < 156


def test_dicom_multi_valued_window_uses_the_first() -> None:
    ramp = _ramp(high=4095, dtype=np.uint16)
    out = decode_image(_dicom(ramp, bits_stored=12, WindowCenter=[1024, 3000], WindowWidth=[512, 100]))
    assert out[0, ramp[0] > 1300].min() == 255  # the second window would leave these dark
    assert out[0, ramp[0] < 700].max() == 0


def test_dicom_voi_lut_sequence_is_applied() -> None:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.LUTDescriptor = [4096, 0, 8]  # an 8-bit table longer than 256 entries
    item.add_new(0x00283006, "US", [int(v) for v in np.linspace(255, 0, 4096)])  # LUT Data: a reversed ramp
    ramp = _ramp(high=4095, dtype=np.uint16)
    out = decode_image(_dicom(ramp, bits_stored=12, VOILUTSequence=[item], WindowCenter=10, WindowWidth=2))
    assert out[0, 0] == 255 and out[0, -1] == 0  # the table wins over the window
    assert np.all(np.diff(out[0].astype(int)) <= 0)


def test_dicom_broken_window_falls_back_to_the_data_range() -> None:
    ramp = _ramp(high=4095, dtype=np.uint16)
    out = decode_image(_dicom(ramp, bits_stored=12, WindowCenter=2048, WindowWidth=0))
    assert out[0, 0] <= 3 and out[0, -1] >= 252


def test_dicom_monochrome1_is_inverted() -> None:
    ramp = _ramp(high=4095, dtype=np.uint16)
    out = decode_image(_dicom(ramp, photometric="MONOCHROME1", bits_stored=12))
    # MONOCHROME1: the lowest stored value is displayed white.
    assert out[0, 0] > 250 and out[0, -1] < 5
    assert np.all(np.diff(out[0].astype(int)) <= 0)


def test_dicom_without_window_is_shown_over_its_stored_range() -> None:
    """No window: 12-bit data are shown over 0-4095 as stored (not stretched to their own extremes), so a film
    keeps the intensities it was saved with; signed data and a rescale move that range with them."""
    data = (_ramp(high=3000, dtype=np.uint16) + 500).astype(np.uint16)
    out = decode_image(_dicom(data, bits_stored=12))
    assert np.array_equal(out, np.rint(data / 4095 * 255).astype(np.uint8))
    rescaled = decode_image(_dicom(data, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1000))
    assert np.array_equal(rescaled, out)  # the same linear map applied to the data and the range
    signed = decode_image(_dicom((data.astype(np.int16) - 2048), bits_stored=12))
    assert np.abs(signed.astype(int) - out).max() <= 1


def test_dicom_filling_little_of_its_bit_depth_is_stretched_robustly() -> None:
    """16 bits declared, 12 used: shown over the full 16-bit range the film would be black, so the data are
    stretched between their 0.5 and 99.5 percentiles; one hot pixel does not compress the rest."""
    data = (_ramp(high=3000, dtype=np.uint16) + 500).astype(np.uint16)
    data[0, 0] = 4095
    out = decode_image(_dicom(data, bits_stored=16))
    assert out[1, 0] <= 3 and out[1, -1] >= 252
    assert np.all(np.diff(out[1].astype(int)) >= 0)


def test_a_film_saved_as_dicom_reads_as_its_png() -> None:
    """The same pixels as PNG, as 8-bit MONOCHROME2 and as 16-bit MONOCHROME1 (inverted, scaled by 257) decode
    to the same array: no train/serve skew between the ways a film arrives."""
    film = _ramp(high=230, dtype=np.uint8) + 10
    for dicom in (
        _dicom(film, bits_stored=8),
        _dicom(((255 - film.astype(np.uint16)) * 257), photometric="MONOCHROME1"),
    ):
        assert np.array_equal(decode_image(dicom), decode_image(_png(film)))


def test_dicom_without_preamble_rgb_and_multiframe() -> None:
    ramp = _ramp(high=4095, dtype=np.uint16)
    assert decode_image(_dicom(ramp, bits_stored=12, preamble=False))[0, -1] >= 250
    rgb = np.zeros((80, 100, 3), dtype=np.uint8)
    rgb[..., 1] = 255
    assert abs(int(decode_image(_dicom(rgb, photometric="RGB", bits_stored=8))[0, 0]) - 150) <= 2
    frames = np.stack([ramp, ramp[:, ::-1]])
    first = decode_image(_dicom(frames, bits_stored=12))
    assert first.shape == (80, 100) and first[0, 0] < first[0, -1]


def test_dicom_without_pixel_data() -> None:
    assert _reason(_dicom(None, name="report.dcm")) == "no_pixel_data"


def test_dicom_truncated_in_pixel_data() -> None:
    data = _dicom(_ramp(high=4095, dtype=np.uint16), bits_stored=12)
    assert _reason(data[: len(data) - 2000]) == "truncated"
    assert _reason(data[:200]) == "truncated"


def test_dicom_too_large_or_small() -> None:
    assert _reason(_dicom(_ramp(dtype=np.uint16), Rows=20000, Columns=20000)) == "decompression_bomb"
    assert _reason(_dicom(_ramp(10, 10, dtype=np.uint16))) == "too_small"


def test_dicom_unknown_transfer_syntax_is_unsupported() -> None:
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    data = _dicom(_ramp(dtype=np.uint16))
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = UID("1.2.826.0.1.3680043.9.9999.1")  # private: no decoder anywhere
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, implicit_vr=False, little_endian=True)
    assert _reason(buf.getvalue()) == "unsupported"


# -------------------------------------------------------------------------------------------- files


def test_decode_file_reads_and_names(tmp_path: Path) -> None:
    path = tmp_path / "ok.png"
    path.write_bytes(_png(_ramp()))
    assert decode_file(path).shape == (80, 100)
    with pytest.raises(InvalidImageError) as info:
        decode_file(tmp_path / "missing.png")
    assert info.value.reason == "unreadable" and "missing.png" in info.value.detail
    with pytest.raises(InvalidImageError) as info:
        decode_file(tmp_path)
    assert info.value.reason == "unreadable"
    (tmp_path / "small.png").write_bytes(_png(_ramp(20, 20)))
    assert decode_file(tmp_path / "small.png", limits=DecodeLimits(min_side=10)).shape == (20, 20)


def test_real_truncated_jpegs_fail_as_truncated() -> None:
    files = sorted(shared_path("bad-inputs").glob("*.jpg"))
    assert files
    for path in files:
        with pytest.raises(InvalidImageError) as info:
            decode_file(path)
        assert info.value.reason == "truncated", path


def test_real_chest_xray_decodes() -> None:
    path = sorted(shared_path("cxr-real", "normal").iterdir())[0]
    image = decode_file(path)
    assert image.dtype == np.uint8 and image.ndim == 2 and min(image.shape) >= 64
    assert image.std() > 10


# ------------------------------------------------------------------------------------------ property

_SEEDS = [
    _png(_ramp(70, 70)),
    _jpeg(_ramp(70, 70)),
    _dicom(_ramp(70, 70, high=4095, dtype=np.uint16), bits_stored=12, WindowCenter=2000, WindowWidth=800),
]


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=600), _mutated()))
def test_any_bytes_give_an_image_or_invalid_image_error(data: bytes) -> None:
    try:
        image = decode_image(data, name="fuzz", limits=DecodeLimits(min_side=8, max_pixels=1_000_000))
    except InvalidImageError as exc:
        assert exc.reason in {
            "empty",
            "not_an_image",
            "truncated",
            "too_small",
            "decompression_bomb",
            "no_pixel_data",
            "unsupported",
        }
    else:
        assert image.dtype == np.uint8 and image.ndim == 2
