"""Video and image files: mp4 round trip, atomic writes, PNG frames, contact sheets, clear errors."""

from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image

from anisora.inference import video_io
from anisora.inference.video_io import (
    display_scale,
    encode_png,
    read_image,
    read_video,
    write_contact_sheet,
    write_mp4,
    write_png_frames,
)
from anisora.io import atomic_write_bytes

RED, OUTLINE = (228, 52, 52), (24, 20, 32)


def sprite_clip(frames: int = 17, size: int = 32) -> np.ndarray:
    """Three flat background bands and a red 8x8 outlined square moving 1 px/frame to the right."""
    background = np.empty((size, size, 3), dtype=np.uint8)
    background[:10], background[10:20], background[20:] = (168, 196, 220), (120, 150, 110), (52, 60, 92)
    video = np.repeat(background[None], frames, axis=0)
    for t in range(frames):
        x, y = 4 + t, 12
        video[t, y : y + 8, x : x + 8] = OUTLINE
        video[t, y + 1 : y + 7, x + 1 : x + 7] = RED
    return video


def only_file(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_mp4_round_trip_keeps_shape_and_content(tmp_path):
    video = sprite_clip()
    path = write_mp4(tmp_path / "nested" / "clip.mp4", video, fps=8)
    assert path == tmp_path / "nested" / "clip.mp4"
    decoded = read_video(path)
    assert decoded.shape == video.shape and decoded.dtype == np.uint8
    error = np.abs(decoded.astype(np.int16) - video.astype(np.int16))
    assert error.mean() < 4.0
    # Flat regions away from the sprite come back within 8-bit YUV rounding.
    assert error[:, 0:8].max() <= 3
    assert only_file(tmp_path / "nested") == ["clip.mp4"]


def test_upscaled_mp4_reads_back_at_the_original_size(tmp_path):
    video = sprite_clip(frames=9, size=16)
    path = write_mp4(tmp_path / "big.mp4", video, scale=8)
    assert read_video(path).shape == (9, 128, 128, 3)
    small = read_video(path, downscale=8)
    assert small.shape == video.shape
    assert np.abs(small.astype(np.int16) - video.astype(np.int16)).mean() < 2.0
    with pytest.raises(ValueError, match="downscale 3 does not divide the video size 128x128"):
        read_video(path, downscale=3)


def test_display_scale_reaches_the_display_size_and_keeps_sizes_even():
    assert display_scale(16, 16) == 8
    assert display_scale(16, 32) == 8  # the shorter side decides
    assert display_scale(32, 32) == 4
    assert display_scale(512, 512) == 1
    odd = display_scale(15, 16)
    assert odd * 15 >= 128 and odd * 15 % 2 == 0


def test_mp4_overwrite_is_atomic_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "clip.mp4"
    write_mp4(path, sprite_clip(frames=3))
    write_mp4(path, sprite_clip(frames=5))
    assert len(read_video(path)) == 5
    assert only_file(tmp_path) == ["clip.mp4"]


def test_failed_mp4_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "clip.mp4"
    write_mp4(path, sprite_clip(frames=3))

    def crash_midway(target, frames, fps):
        target.write_bytes(b"half an mp4")
        raise RuntimeError("encoder died")

    monkeypatch.setattr(video_io, "_encode_mp4", crash_midway)
    with pytest.raises(RuntimeError, match="encoder died"):
        write_mp4(path, sprite_clip(frames=5))
    assert len(read_video(path)) == 3
    assert only_file(tmp_path) == ["clip.mp4"]


def test_non_uint8_frames_are_refused(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(tmp_path / "clip.mp4", sprite_clip(frames=3).astype(np.float32))
    assert only_file(tmp_path) == []


@pytest.mark.parametrize("shape", [(2, 31, 32, 3), (2, 32, 33, 3)])
def test_odd_size_is_refused_with_the_size(tmp_path, shape):
    h, w = shape[1:3]
    with pytest.raises(ValueError, match=f"{h}x{w}"):
        write_mp4(tmp_path / "odd.mp4", np.zeros(shape, dtype=np.uint8))
    assert not tmp_path.joinpath("odd.mp4").exists()
    assert only_file(tmp_path) == []


def test_missing_files_raise_one_line_errors_naming_the_path(tmp_path):
    for reader, name in ((read_video, "nope.mp4"), (read_image, "nope.png")):
        path = tmp_path / name
        with pytest.raises(FileNotFoundError) as info:
            reader(path)
        message = str(info.value)
        assert str(path) in message and "\n" not in message


def test_unreadable_files_raise_value_errors_naming_the_path(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="junk.png"):
        read_image(junk)
    junk_video = tmp_path / "junk.mp4"
    junk_video.write_bytes(b"this is not a video")
    with pytest.raises(ValueError, match="junk.mp4"):
        read_video(junk_video)


def test_empty_and_truncated_mp4s_raise_value_errors(tmp_path):
    """A copy cut at a packet boundary decodes quietly to fewer frames: the index's frame count catches it."""
    path = write_mp4(tmp_path / "clip.mp4", sprite_clip(frames=9, size=16))
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(video=0) if p.size]
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[: packets[3].pos + packets[3].size])
    with pytest.raises(ValueError, match=r"cut.mp4 is truncated: \d of its 9 frames decode"):
        read_video(cut)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.mp4 could not be decoded"):
        read_video(tmp_path / "empty.mp4")


