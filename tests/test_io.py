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


def test_exif_orientation_is_applied_with_a_note(rgb_image):
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90° clockwise by the camera
    Image.fromarray(rgb_image).save(buf, format="JPEG", quality=95, exif=exif)
    img = load_image(buf.getvalue(), name="cam.jpg")
    assert img.shape == (80, 64) and any("EXIF orientation 6 applied" in n for n in img.notes)
    expected = np.rot90(rgb_image, -1)
    assert np.abs(img.rgb.astype(int) - expected).mean() < 6


def test_transparent_pixels_are_marked_and_are_not_tissue():
    from core.fitness import tissue_mask

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)  # colourful: tissue everywhere
    alpha = np.full((200, 200), 255, np.uint8)
    alpha[:, 100:] = 0  # the right half is transparent (black under alpha 0)
    rgb[:, 100:] = 0
    img = load_image(_png(np.dstack([rgb, alpha])), mpp=0.5)
    assert img.transparent is not None and img.transparent[:, 100:].all() and not img.transparent[:, :100].any()
    assert any("50.0 % of the pixels are transparent" in n for n in img.notes)
    assert img.with_mpp(0.25).transparent is img.transparent
    mask = tissue_mask(img, fluorescence=False)
    assert 0.4 < mask.fraction < 0.55  # only the opaque half
    opaque = load_image(_png(np.dstack([rgb, np.full((200, 200), 255, np.uint8)])))
    assert opaque.transparent is None
    with pytest.raises(ImageReadError, match="transparency mask"):
        ImageData(rgb, None, "x", "", transparent=np.zeros((5, 5), bool))


