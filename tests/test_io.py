"""Image input: formats, bit depths, layouts, mpp metadata and bad files."""

import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from core.errors import ImageReadError, InputError
from core.io import ImageData, check_mpp, load_image, normalise_array


def _png(array, mode=None):
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def test_png_rgb_roundtrip(rgb_image):
    img = load_image(_png(rgb_image), name="a.png")
    assert img.rgb.dtype == np.uint8 and img.rgb.shape == (64, 80, 3)
    np.testing.assert_array_equal(img.rgb, rgb_image)
    assert img.mpp is None and img.mpp_source == "none" and img.name == "a.png"
    assert len(img.sha256) == 64


def test_rgba_grey_and_palette_become_rgb(rgb_image):
    rgba = np.dstack([rgb_image, np.full(rgb_image.shape[:2], 128, np.uint8)])
    img = load_image(_png(rgba))
    np.testing.assert_array_equal(img.rgb, rgb_image)
    assert any("alpha" in n for n in img.notes)
    grey = load_image(_png(rgb_image[..., 0]))
    np.testing.assert_array_equal(grey.rgb[..., 2], rgb_image[..., 0])
    pal = Image.fromarray(rgb_image).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    img = load_image(buf.getvalue())
    np.testing.assert_array_equal(img.rgb, np.asarray(pal.convert("RGB")))


def test_jpeg_reads(rgb_image):
    buf = io.BytesIO()
    Image.fromarray(rgb_image).save(buf, format="JPEG", quality=95)
    img = load_image(buf.getvalue())
    assert img.rgb.shape == (64, 80, 3)
    assert np.abs(img.rgb.astype(int) - rgb_image).mean() < 6


def test_tiff_16bit_scaled_and_resolution_in_cm(tmp_path, rgb_image):
    data16 = rgb_image.astype(np.uint16) * 257
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, data16, photometric="rgb", resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    img = load_image(path)
    np.testing.assert_array_equal(img.rgb, rgb_image)
    assert img.mpp == pytest.approx(0.25) and img.mpp_source == "tiff-resolution"


def test_tiff_resolution_in_inch_and_72dpi_ignored(tmp_path, rgb_image):
    path = tmp_path / "b.tif"
    tifffile.imwrite(path, rgb_image, photometric="rgb", resolution=(25400 / 0.5, 25400 / 0.5), resolutionunit="INCH")
    assert load_image(path).mpp == pytest.approx(0.5)
    path72 = tmp_path / "c.tif"
    tifffile.imwrite(path72, rgb_image, photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    assert load_image(path72).mpp is None


def test_ome_tiff_physical_size(tmp_path, rgb_image):
    path = tmp_path / "d.ome.tif"
    tifffile.imwrite(path, rgb_image, photometric="rgb", metadata={"axes": "YXS", "PhysicalSizeX": 0.325, "PhysicalSizeXUnit": "µm",
                                                                   "PhysicalSizeY": 0.325, "PhysicalSizeYUnit": "µm"}, ome=True)
    img = load_image(path)
    assert img.mpp == pytest.approx(0.325) and img.mpp_source == "ome"
    np.testing.assert_array_equal(img.rgb, rgb_image)


def test_grey_16bit_tiff(tmp_path):
    a = (np.arange(40 * 50, dtype=np.uint16).reshape(40, 50) * 30)
    path = tmp_path / "g.tif"
    tifffile.imwrite(path, a)
    img = load_image(path)
    assert img.rgb.shape == (40, 50, 3)
    np.testing.assert_array_equal(img.rgb[..., 0], ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8))


def test_user_mpp_overrides_and_is_checked(rgb_image):
    assert load_image(_png(rgb_image), mpp=0.5).mpp_source == "user"
    with pytest.raises(InputError, match="microns per pixel"):
        check_mpp(350)
    with pytest.raises(InputError):
        load_image(_png(rgb_image), mpp=-1)


