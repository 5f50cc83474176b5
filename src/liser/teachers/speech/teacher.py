"""The speech teacher: a pretrained audio encoder adapted to the labeled emotion classes.

SPEC "Teachers": HuBERT-base fine-tuned with LoRA on the self-attention
weights, trained on the labeled set the student uses (80 % of its speakers to
train, 20 % to pick the best of at most 50 epochs); its softmax over the K
labeled classes labels every 0.5 s piece of the unlabeled audio.

Any Hugging Face audio encoder works as the backbone, by hub id or local
path: HuBERT / wav2vec2 / WavLM (raw waveform in) or Whisper (log-Mel in; its
encoder is run on the real input length by slicing its positional
embeddings, never padded to 30 s). Two adaptation modes:

- ``lora``: LoRA adapters on the attention q/v projections plus a trainable
  head (the paper's);
- ``frozen``: the encoder is frozen; the mean-pooled hidden states of all its
  layers are computed once per file and cached on disk (``.npy``, keyed by a
  hash of the backbone and the file's bytes), and only the head is trained:
  the cheap mode on a CPU.

The head is the same in both modes: the pooled hidden states of every layer
are standardised with the training set's per-layer, per-dimension mean and
std (stored with the head), dropout, a learned softmax weighting of the
layers, then LayerNorm -> Linear(d, 256) -> ReLU -> dropout -> Linear(256, K).

A trained teacher is a directory: ``teacher.json`` (backbone, mode, classes,
layer weights, config, training record, hash), ``head.safetensors`` and, for
lora, ``adapter.safetensors``. transformers and peft are imported lazily.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from liser.core.atomic import atomic_path, atomic_save_npy, atomic_write_text
from liser.data.audio import PIECE_S, SAMPLE_RATE, load_audio
from liser.data.corpora.base import Item, Manifest
from liser.core.device import autocast, resolve_device
from liser.core.errors import LiserError
from liser.core.metrics import uar, war  # the metrics every other stage reports
from liser.teachers.store import n_pieces, sha256_file
from liser.core.util import model_path

FORMAT = "liser-speech-teacher"
FORMAT_VERSION = 1
FEATURE_VERSION = 1  # bump when the cached features' definition changes
CHUNK_S = 30.0  # inputs longer than this are encoded in consecutive chunks (Whisper's limit)
CONTEXT_S = 5.0  # contextual pieces of a long item: each 30 s chunk also sees this much on each side (discarded)
FRAME_SAMPLES = 320  # encoder frame step at 16 kHz: 20 ms for Whisper (hop 160, conv stride 2) and HuBERT/wav2vec2
PIECE_CONTEXTS = ("whole", "isolated")
LORA_TARGETS = ("q_proj", "v_proj")  # attention q/v projections in HuBERT, wav2vec2, WavLM and Whisper
MODES = ("frozen", "lora")
HEADS = ("weighted", "concat")
RUNTIMES = ("auto", "torch", "onnx", "onnx-int8")  # labeling's encoder: see liser.teachers.speech.onnx


@dataclass(frozen=True)
class SpeechTeacherConfig:
    """How a speech teacher is built and trained."""

    backbone: str = "facebook/hubert-base-ls960"  # HF hub id or local folder of an audio encoder (the paper's default);
    #   a folder not found from here is looked for in $LISER_MODELS / the shared models folder (util.model_path)
    mode: str = "frozen"  # "frozen": cached frozen features + head; "lora": LoRA on q/v + head (the paper's)
    epochs: int = 50  # at most this many epochs; the best inner-validation UAR epoch is kept
    lr: float | None = None  # AdamW learning rate; None = 1e-3 for frozen (head only), 1e-4 for lora (paper)
    weight_decay: float = 1e-2  # AdamW weight decay
    batch_size: int = 32  # items per optimisation step (utterances); lora on CPU may want fewer
    head: str = "weighted"  # "weighted": softmax-weighted sum of layers -> MLP; "concat": chosen layers
    #   concatenated -> one linear layer (a logistic regression on standardised features)
    layers: tuple = ()  # hidden states the head reads (0 = embeddings, 1..L = layers); () = all of them
    hidden: int = 256  # width of the weighted head's hidden layer
    dropout: float = 0.2  # dropout before the head's last layer
    in_dropout: float = 0.2  # dropout on the standardised layer features (frozen-feature regulariser)
    train_pieces: bool = False  # frozen only: also train on every piece_s piece (utterance label); the epoch is
    #                             then picked on the mean of utterance and piece-averaged validation UAR
    utt_weight: float = 1.0  # train_pieces: loss weight of a whole-item row against a piece row (1 = plain mean;
    #   a 3.5 s item gives 7 pieces, so whole items are ~1/8 of the rows; > 1 leans the head towards whole files)
    label_smoothing: float = 0.0  # cross-entropy label smoothing (0 = none): softer targets, a regulariser that
    #   also bounds how confident the soft labels the student learns from can get
    patience: int = 0  # stop after this many epochs without a better inner-validation score (0 = run all
    #   `epochs`); the kept weights are the best epoch's either way, so it trades time, with longer `epochs`
    val_fraction: float = 0.2  # share of the training speakers held out to pick the epoch
    refit: bool = False  # frozen only: after the epoch is picked, train a fresh head (same seed) on the inner train
    #   and validation speakers together for that many epochs: a quarter more speakers for the kept teacher
    ensemble: int = 1  # frozen only: heads fitted with seeds seed, seed+1, ... (each its own inner speaker split,
    #   epoch and refit); the teacher's probabilities are their mean
    seed: int = 0  # inner split, initialisation, shuffling, crops
    lora_r: int = 8  # LoRA rank
    lora_alpha: int = 16  # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = 0.1  # dropout on the LoRA branch
    piece_s: float = PIECE_S  # length of the pieces the teacher labels (0.5 s, SPEC)
    piece_context: str = "whole"  # "whole": encode each item once and pool the frames inside each piece (the
    #   piece keeps its context); "isolated": encode each piece alone (the paper's literal reading; far weaker)
    max_seconds: float = 8.0  # lora training: random crop of this length from longer utterances
    vad: bool = True  # labeling: pieces where silero-vad finds too little speech are marked missing in the store
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda[:N]; on CUDA the encoder runs in bf16 autocast
    threads: int = 0  # torch CPU threads; 0 = leave torch's setting alone
    cache_dir: str | None = None  # frozen-feature cache; None = $LISER_CACHE or ~/.cache/liser, + /speech-features
    runtime: str = "auto"  # labeling the pool: "torch" (the reference), "onnx" (fp32) or "onnx-int8" in onnxruntime,
    #   exported once into <cache_dir>/onnx; "auto" = onnx-int8 for Whisper on the CPU (it holds the parity bound of
    #   liser.teachers.speech.onnx, checked again at export), torch on CUDA or other backbones. Fitting and
    #   evaluation always run in torch.

    def resolved_lr(self) -> float:
        return float(self.lr) if self.lr is not None else (1e-3 if self.mode == "frozen" else 1e-4)

    def identity(self) -> dict:
        """The fields that define the trained teacher (not where or how fast it ran).

        Options added after teachers were shipped enter only when set away
        from their default (LATER_DEFAULTS), so every existing teacher's hash
        (and the stores keyed by it) stays what it was.
        """
        d = asdict(self)
        for k in ("device", "threads", "cache_dir", "vad", "runtime"):
            d.pop(k)
        for k, default in LATER_DEFAULTS.items():
            if d[k] == default:
                d.pop(k)
        return d

    def check(self) -> None:
        """LiserError for values no fit can use (named, before any data is read)."""
        if self.mode not in MODES:
            raise LiserError(f"speech teacher: unknown mode {self.mode!r} (known: {', '.join(MODES)})")
        if self.runtime not in RUNTIMES:
            raise LiserError(f"speech teacher: unknown runtime {self.runtime!r} (known: {', '.join(RUNTIMES)})")
        if self.epochs < 1:
            raise LiserError(f"speech teacher: epochs must be >= 1 (got {self.epochs})")
        if self.train_pieces and self.mode != "frozen":
            raise LiserError("speech teacher: train_pieces is a frozen-mode option")
        if not self.utt_weight > 0:
            raise LiserError(f"speech teacher: utt_weight must be > 0 (got {self.utt_weight})")
        if self.utt_weight != 1.0 and not self.train_pieces:
            raise LiserError("speech teacher: utt_weight weighs whole items against pieces; it needs train_pieces")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise LiserError(f"speech teacher: label_smoothing must be in [0, 1) (got {self.label_smoothing})")
        if self.patience < 0:
            raise LiserError(f"speech teacher: patience must be >= 0 (got {self.patience})")
        if self.refit and self.mode != "frozen":
            raise LiserError("speech teacher: refit is a frozen-mode option (a LoRA refit would re-run the encoder)")
        if self.ensemble < 1:
            raise LiserError(f"speech teacher: ensemble must be >= 1 (got {self.ensemble})")
        if self.ensemble > 1 and self.mode != "frozen":
            raise LiserError("speech teacher: ensemble is a frozen-mode option (LoRA members would each need an encoder)")


# Options added after teachers were shipped, with the default that leaves a fit as it was: identity() leaves
# them out at these values (a teacher.json without them loads with them), so old hashes still verify.
LATER_DEFAULTS = {"utt_weight": 1.0, "label_smoothing": 0.0, "patience": 0, "refit": False, "ensemble": 1}


@dataclass
class FitResult:
    """What `fit_speech_teacher` returns."""

    teacher: "SpeechTeacher"  # the trained teacher (best epoch), already saved in out_dir
    out_dir: Path  # the checkpoint directory
    teacher_hash: str  # sha256 of backbone identity + head/adapter weights + config
    best_epoch: int  # 1-based epoch whose weights were kept
    val_uar: float  # inner-validation score of that epoch (UAR; with train_pieces the mean of utterance and piece UAR)
    history: list[dict] = field(default_factory=list)  # per epoch: epoch, loss, val_uar, val_war, seconds
    train_ids: list[str] = field(default_factory=list)  # inner training items
    val_ids: list[str] = field(default_factory=list)  # inner validation items (held-out speakers)


# ---------------------------------------------------------------- metrics, split


def speaker_split(items: list[Item], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[Item], list[Item]]:
    """Deterministic split of items by speaker: about `val_fraction` of the speakers go to validation."""
    speakers = sorted({it.speaker for it in items})
    if len(speakers) < 2:
        raise LiserError(f"speech teacher: training items come from {len(speakers)} speaker(s); "
                         "the inner train/validation split needs at least 2")
    rng = np.random.default_rng(seed)
    order = [speakers[i] for i in rng.permutation(len(speakers))]
    n_val = min(len(speakers) - 1, max(1, int(round(val_fraction * len(speakers)))))
    val = set(order[:n_val])
    return [it for it in items if it.speaker not in val], [it for it in items if it.speaker in val]


# ---------------------------------------------------------------- backbone


_FINGERPRINTS: dict[tuple, str] = {}


def backbone_fingerprint(backbone: str, config=None) -> str:
    """Identity of a backbone: hash of a local folder's config + weight files, or hub id + commit."""
    p = Path(backbone)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and (f.name == "config.json" or f.suffix in (".safetensors", ".bin")))
        key = (str(p.resolve()),) + tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)
        if key not in _FINGERPRINTS:
            h = hashlib.sha256(b"local\n")
            for f in files:
                h.update(f.name.encode() + b"\n")
                sha256_file(f, h)
            _FINGERPRINTS[key] = h.hexdigest()
        return _FINGERPRINTS[key]
    commit = getattr(config, "_commit_hash", None) if config is not None else None
    return hashlib.sha256(f"hub\n{backbone}@{commit}".encode()).hexdigest()