def test_pil_bomb_warning_below_the_limit_does_not_refuse(rgb_image, monkeypatch):
    """A 92 MP PNG is under the 100 MP limit: PIL's own 89 MP warning must not refuse it."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # 64 x 80 = 5120 px: warning, not error
    assert load_image(_png(rgb_image)).shape == (64, 80)


def test_float_images_are_scaled_by_their_range_and_nan_is_refused(tmp_path):
    a = np.linspace(0, 255, 30 * 40 * 3).reshape(30, 40, 3).astype(np.float32)
    path = tmp_path / "f.tif"
    tifffile.imwrite(path, a, photometric="rgb")
    img = load_image(path)
    assert img.data.dtype == np.float32 and img.data.max() == pytest.approx(1.0)
    assert any("divided by 255" in n for n in img.notes) and img.rgb.max() == 255 and img.rgb.std() > 50
    tifffile.imwrite(path, a * 200, photometric="rgb")
    assert any("divided by 65535" in n for n in load_image(path).notes)
    tifffile.imwrite(path, a / 255 - 0.1, photometric="rgb")
    assert any("negative values" in n and "clipped to 0" in n for n in load_image(path).notes)
    a[3, 4, 0] = np.inf
    a[5, 6, 1] = np.nan
    tifffile.imwrite(path, a, photometric="rgb")
    with pytest.raises(ImageReadError, match="f.tif: 2 pixel value\\(s\\) are NaN or infinite"):
        load_image(path)


def test_malformed_optional_mpp_is_ignored_with_a_note(tmp_path, rgb_image):
    path = tmp_path / "aperio.tif"
    tifffile.imwrite(path, rgb_image, photometric="rgb", description="Aperio Image Library | MPP = 0.25.1 | AppMag = 40")
    img = load_image(path)
    assert img.mpp is None and any("MPP = '0.25.1' is not a number" in n for n in img.notes)
    img = load_image(path, mpp=0.25)
    assert img.mpp == 0.25 and img.mpp_source == "user" and not any("MPP" in n for n in img.notes)
    tifffile.imwrite(path, rgb_image, photometric="rgb", description="Aperio Image Library | MPP = 0.2520 | AppMag = 40")
    assert load_image(path).mpp == pytest.approx(0.252)


def test_folders_missing_files_and_pages(tmp_path, rgb_image):
    with pytest.raises(ImageReadError, match="is a folder, not a file"):
        load_image(tmp_path)
    with pytest.raises(ImageReadError, match="no such file"):
        load_image(tmp_path / "none.png")
    frames = [Image.fromarray(np.full((20, 30, 3), v, np.uint8)) for v in (10, 120, 240)]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    img = load_image(gif, page=2)
    assert abs(int(img.rgb.mean()) - 120) < 10 and any("3 frames (pages): page 2 was read" in n for n in img.notes)
    with pytest.raises(ImageReadError, match="page 4 was asked for, but the file holds 3 pages"):
        load_image(gif, page=4)
    with pytest.raises(InputError, match="page must be a whole number from 1"):
        load_image(gif, page=0)
    single = load_image(_png(rgb_image))
    assert not any("page" in n for n in single.notes)


def test_tiff_pages_are_read_one_at_a_time(tmp_path):
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as w:
        for v in range(5):
            w.write(np.full((30, 40), v * 50, np.uint8), metadata=None)
    assert load_image(path, page=4).data.max() == 150
    assert any("holds 5 images" in n for n in load_image(path).notes)


def test_the_decoded_size_is_checked_before_decoding(tmp_path):
    """16 planes of 16 bits take 32 bytes a pixel: more than the 12 accepted per pixel of the limit."""
    path = tmp_path / "panel.tif"
    tifffile.imwrite(path, np.zeros((16, 100, 100), np.uint16), imagej=True, metadata={"axes": "CYX"})
    assert load_image(path).data.shape == (100, 100, 16)
    with pytest.raises(ImageReadError, match="would take 0.00 GB of memory, more than"):
        load_image(path, max_pixels=20_000)  # 10 000 px accepted, 320 kB decoded > 12 x 20 000 bytes


def test_the_output_folder_is_checked(tmp_path):
    from core.io import check_output_folder, write_output_folder

    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        check_output_folder(tmp_path / "file")
    with pytest.raises(InputError, match="no folder can be made under it"):
        check_output_folder(tmp_path / "file" / "a" / "b")
    (tmp_path / "out" / "overlay.png").mkdir(parents=True)
    with pytest.raises(InputError, match="overlay.png: is a folder"):
        check_output_folder(tmp_path / "out", ["cells.csv", "overlay.png"])

    def write(folder):
        (folder / "cells.csv").write_text("new")
        return [folder / "cells.csv"]

    files = write_output_folder(tmp_path / "fresh" / "sub", write)
    assert files == {"cells.csv": tmp_path / "fresh" / "sub" / "cells.csv"} and files["cells.csv"].read_text() == "new"
    files = write_output_folder(tmp_path / "out", write)  # an existing folder: files replaced, others kept
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cells.csv", "overlay.png"]


def test_a_multi_page_tiff_reads_the_page_asked_for_and_says_how_many(tmp_path):
    import tifffile

    from core.samples import get_sample

    field = get_sample("cd3-mosaic").load().rgb
    path = tmp_path / "two-pages.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(field, photometric="rgb")
        tif.write(field[::-1].copy(), photometric="rgb")
    from core.io import load_image

    first, second = load_image(path), load_image(path, page=2)
    assert first.n_pages == second.n_pages == 2
    assert np.array_equal(second.rgb, field[::-1]) and any("page 2 was read" in n for n in second.notes)


def test_channel_picker_builds_the_composite_a_model_reads():
    from core.errors import InputError
    from core.io import ImageData, select_channels

    stack = np.stack([np.full((8, 9), v, np.uint16) for v in (100, 2000, 4000)], axis=-1)
    image = ImageData(stack, 0.5, "panel.ome.tif", "", "ome", channel_names=("DAPI", "CD45", "gp100"))
    rgb = select_channels(image, ("CD45", "gp100", "DAPI"), ("red", "green", "blue"))
    assert rgb.is_rgb and rgb.channel_names == ("red", "green", "blue")
    assert list(rgb.data[0, 0]) == [2000, 4000, 100] and "CD45 as red" in rgb.notes[-1]
    empty = select_channels(image, ("CD45", None, "DAPI"), ("red", "green", "blue"))
    assert empty.data[..., 1].max() == 0
    with pytest.raises(InputError, match="no channel named 'CD3'"):
        select_channels(image, ("CD3", None, "DAPI"), ("red", "green", "blue"))
