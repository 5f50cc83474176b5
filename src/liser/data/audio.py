"""Audio in, log-Mel out: the method's constants and its front end.

Everything the student hears goes through `load_audio` (any libsndfile
format, or a video's audio track through PyAV; mono; 16 kHz; float32) and
`log_mel` (64 Mel bands, 128 ms window, 32 ms hop, computed with torch in
batches). A 3 s window is 94 frames. Files shorter than 3 s are zero-padded
before the transform, so a file always has at least one full window.

Windows are taken on the frame grid of the whole-file spectrogram: a random
94-frame crop in training, and 94-frame windows every 0.1 s (rounded to the
nearest frame) in evaluation. Training, evaluation, `predict` and the ONNX
export all use this same definition.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

from liser.data import formats
from liser.core.errors import LiserError
from liser.core.util import AUDIO_SUFFIXES
from liser.data.channels import downmix, speech_band_power, speech_channel  # noqa: F401  (public names of liser.data.audio)
from liser.core.util import pcm_to_float32  # noqa: F401  (liser.data.audio.pcm_to_float32 stays the public name)

# ---- the method's constants (SPEC "Student", "Protocol"; one place) ----
SAMPLE_RATE = 16_000  # Hz: every signal is resampled to this
N_MELS = 64  # Mel bands of the student's input
WIN_S = 0.128  # STFT window length, seconds
HOP_S = 0.032  # STFT hop, seconds
N_FFT = int(round(WIN_S * SAMPLE_RATE))  # 2048 samples
HOP = int(round(HOP_S * SAMPLE_RATE))  # 512 samples
CLIP_S = 3.0  # the student's input length, seconds
CLIP_SAMPLES = int(CLIP_S * SAMPLE_RATE)  # 48,000
CLIP_FRAMES = 1 + CLIP_SAMPLES // HOP  # 94 frames for 3 s
PIECE_S = 0.5  # teachers label 0.5 s pieces; targets average the pieces in a window
EVAL_STRIDE_S = 0.1  # sliding-window stride for evaluation
F_MIN, F_MAX = 0.0, SAMPLE_RATE / 2  # Mel range
LOG_FLOOR = 1e-10  # power floor before log10 (-100 dB)
PHONE_BAND_HZ = (300.0, 3400.0)  # the telephone channel's pass band (ITU-T G.712), for `input_band: phone`
MIN_SAMPLES = N_FFT  # shorter than one STFT window is refused
# |sample| above this is not audio at any gain: 1000 x full scale (+60 dBFS); a float file scaled as int16
# (32768) or x1e30 is refused rather than given a label (its log-Mel would be +90 dB or inf off the training range)
MAX_AMPLITUDE = 1000.0
# sample rates a file or array may have, Hz: below 4 kHz no speech band is left, and a header claiming 1 Hz
# would be resampled 16,000-fold (8 KB of WAV -> minutes of audio); 768 kHz is the highest PCM rate in use
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 4_000, 768_000
SILENCE_RMS = 1e-5  # a file whose RMS is below this (-100 dBFS) counts as silent

# Suffixes: the one list of what liser reads (a folder given to `predict`, `prepare unlabeled` or `prepare
# videos` is searched for these, and each file of another suffix there is named as skipped). libsndfile's are
# liser.core.util.AUDIO_SUFFIXES; these containers go to PyAV first. A file given by name is read by its content.
# (not .ts: TypeScript sources share it; a transport stream in a folder is still taken by its first bytes)
MOVIE_SUFFIXES = frozenset({".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".3gp", ".3g2",
                            ".wmv", ".asf", ".mts", ".m2ts", ".ogv", ".vob"})  # containers that may hold a picture
AUDIO_ONLY_CONTAINERS = frozenset({".m4a", ".m4b", ".aac", ".wma", ".amr", ".mka", ".ac3", ".weba", ".spx", ".wv",
                                   ".ape", ".mpc", ".tta", ".mp2"})  # PyAV-read audio (voice notes: .amr, .wma)
VIDEO_SUFFIXES = MOVIE_SUFFIXES | AUDIO_ONLY_CONTAINERS  # read through PyAV first (the name predates the split)
INPUT_SUFFIXES = frozenset(AUDIO_SUFFIXES) | VIDEO_SUFFIXES


def folder_files(root: str | Path, suffixes=INPUT_SUFFIXES, by_content: bool = True) -> tuple[list[Path], list[Path]]:
    """The files under a folder that liser reads, and those it skips, both sorted.

    Taken: a file with one of `suffixes` (or a broken symbolic link with
    one, for the caller to name), or, with `by_content`, a file whose first
    bytes are a known audio or video format (liser.data.formats.sniff: a voice
    note saved without its suffix). Skipped: every other file, for the
    caller to name (`skipped_reason`). Hidden files and folders (.DS_Store,
    ._ AppleDouble files, .git) are neither. `predict`, `prepare unlabeled`
    and `prepare videos` search folders with this.
    """
    root = Path(root)
    taken, skipped = [], []
    for p in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in p.relative_to(root).parts) or p.is_dir():
            continue
        ok = p.suffix.lower() in suffixes or (by_content and _known_content(p))
        (taken if ok else skipped).append(p)
    return taken, skipped


def _known_content(path: Path) -> bool:
    try:
        return path.is_file() and formats.sniff(path) is not None
    except OSError:
        return False


def skipped_reason(path: str | Path, what: str = "an audio or video") -> str:
    """Why `folder_files` skipped a file, in a few words."""
    suffix = Path(path).suffix.lower()
    said = f"a {suffix} file" if suffix else "no suffix"
    return f"skipped ({said}; not {what} file that liser reads)"


def load_audio(path: str | Path, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Read a file as mono float32 at `sr` Hz.

    libsndfile formats (wav, flac, ogg/opus, mp3) are read with soundfile;
    containers it cannot read (mp4, m4a, mkv, ...) go through PyAV's audio
    track. Channels are down-mixed by `downmix`. Raises LiserError naming the
    file if it is missing (or a broken symbolic link), empty (0 bytes),
    cannot be read, has no samples, a sample rate outside `check_rate`'s
    range, or NaN/inf or absurd samples (`check_samples`).
    """
    path = Path(path)
    audio, file_sr = read_file(path)
    check_rate(file_sr, str(path))
    audio = downmix(audio, file_sr)
    check_waveform(audio, str(path))
    return resample(audio, file_sr, sr)