def whisper_encoder_states(encoder, input_features, training: bool = False) -> list:
    """Whisper encoder on any even number of Mel frames (<= 3000): hidden states of every layer.

    The stock forward insists on 3000 frames; here the positional embeddings
    are sliced to the input length instead, so a 0.5 s piece costs 25
    positions, not 1500. Returns [embeddings, layer 1, ..., layer L]; the last
    one has the encoder's final LayerNorm applied (as transformers' output).
    """
    from torch import nn

    x = nn.functional.gelu(encoder.conv1(input_features))
    x = nn.functional.gelu(encoder.conv2(x)).permute(0, 2, 1)
    t = x.shape[1]
    if t > encoder.embed_positions.weight.shape[0]:
        raise LiserError(f"whisper encoder: {t} positions exceed its {encoder.embed_positions.weight.shape[0]}")
    h = x + encoder.embed_positions.weight[:t].to(x.dtype)
    h = nn.functional.dropout(h, p=encoder.dropout, training=training)
    states = [h]
    for layer in encoder.layers:
        h = layer(h, None)
        states.append(h)
    states[-1] = encoder.layer_norm(h)
    return states


class Backbone:
    """A pretrained audio encoder: waveforms in, mean-pooled hidden states of all layers out."""

    def __init__(self, backbone: str, device: str = "auto"):
        import torch
        from transformers import AutoConfig

        self.name = backbone
        backbone = model_path(backbone)  # a local folder from any working directory ($LISER_MODELS); hub ids as they are
        self.device = resolve_device(device)
        try:
            config = AutoConfig.from_pretrained(backbone)
        except Exception as e:
            raise LiserError(f"{backbone}: cannot load the backbone's config ({str(e).strip().splitlines()[0][:200]})") from None
        self.config = config
        self.kind = "whisper" if config.model_type == "whisper" else "wave"
        if self.kind == "whisper":
            from transformers import WhisperFeatureExtractor, WhisperForAudioClassification, WhisperModel

            archs = config.architectures or []
            cls = WhisperForAudioClassification if "WhisperForAudioClassification" in archs else WhisperModel
            model = cls.from_pretrained(backbone, dtype=torch.float32)
            self.model = model.encoder
            try:
                self.feature_extractor = WhisperFeatureExtractor.from_pretrained(backbone)
            except Exception as e:  # said aloud: the default extractor may not be the checkpoint's
                import warnings

                warnings.warn(f"{backbone}: no loadable preprocessor_config.json ({type(e).__name__}); using "
                              f"Whisper's default feature extractor with {config.num_mel_bins} Mel bins", stacklevel=2)
                self.feature_extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
            self.n_states = config.encoder_layers + 1
            self.dim = config.d_model
            self.normalize = False
        else:
            from transformers import AutoModel

            model = AutoModel.from_pretrained(backbone, dtype=torch.float32)
            # LayerDrop skips whole layers in training, and the skipped ones then give no hidden state:
            # the layer-weighted head needs all of them, so it is switched off (as for Whisper, where it is 0)
            for obj in (model.config, model):
                if hasattr(obj, "layerdrop"):
                    obj.layerdrop = 0.0
            self.model = model
            self.normalize = True
            try:
                from transformers import AutoFeatureExtractor

                self.normalize = bool(getattr(AutoFeatureExtractor.from_pretrained(backbone), "do_normalize", True))
            except Exception as e:  # said aloud: the input normalisation is then a guess
                import warnings

                warnings.warn(f"{backbone}: no loadable feature extractor ({type(e).__name__}); assuming "
                              "do_normalize=True (zero-mean unit-variance input)", stacklevel=2)
            self.feature_extractor = None
            self.n_states = config.num_hidden_layers + 1
            self.dim = config.hidden_size
        self.model.to(self.device).eval()
        self.fingerprint = backbone_fingerprint(backbone, config)

    # ---- LoRA ----
    def add_lora(self, r: int, alpha: int, dropout: float) -> None:
        """Wrap the attention q/v projections with LoRA; only the LoRA weights stay trainable."""
        from peft import LoraConfig, inject_adapter_in_model

        cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(LORA_TARGETS), bias="none")
        self.model = inject_adapter_in_model(cfg, self.model)
        n = 0
        for name, p in self.model.named_parameters():
            p.requires_grad = "lora_" in name
            n += "lora_" in name
        if n == 0:
            raise LiserError(f"{self.name}: no {'/'.join(LORA_TARGETS)} modules to put LoRA on")
        self.model.to(self.device)

    def lora_state(self) -> dict:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items() if "lora_" in k}

    def load_lora_state(self, state: dict) -> None:
        own = {k for k in self.model.state_dict() if "lora_" in k}
        if set(state) != own:
            raise LiserError(f"{self.name}: adapter weights do not match the backbone's LoRA modules "
                             f"({len(set(state) ^ own)} keys differ)")
        self.model.load_state_dict(state, strict=False)

    # ---- forward ----
    def pooled(self, waves: list[np.ndarray], grad: bool = False):
        """Mean-pooled hidden states of every layer: [B, n_states, dim] float32 tensor.

        Inputs longer than 30 s are encoded in consecutive 30 s chunks whose
        pooled states are averaged, weighted by length.
        """
        import torch

        chunk = int(CHUNK_S * SAMPLE_RATE)
        parts, owner, weight = [], [], []
        for i, w in enumerate(waves):
            w = np.asarray(w, dtype=np.float32)
            for a in range(0, max(len(w), 1), chunk):
                parts.append(w[a : a + chunk])
                owner.append(i)
                weight.append(max(len(parts[-1]), 1))
        with torch.set_grad_enabled(grad):
            pooled = self._pooled_batch(parts, grad)
            if len(parts) == len(waves):
                return pooled
            out = []
            owner_t = torch.tensor(owner, device=pooled.device)
            weight_t = torch.tensor(weight, dtype=pooled.dtype, device=pooled.device)
            for i in range(len(waves)):
                m = owner_t == i
                wts = weight_t[m] / weight_t[m].sum()
                out.append((pooled[m] * wts[:, None, None]).sum(0))
            return torch.stack(out)

    def _pooled_batch(self, waves: list[np.ndarray], grad: bool):
        import torch

        h, valid = self._states_batch(waves, grad)
        t = h.shape[2]
        mask = (torch.arange(t, device=h.device)[None, :] < valid[:, None]).to(h.dtype)  # [B, T]
        return (h * mask[:, None, :, None]).sum(2) / mask.sum(1).clamp(min=1)[:, None, None]

    def _states_batch(self, waves: list[np.ndarray], grad: bool):
        """Hidden states of every layer, frame by frame: ([B, S, T, d] tensor, valid frames [B])."""
        import torch

        lengths = [len(w) for w in waves]
        if self.kind == "whisper":
            x, valid = self.whisper_mel(waves)
            with autocast(self.device):
                states = whisper_encoder_states(self.model, x, training=grad and self.model.training)
        else:
            n = max(lengths)
            batch = np.zeros((len(waves), n), np.float32)
            for i, w in enumerate(waves):
                if self.normalize:
                    w = (w - w.mean()) / np.sqrt(w.var() + 1e-7)
                batch[i, : len(w)] = w
            x = torch.from_numpy(batch).to(self.device)
            kwargs = {}
            if getattr(self.config, "feat_extract_norm", "group") == "layer":
                mask = torch.zeros(len(waves), n, dtype=torch.long, device=self.device)
                for i, L in enumerate(lengths):
                    mask[i, :L] = 1
                kwargs["attention_mask"] = mask
            with autocast(self.device):
                out = self.model(x, output_hidden_states=True, **kwargs)
            states = list(out.hidden_states)
            valid = self.model._get_feat_extract_output_lengths(torch.tensor(lengths)).to(self.device).clamp(min=1)
        return torch.stack(states, dim=1).float(), valid  # [B, S, T, d] float32 (bf16 under CUDA autocast), [B]

    def whisper_mel(self, waves: list[np.ndarray]):
        """Whisper's log-Mel input of a batch: ([B, 80, F] tensor on self.device, valid encoder frames [B]).

        F is even: the samples are padded to a multiple of 2 hops (320), or
        of the longest waveform's length; one 20 ms encoder frame per 320
        samples is valid.
        """
        import torch

        lengths = [len(w) for w in waves]
        n = max(320, int(math.ceil(max(lengths) / 320)) * 320)
        feats = self.feature_extractor(list(waves) if len(waves) > 1 else waves[0], sampling_rate=SAMPLE_RATE,
                                       padding="max_length", max_length=n, truncation=True, return_tensors="pt")
        valid = torch.tensor([max(1, math.ceil(L / 320)) for L in lengths], device=self.device)
        return feats["input_features"].to(self.device), valid

    def frame_states(self, wave: np.ndarray, grad: bool = False):
        """Hidden states of every layer for every 20 ms frame of one waveform: [S, T, d] tensor.

        Items up to 30 s are encoded in one pass. Longer ones go in 30 s
        chunks that overlap by CONTEXT_S on each side; only each chunk's
        central frames are kept, so every frame is encoded with at least
        CONTEXT_S of context around it (and Whisper never sees > 30 s).
        """
        import torch

        wave = np.asarray(wave, dtype=np.float32)
        chunk, ctx = int(CHUNK_S * SAMPLE_RATE), int(CONTEXT_S * SAMPLE_RATE)
        with torch.set_grad_enabled(grad):
            if len(wave) <= chunk:
                h, valid = self._states_batch([wave], grad)
                return h[0, :, : int(valid[0])]
            core = chunk - 2 * ctx  # 20 s kept per chunk; a multiple of FRAME_SAMPLES, so frames line up
            parts = []
            for a in range(0, len(wave), core):
                lo = max(0, a - ctx)
                h, valid = self._states_batch([wave[lo : a + core + ctx]], grad)
                skip = (a - lo) // FRAME_SAMPLES
                n_keep = -(-min(core, len(wave) - a) // FRAME_SAMPLES)
                parts.append(h[0, :, skip : min(skip + n_keep, int(valid[0]))])
            return torch.cat(parts, dim=1)

    def context_pieces(self, wave: np.ndarray, piece_s: float = PIECE_S):
        """Pieces pooled from one encoding of the whole item: ([P, S, d], utterance [S, d]) tensors.

        Piece p is the mean of the frames whose 20 ms step starts inside
        [p * piece_s, (p + 1) * piece_s); P = n_pieces(duration) as in the
        store. The utterance vector is the mean of all frames. A last piece
        with no frame of its own (possible for encoders whose frames start
        later than the samples, e.g. HuBERT's 400-sample receptive field)
        takes the last frame.
        """
        states = self.frame_states(wave)  # [S, T, d]
        t = states.shape[1]
        per = piece_s * SAMPLE_RATE / FRAME_SAMPLES  # frames per piece: 25 for 0.5 s
        out = []
        for p in range(n_pieces(len(wave) / SAMPLE_RATE, piece_s)):
            a = min(int(round(p * per)), t - 1)
            b = max(a + 1, min(int(round((p + 1) * per)), t))
            out.append(states[:, a:b].mean(1))
        import torch

        return torch.stack(out), states.mean(1)

    def pieces(self, wave: np.ndarray, piece_s: float = PIECE_S, batch: int = 64):
        """Pooled states of each piece of a waveform: [P, n_states, dim], P = n_pieces(duration)."""
        import torch

        cuts = split_pieces(wave, piece_s)
        out = [self.pooled(cuts[a : a + batch]) for a in range(0, len(cuts), batch)]
        return torch.cat(out)


def split_pieces(wave: np.ndarray, piece_s: float = PIECE_S) -> list[np.ndarray]:
    """The store's pieces of a waveform: P = n_pieces(duration), each piece_s long (last one zero-padded)."""
    size = int(round(piece_s * SAMPLE_RATE))
    p = n_pieces(len(wave) / SAMPLE_RATE, piece_s)
    cuts = []
    for k in range(p):
        seg = np.asarray(wave[k * size : (k + 1) * size], dtype=np.float32)
        if len(seg) < size:
            seg = np.pad(seg, (0, size - len(seg)))
        cuts.append(seg)
    return cuts


# ---------------------------------------------------------------- head


def _make_head(n_states: int, dim: int, n_classes: int, hidden: int = 256, dropout: float = 0.2,
               in_dropout: float = 0.0, kind: str = "weighted", layers: tuple = (), members: int = 1):
    """The teacher's head on pooled states [B, n_states, dim] -> logits [B, n_classes] (see module docstring).

    kind "weighted" learns a softmax weighting of the chosen states, then an
    MLP; "concat" concatenates them into one linear layer. `layers` picks
    states by index (() = all). members > 1: `_ensemble_head` of that many
    heads. Raises LiserError for an unknown kind or index.
    """
    import torch
    from torch import nn

    if members > 1:
        return _ensemble_head([_make_head(n_states, dim, n_classes, hidden, dropout, in_dropout, kind, layers)
                               for _ in range(members)])

    if kind not in HEADS:
        raise LiserError(f"speech teacher: head must be one of {', '.join(HEADS)}, got {kind!r}")
    picked = [int(i) for i in layers] if layers else list(range(n_states))
    if any(not 0 <= int(i) < n_states for i in picked):
        raise LiserError(f"speech teacher: layers {list(layers)} outside the backbone's 0..{n_states - 1}")

    class Head(nn.Module):
        """Standardise -> dropout -> softmax-weighted sum of layers -> LayerNorm -> MLP -> K logits."""

        def __init__(self):
            super().__init__()
            self.register_buffer("feat_mean", torch.zeros(n_states, dim))
            self.register_buffer("feat_std", torch.ones(n_states, dim))
            self.in_drop = nn.Dropout(in_dropout)
            self.register_buffer("picked", torch.tensor(picked, dtype=torch.long))
            self.kind = kind
            self.layer_logits = nn.Parameter(torch.zeros(len(picked)))
            self.norm = nn.LayerNorm(dim)
            if kind == "weighted":
                self.fc1 = nn.Linear(dim, hidden)
                self.drop = nn.Dropout(dropout)
                self.fc2 = nn.Linear(hidden, n_classes)
            else:  # layer_logits and norm stay (unused) so every head saves the same metadata
                self.linear = nn.Linear(len(picked) * dim, n_classes)

        def layer_weights(self):
            return torch.softmax(self.layer_logits, dim=0)

        def set_stats(self, x):
            """Per-layer, per-dimension mean and std of training features x [N, S, d]."""
            x = x.detach().float()
            self.feat_mean.copy_(x.mean(0))
            self.feat_std.copy_(x.std(0) + 1e-5 if len(x) > 1 else torch.ones_like(self.feat_std))

        def forward(self, x):  # x [B, S, d]
            x = self.in_drop((x - self.feat_mean) / self.feat_std)[:, self.picked]
            if self.kind == "concat":
                return self.linear(x.flatten(1))
            z = (self.layer_weights()[None, :, None] * x).sum(1)
            return self.fc2(self.drop(torch.relu(self.fc1(self.norm(z)))))

    return Head()


def _ensemble_head(heads: list):
    """Heads [B, S, d] -> logits, averaged as probabilities: forward gives log(mean_m softmax(head_m(x))) [B, K].

    The log of the mean probability is a logit vector whose softmax is that
    mean, so every caller that takes a softmax of the head (soft labels,
    temperature, arg-max) sees the ensemble's mean probabilities.
    """
    import torch
    from torch import nn

    class EnsembleHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.members = nn.ModuleList(heads)

        @property
        def feat_mean(self):  # shapes for teacher.json, as a single head has them
            return self.members[0].feat_mean

        @property
        def norm(self):
            return self.members[0].norm

        def layer_weights(self):
            return torch.stack([h.layer_weights() for h in self.members]).mean(0)

        def forward(self, x):
            probs = torch.stack([torch.softmax(h(x), -1) for h in self.members]).mean(0)
            return torch.log(probs.clamp_min(1e-12))

    return EnsembleHead()


# ---------------------------------------------------------------- the teacher


def _atomic_save_tensors(tensors: dict, path: Path) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp)


