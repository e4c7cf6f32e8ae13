"""egodistill: run heavy multimodal teachers once into a shared Zarr v3 cache; distil cheap students from it.

Stages: `egodistill.extract` (teachers over videos) -> `egodistill.cache` (the store, docs/cache-format.md)
<- `egodistill.student` (fitting, distillation, evaluation); `egodistill.demo` runs them all on generated data.
"""


def __getattr__(name: str):
    # Lazy: `import egodistill` stays light (no torch) until the dataset API is asked for.
    if name == "__version__":
        from egodistill.common import egodistill_version

        return egodistill_version()
    if name in ("dataset", "SegmentDataset"):
        from egodistill.student import dataset as module

        return getattr(module, name)
    raise AttributeError(f"module 'egodistill' has no attribute {name!r}")
