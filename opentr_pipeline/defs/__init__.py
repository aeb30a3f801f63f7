"""The Dagster wing: thin glue over the engine, laid out as `create-dagster` scaffolds it.

`../definitions.py` builds the code location from these: `assets/` (media_file, transcript,
subtitles, throughput_report and its check), `partitions`, `jobs`, `sensors` and their state
(`sensor_state`), `reruns` (every file counts after a failed run), `outcomes` (per-file
records of a multi-file step), `resources` (where files live; the GpuExecutor adapter that picks
the in-process or the resident engine) and `launcher` (the run launcher that sees dead runs).
"""
