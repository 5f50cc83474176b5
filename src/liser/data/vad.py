"""Voice activity: which 0.5 s pieces of an item hold speech.

The speech teacher labels every piece of the unlabeled pool, but interview
audio also holds music, laughter and silence, where its "emotion" is noise.
Pieces with too little speech are marked missing in the store, so they give
no distillation loss (the store's validity mask; issue 13).

The detector is silero-vad (MIT licence): a small, well-kept neural VAD that
ships its model inside the pip package (no hub download, so it works
offline), runs on 16 kHz audio with torch alone, and holds up on music and
noise far better than energy or GMM detectors such as webrtcvad.

It runs as silero's "sequence" ONNX model (silero-vad >= 6.2): the same
network and per-frame probabilities (to 1e-6) as its TorchScript model,
run as one onnxruntime call per 16 s block (one thread) instead of one
torch call per 32 ms frame; about 5x faster, which matters when the VAD
runs on every pool file beside the speech teacher. Older packages fall back
to the TorchScript model.
"""

from __future__ import annotations

import numpy as np

from liser.data.audio import PIECE_S, SAMPLE_RATE
from liser.core.errors import LiserError

VAD_THRESHOLD = 0.5  # silero's speech probability threshold (its default)
MIN_SPEECH_FRACTION = 0.25  # a piece counts as speech when at least this share of its samples is speech

_MODEL = None  # (model, sequence: bool), loaded on first use


def _model():
    """silero's sequence ONNX model (True) where the package has it, else its TorchScript model (False)."""
    global _MODEL
    if _MODEL is None:
        try:
            from silero_vad import load_silero_vad
        except ImportError as e:
            raise LiserError(f"voice activity detection needs the silero-vad package ({e})") from None
        try:
            _MODEL = (load_silero_vad(sequence=True), True)
        except (TypeError, ImportError, FileNotFoundError, OSError):  # silero-vad < 6.2: no sequence model
            _MODEL = (load_silero_vad(onnx=False), False)
    return _MODEL


def speech_samples(wave: np.ndarray) -> np.ndarray:
    """A boolean [N] mask: True where silero-vad finds speech in a 16 kHz mono waveform [N]."""
    wave = np.asarray(wave, dtype=np.float32)
    covered = np.zeros(len(wave), dtype=bool)
    model, sequence = _model()
    if sequence:
        from silero_vad.sequence_vad import get_speech_timestamps_sequence

        segments = get_speech_timestamps_sequence(wave, model, threshold=VAD_THRESHOLD, sampling_rate=SAMPLE_RATE)
    else:
        import torch
        from silero_vad import get_speech_timestamps

        with torch.no_grad():
            segments = get_speech_timestamps(torch.from_numpy(wave), model, threshold=VAD_THRESHOLD,
                                             sampling_rate=SAMPLE_RATE)
    for seg in segments:
        covered[seg["start"] : seg["end"]] = True
    return covered


def speech_pieces(wave: np.ndarray, n: int, piece_s: float = PIECE_S) -> np.ndarray:
    """Which of the n pieces of `wave` hold speech: [n] bool (piece k = samples [k, k+1) x piece_s).

    A piece is speech when at least MIN_SPEECH_FRACTION of its samples are;
    pieces past the end of the waveform are not.
    """
    covered = speech_samples(wave)
    size = int(round(piece_s * SAMPLE_RATE))
    out = np.zeros(n, dtype=bool)
    for k in range(n):
        part = covered[k * size : (k + 1) * size]
        out[k] = part.size > 0 and part.sum() >= MIN_SPEECH_FRACTION * size
    return out
