"""`liser serve` under abuse (issue 26, items 9-12): every case is built from real speech at run time.

Uploads whose decoded work is out of proportion to their bytes (a header claiming 1 Hz, 8 channels, a long
Opus file named .mp4, a header that says nothing of the length), samples x1e30, random bytes, `rate=²`,
pages of other origins, idle and slow clients, too many connections and WebSockets, a stream faster than
real time, a client that leaves mid-upload or mid-work, a stopping server, stale temporary files. Each
answer is checked to be one clear line (4xx JSON or a stream error), and the server to go on serving.

The app runs on starlette's TestClient, or on a real uvicorn in a thread (`running`) where connections
themselves are the point; the packaged default model (int8 ONNX) keeps each request a few ms.
"""

import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import real_root

pytest.importorskip("fastapi", reason="liser serve's extra is not installed (pip install -e '.[serve]'; scripts/setup.sh installs every extra)")
pytest.importorskip("python_multipart", reason="liser serve's extra is not installed (pip install -e '.[serve]'; scripts/setup.sh installs every extra)")

from liser.data import audio  # noqa: E402
from liser.inference import serve
from liser.inference import serve_limits
from liser.inference.serve_limits import ServeLimits  # noqa: E402

CLIPS = ("03-01-01-01-01-01-04", "03-01-03-02-01-01-04", "03-01-04-02-01-01-04", "03-01-05-02-01-01-04")
RATE = audio.SAMPLE_RATE


# ---------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def model():
    import liser

    return liser.load(None, threads=1)  # the packaged default model


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """Four RAVDESS clips one after another: mono 16 kHz float32, ~15 s."""
    root = real_root("ravdess")
    return np.concatenate([audio.load_audio(root / "Actor_04" / f"{c}.flac") for c in CLIPS])


@pytest.fixture(scope="module")
def clip() -> Path:
    return real_root("ravdess") / "Actor_04" / f"{CLIPS[3]}.flac"


def encoded(x: np.ndarray, rate: int = RATE, fmt: str = "WAV", subtype: str | None = "PCM_16") -> bytes:
    b = io.BytesIO()
    sf.write(b, x, rate, format=fmt, subtype=subtype)
    return b.getvalue()


def opus_bytes(x: np.ndarray) -> bytes:
    """Ogg/Opus of a 16 kHz signal (PyAV's libopus at 48 kHz): a long file in few bytes."""
    import av

    y = audio.resample(x, RATE, 48_000)
    b = io.BytesIO()
    with av.open(b, "w", format="ogg") as out:
        s = out.add_stream("libopus", rate=48_000, layout="mono")
        for a in range(0, len(y), 48_000):
            fr = av.AudioFrame.from_ndarray(y[None, a : a + 48_000].astype(np.float32), format="flt", layout="mono")
            fr.sample_rate = 48_000
            for p in s.encode(fr):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    return b.getvalue()


def client(model, **limits):
    from fastapi.testclient import TestClient

    return TestClient(serve.make_app(model, 0.5, limits=ServeLimits(**limits)))


def one_line_error(r, status: int, *words: str) -> str:
    """The response is `status` with one JSON line holding `words`, and no Python internals."""
    msg = r.json()["error"]
    assert r.status_code == status, (r.status_code, msg)
    assert "\n" not in msg and all(w in msg for w in words), msg
    assert "Traceback" not in msg and "Error:" not in msg, msg
    return msg


