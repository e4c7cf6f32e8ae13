"""Clip teachers (torchvision video models) through `extract`: per-time rows with timestamps, weight files
(torchvision and original Video Swin), flow and audio inputs. Random init, short clips, real encoded videos."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torchvision.models import video

from egodistill import cache
from egodistill.common import EgodistillError, TeacherError
from egodistill.backbones import BackboneSpec, create_backbone
from egodistill.extract.modalities import MediaSource, get_modality
from egodistill.extract.run import ExtractConfig, plan_extraction, run_extraction
from egodistill.cache.records import SamplingPolicy
from egodistill.extract.sampling import sample_indices
from egodistill.testing import make_video
from helpers import egodistill, one_line_error

# Stated tolerance: stored float16 features against a float32 model call on the same frames.
ATOL = RTOL = 5e-3


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    make_video(folder / "a.mp4", seconds=2.0, fps=25, size=(32, 32))
    make_video(folder / "b.mp4", seconds=2.0, fps=25, size=(48, 32), seed=3, tone_hz=660.0)
    return folder


def manifest(tmp_path, rows):
    path = tmp_path / "segments.csv"
    path.write_text("segment_id,video,start_sec,stop_sec,split\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return path


def extract(tmp_path, videos, rows, **settings):
    cfg = ExtractConfig(manifest=str(manifest(tmp_path, rows)), videos=str(videos), cache=str(tmp_path / "c.zarr"),
                        workers=0, device="cpu", precision="fp32", **settings)
    summary = run_extraction(cfg, log=lambda _: None)
    assert summary.ok, summary.ledger
    return cache.open_cache(cfg.cache, mode="r").teacher(summary.teacher_key)


def sampled_frames(videos, name, policy, frames, start, stop, settings, modality="rgb"):
    """The segment's frames as the extraction samples and preprocesses them: [T, C, H, W] and their times."""
    source = MediaSource(videos / name)
    indices = sample_indices(SamplingPolicy.from_json(policy), frames, start, stop, source.video.fps, source.video.num_frames)
    return get_modality(modality).make_inputs(source, indices, settings), source.video.frame_times(indices)


