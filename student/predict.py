"""`predict`: a trained student's scores for every head and segment of a split, or of new videos, as files.

Formats (`--format`):
- `scores` (default): `<out>.npz` (`segment_id` [N] str, `split` [N] str, `scores_<head>` [N, C] float32 logits)
  and `<out>.json` beside it (strict JSON: run, cache, heads and one entry per segment with its id and scores).
- `epic-100`: the EPIC-KITCHENS-100 action-recognition submission JSON: `version`, `challenge`, `sls_pt`,
  `sls_tl`, `sls_td` and `results` {narration_id: {"verb": {"0": score, ...}, "noun": {...}}}; a `.zip` out
  holds it as `test.json`, as the challenge server takes it.
- `epic-100-eval`: the results file EPIC-KITCHENS-100's `evaluate.py` reads for the validation split: a pickle
  (`.pkl`) of {"verb_output": float32 [N, 97], "noun_output": float32 [N, 300], "narration_id": str [N]}.
- `ssv2`: Something-Something v2's submission lines, one per video: `<id>;<name of the top-1 class>`, the class
  names from the SSv2 labels file the cache's manifest was read with.

For new videos (`--manifest M --videos V`) the student's inputs are extracted first into a cache of their own
(default `<out>.cache.zarr`, resumable): each input teacher's backbone and settings come from its provenance
in the training cache, and its weights file, where it was one, is given again with `--weights` and must have
the recorded sha256 (a file no input teacher was extracted with is refused). A frames teacher runs no model: its
frames are stored again at the recorded frame size and sampling.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from egodistill import cache
from egodistill.common import EgodistillError, atomic_write, check_choice, dumps, pick_device
from egodistill.student.data import present_inputs
from egodistill.student.evaluate import load_student, scoring_loader
from egodistill.student.network import student_logits
from egodistill.student.sources import recorded_seed, recorded_weights

FORMATS = ("scores", "epic-100", "epic-100-eval", "ssv2")
EPIC_HEADS = {"verb": 97, "noun": 300}
EPIC_VERSION = "0.2"  # what the challenge's own create_submission.py writes
EPIC_CHALLENGE = "action_recognition"
SUFFIXES = {"scores": (".npz",), "epic-100": (".json", ".zip"), "epic-100-eval": (".pkl",), "ssv2": (".csv", ".txt")}
SSV2_CLASSES = 174


class PredictError(EgodistillError):
    """predict cannot run with these options, this run or this cache."""


@dataclass
class PredictConfig:
    run: str
    out: str
    cache: str | None = None          # a cache holding the student's input teachers
    split: str = "test"
    manifest: list[str] = field(default_factory=list)  # new videos: their manifest(s) ...
    videos: str | None = None         # ... and the folder they are under
    weights: list[str] = field(default_factory=list)   # weights files of the input teachers, for new videos
    work_cache: str | None = None     # where new videos' inputs are extracted (default <out>.cache.zarr)
    format: str = "scores"
    sls: tuple[int, int, int] = (2, 3, 3)  # EPIC supervision levels (pretraining, training labels, training data)
    batch_size: int = 256
    device: str = "auto"
    workers: int = 0                  # extraction workers for new videos (0: in this process)


@dataclass
class Predictions:
    ids: np.ndarray                   # str [N]
    split: np.ndarray                 # str [N]
    scores: dict[str, np.ndarray]     # head -> float32 [N, C] logits
    unscored: list[str]               # ids of the split's segments without any of the student's inputs
    cache: str
    files: list[Path]


def predict(cfg: PredictConfig, log: Callable[[str], None] = print) -> Predictions:
    """Score the split (or the new videos) and write the format's file(s); every check comes before any work."""
    check_choice(PredictError, "--format", cfg.format, FORMATS)
    out = _check_out(cfg)
    record, model = load_student(cfg.run)
    _check_format_heads(cfg.format, {h: int(c) for h, c in model.cfg.heads.items()})
    if bool(cfg.manifest) == bool(cfg.cache):
        raise PredictError("give either --cache C (a split of a cache) or --manifest M --videos V (new videos)")
    location, split = (cfg.cache, cfg.split) if cfg.cache else (extract_inputs(cfg, record, out, log), None)
    root = cache.open_cache(location, mode="r")
    input_keys = record["input_keys"]
    missing = [k for k in input_keys if k not in root.teacher_keys()]
    if missing:
        raise PredictError(f"cache {location} lacks the student's input teacher(s) {', '.join(missing)}: extract them into it "
                           f"with the settings of the training cache, or predict with --manifest/--videos")
    table = root.segments
    chosen = np.ones(len(table), dtype=bool) if split is None else table.split == split
    if not chosen.any():
        raise PredictError(f"no {split!r} segments in {location} (splits: {', '.join(sorted(set(table.split.tolist())))}): pass another --split")
    present = present_inputs(root, input_keys)
    segments = np.flatnonzero(chosen & present.any(axis=1))
    unscored = [str(i) for i in table.ids[chosen & ~present.any(axis=1)]]
    if len(segments) == 0:
        raise PredictError(f"none of the {int(chosen.sum())} segments has the student's inputs in {location}: extract them first (see `egodistill cache info`)")
    scores = _score(model, root, input_keys, segments, present, cfg)
    result = Predictions(ids=np.asarray(table.ids[segments], dtype=str), split=np.asarray(table.split[segments], dtype=str), scores=scores,
                         unscored=unscored, cache=str(location), files=[])
    names = _class_names(root, record, cfg.format)
    result.files = write_predictions(result, cfg, out, record, names)
    if unscored:
        log(f"{len(unscored)} segment(s) have none of the student's inputs and got no scores (first: {unscored[0]}): see the teachers' ledger")
    return result


