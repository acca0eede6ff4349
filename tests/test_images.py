"""Images of any depth -> 8 bits that sam3's loader reads faithfully: data_prep.images and its CLI,
python -m data_prep.convert_images, on files that look like a catheter lab's exports (tests/angiograms.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from angiograms import (
    MAX_12_BIT,
    cine,
    compressed_without_decoder,
    png16,
    ramp,
    tiff16,
    without_pixel_data,
    write_dicom,
    xa_dataset,
)
from PIL import Image
from pydicom import dcmread, uid
from pydicom.dataset import Dataset

from common.errors import InputError, run_cli
from data_prep import convert_images
from data_prep.images import kept_as_is, read_image, sam3_mode_problem


def _sam3_reads(path) -> np.ndarray:
    """What sam3's COCO loader makes of a file: ``Image.open(f).convert("RGB")``, first channel."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))[..., 0]


def _monotone_spanning_0_255(row: np.ndarray) -> bool:
    return bool(np.all(np.diff(row.astype(int)) >= 0) and row[0] == 0 and row[-1] == 255)


# --- 16-bit PNG and TIFF ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("write, name", [(png16, "P012_run3.png"), (tiff16, "P012_run3.tif")], ids=["png", "tiff"])
def test_a_12_bit_frame_in_a_16_bit_file_maps_its_bit_range_onto_0_255(write, name, tmp_path):
    path = write(tmp_path / name, ramp())
    assert (_sam3_reads(path) == 255).mean() > 0.9, "premise: sam3's own read is nearly white"

    image = read_image(path)

    assert image.pixels.dtype == np.uint8 and image.pixels.shape == (32, 64)
    assert all(_monotone_spanning_0_255(row) for row in image.pixels)
    assert len(np.unique(image.pixels)) > 60  # every column its own level: nothing saturated
    assert image.windowing == {"source": path.name, "frame": 0, "frames": 1, "mode": "I;16", "method": "bit_depth",
                               "bits": 12, "window": [0.0, 4095.0], "inverted": False}


def test_bits_fixes_the_depth_so_a_dim_frame_stays_dim(tmp_path):
    path = png16(tmp_path / "dim.png", ramp(hi=1023))
    assert read_image(path).windowing["bits"] == 10  # inferred from the frame's largest value: stretched
    fixed = read_image(path, bits=12)
    assert fixed.windowing["window"] == [0.0, 4095.0] and fixed.pixels.max() == round(1023 * 255 / 4095)


def test_bits_smaller_than_the_values_is_refused_naming_the_value(tmp_path):
    path = png16(tmp_path / "a.png", ramp())
    with pytest.raises(InputError, match=r"a.png: frame 0 holds the value 4095, more than 10 bits .* --bits 12"):
        read_image(path, bits=10)


@pytest.mark.parametrize("pixels, mode", [(ramp().astype(np.float32) / 7, "F"),
                                          (ramp().astype(np.int32) - 2000, "I")], ids=["float", "signed"])
def test_float_and_signed_images_map_their_own_minimum_maximum(pixels, mode, tmp_path):
    path = tmp_path / "frame.tif"
    Image.fromarray(pixels).save(path)
    image = read_image(path)
    assert image.windowing["mode"] == mode and image.windowing["method"] == "min_max"
    assert image.windowing["window"] == pytest.approx([float(pixels.min()), float(pixels.max())])
    assert all(_monotone_spanning_0_255(row) for row in image.pixels)


def test_8_bit_grey_and_rgb_are_kept_as_they_are(tmp_path):
    grey, rgb = ramp(hi=255).astype(np.uint8), np.dstack([ramp(hi=255).astype(np.uint8)] * 3)
    for name, pixels in (("grey.png", grey), ("rgb.jpg", rgb)):
        Image.fromarray(pixels).save(tmp_path / name)
        image = read_image(tmp_path / name)
        assert image.windowing["method"] == "8bit" and kept_as_is(image.windowing)
        assert np.array_equal(image.pixels, np.asarray(Image.open(tmp_path / name)))


