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
(liser.data.audio.window_starts), and a window is computed once its last frame's
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

What one client may cost is bounded by `ServeLimits` (liser.inference.serve_limits,
docs/serve.md): upload bytes, decoded seconds, sample rate, channels, CPU
and wall time per upload (checked between decoded blocks and batches of
windows, which is also where the work stops when the client has gone),
open connections and live sessions, idle time, how much faster than real
time a stream is read, and how long shutdown waits. Requests from a page
of another origin (its Origin header) are refused unless allowed, and so
are Host names the server is not known by (a DNS-rebinding page).
"""

# no `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request, WebSocket)
# as objects, and they are imported inside make_app
import dataclasses
import math
import os
import re
import socket
import sys
import time
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from liser.data import audio
from liser.core.errors import LiserError
from liser.inference.serve_limits import (MAX_AMPLITUDE, Cancelled, LimitError, ServeLimits, WorkBudget, decode_upload,
                           guarded_model, remove_stale_uploads, upload_file)

DEFAULT_PORT = 8000
DEFAULT_HOST = "127.0.0.1"  # loopback only: the page and its microphone stay on this machine unless --host says otherwise
HOP_S = 0.5  # seconds between live windows: `liser predict --timeline`'s default step
MAX_UPLOAD_MB = ServeLimits.max_upload_mb  # a 16 kHz 16-bit WAV of 26 minutes; a compressed file holds hours
MIN_RATE, MAX_RATE = ServeLimits.min_rate_hz, ServeLimits.max_rate_hz  # sample rates a session accepts (Hz)
POLL_S = 0.2  # how often a running upload's job asks whether its client is still connected
FEATURE_BLOCK_S = 30.0  # an upload longer than FEATURES_WHOLE_S gets its log-Mel in blocks of this many seconds
# longer uploads: log-Mel in blocks (liser.data.frontend.features_from_blocks), as `liser predict` does past 5 min;
# a whole-file STFT of 10 min would take about 300 MB
FEATURES_WHOLE_S = 60.0
FD_HEADROOM = 16  # descriptors kept free beyond the connections: temporary uploads, the log, the model's files
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")  # the Host names a loopback server answers by default
# STFT context: a centred frame reads N_FFT/2 samples either side of its centre, so a window's 94 frames
# read its 3 s plus this much on each side
CONTEXT = audio.N_FFT // 2


# ---------------------------------------------------------------- the live timeline
class LiveTimeline:
    """`model.timeline` of a stream, computed as its audio arrives.

    push(samples) takes float32 mono samples at `sample_rate` (any length,
    any rate in [8, 192] kHz) and returns the windows that became complete;
    finish() returns the rest, as `liser predict --timeline` would end the
    same audio. Each window is a liser.inference.model.Prediction with start/end in
    seconds of the stream. Memory is bounded: only the samples the next
    window needs (3 s + hop + 2 x 64 ms at 16 kHz) are kept.

    `window_s` (1-3 s, a "speech" model for less than 3 s) is `timeline`'s
    window: a shorter window's speech is found on the 3 s of frames around
    it, so it is given once the audio reaches 3 s - (3 s - window) / 2 past
    its start, about 0.75 s after its end for 1.5 s (docs/results/timeline.md).

    Raises LiserError for NaN/inf samples or samples over MAX_AMPLITUDE, a
    stream that ends before any audio or is silent throughout (finish), a
    hop outside [0.1, 3] s, a window the model cannot score (window_frames),
    a rate outside [min_rate, max_rate] Hz.
    """

    def __init__(self, model, sample_rate: int, hop_s: float = HOP_S, min_rate: int = MIN_RATE,
                 max_rate: int = MAX_RATE, window_s: float = audio.CLIP_S):
        import soxr

        from liser.inference.model import window_frames

        if not 0.1 <= hop_s <= audio.CLIP_S:
            raise LiserError(f"hop {hop_s}: must be in [0.1, {audio.CLIP_S}] seconds")
        self.window_s, self.length = window_s, window_frames(window_s, model.windowing)
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or not min_rate <= sample_rate <= max_rate:
            raise LiserError(f"sample rate {sample_rate!r}: must be an integer in [{min_rate}, {max_rate}] Hz")
        self.model, self.sample_rate, self.hop_s = model, sample_rate, hop_s
        self.step = hop_s / audio.HOP_S  # hop in frames, as liser.data.audio.window_starts steps
        self.resampler = None if sample_rate == audio.SAMPLE_RATE else soxr.ResampleStream(
            sample_rate, audio.SAMPLE_RATE, 1, dtype="float32", quality="HQ")  # the quality of liser.data.audio.resample
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
        """Start frame of window k: np.arange(0, ., step)[k] rounded, as liser.data.audio.window_starts."""
        return int(np.round(np.float64(k) * self.step))

    def _context(self, f: int, n_frames: int | None = None) -> int:
        """First frame of the 3 s the window starting at frame f is scored from: f itself for a 3 s window, else
        the 3 s centred on it (EmotionModel._span_logits), clamped to the signal's n_frames once it is known."""
        if self.length == audio.CLIP_FRAMES:
            return f
        c = max(0, f + self.length // 2 - audio.CLIP_FRAMES // 2)
        return c if n_frames is None else int(min(c, n_frames - audio.CLIP_FRAMES))

    def _segment_start(self, frame: int) -> int:
        return max(0, frame * audio.HOP - CONTEXT)  # a multiple of HOP: the segment's frames are on the grid

    def push(self, samples: np.ndarray) -> list:
        """Windows [Prediction] that the new samples (float32 mono at `sample_rate`) completed."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self.finished:
            raise LiserError("the stream has already been finished")
        audio.check_samples(x, "the stream")
        if len(x) and float(np.abs(x).max()) > MAX_AMPLITUDE:
            raise LiserError(f"the stream's samples reach {float(np.abs(x).max()):.1e}, over {MAX_AMPLITUDE:g} x full "
                             "scale: not audio at any gain (send float32 samples in [-1, 1])")
        if self.resampler is not None:
            x = self.resampler.resample_chunk(x, last=False)
        self._append(x)
        out = []
        while True:
            f = self._start(self.k)
            c = self._context(f)
            if self.total < (c + audio.CLIP_FRAMES - 1) * audio.HOP + CONTEXT:
                return out  # the STFT of the last frame window k is scored from still lacks samples
            out.append(self._window(f, c, self._features(c, c + audio.CLIP_FRAMES)))
            self.last = f
            self.k += 1
            # keep what the next grid window needs, and what a last window flush with the end (added by
            # finish, as window_starts adds it) may need: its 3 s start at least 94 frames before today's end
            flush = 1 + self.total // audio.HOP - audio.CLIP_FRAMES
            self._drop_before(self._segment_start(min(self._context(self._start(self.k)), flush)))

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
            return self.model.timeline(self.buf, audio.SAMPLE_RATE, self.hop_s, name="the stream",
                                       window_s=self.window_s)
        frames_total = 1 + self.total // audio.HOP
        # the grid of EmotionModel.timeline_frames: windows of `length` frames up to the signal's end
        n = frames_total if self.length == audio.CLIP_FRAMES else \
            max(self.length, min(frames_total, int(round(self.seconds / audio.HOP_S)) + 1))
        starts = audio.window_starts(n - self.length + audio.CLIP_FRAMES, self.hop_s)
        starts = starts[starts > self.last]
        if not len(starts):
            return []
        frames = self._features(self._context(int(starts[0]), frames_total), frames_total)
        return [self._window(int(f), self._context(int(f), frames_total), frames) for f in starts]

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
        from liser.inference.decode import features  # the front end liser predict uses (numpy: an ONNX model needs no torch)

        a = self._segment_start(first)
        b = min(self.total, (stop - 1) * audio.HOP + CONTEXT)
        return a // audio.HOP, features(self.buf[a - self.buf_start : b - self.buf_start])

    def _window(self, f: int, c: int, frames: tuple[int, np.ndarray]):
        """The prediction of the window starting at stream frame f, scored from the 3 s starting at frame c
        (`_context`), as model.timeline_frames scores it."""
        from liser.inference.model import _window_prediction

        row0, x = frames
        w = x[c - row0 : c - row0 + audio.CLIP_FRAMES]
        t0 = float(audio.frames_to_seconds(f))
        if self.length == audio.CLIP_FRAMES:
            (p,) = self.model.timeline_frames(w, audio.CLIP_S, audio.CLIP_S)  # exactly one window
            return dataclasses.replace(p, start=t0, end=min(t0 + audio.CLIP_S, self.seconds))
        (z,) = self.model._span_logits(w, np.array([f - c]), self.length)
        return _window_prediction(z, self.model.classes, t0, min(t0 + self.length * audio.HOP_S, self.seconds))


# ---------------------------------------------------------------- uploads
def predict_upload(model, upload, name: str, hop_s: float = HOP_S, limits: ServeLimits = ServeLimits(),
                   budget: WorkBudget | None = None, window_s: float = audio.CLIP_S) -> dict:
    """The whole-file prediction and timeline of an upload, as `liser predict --timeline` gives them.

    `upload` is the received file (a Path) or its bytes. It is decoded
    within `limits` (liser.inference.serve_limits.decode_upload: recognised by its
    content as a path is, WAV, FLAC, Ogg/Opus, MP3, or a video's audio
    track), its log-Mel computed once, and the network run on it through
    `budget` (checked between batches of windows). Returns a dict: name,
    duration (s), label, p, probabilities, logits and timeline (one dict
    per `window_s` window every `hop_s` s). Raises LimitError (413/415/422) past
    a limit, LiserError naming `name` for empty, unreadable, too short or
    silent input, Cancelled once `budget` is cancelled.
    """
    from liser.inference.model import _prediction

    budget = budget or WorkBudget(name, limits)
    budget.begin()  # CPU time is counted in this thread from here
    if isinstance(upload, (bytes, bytearray)):
        if not upload:
            raise LiserError(f"{name}: empty upload (0 bytes)")
        path = upload_file(_suffix(name))
        try:
            path.write_bytes(upload)
            return predict_upload(model, path, name, hop_s, limits, budget, window_s)
        finally:
            path.unlink(missing_ok=True)
    try:
        sig = decode_upload(Path(upload), name, limits, budget)
    except LimitError:
        raise
    except LiserError as e:
        why = str(e)
        if "unreadable" in why or "no audio" in why.lower():
            why += " (upload an audio file: WAV, FLAC, Ogg/Opus, MP3, or a video with sound)"
        raise LiserError(why) from None
    check_signal(sig, name)
    frames = _features(sig, budget)
    m = guarded_model(model, budget)
    windows = m.timeline_frames(frames, len(sig) / audio.SAMPLE_RATE, hop_s, window_s)
    p = _prediction(m.file_logits(frames, name), m.classes)
    return {"name": name, "duration": round(windows[-1].end, 3), **p.to_dict(),
            "timeline": [w.to_dict() for w in windows]}


def check_signal(sig: np.ndarray, name: str, block: int = 1 << 20) -> None:
    """liser.inference.decode.prepare_waveform's checks of a decoded mono 16 kHz signal, in float64 blocks of `block` samples.

    LiserError naming `name` for a signal shorter than MIN_DURATION_S or
    silent (RMS after removing the mean below -100 dBFS); NaN/inf were
    refused while decoding. prepare_waveform's np.var of the whole signal
    would hold it again as float64 (77 MB for 10 minutes).
    """
    from liser.inference.decode import MIN_DURATION_S

    seconds = len(sig) / audio.SAMPLE_RATE
    if seconds < MIN_DURATION_S:
        raise LiserError(f"{name}: too short ({seconds:.3f} s; at least {MIN_DURATION_S} s is needed)")
    mean = sum(float(sig[a : a + block].sum(dtype=np.float64)) for a in range(0, len(sig), block)) / len(sig)
    sumsq = sum(float(np.square(sig[a : a + block].astype(np.float64) - mean).sum()) for a in range(0, len(sig), block))
    rms = math.sqrt(sumsq / len(sig))
    if rms < audio.SILENCE_RMS:
        raise LiserError(f"{name}: silent (RMS {rms:.1e} after removing the mean; all zeros, constant, or below "
                         "-100 dBFS)")


def _features(sig: np.ndarray, budget: WorkBudget) -> np.ndarray:
    """[frames, 64] log-Mel of a 16 kHz signal: whole up to FEATURES_WHOLE_S, else in blocks (budget checked)."""
    from liser.data import frontend
    from liser.inference.decode import features

    if len(sig) <= FEATURES_WHOLE_S * audio.SAMPLE_RATE:
        return features(sig)
    step = int(FEATURE_BLOCK_S * audio.SAMPLE_RATE)

    def blocks():
        for a in range(0, len(sig), step):
            budget.check()
            yield sig[a : a + step]

    return frontend.features_from_blocks(blocks(), float(sig.mean(dtype=np.float64)), len(sig))


def _suffix(name: str) -> str:
    s = Path(name).suffix.lower()
    return s if 1 < len(s) <= 6 and s[1:].isalnum() else ""


def _display_name(name: str | None) -> str:
    """The upload's base name, printable and at most 120 characters (it is echoed in messages)."""
    base = Path(str(name or "upload").replace("\\", "/")).name
    base = "".join(c for c in base if c.isprintable())[:120]
    return base or "upload"


async def _body_chunks(request, name: str, limits: ServeLimits):
    """The request body's chunks as they arrive; LimitError 408 when none comes for idle_timeout_s,
    413 past max_upload_mb (also when Content-Length says so, before a byte is read)."""
    import anyio

    limit = int(limits.max_upload_mb * 1_000_000)
    too_big = LimitError(413, f"{name}: over the upload limit of {limits.max_upload_mb:g} MB "
                              "(liser serve --max-upload-mb raises it)")
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise too_big
    stream, n = request.stream(), 0
    while True:
        try:
            with anyio.fail_after(limits.idle_timeout_s):
                chunk = await stream.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise LimitError(408, f"{name}: no upload bytes for {limits.idle_timeout_s:g} s; the upload was "
                                  "dropped (liser serve --idle-timeout-s)") from None
        n += len(chunk)
        if n > limit:
            raise too_big
        yield chunk


async def receive_upload(request, name: str | None, limits: ServeLimits) -> tuple[Path, str]:
    """The upload written to a temporary file as it arrives (never held whole in memory), and its display name.

    The body is the file's bytes, or multipart/form-data whose `file`
    field is the file (a browser form; its filename names the upload when
    the query does not). The caller removes the file. Raises LimitError
    (408, 413), LiserError (a multipart body without a `file` field) or
    starlette's ClientDisconnect.
    """
    ctype = request.headers.get("content-type", "")
    form = ctype.split(";")[0].strip().lower() == "multipart/form-data"
    shown = _display_name(name)
    path = upload_file(_suffix(shown))
    try:
        with open(path, "wb") as f:
            if form:
                shown = await _receive_multipart(request, ctype, f, name, shown, limits)
            else:
                async for chunk in _body_chunks(request, shown, limits):
                    f.write(chunk)
        if form and _suffix(shown) != path.suffix:  # the part's filename gives the suffix PyAV is told
            path = path.rename(path.with_name(path.stem + _suffix(shown)))
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path, shown


async def _receive_multipart(request, ctype: str, f, name: str | None, shown: str, limits: ServeLimits) -> str:
    """Stream a multipart/form-data body's `file` field into `f` (python-multipart's push parser); its display name."""
    from python_multipart import MultipartParser
    from python_multipart.multipart import parse_options_header

    _, options = parse_options_header(ctype)
    boundary = options.get(b"boundary")
    if not boundary:
        raise LiserError(f"{shown}: a multipart upload without a boundary in its Content-Type")
    part = {"headers": {}, "field": b"", "value": b"", "is_file": False}
    found = {"file": False, "filename": None}

    def on_part_begin():
        part.update(headers={}, field=b"", value=b"", is_file=False)

    def on_header_field(data, start, end):
        part["field"] += data[start:end]

    def on_header_value(data, start, end):
        part["value"] += data[start:end]

    def on_header_end():
        part["headers"][part["field"].lower()] = part["value"]
        part["field"], part["value"] = b"", b""

    def on_headers_finished():
        _, disp = parse_options_header(part["headers"].get(b"content-disposition", b""))
        if disp.get(b"name") == b"file" and not found["file"]:
            part["is_file"] = found["file"] = True
            fn = disp.get(b"filename")
            found["filename"] = fn.decode("utf-8", "replace") if fn else None

    def on_part_data(data, start, end):
        if part["is_file"]:
            f.write(data[start:end])

    parser = MultipartParser(boundary, {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                                        "on_header_value": on_header_value, "on_header_end": on_header_end,
                                        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data})
    try:
        async for chunk in _body_chunks(request, shown, limits):
            parser.write(chunk)
        parser.finalize()
    except LiserError:
        raise
    except Exception as e:  # python-multipart's MultipartParseError and kin
        raise LiserError(f"{shown}: a malformed multipart upload ({_first_line(e)})") from None
    if not found["file"]:
        raise LiserError(f"{shown}: a multipart upload without a 'file' field (send the file as the field 'file', "
                         "or as the request body)")
    return shown if name is not None else _display_name(found["filename"])


async def _run_job(request, budget: WorkBudget, job, limiter):
    """`job()` in a worker thread (at most `limiter`'s count at once), cancelled when the client disconnects.

    While it runs, the client's connection is polled every POLL_S; when it
    has gone, or this request is cancelled (the server stopping), the
    budget is cancelled and the job stops at its next check.
    """
    import anyio

    async def watch():
        while not budget.cancelled:
            await anyio.sleep(POLL_S)
            if await request.is_disconnected():
                budget.cancel()

    outcome = {}
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            try:
                outcome["value"] = await anyio.to_thread.run_sync(job, limiter=limiter, abandon_on_cancel=True)
            except Exception as e:  # raised below, outside the task group (which would wrap it in a group)
                outcome["error"] = e
            finally:
                tg.cancel_scope.cancel()
    except BaseException:  # cancelled: the server is stopping
        budget.cancel()  # the worker thread, if still running, stops at its next check
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# ---------------------------------------------------------------- who may ask
def _host_port(netloc: str, scheme: str) -> tuple[str, int | None] | None:
    """(host lower-cased, port with the scheme's default) of 'host[:port]', or None when it is not one."""
    try:
        u = urlsplit(f"//{netloc}")
        port = u.port
    except ValueError:
        return None
    if not u.hostname:
        return None
    default = {"http": 80, "ws": 80, "https": 443, "wss": 443}.get(scheme)
    return u.hostname.lower(), port if port is not None else default


def cross_site_refusal(scope: dict, headers, limits: ServeLimits) -> str | None:
    """Why a request may not be served (one line), or None.

    Host: with limits.allow_hosts set, the Host header's name must be one
    of them (a DNS-rebinding page reaches a loopback server under its own
    name). Origin, for POST and WebSocket only: absent (not a browser's
    cross-site request), the page's own (Origin's host:port equals Host's),
    or listed in limits.allow_origins ("*": any).
    """
    host = headers.get("host", "")
    scheme = scope.get("scheme", "http")
    hp = _host_port(host, scheme)
    if limits.allow_hosts and "*" not in limits.allow_hosts:
        names = {h.lower().strip("[]") for h in limits.allow_hosts}
        if hp is None or hp[0].strip("[]") not in names:
            return (f"Host {host[:80]!r} is not a name of this server (liser serve --allow-host NAME adds one; "
                    f"now: {', '.join(sorted(names))})")
    if scope["type"] == "http" and scope.get("method") != "POST":
        return None
    origin = headers.get("origin")
    if origin is None or "*" in limits.allow_origins or origin in limits.allow_origins:
        return None
    u = urlsplit(origin)
    mine = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    if hp is not None and u.scheme in ("http", "https") and _host_port(u.netloc, u.scheme) == _host_port(host, mine):
        return None
    return (f"a request from the page at {origin[:80]!r} refused: this server answers its own page only "
            f"(liser serve --allow-origin {origin[:80]} allows that one)")


class SiteGuard:
    """ASGI middleware: refuses with 403 and one JSON line what `cross_site_refusal` refuses.

    A WebSocket is refused before it opens, with an HTTP 403 where the
    server supports denial responses (uvicorn does), else closed (1008).
    """

    def __init__(self, app, limits: ServeLimits):
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            from starlette.datastructures import Headers

            why = cross_site_refusal(scope, Headers(scope=scope), self.limits)
            if why is not None:
                _log().info("refused: %s", why)
                await _refuse(scope, receive, send, 403, why)
                return
        await self.app(scope, receive, send)


async def _refuse(scope, receive, send, status: int, message: str) -> None:
    """Answer an HTTP request, or refuse a WebSocket before it opens, with `status` and {"error": message}."""
    from fastapi.responses import JSONResponse

    response = JSONResponse({"error": message}, status_code=status)
    if scope["type"] == "http" or "websocket.http.response" in scope.get("extensions", {}):
        await response(scope, receive, send)  # a WebSocket's: starlette sends it as websocket.http.response.*
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})