def missing_reason(path: Path) -> str | None:
    """Why `path` is not a readable regular file ("broken symbolic link -> target", ...), or None if it is one."""
    if path.is_symlink() and not path.exists():
        import os

        return f"broken symbolic link -> {os.readlink(path)}"
    if not path.exists():
        return "no such file"
    if path.is_dir():
        return "is a directory"
    if not path.is_file():
        return "not a regular file"
    return None


def read_file(path: str | Path) -> tuple[np.ndarray, int]:
    """A file's samples as float32 [samples, channels] at its own rate, all of them (`reader_for`).

    The one reader behind `load_audio`, `prepare`'s checks and `predict` on
    stdin (whose bytes are written to a temporary file and read through
    this, so a stream is recognised exactly as a path would be). The file's
    first bytes say what it is (liser.data.formats.sniff); `reader_for` picks
    the reader that gets all of its audio: libsndfile (soundfile), else
    PyAV (liser.data.video.read_audio_track), each falling back to the other.
    Raises LiserError naming the file: missing, broken link, 0 bytes, or
    bytes that are not a recognised audio or video format (said so, also
    when a reader opened them and decoded nothing).
    """
    path = Path(path)
    why = missing_reason(path)
    if why:
        raise LiserError(f"{path}: {why}")
    if path.stat().st_size == 0:  # libsndfile's message for this is a raw errno number
        raise LiserError(f"{path}: empty file (0 bytes)")
    try:
        kind = formats.sniff(path)
    except OSError as e:
        raise LiserError(f"{path}: cannot be read ({e.strerror or e})") from None
    reader = reader_for(path, kind)
    if reader == "wav-joined":
        audio, sr = _read_wav_parts(path)
    else:
        audio, sr = _read_either(path, kind, soundfile_first=reader == "soundfile")
    if audio.shape[0] == 0 and kind is None:
        raise LiserError(_unrecognised(path))
    if reader == "wav-unfinalised":
        warnings.warn(f"{path}: WAV header never finalised (data size 0, as a recorder that stopped before "
                      f"closing the file leaves it); read the {audio.shape[0] / sr:.2f} s of samples that follow")
    return audio, sr