@contextmanager
def running(app, limits: ServeLimits):
    """The app on uvicorn (server_config: the connection guards) in a thread; yields (host, port, server)."""
    import uvicorn

    sock = serve.listen("127.0.0.1", 0)
    server = uvicorn.Server(serve.server_config(app, limits, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    try:
        yield "127.0.0.1", sock.getsockname()[1], server, thread
    finally:
        server.should_exit = True
        thread.join(30)


def http_get(port: int, path: str = "/api/info", timeout: float = 5.0) -> int:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.status


def closed_within(s: socket.socket, seconds: float) -> bool:
    """Whether the server closes the socket within `seconds` (reads until EOF)."""
    s.settimeout(seconds)
    try:
        while s.recv(4096):
            pass
        return True
    except (socket.timeout, TimeoutError):
        return False
    except OSError:
        return True


class Records(logging.Handler):
    """uvicorn.error's log records, kept for the test."""

    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)


@contextmanager
def log_records():
    """uvicorn.error's records at INFO while the block runs (after uvicorn has configured its logging)."""
    h = Records()
    logger = logging.getLogger("uvicorn.error")
    old = logger.level
    logger.addHandler(h)
    logger.setLevel(logging.INFO)
    try:
        yield h
    finally:
        logger.removeHandler(h)
        logger.setLevel(old)


# ---------------------------------------------------------------- item 9: work out of proportion to the bytes
def test_a_header_claiming_1_hz_is_refused_before_decoding(model, speech, monkeypatch):
    wav = bytearray(encoded(speech[: RATE // 4]))  # 8 KB of real speech
    wav[24:28] = (1).to_bytes(4, "little")  # sample rate: 1 Hz (8,000 s of audio once resampled)
    wav[28:32] = (2).to_bytes(4, "little")  # byte rate
    decoded = []
    monkeypatch.setattr(serve_limits._Sink, "add", lambda self, block: decoded.append(block))
    c = client(model)
    one_line_error(c.post("/api/predict", params={"name": "tiny.wav"}, content=bytes(wav)), 415,
                   "tiny.wav: sample rate 1 Hz", "--min-rate-hz")
    assert decoded == []  # refused from the header, not a sample decoded
    wav[24:28] = (400_000).to_bytes(4, "little")  # and above the range
    one_line_error(c.post("/api/predict", params={"name": "fast.wav"}, content=bytes(wav)), 415, "400000 Hz")


def test_many_channels_are_refused_and_allowed_when_raised(model, speech):
    flac = encoded(np.tile(speech[: 3 * RATE, None], (1, 8)), fmt="FLAC", subtype=None)
    one_line_error(client(model).post("/api/predict", params={"name": "eight.flac"}, content=flac), 415,
                   "eight.flac: 8 audio channels", "--max-channels")
    r = client(model, max_channels=8).post("/api/predict", params={"name": "eight.flac"}, content=flac)
    assert r.status_code == 200 and r.json()["duration"] == pytest.approx(3.0, abs=0.01)


def test_long_audio_in_few_bytes_is_refused(model, speech):
    """A 30 s Opus file (of the 20-minute kind) named .mp4, and a long WAV, against a 10 s limit."""
    x = np.tile(speech, 2)[: 30 * RATE]
    c = client(model, max_seconds=10)
    one_line_error(c.post("/api/predict", params={"name": "talk.mp4"}, content=opus_bytes(x)), 413,
                   "talk.mp4: longer than the limit of 10 s", "--max-seconds")
    one_line_error(c.post("/api/predict", params={"name": "talk.wav"}, content=encoded(x, 8_000)), 413,
                   "talk.wav: longer than the limit of 10 s")
    assert c.post("/api/predict", params={"name": "ok.wav"}, content=encoded(x[: 8 * RATE])).status_code == 200


def test_decoding_stops_at_the_limit_when_the_header_does_not_say(model, speech, monkeypatch):
    """A header that lies about the length (here: says nothing of it): decoding stops at max_seconds."""
    real = serve_limits.check_format
    monkeypatch.setattr(serve_limits, "check_format", lambda name, rate, ch, seconds, limits:
                        real(name, rate, ch, None, limits))
    x = np.tile(speech, 2)[: 30 * RATE]
    got = []
    add = serve_limits._Sink.add
    monkeypatch.setattr(serve_limits._Sink, "add", lambda self, block: (got.append(len(block)), add(self, block)))
    c = client(model, max_seconds=10)
    for name, data in (("talk.mp4", opus_bytes(x)), ("talk.flac", encoded(x, fmt="FLAC", subtype=None))):
        got.clear()
        one_line_error(c.post("/api/predict", params={"name": name}, content=data), 413, "stopped decoding at 10 s")
        rate = 48_000 if name.endswith("mp4") else RATE
        assert sum(got) <= 11 * rate, (name, sum(got))  # at most a block past the limit was decoded


def test_cpu_and_wall_time_per_upload_are_capped(model, clip):
    one_line_error(client(model, max_cpu_s=1e-4).post("/api/predict", params={"name": clip.name},
                                                      content=clip.read_bytes()), 413, "CPU-seconds", "--max-cpu-s")
    one_line_error(client(model, max_wall_s=1e-4).post("/api/predict", params={"name": clip.name},
                                                       content=clip.read_bytes()), 413, "--max-wall-s")


# ---------------------------------------------------------------- item 12: small ones
def test_absurd_and_non_finite_samples_are_refused(model, speech):
    c = client(model)
    for scale in (1e30, 1e5):
        one_line_error(c.post("/api/predict", params={"name": "loud.wav"},
                              content=encoded(speech[: 3 * RATE] * scale, subtype="FLOAT")), 422, "loud.wav: samples reach")
    bad = speech[: 3 * RATE].copy()
    bad[100] = np.nan
    one_line_error(c.post("/api/predict", params={"name": "nan.wav"}, content=encoded(bad, subtype="FLOAT")), 422,
                   "NaN or inf")
    with c.websocket_connect("/api/live?rate=16000") as ws:
        assert ws.receive_json()["type"] == "ready"
        ws.send_bytes((speech[:1600] * 1e30).astype("<f4").tobytes())
        m = ws.receive_json()
        assert m["type"] == "error" and "not audio at any gain" in m["message"], m


def test_random_bytes_are_unreadable_whatever_their_name(model):
    c = client(model)
    for seed, name in enumerate(("noise.wav", "noise.mp3", "noise.mp4", "noise.flac", "noise.ogg", "noise", "n.webm",
                                 "noise.aac", "noise.m4a")):
        data = np.random.default_rng(seed).bytes(40_000)
        msg = one_line_error(c.post("/api/predict", params={"name": name}, content=data), 400, f"{name}: unreadable")
        assert "0 samples" not in msg


def test_a_sample_rate_in_other_digits_is_one_clear_line(model):
    c = client(model)
    for rate in ("²", "١٦٠٠٠", "16000.0", "-1", "9" * 30):
        with c.websocket_connect(f"/api/live?rate={rate}") as ws:
            m = ws.receive_json()
        assert m["type"] == "error" and "sample rate must be given as an integer" in m["message"], (rate, m)
        assert "ValueError" not in m["message"] and "invalid literal" not in m["message"]


def test_multipart_uploads_are_taken_and_the_upload_is_streamed_to_one_file(model, clip, monkeypatch):
    made = []
    real = serve_limits.upload_file

    def spy(suffix):
        made.append(real(suffix))
        return made[-1]

    monkeypatch.setattr(serve, "upload_file", spy)
    c = client(model, max_upload_mb=1.0)
    raw = c.post("/api/predict", params={"name": clip.name}, content=clip.read_bytes())
    form = c.post("/api/predict", files={"file": (clip.name, clip.read_bytes(), "audio/flac")}, data={"note": "x"})
    assert raw.status_code == form.status_code == 200, form.text
    assert form.json() == raw.json() and form.json()["name"] == clip.name
    assert len(made) == 2 and all(p.name.startswith(f"liser-upload-{os.getpid()}-") for p in made)
    assert not any(p.exists() for p in made)  # removed after the answer
    one_line_error(c.post("/api/predict", files={"other": ("a.flac", clip.read_bytes())}), 400, "'file' field")
    one_line_error(c.post("/api/predict", files={"file": ("big.flac", b"\0" * 2_000_000)}), 413)  # 2 MB > 1 MB
    assert not any(p.exists() for p in made)


def test_stale_upload_files_are_removed_and_nothing_else(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    old = time.time() - 3600
    stale = tmp_path / f"liser-upload-{gone.pid}-ab12cd.wav"
    kept = [tmp_path / f"liser-upload-{os.getpid()}-ab12cd.flac",  # this process's own
            tmp_path / "liser-upload-1-ab12cd.mp4",  # a running process's (pid 1)
            tmp_path / f"liser-upload-{gone.pid}-new.wav",  # written after `before`
            tmp_path / "liser-upload-notes.txt", tmp_path / "speech.wav",  # not names liser gives
            tmp_path / f"liser-upload-{gone.pid}-dir"]  # a folder
    for p in [stale] + kept[:-1]:
        p.write_bytes(b"x")
    kept[-1].mkdir()
    for p in [stale] + kept:
        if p.name != f"liser-upload-{gone.pid}-new.wav":
            os.utime(p, (old, old))
    assert serve_limits.remove_stale_uploads(tmp_path, before=time.time() - 60) == [stale]
    assert not stale.exists() and all(p.exists() for p in kept)


# ---------------------------------------------------------------- item 11: other sites
def test_other_origins_are_refused_unless_allowed(model, clip):
    from starlette.testclient import WebSocketDenialResponse

    c = client(model)
    data = clip.read_bytes()
    for origin in ("http://evil.example", "http://testserver.evil.example", "null", "https://testserver"):
        one_line_error(c.post("/api/predict", params={"name": "a.flac"}, content=data, headers={"origin": origin}),
                       403, "--allow-origin")
        with pytest.raises(WebSocketDenialResponse) as e:
            with c.websocket_connect("/api/live?rate=16000", headers={"origin": origin}):
                pass
        assert e.value.status_code == 403 and "--allow-origin" in e.value.json()["error"]
    for headers in ({}, {"origin": "http://testserver"}):  # no Origin (not a browser page), the page's own
        assert c.post("/api/predict", params={"name": "a.flac"}, content=data, headers=headers).status_code == 200
    with c.websocket_connect("/api/live?rate=16000", headers={"origin": "http://testserver"}) as ws:
        assert ws.receive_json()["type"] == "ready"
    allowed = client(model, allow_origins=("https://app.example",))
    assert allowed.post("/api/predict", params={"name": "a.flac"}, content=data,
                        headers={"origin": "https://app.example"}).status_code == 200
    assert client(model, allow_origins=("*",)).post("/api/predict", params={"name": "a.flac"}, content=data,
                                                     headers={"origin": "http://evil.example"}).status_code == 200


def test_a_rebinding_host_name_is_refused(model):
    from fastapi.testclient import TestClient

    app = serve.make_app(model, 0.5, limits=ServeLimits(allow_hosts=serve.LOOPBACK_HOSTS))
    assert TestClient(app, base_url="http://localhost:8000").get("/api/info").status_code == 200
    assert TestClient(app, base_url="http://[::1]:8000").get("/api/info").status_code == 200
    evil = TestClient(app, base_url="http://evil.example:8000")  # a name that resolves to 127.0.0.1
    one_line_error(evil.get("/api/info"), 403, "evil.example", "--allow-host")
    one_line_error(evil.post("/api/predict", content=b"x", headers={"origin": "http://evil.example:8000"}), 403)


# ---------------------------------------------------------------- item 10: connections
def test_idle_websockets_past_the_cap_leave_the_page_served(model, speech):
    import websockets.sync.client as wsc
    from websockets.exceptions import InvalidStatus

    limits = ServeLimits(max_websockets=3, idle_timeout_s=3.0)
    with running(serve.make_app(model, 0.5, limits=limits), limits) as (host, port, _, _):
        url = f"ws://{host}:{port}/api/live?rate=16000"
        idle = [wsc.connect(url, legacy=True) for _ in range(3)]
        for w in idle:
            assert json.loads(w.recv(5))["type"] == "ready"
        for _ in range(5):  # past the cap: refused at once, before opening
            with pytest.raises(InvalidStatus) as e:
                wsc.connect(url, open_timeout=5)
            assert e.value.response.status_code == 503 and b"--max-websockets" in e.value.response.body
        assert http_get(port, "/") == 200  # the page is still served
        for w in idle:  # the idle ones are closed after the idle timeout, saying so
            m = json.loads(w.recv(5))
            assert m["type"] == "error" and "idle" in m["message"], m
            w.close()
        with wsc.connect(url) as w:  # and there is room again
            assert json.loads(w.recv(5))["type"] == "ready"
            w.send(speech[: 4 * RATE].astype("<f4").tobytes())
            assert json.loads(w.recv(10))["type"] == "window"


def test_slow_and_surplus_connections_are_closed(model):
    limits = ServeLimits(max_connections=4, idle_timeout_s=2.0)
    with running(serve.make_app(model, 0.5, limits=limits), limits) as (host, port, _, _):
        slow = [socket.create_connection((host, port)) for _ in range(4)]
        for s in slow:
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # a request head never finished
        time.sleep(0.2)
        extra = socket.create_connection((host, port))
        extra.settimeout(5)
        assert extra.recv(100).startswith(b"HTTP/1.1 503")  # over the cap: answered and closed at once
        extra.close()
        assert all(closed_within(s, 5.0) for s in slow)  # the slow heads were dropped after the idle timeout
        for s in slow:
            s.close()
        time.sleep(0.1)
        assert http_get(port) == 200


def test_a_stream_faster_than_real_time_is_read_at_about_real_time(model, speech):
    c = client(model, stream_rate=4.0, stream_burst_s=1.0)
    x = speech[: 12 * RATE]
    with c.websocket_connect("/api/live?rate=16000") as ws:
        assert ws.receive_json()["type"] == "ready"
        t0 = time.monotonic()
        for a in range(0, len(x), RATE // 2):  # 12 s of audio sent at once
            ws.send_bytes(x[a : a + RATE // 2].astype("<f4").tobytes())
        ws.send_text("stop")
        while (m := ws.receive_json())["type"] == "window":
            pass
        took = time.monotonic() - t0
    assert m["type"] == "done" and m["seconds"] == pytest.approx(12.0)
    assert took >= (12 - 1.0 - 0.5) / 4.0, took  # 12 s at 4x real time after a 1 s head start
    pushed = client(model, stream_rate=4.0, stream_burst_s=1.0, stream_max_wait_s=0.5)
    with pushed.websocket_connect("/api/live?rate=16000") as ws:  # held back too long in all: refused
        ws.receive_json()
        for a in range(0, len(x), RATE // 2):
            ws.send_bytes(x[a : a + RATE // 2].astype("<f4").tobytes())
        while (m := ws.receive_json())["type"] == "window":
            pass
        assert m["type"] == "error" and "faster than real time" in m["message"], m
    big = client(model, max_message_bytes=4_000)
    with big.websocket_connect("/api/live?rate=16000") as ws:
        ws.receive_json()
        ws.send_bytes(x[:2_000].astype("<f4").tobytes())  # 8,000 bytes
        m = ws.receive_json()
        assert m["type"] == "error" and "at most 4000" in m["message"]


def test_a_client_leaving_mid_upload_or_mid_work_stops_it_without_a_traceback(model, speech):
    import copy

    calls = []
    slow = copy.copy(model)

    def backend(x):
        calls.append(len(x))
        time.sleep(0.05)
        return model.backend(x)

    slow.backend = backend
    limits = ServeLimits(max_cpu_s=60, max_wall_s=60)
    with running(serve.make_app(slow, 0.5, limits=limits), limits) as (host, port, _, _), log_records() as records:
        body = encoded(np.tile(speech, 4)[: 60 * RATE])  # 60 s: well over 2 s of (slowed) work
        s = socket.create_connection((host, port))  # mid-upload: half the body, then gone
        s.sendall(b"POST /api/predict?name=half.wav HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n"
                  % len(body) + body[: len(body) // 2])
        time.sleep(0.3)
        s.close()
        s = socket.create_connection((host, port))  # mid-work: the whole body, then gone
        s.sendall(b"POST /api/predict?name=whole.wav HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n"
                  % len(body) + body)
        for _ in range(400):  # the decoding and the log-Mel come first (~0.5 s here; more on a busy machine)
            if calls:
                break
            time.sleep(0.05)
        s.close()
        for _ in range(50):
            if "whole.wav: the client disconnected" in records.text():
                break
            time.sleep(0.1)
        n = len(calls)
        time.sleep(0.5)
        assert len(calls) == n and 0 < n < 20, n  # the work stopped (the whole file is 120+ batches)
        assert http_get(port) == 200
    text = records.text()
    assert "half.wav: the client disconnected" in text and "whole.wav: the client disconnected" in text, text
    assert not any(r.exc_info for r in records.records), text


def test_shutdown_is_capped(model, speech):
    import websockets.sync.client as wsc

    limits = ServeLimits(shutdown_timeout_s=1.0, idle_timeout_s=60)
    with running(serve.make_app(model, 0.5, limits=limits), limits) as (host, port, server, thread):
        w = wsc.connect(f"ws://{host}:{port}/api/live?rate=16000", legacy=True)  # a session still open
        w.recv(5)
        w.send(speech[:RATE].astype("<f4").tobytes())
        slow = socket.create_connection((host, port))  # an upload still arriving
        slow.sendall(b"POST /api/predict?name=a.wav HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\nRIFF")
        time.sleep(0.3)
        t0 = time.monotonic()
        server.should_exit = True
        thread.join(15)
        assert not thread.is_alive() and time.monotonic() - t0 < 4.0, time.monotonic() - t0
        w.close()
        slow.close()


def test_serve_under_a_descriptor_limit_of_64_keeps_serving_and_its_log_quiet(tmp_path):
    """54 idle WebSockets against `liser serve` with ulimit -n 64: refused past the cap, the page served."""
    import resource
    import urllib.request

    import websockets.sync.client as wsc

    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    err = tmp_path / "stderr.txt"
    with open(err, "w") as e:
        p = subprocess.Popen([sys.executable, "-m", "liser.cli", "serve", "--port", "0", "--threads", "1",
                              "--idle-timeout-s", "20"], stdout=subprocess.PIPE, stderr=e, text=True,
                             preexec_fn=limit, env={**os.environ, "OMP_NUM_THREADS": "1"})
    held = []
    try:
        line = p.stdout.readline()
        url = line.split(" on ")[-1].split()[0]
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "api/info", timeout=5).read()
                break
            except OSError:
                time.sleep(0.1)
        refused = 0
        for _ in range(54):
            try:
                held.append(wsc.connect(url.replace("http", "ws") + "api/live?rate=16000", open_timeout=5,
                                        legacy=True))
            except Exception:
                refused += 1
        assert refused > 0 and held
        t0 = time.monotonic()
        assert b"<canvas" in urllib.request.urlopen(url, timeout=5).read()
        assert time.monotonic() - t0 < 2
        time.sleep(1.0)
    finally:
        for w in held:
            w.close()
        p.terminate()
        p.wait(30)
    log = err.read_text()
    assert "connections at most" in log and "out of system resource" not in log and len(log) < 20_000, log[-2000:]


def test_bad_limit_options_are_one_line_and_exit_2():
    r = subprocess.run([sys.executable, "-m", "liser.cli", "serve", "--port", "0", "--max-seconds", "-1"],
                       capture_output=True, text=True, timeout=60, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and r.stderr == "liser: --max-seconds -1.0: must be positive\n", r.stderr
