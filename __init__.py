"""egodistill: run heavy multimodal teachers once into a shared Zarr v3 cache; distil cheap students from it.

Stages: `egodistill.extract` (teachers over videos) -> `egodistill.cache` (the store, docs/cache-format.md)
<- `egodistill.student` (fitting, distillation, evaluation); `egodistill.demo` runs them all on generated data.
"""
