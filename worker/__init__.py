"""The RunPod worker around the OOTDiffusion try-on pipeline.

`handler.py` at the repository root is the thin RunPod entry point; everything it does lives
here, split by job: `config` (environment settings), `schema` (request validation),
`images` (fetching, decoding, fitting and encoding pictures), `runtime` (models loaded once),
`job` (one request from validation to result) and `errors` (what a user is told).
"""
