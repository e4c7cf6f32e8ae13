"""Decoding real encoded files: frames by index with decord or PyAV, audio tracks, broken files."""

from pathlib import Path

import av
import numpy as np
import pytest

from egodistill.common import MediaError
from egodistill.extract import decode
from egodistill.extract.decode import open_video, read_audio, read_audio_track
from egodistill import testing as media

REAL_VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "real" / "videos"


def tone_peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


# --- opening and choosing a backend ---------------------------------------------------------

def test_h264_opens_with_decord(media_dir):
    with open_video(media_dir / "h264_aac.mp4") as video:
        assert video.backend == "decord" and video.fallback_reason is None
        assert video.fps == 25 and video.num_frames == 50
        assert video.duration == pytest.approx(2.0)
        assert video.path == media_dir / "h264_aac.mp4"


def test_vp9_opens_with_pyav_and_says_why(media_dir):
    with open_video(media_dir / "vp9_opus.webm") as video:
        assert video.backend == "pyav"
        assert "VP9" in video.fallback_reason and "PyAV" in video.fallback_reason
        assert video.fps == 25 and video.num_frames == 50
        assert video.duration == pytest.approx(2.0, abs=0.05)
        assert video.frames([0, 49]).shape == (2, 64, 96, 3)


def test_prefer_pyav_is_not_a_fallback(media_dir):
    with open_video(media_dir / "h264_aac.mp4", prefer="pyav") as video:
        assert video.backend == "pyav" and video.fallback_reason is None
        assert video.fps == 25 and video.num_frames == 50


def test_without_decord_pyav_does_everything(media_dir, monkeypatch):
    monkeypatch.setattr(decode, "decord", None)
    with open_video(media_dir / "h264_aac.mp4") as video:
        assert video.backend == "pyav" and video.fallback_reason == "decord is not installed; decoded with PyAV"
        assert video.frames([3]).shape == (1, 64, 96, 3)
    assert abs(len(read_audio_track(media_dir / "h264_aac.mp4")) - 48000) <= 1024


# --- frames -----------------------------------------------------------------------------------

def test_decord_and_pyav_frames_are_identical(media_dir):
    every = np.arange(50)
    with open_video(media_dir / "h264_aac.mp4") as by_decord, open_video(media_dir / "h264_aac.mp4", prefer="pyav") as by_pyav:
        first = by_decord.frames(every)
        second = by_pyav.frames(every)
    assert first.dtype == np.uint8 and first.shape == (50, 64, 96, 3)
    np.testing.assert_array_equal(first, second)
    assert np.abs(first[0].astype(int) - first[10]).mean() > 1  # the picture moves


@pytest.mark.parametrize("name, prefer", [("h264_aac.mp4", "decord"), ("h264_aac.mp4", "pyav"), ("vp9_opus.webm", "decord")])
def test_repeated_and_unsorted_indices(media_dir, name, prefer):
    with open_video(media_dir / name, prefer=prefer) as video:
        singles = {i: video.frames([i])[0] for i in (0, 3, 7, 30, 49)}
        batch = video.frames([7, 3, 7, 0, 49, 3, 30])
    assert batch.shape == (7, 64, 96, 3)
    for got, index in zip(batch, [7, 3, 7, 0, 49, 3, 30]):
        np.testing.assert_array_equal(got, singles[index])


def test_pyav_forward_reads_match_one_full_read(media_dir):
    """Segment after segment, as a worker reads: the decoder continues instead of seeking."""
    with open_video(media_dir / "vp9_opus.webm") as video:
        everything = video.frames(range(video.num_frames))
        for start in range(0, 44, 6):
            window = np.arange(start, start + 6, 2)
            np.testing.assert_array_equal(video.frames(window), everything[window])
        np.testing.assert_array_equal(video.frames([45, 2]), everything[[45, 2]])  # and back again


def test_frame_times(media_dir):
    with open_video(media_dir / "h264_aac.mp4") as video:
        times = video.frame_times([0, 25, 49, 25])
    assert times.dtype == np.float64
    np.testing.assert_allclose(times, [0.0, 1.0, 1.96, 1.0])


def test_out_of_range_and_empty_indices(media_dir):
    path = media_dir / "h264_aac.mp4"
    with open_video(path) as video:
        for bad in ([50], [-1], [0, 120]):
            with pytest.raises(MediaError, match="h264_aac.mp4 has 50 frames"):
                video.frames(bad)
        assert video.frames([]).shape == (0, 64, 96, 3)


def test_decord_failure_while_reading_switches_to_pyav(media_dir):
    class Broken:
        def get_batch(self, indices):
            raise RuntimeError("[10:00:00] /src/video/video_reader.cc:42: Error sending packet")

    with open_video(media_dir / "h264_aac.mp4", prefer="pyav") as reference:
        expected = reference.frames([4, 40])
    with open_video(media_dir / "h264_aac.mp4") as video:
        video._decord = Broken()
        np.testing.assert_array_equal(video.frames([4, 40]), expected)
        assert video.backend == "pyav"
        assert video.fallback_reason == "decord failed reading frames (Error sending packet); decoded with PyAV"


