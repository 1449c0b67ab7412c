"""Facts every layer shares (the worker, the pipeline, the preprocessor, storage, the builder).

Small, dependency-light modules, each the one place for its fact: `core.vocabulary` (model
types, categories, the model frame, size notation), `core.generation` (output sizes, sample,
step and guidance ranges and defaults), `core.images` (flattening transparency),
`core.jsontypes` (naming a JSON value's type in messages), `core.lazy` (package names loaded
on first use). Nothing here imports torch, RunPod, S3 or HTTP clients, so the builder stage and
`preprocess`/`ootd` can use them freely.
"""