# ---------------------------------------------------------------- the page's on-device mode
# onnxruntime-web, installed from the npm registry by `npm ci` in examples/browser (its package-lock.json);
# found there in a source checkout when --ort-web is not given
ORT_WEB_CHECKOUT = Path(__file__).resolve().parents[3] / "examples" / "browser" / "node_modules" / "onnxruntime-web"
ORT_WEB_SCRIPT = "ort.wasm.min.js"  # the WASM-only build: the page needs no WebGL or WebGPU
ORT_WEB_INSTALL = ("on this device needs onnxruntime-web: run `npm ci` in examples/browser, then restart liser serve "
                   "(or liser serve --ort-web DIR)")
ORT_WEB_FILE = r"^ort[A-Za-z0-9._-]*\.(js|mjs|wasm)$"  # the names /ort/ serves from the dist folder: nothing else


def find_ort_web(path: str | Path | None = None) -> Path | None:
    """onnxruntime-web's dist folder: under `path` (the package folder or its dist/), else under the checkout's
    examples/browser when it was installed there; None when not found. LiserError when `path` has no build."""
    for d in ([Path(path), Path(path) / "dist"] if path is not None else [ORT_WEB_CHECKOUT / "dist"]):
        if (d / ORT_WEB_SCRIPT).is_file():
            return d.resolve()
    if path is not None:
        raise LiserError(f"--ort-web {path}: no onnxruntime-web build there (no {ORT_WEB_SCRIPT} in it or its dist/; "
                         "`npm ci` in examples/browser installs one)")
    return None