LIBSNDFILE_KINDS = frozenset({"wav", "ogg", "flac", "aiff", "au", "caf", "w64", "rf64", "nist", "voc"})


def reader_for(path: str | Path, kind: str | None = "?") -> str:
    """Which reader gets all of a file's audio: 'soundfile', 'pyav', 'wav-unfinalised' or 'wav-joined'.

    From liser.data.formats's measurements: MP3 (libsndfile stops at a Xing
    header's frame count), chained Ogg and joined FLAC (libsndfile stops
    after the first stream) and a WAV whose header was never finalised
    (libsndfile gives 0 samples) go to PyAV; joined WAVs are read part by
    part; a WAV with other bytes after its data chunk is read by soundfile
    with a warning that audio may continue past the declared end. Other
    known containers and PyAV's suffixes go to PyAV, the rest to soundfile.
    `kind` is `formats.sniff(path)` when the caller has it. `predict`'s own
    libsndfile path asks this too, so both read a file the same way.
    """
    path = Path(path)
    try:
        kind = formats.sniff(path) if kind == "?" else kind
        if kind == "wav":
            return _wav_reader(path)
        if kind == "ogg":
            return "pyav" if formats.ogg_chained(path) else "soundfile"
        if kind == "flac":
            return "pyav" if formats.flac_joined(path) else "soundfile"
    except OSError:
        return "soundfile"  # the reader says why the file cannot be read
    if kind == "mp3" or (kind is None and path.suffix.lower() in (".mp3", ".mp2")):
        return "pyav"
    if kind in LIBSNDFILE_KINDS:
        return "soundfile"
    return "pyav" if kind is not None or path.suffix.lower() in VIDEO_SUFFIXES else "soundfile"


def _wav_reader(path: Path) -> str:
    """'wav-unfinalised', 'wav-joined' or 'soundfile' (warning when non-chunk bytes follow the data)."""
    layout = formats.wav_layout(path)
    if layout.unfinalised:
        return "wav-unfinalised"
    if len(layout.forms) > 1:
        return "wav-joined"
    if layout.trailing:
        declared = f"the {layout.declared / layout.byte_rate:.2f} s" if layout.byte_rate else "what"
        warnings.warn(f"{path}: {layout.trailing} bytes after the WAV data chunk are not RIFF chunks: audio may "
                      f"continue past {declared} the header declares (only that is read)")
    return "soundfile"


def _read_either(path: Path, kind: str | None, soundfile_first: bool) -> tuple[np.ndarray, int]:
    """soundfile then PyAV, or PyAV then (for libsndfile's own formats only) soundfile; the first one's error."""
    from liser.data.video import read_audio_track

    if soundfile_first:
        readers = [_by_soundfile, read_audio_track]
    else:  # MP3 and PyAV's containers: libsndfile would only add a second, vaguer error
        readers = [read_audio_track] + ([_by_soundfile] if kind in LIBSNDFILE_KINDS else [])
    errors = []
    for read in readers:
        try:
            return read(path)
        except Exception as e:
            errors.append(e)
    if kind is None:
        raise LiserError(_unrecognised(path)) from None
    if isinstance(errors[0], LiserError):
        raise errors[0] from None
    raise LiserError(f"{path}: unreadable audio ({_first_line(errors[0])})") from None


def _by_soundfile(path: Path) -> tuple[np.ndarray, int]:
    """libsndfile's read, the name as bytes (soundfile encodes a str name strictly: a Latin-1 name would fail)."""
    import os

    import soundfile as sf

    audio, sr = sf.read(os.fsencode(path), dtype="float32", always_2d=True)
    return audio, int(sr)


