"""The assets: media_file (probe), transcript (through the GPU executor), subtitles, and the
unpartitioned throughput_report with its blocking check. One media file is one partition."""

import warnings

import dagster as dg

# BackfillPolicy is marked beta; it is the documented way to put several files in one run.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
