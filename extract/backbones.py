"""The models a teacher runs: a timm backbone (random, local weights or timm's own) plus optional linear heads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from egodistill.cache.checksums import file_sha256
from egodistill.cache.errors import TeacherError

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
    import timm  # heavy import: keep `egodistill --help` fast

    if not timm.is_model(spec.backbone.split(".")[0]) and not spec.backbone.startswith("hf_hub:"):
        raise TeacherError(f"unknown backbone {spec.backbone!r}: pick a timm model name (see `timm.list_models()`)")
    kwargs: dict = {"num_classes": 0, "in_chans": spec.in_chans}
    torch.manual_seed(spec.seed)
    try:
        model = timm.create_model(spec.backbone, pretrained=spec.weights == TIMM_PRETRAINED, **kwargs)
    except (RuntimeError, OSError, ValueError) as err:
        raise TeacherError(f"cannot build backbone {spec.backbone} with weights {spec.weights}: {_first_line(err)}") from err
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

    state = _read_state(path)
    for wrapper in ("state_dict", "model"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    state = {k.removeprefix("module."): v for k, v in state.items()}
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


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def _load_heads(path: str, heads: dict[str, int], feature_dim: int) -> dict[str, torch.nn.Linear]:
    """A head file holds `<head>.weight` [C, D] and `<head>.bias` [C] for every manifest head."""
    state = _read_state(Path(_existing(path, "head")))
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


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file is the same user error
        raise TeacherError(f"cannot read {path}: {_first_line(err)}: give a torch state dict or .safetensors file") from err
    if not isinstance(state, dict):
        raise TeacherError(f"{path} is not a state dict: save it with torch.save(module.state_dict(), path)")
    return state


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