def _unrecognised(path: Path) -> str:
    """The message for bytes of no known audio or video format, with their first bytes."""
    with open(path, "rb") as f:
        head = f.read(8).hex(" ")
    return f"{path}: unreadable audio (not a recognised audio or video format; its first bytes are {head})"


def _read_wav_parts(path: Path) -> tuple[np.ndarray, int]:
    """WAV files joined end to end (one RIFF form after another): each read by soundfile, in order."""
    import io

    import soundfile as sf

    data = path.read_bytes()
    parts = [sf.read(io.BytesIO(data[a:b]), dtype="float32", always_2d=True) for a, b in formats.wav_layout(path).forms]
    shapes = sorted({(int(sr), x.shape[1]) for x, sr in parts})
    if len(shapes) > 1:
        said = ", ".join(f"{sr} Hz x{ch}" for sr, ch in shapes)
        raise LiserError(f"{path}: {len(parts)} WAV files joined end to end, in different formats ({said}); split them")
    return np.concatenate([x for x, _ in parts], axis=0), shapes[0][0]


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def ac_rms(audio: np.ndarray) -> float:
    """RMS of a signal after removing its mean (per channel for [samples, channels]).

    This is what decides silence: a constant (DC) signal is silent however
    large it is, since the front end removes the mean before the STFT.
    """
    x = np.asarray(audio)
    if x.size == 0:
        return 0.0
    return float(np.sqrt(np.mean(np.var(x, axis=0, dtype=np.float64))))


def check_waveform(audio: np.ndarray, name: str) -> None:
    """Refuse empty signals, NaN/inf samples and samples beyond MAX_AMPLITUDE, naming the source."""
    if audio.size == 0:
        raise LiserError(f"{name}: empty audio (0 samples)")
    check_samples(audio, name)


def check_rate(rate: int, name: str) -> None:
    """Refuse a sample rate outside [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE] Hz (LiserError naming the source)."""
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise LiserError(f"{name}: sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz "
                         "(a broken header, or not audio this model can hear)")


def check_samples(block: np.ndarray, name: str) -> None:
    """Refuse NaN/inf samples and |samples| over MAX_AMPLITUDE in a signal or one block of it (LiserError)."""
    if not np.isfinite(block).all():
        raise LiserError(f"{name}: audio holds NaN or inf samples")
    peak = float(np.abs(block).max()) if block.size else 0.0
    if peak > MAX_AMPLITUDE:
        raise LiserError(f"{name}: samples reach {peak:.1e}, over {MAX_AMPLITUDE:g} x full scale: not audio at any "
                         "gain (float samples are expected in [-1, 1])")


def check_not_silent(audio: np.ndarray, name: str) -> None:
    """Refuse a signal whose RMS after removing the mean (`ac_rms`) is below SILENCE_RMS (-100 dBFS)."""
    rms = ac_rms(audio)
    if rms < SILENCE_RMS:
        raise LiserError(f"{name}: silent (RMS {rms:.1e} after removing the mean; all zeros, constant, or below -100 dBFS)")


