"""The one backbone registry and its one door, `create_backbone`: the models a teacher runs and a student
trains, a timm image backbone or a torchvision clip backbone (random, local weights or timm's own), plus
optional linear heads. It sits below extract/ and student/ alike (both import it; it imports neither).

Clip backbones (torchvision's video models) sit in `_CLIP_MODELS`: each entry names its weights enum, whose
preset transform gives the preprocessing (resize, crop, mean/std, clip length), its first conv (adapted to 2
flow or 1 audio channels as timm adapts image models) and how to read per-time features from it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from egodistill.common import TeacherError, cpu_has_bf16, file_sha256, first_line

TIMM_PRETRAINED = "timm"  # --weights timm: timm's own pretrained weights, from its hub


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to build the model on a worker: small, picklable, no tensors."""

    backbone: str
    in_chans: int
    weights: str | None = None   # a local file, "timm", or None for random init with `seed`
    head: str | None = None      # a local file of linear heads, one per output head
    seed: int = 0


@dataclass
class Backbone:
    model: torch.nn.Module
    heads: dict[str, torch.nn.Linear]
    feature_dim: int
    data_config: dict
    clip: bool = False   # a clip backbone: input [B, C, T, H, W], features [B, T', D] (one row per output time step)


def weights_id(spec: BackboneSpec) -> str:
    """How the provenance names the weights: their sha256, timm's tag, or the random seed."""
    if spec.weights is None:
        return f"random-init:{spec.seed}"
    if spec.weights == TIMM_PRETRAINED:
        return f"timm-pretrained:{spec.backbone}"
    return file_sha256(_existing(spec.weights, "weights"))


def head_id(spec: BackboneSpec) -> str | None:
    return None if spec.head is None else file_sha256(_existing(spec.head, "head"))


def create_backbone(spec: BackboneSpec, heads: dict[str, int]) -> Backbone:
    """The one door to a model: builds the backbone, loads weights and heads, checks they fit."""
    return backbone_family(spec.backbone).build(spec, heads)


def _create_timm_backbone(spec: BackboneSpec, heads: dict[str, int]) -> Backbone:
    import timm  # heavy import: keep `egodistill --help` fast

    kwargs: dict = {"num_classes": 0, "in_chans": spec.in_chans}
    torch.manual_seed(spec.seed)
    try:
        model = timm.create_model(spec.backbone, pretrained=spec.weights == TIMM_PRETRAINED, **kwargs)
    except (RuntimeError, OSError, ValueError) as err:
        raise TeacherError(f"cannot build backbone {spec.backbone} with weights {spec.weights}: {first_line(err)}") from err
    if spec.weights not in (None, TIMM_PRETRAINED):
        _load_weights(model, Path(_existing(spec.weights, "weights")), spec)
    model.eval()
    # Pooled pre-logits width: differs from num_features where a head conv follows (MobileNetV3).
    feature_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
    data_config = timm.data.resolve_data_config({}, model=model)
    linear = _load_heads(spec.head, heads, feature_dim) if spec.head else {}
    return Backbone(model=model, heads=linear, feature_dim=feature_dim, data_config=data_config)


def _load_weights(model: torch.nn.Module, path: Path, spec: BackboneSpec) -> None:
    """Strictly load a backbone state dict: every backbone weight present and of the right shape.

    The classifier is dropped (features are what we keep) and the first conv is adapted to the
    modality's channels the way timm adapts pretrained weights (flow: 2, audio: 1)."""
    from timm.models import adapt_input_conv

    state = read_state_dict(path)
    classifier = model.pretrained_cfg.get("classifier")
    classifiers = classifier if isinstance(classifier, (list, tuple)) else [classifier] if classifier else []
    state = {k: v for k, v in state.items() if not any(k.startswith(f"{c}.") for c in classifiers)}
    first = f"{model.pretrained_cfg.get('first_conv')}.weight"
    if first in state and state[first].ndim == 4 and state[first].shape[1] != spec.in_chans:
        state[first] = adapt_input_conv(spec.in_chans, state[first])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = next((line for line in lines if "size mismatch" in line), lines[-1] if lines else "")
        raise TeacherError(f"weights {path} do not fit backbone {spec.backbone}: {detail[:200]}") from err