# --- audio ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["h264_aac.mp4", "vp9_opus.webm"])
def test_audio_track_is_the_tone(media_dir, name):
    track = read_audio_track(media_dir / name, sample_rate=24000)
    assert track.dtype == np.float32 and track.ndim == 1
    assert 48000 - 512 <= len(track) <= 48000 + 1024  # 2 s, give or take codec padding
    assert tone_peak_hz(track, 24000) == pytest.approx(440, abs=1)
    assert 0.1 < np.abs(track).max() <= 1.0


def test_audio_window_and_rate(media_dir):
    path = media_dir / "h264_aac.mp4"
    window = read_audio(path, sample_rate=16000, start=0.5, stop=1.5)
    assert window.shape == (16000,) and window.dtype == np.float32
    assert tone_peak_hz(window, 16000) == pytest.approx(440, abs=2)
    assert len(read_audio(path, start=1.5)) == pytest.approx(12000, abs=1024)  # to the end
    with pytest.raises(ValueError):
        read_audio(path, start=1.0, stop=0.5)


def test_audio_falls_back_to_pyav(media_dir, monkeypatch):
    def no_decord(*args, **kwargs):
        raise RuntimeError("decord cannot")

    monkeypatch.setattr(decode, "AudioReader", no_decord)
    track = read_audio_track(media_dir / "vp9_opus.webm", sample_rate=24000)
    assert track.dtype == np.float32 and abs(len(track) - 48000) <= 1024
    assert tone_peak_hz(track, 24000) == pytest.approx(440, abs=1)


def test_no_audio_stream(media_dir):
    with pytest.raises(MediaError, match=r"video .*no_audio\.mp4 has no audio stream"):
        read_audio_track(media_dir / "no_audio.mp4")
    with open_video(media_dir / "no_audio.mp4") as video:  # its frames are fine
        assert video.num_frames == 25


# --- broken files -------------------------------------------------------------------------------

def test_truncated_video_raises_for_missing_frames(media_dir):
    path = media_dir / "truncated.mp4"
    with open_video(path) as video:  # the index is at the front, so it opens
        assert video.num_frames == 75
        assert video.frames([0, 5]).shape == (2, 64, 96, 3)
        with pytest.raises(MediaError, match=r"truncated\.mp4.*frame \d+ of 75 could not be decoded"):
            video.frames([5, 74])
        assert video.frames([1]).shape == (1, 64, 96, 3)  # still usable after the failure


def test_truncated_video_without_index_fails_on_open(tmp_path):
    if not media.have_ffmpeg():
        pytest.skip("ffmpeg is not on PATH")
    whole = media.make_video(tmp_path / "whole.mp4", seconds=1.0, faststart=False)  # index at the end
    cut = media.truncate(whole, tmp_path / "cut.mp4", 0.5)
    with pytest.raises(MediaError, match=r"cannot decode video .*cut\.mp4: "):
        open_video(cut)


def test_empty_and_missing_files(media_dir):
    empty = media_dir / "empty.mp4"
    for call in (open_video, read_audio_track):
        with pytest.raises(MediaError, match=rf"video {empty} is empty \(0 bytes\): re-copy it"):
            call(empty)
        with pytest.raises(MediaError, match=r"video .*nowhere\.mp4 not found"):
            call(media_dir / "nowhere.mp4")


def test_messages_are_one_line(media_dir):
    for path in (media_dir / "empty.mp4", media_dir / "truncated.mp4"):
        try:
            open_video(path).frames([74])
        except MediaError as err:
            assert "\n" not in str(err) and path.name in str(err)
        else:
            pytest.fail(f"{path} decoded")


# --- the real files beside the project ------------------------------------------------------------

@pytest.mark.skipif(not REAL_VIDEOS.is_dir(), reason=f"no real videos at {REAL_VIDEOS}")
@pytest.mark.parametrize("name, backend", [
    ("flipping_a_pancake.mkv", "decord"),         # H.264 + Opus
    ("mmaction2_test.avi", "pyav"),               # MPEG-4 part 2 with packed B-frames + MP3: decord's last frame is wrong
    ("egocentric_tap_vp9_opus.webm", "pyav"),     # 1080p VP9 + Opus
])
def test_real_videos(name, backend):
    path = REAL_VIDEOS / name
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    with open_video(path) as video:
        assert video.backend == backend and video.fps > 0 and video.num_frames > 10
        last = video.num_frames - 1
        frames = video.frames([0, last // 2, last])
        assert frames.dtype == np.uint8 and frames.shape[0] == 3 and frames.shape[3] == 3
        assert frames.std() > 5  # a picture, not a blank
        # Every frame read by index equals the same frame of a plain sequential decode.
        with av.open(str(path)) as container:
            sequential = [f.to_ndarray(format="rgb24") for i, f in enumerate(container.decode(video=0)) if i in (0, last // 2, last)]
        np.testing.assert_array_equal(np.stack(sequential), frames)
    second = read_audio(path, sample_rate=24000, start=1.0, stop=2.0)
    assert second.shape == (24000,) and np.abs(second).max() > 0.001