def resample(audio: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling (soxr, or scipy's polyphase filter without it)."""
    if sr_in == sr_out:
        return audio.astype(np.float32, copy=False)
    try:
        import soxr

        return soxr.resample(audio, sr_in, sr_out, quality="HQ").astype(np.float32)
    except ImportError:
        from scipy.signal import resample_poly

        g = math.gcd(sr_in, sr_out)
        return resample_poly(audio, sr_out // g, sr_in // g).astype(np.float32)


def pad_to_clip(audio: np.ndarray) -> np.ndarray:
    """Zero-pad a signal shorter than 3 s to 3 s (SPEC: shorter signals are zero-padded)."""
    if audio.shape[-1] >= CLIP_SAMPLES:
        return audio
    pad = [(0, 0)] * (audio.ndim - 1) + [(0, CLIP_SAMPLES - audio.shape[-1])]
    return np.pad(audio, pad)


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's Mel scale (linear below 1 kHz, log above), as librosa's default."""
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-12) / min_log_hz) / logstep, f / f_sp)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_centres(n_mels: int = N_MELS, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Centre frequency (Hz) of each Mel band of `mel_filters`: float64 [n_mels]."""
    return _mel_to_hz(np.linspace(_hz_to_mel(F_MIN), _hz_to_mel(min(F_MAX, sr / 2)), n_mels + 2))[1:-1]


def band_mask(band_hz: tuple[float, float] | None, n_mels: int = N_MELS) -> np.ndarray:
    """float32 [n_mels]: 1 for the Mel bands whose centre lies inside band_hz (low, high) Hz, else 0; None = all 1.

    Centres are the front end's (mel_centres). For the phone band (300-3400 Hz) that keeps
    bands 6-46 of 64 (Slaney Mel centres 0.33-3.38 kHz): a telephone line passes what a student with
    `input_band: phone` reads, so a call and the clean recording look alike to it
    (configs/grid-default-model-band-input.yaml measures what that costs and buys).
    """
    if band_hz is None:
        return np.ones(n_mels, np.float32)
    centres = mel_centres(n_mels)
    return ((centres >= band_hz[0]) & (centres <= band_hz[1])).astype(np.float32)


@lru_cache(maxsize=4)
def mel_filters(n_mels: int = N_MELS, n_fft: int = N_FFT, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Slaney-normalised triangular Mel filterbank [n_mels, n_fft//2+1] (= librosa.filters.mel)."""
    fft_freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    mel_pts = _mel_to_hz(np.linspace(_hz_to_mel(F_MIN), _hz_to_mel(min(F_MAX, sr / 2)), n_mels + 2))
    fdiff = np.diff(mel_pts)
    ramps = mel_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_pts[2 : n_mels + 2] - mel_pts[:n_mels]))[:, None]
    return weights.astype(np.float32)


def log_mel(audio, device: str = "cpu"):
    """Log-Mel spectrogram in dB, [..., 64, frames], frames = 1 + samples // 512.

    `audio` is a 1-D or batched [B, samples] float array or tensor at 16 kHz.
    Each signal's mean (its DC offset) is removed first: an inaudible offset
    of 0.005 would otherwise lift the lowest Mel band by about 27 dB. Power
    spectrogram (Hann window, centred frames, reflect padding) through the
    Slaney Mel filterbank, then 10*log10 with a -100 dB floor. Returns a
    torch tensor (float32).
    """
    import torch

    x = torch.as_tensor(np.asarray(audio, dtype=np.float32) if not isinstance(audio, torch.Tensor) else audio)
    x = x.to(device=device, dtype=torch.float32)
    squeeze = x.ndim == 1
    if squeeze:
        x = x[None]
    x = x - x.mean(dim=-1, keepdim=True)  # DC offset (the same for training, evaluation, predict and export)
    window = torch.hann_window(N_FFT, device=x.device)
    spec = torch.stft(x, N_FFT, HOP, window=window, center=True, pad_mode="reflect", return_complex=True)
    power = spec.real.square() + spec.imag.square()
    mel = torch.matmul(torch.from_numpy(mel_filters()).to(x.device), power)
    out = 10.0 * torch.log10(torch.clamp(mel, min=LOG_FLOOR))
    return out[0] if squeeze else out


def n_frames(n_samples: int) -> int:
    """Frames of the (3 s-padded) spectrogram of a signal of n_samples."""
    return 1 + max(n_samples, CLIP_SAMPLES) // HOP


def window_starts(total_frames: int, stride_s: float = EVAL_STRIDE_S) -> np.ndarray:
    """Frame offsets of 3 s windows every `stride_s` seconds over `total_frames`.

    Offsets are rounded to the frame grid (32 ms); a last window flush with
    the end is added when the stride does not land there, so the tail of the
    file is always seen.
    """
    last = total_frames - CLIP_FRAMES
    if last <= 0:
        return np.zeros(1, dtype=np.int64)
    step = stride_s / HOP_S
    starts = np.unique(np.round(np.arange(0, last + 1e-9, step)).astype(np.int64))
    starts = starts[starts <= last]
    if starts[-1] != last:
        starts = np.append(starts, last)
    return starts


def frames_to_seconds(frame: int | np.ndarray):
    """Start time (s) of a frame offset on the 32 ms grid."""
    return np.asarray(frame) * HOP_S
