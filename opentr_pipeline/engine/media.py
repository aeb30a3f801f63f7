"""Probe a media file with PyAV: what it is, how long, and whether it is whole."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import av
import numpy as np


class MediaError(ValueError):
    """The file is not usable media; the message names the file and the reason."""


@dataclass(frozen=True)
class MediaInfo:
    container: str
    audio_codec: str
    video_codec: str | None
    duration_s: float
    channels: int
    sample_rate: int
    size_bytes: int
    sha256: str
    notes: tuple[str, ...] = ()  # what the file says wrongly of itself, and what was done about it

    def to_dict(self) -> dict:
        return asdict(self)


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _wav_data_chunk(handle, size: int) -> tuple[int, int, int] | None:
    """(offset of the data chunk, the size its header declares, the fmt chunk's byte rate) of a
    WAV (RIFF or big-endian RIFX), walking its chunks; None for no WAV, or no data chunk."""
    handle.seek(0)
    header = handle.read(12)
    if header[:4] not in (b"RIFF", b"RIFX") or header[8:12] != b"WAVE":
        return None
    order = "big" if header[:4] == b"RIFX" else "little"
    offset, byte_rate = 12, 0
    while offset + 8 <= size:
        handle.seek(offset)
        chunk = handle.read(8)
        chunk_size = int.from_bytes(chunk[4:8], order)
        if chunk[:4] == b"fmt ":
            byte_rate = int.from_bytes(handle.read(12)[8:12], order)
        if chunk[:4] == b"data":
            return offset, chunk_size, byte_rate
        offset += 8 + chunk_size + (chunk_size & 1)
    return None


def _wav_missing_bytes(path: Path, size: int) -> int:
    """Bytes the WAV header's data chunk promises beyond the end of the file.

    FFmpeg's WAV demuxer quietly trusts the file size, so a cut-off WAV needs this check.
    """
    with open(path, "rb") as handle:
        found = _wav_data_chunk(handle, size)
    if found is None or found[1] in (0, 0xFFFFFFFF):  # streaming writers leave the size unset
        return 0
    offset, declared, _ = found
    return max(0, offset + 8 + declared - size)


def _looks_like_chunk(head: bytes, at: int, size: int) -> bool:
    """Whether 8 bytes at `at` open a RIFF chunk (an id of four printable characters and a size
    that fits the file), such as the LIST chunk many writers put after the audio."""
    return len(head) == 8 and all(32 <= c < 127 for c in head[:4]) and \
        at + 8 + int.from_bytes(head[4:8], "little") <= size


STALE_LENGTH_MIN_S = 1.0  # data past the declared end that counts as audio, not a few stray bytes


def wav_stale_length(source) -> tuple[float, float] | None:
    """(seconds the header's data chunk declares, seconds of data the file holds) when the data
    runs on past the declared size into bytes that are no chunk: a recorder that stopped before
    fixing its header. FFmpeg believes the header and would drop the rest without a word.
    `source`: a path, or an open file (its position is kept)."""
    handle = open(source, "rb") if isinstance(source, (str, Path)) else source
    position = handle.tell()
    try:
        handle.seek(0, 2)
        size = handle.tell()
        found = _wav_data_chunk(handle, size)
        if found is None:
            return None
        offset, declared, byte_rate = found
        end = offset + 8 + declared + (declared & 1)
        if declared in (0, 0xFFFFFFFF) or end >= size or not byte_rate:
            return None
        handle.seek(end)
        if _looks_like_chunk(handle.read(8), end, size) or (size - end) / byte_rate < STALE_LENGTH_MIN_S:
            return None  # a chunk after the audio, or a few stray bytes: not audio
        return declared / byte_rate, (size - offset - 8) / byte_rate
    finally:
        handle.seek(position)
        if handle is not source:
            handle.close()


def stale_length_note(declared_s: float, real_s: float) -> str:
    return (f"the WAV header says {declared_s:.1f} s of audio, but its data runs on to {real_s:.1f} s (a recorder "
            "that stopped before fixing its header?): read to the real end")


def _ogg_is_cut(path: Path, size: int) -> bool:
    """Whether an Ogg file lacks its whole final page with the end-of-stream flag.

    Ogg declares no duration up front, so FFmpeg reports whatever a cut-off file still holds;
    the last page tells: a complete stream ends with a whole page flagged end-of-stream.
    """
    tail_start = max(0, size - 65_307 - 1)  # the largest possible Ogg page, plus one byte
    with open(path, "rb") as handle:
        handle.seek(tail_start)
        tail = handle.read()
    at = len(tail)
    while (at := tail.rfind(b"OggS", 0, at)) >= 0:
        header = tail[at : at + 27]
        if len(header) == 27 and header[4] == 0:
            lacing = tail[at + 27 : at + 27 + header[26]]
            if len(lacing) == header[26] and at + 27 + len(lacing) + sum(lacing) == len(tail):
                return not header[5] & 0x04
    return True


def check_size(name: str, size: int, max_bytes: int | None) -> None:
    """Refuse a file over the size limit before anything reads it (or downloads it)."""
    if max_bytes and size > max_bytes:
        raise MediaError(f"{name}: {size / 2**30:.2f} GiB is over the limit of "
                         f"{max_bytes / 2**30:.2f} GiB (OPENTR_MAX_FILE_BYTES)")


def _open_container(path: Path, options: dict | None = None):
    """By name where FFmpeg can take it (its format guess uses the extension); a name that is
    not valid UTF-8 cannot cross into FFmpeg, so that file is handed over as an open file."""
    try:
        str(path).encode("utf-8")
        return av.open(str(path), metadata_errors="ignore", options=options or {})
    except UnicodeEncodeError:
        return av.open(open(path, "rb"), metadata_errors="ignore", options=options or {})


def _demuxer_options(stale: tuple[float, float] | None) -> dict:
    """A WAV whose header understates its data is read to the file's end (FFmpeg's ignore_length)."""
    return {"ignore_length": "1"} if stale else {}


# First bytes of the usual containers (RIFF/WAVE and AVI, ID3-tagged MP3, FLAC, Ogg, Matroska and
# WebM, ASF/WMA, AIFF); MPEG audio frames start with an 11-bit sync. A file that starts otherwise
# is opened by FFmpeg to judge it.
MEDIA_SIGNATURES = (b"RIFF", b"ID3", b"fLaC", b"OggS", b"\x1aE\xdf\xa3", b"0&\xb2u", b"FORM", b"\xff\xfb",
                    b"\xff\xf3", b"\xff\xf2", b"\xff\xf1", b"\xff\xf9", b"#!AMR")


def has_media_signature(head: bytes) -> bool:
    """Whether a file's first 16 bytes are one of the common containers' (no FFmpeg needed)."""
    return head.startswith(MEDIA_SIGNATURES) or head[4:8] == b"ftyp"


def unreadable_reason(path: str | Path, name: str | None = None) -> str | None:
    """A quick look at a local file (its container's header, nothing demuxed, about a
    millisecond): the reason it is no media at all, in probe's words, or None when it may be."""
    name = name or str(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
        if has_media_signature(head):
            return None  # the common containers, by their first bytes: no FFmpeg needed
        container = _open_container(Path(path))
    except av.error.FFmpegError as error:
        return f"{name}: not a readable media file ({error.strerror or error})"
    except OSError:
        return None  # gone or unreadable now: the run says so
    with container:
        if not container.streams.audio:
            return f"{name}: no audio stream in {container.format.name} container"
    return None


def probe(path: str | Path, name: str | None = None, max_bytes: int | None = None,
          max_duration_s: float | None = None) -> MediaInfo:
    """Read the container and demux every audio packet (cheap: no decoding).

    Demuxing to the end measures the duration the data really holds, which catches files cut
    short in transfer: the header promises more than the packets deliver. Files over the size
    or duration limit are refused here, before a worker decodes hours of audio into memory.
    """
    path = Path(path)
    name = name or str(path)
    size = path.stat().st_size if path.exists() else -1
    if size < 0:
        raise MediaError(f"{name}: file not found")
    if size == 0:
        raise MediaError(f"{name}: file is empty (0 bytes)")
    check_size(name, size, max_bytes)
    stale = wav_stale_length(path)
    try:
        container = _open_container(path, _demuxer_options(stale))
    except av.error.FFmpegError as error:
        raise MediaError(f"{name}: not a readable media file ({error.strerror or error})") from None
    with container:
        if not container.streams.audio:
            raise MediaError(f"{name}: no audio stream in {container.format.name} container")
        stream = container.streams.audio[0]
        video = container.streams.video[0].codec_context.name if container.streams.video else None
        end = 0.0
        packets = 0
        try:
            for packet in container.demux(stream):
                if packet.pts is None or packet.size == 0:
                    continue
                packets += 1
                end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
        except av.error.FFmpegError as error:
            raise MediaError(f"{name}: damaged audio data ({error.strerror or error})") from None
        start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        measured = max(0.0, end - start)
        declared = None
        if stream.duration is not None:
            declared = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            declared = container.duration / av.time_base
        if packets == 0 or measured <= 0:
            raise MediaError(f"{name}: audio stream holds no data")
        if declared and declared > 1.0 and measured < 0.9 * declared:
            raise MediaError(
                f"{name}: truncated: the header says {declared:.1f} s, the data holds {measured:.1f} s"
            )
        if container.format.name == "wav" and (missing := _wav_missing_bytes(path, size)):
            raise MediaError(f"{name}: truncated: the WAV header promises {missing} more bytes")
        if container.format.name == "ogg" and _ogg_is_cut(path, size):
            raise MediaError(f"{name}: truncated: the Ogg stream stops before its last page")
        if max_duration_s and measured > max_duration_s:
            raise MediaError(f"{name}: {measured / 3600:.2f} h of audio is over the limit of "
                             f"{max_duration_s / 3600:.2f} h (OPENTR_MAX_DURATION_S)")
        codec = stream.codec_context
        return MediaInfo(
            container=container.format.name,
            audio_codec=codec.name,
            video_codec=video,
            duration_s=round(measured, 3),
            channels=codec.channels,
            sample_rate=codec.sample_rate,
            size_bytes=size,
            sha256=sha256_of(path),
            notes=(stale_length_note(*stale),) if stale else (),
        )


@dataclass
class Decoded:
    samples: np.ndarray  # mono float32 at the rate asked for
    notes: list[str] = field(default_factory=list)  # what was chosen, when there was a choice


def mix_down(frames: list[np.ndarray], size: int | None = None) -> tuple[np.ndarray, bool, list[np.ndarray]]:
    """The first `size` samples (all with None) of decoded frames (each channels x samples) as one
    channel, polarity aligned first: a channel that runs against the loudest one (a
    phase-inverted pair, a miswired microphone) is flipped before the mean, where a plain mean
    would cancel the speech. Channels that differ (two speakers, hard left and right) are kept,
    each at half strength. Frame by frame, so memory holds the frames and the mix, no more.
    Returns the mix, whether a channel was flipped, and the frames beyond `size`."""
    total = sum(frame.shape[1] for frame in frames)
    size = total if size is None else min(size, total)
    taken, rest, held = [], [], 0
    for frame in frames:
        if held >= size:
            rest.append(frame)
        elif held + frame.shape[1] > size:
            taken.append(frame[:, :size - held])
            rest.append(frame[:, size - held:].copy())
        else:
            taken.append(frame)
        held += frame.shape[1]
    if not taken:
        return np.zeros(0, np.float32), False, rest
    channels = taken[0].shape[0]
    signs = np.ones(channels, np.float32)
    if channels > 1:
        energy = np.array([sum(float(np.dot(f[c], f[c])) for f in taken) for c in range(channels)])
        loudest = int(np.argmax(energy))
        agreement = [sum(float(np.dot(f[c], f[loudest])) for f in taken) for c in range(channels)]
        signs = np.array([-1.0 if value < 0 else 1.0 for value in agreement], np.float32) / channels
    mix, at = np.empty(size, np.float32), 0
    for frame in taken:
        mix[at:at + frame.shape[1]] = signs @ frame if channels > 1 else frame[0]
        at += frame.shape[1]
    return mix, bool((signs < 0).any()), rest


def sound_samples(frame: np.ndarray, silenced: list[int]) -> np.ndarray:
    """A decoded frame (channels x samples) fit for the model: damaged float data can decode to
    NaN, infinities or values of 1e38 (found by the fuzzer), which would reach Whisper's mel
    spectrogram; those become silence (counted in `silenced[0]`) and the rest is kept in [-1, 1]."""
    finite = np.isfinite(frame)
    if not finite.all():
        silenced[0] += int(frame.size - np.count_nonzero(finite))
        frame = np.where(finite, frame, np.float32(0))
    if frame.size and float(np.abs(frame).max()) > 1.0:
        frame = np.clip(frame, -1.0, 1.0)
    return frame


def _rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.dot(samples, samples) / samples.size)) if samples.size else 0.0


