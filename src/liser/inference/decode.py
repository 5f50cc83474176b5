"""Reading what `liser predict`, `liser.load` and `liser serve` are given: files, bytes, stdin, long files in blocks.

Memory: files longer than LONG_FILE_S are read in blocks, twice (the mean
first, then the log-Mel in chunks; liser.data.frontend.features_from_blocks),
so an hour of audio stays within about 300 MB; shorter files take the one-read
path. Bytes (stdin, uploads) are recognised by their content exactly as a path
would be; raw 16 kHz mono 16-bit PCM only when asked (`raw=True`), never as a guess.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from liser.data import audio
from liser.data import frontend
from liser.core.errors import LiserError

MIN_DURATION_S = 0.1  # shorter input is refused (a 3 s window would be >96 % padding)
LONG_FILE_S = 300.0  # libsndfile files longer than this are read in blocks (bounded memory), twice
READ_BLOCK_S = 30.0  # block length of that read, seconds

# ---------------------------------------------------------------- features
def prepare_waveform(waveform, sample_rate: int, name: str = "waveform") -> np.ndarray:
    """Mono float32 16 kHz signal from any array input, or LiserError naming `name`.

    Sample types: float arrays are taken as they are (full scale = 1.0);
    integer PCM is scaled to [-1, 1): int8/int16/int32/int64 by their full
    scale (int16 / 32768: what `scipy.io.wavfile.read` returns), uint8
    centred on 128 ((x - 128) / 128: 8-bit WAV). A Python list is read as
    float values. Any other dtype (bool, object, strings, complex,
    uint16/32/64) raises TypeError (liser.data.audio.pcm_to_float32).
    A 2-D array is [samples, channels] (soundfile's layout) or [channels,
    samples]: the shorter axis is taken as channels, down-mixed by
    liser.data.audio.downmix (mean of 1-2 channels, the loudest speech-band
    channel of 3 or more). Empty, NaN/inf, beyond 1000 x full scale
    (liser.data.audio.MAX_AMPLITUDE), shorter than 0.1 s and silent (RMS after
    removing the mean below -100 dBFS: all zeros or constant) input is
    refused with LiserError.
    """
    if isinstance(waveform, (list, tuple)):
        try:
            waveform = np.asarray(waveform, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{name}: a list that is not numbers cannot be a waveform") from None
    x = audio.pcm_to_float32(np.asarray(waveform))  # TypeError for non-audio dtypes
    if isinstance(sample_rate, (float, np.floating)) and float(sample_rate).is_integer():
        sample_rate = int(sample_rate)
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise LiserError(f"{name}: sample rate must be a positive integer, got {sample_rate!r}")
    audio.check_rate(int(sample_rate), name)
    if x.ndim == 2:
        x = audio.downmix(x if x.shape[1] <= x.shape[0] else x.T, int(sample_rate))
    elif x.ndim != 1:
        raise LiserError(f"{name}: waveform must be 1-D or [samples, channels], got shape {x.shape}")
    audio.check_waveform(x, name)
    seconds = x.size / sample_rate
    if seconds < MIN_DURATION_S:
        raise LiserError(f"{name}: too short ({seconds:.3f} s; at least {MIN_DURATION_S} s is needed)")
    audio.check_not_silent(x, name)
    return audio.resample(np.ascontiguousarray(x), int(sample_rate), audio.SAMPLE_RATE)


def features(signal: np.ndarray) -> np.ndarray:
    """[frames, 64] float32 log-Mel of a 16 kHz signal: liser.data.frontend.features_numpy (float16 values, as cached)."""
    return frontend.features_numpy(signal).astype(np.float32)


def windows(frames: np.ndarray, stride_s: float = audio.EVAL_STRIDE_S) -> tuple[np.ndarray, np.ndarray]:
    """3 s windows [W, 64, 94] (contiguous float32) of [frames, 64] features every `stride_s`, and their start frames."""
    idx, starts = frontend.window_index(len(frames), stride_s)
    return np.ascontiguousarray(frames[idx].transpose(0, 2, 1), dtype=np.float32), starts



def read_input(path: str | Path) -> np.ndarray:
    """A file as a checked mono 16 kHz signal (LiserError naming the file otherwise)."""
    path = Path(path)
    if path.is_dir():
        raise LiserError(f"{path}: is a directory")
    sig = audio.load_audio(path)
    return prepare_waveform(sig, audio.SAMPLE_RATE, str(path))


def file_frames(path: str | Path) -> tuple[np.ndarray, float]:
    """[frames, 64] features of a file and its duration in seconds, in bounded memory.

    A libsndfile file of 1-2 channels longer than LONG_FILE_S is read in
    READ_BLOCK_S blocks, twice: once for its mean, length and checks, then
    for the log-Mel in chunks (liser.data.frontend.features_from_blocks). The
    whole signal is never held: an hour at 16 kHz would be 230 MB, and its
    whole-file STFT 0.9 GB. Other files are read whole (`read_input`).
    Both give the same features up to float rounding; the block path keeps
    them float16, as computed and cached (an hour: 14 MB, not 29 MB), the
    other float32.
    """
    path = Path(path)
    got = _read_short(path)
    if got is not None:  # liser.data.audio.load_audio's steps, then read_input's checks
        x, sr = got
        audio.check_rate(sr, str(path))
        x = audio.downmix(x, sr)
        audio.check_waveform(x, str(path))
        sig = prepare_waveform(audio.resample(x, sr, audio.SAMPLE_RATE), audio.SAMPLE_RATE, str(path))
        return features(sig), len(sig) / audio.SAMPLE_RATE
    info = _long_file_info(path)
    if info is None:
        sig = read_input(path)
        return features(sig), len(sig) / audio.SAMPLE_RATE
    name = str(path)
    n, total, sumsq = 0, 0.0, 0.0
    for block in _read_blocks(path, info):
        audio.check_samples(block, name)
        n += len(block)
        total += float(block.sum(dtype=np.float64))
        sumsq += float(np.square(block, dtype=np.float64).sum())
    mean = total / max(n, 1)
    rms = float(np.sqrt(max(sumsq / max(n, 1) - mean * mean, 0.0)))
    if rms < audio.SILENCE_RMS:
        raise LiserError(f"{name}: silent (RMS {rms:.1e} after removing the mean; all zeros, constant, or below -100 dBFS)")
    frames = frontend.features_from_blocks(_read_blocks(path, info), mean, n)
    return frames, n / audio.SAMPLE_RATE


def _read_short(path: Path) -> tuple[np.ndarray, int] | None:
    """Samples ([n] mono, else [n, channels] float32) and rate of a libsndfile file that is read whole, in one open.

    None for a 1-2 channel file longer than LONG_FILE_S (read in blocks)
    and for whatever soundfile cannot read (video containers; missing,
    empty or broken files): liser.data.audio.read_file then reads it or says why.
    Why not read_file's own path: its length probe (soundfile.info) opened
    every file twice, 0.5 ms of a 3.7 s file's 14 ms (bench_latency.py's
    file_phases), and its always-2-D read paid a mean over one channel.
    """
    import soundfile as sf

    if not path.is_file() or path.stat().st_size == 0 or audio.reader_for(path) != "soundfile":
        return None
    try:
        with sf.SoundFile(str(path)) as f:
            if f.channels <= 2 and f.frames and f.frames / f.samplerate > LONG_FILE_S:
                return None
            return f.read(dtype="float32", always_2d=f.channels > 1), int(f.samplerate)
    except Exception:  # libsndfile's errors have several types; read_file says which
        return None


def _long_file_info(path: Path):
    """soundfile's info for a 1-2 channel file longer than LONG_FILE_S, else None (read it whole)."""
    import soundfile as sf

    if not path.is_file() or path.stat().st_size == 0 or audio.reader_for(path) != "soundfile":
        return None
    try:
        info = sf.info(str(path))
    except Exception:
        return None
    if info.channels > 2 or not info.frames or info.frames / info.samplerate <= LONG_FILE_S:
        return None
    return info  # its rate is checked by the blocks' _Resampler