def teacher_hash(fingerprint: str, identity: dict, classes: list[str], tensors: dict) -> str:
    """sha256 over backbone identity, config, classes and head/adapter weights."""
    h = hashlib.sha256()
    h.update(f"{FORMAT} v{FORMAT_VERSION}\n{fingerprint}\n".encode())
    h.update(json.dumps({"config": identity, "classes": list(classes)}, sort_keys=True).encode())
    for k in sorted(tensors):
        v = tensors[k].detach().cpu().contiguous().float().numpy()
        h.update(f"\n{k}:{v.shape}\n".encode())
        h.update(v.tobytes())
    return h.hexdigest()


class SpeechTeacher:
    """A trained speech teacher: backbone (+ LoRA) + head; labels 0.5 s pieces."""

    def __init__(self, cfg: SpeechTeacherConfig, classes: list[str], head, backbone: Backbone | None = None,
                 fingerprint: str = "", record: dict | None = None):
        self.cfg = cfg
        self.classes = list(classes)
        self.head = head
        self._backbone = backbone
        self.fingerprint = fingerprint or (backbone.fingerprint if backbone else "")
        self.record = dict(record or {})
        self.hash = ""
        self.path: Path | None = None

    @property
    def backbone(self) -> str:
        return self.cfg.backbone

    @property
    def mode(self) -> str:
        return self.cfg.mode

    @property
    def piece_s(self) -> float:
        return self.cfg.piece_s

    @property
    def encoder(self) -> Backbone:
        """The backbone, loaded on first use (with the saved LoRA weights in lora mode)."""
        if self._backbone is None:
            bb = Backbone(self.cfg.backbone, self.cfg.device)
            if self.fingerprint and bb.fingerprint != self.fingerprint:
                raise LiserError(f"{self.cfg.backbone}: backbone weights differ from the ones this teacher was trained on "
                                 f"({bb.fingerprint[:12]} != {self.fingerprint[:12]})")
            if self.cfg.mode == "lora":
                bb.add_lora(self.cfg.lora_r, self.cfg.lora_alpha, self.cfg.lora_dropout)
                if self.path is None:
                    raise LiserError("speech teacher: lora teacher without a checkpoint directory")
                bb.load_lora_state(_load_tensors(self.path / "adapter.safetensors"))
            bb.model.eval()
            self._backbone = bb
        return self._backbone

    def layer_weights(self) -> list[float]:
        return [round(float(w), 6) for w in self.head.layer_weights().detach().cpu()]

    def _tensors(self) -> dict:
        t = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        if self.cfg.mode == "lora" and self._backbone is not None:
            t.update({f"adapter.{k}": v for k, v in self._backbone.lora_state().items()})
        return t

    # ---- inference ----
    def probs_from_features(self, feats) -> np.ndarray:
        """Softmax of the head on pooled states [B, S, d] (tensor or array) -> [B, K]."""
        import torch

        self.head.eval()
        with torch.no_grad():
            x = torch.as_tensor(np.asarray(feats, dtype=np.float32) if not isinstance(feats, torch.Tensor) else feats)
            x = x.to(next(self.head.parameters()).device, torch.float32)
            return torch.softmax(self.head(x), dim=-1).cpu().numpy()

    def predict(self, waveform_16k: np.ndarray) -> np.ndarray:
        """Class probabilities [K] for a whole utterance (16 kHz mono)."""
        import torch

        with torch.no_grad():
            return self.probs_from_features(self.encoder.pooled([np.asarray(waveform_16k, np.float32)]))[0]

    def predict_pieces(self, waveform_16k: np.ndarray, batch: int = 64, encoder: "Backbone | None" = None) -> np.ndarray:
        """Class probabilities [P, K] of each piece_s piece, P = n_pieces(len / 16 kHz).

        With piece_context "whole" the pieces are pooled from one encoding of
        the whole waveform; with "isolated" each piece is encoded alone.
        `encoder`: another encoder of this teacher (its ONNX export,
        liser.teachers.speech.label.label_encoder); None = the PyTorch one.
        """
        import torch

        enc = encoder if encoder is not None else self.encoder
        wave = np.asarray(waveform_16k, np.float32)
        with torch.no_grad():
            if piece_kind(self.cfg) == "ctx":
                return self.probs_from_features(enc.context_pieces(wave, self.piece_s)[0])
            return self.probs_from_features(enc.pieces(wave, self.piece_s, batch))

    # ---- disk ----
    def save(self, out_dir: str | Path) -> Path:
        """Write head (and adapter) weights and teacher.json (last) into out_dir; sets self.hash."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tensors = self._tensors()
        self.hash = teacher_hash(self.fingerprint, self.cfg.identity(), self.classes, tensors)
        _atomic_save_tensors({k[5:]: v for k, v in tensors.items() if k.startswith("head.")}, out / "head.safetensors")
        if self.cfg.mode == "lora":
            _atomic_save_tensors({k[8:]: v for k, v in tensors.items() if k.startswith("adapter.")}, out / "adapter.safetensors")
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "backbone": self.cfg.backbone,
            "backbone_fingerprint": self.fingerprint,
            "mode": self.cfg.mode,
            "classes": self.classes,
            "piece_s": self.cfg.piece_s,
            "n_states": int(self.head.feat_mean.shape[0]),
            "dim": int(self.head.norm.normalized_shape[0]),
            "layer_weights": self.layer_weights(),
            "config": asdict(self.cfg),
            "teacher_hash": self.hash,
            "record": self.record,
        }
        atomic_write_text(out / "teacher.json", json.dumps(meta, indent=2) + "\n")
        self.path = out
        return out

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> "SpeechTeacher":
        """Open a teacher directory written by `save` (the backbone loads on first prediction)."""
        path = Path(path)
        meta_file = path / "teacher.json"
        if not meta_file.is_file():
            raise LiserError(f"{path}: not a speech teacher directory (no teacher.json)")
        meta = json.loads(meta_file.read_text())
        if meta.get("format") != FORMAT:
            raise LiserError(f"{meta_file}: not a speech teacher (format {meta.get('format')!r})")
        known = {f.name for f in fields(SpeechTeacherConfig)}
        cfg_dict = {k: v for k, v in meta["config"].items() if k in known}
        if device is not None:
            cfg_dict["device"] = device
        cfg = SpeechTeacherConfig(**cfg_dict)
        head = _make_head(meta["n_states"], meta["dim"], len(meta["classes"]), cfg.hidden, cfg.dropout, cfg.in_dropout,
                          cfg.head, tuple(cfg.layers), cfg.ensemble)
        state = _load_tensors(path / "head.safetensors")
        try:
            head.load_state_dict(state)
        except RuntimeError as e:
            raise LiserError(f"{path / 'head.safetensors'}: head weights do not fit teacher.json ({str(e).splitlines()[0][:200]})") from None
        head.to(resolve_device(cfg.device)).eval()
        t = cls(cfg, meta["classes"], head, fingerprint=meta["backbone_fingerprint"], record=meta.get("record"))
        t.path = path
        t.hash = meta["teacher_hash"]
        tensors = {f"head.{k}": v for k, v in state.items()}
        if cfg.mode == "lora":
            tensors.update({f"adapter.{k}": v for k, v in _load_tensors(path / "adapter.safetensors").items()})
        if teacher_hash(t.fingerprint, cfg.identity(), t.classes, tensors) != t.hash:
            raise LiserError(f"{meta_file}: teacher_hash does not match the saved weights (files changed or mixed)")
        return t


def _load_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    if not path.is_file():
        raise LiserError(f"{path}: missing (teacher checkpoint incomplete)")
    try:
        return load_file(str(path))
    except Exception as e:
        raise LiserError(f"{path}: unreadable safetensors ({str(e).strip().splitlines()[0][:200]})") from None


# ---------------------------------------------------------------- feature cache (frozen mode)


def default_cache_dir() -> Path:
    return Path(os.environ.get("LISER_CACHE", Path.home() / ".cache" / "liser")) / "speech-features"


def _cache_path(cache_dir: Path, fingerprint: str, file: Path, kind: str, piece_s: float, tag: str = "") -> Path:
    """Where a file's features live; `tag` names a transformed copy of its audio (a view), "" the file itself."""
    content = sha256_file(file).hexdigest()
    key = hashlib.sha256(f"{FEATURE_VERSION}|{fingerprint}|{content}|{kind}|{piece_s}{'|' + tag if tag else ''}"
                         .encode()).hexdigest()[:32]
    return cache_dir / fingerprint[:16] / key[:2] / f"{key}.{kind}.npy"


