import io

import dagster as dg

from opentr_pipeline.defs.assets.transcripts import transcript
from opentr_pipeline.defs.resources import GpuExecutor, MediaStore

# outputs.throughput (pandas) is imported in the bodies below: every run process loads this
# module, and a transcription run would pay 0.7 s of its launch for pandas it never uses.

# The newest transcript event the report was built over, read before the store is listed: a
# transcript recorded while the report is being built is newer than this, so the freshness sensor
# asks for another report (comparing with the report's own event would hide it).
TRANSCRIPTS_SEEN = "transcript_event_seen"


def latest_materialization_id(instance: dg.DagsterInstance, asset: str) -> int | None:
    records = instance.fetch_materializations(dg.AssetKey(asset), limit=1).records
    return records[0].storage_id if records else None


@dg.asset(
    deps=[transcript],
    code_version="report-1",
    group_name="reporting",
    kinds={"pandas", "parquet"},
)
def throughput_report(context: dg.AssetExecutionContext, media: MediaStore, gpu: GpuExecutor) -> dg.MaterializeResult:
    """Every transcript as a row; how many times realtime each device and worker delivered while busy."""
    from opentr_pipeline.outputs.throughput import (
        aggregate_x_realtime, busy_s, markdown_summary, png_markdown, span_x_realtime, summarize_devices,
        timeline_png, transcripts_frame,
    )

    seen = latest_materialization_id(context.instance, "transcript")
    store = media.outputs()
    records, skipped = store.list_records("transcripts")
    frame = transcripts_frame(records)
    for uri, reason in skipped.items():
        context.log.warning(f"{uri}: skipped, a damaged record: {reason}")
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    parquet_uri = store.write_bytes("reports/throughput.parquet", buffer.getvalue())
    summary = markdown_summary(frame, gpu.device_limits(), skipped)
    store.write_text("reports/throughput.md", summary + "\n")
    png = timeline_png(frame)
    store.write_bytes("reports/timeline.png", png)
    peaks = {s.device: s.peak_concurrency for s in summarize_devices(frame)}
    return dg.MaterializeResult(metadata={
        "files": len(frame),
        "records_skipped": len(skipped),
        "audio_hours": round(float(frame["audio_s"].sum()) / 3600, 4),
        "x_realtime_while_busy": aggregate_x_realtime(frame),
        "busy_s": round(busy_s(frame), 1),
        "x_realtime_whole_span": span_x_realtime(frame),
        "utilisation": dg.MetadataValue.json({s.device: s.utilisation for s in summarize_devices(frame)}),
        "summary": dg.MetadataValue.md(summary),
        "timeline": dg.MetadataValue.md(png_markdown(png)),
        "peak_concurrency": dg.MetadataValue.json(peaks),
        "worker_limits": dg.MetadataValue.json(gpu.device_limits()),
        "parquet": dg.MetadataValue.path(parquet_uri),
        TRANSCRIPTS_SEEN: dg.MetadataValue.int(seen if seen is not None else 0),
    })


@dg.asset_check(asset=throughput_report, blocking=True)
def peak_within_worker_limit(context: dg.AssetCheckExecutionContext, media: MediaStore, gpu: GpuExecutor) -> dg.AssetCheckResult:
    """No device ever ran more transcriptions at once than its worker limit."""
    from opentr_pipeline.outputs.throughput import summarize_devices, transcripts_frame

    frame = transcripts_frame(media.outputs().list_json("transcripts"))
    limits = gpu.device_limits()
    over = {s.device: s.peak_concurrency for s in summarize_devices(frame)
            if s.device in limits and s.peak_concurrency > limits[s.device]}
    return dg.AssetCheckResult(
        passed=not over,
        metadata={"over_limit": dg.MetadataValue.json(over), "limits": dg.MetadataValue.json(limits)},
        description="peak concurrency within GPU_SCALE_WORKERS" if not over else f"over the limit: {over}",
    )