@pytest.mark.parametrize(
    "data, message",
    [(b"", "empty"), (b"this is not an image at all", "not an image TILscope can read"), (b"II*\x00garbage", "TIFF")],
)
def test_bad_files_raise_clear_errors(data, message):
    with pytest.raises(ImageReadError, match=message):
        load_image(data, name="x")


def test_truncated_png_is_refused(rgb_image):
    data = _png(rgb_image)
    with pytest.raises(ImageReadError, match="damaged or truncated|not a readable"):
        load_image(data[: len(data) // 2])


def test_too_many_pixels_refused(rgb_image):
    with pytest.raises(ImageReadError, match="megapixels"):
        load_image(_png(rgb_image), max_pixels=1000)


def test_multichannel_fluorescence_keeps_its_channels_and_depth(tmp_path):
    """A 16-bit 5-channel ImageJ hyperstack (the Hoechst panel's layout) loads as (H, W, 5) uint16 with its names."""
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 15000, (5, 40, 48)).astype(np.uint16)
    path = tmp_path / "panel.tif"
    tifffile.imwrite(path, stack, imagej=True, resolution=(1 / 0.227, 1 / 0.227),
                     metadata={"axes": "CYX", "unit": "um", "Labels": ["H3342", "FITC", "Cy3", "Cy5", "AF751"]})
    img = load_image(path)
    assert img.data.shape == (40, 48, 5) and img.data.dtype == np.uint16
    np.testing.assert_array_equal(img.data, np.moveaxis(stack, 0, -1))
    assert img.channel_names == ("H3342", "FITC", "Cy3", "Cy5", "AF751") and not img.is_rgb
    assert img.mpp == pytest.approx(0.227)
    assert img.rgb.shape == (40, 48, 3) and img.rgb.dtype == np.uint8  # a composite, for display only


def test_the_shipped_hoechst_panel_tile_loads_intact():
    from pathlib import Path

    path = sorted((Path(__file__).resolve().parents[2] / "shared/data/hoechst-mif-lung").glob("L102_*[0-9].tif"))[0]
    img = load_image(path)
    assert img.data.shape == (256, 256, 5) and img.data.dtype == np.uint16
    assert img.channel_names[0] == "H3342" and img.mpp == pytest.approx(1.0, rel=0.05)
    np.testing.assert_array_equal(img.data, np.moveaxis(tifffile.imread(path), 0, -1))


def test_12bit_data_is_not_crushed(tmp_path):
    a = np.linspace(0, 4095, 30 * 40).reshape(30, 40).astype(np.uint16)
    path = tmp_path / "cam12.tif"
    tifffile.imwrite(path, a)
    img = load_image(path)
    assert img.data.dtype == np.uint16 and img.significant_bits == 12 and img.data.max() == 4095
    assert img.rgb.max() == 255 and img.rgb[..., 0].mean() > 120  # full range, not 1/16 of it
    assert any("12-bit" in n for n in img.notes)


def test_too_many_planes_refused(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((3, 4, 32, 32), np.uint8), metadata={"axes": "ZCYX"})
    with pytest.raises(ImageReadError, match="not a single 2-D image"):
        load_image(path)
    with pytest.raises(ImageReadError, match="channels"):
        ImageData(np.zeros((8, 8, 40), np.uint8), None, "x", "")


def test_normalise_array_float_alpha_and_negative():
    notes = []
    data, names, bits = normalise_array(np.full((4, 4), 0.5, np.float64), notes)
    assert data.dtype == np.float32 and bits is None and int(ImageData(data, None, "f", "").rgb[0, 0, 0]) == 128
    data, _, _ = normalise_array(np.zeros((4, 4, 4), np.uint8), notes, alpha=True)
    assert data.shape == (4, 4, 3) and any("alpha" in n for n in notes)
    with pytest.raises(ImageReadError, match="negative"):
        normalise_array(np.full((4, 4), -3, np.int16), [])