def device_refusal(model, ort_web: Path | None, window_s: float = audio.CLIP_S) -> str | None:
    """Why the page cannot run `model` on the device (one line), or None when it can."""
    if window_s != audio.CLIP_S:
        return (f"the on-device mode scores 3 s windows only, and this server's timeline has {window_s:g} s "
                "windows (liser serve --window): recordings are scored on the server")
    if ort_web is None:
        return ORT_WEB_INSTALL
    if model.info.get("kind") != "onnx":
        return ("on this device runs ONNX models: `liser export` this model, then liser serve the .onnx "
                "(the default model is one)")
    return None


def device_model_bytes(model) -> bytes:
    """The timeline-window graph (liser.inference.waveform_onnx.build_window) around the server's own ONNX student, so
    the page's windows are the server's."""
    from liser.inference.waveform_onnx import window_graph_bytes

    return window_graph_bytes(model.source)


# ---------------------------------------------------------------- the app
def make_app(model, hop_s: float = HOP_S, max_upload_mb: float | None = None, limits: ServeLimits = ServeLimits(),
             ort_web: Path | None = None, window_s: float = audio.CLIP_S):
    """The FastAPI app: GET / (the page), GET /api/info, POST /api/predict (upload), WebSocket /api/live, and
    for the page's on-device mode GET /api/device/model.onnx and GET /ort/NAME (onnxruntime-web's files from
    the folder `ort_web`, find_ort_web's; None: the mode says what to install).

    POST /api/predict?name=FILE takes the file's bytes as the request body,
    or a multipart/form-data body with the file in its `file` field, and
    answers `predict_upload`'s dict, or {"error": message} with 400
    (unusable file), 403 (another site's page), 408 (the upload stalled),
    413 (over a size, duration, CPU or time limit), 415 (a sample rate or
    channel count outside the limits) or 422 (NaN/inf or absurd samples).
    /api/live?rate=HZ takes binary messages of float32 little-endian mono
    samples at HZ and the text "stop"; it answers JSON messages: {"type":
    "ready"}, one {"type": "window", ...Prediction.to_dict()} per window,
    {"type": "done"} after "stop", or {"type": "error", "message"} before
    closing. `limits` bounds each client (`max_upload_mb`, when given,
    overrides its field).
    """
    from fastapi import FastAPI

    limits = limits.replace(max_upload_mb=max_upload_mb)
    limits.check()
    app = FastAPI(title="liser serve", docs_url=None, redoc_url=None, openapi_url=None)
    _page_routes(app, model, hop_s, limits, ort_web, window_s)
    _work_routes(app, model, hop_s, limits, window_s)
    return SiteGuard(app, limits)


