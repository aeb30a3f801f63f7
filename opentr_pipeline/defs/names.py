"""The names Dagster, the CLI and the tests know the pipeline's parts by, written once."""

PARTITIONS = "media_files"
TRANSCRIBE_JOB = "transcribe_media"
REPORT_JOB = "throughput_report_job"
# Per file, in lineage order: a failure in one of these fails the file (reruns, `opentr run`'s
# verdicts). `speakers` is not among them: a file whose speakers fail keeps its words and
# subtitles, and its run goes on (defs/assets/speakers.py).
PIPELINE_ASSETS = ("media_file", "transcript", "subtitles")

# Run tags. A run over several partitions names its range with Dagster's own tags.
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
LAUNCHED_BY = "opentr/launched_by"
ATTEMPT = "opentr/attempt"  # 1 for a first run; a rerun of its unfinished files counts on
RERUN_OF = "opentr/rerun_of"  # the run whose unfinished files this run takes again
RUN_PID = "opentr/run_pid"  # set by `opentr run` on its in-process runs, so a dead one is seen
INVOCATION = "opentr/invocation"  # the `opentr run` command a run belongs to
# "true": transcribe again though a current transcript (or one of the same bytes) exists. Add it
# as a tag when materializing in the UI (Launchpad, "Add tag"), or `opentr run --retranscribe`.
RETRANSCRIBE = "opentr/retranscribe"
# "true": files failed for good (bad media, a poison file) and unchanged since are tried again;
# without it every path leaves them failed with their reason. `opentr run --retry-failed` sets it.
RETRY_FAILED = "opentr/retry_failed"
