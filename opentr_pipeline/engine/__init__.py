"""The engine: everything that turns sources into transcripts on devices, in plain Python.

Nothing here imports Dagster (an import-linter contract in pyproject.toml keeps it so): a GPU
host runs `opentr worker` with this folder, `settings` and `storage` only.

- `media`: probe a file (PyAV): format, codecs, duration, sha256; `MediaError` for bad input
- `transcription`: faster-whisper decoding, one model per device and process (`transcribe_on`)
- `chunks`: batched chunks of joined speech, and the guard that decodes dropped ones again
- `devices`: the device plan, per-device leases across processes, the VRAM check
- `failures`: one judgement of a file's failure: its reason, and whether retrying can help
- `in_process`: the engine that holds the model in the calling process (the embedded default)
- `broker`, `worker`, `client`: resident workers behind a Redis broker, and the run side that feeds them
- `local`: a private Redis and resident workers on this machine (`opentr dev`, benchmarks)
- `slots`: how many transcriptions each device admits at once, wherever the engine lives
"""