def _page_routes(app, model, hop_s: float, limits: ServeLimits, ort_web: Path | None,
                 window_s: float = audio.CLIP_S) -> None:
    """GET /, /device.js, /api/info, and the on-device mode's /api/device/model.onnx and /ort/NAME (make_app)."""
    import anyio
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    page = resources.files("liser.inference").joinpath("static/serve.html").read_text(encoding="utf-8")
    device_js = resources.files("liser.inference").joinpath("static/device.js").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return page

    @app.get("/device.js")
    async def device_script():
        return Response(device_js, media_type="text/javascript")

    @app.get("/api/info")
    async def info():
        return {"model": Path(model.source).name, "kind": model.info.get("kind"), "classes": model.classes,
                "hop_s": hop_s, "window_s": window_s, "max_upload_mb": limits.max_upload_mb, "max_seconds": limits.max_seconds,
                "device": {"ready": refusal is None, "why": refusal, "script": f"/ort/{ORT_WEB_SCRIPT}",
                           "model": "/api/device/model.onnx"}}

    refusal = device_refusal(model, ort_web, window_s)
    device_graph = {}  # built on the first request, then kept: {"bytes": ...}
    build_lock = anyio.Lock()

    @app.get("/api/device/model.onnx")
    async def device_model():
        if refusal is not None:
            return JSONResponse({"error": refusal}, status_code=404)
        async with build_lock:
            if "bytes" not in device_graph:
                device_graph["bytes"] = await run_in_threadpool(device_model_bytes, model)
        return Response(device_graph["bytes"], media_type="application/octet-stream",
                        headers={"cache-control": "no-store"})

    @app.get("/ort/{name}")
    async def ort_file(name: str):
        if ort_web is None or not re.match(ORT_WEB_FILE, name) or not (ort_web / name).is_file():
            return JSONResponse({"error": f"/ort/{name[:80]}: not found"}, status_code=404)
        kind = "application/wasm" if name.endswith(".wasm") else "text/javascript"
        return FileResponse(ort_web / name, media_type=kind)


