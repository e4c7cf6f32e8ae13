import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub: no network here

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from egodistill import testing as media  # noqa: E402


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


@pytest.fixture(scope="session")
def extracted_cache(tmp_path_factory) -> Path:
    """A cache made by `extract` from generated videos: rgb, flow and audio teachers (timm's tiny
    test_resnet, random init) over 18 labelled clips (3 classes, 12 train / 6 val), 4 frames each."""
    if not media.have_ffmpeg():
        pytest.skip("ffmpeg is not on PATH: install it (apt-get install -y ffmpeg) to make test videos")
    from egodistill.extract.run import ExtractConfig, run_extraction

    folder = tmp_path_factory.mktemp("extracted")
    rows = ["segment_id,video,start_sec,stop_sec,split,label:action"]
    for i in range(18):
        label = i % 3
        media.make_video(folder / "videos" / f"clip{i:02d}.mp4", seconds=1.0, fps=12, size=(64, 48), seed=label * 3 + i % 2, tone_hz=300.0 + 400.0 * label)
        rows.append(f"clip{i:02d},clip{i:02d}.mp4,0,1,{'train' if i < 12 else 'val'},{label}")
    (folder / "segments.csv").write_text("\n".join(rows) + "\n")
    for modality in ("rgb", "flow", "audio"):
        summary = run_extraction(ExtractConfig(
            manifest=str(folder / "segments.csv"), videos=str(folder / "videos"), cache=str(folder / "cache.zarr"), modality=modality,
            backbone="test_resnet", frames=4, workers=0, device="cpu", precision="fp32", segments_per_task=6,
        ), log=lambda _: None)
        assert summary.ok, summary.ledger
    return folder / "cache.zarr"
