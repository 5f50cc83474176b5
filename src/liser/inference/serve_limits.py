"""What one client of `liser serve` may cost: the limits, the per-request work budget, and bounded decoding.

An upload is work in proportion to its DECODED audio, not its bytes: an
8 KB WAV whose header says 1 Hz is 8,000 s once resampled to 16 kHz, and a
20-minute Opus file is under a megabyte. So every upload is checked twice:

1. before decoding, against what its header declares (sample rate in
   [min_rate_hz, max_rate_hz], at most max_channels channels, at most
   max_seconds when the container says how long it is: soundfile's info,
   PyAV's stream metadata), and
2. while decoding, block by block, against what actually comes out (a
   header can lie): decoding stops as soon as max_seconds of audio have
   been decoded, each block is checked for NaN/inf and absurd amplitudes,
   and the request's CPU-time and wall-time budget (`WorkBudget`) is
   checked between blocks and between batches of model windows, as is
   whether the client is still there.

Memory: a 1-2 channel file is down-mixed and resampled to 16 kHz block by
block (liser.data.audio.downmix's mean, soxr's streaming resampler: the same
samples, in the same order, as the whole-file path), so an upload at the
limits holds at most max_seconds x 16 kHz x 4 bytes (38 MB at 600 s) of
signal, plus one decoded block. Files of 3+ channels (only with
max_channels raised above 2) keep their native samples until the end,
because liser.data.audio.downmix picks their channel from the whole file: up to
max_seconds x rate x channels x 4 bytes.

Errors are `LimitError`s carrying the HTTP status the server answers with
(413 too much, 415 an unsupported format, 422 samples that cannot be
audio), each one line naming the upload and, where a limit is the reason,
the `liser serve` option that raises it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liser.data import audio
from liser.data import formats
from liser.core.errors import LiserError

BLOCK_S = 1.0  # decoded audio per block (s of the file's own rate): the unit of the checks while decoding
MAX_AMPLITUDE = audio.MAX_AMPLITUDE  # |sample| above this is refused (liser.data.audio: one rule for predict and serve)
UPLOAD_PREFIX = "liser-upload-"  # temporary upload files: liser-upload-<pid>-<random><suffix> in the temp folder
_UPLOAD_NAME = re.compile(r"^liser-upload-(\d+)-[A-Za-z0-9_]+(\.[A-Za-z0-9]{1,6})?$")


class LimitError(LiserError):
    """A refused request: one line for the client, and the HTTP status to answer it with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Cancelled(Exception):
    """The client went away (or the server is stopping): the request's work stops; nobody is left to tell."""