@torch.no_grad()
def _score(model, root: cache.Cache, input_keys: list[str], segments: np.ndarray, present: np.ndarray, cfg: PredictConfig) -> dict[str, np.ndarray]:
    device = pick_device(cfg.device)
    model = model.to(device)
    loader = scoring_loader(model, root, input_keys, segments, {}, present, cfg.batch_size, device)
    outputs: dict[str, list[np.ndarray]] = {}
    order = []
    for batch in loader.epoch(0):
        batch = batch.to(device)
        order.append(batch.index.cpu().numpy())
        for head, values in student_logits(model, batch, batch.present).items():
            outputs.setdefault(head, []).append(values.float().cpu().numpy())
    position = np.argsort(np.concatenate(order))  # back to cache order
    return {h: np.concatenate(v)[position].astype(np.float32) for h, v in outputs.items()}


def _check_format_heads(fmt: str, heads: dict[str, int]) -> None:
    has = ", ".join(f"{h} ({c})" for h, c in heads.items()) or "none"
    if fmt in ("epic-100", "epic-100-eval") and any(heads.get(h) != c for h, c in EPIC_HEADS.items()):
        raise PredictError(f"--format {fmt} needs heads verb (97 classes) and noun (300), the run has {has}: use --format scores")
    if fmt == "ssv2" and list(heads.values()) != [SSV2_CLASSES]:
        raise PredictError(f"--format ssv2 needs one head of {SSV2_CLASSES} classes, the run has {has}: use --format scores")


def _check_out(cfg: PredictConfig) -> Path:
    out = Path(cfg.out)
    if not out.parent.is_dir():
        raise PredictError(f"--out {out}: folder {out.parent} does not exist: create it or choose another --out")
    if out.suffix.lower() not in SUFFIXES[cfg.format]:
        raise PredictError(f"--out {out}: --format {cfg.format} writes a {' or '.join(SUFFIXES[cfg.format])} file: name --out so")
    return out


# --- writing -------------------------------------------------------------------------------------------


def write_predictions(result: Predictions, cfg: PredictConfig, out: Path, record: dict, class_names: list[str] | None = None) -> list[Path]:
    """The format's file(s), each written atomically (a killed run leaves none half-written)."""
    if cfg.format == "ssv2":
        [scores] = result.scores.values()
        return [atomic_write(out, "".join(f"{i};{class_names[int(k)]}\n" for i, k in zip(result.ids, scores.argmax(axis=1))))]
    if cfg.format == "epic-100":
        text = dumps(epic_submission(result, cfg.sls))
        if out.suffix.lower() == ".zip":
            return [atomic_write(out, lambda tmp: _zip(tmp, "test.json", text))]
        return [atomic_write(out, text)]
    if cfg.format == "epic-100-eval":
        data = {"verb_output": result.scores["verb"], "noun_output": result.scores["noun"], "narration_id": result.ids}
        return [atomic_write(out, pickle.dumps(data, protocol=4))]
    arrays = {"segment_id": result.ids, "split": result.split, **{f"scores_{h}": v for h, v in result.scores.items()}}

    def npz(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a path
            np.savez(f, **arrays)

    document = {
        "run": str(cfg.run), "cache": result.cache, "split": cfg.split if cfg.cache else None, "run_config": record.get("config", {}),
        "heads": {h: int(v.shape[1]) for h, v in result.scores.items()}, "scores": "logits", "unscored": result.unscored,
        "segments": [{"id": str(i), "split": str(s), "scores": {h: v[k].tolist() for h, v in result.scores.items()}}
                     for k, (i, s) in enumerate(zip(result.ids, result.split))],
    }
    return [atomic_write(out, npz), atomic_write(out.with_suffix(".json"), dumps(document))]


def _class_names(root: cache.Cache, record: dict, fmt: str) -> list[str] | None:
    """The names of the run's one head's classes (ssv2), from the predicted cache or else the training cache."""
    if fmt != "ssv2":
        return None
    head = next(iter(record["model"]["heads"])) if "heads" in record.get("model", {}) else None
    for location in (root, record.get("config", {}).get("cache")):
        try:
            opened = location if isinstance(location, cache.Cache) else cache.open_cache(location, mode="r")
        except (EgodistillError, TypeError):
            continue
        names = opened.segments_info.get("class_names", {})
        found = names.get(head) if head else next(iter(names.values()), None)
        if found and len(found) == SSV2_CLASSES:
            return list(found)
    raise PredictError("--format ssv2 needs the class names, which neither cache holds: read the SSv2 manifest with its "
                       "*labels.json beside it (or give --classes action=something-something-v2-labels.json) when making the cache")


def epic_submission(result: Predictions, sls: tuple[int, int, int]) -> dict:
    """The EPIC-KITCHENS-100 action-recognition submission: per narration id, every verb's and noun's score."""
    for name, level in zip(("sls_pt", "sls_tl", "sls_td"), sls):
        if not 0 <= int(level) <= 5:
            raise PredictError(f"--{name.replace('_', '-')} {level} is not a supervision level 0..5: see https://github.com/epic-kitchens/sls")
    verbs, nouns = result.scores["verb"], result.scores["noun"]
    return {
        "version": EPIC_VERSION, "challenge": EPIC_CHALLENGE, "sls_pt": int(sls[0]), "sls_tl": int(sls[1]), "sls_td": int(sls[2]),
        "results": {str(i): {"verb": _class_scores(verbs[k]), "noun": _class_scores(nouns[k])} for k, i in enumerate(result.ids)},
    }


def _class_scores(row: np.ndarray) -> dict[str, float]:
    return {str(c): float(v) for c, v in enumerate(row)}


def _zip(path: Path, name: str, text: str) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, text)