def as_clip(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(1, 0, 2, 3).unsqueeze(0)  # [T, C, H, W] -> [1, C, T, H, W]


def test_swin3d_keeps_half_the_frames_as_rows_stamped_at_their_centre(tmp_path, videos):
    teacher = extract(tmp_path, videos, [("s0", "a.mp4", 0.0, 1.6, "train")], backbone="swin3d_t", frames=8)
    sampling = teacher.provenance.sampling
    assert sampling == {"frames": 8, "clip": {"frames": 8, "stride": 8, "steps": 4}}
    assert teacher.provenance.preprocessing["preset"] == "Swin3D_T_Weights.KINETICS400_V1"
    assert teacher.provenance.preprocessing["input_size"] == [224, 224] and teacher.provenance.preprocessing["resize_short"] == 256
    features, times = teacher.read_rows(0, teacher.layout.rows)
    assert features.shape == (4, 768)

    frames, frame_times = sampled_frames(videos, "a.mp4", sampling, 8, 0.0, 1.6, teacher.provenance.preprocessing)
    torch.manual_seed(0)  # the run's --seed
    net = video.swin3d_t().eval()
    net.head = torch.nn.Identity()
    with torch.inference_mode():
        x = as_clip(frames)
        per_time = net.norm(net.features(net.patch_embed(x))).mean(dim=(2, 3))[0]  # [T/2, 768], space pooled only
        pooled = net(x)[0]                                                          # the model's own pool over T, H, W
    np.testing.assert_allclose(features.astype(np.float32), per_time.numpy(), atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(features.astype(np.float32).mean(0), pooled.numpy(), atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(times, (frame_times[0::2] + frame_times[1::2]) / 2, atol=1e-5)  # step s saw frames 2s, 2s+1


def test_r2plus1d_sliding_windows_give_one_row_each(tmp_path, videos):
    rows = [("s0", "a.mp4", 0.0, 2.0, "train"), ("s1", "b.mp4", 0.4, 1.6, "val")]
    teacher = extract(tmp_path, videos, rows, backbone="r2plus1d_18", frames=16, clip_frames=8, clip_stride=4, seed=3)
    assert teacher.provenance.sampling["clip"] == {"frames": 8, "stride": 4, "steps": 1}  # time pooled to one step per 8 frames
    assert teacher.provenance.preprocessing["resize"] == [128, 171]  # the preset's exact resize, then a 112 crop
    assert teacher.offsets.tolist() == [0, 3, 6]  # (16 - 8) / 4 + 1 windows per segment

    torch.manual_seed(3)
    net = video.r2plus1d_18().eval()
    net.fc = torch.nn.Identity()
    for i, (_, name, start, stop, _) in enumerate(rows):
        frames, frame_times = sampled_frames(videos, name, teacher.provenance.sampling, 16, start, stop, teacher.provenance.preprocessing)
        clips = torch.cat([as_clip(frames[s: s + 8]) for s in (0, 4, 8)])
        with torch.inference_mode():
            direct = net(clips).numpy()
        features, times = teacher.read_rows(teacher.offsets[i], teacher.offsets[i + 1])
        np.testing.assert_allclose(features.astype(np.float32), direct, atol=ATOL, rtol=RTOL)
        np.testing.assert_allclose(times, [(frame_times[s] + frame_times[s + 7]) / 2 for s in (0, 4, 8)], atol=1e-5)


def test_head_logits_come_from_the_pooled_rows(tmp_path, videos):
    torch.manual_seed(1)
    head = {"action.weight": torch.randn(2, 512), "action.bias": torch.randn(2)}
    torch.save(head, tmp_path / "head.pt")
    path = tmp_path / "segments.csv"
    path.write_text("segment_id,video,start_sec,stop_sec,split,label:action\ns0,a.mp4,0,2,train,1\n")
    cfg = ExtractConfig(manifest=str(path), videos=str(videos), cache=str(tmp_path / "c.zarr"), backbone="r3d_18", frames=16,
                        clip_frames=8, head=str(tmp_path / "head.pt"), workers=0, device="cpu", precision="fp32")
    key = run_extraction(cfg, log=lambda _: None).teacher_key
    teacher = cache.open_cache(cfg.cache).teacher(key)
    features = teacher.read_rows(0, 2)[0].astype(np.float32)
    expected = features.mean(0) @ head["action.weight"].numpy().T + head["action.bias"].numpy()
    np.testing.assert_allclose(teacher.read_logits("action")[0], expected, rtol=1e-2, atol=1e-2)


def _video_swin_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision swin3d names -> the original Video Swin checkpoint's (as paper 1's code loads it)."""
    out = {}
    for key, value in state.items():
        name = re.sub(r"^features\.(\d+)\.(\d+)\.", lambda m: f"layers.{int(m[1]) // 2}.blocks.{m[2]}.", key)
        name = re.sub(r"^features\.(\d+)\.", lambda m: f"layers.{(int(m[1]) - 1) // 2}.downsample.", name)
        name = name.replace(".mlp.0.", ".mlp.fc1.").replace(".mlp.3.", ".mlp.fc2.")
        out["cls_head.fc_cls." + name[len("head."):] if name.startswith("head.") else "backbone." + name] = value
    return out


def test_torchvision_and_video_swin_weight_files_load(tmp_path):
    torch.manual_seed(7)
    net = video.swin3d_t().eval()
    state = net.state_dict()
    torch.save(state, tmp_path / "swin3d_t.pth")
    original = _video_swin_names(state)
    for key in ("backbone.patch_embed.proj.weight", "backbone.layers.0.blocks.1.mlp.fc2.weight", "backbone.layers.2.downsample.reduction.weight",
                "backbone.layers.3.blocks.1.attn.relative_position_bias_table", "backbone.norm.weight", "cls_head.fc_cls.weight"):
        assert key in original  # names as in swin_tiny_patch244_window877_kinetics400_1k.pth
    torch.save({"meta": {"epoch": 30}, "state_dict": original}, tmp_path / "video_swin.pth")
    mmaction2 = {k.replace(".mlp.fc1.", ".mlp.layers.0.0.").replace(".mlp.fc2.", ".mlp.layers.1.").replace("backbone.norm.", "backbone.norm3."): v
                 for k, v in original.items() if "relative_position_index" not in k}  # mmaction2 1.x names; index tables left out
    torch.save({"state_dict": mmaction2}, tmp_path / "mmaction2_swin.pth")

    net.head = torch.nn.Identity()
    x = torch.randn(1, 3, 8, 32, 32)
    with torch.inference_mode():
        expected = net(x)
    for weights in ("swin3d_t.pth", "video_swin.pth", "mmaction2_swin.pth"):
        backbone = create_backbone(BackboneSpec("swin3d_t", in_chans=3, weights=str(tmp_path / weights), seed=99), {})
        with torch.inference_mode():
            got = backbone.model(x)
        assert got.shape == (1, 4, 768)
        torch.testing.assert_close(got.mean(1), expected, atol=1e-5, rtol=1e-5)


def test_a_file_for_another_model_is_a_one_line_error(tmp_path, videos):
    torch.save(video.r3d_18().state_dict(), tmp_path / "r3d.pth")
    with pytest.raises(TeacherError, match=r"missing patch_embed\.proj\.weight.*unexpected stem\.0\.weight"):
        create_backbone(BackboneSpec("swin3d_t", in_chans=3, weights=str(tmp_path / "r3d.pth")), {})
    csv = manifest(tmp_path, [("s0", "a.mp4", 0.0, 1.0, "train")])
    result = egodistill("extract", "--manifest", csv, "--videos", videos, "--cache", tmp_path / "c.zarr", "--backbone", "r2plus1d_18",
                        "--weights", tmp_path / "r3d.pth", "--clip-frames", "8", "--workers", "0", "--device", "cpu")
    line = one_line_error(result)
    assert "do not fit backbone r2plus1d_18" in line and "missing" in line and "unexpected" in line and "Traceback" not in result.stderr
    assert not (tmp_path / "c.zarr").exists()  # checked before the cache is touched


def test_clip_options_are_checked_before_any_work(tmp_path, videos):
    csv = manifest(tmp_path, [("s0", "a.mp4", 0.0, 1.0, "train")])
    base = dict(manifest=str(csv), videos=str(videos), cache=str(tmp_path / "c.zarr"))
    with pytest.raises(EgodistillError, match="--clip-frames/--clip-stride need a clip backbone"):
        plan_extraction(ExtractConfig(**base, backbone="test_resnet", clip_frames=8))
    with pytest.raises(EgodistillError, match="mvit_v2_s cannot read a clip of 8 frames"):
        plan_extraction(ExtractConfig(**base, backbone="mvit_v2_s", clip_frames=8))
    with pytest.raises(EgodistillError, match="--clip-stride must be at least 1"):
        plan_extraction(ExtractConfig(**base, backbone="r3d_18", clip_frames=8, clip_stride=0))
    plan = plan_extraction(ExtractConfig(**base, backbone="swin3d_t"))  # the preset's 32-frame clip, one per segment
    assert plan.policy.to_json() == {"frames": 32, "clip": {"frames": 32, "stride": 32, "steps": 16}} and plan.rows_per_segment.tolist() == [16]


def test_flow_and_audio_through_clip_backbones(tmp_path, videos):
    rows = [("s0", "a.mp4", 0.0, 1.0, "train"), ("s1", "b.mp4", 0.5, 2.0, "val")]
    flow = extract(tmp_path, videos, rows, modality="flow", backbone="r2plus1d_18", frames=8)
    assert flow.provenance.in_chans == 2 and flow.offsets.tolist() == [0, 1, 2]
    audio = extract(tmp_path, videos, rows, modality="audio", backbone="mc3_18", frames=4, seed=2)
    assert audio.provenance.in_chans == 1 and audio.offsets.tolist() == [0, 4, 8]  # mc3 keeps time: a row per frame
    for teacher in (flow, audio):
        features, times = teacher.read_rows(0, teacher.layout.rows)
        assert np.isfinite(features).all() and np.isfinite(times).all() and np.all(np.diff(times[:teacher.offsets[1]]) >= 0)

    backbone = create_backbone(BackboneSpec("mc3_18", in_chans=1, seed=2), {})
    spectrograms, frame_times = sampled_frames(videos, "b.mp4", audio.provenance.sampling, 4, 0.5, 2.0, audio.provenance.preprocessing, "audio")
    with torch.inference_mode():
        direct = backbone.model.net.layer4(backbone.model.net.layer3(backbone.model.net.layer2(backbone.model.net.layer1(backbone.model.net.stem(as_clip(spectrograms))))))
    features, times = audio.read_rows(4, 8)
    np.testing.assert_allclose(features.astype(np.float32), direct.mean(dim=(3, 4))[0].T.numpy(), atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(times, frame_times, atol=1e-5)


def test_rgb_weights_adapt_to_flow_and_audio_channels_as_timm_does(tmp_path):
    torch.manual_seed(4)
    rgb = video.r2plus1d_18().state_dict()
    torch.save(rgb, tmp_path / "r2plus1d.pth")
    kernel = rgb["stem.0.weight"]  # [45, 3, 1, 7, 7]
    flow = create_backbone(BackboneSpec("r2plus1d_18", in_chans=2, weights=str(tmp_path / "r2plus1d.pth")), {})
    torch.testing.assert_close(flow.model.net.stem[0].weight, kernel[:, :2] * 1.5)  # repeated, scaled by 3 / channels
    audio = create_backbone(BackboneSpec("r2plus1d_18", in_chans=1, weights=str(tmp_path / "r2plus1d.pth")), {})
    torch.testing.assert_close(audio.model.net.stem[0].weight, kernel.sum(dim=1, keepdim=True))
    torch.testing.assert_close(audio.model.net.layer1[0].conv1[0][0].weight, rgb["layer1.0.conv1.0.0.weight"])


def test_bf16_clip_features_agree_with_fp32(videos):
    from egodistill.extract.worker import embed

    backbone = create_backbone(BackboneSpec("r2plus1d_18", in_chans=3), {})
    settings = get_modality("rgb").settings({}, backbone.data_config)
    frames, _ = sampled_frames(videos, "a.mp4", {"frames": 16}, 16, 0.0, 2.0, settings)
    clips = np.stack([frames[:8], frames[8:]]).transpose(0, 2, 1, 3, 4)  # [2, C, 8, H, W]
    fp32, bf16 = embed(backbone, clips, "cpu", "fp32")[:, 0], embed(backbone, clips, "cpu", "bf16")[:, 0]
    cosine = (fp32 * bf16).sum(1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(bf16, axis=1))
    assert cosine.min() >= 0.99  # the same stated tolerance as image teachers (README)
