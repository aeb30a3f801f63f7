"""Throughput statistics over transcripts: the honest numbers.

Aggregate x realtime is audio seconds over the wall-clock span from the first transcription's
start to the last one's end, not a sum of per-file speeds: it is what a person waiting for a
batch actually got.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import pandas as pd

COLUMNS = [
    "partition_key", "device", "worker", "audio_s", "wall_s", "x_realtime",
    "started_at", "finished_at", "model", "compute_type", "words", "language",
]


def transcripts_frame(transcripts: list[dict]) -> pd.DataFrame:
    rows = [
        {
            "partition_key": t["partition_key"],
            # A GPU is a device on a host: cuda:0 on two hosts is two GPUs (older transcripts lack a host).
            "device": f"{t['host']}/{t['device']}" if t.get("host") else t["device"],
            "worker": int(t["worker"]),
            "audio_s": float(t["duration_s"]),
            "wall_s": float(t["wall_s"]),
            "x_realtime": float(t["x_realtime"]),
            "started_at": pd.Timestamp(t["started_at"]),
            "finished_at": pd.Timestamp(t["finished_at"]),
            "model": t["model"],
            "compute_type": t["compute_type"],
            "words": int(t.get("words", 0)),
            "language": t.get("language", ""),
        }
        for t in transcripts
        if not t.get("reused_from")  # a duplicate upload did no work: do not count it twice
    ]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.sort_values("started_at", ignore_index=True)


def peak_overlap(intervals) -> int:
    """Most (start, end) intervals open at once (an end frees its slot before a start at the same instant)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    open_now = peak = 0
    for _, change in events:
        open_now += change
        peak = max(peak, open_now)
    return peak


def peak_concurrency(frame: pd.DataFrame) -> int:
    return peak_overlap(list(zip(frame["started_at"], frame["finished_at"])))


@dataclass(frozen=True)
class DeviceSummary:
    device: str
    files: int
    audio_s: float
    span_s: float
    x_realtime: float
    workers_used: int
    peak_concurrency: int


def _span_s(frame: pd.DataFrame) -> float:
    if frame.empty:
        return 0.0
    return (frame["finished_at"].max() - frame["started_at"].min()).total_seconds()


def summarize_devices(frame: pd.DataFrame) -> list[DeviceSummary]:
    summaries = []
    for device, group in frame.groupby("device", sort=True):
        span = _span_s(group)
        summaries.append(
            DeviceSummary(
                device=str(device),
                files=len(group),
                audio_s=round(float(group["audio_s"].sum()), 2),
                span_s=round(span, 2),
                x_realtime=round(float(group["audio_s"].sum()) / span, 2) if span > 0 else 0.0,
                workers_used=int(group["worker"].nunique()),
                peak_concurrency=peak_concurrency(group),
            )
        )
    return summaries


def aggregate_x_realtime(frame: pd.DataFrame) -> float:
    span = _span_s(frame)
    return round(float(frame["audio_s"].sum()) / span, 2) if span > 0 else 0.0


def markdown_summary(frame: pd.DataFrame, limits: dict[str, int] | None = None) -> str:
    limits = limits or {}
    if frame.empty:
        return "No transcripts yet."
    lines = [
        f"**{len(frame)} files**, {frame['audio_s'].sum() / 3600:.3f} audio hours, "
        f"aggregate **{aggregate_x_realtime(frame)}x realtime** "
        f"over a {_span_s(frame):.1f} s wall-clock span.",
        "",
        "| device | files | audio s | span s | x realtime | workers used | peak concurrent | limit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summarize_devices(frame):
        limit = limits.get(s.device, "")
        lines.append(
            f"| {s.device} | {s.files} | {s.audio_s} | {s.span_s} | {s.x_realtime} | "
            f"{s.workers_used} | {s.peak_concurrency} | {limit} |"
        )
    per_worker = (
        frame.groupby(["device", "worker"])
        .agg(files=("partition_key", "count"), audio_s=("audio_s", "sum"), wall_s=("wall_s", "sum"))
        .reset_index()
    )
    lines += ["", "| device | worker | files | audio s | busy s | x realtime while busy |", "|---|---|---|---|---|---|"]
    for row in per_worker.itertuples():
        speed = row.audio_s / row.wall_s if row.wall_s else 0.0
        lines.append(
            f"| {row.device} | {row.worker} | {row.files} | {row.audio_s:.1f} | {row.wall_s:.1f} | {speed:.1f} |"
        )
    return "\n".join(lines)


def timeline_png(frame: pd.DataFrame) -> bytes:
    """One lane per device worker, one bar per file; below it, x realtime over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lanes = sorted({(d, w) for d, w in zip(frame["device"], frame["worker"])})
    origin = frame["started_at"].min() if not frame.empty else pd.Timestamp.now()
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(9, 2 + 0.4 * max(1, len(lanes))), height_ratios=[max(1, len(lanes)), 2]
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for lane, (device, worker) in enumerate(lanes):
        rows = frame[(frame["device"] == device) & (frame["worker"] == worker)]
        starts = (rows["started_at"] - origin).dt.total_seconds()
        widths = (rows["finished_at"] - rows["started_at"]).dt.total_seconds()
        top.broken_barh(list(zip(starts, widths)), (lane - 0.4, 0.8), color=colors[lane % len(colors)])
    top.set_yticks(range(len(lanes)), [f"{d} w{w}" for d, w in lanes])
    top.set_xlabel("seconds since first start")
    top.set_title("Transcriptions per device worker")
    if not frame.empty:
        done = frame.sort_values("finished_at")
        elapsed = (done["finished_at"] - origin).dt.total_seconds().clip(lower=1e-3)
        bottom.plot(elapsed, done["audio_s"].cumsum() / elapsed, marker="o")
    bottom.set_xlabel("seconds since first start")
    bottom.set_ylabel("x realtime so far")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


def png_markdown(png: bytes) -> str:
    return f"![timeline](data:image/png;base64,{base64.b64encode(png).decode()})"