def cached_features(backbone: Backbone, manifest: Manifest, item: Item, kind: str = "utt",
                    piece_s: float = PIECE_S, cache_dir: str | Path | None = None) -> np.ndarray:
    """Pooled states of an item, computed once and kept as .npy (key: backbone + file bytes + kind).

    kind "utt": [S, d] float32 over the whole file; kind "pieces": [P, S, d]
    float16, one row per piece_s piece, each encoded alone; kind "ctx": [P, S, d]
    float16, pieces pooled from one encoding of the whole file
    (`Backbone.context_pieces`; the same pass also fills "utt" for files up
    to 30 s, where both definitions agree). Raises LiserError if the file
    cannot be read, ValueError for an unknown kind.
    """
    return _cached_features_and_wave(backbone, manifest, item, kind, piece_s, cache_dir)[0]


def _cached_features_and_wave(backbone: Backbone, manifest: Manifest, item: Item, kind: str = "utt",
                              piece_s: float = PIECE_S, cache_dir: str | Path | None = None):
    """`cached_features`, and the decoded waveform when it had to be read (else None): (array, wave | None)."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    file = manifest.abspath(item)
    if not file.is_file():
        raise LiserError(f"{file}: no such file")
    path = _cache_path(cache_dir, backbone.fingerprint, file, kind, piece_s)
    if path.is_file():
        try:
            return np.load(path), None
        except Exception:
            pass  # a damaged cache entry is recomputed
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown feature kind {kind!r} (known: {', '.join(FEATURE_KINDS)})")
    wave = load_audio(file)
    arr, utt = _encode(backbone, wave, kind, piece_s)
    utt_path = _cache_path(cache_dir, backbone.fingerprint, file, "utt", piece_s)
    if utt is not None and len(wave) <= CHUNK_S * SAMPLE_RATE and not utt_path.is_file():
        atomic_save_npy(utt, utt_path)
    atomic_save_npy(arr, path)
    return arr, wave


def cached_view_features(backbone: Backbone, file: Path, make_wave, tag: str, kind: str = "ctx",
                         piece_s: float = PIECE_S, cache_dir: str | Path | None = None) -> np.ndarray:
    """Features (as `cached_features`) of a transformed copy of a file's audio, e.g. a view (teach_views):
    `make_wave()` gives its 16 kHz waveform, called only when the cache lacks it; `tag` names the copy in
    the key, so every fold's teacher head reuses one encoding of each view."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    path = _cache_path(cache_dir, backbone.fingerprint, Path(file), kind, piece_s, tag)
    if path.is_file():
        try:
            return np.load(path)
        except Exception:
            pass  # a damaged cache entry is recomputed
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown feature kind {kind!r} (known: {', '.join(FEATURE_KINDS)})")
    arr = _encode(backbone, make_wave(), kind, piece_s)[0]
    atomic_save_npy(arr, path)
    return arr