def _work_routes(app, model, hop_s: float, limits: ServeLimits, window_s: float = audio.CLIP_S) -> None:
    """POST /api/predict and the WebSocket /api/live (make_app), each client within `limits`."""
    import anyio
    from fastapi import Request, WebSocket
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect

    jobs = anyio.CapacityLimiter(limits.max_jobs)
    live_sessions = set()  # the open WebSockets (max_websockets)

    @app.post("/api/predict")
    async def upload(request: Request, name: str | None = None):
        shown, path = _display_name(name), None
        try:
            path, shown = await receive_upload(request, name, limits)
            budget = WorkBudget(shown, limits)
            return await _run_job(request, budget, lambda: predict_upload(model, path, shown, hop_s, limits, budget, window_s),
                                  jobs)
        except LimitError as e:
            _log().info("upload refused: %s", e)
            return JSONResponse({"error": str(e)}, status_code=e.status)
        except LiserError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        except (ClientDisconnect, Cancelled):  # nobody is left to answer: one line in the log, no traceback
            _log().info("upload %s: the client disconnected%s; its work was stopped", shown,
                        "" if path is None else " before the answer")
            return JSONResponse({"error": f"{shown}: the client disconnected"}, status_code=400)
        except Exception:  # a bug or a decoder's crash on a hostile file: logged, and the server goes on
            _log().exception("upload %s failed", shown)
            return JSONResponse({"error": f"{shown}: the server failed to read it (an internal error; the server's "
                                          "log has the details)"}, status_code=500)
        finally:
            if path is not None:
                path.unlink(missing_ok=True)

    @app.websocket("/api/live")
    async def live(ws: WebSocket):
        if len(live_sessions) >= limits.max_websockets:
            _log().info("live session refused: %d open", len(live_sessions))
            await _refuse(ws.scope, ws.receive, ws.send, 503,
                          f"{len(live_sessions)} live sessions are open, the most this server takes; try again "
                          "later (liser serve --max-websockets)")
            return
        live_sessions.add(ws)
        try:
            await ws.accept()
            await _live_session(ws, model, hop_s, run_in_threadpool, limits, window_s)
        finally:
            live_sessions.discard(ws)


