import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub: no network here

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests import media  # noqa: E402


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    """A folder of real encoded test videos, made once per session.

    h264_aac.mp4 (2 s, 25 fps, 440 Hz tone), vp9_opus.webm (2 s, 25 fps, 440 Hz tone), no_audio.mp4,
    truncated.mp4 (the first half of a 3 s H.264 file) and empty.mp4 (0 bytes).
    """
    if not media.have_ffmpeg():
        pytest.skip("ffmpeg is not on PATH: install it (apt-get install -y ffmpeg) to make test videos")
    folder = tmp_path_factory.mktemp("media")
    media.make_video(folder / "h264_aac.mp4", seconds=2.0, fps=25, codec="h264")
    media.make_video(folder / "vp9_opus.webm", seconds=2.0, fps=25, codec="vp9")
    media.make_video(folder / "no_audio.mp4", seconds=1.0, fps=25, codec="h264", audio=False)
    whole = media.make_video(folder / "whole_3s.mp4", seconds=3.0, fps=25, codec="h264", seed=1)
    media.truncate(whole, folder / "truncated.mp4", 0.5)
    media.make_empty(folder / "empty.mp4")
    return folder