def test_png_frames_are_lossless_and_zero_padded(tmp_path):
    video = sprite_clip(frames=3)
    paths = write_png_frames(tmp_path / "frames", video)
    assert [p.name for p in paths] == ["frame_0000.png", "frame_0001.png", "frame_0002.png"]
    assert only_file(tmp_path / "frames") == [p.name for p in paths]
    for path, frame in zip(paths, video):
        np.testing.assert_array_equal(read_image(path), frame)


def test_contact_sheet_grid_size_separators_and_scale(tmp_path):
    video = sprite_clip(frames=5, size=8)  # 5 frames -> ceil(sqrt(5)) = 3 columns, 2 rows
    path = write_contact_sheet(tmp_path / "sheet.png", video)
    sheet = read_image(path)
    assert sheet.shape == (2 * 9 - 1, 3 * 9 - 1, 3)
    np.testing.assert_array_equal(sheet[0:8, 9:17], video[1])  # row-major: frame 1 is row 0, column 1
    np.testing.assert_array_equal(sheet[9:17, 9:17], video[4])
    assert (sheet[8] == 255).all() and (sheet[:, 8] == 255).all()

    scaled = read_image(write_contact_sheet(tmp_path / "scaled.png", video, columns=1, scale=4))
    assert scaled.shape == (4 * (5 * 9 - 1), 4 * 8, 3)
    np.testing.assert_array_equal(scaled[:32:4, ::4], video[0])
    assert only_file(tmp_path) == ["scaled.png", "sheet.png"]


def test_read_image_converts_to_rgb_and_resizes(tmp_path):
    rgba = np.zeros((6, 4, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    image = read_image(tmp_path / "rgba.png")
    assert image.shape == (6, 4, 3) and image.dtype == np.uint8
    assert (image == (200, 0, 0)).all()

    Image.fromarray(np.full((6, 4), 90, dtype=np.uint8)).save(tmp_path / "grey.png")
    assert (read_image(tmp_path / "grey.png") == 90).all()

    resized = read_image(tmp_path / "rgba.png", size=(12, 10))
    assert resized.shape == (12, 10, 3)
    assert (resized == (200, 0, 0)).all()  # a flat image stays flat under bicubic resizing
    assert read_image(tmp_path / "rgba.png", size=(6, 4)).shape == (6, 4, 3)


def test_encode_png_is_lossless(tmp_path):
    frame = sprite_clip(frames=1)[0]
    atomic_write_bytes(tmp_path / "f.png", encode_png(frame))
    np.testing.assert_array_equal(read_image(tmp_path / "f.png"), frame)


def test_atomic_write_bytes_creates_parents_and_replaces(tmp_path):
    path = tmp_path / "a" / "b.txt"
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert only_file(tmp_path / "a") == ["b.txt"]
