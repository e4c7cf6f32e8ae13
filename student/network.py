"""The end-to-end student: a backbone of the registry trained on RGB frames, with one linear head per output head.

Built through `egodistill.backbones.create_backbone`, like the teachers: a timm image model runs on every
frame of the window and its features are mean-pooled over time; a torchvision clip model (swin3d_t,
r2plus1d_18, mvit_v2_s, ...) reads the window as one clip and its per-time features are mean-pooled.

The network takes the frames as the cache stores them (uint8 [B, T, H, W, 3]) together with one crop box
per segment (fractions of the stored frame, drawn by the loader's seeded plan, student/data.py) and a flip
flag, and does the rest on the device: the crop is resized to the backbone's input size (roi_align, one
batched call), flipped, scaled to [0, 1] and normalised with the mean/std of the backbone's own data config.
A checkpoint therefore carries its preprocessing, and only uint8 crosses to the GPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from egodistill.backbones import BackboneSpec, backbone_family, create_backbone

if TYPE_CHECKING:
    from egodistill.student.data import Batch
    from egodistill.student.model import Student


@dataclass
class NetworkConfig:
    backbone: str                       # a timm model name or a torchvision clip model
    heads: dict[str, int]               # output head -> classes
    frames: int = 8                     # T frames per segment fed to the backbone
    image_size: int = 0                 # crop side fed to the backbone; 0: the input size of its data config
    feature_dim: int = 0                # the backbone's pooled width, filled in when the network is built
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def input_size(cfg: NetworkConfig) -> int:
    """The side of the square crop the backbone reads."""
    return int(cfg.image_size or backbone_family(cfg.backbone).preset(cfg.backbone, 3)["input_size"][-1])


def eval_crop_fraction(backbone: str) -> float:
    """The share of the frame's short side the backbone's evaluation preprocessing keeps (timm's crop_pct;
    a torchvision preset's crop over its resize), so the student's centre crop is its teachers' view."""
    preset = backbone_family(backbone).preset(backbone, 3)
    if "crop_pct" in preset:
        return float(preset["crop_pct"])
    resize = preset.get("resize_size") or [preset["input_size"][-1]]
    return min(1.0, float(preset["input_size"][-1]) / float(min(resize)))


class FramesStudent(nn.Module):
    """Frames of a window -> {head: logits}; see the module doc for what happens on the device."""

    def __init__(self, cfg: NetworkConfig, weights: str | None = None, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        built = create_backbone(BackboneSpec(backbone=cfg.backbone, in_chans=3, weights=weights, seed=seed), {})
        self.backbone, self.clip = built.model.train(), built.clip
        self.size = input_size(cfg)
        mean, std = built.data_config["mean"], built.data_config["std"]
        self.register_buffer("mean", torch.tensor([float(v) for v in mean]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([float(v) for v in std]).view(1, 3, 1, 1))
        self.heads = nn.ModuleDict({h: nn.Linear(built.feature_dim, c) for h, c in cfg.heads.items()})
        cfg.feature_dim = built.feature_dim
        self.channels_last = False  # set by `to_channels_last`: inputs then take the weights' layout

    def preprocess(self, frames: torch.Tensor, crops: torch.Tensor, flip: torch.Tensor | None) -> torch.Tensor:
        """uint8 [B, T, H, W, 3], crop boxes [B, 4] (x0, y0, x1, y1 as fractions of W and H), flip bool [B]
        -> normalised float32 [B * T, 3, S, S]; every frame of a segment gets its segment's box and flip."""
        from torchvision.ops import roi_align

        b, t, h, w, _ = frames.shape
        images = frames.reshape(b * t, h, w, 3).permute(0, 3, 1, 2).float()
        scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=frames.device)
        boxes = crops.to(frames.device, torch.float32).repeat_interleave(t, dim=0) * scale
        index = torch.arange(b * t, dtype=torch.float32, device=frames.device).view(-1, 1)
        # roi_align averages 2x2 bilinear samples per output pixel: a resize that also smooths when it shrinks.
        out = roi_align(images, torch.cat([index, boxes], dim=1), output_size=(self.size, self.size), spatial_scale=1.0, sampling_ratio=2, aligned=True)
        if flip is not None and bool(flip.any()):
            flipped = flip.to(frames.device).repeat_interleave(t).view(-1, 1, 1, 1)
            out = torch.where(flipped, out.flip(-1), out)
        return (out / 255.0 - self.mean) / self.std

    def forward(self, frames: torch.Tensor, crops: torch.Tensor, flip: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        b, t = frames.shape[:2]
        images = self.preprocess(frames, crops, flip)
        if self.clip:  # [B, 3, T, S, S] -> [B, T', D]
            clips = images.view(b, t, 3, self.size, self.size).transpose(1, 2)
            if self.channels_last:
                clips = clips.contiguous(memory_format=torch.channels_last_3d)
            pooled = self.backbone(clips).mean(dim=1)
        else:  # one image per frame, mean over the window
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            pooled = self.backbone(images).view(b, t, -1).mean(dim=1)
        return {h: head(pooled) for h, head in self.heads.items()}

    def to_channels_last(self) -> "FramesStudent":
        """Channels-last weights (the layout bf16 convolutions run fastest in on CUDA and on CPUs with native bf16)."""
        self.backbone.to(memory_format=torch.channels_last_3d if self.clip else torch.channels_last)
        self.channels_last = True
        return self


def network_cost(cfg: NetworkConfig) -> tuple[int, int]:
    """(params, FLOPs) of one segment through the student: its backbone family's cost for `frames` frames at
    its input size, plus the linear heads. No model is built."""
    family = backbone_family(cfg.backbone)
    size = input_size(cfg)
    params, flops = family.cost(cfg.backbone, 3, size, size, cfg.frames)
    rows = family.output_steps(cfg.backbone, cfg.frames) if family.takes_clips else cfg.frames
    dim = cfg.feature_dim
    heads = sum(c for c in cfg.heads.values())
    # Mean over the rows, then one multiply-add per weight of each head.
    return params + heads * (dim + 1), flops + rows * dim + 2 * heads * dim


def student_logits(model: "Student | FramesStudent", batch: "Batch", present: torch.Tensor) -> dict[str, torch.Tensor]:
    """Any student's logits for a batch: a head reads features and which inputs are present, a network reads
    frames with their crops and flips. Training, held-out scoring and evaluation all call this."""
    inner = getattr(model, "module", model)  # a DistributedDataParallel wrapper is called, its module inspected
    if isinstance(inner, FramesStudent):
        return model(batch.features[0], batch.crops, batch.flip)
    return model(batch.features, present)