@dataclass(frozen=True)
class ServeLimits:
    """What one client may make `liser serve` do; each field is a `liser serve` option (docs/serve.md).

    The defaults let a browser record for as long as it likes and upload a
    10-minute file, while one client costs at most about 100 MB and 30
    CPU-seconds per upload, and real time on one core per live stream.
    """

    max_upload_mb: float = 50.0  # request body, MB (a 16 kHz 16-bit WAV of 26 min); refused as it arrives (413)
    max_seconds: float = 600.0  # decoded audio per upload, s: declared or decoded, whichever says first (413)
    min_rate_hz: int = 8_000  # sample rates an upload or a stream may have, Hz (415 / a stream error)
    max_rate_hz: int = 192_000
    max_channels: int = 2  # channels of an upload (415); above 2 costs rate x channels x 4 bytes per second
    max_cpu_s: float = 30.0  # CPU-seconds of decoding and inference per upload (413)
    max_wall_s: float = 60.0  # wall-clock seconds per upload once received, waiting for a free worker included (413)
    max_jobs: int = 2  # uploads decoded/scored at once; the others wait their turn (counted in max_wall_s)
    max_connections: int = 64  # open connections (HTTP and WebSocket); more are answered 503 and closed at once
    max_websockets: int = 16  # live sessions at once; more are refused with 503 before the WebSocket opens
    idle_timeout_s: float = 30.0  # no request head, no upload bytes, or no stream message for this long: closed
    stream_rate: float = 1.25  # live audio is taken at most this many times real time (faster is read slower)
    stream_burst_s: float = 5.0  # ... after a head start of this many seconds of audio (a network hiccup's backlog)
    # a stream held back (read later) for longer than this in all is refused: it is being pushed, not recorded
    # (and a client waiting that long behind its own backlog would miss WebSocket pings)
    stream_max_wait_s: float = 10.0
    max_message_bytes: int = 1 << 20  # one live message (float32 samples): 1 MiB = 1.4 s at 192 kHz
    shutdown_timeout_s: float = 5.0  # Ctrl-C: requests still running after this long are cancelled
    allow_origins: tuple[str, ...] = ()  # origins besides the page's own that may POST or open /api/live; "*": any
    # Host names the server answers to (DNS rebinding: a page reaching a loopback server under its own name);
    # (): any, in make_app; `liser serve` on a loopback address: localhost, 127.0.0.1 and ::1 unless given
    allow_hosts: tuple[str, ...] = ()

    def check(self) -> None:
        """LiserError naming the option of the first value that cannot work (--max-seconds -1, ...)."""
        positive = ["max_upload_mb", "max_seconds", "max_cpu_s", "max_wall_s", "idle_timeout_s", "stream_rate",
                    "stream_max_wait_s", "shutdown_timeout_s"]
        for f in positive:
            if not getattr(self, f) > 0:
                raise LiserError(f"--{f.replace('_', '-')} {getattr(self, f)}: must be positive")
        at_least_one = ["max_channels", "max_jobs", "max_connections", "max_websockets", "max_message_bytes"]
        for f in at_least_one:
            if getattr(self, f) < 1:
                raise LiserError(f"--{f.replace('_', '-')} {getattr(self, f)}: must be at least 1")
        if self.stream_burst_s < 0:
            raise LiserError(f"--stream-burst-s {self.stream_burst_s}: must be 0 or more")
        if not 1 <= self.min_rate_hz <= self.max_rate_hz:
            raise LiserError(f"--min-rate-hz {self.min_rate_hz} / --max-rate-hz {self.max_rate_hz}: "
                             "need 1 <= min <= max")

    def replace(self, **changes) -> "ServeLimits":
        """A copy with some fields changed (None values are left as they are)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


# ---------------------------------------------------------------- the per-request budget
class WorkBudget:
    """CPU time, wall time and the client's presence for one request's work, checked between its steps.

    `begin()` is called in the worker thread that does the work (CPU time
    is that thread's: time.thread_time), `check()` between steps raises
    LimitError(413) past max_cpu_s or max_wall_s, or Cancelled once
    `cancel()` was called (the client left, the server is stopping).
    Wall time counts from construction: the wait for a free worker counts.
    """

    def __init__(self, name: str, limits: ServeLimits):
        self.name, self.limits = name, limits
        self.wall0 = time.monotonic()
        self.cpu0 = None
        self._cancelled = threading.Event()

    def begin(self) -> None:
        self.cpu0 = time.thread_time()

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cpu_s(self) -> float:
        return 0.0 if self.cpu0 is None else time.thread_time() - self.cpu0

    def check(self) -> None:
        """Raise Cancelled, or LimitError(413) when the request is over its CPU or wall time."""
        if self._cancelled.is_set():
            raise Cancelled(self.name)
        if self.cpu_s() > self.limits.max_cpu_s:
            raise LimitError(413, f"{self.name}: over the limit of {self.limits.max_cpu_s:g} CPU-seconds per upload "
                                  "(liser serve --max-cpu-s raises it)")
        if time.monotonic() - self.wall0 > self.limits.max_wall_s:
            raise LimitError(413, f"{self.name}: over the limit of {self.limits.max_wall_s:g} s per upload "
                                  "(the server is busy, or the file is long; liser serve --max-wall-s raises it)")


def guarded_model(model, budget: WorkBudget):
    """A shallow copy of an EmotionModel whose backend checks `budget` before each batch of windows.

    The copy shares the loaded network; only this request's calls are
    checked (the shared model is not changed).
    """
    import copy

    inner = model.backend

    def backend(x: np.ndarray) -> np.ndarray:
        budget.check()
        return inner(x)

    m = copy.copy(model)
    m.backend = backend
    return m


# ---------------------------------------------------------------- bounded decoding
def check_format(name: str, rate: int, channels: int, seconds: float | None, limits: ServeLimits) -> None:
    """Refuse what a header declares (or a decoder reports) outside the limits: LimitError 415 or 413."""
    if not limits.min_rate_hz <= rate <= limits.max_rate_hz:
        raise LimitError(415, f"{name}: sample rate {rate} Hz is outside {limits.min_rate_hz}-{limits.max_rate_hz} Hz "
                              "(the rates this server takes: liser serve --min-rate-hz/--max-rate-hz)")
    if not 1 <= channels <= limits.max_channels:
        raise LimitError(415, f"{name}: {channels} audio channels; this server takes 1 to {limits.max_channels} "
                              "(liser serve --max-channels raises it)")
    if seconds is not None and seconds > limits.max_seconds:
        raise _too_long(name, limits, f"its header says {seconds:.0f} s")


def _too_long(name: str, limits: ServeLimits, said: str) -> LimitError:
    return LimitError(413, f"{name}: longer than the limit of {limits.max_seconds:g} s of audio per upload ({said}; "
                           "liser serve --max-seconds raises it)")


class _Sink:
    """Decoded blocks in, one mono 16 kHz float32 signal out, within the limits.

    add(block [n, channels] float32 at `rate`) checks the block (finite,
    |x| <= MAX_AMPLITUDE), the running duration (max_seconds) and the
    budget; 1-2 channels are down-mixed and resampled as they come, more
    are kept native until `signal()`.
    """

    def __init__(self, name: str, rate: int, channels: int, limits: ServeLimits, budget: WorkBudget,
                 expected_frames: int | None = None):
        import soxr

        if rate <= 0 or channels <= 0:  # no header of a real file says this: the bytes are not what they seemed
            raise LiserError(f"{name}: unreadable audio (its decoder reports {rate} Hz x {channels} channels)")
        check_format(name, rate, channels, None, limits)
        self.name, self.rate, self.channels, self.limits, self.budget = name, rate, channels, limits, budget
        self.max_frames = int(limits.max_seconds * rate)
        self.frames = 0
        self.native = []  # 3+ channels: [n, channels] blocks at `rate`
        self.out = []  # 1-2 channels: mono 16 kHz blocks (past `buf`)
        # a declared length (within the limit) is written into one array made up front: the signal is held
        # once, not as blocks and then again as their concatenation
        n16 = int(min(expected_frames or 0, self.max_frames) * audio.SAMPLE_RATE / rate) + 64 if channels <= 2 else 0
        self.buf, self.n_buf = np.empty(n16 if expected_frames else 0, np.float32), 0
        self.resampler = None if rate == audio.SAMPLE_RATE or channels > 2 else soxr.ResampleStream(
            rate, audio.SAMPLE_RATE, 1, dtype="float32", quality="HQ")  # liser.data.audio.resample's quality

    def add(self, block: np.ndarray) -> None:
        """Take one decoded block [n, channels] (LimitError when a limit is passed, Cancelled when the client left)."""
        self.budget.check()
        if block.ndim != 2 or block.shape[1] != self.channels:
            raise LimitError(415, f"{self.name}: the channel count changes mid-stream ({self.channels} -> "
                                  f"{block.shape[-1]})")
        self.frames += len(block)
        if self.frames > self.max_frames:
            raise _too_long(self.name, self.limits, f"stopped decoding at {self.limits.max_seconds:g} s")
        if not len(block):
            return
        if not np.isfinite(block).all():
            raise LimitError(422, f"{self.name}: audio holds NaN or inf samples")
        peak = float(np.abs(block).max())
        if peak > MAX_AMPLITUDE:
            raise LimitError(422, f"{self.name}: samples reach {peak:.1e}, over {MAX_AMPLITUDE:g} x full scale: not "
                                  "audio at any gain (float samples are expected in [-1, 1])")
        if self.channels > 2:
            self.native.append(np.array(block, np.float32))
            return
        mono = audio.downmix(block, self.rate)
        self._put(mono if self.resampler is None else self.resampler.resample_chunk(mono, last=False))

    def _put(self, x: np.ndarray) -> None:
        if not self.out and self.n_buf + len(x) <= len(self.buf):
            self.buf[self.n_buf : self.n_buf + len(x)] = x
            self.n_buf += len(x)
        else:
            self.out.append(np.array(x, np.float32))

    def pad(self, seconds: float) -> None:
        """Zeros in front of the audio (a track that starts after its container), counted like decoded audio."""
        n = int(round(seconds * self.rate))
        if n > 0:
            if n + self.frames > self.max_frames:
                raise _too_long(self.name, self.limits, f"its audio starts {seconds:.0f} s in")
            self.add(np.zeros((n, self.channels), np.float32))

    def signal(self) -> np.ndarray:
        """The whole mono 16 kHz signal (LiserError 400 when nothing was decoded)."""
        if self.channels > 2:
            x = np.concatenate(self.native) if self.native else np.zeros((0, self.channels), np.float32)
            self.native = []
            return audio.resample(audio.downmix(x, self.rate), self.rate, audio.SAMPLE_RATE) if len(x) else x[:, 0]
        if self.resampler is not None and self.frames:
            self._put(self.resampler.resample_chunk(np.zeros(0, np.float32), last=True))
        head = self.buf[: self.n_buf]
        x = np.concatenate([head] + self.out) if self.out else head
        self.out, self.buf = [], np.zeros(0, np.float32)
        return x


def decode_upload(path: Path, name: str, limits: ServeLimits, budget: WorkBudget) -> np.ndarray:
    """A received upload as mono 16 kHz float32, decoded within `limits` (see the module docstring).

    The reader is the one liser.data.audio.read_file picks (liser.data.audio.reader_for:
    libsndfile, else PyAV, each falling back to the other as there). Raises
    LimitError (413/415/422) past a limit, LiserError (400) naming `name`
    for bytes that are no audio, or decode to none, and Cancelled when the
    client left.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise LiserError(f"{name}: empty upload (0 bytes)")
    kind = formats.sniff(path)
    reader = audio.reader_for(path, kind)
    if reader == "wav-joined":
        readers = [_wav_parts]
    elif reader == "soundfile":
        readers = [_by_soundfile, _by_pyav]
    else:  # MP3, an unfinalised WAV, PyAV's containers: libsndfile only as the fallback for its own formats
        readers = [_by_pyav] + ([_by_soundfile] if kind in audio.LIBSNDFILE_KINDS else [])
    first = None
    for read in readers:
        try:
            x = read(path, name, limits, budget)
        except LimitError as e:
            if kind is None and e.status == 415:  # bytes of no known format that a decoder guessed at: noise
                raise LiserError(f"{name}: unreadable audio (not a recognised audio or video format; read as one, "
                                 f"{str(e).removeprefix(name + ': ').split(' (')[0]})") from None
            raise
        except Cancelled:
            raise
        except Exception as e:  # this reader cannot read it: the next one may
            first = first or e
            continue
        if len(x):
            return x
        first = first or LiserError(f"{name}: unreadable audio (no samples could be decoded)")
    if kind is None:
        with open(path, "rb") as f:
            head = f.read(8).hex(" ")
        raise LiserError(f"{name}: unreadable audio (not a recognised audio or video format; its first bytes are "
                         f"{head})")
    if isinstance(first, LiserError):
        raise LiserError(str(first).replace(str(path), name)) from None
    raise LiserError(f"{name}: unreadable audio ({_first_line(first)})") from None


def _by_soundfile(path: Path, name: str, limits: ServeLimits, budget: WorkBudget) -> np.ndarray:
    """libsndfile: the header checked (rate, channels, frames), then read BLOCK_S at a time."""
    import soundfile as sf

    with sf.SoundFile(os.fsencode(path)) as f:
        return _read_sf(f, name, limits, budget)


def _read_sf(f, name: str, limits: ServeLimits, budget: WorkBudget) -> np.ndarray:
    rate, channels = int(f.samplerate), int(f.channels)
    declared = f.frames / rate if rate > 0 and 0 < f.frames < (1 << 62) else None
    if rate <= 0 or channels <= 0:  # before the limits: these are not a real file's numbers
        raise LiserError(f"{name}: unreadable audio (its header says {rate} Hz x {channels} channels)")
    check_format(name, rate, channels, declared, limits)
    sink = _Sink(name, rate, channels, limits, budget, f.frames if declared else None)
    block = max(1, int(BLOCK_S * rate))
    while True:
        x = f.read(block, dtype="float32", always_2d=True)
        if not len(x):
            break
        sink.add(x)
    return sink.signal()


def _wav_parts(path: Path, name: str, limits: ServeLimits, budget: WorkBudget) -> np.ndarray:
    """WAV files joined end to end (liser.data.audio's 'wav-joined'): the parts in order, one format, within the limits."""
    import io

    import soundfile as sf

    data = path.read_bytes()  # at most max_upload_mb
    out, shape = [], None
    for a, b in formats.wav_layout(path).forms:
        with sf.SoundFile(io.BytesIO(data[a:b])) as f:
            if shape not in (None, (f.samplerate, f.channels)):
                raise LiserError(f"{name}: WAV files joined end to end, in different formats; split them")
            shape = (f.samplerate, f.channels)
            left = limits.max_seconds - sum(map(len, out)) / audio.SAMPLE_RATE  # the parts share the limit
            if left <= 0:
                raise _too_long(name, limits, f"stopped decoding at {limits.max_seconds:g} s")
            out.append(_read_sf(f, name, limits.replace(max_seconds=left), budget))
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _by_pyav(path: Path, name: str, limits: ServeLimits, budget: WorkBudget) -> np.ndarray:
    """PyAV: every audio stream's header checked, then decoded packet by packet; the track with most speech.

    As liser.data.video.read_audio_track: only audio streams are demuxed, a
    packet that does not decode is skipped (most failing: undecodable), a
    track that starts after the container is padded with zeros in front;
    with several tracks, the one with the most speech-band power is taken.
    The tracks share max_seconds.
    """
    import av

    try:
        container = av.open(str(path))
    except Exception as e:
        raise LiserError(f"{name}: unreadable media file ({_first_line(e)})") from None
    try:
        streams = list(container.streams.audio)
        if not streams:
            raise LiserError(f"{name}: no audio track")
        whole = float(container.duration) / 1e6 if container.duration and container.duration > 0 else None
        for s in streams:
            cc = s.codec_context
            if not cc.sample_rate or not cc.channels:
                continue  # said by the decoder at the first frame, if any (_Sink)
            seconds = float(s.duration * s.time_base) if s.duration and s.time_base else whole
            check_format(name, int(cc.sample_rate or 0), int(cc.channels or 0), seconds, limits)
        origin = float(container.start_time) / 1e6 if container.start_time is not None else 0.0
        tracks = {s.index: _PyavTrack(s, name, limits, budget, origin, len(streams)) for s in streams}
        try:
            for packet in container.demux(*streams):
                tracks[packet.stream.index].decode(packet)
        except (LiserError, Cancelled):
            raise
        except Exception:  # the demuxer gave up (a truncated file): keep what was decoded, as read_audio_track
            pass
    finally:
        container.close()
    usable = [t for t in tracks.values() if t.sink is not None and t.bad <= t.packets - t.bad]
    if not usable:
        bad = max(tracks.values(), key=lambda t: t.packets)
        if bad.bad:
            raise LiserError(f"{name}: undecodable audio track ({bad.bad} of {bad.packets} packets do not decode)")
        return np.zeros(0, np.float32)
    signals = [t.sink.signal() for t in usable]
    if len(signals) == 1:
        return signals[0]
    power = [float(audio.speech_band_power(x[:, None], audio.SAMPLE_RATE)[0]) if len(x) else -1.0 for x in signals]
    return signals[int(np.argmax(power))]


class _PyavTrack:
    """One audio stream being decoded into a _Sink (made at its first frame, from the frame's own format)."""

    def __init__(self, stream, name: str, limits: ServeLimits, budget: WorkBudget, origin: float, n_tracks: int):
        self.name, self.budget, self.origin = name, budget, origin
        # the tracks share the duration limit: n tracks of max_seconds / n
        self.limits = limits if n_tracks == 1 else limits.replace(max_seconds=limits.max_seconds / n_tracks)
        self.sink = None
        self.packets = self.bad = 0

    def decode(self, packet) -> None:
        if packet.size:
            self.packets += 1
        try:
            frames = packet.decode()
        except Exception:
            self.bad += 1
            return
        for frame in frames:
            self.add(frame)

    def add(self, frame) -> None:
        from liser.data.video import _to_float

        n_ch = len(frame.layout.channels)
        if self.sink is None:
            self.sink = _Sink(self.name, int(frame.sample_rate), n_ch, self.limits, self.budget)
            if frame.time is not None:
                self.sink.pad(float(frame.time) - self.origin)
        elif int(frame.sample_rate) != self.sink.rate:
            raise LimitError(415, f"{self.name}: the sample rate changes mid-stream ({self.sink.rate} -> "
                                  f"{frame.sample_rate} Hz)")
        arr = frame.to_ndarray()
        if not frame.format.is_planar:  # packed: [1, samples * channels]
            arr = arr.reshape(-1, n_ch).T
        self.sink.add(np.ascontiguousarray(_to_float(arr).T))


def _first_line(e: Exception) -> str:
    """The first line of an exception's text, without an '[Errno N] ' prefix and a quoted file name after ': '."""
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    line = re.sub(r"^\[Errno -?\d+\] ", "", line)
    return re.sub(r": '[^']*'$", "", line)[:200]


# ---------------------------------------------------------------- temporary upload files
def upload_file(suffix: str) -> Path:
    """A new empty temporary file for an upload: <temp folder>/liser-upload-<pid>-<random><suffix>, mode 0600."""
    fd, name = tempfile.mkstemp(prefix=f"{UPLOAD_PREFIX}{os.getpid()}-", suffix=suffix)
    os.close(fd)
    return Path(name)


def remove_stale_uploads(folder: str | Path | None = None, before: float | None = None) -> list[Path]:
    """Remove the upload files a killed `liser serve` left behind; returns those removed.

    Only files named as `upload_file` names them, last changed before
    `before` (a time.time(); default now) and whose process id is no
    longer running; nothing else in `folder` (default: the temp folder)
    is touched. A file that cannot be removed is left.
    """
    folder = Path(folder or tempfile.gettempdir())
    before = time.time() if before is None else before
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        m = _UPLOAD_NAME.match(e.name)
        try:
            if not m or not e.is_file(follow_symlinks=False) or e.stat(follow_symlinks=False).st_mtime >= before:
                continue
            if int(m.group(1)) == os.getpid() or _running(int(m.group(1))):
                continue
            os.unlink(e.path)
            removed.append(Path(e.path))
        except OSError:
            continue
    return removed


def _running(pid: int) -> bool:
    """Whether a process with this id exists (one of another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True