def _read_blocks(path: Path, info):
    """Mono 16 kHz float32 blocks of a libsndfile file (1-2 channels: their mean, as liser.data.audio.downmix)."""
    import soundfile as sf

    rs = _Resampler(int(info.samplerate), str(path))
    with sf.SoundFile(str(path)) as f:
        for block in f.blocks(blocksize=int(READ_BLOCK_S * info.samplerate), dtype="float32", always_2d=True):
            out = rs(audio.downmix(block, int(info.samplerate)), last=False)
            if len(out):
                yield out
    tail = rs(np.zeros(0, np.float32), last=True)
    if len(tail):
        yield tail


# ---------------------------------------------------------------- bytes, stdin and streams
def stdin_bytes() -> bytes:
    return sys.stdin.buffer.read()


def decode_bytes(data: bytes, name: str = "-", raw: bool = False) -> np.ndarray:
    """Mono 16 kHz signal from a byte stream (stdin).

    The bytes are written to a temporary file and read through
    liser.data.audio.read_file, the path reader (soundfile, then PyAV), so a
    stream is recognised by its content exactly as the same file given by
    its path would be: WAV, FLAC, Ogg/Opus, MP3, M4A/AAC, MP4, MKV, WebM...
    Bytes neither recognises are an error, never a guess: with `raw=True`
    (the `--raw` flag) and only then, they are headerless 16 kHz mono
    16-bit little-endian PCM.
    """
    import tempfile

    if not data:
        raise LiserError(f"{name}: empty input (0 bytes)")
    if raw:
        if len(data) % 2:
            data = data[:-1]
        x = np.frombuffer(data, dtype="<i2")
        return prepare_waveform(x, audio.SAMPLE_RATE, name)  # int16: scaled by full scale
    with tempfile.TemporaryDirectory(prefix="liser-stdin-") as d:
        tmp = Path(d) / "stdin"
        tmp.write_bytes(data)
        try:
            x, sr = audio.read_file(tmp)
        except LiserError as e:
            why = str(e).replace(f"{tmp}: ", "", 1).replace(f"'{tmp}'", "stdin").replace(str(tmp), "stdin")
            raise LiserError(f"{name}: the stream's format is not recognised ({why}); stdin takes what a file path "
                             "takes (WAV, FLAC, Ogg/Opus, MP3, M4A/AAC, MP4, ...), or headerless 16 kHz mono "
                             "16-bit PCM with --raw") from None
    return prepare_waveform(x, int(sr), name)


