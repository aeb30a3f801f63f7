"""opentr-pipeline: faster-whisper transcription on Dagster, N workers per device."""