def _load_heads(path: str, heads: dict[str, int], feature_dim: int) -> dict[str, torch.nn.Linear]:
    """A head file holds `<head>.weight` [C, D] and `<head>.bias` [C] for every manifest head."""
    state = read_state_dict(Path(_existing(path, "head")))
    missing = [h for h in heads if f"{h}.weight" not in state]
    if missing:
        raise TeacherError(f"head file {path} has no weights for head(s) {', '.join(missing)} (it holds {', '.join(sorted(state))}): give one linear layer per manifest head")
    linear = {}
    for head, classes in heads.items():
        weight = state[f"{head}.weight"]
        if weight.shape != (classes, feature_dim):
            raise TeacherError(
                f"head file {path}: head {head!r} is {tuple(weight.shape)[0]} classes x {tuple(weight.shape)[1]} features, "
                f"the manifest has {classes} classes and the backbone {feature_dim} features: use a head trained for this dataset and backbone"
            )
        layer = torch.nn.Linear(feature_dim, classes)
        layer.weight.data.copy_(weight)
        bias = state.get(f"{head}.bias")
        layer.bias.data.copy_(bias if bias is not None else torch.zeros(classes))
        linear[head] = layer.eval()
    return linear


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A weights or head file's tensors by name: the one reader of such files (torch.load with weights_only, so
    a file runs no code; safetensors by suffix), unwrapping training checkpoints."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file is the same user error
        raise TeacherError(f"cannot read {path} as a torch state dict (what torch.save(model.state_dict(), path) writes) "
                           f"or .safetensors file: {_load_reason(err)}") from err
    if not isinstance(state, dict):
        raise TeacherError(f"{path} is not a state dict: save it with torch.save(module.state_dict(), path)")
    # Training checkpoints wrap the weights ({"state_dict": ...} or {"model": ...}); DataParallel prefixes "module.".
    for wrapper in ("state_dict", "model"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_reason(err: Exception) -> str:
    """torch.load's reason in one sentence, without its advice to retry with weights_only=False (which runs the
    file's code) or to allow-list a class: for a refused pickle, the unpickler's own first sentence
    ("Unsupported global: GLOBAL torch.nn.modules.linear.Linear was not an allowed global by default")."""
    text = str(err).split("WeightsUnpickler error:", 1)[-1].strip()
    return re.split(r"\.\s", text.splitlines()[0])[0][:160] if text else type(err).__name__


def _existing(path: str, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise TeacherError(f"{what} file {path} not found: check the --{what} path")
    return p


def pooled_logits(backbone: Backbone, features: np.ndarray) -> dict[str, np.ndarray]:
    """Per-head logits of one segment from its temporally mean-pooled features."""
    pooled = torch.from_numpy(np.asarray(features, dtype=np.float32).mean(axis=0, keepdims=True))
    with torch.no_grad():
        return {head: layer(pooled)[0].numpy() for head, layer in backbone.heads.items()}


# --- clip backbones (torchvision video models) -------------------------------------------

@dataclass(frozen=True)
class ClipModel:
    """A torchvision video model as a teacher."""

    name: str                 # torchvision.models.video builder
    weights: str              # its weights enum: the preset transform and clip length come from there
    first_conv: str           # the conv that reads the input channels
    classifier: str           # the classification layer, replaced by an identity and dropped from weight files
    per_time: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]  # [B, C, T, H, W] -> [B, T', D]


_CLIP_MODELS: dict[str, ClipModel] = {}


def register_clip_model(model: ClipModel) -> ClipModel:
    _CLIP_MODELS[model.name] = model
    return model


def is_clip_backbone(name: str | None) -> bool:
    return name in _CLIP_MODELS


def clip_backbone_names() -> list[str]:
    return sorted(_CLIP_MODELS)


def _swin_steps(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    # [B, T/2, H/32, W/32, C] before the model's average pool: pool space only, time survives.
    return net.norm(net.features(net.pos_drop(net.patch_embed(x)))).mean(dim=(2, 3))


def _resnet_steps(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = net.layer4(net.layer3(net.layer2(net.layer1(net.stem(x)))))  # [B, 512, T', h, w]
    return x.mean(dim=(3, 4)).transpose(1, 2)


def _s3d_steps(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net.features(x).mean(dim=(3, 4)).transpose(1, 2)  # [B, 1024, T/8, 7, 7] -> [B, T/8, 1024]


def _one_step(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    # The model pools time itself (MViT's class token): one row per clip.
    return net(x).unsqueeze(1)


for _name in ("swin3d_t", "swin3d_s", "swin3d_b"):
    register_clip_model(ClipModel(_name, f"Swin3D_{_name[-1].upper()}_Weights", "patch_embed.proj", "head", _swin_steps))
for _name, _weights in (("r3d_18", "R3D_18_Weights"), ("r2plus1d_18", "R2Plus1D_18_Weights"), ("mc3_18", "MC3_18_Weights")):
    register_clip_model(ClipModel(_name, _weights, "stem.0", "fc", _resnet_steps))
register_clip_model(ClipModel("s3d", "S3D_Weights", "features.0.0.0", "classifier", _s3d_steps))
register_clip_model(ClipModel("mvit_v1_b", "MViT_V1_B_Weights", "conv_proj", "head", _one_step))
register_clip_model(ClipModel("mvit_v2_s", "MViT_V2_S_Weights", "conv_proj", "head", _one_step))


class ClipFeatures(torch.nn.Module):
    """A video model read before its pooling over time: [B, C, T, H, W] -> [B, T', D]."""

    def __init__(self, net: torch.nn.Module, per_time: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]):
        super().__init__()
        self.net = net
        self._per_time = per_time

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._per_time(self.net, x)


def clip_preset(name: str, in_chans: int = 3) -> dict:
    """The model's own preprocessing, read from its torchvision weights preset (a timm-style data config).

    `resize_size` is [short side] or an exact [h, w]; `clip_frames` is the clip length the weights were
    evaluated with (the `clip_len` their documentation states), `min_clip_frames` the shortest clip they take."""
    from torchvision.models import video

    entry = _CLIP_MODELS[name]
    weights = getattr(video, entry.weights).DEFAULT
    preset = weights.transforms()
    crop, resize = [int(v) for v in preset.crop_size], [int(v) for v in preset.resize_size]
    documented = re.search(r"clip_len=(\d+)", weights.meta.get("_docs", ""))
    minimum = int(weights.meta.get("min_temporal_size", 1))
    return {
        "input_size": (in_chans, *crop), "resize_size": resize, "mean": [float(v) for v in preset.mean], "std": [float(v) for v in preset.std],
        "interpolation": preset.interpolation.value, "preset": f"{entry.weights}.{weights.name}",
        "clip_frames": int(documented[1]) if documented else max(minimum, 16), "min_clip_frames": minimum,
    }


@lru_cache(maxsize=64)
def clip_output(name: str, clip_frames: int) -> tuple[int, int]:
    """(time steps, feature width) the model gives for a clip of `clip_frames` frames, from a forward pass on
    the meta device (shapes only, no compute, no weights); TeacherError if the model cannot take such a clip."""
    from torchvision.models import video

    entry = _CLIP_MODELS[name]
    preset = clip_preset(name)
    with torch.device("meta"):
        net = getattr(video, name)(weights=None)
        _replace(net, entry.classifier, torch.nn.Identity())
        x = torch.empty(1, 3, clip_frames, *preset["input_size"][1:])
        try:
            out = entry.per_time(net, x)
        except (RuntimeError, ValueError, AssertionError, IndexError) as err:
            raise TeacherError(f"{name} cannot read a clip of {clip_frames} frames ({first_line(err)}): its weights were evaluated on {preset['clip_frames']}-frame clips (at least {preset['min_clip_frames']}); set --clip-frames") from err
    return int(out.shape[1]), int(out.shape[2])


def _create_clip_backbone(spec: BackboneSpec, heads: dict[str, int]) -> Backbone:
    from torchvision.models import video

    entry = _CLIP_MODELS[spec.backbone]
    if spec.weights == TIMM_PRETRAINED:
        raise TeacherError(f"--weights timm is for timm backbones; {spec.backbone} is a torchvision video model: give a local weights file (a torchvision state dict or an original Video Swin checkpoint)")
    torch.manual_seed(spec.seed)
    net = getattr(video, spec.backbone)(weights=None)
    _replace(net, entry.classifier, torch.nn.Identity())
    _set_in_chans(net, entry.first_conv, spec.in_chans)
    if spec.weights is not None:
        _load_clip_weights(net, entry, Path(_existing(spec.weights, "weights")), spec)
    model = ClipFeatures(net, entry.per_time).eval()
    data_config = clip_preset(spec.backbone, spec.in_chans)
    _, feature_dim = clip_output(spec.backbone, data_config["clip_frames"])
    linear = _load_heads(spec.head, heads, feature_dim) if spec.head else {}
    return Backbone(model=model, heads=linear, feature_dim=feature_dim, data_config=data_config, clip=True)


def _replace(net: torch.nn.Module, path: str, module: torch.nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, attr, module)


def adapt_input_kernel(in_chans: int, weight: torch.Tensor) -> torch.Tensor:
    """A pretrained first-conv kernel of any rank for `in_chans` inputs, by timm's rule (`adapt_input_conv`):
    one channel sums the RGB kernels; other counts repeat them, scaled by 3 / in_chans."""
    have = weight.shape[1]
    if have == in_chans:
        return weight
    w = weight.float()
    if in_chans == 1:
        w = w.reshape(w.shape[0], have // 3, 3, *w.shape[2:]).sum(dim=2) if have > 3 and have % 3 == 0 else w.sum(dim=1, keepdim=True)
    elif have != 3:
        raise TeacherError(f"cannot adapt a first conv of {have} input channels to {in_chans}: give weights made for {in_chans} channels or for RGB")
    else:
        repeat = math.ceil(in_chans / 3)
        w = w.repeat(1, repeat, *[1] * (w.ndim - 2))[:, :in_chans] * (3 / in_chans)
    return w.to(weight.dtype)


def _set_in_chans(net: torch.nn.Module, path: str, in_chans: int) -> None:
    conv = net.get_submodule(path)
    if conv.in_channels == in_chans:
        return
    adapted = torch.nn.Conv3d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups, conv.bias is not None)
    with torch.no_grad():
        adapted.weight.copy_(adapt_input_kernel(in_chans, conv.weight))
        if conv.bias is not None:
            adapted.bias.copy_(conv.bias)
    _replace(net, path, adapted)


# Original Video Swin names (mlp.fc1/fc2; mmaction2 1.x: mlp.layers.0.0/layers.1, norm3) -> torchvision's swin3d
# names. torchvision's `features` interleaves stages and patch merging: stage i's blocks are features[2i], its
# downsample features[2i + 1].
_VIDEO_SWIN_RENAMES = (
    (re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\."), lambda m: f"features.{2 * int(m[1])}.{m[2]}."),
    (re.compile(r"^layers\.(\d+)\.downsample\."), lambda m: f"features.{2 * int(m[1]) + 1}."),
    (re.compile(r"\.mlp\.(fc1|layers\.0\.0)\."), lambda m: ".mlp.0."),
    (re.compile(r"\.mlp\.(fc2|layers\.1)\."), lambda m: ".mlp.3."),
    (re.compile(r"^norm3\."), lambda m: "norm."),  # mmaction2 1.x names the last stage's norm norm3
)


def video_swin_to_torchvision(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An original Video Swin checkpoint's backbone (keys `backbone.layers.0.blocks.0.mlp.fc1.weight`, ...) in
    torchvision's swin3d names (`features.0.0.mlp.0.weight`); the classification head (`cls_head.*`) is dropped."""
    mapped = {}
    for key, value in state.items():
        if key.startswith("cls_head."):
            continue
        name = key.removeprefix("backbone.")
        for pattern, replace in _VIDEO_SWIN_RENAMES:
            name = pattern.sub(replace, name)
        mapped[name] = value
    return mapped


def _load_clip_weights(net: torch.nn.Module, entry: ClipModel, path: Path, spec: BackboneSpec) -> None:
    """Strictly load a torchvision state dict (or, for swin3d, an original Video Swin checkpoint) into `net`."""
    state = read_state_dict(path)
    swin = entry.name.startswith("swin3d")
    if swin and any(k.startswith(("backbone.", "layers.")) for k in state):
        state = video_swin_to_torchvision(state)
    state = {k: v for k, v in state.items() if not k.startswith(f"{entry.classifier}.")}
    expected = net.state_dict()
    first = f"{entry.first_conv}.weight"
    if first in state and state[first].ndim == 5 and state[first].shape[1] != spec.in_chans:
        state[first] = adapt_input_kernel(spec.in_chans, state[first])
    for key in expected:  # fixed index tables that some checkpoints leave out: the model's own are the same
        if key.endswith("relative_position_index") and key not in state:
            state[key] = expected[key]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (needs {tuple(expected[k].shape)})" for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{what} {_few(keys)}" for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        kind = f"a torchvision {entry.name} state dict" + (" or an original Video Swin checkpoint (backbone.* keys)" if swin else "")
        raise TeacherError(f"weights {path} do not fit backbone {entry.name}: {'; '.join(parts)}: give {kind}")
    net.load_state_dict(state, strict=True)


def _few(keys: list[str], shown: int = 3) -> str:
    return ", ".join(keys[:shown]) + (f" (+{len(keys) - shown} more)" if len(keys) > shown else "")


# --- backbone families: what a kind of backbone is, asked without building one -------------

@dataclass(frozen=True)
class BackboneFamily:
    """One kind of backbone (timm image models, torchvision clip models). Callers ask the family whether a
    backbone takes clips, how many rows it gives, how to preprocess for it and what it costs, instead of
    looking at tensor ranks or config keys. Adding a family is one entry in `FAMILIES`."""

    name: str
    takes_clips: bool                                           # input [B, C, T, H, W], not one image per row
    knows: Callable[[str], bool]                                # backbone name -> belongs to this family
    preset: Callable[[str, int], dict]                          # (backbone, in_chans) -> data config (input_size, mean, std, ...)
    output_steps: Callable[[str, int], int]                     # (backbone, frames fed) -> rows out
    cost: Callable[[str, int, int, int, int], tuple[int, int]]  # (backbone, in_chans, height, width, frames) -> (params, FLOPs)
    build: Callable[[BackboneSpec, dict[str, int]], Backbone]


def _timm_knows(name: str) -> bool:
    import timm

    return timm.is_model(name.split(".")[0]) or name.startswith("hf_hub:")


@lru_cache(maxsize=64)
def _timm_preset(name: str, in_chans: int) -> dict:
    """timm's own data config of the model, read from a model built on the meta device (no weights)."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans)
    return dict(timm.data.resolve_data_config({}, model=model))


@lru_cache(maxsize=64)
def _timm_cost(name: str, in_chans: int, height: int, width: int, frames: int) -> tuple[int, int]:
    """Params and FLOPs of `frames` images (one per row) through the backbone without its classifier."""
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans).eval()
        image = torch.zeros(1, in_chans, height, width)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(image)
    return sum(p.numel() for p in model.parameters()), int(counter.get_total_flops()) * frames


@lru_cache(maxsize=64)
def _clip_cost(name: str, in_chans: int, height: int, width: int, frames: int) -> tuple[int, int]:
    """Params and FLOPs of one clip of `frames` frames through the video model, up to its per-time features."""
    from torch.utils.flop_counter import FlopCounterMode
    from torchvision.models import video

    entry = _CLIP_MODELS[name]
    with torch.device("meta"):
        net = getattr(video, name)(weights=None)
        _replace(net, entry.classifier, torch.nn.Identity())
        _set_in_chans(net, entry.first_conv, in_chans)
        net.eval()
        x = torch.zeros(1, in_chans, frames, height, width)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        entry.per_time(net, x)
    return sum(p.numel() for p in net.parameters()), int(counter.get_total_flops())


FAMILIES: tuple[BackboneFamily, ...] = (
    BackboneFamily("torchvision-clip", True, is_clip_backbone, clip_preset, lambda name, frames: clip_output(name, frames)[0],
                   _clip_cost, _create_clip_backbone),
    BackboneFamily("timm-image", False, _timm_knows, _timm_preset, lambda name, frames: frames, _timm_cost, _create_timm_backbone),
)


def backbone_family(name: str) -> BackboneFamily:
    """The family a backbone name belongs to; TeacherError naming the choices for a name no family knows."""
    for family in FAMILIES:
        if family.knows(name):
            return family
    raise TeacherError(f"unknown backbone {name!r}: pick a timm model name (see `timm.list_models()`) or a torchvision clip model ({', '.join(clip_backbone_names())})")


def resolve_precision(precision: str, device: str) -> str:
    """bf16 on CUDA and on CPUs with native bf16; fp32 elsewhere (emulated bf16 is slower)."""
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"

