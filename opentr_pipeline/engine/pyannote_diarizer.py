"""A pyannote.audio pipeline as the diarizer: the optional extra, for those who have its weights.

`OPENTR_DIARIZATION=pyannote:<folder>` loads a pipeline from a local folder (its `config.yaml` and
the checkpoints it names, e.g. speaker-diarization-community-1 downloaded once where a network
was). `pyannote:<org>/<name>` loads it from the Hugging Face hub, only where `HF_TOKEN` is set; a
machine without one is refused at start, never left to fail on a download mid-run. Install it with
`pip install -e '.[pyannote]'`: pyannote.audio ships no weights, so the embedded CAM++ stays the
default (README, "Who said what").

pyannote decides from the audio itself, so the speakers step decodes the file again (the voice
prints the transcription keeps are for the embedded diarizer) and holds it whole in memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from opentr_pipeline.engine.media import decode_for_speech
from opentr_pipeline.engine.speakers import SpeakerHints, SpeakersFound, SpeakerTurn, merge_turns, speaker_id
from opentr_pipeline.settings import PYANNOTE

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class PyannoteSource:
    """Where the pipeline comes from: a local folder, or a hub id (with a token)."""

    where: str
    folder: bool

    @classmethod
    def of(cls, setting: str) -> "PyannoteSource":
        """From OPENTR_DIARIZATION as settings.check_pyannote accepted it."""
        where = setting[len(PYANNOTE):]
        return cls(where, Path(where).is_dir())


def hub_token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


class PyannoteDiarizer:
    """One loaded pipeline; `find` gives a file's turns and one voice embedding per speaker."""

    def __init__(self, source: PyannoteSource, device: str = "cpu"):
        # pyannote.audio 4 sends usage metrics to its makers unless told not to; recordings'
        # details stay here unless the operator turns that on.
        os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
        import torch
        from pyannote.audio import Pipeline

        pipeline = Pipeline.from_pretrained(source.where, token=None if source.folder else hub_token())
        if pipeline is None:
            raise RuntimeError(f"{source.where}: pyannote could not load the pipeline (gated, or no access)")
        self.pipeline = pipeline.to(torch.device(device))

    def find(self, samples: np.ndarray, hints: SpeakerHints) -> SpeakersFound:
        import torch

        counts = ({"num_speakers": hints.num_speakers} if hints.num_speakers
                  else {"min_speakers": hints.min_speakers, "max_speakers": hints.max_speakers})
        audio = {"waveform": torch.from_numpy(np.ascontiguousarray(samples, np.float32))[None], "sample_rate": SAMPLE_RATE}
        output = self.pipeline(audio, **counts)
        # pyannote 4: turns without overlap, made for transcripts; 3.x gives the annotation itself
        annotation = getattr(output, "exclusive_speaker_diarization", output)
        embeddings = getattr(output, "speaker_embeddings", None)
        labels = list(getattr(output, "speaker_diarization", annotation).labels())
        return found_from(annotation, labels, embeddings)


LOADED: dict[str, PyannoteDiarizer] = {}  # one pipeline per process, loaded on first use


def pyannote_speakers(setting: str, path: Path, name: str, hints: SpeakerHints) -> SpeakersFound:
    """One file's speakers by the pipeline OPENTR_DIARIZATION names, decoded again from `path`
    (on the process's GPU where it has one). A pipeline that cannot load raises here, so each
    file's speakers fail with the reason and its words stay."""
    if setting not in LOADED:
        import torch

        LOADED[setting] = PyannoteDiarizer(PyannoteSource.of(setting), "cuda" if torch.cuda.is_available() else "cpu")
    return LOADED[setting].find(decode_for_speech(path, name, SAMPLE_RATE).samples, hints)


def found_from(annotation, labels: list[str], embeddings: np.ndarray | None) -> SpeakersFound:
    """pyannote's labels renamed SPEAKER_00, 01, ... in the order first heard (as the embedded
    diarizer names them), with each one's embedding kept for the voice profiles."""
    raw = sorted((float(seg.start), float(seg.end), str(label))
                 for seg, _, label in annotation.itertracks(yield_label=True) if seg.end > seg.start)
    order: dict[str, str] = {}
    for _, _, label in raw:
        order.setdefault(label, speaker_id(len(order)))
    turns = merge_turns([SpeakerTurn(round(start, 3), round(end, 3), order[label]) for start, end, label in raw])
    voices = {}
    if embeddings is not None:
        for index, label in enumerate(labels):
            if label in order and index < len(embeddings) and np.all(np.isfinite(embeddings[index])):
                voices[order[label]] = np.asarray(embeddings[index], np.float32)
    return SpeakersFound(turns, voices)
