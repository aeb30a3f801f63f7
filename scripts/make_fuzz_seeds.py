"""Writes tests/fuzz_seeds/: a fraction of a second of the JFK fixture in each container and codec
users send, a few kB each, committed so the fuzzer needs nothing else (tests/media_fuzzer.py).

    .venv/bin/python scripts/make_fuzz_seeds.py [path/to/jfk.flac]
"""

from __future__ import annotations

import os
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "tests" / "fuzz_seeds"
# file name: (container, codec, channels, rate, seconds, options)
FORMATS = {
    "pcm16.wav": ("wav", "pcm_s16le", 1, 16000, 0.3, {}),
    "float-stereo.wav": ("wav", "pcm_f32le", 2, 8000, 0.2, {}),
    "eight-channels.wav": ("wav", "pcm_s16le", 8, 8000, 0.05, {}),
    "adpcm.wav": ("wav", "adpcm_ima_wav", 1, 8000, 0.3, {}),
    "mulaw.wav": ("wav", "pcm_mulaw", 1, 8000, 0.3, {}),
    "speech.flac": ("flac", "flac", 1, 16000, 0.3, {}),
    "speech.mp3": ("mp3", "libmp3lame", 1, 16000, 0.5, {"b": "24k"}),
    "speech.ogg": ("ogg", "libopus", 1, 16000, 0.5, {"b": "12k"}),
    "speech.m4a": ("mp4", "aac", 1, 16000, 0.5, {"b": "24k"}),
    "speech.webm": ("webm", "libopus", 2, 48000, 0.5, {"b": "12k"}),
    "speech.mkv": ("matroska", "flac", 2, 16000, 0.2, {}),
    "speech.aiff": ("aiff", "pcm_s16be", 1, 8000, 0.3, {}),
    "speech.wma": ("asf", "wmav2", 1, 16000, 0.5, {"b": "24k"}),
    "speech.amr": ("amr", "libopencore_amrnb", 1, 8000, 0.5, {"b": "12200"}),
    "speech.mov": ("mov", "alac", 1, 16000, 0.2, {}),
}


def speech(source: Path, rate: int, seconds: float) -> np.ndarray:
    with av.open(str(source)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks = [f.to_ndarray().ravel() for frame in container.decode(audio=0) for f in resampler.resample(frame)]
    audio = np.concatenate(chunks)
    start = rate  # a second in: speech, not the silence before it
    return audio[start:start + int(rate * seconds)]


def write(path: Path, source: Path, container_name: str, codec: str, channels: int, rate: int,
          seconds: float, options: dict) -> None:
    mono = speech(source, rate, seconds)
    if codec == "pcm_s16le":  # by hand: PyAV's planar frames stop at 8 channels
        import wave

        with wave.open(str(path), "wb") as out:
            out.setnchannels(channels), out.setsampwidth(2), out.setframerate(rate)
            interleaved = np.repeat(mono[:, None], channels, axis=1) * np.linspace(1.0, 0.5, channels)[None, :]
            out.writeframes((np.clip(interleaved, -1, 1) * 32767).astype("<i2").tobytes())
        return
    layout = {1: "mono", 2: "stereo"}.get(channels, f"{channels}c")
    with av.open(str(path), "w", format=container_name) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        stream.options = {k: v for k, v in options.items() if k != "b"}
        if "b" in options:
            stream.bit_rate = int(options["b"].rstrip("k")) * (1000 if options["b"].endswith("k") else 1)
        planes = np.tile(mono.astype(np.float32), (channels, 1)) * np.linspace(1.0, 0.5, channels)[:, None]
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planes.astype(np.float32)), format="fltp", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        for fmt_frame in av.AudioResampler(format=stream.codec_context.format.name, layout=layout, rate=rate,
                                           frame_size=stream.codec_context.frame_size or None).resample(frame):
            for packet in stream.encode(fmt_frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def main() -> int:
    fixtures = Path(os.environ.get("OPENTR_FIXTURES", ROOT.parent / "shared" / "fixtures" / "audio"))
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else fixtures / "jfk.flac"
    SEEDS.mkdir(parents=True, exist_ok=True)
    for name, spec in FORMATS.items():
        try:
            write(SEEDS / name, source, *spec)
            print(f"{name}: {(SEEDS / name).stat().st_size} bytes")
        except Exception as error:  # an encoder this PyAV lacks: that seed is left out, said
            print(f"{name}: not written ({type(error).__name__}: {error})")
            (SEEDS / name).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