# --- new videos: the student's inputs, extracted as its teachers were -----------------------------------


def extract_inputs(cfg: PredictConfig, record: dict, out: Path, log: Callable[[str], None]) -> str:
    """Extract each input teacher of the run over the new videos into a cache of its own, under the same key."""
    from egodistill.extract.manifests import read_manifests, resolve_videos
    from egodistill.extract.modalities import get_modality
    from egodistill.extract.run import ExtractConfig, plan_extraction, run_extraction

    if not cfg.videos:
        raise PredictError("--manifest needs --videos: the folder the manifest's videos are under")
    training = record.get("config", {}).get("cache")
    if not training:
        raise PredictError(f"run {cfg.run} does not name its training cache: predict on a cache with --cache")
    source = cache.open_cache(training, mode="r")
    teachers = [source.teacher(k) for k in record["input_keys"]]
    weights = recorded_weights(teachers, cfg.weights)  # before the manifest scan: a wrong file fails at once
    manifests = read_manifests(cfg.manifest)
    missing = sorted({v for m in manifests for v, p in resolve_videos(m, cfg.videos).items() if p is None})
    if missing:
        raise PredictError(f"{len(missing)} video(s) of the manifest are not under {cfg.videos} (e.g. {missing[0]}): check --videos and the manifest")
    location = cfg.work_cache or str(out.with_name(out.stem + ".cache.zarr"))
    for teacher, weights_file in zip(teachers, weights):
        p = teacher.provenance
        modality = get_modality(p.modality)  # frames: no model, so no backbone; their size is among the modality's options
        extract_cfg = ExtractConfig(manifest=list(cfg.manifest), videos=cfg.videos, cache=location, modality=p.modality,
                                    backbone=p.backbone if modality.has_model else None, weights=weights_file, seed=recorded_seed(p.weights),
                                    name=teacher.key, options=modality.recorded_options(p.preprocessing),
                                    workers=cfg.workers, device=cfg.device, precision=p.precision or "auto", **_sampling(p.sampling))
        plan = plan_extraction(extract_cfg)
        summary = run_extraction(extract_cfg, plan, log=log)
        made = cache.open_cache(location, mode="r").teacher(summary.teacher_key).provenance
        changed = _differences(p, made)
        if changed:
            raise PredictError(f"the new videos' {p.modality} features differ from teacher {teacher.key}'s settings ({', '.join(changed)}): "
                               f"extract them yourself with those settings into a cache and predict with --cache")
    return location


def _sampling(sampling: dict) -> dict:
    clip = sampling.get("clip") or {}
    return {"frames": sampling.get("frames"), "fps": sampling.get("fps"), "clip_frames": clip.get("frames"), "clip_stride": clip.get("stride")}


def _differences(wanted: cache.Provenance, made: cache.Provenance) -> list[str]:
    """Fields of the identity that differ, but the head: the student reads features, which a head does not change."""
    a, b = wanted.to_json(), made.to_json()
    return sorted(k for k in (set(a) | set(b)) - {"egodistill", "head"} if a.get(k) != b.get(k))
