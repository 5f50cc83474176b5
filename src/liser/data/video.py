"""Video files in: the audio track, stream facts, and upright RGB frames (PyAV).

Clock: every time here is in seconds on the container's presentation clock,
counted from the container's start time. `read_audio_track` pads the front
of the audio with zeros when the audio stream starts after the container
start, so audio sample `int(t * sr)` and the video frame stamped `t` are the
same instant (the usual case, both streams starting at 0, needs no padding).

Frames carry their real presentation timestamps: variable-frame-rate video
(phones, screen captures, dropped frames) is handled by the timestamps, never
by counting frames. Rotation metadata (the display matrix, or the legacy
'rotate' tag) is applied so frames come out upright.

PyAV is imported inside the functions so that importing liser stays fast.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from liser.core.errors import LiserError

VFR_PROBE_FRAMES = 48  # frames whose pts deltas are checked for a variable frame rate


@dataclass(frozen=True)
class VideoInfo:
    """What a video file says about itself (`video_info`)."""

    path: str
    fps: float  # average frame rate (frames / s)
    n_frames: int  # from the container when it says, else duration * fps (an estimate)
    duration: float  # seconds (video stream, else container)
    width: int  # of the frames iter_frames yields (upright, after rotation)
    height: int
    rotation: int  # clockwise degrees applied to show the frame upright: 0, 90, 180 or 270
    variable_frame_rate: bool  # pts deltas of the first frames differ, or avg != r_frame_rate
    has_audio: bool


def _open(path: Path):
    """Open a container, turning PyAV's errors into a LiserError naming the file."""
    import av

    if not path.is_file():
        raise LiserError(f"{path}: no such file")
    try:
        return av.open(str(path))
    except Exception as e:
        raise LiserError(f"{path}: unreadable media file ({_why(e)})") from None