def _encode(backbone: Backbone, wave: np.ndarray, kind: str, piece_s: float) -> tuple[np.ndarray, np.ndarray | None]:
    """A waveform's features of one kind, and (kind "ctx") the utterance's pooled states from the same pass."""
    import torch

    with torch.no_grad():
        if kind == "utt":
            return backbone.pooled([wave])[0].cpu().numpy().astype(np.float32), None
        if kind == "pieces":
            return backbone.pieces(wave, piece_s).cpu().numpy().astype(np.float16), None
        pieces, utt = backbone.context_pieces(wave, piece_s)
        return pieces.cpu().numpy().astype(np.float16), utt.cpu().numpy().astype(np.float32)




FEATURE_KINDS = ("utt", "pieces", "ctx")


def piece_kind(cfg: SpeechTeacherConfig) -> str:
    """The feature kind of a teacher's pieces: "ctx" (piece_context whole) or "pieces" (isolated)."""
    if cfg.piece_context not in PIECE_CONTEXTS:
        raise LiserError(f"speech teacher: piece_context must be one of {', '.join(PIECE_CONTEXTS)}, "
                         f"got {cfg.piece_context!r}")
    return "ctx" if cfg.piece_context == "whole" else "pieces"




def _features_for(backbone, manifest, items, kind, cfg, progress=False, desc="features") -> list[np.ndarray]:
    from tqdm import tqdm

    out = []
    for it in tqdm(items, desc=desc, unit="file", disable=not progress, leave=False):
        out.append(cached_features(backbone, manifest, it, kind, cfg.piece_s, cfg.cache_dir))
    return out