def test_a_palette_image_becomes_the_grey_levels_its_palette_holds(tmp_path):
    Image.fromarray(ramp(hi=255).astype(np.uint8)).convert("P").save(tmp_path / "palette.png")
    image = read_image(tmp_path / "palette.png")
    assert not kept_as_is(image.windowing) and image.windowing["mode"] == "P"
    assert image.pixels.shape == (32, 64, 3) and all(np.all(np.diff(row[:, 0].astype(int)) >= 0)
                                                     for row in image.pixels)


def test_an_image_mode_nothing_here_reads_is_refused(tmp_path):
    Image.new("CMYK", (8, 8)).save(tmp_path / "print.tif")
    with pytest.raises(InputError, match=r"print.tif: PIL mode CMYK is not an image mode this project can map"):
        read_image(tmp_path / "print.tif")


# --- DICOM ---------------------------------------------------------------------------------------------------


def test_a_frame_of_a_multi_frame_run_is_the_frame_asked_for(tmp_path):
    run = cine(3)
    path = write_dicom(tmp_path / "P012_run3.dcm", xa_dataset(run))
    for k in range(3):
        image = read_image(path, frame=k)
        expected = np.rint(run[k] * (255 / MAX_12_BIT)).astype(np.uint8)  # no window: 0-4095 onto 0-255
        assert np.array_equal(image.pixels, expected)
        assert image.windowing == {"source": "P012_run3.dcm", "frame": k, "frames": 3, "mode": "DICOM MONOCHROME2",
                                   "method": "bits_stored", "window": [0.0, 4095.0], "inverted": False}


def test_the_files_window_center_and_width_become_0_and_255(tmp_path):
    path = write_dicom(tmp_path / "w.dcm", xa_dataset(ramp(), window=(2048, 1024)))
    image = read_image(path)
    assert image.windowing["method"] == "window" and image.windowing["window"] == [1536.0, 2560.0]
    row, stored = image.pixels[0], ramp()[0]
    assert (row[stored <= 1536] == 0).all() and (row[stored >= 2560] == 255).all()
    inside = (stored > 1540) & (stored < 2555)
    assert 0 < row[inside].min() and row[inside].max() < 255 and np.all(np.diff(row.astype(int)) >= 0)


def test_the_window_is_in_rescaled_units(tmp_path):
    """Rescale first (slope 2, intercept -1000: stored 0-4095 -> -1000..7190), then the window."""
    path = write_dicom(tmp_path / "r.dcm", xa_dataset(ramp(), window=(3000, 2000), rescale=(2, -1000)))
    row, stored = read_image(path).pixels[0], ramp()[0]
    modality = stored.astype(int) * 2 - 1000
    assert (row[modality <= 2000] == 0).all() and (row[modality >= 4000] == 255).all()


def test_monochrome1_is_inverted_so_vessels_stay_dark(tmp_path):
    pixels = cine(2)
    mono2 = read_image(write_dicom(tmp_path / "m2.dcm", xa_dataset(pixels)), frame=1)
    mono1 = read_image(write_dicom(tmp_path / "m1.dcm", xa_dataset(pixels, photometric="MONOCHROME1")), frame=1)
    assert np.array_equal(mono1.pixels, 255 - mono2.pixels)
    assert mono1.windowing["inverted"] and not mono2.windowing["inverted"]


def test_a_voi_lut_is_preferred_to_the_window(tmp_path):
    """A VOI LUT that reverses the 12-bit range, beside a window: the LUT is applied (as pydicom prefers it)."""
    ds = xa_dataset(ramp(), window=(2048, 1024))
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4096, 0, 12])  # entries, first value mapped, bits per entry
    item.add_new("LUTData", "US", list(range(MAX_12_BIT, -1, -1)))
    ds.VOILUTSequence = [item]
    image = read_image(write_dicom(tmp_path / "lut.dcm", ds))
    assert image.windowing["method"] == "voi_lut" and image.windowing["window"] == [0.0, 4095.0]
    assert image.pixels[0, 0] == 255 and image.pixels[0, -1] == 0 and np.all(np.diff(image.pixels[0].astype(int)) <= 0)


