"""rgb rows equal the model's own reference transform (issue 17): timm's `resolve_data_config` +
`create_transform` on PIL frames, a torchvision video model's weights preset; on real footage.

The reference side decodes every frame of the file sequentially with PyAV and applies the library's
transform itself; the extraction side is the whole `extract` run (decoder, sampling, worker, float16 rows).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import timm
import timm.data
import torch
from PIL import Image

from egodistill import cache
from egodistill import testing as media
from egodistill.backbones import BackboneSpec, create_backbone
from egodistill.cache.records import SamplingPolicy
from egodistill.extract.modalities import MediaSource, get_modality
from egodistill.extract.run import ExtractConfig, run_extraction
from egodistill.extract.sampling import sample_indices
from egodistill.extract.worker import embed

REAL = Path(__file__).resolve().parents[2] / "shared" / "real" / "videos"
REAL = REAL if REAL.is_dir() else Path("/work/shared/real/videos")
FRAMES = 4


def _videos(tmp_path: Path) -> Path:
    """The real clips (a 1080p VP9 webm, a 426x240 H.264 mkv, an MPEG-4 Part 2 avi) when present, and
    always one generated H.264 clip, so the test never runs on nothing."""
    folder = tmp_path / "videos"
    folder.mkdir()
    if REAL.is_dir():
        for path in sorted(REAL.iterdir()):
            shutil.copy(path, folder / path.name)
    if not media.have_ffmpeg():
        pytest.skip("ffmpeg is not on PATH: install it (apt-get install -y ffmpeg) to make test videos")
    media.make_video(folder / "made.mp4", seconds=2.0, fps=25, size=(320, 180), codec="h264")
    return folder


def _sequential(path: Path, upto: int) -> list[np.ndarray]:
    """Frames 0..upto in the order a plain decode from the start gives them."""
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) > upto:
                break
    return frames


def _extract(tmp_path: Path, videos: Path, backbone: str, frames: int) -> tuple[cache.Teacher, list[tuple[str, float, float]]]:
    segments = [(p.name, 0.0, 1.0) for p in sorted(videos.iterdir())]
    lines = ["segment_id,video,start_sec,stop_sec,split"] + [f"s{i},{name},{a},{b},train" for i, (name, a, b) in enumerate(segments)]
    (tmp_path / "segments.csv").write_text("\n".join(lines) + "\n")
    cfg = ExtractConfig(manifest=str(tmp_path / "segments.csv"), videos=str(videos), cache=str(tmp_path / "c.zarr"), backbone=backbone,
                        frames=frames, workers=0, device="cpu", precision="fp32", batch_size=16)
    summary = run_extraction(cfg, log=lambda _: None)
    assert summary.ok and summary.extracted == len(segments), summary.ledger
    return cache.open_cache(cfg.cache, mode="r").teacher(summary.teacher_key), segments


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_timm_rows_equal_create_transform_on_pil_frames(tmp_path):
    torch.manual_seed(0)
    videos = _videos(tmp_path)
    teacher, segments = _extract(tmp_path, videos, "resnet18", FRAMES)
    backbone = create_backbone(BackboneSpec("resnet18", in_chans=3), {})
    reference = timm.data.create_transform(**timm.data.resolve_data_config({}, model=timm.create_model("resnet18")))
    assert teacher.provenance.preprocessing["crop_pct"] == 0.95  # resnet18's own, floor(224 / 0.95) = 235
    for i, (name, start, stop) in enumerate(segments):
        with MediaSource(videos / name).video as video:
            indices = sample_indices(SamplingPolicy(frames=FRAMES), FRAMES, start, stop, video.fps, video.num_frames)
        decoded = _sequential(videos / name, int(indices.max()))
        expected = torch.stack([reference(Image.fromarray(decoded[j])) for j in indices]).numpy()
        got = get_modality("rgb").make_inputs(MediaSource(videos / name), indices, teacher.provenance.preprocessing)
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=name)
        rows, _ = teacher.read_rows(teacher.offsets[i], teacher.offsets[i + 1])
        cosine = _cosines(rows, embed(backbone, expected, "cpu", "fp32"))
        assert cosine.min() >= 0.999, (name, cosine)


def test_torchvision_video_rows_equal_the_weights_preset(tmp_path):
    from torchvision.models.video import R2Plus1D_18_Weights

    videos = _videos(tmp_path)
    frames = 8
    teacher, segments = _extract(tmp_path, videos, "r2plus1d_18", frames)
    settings = teacher.provenance.preprocessing
    assert settings["preset"] == "R2Plus1D_18_Weights.KINETICS400_V1"
    preset = R2Plus1D_18_Weights.KINETICS400_V1.transforms()
    backbone = create_backbone(BackboneSpec("r2plus1d_18", in_chans=3), {})
    for i, (name, start, stop) in enumerate(segments):
        with MediaSource(videos / name).video as video:
            indices = sample_indices(SamplingPolicy(frames=frames), frames, start, stop, video.fps, video.num_frames)
        decoded = _sequential(videos / name, int(indices.max()))
        clip = torch.from_numpy(np.stack([decoded[j] for j in indices])).permute(0, 3, 1, 2)
        expected = preset(clip).numpy()  # [C, T, H, W]
        got = get_modality("rgb").make_inputs(MediaSource(videos / name), indices, settings)  # [T, C, H, W]
        np.testing.assert_allclose(got.transpose(1, 0, 2, 3), expected, atol=1e-5, err_msg=name)
        rows, _ = teacher.read_rows(teacher.offsets[i], teacher.offsets[i + 1])
        cosine = _cosines(rows, embed(backbone, expected[None], "cpu", "fp32")[0])
        assert cosine.min() >= 0.999, (name, cosine)