# ---------------------------------------------------------------- training


def _items_by_id(manifest: Manifest, ids) -> list[Item]:
    by_id = {it.id: it for it in manifest.items}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise LiserError(f"{manifest.corpus} manifest: {len(missing)} ids not in it (e.g. {missing[0]})")
    return [by_id[i] for i in ids]


def _set_threads(cfg: SpeechTeacherConfig) -> None:
    if cfg.threads > 0:
        import torch

        torch.set_num_threads(cfg.threads)


@dataclass
class _FitData:
    """What one teacher fit trains and validates on (step 1 of `fit_speech_teacher`)."""

    tr: list[Item]  # inner training items
    va: list[Item]  # inner validation items (held-out speakers)
    y_tr: np.ndarray  # int64 [len(tr)] class indices
    y_va: np.ndarray  # int64 [len(va)] class indices
    x_tr: object = None  # frozen: float32 tensor [n_fit, n_states, dim] utterances (then pieces); lora: None
    x_va: object = None  # frozen: float32 tensor [len(va), n_states, dim]; lora: None
    y_fit: object = None  # frozen: int64 tensor [n_fit], the class of each row of x_tr; lora: None
    p_va: list | None = None  # train_pieces: per validation item its piece features [P, n_states, dim]
    w_fit: object = None  # utt_weight != 1: float32 tensor [n_fit], the loss weight of each row of x_tr; else None


def fit_speech_teacher(manifest: Manifest, train_ids: list[str], out_dir: str | Path,
                       cfg: SpeechTeacherConfig = SpeechTeacherConfig(), progress: bool = False,
                       classes: list[str] | None = None) -> FitResult:
    """Train a speech teacher on the given items (80/20 inner split by speaker), save the best epoch in out_dir.

    Three steps: the data (`_fit_split`, then `_fit_inputs`: cached frozen
    features, or LoRA adapters), the loop (`_fit_epochs`: one
    `_train_epoch` and one `_validate` per epoch) and the selection (the
    best-validation epoch's weights, `_keep_best`). Raises LiserError for a
    config `SpeechTeacherConfig.check` refuses (unknown mode, epochs < 1,
    train_pieces outside frozen mode, ...), ids not in the manifest or
    unlabeled items (an item whose label is not one of `classes`).

    `classes`: the head's outputs in order (the student's class set, so the
    soft labels line up with its outputs); None = every label of the manifest.

    With cfg.ensemble = M > 1 the three steps run for M members (seeds seed,
    seed+1, ...); the teacher outputs their mean probability. The FitResult's
    best_epoch, history and ids are the first member's, its val_uar the
    members' mean; teacher.json's record keeps every member's.
    """
    import torch

    cfg.check()
    _set_threads(cfg)
    classes = list(classes) if classes is not None else manifest.classes
    _fit_split(manifest, train_ids, classes, cfg)  # unknown ids, unlabeled items: refused before the backbone loads
    torch.manual_seed(cfg.seed)
    dev = resolve_device(cfg.device)
    backbone = Backbone(cfg.backbone, str(dev))
    fits = []
    for k in range(cfg.ensemble):
        if k:  # the first member draws on as the single head always did (after the backbone's load)
            torch.manual_seed(cfg.seed + k)
        fits.append(_fit_member(backbone, manifest, train_ids, classes, replace(cfg, seed=cfg.seed + k), dev, progress))
    head, record, data = fits[0]
    if cfg.ensemble > 1:  # the first member's figures stay the FitResult's; every member's record is kept
        head = _ensemble_head([f[0] for f in fits])
        record = {"best_epoch": record["best_epoch"], "val_uar": float(np.mean([f[1]["val_uar"] for f in fits])),
                  "members": [f[1] for f in fits]}
    teacher = SpeechTeacher(cfg, classes, head, backbone, record=record)
    teacher.save(out_dir)
    return FitResult(teacher=teacher, out_dir=Path(out_dir), teacher_hash=teacher.hash,
                     best_epoch=record["best_epoch"], val_uar=record["val_uar"], history=fits[0][1]["history"],
                     train_ids=[it.id for it in data.tr], val_ids=[it.id for it in data.va])