def test_a_voi_lut_declared_16_bit_with_12_bit_entries_spans_0_to_255(tmp_path):
    """Vendors often declare 16 bits per entry for a LUT whose entries stay below 4096: scaling by the declared
    depth would leave the image nearly black."""
    ds = xa_dataset(ramp())
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4096, 0, 16])
    item.add_new("LUTData", "US", list(range(MAX_12_BIT + 1)))
    ds.VOILUTSequence = [item]
    image = read_image(write_dicom(tmp_path / "lut16.dcm", ds))
    assert image.windowing["method"] == "voi_lut"
    assert image.pixels[0, 0] == 0 and image.pixels[0, -1] == 255


def test_an_invalid_window_is_ignored_and_said_so(tmp_path):
    """A Window Width of 0 (pydicom refuses widths below 1) falls back to the stored bit range, recorded."""
    image = read_image(write_dicom(tmp_path / "w0.dcm", xa_dataset(ramp(), window=(2048, 0))))
    assert image.windowing["method"].startswith("bits_stored (the file's VOI LUT / window is invalid")
    assert image.windowing["window"] == [0.0, 4095.0] and image.pixels[0, -1] == 255


def test_a_compressed_run_is_decoded_by_pydicoms_plugin(tmp_path):
    run = cine(3)
    plain = write_dicom(tmp_path / "plain.dcm", xa_dataset(run, window=(2000, 3000)))
    ds = dcmread(plain)
    ds.compress(uid.RLELossless)  # pydicom's own RLE encoder; decoded by its RLE plugin
    rle = write_dicom(tmp_path / "rle.dcm", ds)
    assert dcmread(rle).file_meta.TransferSyntaxUID == uid.RLELossless
    assert np.array_equal(read_image(rle, frame=2).pixels, read_image(plain, frame=2).pixels)


def test_a_compressed_run_without_a_decoder_names_the_syntax_and_what_to_install(tmp_path):
    path, syntax = compressed_without_decoder(tmp_path / "jpeg.dcm")
    with pytest.raises(InputError) as err:
        read_image(path)
    message = str(err.value)
    assert str(path) in message and syntax.name in message and str(syntax) in message
    assert "pip install pylibjpeg" in message and "python-gdcm" in message


def test_a_dicom_without_pixel_data_is_refused(tmp_path):
    with pytest.raises(InputError, match=r"header.dcm: holds no pixel data"):
        read_image(without_pixel_data(tmp_path / "header.dcm"))


@pytest.mark.parametrize("frame", [3, -1])
def test_a_frame_index_out_of_range_is_refused_naming_the_frame_count(frame, tmp_path):
    path = write_dicom(tmp_path / "run.dcm", xa_dataset(cine(3)))
    with pytest.raises(InputError, match=rf"run.dcm: frame {frame} is out of range: the file holds 3 frame\(s\)"):
        read_image(path, frame=frame)


# --- what the validator says -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["L", "RGB", "LA", "RGBA", "P", "PA", "1"])
def test_modes_sam3_reads_faithfully_raise_no_problem(mode, tmp_path):
    """Palette and 1-bit images are read as what they look like (Image.convert("RGB")): never refused."""
    assert sam3_mode_problem(tmp_path / "f.png", mode) is None


@pytest.mark.parametrize("mode, kind", [("I;16", "16-bit"), ("I;16B", "16-bit"), ("I", "32-bit integer"),
                                        ("F", "floating-point")])
def test_other_modes_are_a_problem_naming_the_command_that_converts_the_file(mode, kind, tmp_path):
    problem = sam3_mode_problem(tmp_path / "f.png", mode)
    assert f"is a {kind} image" in problem
    assert f"python -m data_prep.convert_images {tmp_path / 'f.png'} --out" in problem


# --- python -m data_prep.convert_images --------------------------------------------------------------------------


