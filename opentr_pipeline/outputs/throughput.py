"""Throughput statistics over transcripts: the honest numbers.

The headline is x realtime while busy: audio seconds over the time in which at least one worker
was transcribing (the union of the transcriptions' intervals), not a sum of per-file speeds, and
not audio over the span from the first transcript ever to the last, which idle hours drag towards
zero (2.98x after the demo fell to 0.05x an hour later, the devices unchanged). Work periods are
stretches of transcription with no idle gap longer than IDLE_GAP_S; utilisation is a device's
busy time over the work periods' time.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import pandas as pd

COLUMNS = [
    "partition_key", "device", "worker", "audio_s", "wall_s", "x_realtime",
    "started_at", "finished_at", "model", "compute_type", "words", "language", "shares",
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
            "started_at": t["started_at"],
            "finished_at": t["finished_at"],
            "model": t["model"],
            "compute_type": t["compute_type"],
            "words": int(t.get("words", 0)),
            "language": t.get("language", ""),
            # each language's share of the file's speech (older transcripts: all in `language`)
            "shares": {e["language"]: float(e["share"]) for e in t.get("languages") or []}
                      or {t.get("language", ""): 1.0},
        }
        for t in transcripts
        if not t.get("reused_from")  # a duplicate upload did no work: do not count it twice
    ]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    for column in ("started_at", "finished_at"):  # parsed at once: a Timestamp per row costs seconds at 100,000
        frame[column] = pd.to_datetime(frame[column], format="ISO8601", utc=True)
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


IDLE_GAP_S = 300.0  # no transcription for this long ends a work period
PERIODS_SHOWN = 20


def _segment_ids(frame: pd.DataFrame, gap_s: float = 0.0) -> pd.Series:
    """Per row (the frame sorted by start), which stretch of overlapping intervals it belongs to:
    a row starts a new one when it starts more than `gap_s` after every earlier row has ended."""
    reach = frame["finished_at"].cummax().shift()
    return ((frame["started_at"] > reach + pd.Timedelta(seconds=gap_s)) | reach.isna()).cumsum()


def _segments(frame: pd.DataFrame, gap_s: float = 0.0) -> pd.DataFrame:
    grouped = frame.groupby(_segment_ids(frame, gap_s))
    return pd.DataFrame({"start": grouped["started_at"].min(), "end": grouped["finished_at"].max(),
                         "files": grouped.size(), "audio_s": grouped["audio_s"].sum()})


def busy_s(frame: pd.DataFrame) -> float:
    """Seconds in which at least one of these transcriptions was running (vectorised: a report
    over 100,000 transcripts must stay quick)."""
    if frame.empty:
        return 0.0
    segments = _segments(frame)
    return float((segments["end"] - segments["start"]).dt.total_seconds().sum())


@dataclass(frozen=True)
class DeviceSummary:
    device: str
    files: int
    audio_s: float
    busy_s: float
    x_realtime: float  # while busy
    utilisation: float  # busy share of the work periods
    workers_used: int
    peak_concurrency: int


@dataclass(frozen=True)
class WorkPeriod:
    started_at: pd.Timestamp
    span_s: float
    files: int
    audio_s: float
    busy_s: float
    x_realtime: float  # while busy


def _span_s(frame: pd.DataFrame) -> float:
    if frame.empty:
        return 0.0
    return (frame["finished_at"].max() - frame["started_at"].min()).total_seconds()


def _ratio(audio_s: float, seconds: float) -> float:
    return round(audio_s / seconds, 2) if seconds > 0 else 0.0


def work_periods(frame: pd.DataFrame, gap_s: float = IDLE_GAP_S) -> list[WorkPeriod]:
    if frame.empty:
        return []
    rows = frame.assign(period=_segment_ids(frame, gap_s).to_numpy(), busy=_segment_ids(frame).to_numpy())
    busy = rows.groupby(["period", "busy"]).agg(start=("started_at", "min"), end=("finished_at", "max"))
    busy_by_period = (busy["end"] - busy["start"]).dt.total_seconds().groupby(level="period").sum()
    periods = rows.groupby("period").agg(start=("started_at", "min"), end=("finished_at", "max"),
                                         files=("partition_key", "size"), audio_s=("audio_s", "sum"))
    return [WorkPeriod(p.start, round((p.end - p.start).total_seconds(), 2), int(p.files), round(float(p.audio_s), 2),
                       round(float(busy_by_period[p.Index]), 2), _ratio(float(p.audio_s), float(busy_by_period[p.Index])))
            for p in periods.itertuples()]


def summarize_devices(frame: pd.DataFrame, periods: list[WorkPeriod] | None = None) -> list[DeviceSummary]:
    work_s = sum(p.span_s for p in (work_periods(frame) if periods is None else periods))
    summaries = []
    for device, group in frame.groupby("device", sort=True):
        audio, busy = float(group["audio_s"].sum()), busy_s(group)
        summaries.append(
            DeviceSummary(
                device=str(device),
                files=len(group),
                audio_s=round(audio, 2),
                busy_s=round(busy, 2),
                x_realtime=_ratio(audio, busy),
                utilisation=round(busy / work_s, 3) if work_s > 0 else 0.0,
                workers_used=int(group["worker"].nunique()),
                peak_concurrency=peak_concurrency(group),
            )
        )
    return summaries


def aggregate_x_realtime(frame: pd.DataFrame) -> float:
    """All devices together, while busy: audio over the time any worker was transcribing."""
    return _ratio(float(frame["audio_s"].sum()), busy_s(frame))


def span_x_realtime(frame: pd.DataFrame) -> float:
    """Audio over the span from the first start to the last end, idle time included."""
    return _ratio(float(frame["audio_s"].sum()), _span_s(frame))


SKIPPED_SHOWN = 20


def skipped_note(skipped: dict[str, str]) -> list[str]:
    """The records the report left out, and why: a report never hides that it is short."""
    if not skipped:
        return []
    lines = ["", f"**{len(skipped)} damaged transcript record(s) skipped** (not counted above; their files "
                 "are transcribed again by the next `opentr run`):", ""]
    lines += [f"- `{uri}`: {reason}" for uri, reason in sorted(skipped.items())[:SKIPPED_SHOWN]]
    if len(skipped) > SKIPPED_SHOWN:
        lines.append(f"- and {len(skipped) - SKIPPED_SHOWN} more")
    return lines


def hours_by_language(frame: pd.DataFrame) -> dict[str, tuple[int, float]]:
    """Per language: the files that have any of it, and its audio hours (a file's duration shared
    out by each language's share of its speech), most first."""
    found: dict[str, list] = {}
    for audio_s, shares in zip(frame["audio_s"], frame["shares"]):
        for language, share in shares.items():
            entry = found.setdefault(language or "unknown", [0, 0.0])
            entry[0] += 1
            entry[1] += audio_s * share / 3600
    return {k: (v[0], round(v[1], 4)) for k, v in sorted(found.items(), key=lambda item: -item[1][1])}


def language_table(frame: pd.DataFrame) -> list[str]:
    rows = [f"| {language} | {files} | {hours:.3f} |" for language, (files, hours) in hours_by_language(frame).items()]
    return ["| language | files | audio hours |", "|---|---|---|", *rows]


def markdown_summary(frame: pd.DataFrame, limits: dict[str, int] | None = None,
                     skipped: dict[str, str] | None = None) -> str:
    limits = limits or {}
    if frame.empty:
        return "\n".join(["No transcripts yet.", *skipped_note(skipped or {})])
    periods = work_periods(frame)
    lines = [
        f"**{len(frame)} files**, {frame['audio_s'].sum() / 3600:.3f} audio hours: "
        f"**{aggregate_x_realtime(frame)}x realtime while busy** (audio over the {busy_s(frame):.1f} s "
        "in which at least one worker was transcribing).",
        "",
        f"Whole span, idle time included: {span_x_realtime(frame)}x over {_span_s(frame):.1f} s, in "
        f"{len(periods)} work period(s) (an idle gap over {IDLE_GAP_S / 60:.0f} min starts a new one).",
        "",
        "| device | files | audio s | busy s | x realtime while busy | utilisation | workers used | peak concurrent | limit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summarize_devices(frame, periods):
        limit = limits.get(s.device, "")
        lines.append(
            f"| {s.device} | {s.files} | {s.audio_s} | {s.busy_s} | {s.x_realtime} | {s.utilisation:.0%} | "
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
    lines += ["", *language_table(frame)]
    shown = periods[-PERIODS_SHOWN:]
    lines += ["", f"Work periods{f' (the latest {len(shown)} of {len(periods)})' if len(shown) < len(periods) else ''}:",
              "", "| started (UTC) | span s | files | audio s | busy s | x realtime while busy |", "|---|---|---|---|---|---|"]
    for p in shown:
        lines.append(f"| {p.started_at:%Y-%m-%d %H:%M:%S} | {p.span_s} | {p.files} | {p.audio_s} | {p.busy_s} | {p.x_realtime} |")
    return "\n".join(lines + skipped_note(skipped or {}))


def timeline_png(frame: pd.DataFrame) -> bytes:
    """The latest work period, one lane per device worker and one bar per file; below it, x
    realtime while busy per work period, so a day or a year of transcripts stays readable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    periods = work_periods(frame)
    latest = frame[frame["started_at"] >= periods[-1].started_at] if periods else frame
    lanes = sorted({(d, w) for d, w in zip(latest["device"], latest["worker"])})
    origin = latest["started_at"].min() if not latest.empty else pd.Timestamp.now()
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(9, 2 + 0.4 * max(1, len(lanes))), height_ratios=[max(1, len(lanes)), 2]
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for lane, (device, worker) in enumerate(lanes):
        rows = latest[(latest["device"] == device) & (latest["worker"] == worker)]
        starts = (rows["started_at"] - origin).dt.total_seconds()
        widths = (rows["finished_at"] - rows["started_at"]).dt.total_seconds()
        top.broken_barh(list(zip(starts, widths)), (lane - 0.4, 0.8), color=colors[lane % len(colors)])
    top.set_yticks(range(len(lanes)), [f"{d} w{w}" for d, w in lanes])
    top.set_xlabel("seconds since the latest work period began" + (f" ({origin:%Y-%m-%d %H:%M} UTC)" if periods else ""))
    top.set_title("Transcriptions per device worker, latest work period")
    shown = periods[-50:]
    bottom.bar(range(len(shown)), [p.x_realtime for p in shown])
    bottom.set_xticks(range(len(shown)), [f"{p.started_at:%m-%d %H:%M}" for p in shown],
                      rotation=45 if len(shown) > 6 else 0, fontsize=7)
    bottom.set_ylabel("x realtime while busy")
    bottom.set_title(f"Per work period (the latest {len(shown)})", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


def png_markdown(png: bytes) -> str:
    return f"![timeline](data:image/png;base64,{base64.b64encode(png).decode()})"