def _fit_member(backbone: Backbone, manifest: Manifest, train_ids: list[str], classes: list[str],
                cfg: SpeechTeacherConfig, dev, progress: bool) -> tuple:
    """One head fitted with cfg.seed (its inner split, epoch, refit): (head in eval mode, record, _FitData)."""
    data = _fit_split(manifest, train_ids, classes, cfg)
    head = _make_head(backbone.n_states, backbone.dim, len(classes), cfg.hidden, cfg.dropout, cfg.in_dropout,
                      cfg.head, tuple(cfg.layers))
    head.to(dev)
    rng = np.random.default_rng(cfg.seed)  # one generator for the stats sample and every LoRA crop, in this order
    params = _fit_inputs(backbone, head, manifest, data, cfg, rng, progress)
    history, best, best_state = _fit_epochs(backbone, head, params, manifest, data, cfg, dev, rng, progress)
    _keep_best(backbone, head, best_state, cfg)
    tr, va = data.tr, data.va
    record = {"best_epoch": best[1], "val_uar": best[0], "n_train": len(tr), "n_val": len(va),
              "train_speakers": sorted({it.speaker for it in tr}), "val_speakers": sorted({it.speaker for it in va}),
              "history": history}
    if cfg.refit:
        head = _refit(backbone, manifest, data, cfg, len(classes), best[1], dev, rng)
        record["refit"] = {"epochs": best[1], "n_train": len(tr) + len(va)}
    return head, record, data


def _fit_split(manifest: Manifest, train_ids: list[str], classes: list[str], cfg: SpeechTeacherConfig) -> _FitData:
    """The training items split by speaker into inner train / validation, with class indices; LiserError if unlabeled."""
    items = _items_by_id(manifest, train_ids)
    unlabeled = [it.id for it in items if it.label not in classes]
    if unlabeled:
        raise LiserError(f"{manifest.corpus} manifest: {len(unlabeled)} training items have no label (e.g. {unlabeled[0]})")
    tr, va = speaker_split(items, cfg.val_fraction, cfg.seed)
    y_tr = np.array([classes.index(it.label) for it in tr])
    y_va = np.array([classes.index(it.label) for it in va])
    return _FitData(tr, va, y_tr, y_va)


