"""What transcripts become, in plain Python: subtitle files (`subtitles`) and throughput
statistics (`throughput`), for the Dagster assets, `opentr report` and the benchmarks alike."""