def decode_windows(source, name: str, rate: int = 16000, window_samples: int | None = None) -> Iterator[Decoded]:
    """The audio as mono float32 at `rate`, in windows of `window_samples` (the last shorter;
    None: the whole file as one), decoded as they are taken, so memory holds one window
    whatever the duration.

    Every audio stream is decoded with its channels, each mixed down (mix_down), and the stream
    that carries the most sound is kept (a video whose first audio track is silent and second
    holds the talk), judged over the first window; after that only the chosen stream is decoded.
    Damaged packets are skipped, as faster-whisper's decoder does. Notes (the stream chosen, a
    channel flipped) come with the window where they first apply.
    """
    stale = wav_stale_length(source)
    try:
        container = av.open(source, metadata_errors="ignore", options=_demuxer_options(stale))
    except av.error.FFmpegError as error:
        raise MediaError(f"{name}: could not decode audio ({error.strerror or error})") from None
    with container:
        streams = list(container.streams.audio)
        if not streams:
            raise MediaError(f"{name}: no audio stream in {container.format.name} container")
        indexes = [s.index for s in streams]  # read now: a stream is not to be touched once closed
        pending: dict[int, list[np.ndarray]] = {index: [] for index in indexes}
        held = dict.fromkeys(indexes, 0)  # samples pending per stream
        # Packed float, not planar: PyAV's planar to_ndarray segfaults on 8 channels and more
        # (multitrack recorders, broadcast chains); packed reads 1 to 64 channels alike.
        resamplers = {index: av.AudioResampler(format="flt", rate=rate) for index in indexes}
        chosen: int | None = None
        said_flipped = False
        said_stale = stale is None
        silenced = [0, 0]  # samples that were not finite: found, and said in a note

        def window(index: int, size: int | None) -> Decoded:
            """The first `size` pending samples of stream `index` (all with None), mixed down."""
            nonlocal chosen, said_flipped, said_stale
            notes = [] if said_stale else [stale_length_note(*stale)]
            said_stale = True
            if silenced[0] > silenced[1]:
                notes.append(f"{silenced[0] - silenced[1]} sample(s) were not numbers (NaN or infinite: damaged "
                             "float data) and were silenced")
                silenced[1] = silenced[0]
            if chosen is None:
                mixes = {i: mix_down(pending[i], size) for i in indexes}
                index = chosen = max(mixes, key=lambda i: _rms(mixes[i][0]))
                if len(indexes) > 1:
                    notes.append(f"audio stream {indexes.index(chosen) + 1} of {len(indexes)} transcribed: "
                                 "it carries the most sound")
                mix, flipped, rest = mixes[chosen]
                for other in indexes:
                    if other != chosen:
                        pending[other], held[other] = [], 0
            else:
                mix, flipped, rest = mix_down(pending[index], size)
            pending[index], held[index] = rest, sum(frame.shape[1] for frame in rest)
            if flipped and not said_flipped:
                said_flipped = True
                notes.append("channels in opposite phase: aligned before the mix, which would have cancelled them")
            return Decoded(mix, notes)

        def take(index: int, frames) -> None:
            for out in frames:
                array = sound_samples(out.to_ndarray().reshape(-1, out.layout.nb_channels).T, silenced)
                pending[index].append(array)
                held[index] += array.shape[1]

        try:
            for packet in container.demux(*streams):
                index = packet.stream.index
                if chosen is not None and index != chosen:
                    continue  # demuxed, never decoded
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    continue
                for frame in frames:
                    take(index, resamplers[index].resample(frame))
                while window_samples and held[index] >= window_samples and (chosen is None or index == chosen):
                    yield window(index, window_samples)
            for index in ([chosen] if chosen is not None else indexes):
                take(index, resamplers[index].resample(None))
        except av.error.FFmpegError as error:
            raise MediaError(f"{name}: could not decode audio ({error.strerror or error})") from None
    if chosen is None or held[chosen]:
        yield window(chosen if chosen is not None else indexes[0], None)


def decode_for_speech(source, name: str, rate: int = 16000) -> Decoded:
    """The whole file as one window of decode_windows."""
    return next(decode_windows(source, name, rate))
