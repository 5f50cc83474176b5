"""`liser serve`: one web page that draws a student's emotion timeline live from the microphone.

    liser serve [MODEL] [--port 8000] [--host 127.0.0.1]

The page (static/serve.html) records from the browser's microphone, sends
the samples over a WebSocket at the microphone's own rate (float32 mono,
no browser-side resampling or processing), and draws one point per hop:
the class probabilities as stacked areas. It also takes a file upload and
draws that file's timeline.

The live timeline IS the offline one (`liser predict --timeline`), computed
as the audio arrives (`LiveTimeline`): the stream is resampled to 16 kHz
with soxr's streaming resampler (the same output, sample for sample, as the
whole-file soxr.resample a file gets), windows start on the same frame grid
(liser.audio.window_starts), and a window is computed once its last frame's
STFT has all its samples (the window plus half an FFT on each side), from a
segment aligned to the frame grid, so its frames are those of the whole
signal. When the stream stops, the remaining windows (and the last window
flush with the end) are computed as the offline path would. What differs:
each segment's mean (DC) is removed instead of the whole file's, which a
live stream cannot know.

Why FastAPI on uvicorn: a well-kept ASGI stack with WebSockets and
streamed request bodies built in (an upload over the size limit is refused
as it arrives, never read to its end); it is the optional extra `liser[serve]`,
imported only when this command runs.

Bad input never stops the server: an empty, garbage or oversized upload is
one JSON error naming the file; a bad stream message, a microphone that
closes, or a client that disconnects mid-stream ends that session only.
"""

# no `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request, WebSocket)
# as objects, and they are imported inside make_app
import dataclasses
import math
import socket
import sys
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np

from . import audio
from .errors import LiserError

DEFAULT_PORT = 8000
DEFAULT_HOST = "127.0.0.1"  # loopback only: the page and its microphone stay on this machine unless --host says otherwise
HOP_S = 0.5  # seconds between live windows: `liser predict --timeline`'s default step
MAX_UPLOAD_MB = 50.0  # a 16 kHz 16-bit WAV of 26 minutes; a compressed file holds hours
MIN_RATE, MAX_RATE = 8_000, 192_000  # microphone sample rates a session accepts (Hz)
# STFT context: a centred frame reads N_FFT/2 samples either side of its centre, so a window's 94 frames
# read its 3 s plus this much on each side
CONTEXT = audio.N_FFT // 2


