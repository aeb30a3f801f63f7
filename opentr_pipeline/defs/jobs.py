"""The jobs: one over the per-file assets (runs take several partitions), one for the report."""

import dagster as dg

from opentr_pipeline.defs.assets.media import media_file
from opentr_pipeline.defs.assets.profiles import voice_profiles
from opentr_pipeline.defs.assets.reports import throughput_report
from opentr_pipeline.defs.assets.search import search_index
from opentr_pipeline.defs.assets.speakers import speakers
from opentr_pipeline.defs.assets.subtitles import subtitles
from opentr_pipeline.defs.assets.transcripts import transcript
from opentr_pipeline.defs.names import REPORT_JOB, TRANSCRIBE_JOB
from opentr_pipeline.defs.partitions import media_files

transcribe_job = dg.define_asset_job(
    TRANSCRIBE_JOB,
    selection=dg.AssetSelection.assets(media_file, transcript, speakers, subtitles, search_index),
    partitions_def=media_files,
    description="Probe, transcribe, find the speakers of, subtitle and index for search media files: one run takes several partitions.",
)
# The library-wide assets, brought up to date together once transcription goes quiet.
report_job = dg.define_asset_job(REPORT_JOB, selection=dg.AssetSelection.assets(throughput_report, voice_profiles))