def _fit_inputs(backbone: Backbone, head, manifest: Manifest, data: _FitData, cfg: SpeechTeacherConfig,
                rng: np.random.Generator, progress: bool) -> list:
    """Ready the inputs and return the trainable parameters (the head's, then LoRA's).

    lora: adapters on the backbone, the head's standardisation from 128
    random training crops of the unchanged backbone. frozen: the cached
    features of every item into `data` (x_tr, x_va, y_fit; with
    train_pieces also every training piece and p_va), the head's
    standardisation from x_tr.
    """
    import torch

    params = list(head.parameters())
    tr, va = data.tr, data.va
    if cfg.mode == "lora":
        backbone.add_lora(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
        params += [p for p in backbone.model.parameters() if p.requires_grad]
        with torch.no_grad():  # standardisation statistics from the (still unchanged) backbone
            sample = [tr[i] for i in rng.permutation(len(tr))[:128]]
            head.set_stats(torch.cat([backbone.pooled([_crop(load_audio(manifest.abspath(it)), cfg.max_seconds, rng)])
                                      for it in sample]))
        return params
    if cfg.train_pieces:  # first: contextual pieces fill the utterance cache in the same encoder pass
        kind = piece_kind(cfg)
        p_tr = _features_for(backbone, manifest, tr, kind, cfg, progress, "piece features (train)")
        data.p_va = _features_for(backbone, manifest, va, kind, cfg, progress, "piece features (val)")
    x_tr = torch.from_numpy(np.stack(_features_for(backbone, manifest, tr, "utt", cfg, progress, "features (train)")))
    if va:  # a refit (`_refit`) has no validation items
        data.x_va = torch.from_numpy(np.stack(_features_for(backbone, manifest, va, "utt", cfg, progress,
                                                            "features (val)")))
    y_fit = torch.from_numpy(data.y_tr)
    if cfg.train_pieces:
        x_tr = torch.cat([x_tr, torch.from_numpy(np.concatenate(p_tr).astype(np.float32))])
        y_fit = torch.cat([y_fit, torch.from_numpy(np.repeat(data.y_tr, [len(p) for p in p_tr]))])
        if cfg.utt_weight != 1.0:  # whole items first, then pieces (as x_tr)
            data.w_fit = torch.cat([torch.full((len(tr),), float(cfg.utt_weight)), torch.ones(len(x_tr) - len(tr))])
    head.set_stats(x_tr)
    data.x_tr, data.y_fit = x_tr, y_fit
    return params


def _refit(backbone: Backbone, manifest: Manifest, data: _FitData, cfg: SpeechTeacherConfig, n_classes: int,
           epochs: int, dev, rng: np.random.Generator):
    """A fresh head (seeded as the first) trained on inner train + validation for `epochs` epochs, in eval mode.

    The selected epoch count is the only thing validation decided; no score
    of the refit head exists (every labeled speaker is in it). Frozen mode.
    """
    import torch

    torch.manual_seed(cfg.seed)
    head = _make_head(backbone.n_states, backbone.dim, n_classes, cfg.hidden, cfg.dropout, cfg.in_dropout,
                      cfg.head, tuple(cfg.layers)).to(dev)
    full = _FitData(data.tr + data.va, [], np.concatenate([data.y_tr, data.y_va]), np.zeros(0, np.int64))
    params = _fit_inputs(backbone, head, manifest, full, cfg, rng, progress=False)
    opt = torch.optim.AdamW(params, lr=cfg.resolved_lr(), weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(epochs):
        _train_epoch(backbone, head, opt, torch.randperm(len(full.x_tr), generator=gen).tolist(), manifest, full,
                     cfg, dev, rng)
    head.eval()
    return head


def _fit_epochs(backbone: Backbone, head, params: list, manifest: Manifest, data: _FitData, cfg: SpeechTeacherConfig,
                dev, rng: np.random.Generator, progress: bool) -> tuple[list[dict], tuple[float, int], tuple]:
    """Train for cfg.epochs epochs; returns (history rows, (best score, best epoch), best (head, LoRA) state).

    The best epoch is the first with the highest validation score (UAR;
    with train_pieces the mean of utterance and piece-averaged UAR). With
    cfg.patience > 0 the loop ends after that many epochs without a better one.
    """
    import torch

    opt = torch.optim.AdamW(params, lr=cfg.resolved_lr(), weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    n_fit = len(data.x_tr) if cfg.mode == "frozen" else len(data.tr)
    history, best, best_state = [], (-1.0, 0), None
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.time()
        order = torch.randperm(n_fit, generator=gen).tolist()
        loss = _train_epoch(backbone, head, opt, order, manifest, data, cfg, dev, rng)
        row, score = _validate(backbone, head, manifest, data, cfg, dev)
        row = {"epoch": epoch, "loss": loss, **row}
        row["seconds"] = round(time.time() - t0, 2)
        history.append(row)
        if progress:
            print(f"  epoch {epoch:2d}  loss {row['loss']:.4f}  val UAR {row['val_uar']:.4f}", flush=True)
        if score > best[0]:
            best = (score, epoch)
            best_state = ({k: v.detach().clone() for k, v in head.state_dict().items()},
                          backbone.lora_state() if cfg.mode == "lora" else None)
        if cfg.patience and epoch - best[1] >= cfg.patience:
            break
    return history, best, best_state


def _train_epoch(backbone: Backbone, head, opt, order: list[int], manifest: Manifest, data: _FitData,
                 cfg: SpeechTeacherConfig, dev, rng: np.random.Generator) -> float:
    """One pass over `order` (indices into x_tr, or into tr for lora) in batches; the mean loss, rounded."""
    import torch

    head.train()
    if cfg.mode == "lora":
        backbone.model.train()
    total, seen = 0.0, 0
    for a in range(0, len(order), cfg.batch_size):
        idx = order[a : a + cfg.batch_size]
        if cfg.mode == "frozen":
            x, y = data.x_tr[idx].to(dev), data.y_fit[idx].to(dev)
        else:
            x = backbone.pooled([_crop(load_audio(manifest.abspath(data.tr[i])), cfg.max_seconds, rng) for i in idx],
                                grad=True)
            y = torch.as_tensor(data.y_tr[idx], device=x.device)
        w = data.w_fit[idx].to(dev) if data.w_fit is not None else None
        loss = _loss(head(x), y, w, cfg.label_smoothing)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
        seen += len(idx)
    return round(total / max(seen, 1), 5)


def _loss(logits, y, weight=None, label_smoothing: float = 0.0):
    """Cross-entropy of logits [B, K] against classes y [B]: the mean, or weighted by weight [B] (sum w*l / sum w).

    The defaults take torch's plain call, so a fit without the later options is the one it always was.
    """
    import torch

    f = torch.nn.functional.cross_entropy
    kw = {"label_smoothing": label_smoothing} if label_smoothing else {}
    if weight is None:
        return f(logits, y, **kw)
    return (f(logits, y, reduction="none", **kw) * weight).sum() / weight.sum()


def _validate(backbone: Backbone, head, manifest: Manifest, data: _FitData, cfg: SpeechTeacherConfig,
              dev) -> tuple[dict, float]:
    """Inner-validation metrics of the current weights ({val_uar, val_war[, val_uar_pieces]}) and the selection score."""
    import torch

    head.eval()
    if cfg.mode == "lora":
        backbone.model.eval()
    with torch.no_grad():
        if cfg.mode == "frozen":
            logits = head(data.x_va.to(dev))
        else:
            logits = torch.cat([head(backbone.pooled([load_audio(manifest.abspath(it))])) for it in data.va])
    pred = logits.argmax(-1).cpu().numpy()
    row = {"val_uar": round(uar(data.y_va, pred), 5), "val_war": round(war(data.y_va, pred), 5)}
    score = row["val_uar"]
    if cfg.train_pieces:
        pred_p = np.array([teacher_probs.mean(0).argmax() for teacher_probs in
                           (_head_probs(head, p, dev) for p in data.p_va)])
        row["val_uar_pieces"] = round(uar(data.y_va, pred_p), 5)
        score = round((row["val_uar"] + row["val_uar_pieces"]) / 2, 5)
    return row, score


def _keep_best(backbone: Backbone, head, best_state: tuple, cfg: SpeechTeacherConfig) -> None:
    """Load the best epoch's head (and LoRA) weights back, in eval mode."""
    head.load_state_dict(best_state[0])
    head.eval()
    if cfg.mode == "lora":
        backbone.load_lora_state(best_state[1])
        backbone.model.eval()


def _head_probs(head, feats: np.ndarray, device: str) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch.softmax(head(torch.from_numpy(np.asarray(feats, np.float32)).to(device)), -1).cpu().numpy()


def _crop(wave: np.ndarray, max_seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A random max_seconds crop of a longer waveform (shorter ones unchanged)."""
    n = int(max_seconds * SAMPLE_RATE)
    if max_seconds <= 0 or len(wave) <= n:
        return wave
    a = int(rng.integers(0, len(wave) - n + 1))
    return wave[a : a + n]


# ---------------------------------------------------------------- evaluation


def evaluate_speech_teacher(teacher: SpeechTeacher, manifest: Manifest, ids: list[str], progress: bool = False) -> dict:
    """UAR / WAR on whole utterances and with piece probabilities averaged per file.

    Returns dict(uar, war, uar_pieces, war_pieces, n, per_item_probs {id: [K]},
    per_item_probs_pieces {id: [K]}). Frozen teachers use the feature cache.
    """
    from tqdm import tqdm

    items = _items_by_id(manifest, ids)
    y = np.array([teacher.classes.index(it.label) if it.label in teacher.classes else -1 for it in items])
    if (y < 0).any():
        bad = items[int(np.argmax(y < 0))]
        raise LiserError(f"{manifest.corpus} manifest: {bad.id} has label {bad.label!r}, not one of the teacher's classes")
    utt, pcs = {}, {}
    for it in tqdm(items, desc="evaluate", unit="file", disable=not progress, leave=False):
        if teacher.mode == "frozen":
            f_pcs = cached_features(teacher.encoder, manifest, it, piece_kind(teacher.cfg), teacher.piece_s,
                                    teacher.cfg.cache_dir)  # first: ctx fills the utterance cache in the same pass
            f_utt = cached_features(teacher.encoder, manifest, it, "utt", teacher.piece_s, teacher.cfg.cache_dir)
            utt[it.id] = teacher.probs_from_features(f_utt[None])[0]
            pcs[it.id] = teacher.probs_from_features(f_pcs).mean(0)
        else:
            wave = load_audio(manifest.abspath(it))
            utt[it.id] = teacher.predict(wave)
            pcs[it.id] = teacher.predict_pieces(wave).mean(0)
    p_utt = np.array([utt[it.id].argmax() for it in items])
    p_pcs = np.array([pcs[it.id].argmax() for it in items])
    return {"uar": uar(y, p_utt), "war": war(y, p_utt), "uar_pieces": uar(y, p_pcs), "war_pieces": war(y, p_pcs),
            "n": len(items), "per_item_probs": {k: v.tolist() for k, v in utt.items()},
            "per_item_probs_pieces": {k: v.tolist() for k, v in pcs.items()}}