async def _live_session(ws, model, hop_s: float, run_in_threadpool, limits: ServeLimits = ServeLimits(),
                        window_s: float = audio.CLIP_S) -> None:
    """One microphone session on an accepted WebSocket; every way it can end leaves the server serving.

    Closed when no message comes for limits.idle_timeout_s; audio is taken
    at most limits.stream_rate x real time after a head start of
    stream_burst_s (faster messages are read later: the client waits), and
    a stream held back for more than stream_max_wait_s in all is refused.
    """
    import anyio
    from starlette.websockets import WebSocketDisconnect

    timeline = None
    try:
        rate = ws.query_params.get("rate", "")
        if not (rate.isascii() and rate.isdigit() and len(rate) <= 9):
            raise LiserError(f"rate={rate[:20]!r}: the stream's sample rate must be given as an integer "
                             "(/api/live?rate=48000)")
        timeline = LiveTimeline(model, int(rate), hop_s, limits.min_rate_hz, limits.max_rate_hz, window_s)
        await ws.send_json({"type": "ready", "classes": model.classes, "hop_s": hop_s, "window_s": window_s,
                            "rate": int(rate)})
        t0, heard, waited = time.monotonic(), 0.0, 0.0
        while True:
            try:
                with anyio.fail_after(limits.idle_timeout_s):
                    msg = await ws.receive()
            except TimeoutError:
                raise LiserError(f"no message for {limits.idle_timeout_s:g} s: the session was closed as idle "
                                 "(liser serve --idle-timeout-s)") from None
            if msg["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(msg.get("code", 1000))
            if msg.get("bytes") is not None:
                data = msg["bytes"]
                if len(data) > limits.max_message_bytes:
                    raise LiserError(f"a binary message of {len(data)} bytes: at most {limits.max_message_bytes} "
                                     "(send the samples in blocks of about 0.1 s)")
                if len(data) % 4:
                    raise LiserError(f"a binary message of {len(data)} bytes: samples must be float32 (4 bytes each)")
                heard += len(data) / 4 / timeline.sample_rate
                ahead = heard - limits.stream_burst_s - limits.stream_rate * (time.monotonic() - t0)
                if ahead > 0:  # faster than real time: read on when the stream's rate allows it
                    waited += ahead / limits.stream_rate
                    if waited > limits.stream_max_wait_s:
                        raise LiserError(f"audio arrives faster than real time ({heard:.1f} s of audio in "
                                         f"{time.monotonic() - t0:.1f} s; this server reads at most "
                                         f"{limits.stream_rate:g}x real time): stream it as it is recorded "
                                         "(liser serve --stream-rate)")
                    await anyio.sleep(ahead / limits.stream_rate)
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
    except Exception:  # a bug: logged with its traceback, said to the client without internals; others go on
        _log().exception("live session failed")
        await _say_and_close(ws, "the server failed on this stream (an internal error; the server's log has the "
                                 "details)")


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


# ---------------------------------------------------------------- connections
def guarded_protocol(limits: ServeLimits):
    """uvicorn's h11 HTTP protocol, with a cap on open connections and a deadline for each request's head.

    A connection past limits.max_connections (HTTP and WebSocket together:
    uvicorn's shared set) is answered 503 and closed at once, so its
    descriptor is free again; uvicorn's own limit_concurrency answers 503
    too but keeps the connection open, and does not count WebSockets. A
    connection that has not sent a whole request head limits.idle_timeout_s
    after it opened or after its last response (a slowloris client) is
    closed: uvicorn times out only idle keep-alive connections. Refusals
    are logged once per 10 s, not once each.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        refused, said_at = 0, 0.0

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                cls = type(self)
                cls.refused += 1
                if time.monotonic() - cls.said_at > 10:
                    _log().warning("refused %d connection(s) over the limit of %d (liser serve --max-connections)",
                                   cls.refused, limits.max_connections)
                    cls.refused, cls.said_at = 0, time.monotonic()
                body = f"too many connections (the limit is {limits.max_connections}); try again later\n".encode()
                transport.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
                                b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                transport.close()
                return
            self._arm_head_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_head_deadline()

        def _arm_head_deadline(self) -> None:
            old = getattr(self, "_head_deadline", None)
            if old is not None:
                old.cancel()
            self._head_deadline = self.loop.call_later(limits.idle_timeout_s, self._head_deadline_passed)

        def _head_deadline_passed(self) -> None:
            if self.transport.is_closing() or self.transport.get_protocol() is not self:
                return  # closed, or upgraded to a WebSocket (whose session has its own idle timeout)
            if self.conn.their_state is h11.IDLE:  # no whole request head since the deadline was armed
                self.transport.close()

        def connection_lost(self, exc) -> None:
            if getattr(self, "_head_deadline", None) is not None:
                self._head_deadline.cancel()
            super().connection_lost(exc)

    return GuardedH11Protocol


def connection_cap(limits: ServeLimits) -> tuple[int, str | None]:
    """max_connections, lowered so that the process cannot run out of file descriptors, and a note when it was.

    The cap is the soft RLIMIT_NOFILE less the descriptors open now and
    FD_HEADROOM: past the process's limit, accept() fails and asyncio logs
    it on every try (a log growing by megabytes a second).
    """
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        open_now = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 32
    except (ImportError, OSError, ValueError):
        return limits.max_connections, None
    if soft == resource.RLIM_INFINITY:
        return limits.max_connections, None
    room = max(1, soft - open_now - FD_HEADROOM)
    if room >= limits.max_connections:
        return limits.max_connections, None
    return room, (f"liser serve: {room} connections at most, not {limits.max_connections}: the process may open "
                  f"{soft} files (ulimit -n) and has {open_now} open")


def server_config(app, limits: ServeLimits, log_level: str = "info"):
    """The uvicorn.Config that applies `limits` to connections (see `guarded_protocol`)."""
    import uvicorn

    return uvicorn.Config(app, log_level=log_level, access_log=False, http=guarded_protocol(limits),
                          limit_concurrency=limits.max_connections + 1,  # tasks too; the protocol counts connections
                          timeout_keep_alive=min(5, max(1, int(limits.idle_timeout_s))),
                          timeout_graceful_shutdown=max(1, math.ceil(limits.shutdown_timeout_s)),
                          ws_max_size=limits.max_message_bytes + 1024, ws_ping_interval=20.0, ws_ping_timeout=20.0)


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
              max_upload_mb: float | None = None, threads: int | None = None,
              limits: ServeLimits = ServeLimits(), ort_web: str | None = None, window_s: float = audio.CLIP_S) -> int:
    """`liser serve`: load the model (None: the packaged default), listen, serve the page until Ctrl-C; returns 0.

    `ort_web`: onnxruntime-web's folder for the page's on-device mode (find_ort_web; None: the checkout's
    examples/browser, when installed there).

    Upload files a killed server left in the temp folder are removed
    first (liser.inference.serve_limits.remove_stale_uploads). On a loopback address
    the server answers only to loopback Host names unless
    limits.allow_hosts says otherwise. Raises LiserError for a model that
    is not a liser model, a missing `liser[serve]` extra, a port that
    cannot be bound or bad settings.
    """
    from liser.core.extras import require

    require("serve", "liser serve")  # fastapi, uvicorn, websockets, python-multipart: one line naming the extra
    import uvicorn

    from liser.inference.model import load, window_frames

    if not 0.1 <= hop_s <= audio.CLIP_S:
        raise LiserError(f"--hop {hop_s}: must be in [0.1, {audio.CLIP_S}] seconds")
    limits = limits.replace(max_upload_mb=max_upload_mb)
    limits.check()
    if not limits.allow_hosts and host in ("127.0.0.1", "localhost", "::1"):
        limits = limits.replace(allow_hosts=LOOPBACK_HOSTS)
    ort_dir = find_ort_web(ort_web)
    started = time.time()
    model = load(model_path, threads=threads)  # None: the packaged default model (liser.inference.default_model)
    window_frames(window_s, model.windowing)  # a window this model cannot score: one line before listening
    sock = listen(host, port)
    stale = remove_stale_uploads(before=started)
    if stale:
        print(f"liser serve: removed {len(stale)} upload file(s) a stopped server left in {stale[0].parent}",
              file=sys.stderr, flush=True)
    cap, note = connection_cap(limits)
    if note:
        print(note, file=sys.stderr, flush=True)
        limits = limits.replace(max_connections=cap, max_websockets=min(limits.max_websockets, max(1, cap // 2)))
    url_host = f"[{host}]" if ":" in host else host
    print(f"liser serve: {model.source} ({', '.join(model.classes)}) on http://{url_host}:{sock.getsockname()[1]}/ "
          "(Ctrl-C stops)", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print("liser serve: listening beyond this machine; browsers give the microphone only to https or "
              "localhost pages, so remote visitors can upload files but not record", file=sys.stderr, flush=True)
    why = device_refusal(model, ort_dir, window_s)
    print(f"liser serve: on-device mode {'off: ' + why if why else 'on (onnxruntime-web from ' + str(ort_dir) + ')'}",
          file=sys.stderr, flush=True)
    server = uvicorn.Server(server_config(make_app(model, hop_s, limits=limits, ort_web=ort_dir, window_s=window_s), limits))
    server.run(sockets=[sock])
    return 0