def _why(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def _start_s(container) -> float:
    """Container start time in seconds (0 when unknown)."""
    st = container.start_time
    return float(st) / 1_000_000 if st is not None else 0.0


def _to_float(arr: np.ndarray) -> np.ndarray:
    """Integer or float PCM to float32 in [-1, 1] (liser.core.util.pcm_to_float32: uint8 centred on 128)."""
    from liser.core.util import pcm_to_float32

    return pcm_to_float32(arr)


def read_audio_track(path: str | Path) -> tuple[np.ndarray, int]:
    """The audio of a media file as float32 [samples, channels] and its rate: the track with speech.

    Native rate and channel count (`load_audio` down-mixes and resamples).
    Only audio streams are demuxed, so video packets are not decoded.
    Sample 0 is the container's start time (see the module docstring).
    With several audio tracks (a screen recorder's desktop sound, then its
    microphone) each is decoded and the one with the most speech-band
    energy (liser.data.audio.speech_band_power, the measure that picks a channel
    of 3+) is returned; a warning says which. A packet that does not decode
    (the ID3 tag of a second MP3 joined with `cat`, a damaged frame) is
    skipped, and a warning counts them; a track where most packets fail is
    undecodable. Raises LiserError naming the file when there is no audio
    stream or none can be decoded.
    """
    path = Path(path)
    container = _open(path)
    try:
        if not container.streams.audio:
            raise LiserError(f"{path}: no audio track")
        tracks = _decode_tracks(container, path)
        origin = _start_s(container)
    finally:
        container.close()
    track = _pick_track(tracks, path)
    return track.samples(origin), track.rate


@dataclass
class _Track:
    """One audio stream's decoded frames and what went wrong while decoding it."""

    number: int  # 1-based, in the container's order
    codec: str
    rate: int
    channels: int
    chunks: list = None  # float32 [samples, channels] arrays
    first_time: float | None = None  # presentation time of the first decoded frame
    packets: int = 0  # packets holding data
    bad: int = 0  # of those, how many did not decode
    bad_at: float | None = None  # time (s) of the first one
    why: str = ""  # the first decoding error

    def add(self, frame, path: Path) -> None:
        """Append a decoded frame (LiserError if the rate or channel count changes mid-stream)."""
        n_ch = len(frame.layout.channels)
        arr = frame.to_ndarray()
        if not frame.format.is_planar:  # packed: [1, samples * channels]
            arr = arr.reshape(-1, n_ch).T
        if not self.chunks:
            self.chunks, self.rate, self.channels, self.first_time = [], int(frame.sample_rate), n_ch, frame.time
        elif frame.sample_rate != self.rate or n_ch != self.channels:
            raise LiserError(f"{path}: audio format changes mid-stream "
                             f"({self.rate} Hz x{self.channels} -> {frame.sample_rate} Hz x{n_ch})")
        self.chunks.append(_to_float(arr).T)

    @property
    def decodable(self) -> bool:
        """Some samples, and more packets decoded than failed."""
        return bool(self.chunks) and self.bad <= self.packets - self.bad

    def samples(self, origin: float) -> np.ndarray:
        """[samples, channels] float32, zero-padded in front when the track starts after the container."""
        if not self.chunks:
            return np.zeros((0, self.channels), dtype=np.float32)
        audio = np.concatenate(self.chunks, axis=0)
        pad = int(round((float(self.first_time or 0.0) - origin) * self.rate))
        if pad > 0:  # audio starts after the container start: keep both streams on one clock
            audio = np.concatenate([np.zeros((pad, self.channels), np.float32), audio], axis=0)
        return np.ascontiguousarray(audio, dtype=np.float32)


def _decode_tracks(container, path: Path) -> list[_Track]:
    """Decode every audio stream in one pass over the file; undecodable packets are counted, not fatal."""
    streams = list(container.streams.audio)
    tracks = {s.index: _Track(i + 1, s.codec_context.name, int(s.codec_context.sample_rate or s.rate or 16_000),
                              int(s.codec_context.channels or 1)) for i, s in enumerate(streams)}
    try:
        for packet in container.demux(*streams):
            _decode_packet(packet, tracks[packet.stream.index], path)
    except LiserError:
        raise
    except Exception as e:  # the demuxer gave up (a truncated or damaged file): keep what was decoded
        if not any(t.chunks for t in tracks.values()):
            raise LiserError(f"{path}: undecodable audio track ({_why(e)})") from None
        warnings.warn(f"{path}: audio decoding stopped early ({_why(e)}); keeping what was decoded")
    return list(tracks.values())


def _decode_packet(packet, track: _Track, path: Path) -> None:
    """Decode one packet into its track; a packet that fails is counted and skipped."""
    if packet.size:
        track.packets += 1
    try:
        frames = packet.decode()
    except Exception as e:
        track.bad += 1
        if track.bad == 1:
            track.why = _why(e)
            track.bad_at = float(packet.pts * packet.time_base) if packet.pts is not None and packet.time_base else None
        return
    for frame in frames:
        track.add(frame, path)


def _pick_track(tracks: list[_Track], path: Path) -> _Track:
    """The track to use: the only one, else the decodable one with the most speech-band power (said in a warning)."""
    usable = [t for t in tracks if t.decodable]
    if not usable:
        t = max(tracks, key=lambda t: t.packets)
        if t.bad:
            raise LiserError(f"{path}: undecodable audio track ({t.bad} of {t.packets} {t.codec} packets "
                             f"do not decode: {t.why})")
        return t  # no packets at all: 0 samples, which the caller names
    if len(tracks) == 1:
        best = usable[0]
    else:
        power = {t.number: _speech_power(t) for t in usable}
        best = max(usable, key=lambda t: power[t.number])
        warnings.warn(f"{path}: {len(tracks)} audio tracks; using track {best.number}, {_track_note(tracks, power)}")
    if best.bad:
        at = f" (the first at {best.bad_at:.2f} s)" if best.bad_at is not None else ""
        warnings.warn(f"{path}: skipped {best.bad} undecodable {best.codec} packet(s) of {best.packets}{at}: "
                      f"{best.why}; read the rest")
    return best


def _speech_power(track: _Track) -> float:
    """Mean 300-3400 Hz power of a track's down-mix (liser.data.audio's channel measure)."""
    from liser.data.channels import downmix, speech_band_power

    mono = downmix(np.concatenate(track.chunks, axis=0), track.rate)
    return float(speech_band_power(mono[:, None], track.rate)[0])


def _track_note(tracks: list[_Track], power: dict[int, float]) -> str:
    """Why a track was chosen: every track's speech-band level (dB re full scale), or that it does not decode."""
    levels = [f"track {t.number}: {10 * np.log10(power[t.number] + 1e-20):.1f} dB" if t.number in power
              else f"track {t.number}: undecodable" for t in tracks]
    return "the most speech-band (300-3400 Hz) energy (" + ", ".join(levels) + ")"


def _video_stream(container, path: Path):
    if not container.streams.video:
        raise LiserError(f"{path}: no video stream (audio-only file)")
    return container.streams.video[0]


def rotation_cw(frame_rotation: int | float | None, tag: str | None = None) -> int:
    """Clockwise degrees (0/90/180/270) that show a frame upright.

    `frame_rotation` is PyAV's `VideoFrame.rotation` (the display matrix's
    counter-clockwise angle); `tag` is the legacy 'rotate' metadata value
    (already clockwise), used when there is no display matrix.
    """
    if frame_rotation:
        deg = -float(frame_rotation)
    elif tag:
        try:
            deg = float(tag)
        except ValueError:
            deg = 0.0
    else:
        deg = 0.0
    return int(round(deg / 90.0)) % 4 * 90


def rotate_upright(img: np.ndarray, rotation: int) -> np.ndarray:
    """Rotate an HxWxC image clockwise by `rotation` degrees (a multiple of 90)."""
    k = (rotation // 90) % 4
    if k == 0:
        return img
    return np.ascontiguousarray(np.rot90(img, k=-k))  # np.rot90 turns counter-clockwise for k > 0


def video_info(path: str | Path) -> VideoInfo:
    """Frame rate, size, duration, rotation and VFR flag of a video file.

    Decodes up to VFR_PROBE_FRAMES frames (for the rotation side data and the
    pts deltas); everything else comes from the container header.
    """
    path = Path(path)
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        has_audio = bool(container.streams.audio)
        avg = stream.average_rate or stream.guessed_rate or stream.base_rate
        base = stream.base_rate
        times, first_rotation = [], 0
        try:
            for i, frame in enumerate(container.decode(stream)):
                if i == 0:
                    first_rotation = frame.rotation
                if frame.pts is not None:
                    times.append(frame.pts)
                if i + 1 >= VFR_PROBE_FRAMES:
                    break
        except Exception as e:
            if not times:
                raise LiserError(f"{path}: no decodable video frames ({_why(e)})") from None
        fps = float(avg) if avg else 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        else:
            duration = 0.0
        if fps <= 0 and len(times) > 1:
            fps = (len(times) - 1) / float((times[-1] - times[0]) * stream.time_base)
        n_frames = int(stream.frames) if stream.frames else int(round(duration * fps))
        rotation = rotation_cw(first_rotation, stream.metadata.get("rotate"))
        w, h = stream.codec_context.width, stream.codec_context.height
        if rotation in (90, 270):
            w, h = h, w
        vfr = _is_vfr(times, stream.time_base, avg, base)
        return VideoInfo(str(path), fps, n_frames, duration, int(w), int(h), rotation, vfr, has_audio)
    finally:
        container.close()


def _is_vfr(pts: list[int], time_base, avg, base) -> bool:
    """Variable frame rate: uneven pts deltas (beyond one tick and 5%), or avg and r_frame_rate differ by >1%."""
    if avg and base and abs(float(avg) - float(base)) > 0.01 * float(base):
        return True
    if len(pts) < 3:
        return False
    d = np.diff(np.sort(np.asarray(pts, dtype=np.int64)))
    d = d[d > 0]
    if d.size < 2:
        return False
    med = float(np.median(d))
    tol = max(1.5, 0.05 * med)  # in time_base ticks: rounding of pts to the time base is not VFR
    return bool(np.any(np.abs(d - med) > tol))


def iter_frames(
    path: str | Path, fps: float | None = None, max_side: int | None = None, threads: int = 0
) -> Iterator[tuple[float, np.ndarray]]:
    """Yield (timestamp_s, RGB uint8 HxWx3) for every frame, upright, in presentation order.

    Timestamps are the frames' own pts (container clock, see module docstring).
    With `fps`, frames are resampled to a fixed grid t_k = k / fps (k >= 0,
    ticks from the first frame's time up to the last frame's time): each tick
    gets the frame nearest to it and is stamped with the tick time; the same
    frame array may be yielded for several ticks when upsampling.
    `max_side` shrinks frames whose longer side exceeds it (aspect kept;
    the RGB conversion of large frames is the costly part of decoding).
    `threads`: decoder threads, 0 = FFmpeg's choice (frame + slice
    threading), 1 = single-threaded.
    Raises LiserError for an audio-only file or when no frame decodes; a
    decoding error after some frames ends the iteration with a warning.
    """
    path = Path(path)
    if fps is not None and not fps > 0:
        raise LiserError(f"{path}: fps must be positive, got {fps}")
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO" if threads != 1 else "SLICE"
        stream.thread_count = max(0, int(threads))
        origin = _start_s(container)
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        frames = _decoded(container, stream, path, origin, rate, max_side)
        if fps is None:
            yield from frames
        else:
            yield from _resample(frames, float(fps))
    finally:
        container.close()


def _decoded(
    container, stream, path: Path, origin: float, rate: float, max_side: int | None
) -> Iterator[tuple[float, np.ndarray]]:
    """Decode, timestamp and rotate the frames of one stream."""
    rotation, count, last_t = None, 0, None
    decoder = container.decode(stream)
    while True:
        try:
            frame = next(decoder)
        except StopIteration:
            break
        except Exception as e:
            if count == 0:
                raise LiserError(f"{path}: no decodable video frames ({_why(e)})") from None
            warnings.warn(f"{path}: video decoding stopped after {count} frames ({_why(e)})")
            break
        if rotation is None:
            rotation = rotation_cw(frame.rotation, stream.metadata.get("rotate"))
        if frame.pts is not None:
            t = float(frame.pts * frame.time_base) - origin
        else:  # no pts: one nominal frame after the previous one
            t = 0.0 if last_t is None else last_t + 1.0 / rate
        last_t = t
        if max_side and max(frame.width, frame.height) > max_side:
            scale = max_side / max(frame.width, frame.height)
            w, h = max(1, round(frame.width * scale)), max(1, round(frame.height * scale))
            img = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()
        else:
            img = frame.to_ndarray(format="rgb24")
        count += 1
        yield t, rotate_upright(img, rotation)
    if count == 0:
        raise LiserError(f"{path}: no decodable video frames")


def _resample(frames: Iterator[tuple[float, np.ndarray]], fps: float) -> Iterator[tuple[float, np.ndarray]]:
    """Nearest frame per tick k / fps, streaming (keeps only the previous frame)."""
    prev = None  # (t, img)
    k = None
    for t, img in frames:
        if prev is None:
            k = max(0, int(np.ceil(t * fps - 1e-6)))  # first tick at or after the first frame
            prev = (t, img)
            continue
        mid = 0.5 * (prev[0] + t)
        while k / fps <= mid + 1e-9:
            yield k / fps, prev[1]
            k += 1
        prev = (t, img)
    if prev is not None:
        while k / fps <= prev[0] + 1e-6:
            yield k / fps, prev[1]
            k += 1