class Blocks:
    """Incremental mono 16 kHz blocks from stdin raw PCM / WAV, or from a file read in blocks."""

    def __init__(self, src: str, block_s: float = 0.1, raw: bool = False):
        self.src, self.block_s, self.raw = src, block_s, raw

    def __iter__(self):
        if self.src == "-":
            yield from self._stdin()
        else:
            yield from self._file(Path(self.src))

    def _stdin(self):
        f = sys.stdin.buffer
        head = f.read(4)
        if head == b"RIFF" and not self.raw:
            yield from self._wav_stream(head + f.read(8), f)
            return
        if not self.raw:  # FLAC, Ogg, M4A, ...: not block-decodable from a pipe; decode all, then feed blocks
            yield from self._split(decode_bytes(head + f.read(), "-"))
            return
        block = int(self.block_s * audio.SAMPLE_RATE) * 2
        buf = head
        while True:
            chunk = f.read(block)
            buf += chunk
            n = len(buf) // 2 * 2
            if n and (n >= block or not chunk):
                yield np.frombuffer(buf[:n], dtype="<i2").astype(np.float32) / 32768.0
                buf = buf[n:]
            if not chunk:
                return

    def _wav_stream(self, head: bytes, f):
        """A PCM/float WAV on a pipe: walk the RIFF chunks to `data`, then read it in blocks."""
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise LiserError("-: only little-endian RIFF/WAVE streams are supported")
        fmt = None
        while True:
            h = f.read(8)
            if len(h) < 8:
                raise LiserError("-: WAV stream ended before its data chunk")
            cid, size = h[:4], int.from_bytes(h[4:], "little")
            if cid == b"fmt ":
                body = f.read(size + (size & 1))
                tag, ch, sr = int.from_bytes(body[0:2], "little"), int.from_bytes(body[2:4], "little"), int.from_bytes(body[4:8], "little")
                bits = int.from_bytes(body[14:16], "little")
                if tag == 0xFFFE and len(body) >= 26:
                    tag = int.from_bytes(body[24:26], "little")
                fmt = (tag, ch, sr, bits)
            elif cid == b"data":
                break
            else:
                f.read(size + (size & 1))
        if fmt is None:
            raise LiserError("-: WAV stream without a fmt chunk")
        tag, ch, sr, bits = fmt
        dtypes = {(1, 16): "<i2", (1, 32): "<i4", (3, 32): "<f4"}
        if (tag, bits) not in dtypes:
            raise LiserError(f"-: WAV stream format {tag}/{bits}-bit not supported for --stream (use 16-bit PCM)")
        dt = np.dtype(dtypes[(tag, bits)])
        if ch > 2:  # the down-mix picks one channel over the whole signal (liser.data.audio.downmix): read it all
            data = f.read()
            data = data[: len(data) // (dt.itemsize * ch) * dt.itemsize * ch]
            x = audio.pcm_to_float32(np.frombuffer(data, dtype=dt).reshape(-1, ch))
            yield from self._split(prepare_waveform(x, sr, "-"))
            return
        frame_bytes = dt.itemsize * ch
        block = max(1, int(self.block_s * sr)) * frame_bytes
        rs = _Resampler(sr, "-")
        buf = b""
        while True:
            chunk = f.read(block)
            buf += chunk
            n = len(buf) // frame_bytes * frame_bytes
            if n:
                x = np.frombuffer(buf[:n], dtype=dt).reshape(-1, ch).mean(1).astype(np.float32)
                if dt.kind == "i":
                    x /= float(2 ** (bits - 1))
                buf = buf[n:]
                yield rs(x, last=False)
            if not chunk:
                yield rs(np.zeros(0, np.float32), last=True)
                return

    def _file(self, path: Path):
        import soundfile as sf

        if not path.is_file():
            raise LiserError(f"{path}: no such file")
        try:
            f = sf.SoundFile(str(path))
        except Exception:  # not a libsndfile format (video container, ...): decode whole, then feed in blocks
            yield from self._split(audio.load_audio(path))
            return
        if f.channels > 2:  # the down-mix picks one channel over the whole file (liser.data.audio.downmix)
            f.close()
            yield from self._split(audio.load_audio(path))
            return
        with f:
            rs = _Resampler(f.samplerate, str(path))
            for block in f.blocks(blocksize=max(1, int(self.block_s * f.samplerate)), dtype="float32", always_2d=True):
                yield rs(block.mean(1), last=False)
            yield rs(np.zeros(0, np.float32), last=True)


    def _split(self, sig: np.ndarray):
        step = max(1, int(self.block_s * audio.SAMPLE_RATE))
        for a in range(0, len(sig), step):
            yield sig[a : a + step]


class _Resampler:
    """Streaming resampler to 16 kHz (soxr's ResampleStream; per-block polyphase without soxr)."""

    def __init__(self, sr_in: int, name: str = "input"):
        audio.check_rate(sr_in, name)  # LiserError: a lying header is never resampled 16,000-fold
        self.sr_in = sr_in
        self.stream = None
        if sr_in != audio.SAMPLE_RATE:
            try:
                import soxr

                self.stream = soxr.ResampleStream(sr_in, audio.SAMPLE_RATE, 1, dtype="float32", quality="HQ")
            except ImportError:
                pass

    def __call__(self, x: np.ndarray, last: bool) -> np.ndarray:
        if self.sr_in == audio.SAMPLE_RATE:
            return np.asarray(x, np.float32)
        if self.stream is not None:
            return self.stream.resample_chunk(np.asarray(x, np.float32), last=last)
        return audio.resample(np.asarray(x, np.float32), self.sr_in, audio.SAMPLE_RATE) if len(x) else x

