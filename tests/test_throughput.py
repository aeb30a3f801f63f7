"""Throughput statistics on hand-built transcript records whose right answers are known.

The records have exactly the fields the transcript asset writes (`Transcript.to_dict()` plus
`partition_key`), with start and end times chosen so every figure can be worked out by hand.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from opentr_pipeline.outputs.throughput import (
    COLUMNS,
    DeviceSummary,
    aggregate_x_realtime,
    markdown_summary,
    peak_concurrency,
    png_markdown,
    span_x_realtime,
    summarize_devices,
    timeline_png,
    transcripts_frame,
    work_periods,
)

ORIGIN = datetime(2025, 3, 1, 9, 0, 0, tzinfo=timezone.utc)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def record(
    key: str, start_s: float, end_s: float, audio_s: float, device: str = "cpu:0", worker: int = 0, **extra
) -> dict:
    """One transcript document as stored under transcripts/<key>.json."""
    wall = end_s - start_s
    return {
        "partition_key": key,
        "device": device,
        "worker": worker,
        "duration_s": audio_s,
        "wall_s": wall,
        "x_realtime": round(audio_s / wall, 2) if wall else 0.0,
        "started_at": (ORIGIN + timedelta(seconds=start_s)).isoformat(timespec="milliseconds"),
        "finished_at": (ORIGIN + timedelta(seconds=end_s)).isoformat(timespec="milliseconds"),
        "model": "bundled-tiny.en",
        "compute_type": "int8",
        "words": 42,
        "language": "en",
        "text": "not read by the report",
        "segments": [],
        **extra,
    }


def frame_of(*intervals: tuple[float, float]) -> pd.DataFrame:
    return transcripts_frame([record(f"f{i}.wav", s, e, 10.0) for i, (s, e) in enumerate(intervals)])


# --- peak concurrency -------------------------------------------------------------------


def test_touching_intervals_do_not_overlap() -> None:
    """A worker that finishes at t and starts the next file at t ran one file at a time."""
    assert peak_concurrency(frame_of((0, 10), (10, 20), (20, 30))) == 1


def test_nested_intervals_overlap() -> None:
    assert peak_concurrency(frame_of((0, 30), (5, 10), (12, 20))) == 2


def test_three_at_once() -> None:
    assert peak_concurrency(frame_of((0, 10), (2, 12), (4, 14), (11, 20))) == 3


def test_disjoint_and_single_and_empty() -> None:
    assert peak_concurrency(frame_of((0, 1), (5, 6))) == 1
    assert peak_concurrency(frame_of((0, 1))) == 1
    assert peak_concurrency(transcripts_frame([])) == 0


def test_peak_ignores_record_order() -> None:
    assert peak_concurrency(frame_of((4, 14), (11, 20), (0, 10), (2, 12))) == 3


# --- aggregate and per-device figures ----------------------------------------------------


@pytest.fixture
def two_devices() -> pd.DataFrame:
    """cuda:0 runs two workers side by side; cpu:0 runs one file later on."""
    return transcripts_frame([
        record("a.wav", 0, 10, 300, device="cuda:0", worker=0),
        record("b.wav", 0, 8, 200, device="cuda:0", worker=1),
        record("c.wav", 10, 20, 100, device="cuda:0", worker=0),
        record("d.wav", 30, 40, 20, device="cpu:0", worker=0),
    ])


def test_frame_has_the_report_columns(two_devices: pd.DataFrame) -> None:
    assert list(two_devices.columns) == COLUMNS
    assert list(two_devices["partition_key"]) == ["a.wav", "b.wav", "c.wav", "d.wav"]  # by start time
    assert two_devices["started_at"].dt.tz is not None
    assert two_devices["audio_s"].sum() == 620


def test_aggregate_is_audio_over_the_time_any_worker_was_busy(two_devices: pd.DataFrame) -> None:
    """620 s of audio; some worker was busy 0-20 s and 30-40 s (30 s), idle 20-30 s: 20.67x while
    busy, not the sum of speeds, and not 15.5x over the 40 s span (kept, labelled as such)."""
    assert aggregate_x_realtime(two_devices) == 20.67
    assert span_x_realtime(two_devices) == 15.5
    assert two_devices["x_realtime"].sum() != pytest.approx(20.67)


def test_aggregate_of_nothing_is_zero() -> None:
    assert aggregate_x_realtime(transcripts_frame([])) == 0.0


def test_summarize_devices_per_device(two_devices: pd.DataFrame) -> None:
    summaries = {s.device: s for s in summarize_devices(two_devices)}
    # One work period, 0-40 s (the 10 s pause is shorter than IDLE_GAP_S).
    assert summaries["cuda:0"] == DeviceSummary(
        device="cuda:0", files=3, audio_s=600.0, busy_s=20.0, x_realtime=30.0, utilisation=0.5,
        workers_used=2, peak_concurrency=2,
    )
    assert summaries["cpu:0"] == DeviceSummary(
        device="cpu:0", files=1, audio_s=20.0, busy_s=10.0, x_realtime=2.0, utilisation=0.25,
        workers_used=1, peak_concurrency=1,
    )
    assert [s.device for s in summarize_devices(two_devices)] == ["cpu:0", "cuda:0"]  # sorted, stable


def test_idle_hours_do_not_drag_the_headline_down() -> None:
    """Issue 17: a burst, an hour idle, another burst. The old headline (audio over the whole span)
    read 0.2x; the devices delivered 10x whenever they worked, and the report says so."""
    docs = [record(f"a{i}.wav", i * 10, i * 10 + 10, 100) for i in range(3)]  # 0-30 s, 10x
    docs += [record(f"b{i}.wav", 3600 + i * 10, 3610 + i * 10, 100) for i in range(3)]  # an hour later
    frame = transcripts_frame(docs)
    assert aggregate_x_realtime(frame) == 10.0
    assert span_x_realtime(frame) == round(600 / 3630, 2)
    periods = work_periods(frame)
    assert [(p.files, p.busy_s, p.x_realtime) for p in periods] == [(3, 30.0, 10.0), (3, 30.0, 10.0)]
    [device] = summarize_devices(frame)
    assert device.x_realtime == 10.0 and device.utilisation == 1.0  # busy all through both periods
    text = markdown_summary(frame)
    assert "**10.0x realtime while busy**" in text and "2 work period(s)" in text
    assert "| 2025-03-01 10:00:00 | 30.0 | 3 | 300.0 | 30.0 | 10.0 |" in text


def test_markdown_summary_contains_the_figures(two_devices: pd.DataFrame) -> None:
    text = markdown_summary(two_devices, {"cuda:0": 2, "cpu:0": 1})
    assert "**4 files**" in text
    assert f"{620 / 3600:.3f} audio hours" in text
    assert "**20.67x realtime while busy**" in text and "the 30.0 s in which" in text
    assert "Whole span, idle time included: 15.5x over 40.0 s" in text
    assert "| cuda:0 | 3 | 600.0 | 20.0 | 30.0 | 50% | 2 | 2 | 2 |" in text
    assert "| cpu:0 | 1 | 20.0 | 10.0 | 2.0 | 25% | 1 | 1 | 1 |" in text
    # Per worker: cuda:0 worker 0 did 400 s of audio in 20 s busy = 20x while busy.
    assert "| cuda:0 | 0 | 2 | 400.0 | 20.0 | 20.0 |" in text
    assert "| cuda:0 | 1 | 1 | 200.0 | 8.0 | 25.0 |" in text


def test_markdown_summary_without_limits_and_without_rows(two_devices: pd.DataFrame) -> None:
    assert "| cuda:0 | 3 | 600.0 | 20.0 | 30.0 | 50% | 2 | 2 |  |" in markdown_summary(two_devices)
    assert markdown_summary(transcripts_frame([])) == "No transcripts yet."


def test_reused_transcripts_are_not_counted_twice() -> None:
    """A duplicate upload copies the first transcript and did no work: it must not inflate speed."""
    docs = [
        record("talk.wav", 0, 10, 100),
        record("talk_copy.wav", 0, 10, 100, reused_from="talk.wav"),
        record("other.wav", 10, 20, 100, reused_from=None),
    ]
    frame = transcripts_frame(docs)
    assert list(frame["partition_key"]) == ["talk.wav", "other.wav"]
    assert aggregate_x_realtime(frame) == 10.0


# --- the timeline plot ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "docs",
    [
        [record("one.wav", 0, 5, 50)],
        [
            record(f"f{i}.wav", i * 2, i * 2 + 5, 40, device=device, worker=worker)
            for i, (device, worker) in enumerate(
                [("cuda:0", 0), ("cuda:0", 1), ("cuda:0", 2), ("cuda:1", 0), ("cpu:0", 0), ("cuda:0", 0)]
            )
        ],
        [],
    ],
    ids=["one-lane", "several-lanes", "empty"],
)
def test_timeline_png_is_a_png(docs: list[dict]) -> None:
    png = timeline_png(transcripts_frame(docs))
    assert png.startswith(PNG_MAGIC)
    assert 1_000 < len(png) < 500_000  # small enough to embed in Dagster metadata
    assert png_markdown(png).startswith("![timeline](data:image/png;base64,iVBORw0KGgo")


def test_timeline_grows_a_lane_per_device_worker() -> None:
    def height(png: bytes) -> int:
        return int.from_bytes(png[20:24], "big")  # IHDR: width at 16, height at 20

    one = timeline_png(transcripts_frame([record("a.wav", 0, 5, 50)]))
    eight = timeline_png(
        transcripts_frame([record(f"f{w}.wav", 0, 5, 50, device="cuda:0", worker=w) for w in range(8)])
    )
    assert height(eight) > height(one)