# ---------------------------------------------------------------- the live timeline
class LiveTimeline:
    """`model.timeline` of a stream, computed as its audio arrives.

    push(samples) takes float32 mono samples at `sample_rate` (any length,
    any rate in [8, 192] kHz) and returns the windows that became complete;
    finish() returns the rest, as `liser predict --timeline` would end the
    same audio. Each window is a liser.predict.Prediction with start/end in
    seconds of the stream. Memory is bounded: only the samples the next
    window needs (3 s + hop + 2 x 64 ms at 16 kHz) are kept.

    Raises LiserError for NaN/inf samples, a stream that ends before any
    audio or is silent throughout (finish), a hop outside [0.1, 3] s.
    """

    def __init__(self, model, sample_rate: int, hop_s: float = HOP_S):
        import soxr

        if not 0.1 <= hop_s <= audio.CLIP_S:
            raise LiserError(f"hop {hop_s}: must be in [0.1, {audio.CLIP_S}] seconds")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or not MIN_RATE <= sample_rate <= MAX_RATE:
            raise LiserError(f"sample rate {sample_rate!r}: must be an integer in [{MIN_RATE}, {MAX_RATE}] Hz")
        self.model, self.sample_rate, self.hop_s = model, sample_rate, hop_s
        self.step = hop_s / audio.HOP_S  # hop in frames, as liser.audio.window_starts steps
        self.resampler = None if sample_rate == audio.SAMPLE_RATE else soxr.ResampleStream(
            sample_rate, audio.SAMPLE_RATE, 1, dtype="float32", quality="HQ")  # the quality of liser.audio.resample
        self.buf = np.zeros(0, np.float32)  # 16 kHz samples of the stream from sample `buf_start` on
        self.buf_start = 0
        self.total = 0  # 16 kHz samples received
        self.k = 0  # index of the next window on the grid
        self.last = -1  # start frame of the last window given out
        self.sumsq = 0.0  # of the received samples: a stream that was silent throughout is refused
        self.finished = False

    @property
    def seconds(self) -> float:
        """Seconds of audio received so far."""
        return self.total / audio.SAMPLE_RATE

    def _start(self, k: int) -> int:
        """Start frame of window k: np.arange(0, ., step)[k] rounded, as liser.audio.window_starts."""
        return int(np.round(np.float64(k) * self.step))

    def _segment_start(self, frame: int) -> int:
        return max(0, frame * audio.HOP - CONTEXT)  # a multiple of HOP: the segment's frames are on the grid

    def push(self, samples: np.ndarray) -> list:
        """Windows [Prediction] that the new samples (float32 mono at `sample_rate`) completed."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self.finished:
            raise LiserError("the stream has already been finished")
        if not np.isfinite(x).all():
            raise LiserError("the stream holds NaN or inf samples")
        if self.resampler is not None:
            x = self.resampler.resample_chunk(x, last=False)
        self._append(x)
        out = []
        while True:
            f = self._start(self.k)
            if self.total < (f + audio.CLIP_FRAMES - 1) * audio.HOP + CONTEXT:
                return out  # the STFT of window k's last frame still lacks samples
            out.append(self._window(f, self._features(f, f + audio.CLIP_FRAMES)))
            self.last = f
            self.k += 1
            # keep what the next grid window needs, and what a last window flush with the end (added by
            # finish, as window_starts adds it) may need: it starts at least 94 frames before today's end
            flush = 1 + self.total // audio.HOP - audio.CLIP_FRAMES
            self._drop_before(self._segment_start(min(self._start(self.k), flush)))

    def finish(self) -> list:
        """The remaining windows once the stream has ended: what `model.timeline` gives on the whole stream."""
        if self.finished:
            return []
        self.finished = True
        if self.resampler is not None:
            self._append(self.resampler.resample_chunk(np.zeros(0, np.float32), last=True))
        if self.total == 0:
            raise LiserError("the stream ended before any audio arrived")
        if math.sqrt(self.sumsq / self.total) < audio.SILENCE_RMS:
            raise LiserError(f"the stream was silent throughout ({self.seconds:.1f} s below -100 dBFS): "
                             "is the microphone muted?")
        if self.total < audio.CLIP_SAMPLES:  # one zero-padded window over everything, as the offline path
            return self.model.timeline(self.buf, audio.SAMPLE_RATE, self.hop_s, name="the stream")
        frames_total = 1 + self.total // audio.HOP
        starts = audio.window_starts(frames_total, self.hop_s)
        starts = starts[starts > self.last]
        if not len(starts):
            return []
        frames = self._features(int(starts[0]), frames_total)
        return [self._window(int(f), frames) for f in starts]

    def _append(self, x: np.ndarray) -> None:
        if len(x):
            self.buf = np.concatenate([self.buf, x])
            self.total += len(x)
            self.sumsq += float(np.square(x, dtype=np.float64).sum())

    def _drop_before(self, sample: int) -> None:
        if sample > self.buf_start:
            self.buf = self.buf[sample - self.buf_start :].copy()
            self.buf_start = sample

    def _features(self, first: int, stop: int) -> tuple[int, np.ndarray]:
        """(frame of row 0, [frames, 64] log-Mel) of the kept signal, covering frames first..stop-1 of the stream.

        The segment starts CONTEXT samples before frame `first` (on the frame
        grid) and ends where frame stop-1's STFT ends, or at the stream's end.
        """
        from .predict import features  # the front end liser predict uses (numpy: an ONNX model needs no torch)

        a = self._segment_start(first)
        b = min(self.total, (stop - 1) * audio.HOP + CONTEXT)
        return a // audio.HOP, features(self.buf[a - self.buf_start : b - self.buf_start])

    def _window(self, f: int, frames: tuple[int, np.ndarray]):
        """The prediction of the window starting at stream frame f (through model.timeline_frames)."""
        row0, x = frames
        w = x[f - row0 : f - row0 + audio.CLIP_FRAMES]
        (p,) = self.model.timeline_frames(w, audio.CLIP_S, audio.CLIP_S)  # exactly one window
        t0 = float(audio.frames_to_seconds(f))
        return dataclasses.replace(p, start=t0, end=min(t0 + audio.CLIP_S, self.seconds))


# ---------------------------------------------------------------- uploads
def predict_upload(model, data: bytes, name: str, hop_s: float = HOP_S) -> dict:
    """The whole-file prediction and timeline of an uploaded file's bytes, as `liser predict --timeline` gives them.

    The bytes are recognised by their content, as a path is (liser.audio.read_file:
    WAV, FLAC, Ogg/Opus, MP3, or a video's audio track). Returns a dict: name,
    duration (s), label, p, probabilities, logits and timeline (one dict per
    3 s window every `hop_s` s). Raises LiserError naming `name` for empty,
    unreadable, too short or silent input.
    """
    if not data:
        raise LiserError(f"{name}: empty upload (0 bytes)")
    with tempfile.TemporaryDirectory(prefix="liser-upload-") as d:
        tmp = Path(d) / f"upload{_suffix(name)}"  # the suffix tells the reader to try PyAV first for video
        tmp.write_bytes(data)
        try:  # predict's own readers: a long file is read in blocks, in bounded memory (liser.predict.file_frames)
            windows = model.timeline_file(tmp, hop_s)
            p = model.predict_file(tmp)
        except LiserError as e:
            why = str(e).replace(str(tmp), name)
            if "unreadable" in why or "no audio" in why.lower():
                why += " (upload an audio file: WAV, FLAC, Ogg/Opus, MP3, or a video with sound)"
            raise LiserError(why) from None
    return {"name": name, "duration": round(windows[-1].end, 3), **p.to_dict(),
            "timeline": [w.to_dict() for w in windows]}


def _suffix(name: str) -> str:
    s = Path(name).suffix.lower()
    return s if 1 < len(s) <= 6 and s[1:].isalnum() else ""


def _display_name(name: str | None) -> str:
    """The upload's base name, printable and at most 120 characters (it is echoed in messages)."""
    base = Path(str(name or "upload").replace("\\", "/")).name
    base = "".join(c for c in base if c.isprintable())[:120]
    return base or "upload"


# ---------------------------------------------------------------- the app
def make_app(model, hop_s: float = HOP_S, max_upload_mb: float = MAX_UPLOAD_MB):
    """The FastAPI app: GET / (the page), GET /api/info, POST /api/predict (upload), WebSocket /api/live.

    POST /api/predict?name=FILE takes the file's bytes as the request body
    (no multipart) and answers `predict_upload`'s dict, or {"error": message}
    with 400 (unusable file) or 413 (over `max_upload_mb`). /api/live?rate=HZ
    takes binary messages of float32 little-endian mono samples at HZ and the
    text "stop"; it answers JSON messages: {"type": "ready"}, one {"type":
    "window", ...Prediction.to_dict()} per window, {"type": "done"} after
    "stop", or {"type": "error", "message"} before closing.
    """
    from fastapi import FastAPI, Request, WebSocket
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool

    limit = int(max_upload_mb * 1_000_000)
    page = resources.files("liser").joinpath("static/serve.html").read_text(encoding="utf-8")
    app = FastAPI(title="liser serve", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return page

    @app.get("/api/info")
    async def info():
        return {"model": Path(model.source).name, "kind": model.info.get("kind"), "classes": model.classes,
                "hop_s": hop_s, "max_upload_mb": max_upload_mb}

    @app.post("/api/predict")
    async def upload(request: Request, name: str = "upload"):
        name = _display_name(name)
        too_big = JSONResponse({"error": f"{name}: over the upload limit of {max_upload_mb:g} MB "
                                         "(liser serve --max-upload-mb raises it)"}, status_code=413)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return too_big  # said before a byte of it is read
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return too_big
        try:
            return await run_in_threadpool(predict_upload, model, bytes(body), name, hop_s)
        except LiserError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        except Exception as e:  # a bug or a decoder's crash on a hostile file: said, and the server goes on
            _log().exception("upload %s failed", name)
            return JSONResponse({"error": f"{name}: {type(e).__name__}: {_first_line(e)}"}, status_code=500)

    @app.websocket("/api/live")
    async def live(ws: WebSocket):
        await ws.accept()
        await _live_session(ws, model, hop_s, run_in_threadpool)

    return app


async def _live_session(ws, model, hop_s: float, run_in_threadpool) -> None:
    """One microphone session on an accepted WebSocket; every way it can end leaves the server serving."""
    from starlette.websockets import WebSocketDisconnect

    timeline = None
    try:
        rate = ws.query_params.get("rate", "")
        if not rate.isdigit():
            raise LiserError(f"rate={rate!r}: the stream's sample rate must be given as an integer (/api/live?rate=48000)")
        timeline = LiveTimeline(model, int(rate), hop_s)
        await ws.send_json({"type": "ready", "classes": model.classes, "hop_s": hop_s, "rate": int(rate)})
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(msg.get("code", 1000))
            if msg.get("bytes") is not None:
                data = msg["bytes"]
                if len(data) % 4:
                    raise LiserError(f"a binary message of {len(data)} bytes: samples must be float32 (4 bytes each)")
                windows = await run_in_threadpool(timeline.push, np.frombuffer(data, dtype="<f4"))
            elif msg.get("text") == "stop":
                windows = await run_in_threadpool(timeline.finish)
            else:
                raise LiserError(f"message {str(msg.get('text'))[:40]!r} not understood (send float32 samples, then 'stop')")
            for w in windows:
                await ws.send_json({"type": "window", **w.to_dict()})
            if timeline.finished:
                await ws.send_json({"type": "done", "seconds": round(timeline.seconds, 3)})
                await ws.close()
                return
    except WebSocketDisconnect:
        heard = f" after {timeline.seconds:.1f} s of audio" if timeline else ""
        _log().info("live session: the client disconnected%s", heard)
    except LiserError as e:
        _log().info("live session: %s", e)
        await _say_and_close(ws, str(e))
    except Exception as e:  # a bug: said to the client and logged with its traceback; other sessions go on
        _log().exception("live session failed")
        await _say_and_close(ws, f"{type(e).__name__}: {_first_line(e)}")


async def _say_and_close(ws, message: str) -> None:
    try:
        await ws.send_json({"type": "error", "message": message})
        await ws.close(code=1008)
    except Exception:  # the client has already gone: nothing left to tell it
        pass


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def _log():
    import logging

    return logging.getLogger("uvicorn.error")  # uvicorn's own log: one stream, one format, on stderr


# ---------------------------------------------------------------- the command
def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (port 0: a free one), or LiserError saying why it cannot be."""
    if not 0 <= port <= 65535:
        raise LiserError(f"--port {port}: must be in 0..65535")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except (OSError, IndexError) as e:
        raise LiserError(f"--host {host}: not an address to listen on ({_first_line(e)})") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise LiserError(f"{host}:{port}: cannot listen ({e.strerror or e}); choose another --port") from None
    return sock


def run_serve(model_path: str | None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, hop_s: float = HOP_S,
              max_upload_mb: float = MAX_UPLOAD_MB, threads: int | None = None) -> int:
    """`liser serve`: load the model (None: the packaged default), listen, serve the page until Ctrl-C; returns 0.

    Raises LiserError for a model that is not a liser model, a missing
    `liser[serve]` extra, a port that cannot be bound or bad settings.
    """
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise LiserError(f"`liser serve` needs {e.name or 'fastapi and uvicorn'}: pip install 'liser[serve]'") from None
    from .predict import load

    if not 0.1 <= hop_s <= audio.CLIP_S:
        raise LiserError(f"--hop {hop_s}: must be in [0.1, {audio.CLIP_S}] seconds")
    if not max_upload_mb > 0:
        raise LiserError(f"--max-upload-mb {max_upload_mb}: must be positive")
    model = load(model_path, threads=threads)  # None: the packaged default model (liser.default_model)
    sock = listen(host, port)
    url_host = f"[{host}]" if ":" in host else host
    print(f"liser serve: {model.source} ({', '.join(model.classes)}) on http://{url_host}:{sock.getsockname()[1]}/ "
          "(Ctrl-C stops)", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print("liser serve: listening beyond this machine; browsers give the microphone only to https or "
              "localhost pages, so remote visitors can upload files but not record", file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(make_app(model, hop_s, max_upload_mb), log_level="info", access_log=False))
    server.run(sockets=[sock])
    return 0