@pytest.fixture
def exports(tmp_path):
    """A folder as a user gets it: a 3-frame MONOCHROME1 run with a window, a 2-frame MONOCHROME2 run without one,
    a 16-bit PNG and a 16-bit TIFF."""
    root = tmp_path / "exports"
    write_dicom(root / "P1_run1.dcm", xa_dataset(cine(3), photometric="MONOCHROME1", window=(2048, 4096)))
    write_dicom(root / "P2_run1.dcm", xa_dataset(cine(2)))
    png16(root / "P3_f0.png", ramp())
    tiff16(root / "P4_f0.tif", ramp())
    return root


def test_convert_images_writes_8_bit_pngs_and_their_windowing(exports, tmp_path, capsys):
    out = tmp_path / "converted"
    assert run_cli(convert_images.main, [str(exports), "--out", str(out), "--all-frames"]) == 0
    names = ["P1_run1_frame0.png", "P1_run1_frame1.png", "P1_run1_frame2.png", "P2_run1_frame0.png",
             "P2_run1_frame1.png", "P3_f0.png", "P4_f0.png"]
    assert sorted(p.name for p in out.glob("*.png")) == names
    records = json.loads((out / "windowing.json").read_text())
    assert sorted(records) == names
    assert {n: (r["method"], r["inverted"]) for n, r in records.items() if n.startswith("P1")} == {
        f"P1_run1_frame{k}.png": ("window", True) for k in range(3)}
    assert records["P2_run1_frame1.png"]["method"] == "bits_stored"
    assert records["P3_f0.png"]["method"] == records["P4_f0.png"]["method"] == "bit_depth"
    for name in names:
        with Image.open(out / name) as im:
            assert im.mode == "L" and sam3_mode_problem(out / name, im.mode) is None
        assert np.array_equal(_sam3_reads(out / name), np.asarray(Image.open(out / name)))
    assert "wrote 7 PNG(s)" in capsys.readouterr().out


def test_convert_images_takes_one_frame_of_each_file_by_default(exports, tmp_path):
    out = tmp_path / "converted"
    assert run_cli(convert_images.main, [str(exports / "P1_run1.dcm"), str(exports / "P3_f0.png"),
                                         "--out", str(out), "--frame", "0"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["P1_run1_frame0.png", "P3_f0.png"]


def test_convert_images_writes_nothing_when_one_file_is_bad(exports, tmp_path, capsys):
    without_pixel_data(exports / "P5_header.dcm")
    out = tmp_path / "converted"
    assert run_cli(convert_images.main, [str(exports), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cannot convert 1 of 5 frame(s); nothing was written" in err and "P5_header.dcm: holds no pixel data" in err
    assert not out.exists() and list(tmp_path.iterdir()) == [exports]


def test_convert_images_passes_over_dicom_objects_that_are_no_image_in_a_folder(exports, tmp_path):
    """XA exports hold structured reports, DICOMDIRs and presentation states beside the runs: a folder listing
    leaves them out (no Rows: no image); the runs are converted."""
    report = xa_dataset(cine(1)[0])
    for tag in ("PixelData", "Rows", "Columns"):
        delattr(report, tag)
    write_dicom(exports / "P6_dose_report.dcm", report)
    out = tmp_path / "converted"
    assert run_cli(convert_images.main, [str(exports), "--out", str(out)]) == 0
    assert not any("P6" in p.name for p in out.iterdir()) and (out / "P1_run1_frame0.png").is_file()
    assert run_cli(convert_images.main, [str(exports / "P6_dose_report.dcm"), "--out", str(tmp_path / "one")]) == 2


def test_convert_images_never_writes_inside_its_input(exports, capsys):
    before = sorted(p.name for p in exports.iterdir())
    assert run_cli(convert_images.main, [str(exports), "--out", str(exports / "converted")]) == 2
    assert "lies inside INPUT 1" in capsys.readouterr().err
    assert sorted(p.name for p in exports.iterdir()) == before


def test_two_inputs_that_would_share_a_name_are_refused(exports, tmp_path, capsys):
    png16(tmp_path / "other" / "P3_f0.png", ramp())
    assert run_cli(convert_images.main, [str(exports), str(tmp_path / "other"), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert f"P3_f0.png: {exports / 'P3_f0.png'} and {tmp_path / 'other' / 'P3_f0.png'} would both be written" in err
    assert not (tmp_path / "c").exists()
