"""`liser serve`: the live timeline equals the offline one, the app's uploads and sessions, bad input, and a real
browser recording a fake microphone (headless Chromium fed a RAVDESS file).

The live/offline comparisons (LiveTimeline, the WebSocket, the browser) all state the same thing: window
starts and ends are identical; every class probability is within PROB_TOL of the offline one (each live
window removes its own segment's mean, not the whole file's: the one difference a stream cannot avoid);
and the label is the same except where the offline top-two gap is within what that difference can close.
"""

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import real_root

pytest.importorskip("fastapi", reason="liser serve's extra is not installed (pip install -e '.[dev]')")

from liser import audio, cli, serve  # noqa: E402

HOP = 0.5
PROB_TOL = 0.1  # measured: at most 0.06 on RAVDESS concatenations trimmed at random offsets (Actors 01, 02)
# four clips of the small set's test actor (never trained on): neutral, happy, sad, angry (strong), ~15 s in all
CLIPS = ("03-01-01-01-01-01-04", "03-01-03-02-01-01-04", "03-01-04-02-01-01-04", "03-01-05-02-01-01-04")
FAKE_MIC_RATE = 44_100  # Chromium's fake audio device runs at 44.1 kHz (its capabilities: 44.1-48 kHz), 16-bit


# ---------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def model(trained_run):
    import liser

    return liser.load(trained_run, threads=1)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """The four RAVDESS clips one after another: mono 16 kHz float32, ~15 s."""
    root = real_root("ravdess")
    return np.concatenate([audio.load_audio(root / "Actor_04" / f"{c}.flac") for c in CLIPS])


def wav_at(signal16k: np.ndarray, rate: int, path: Path) -> np.ndarray:
    """Write a 16-bit mono WAV at `rate` and return its samples as read back (float32)."""
    sf.write(str(path), audio.resample(signal16k, audio.SAMPLE_RATE, rate), rate, subtype="PCM_16")
    return sf.read(str(path), dtype="float32")[0]


def stream(timeline: serve.LiveTimeline, x: np.ndarray, block: int) -> list:
    out = []
    for a in range(0, len(x), block):
        out += timeline.push(x[a : a + block])
    return out + timeline.finish()


def gap(w: dict) -> float:
    p = sorted(w["probabilities"].values())
    return p[-1] - p[-2]


def assert_same_windows(live: list[dict], offline: list[dict]) -> None:
    """The module docstring's comparison, window by window (dicts as Prediction.to_dict gives them)."""
    assert [(w["start"], w["end"]) for w in live] == [(w["start"], w["end"]) for w in offline]
    for a, b in zip(live, offline):
        dp = max(abs(a["probabilities"][c] - b["probabilities"][c]) for c in b["probabilities"])
        assert dp <= PROB_TOL, (a["start"], dp)
        assert a["label"] == b["label"] or gap(b) <= 2 * dp, (a["start"], a["label"], b["label"], gap(b), dp)


def predict_timeline(model_path, wav: Path, capsys) -> list[dict]:
    """`liser predict MODEL WAV --timeline --json`'s windows (the command, run in this process)."""
    capsys.readouterr()
    assert cli.main(["predict", str(model_path), str(wav), "--timeline", "--json", "--threads", "1"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])["timeline"]


# ---------------------------------------------------------------- the live timeline
@pytest.mark.parametrize("rate,block", [(16_000, 1_600), (FAKE_MIC_RATE, 4_410), (48_000, 128)])
def test_live_timeline_is_the_offline_timeline(model, speech, tmp_path, rate, block):
    x = wav_at(speech, rate, tmp_path / "speech.wav")
    live = stream(serve.LiveTimeline(model, rate, HOP), x, block)
    offline = model.timeline(x, rate, HOP)
    assert len(live) == len(offline) > 20
    assert_same_windows([w.to_dict() for w in live], [w.to_dict() for w in offline])
    # the windows come as the audio arrives: all but the last one, flush with the end, before finish()
    early = serve.LiveTimeline(model, rate, HOP)
    n = sum(len(early.push(x[a : a + block])) for a in range(0, len(x), block))
    assert n == len(offline) - 1 and len(early.finish()) == 1
    assert len(early.buf) <= (audio.CLIP_S + HOP + 0.2) * audio.SAMPLE_RATE  # memory bounded by one window


def test_live_timeline_of_a_short_stream_is_one_padded_window(model, speech):
    x = speech[: int(1.2 * audio.SAMPLE_RATE)]
    (w,) = stream(serve.LiveTimeline(model, audio.SAMPLE_RATE), x, 1000)
    (o,) = model.timeline(x, audio.SAMPLE_RATE, HOP)
    assert w.to_dict() == o.to_dict() and w.end == pytest.approx(1.2)


def test_live_timeline_refuses_bad_streams(model, speech):
    with pytest.raises(serve.LiserError, match="sample rate"):
        serve.LiveTimeline(model, 4_000)
    with pytest.raises(serve.LiserError, match="before any audio"):
        serve.LiveTimeline(model, 48_000).finish()
    with pytest.raises(serve.LiserError, match="silent throughout"):
        stream(serve.LiveTimeline(model, 16_000), np.zeros(64_000, np.float32), 4_000)
    t = serve.LiveTimeline(model, 16_000)
    with pytest.raises(serve.LiserError, match="NaN or inf"):
        t.push(np.array([0.1, np.nan], np.float32))


# ---------------------------------------------------------------- the app: uploads
@pytest.fixture(scope="module")
def client(model):
    from fastapi.testclient import TestClient

    with TestClient(serve.make_app(model, HOP, max_upload_mb=1.0)) as c:
        yield c


def test_page_and_info(client, model):
    page = client.get("/")
    assert page.status_code == 200 and "/api/live" in page.text and "<canvas" in page.text
    info = client.get("/api/info").json()
    assert info["classes"] == model.classes and info["hop_s"] == HOP and info["max_upload_mb"] == 1.0


def test_upload_gives_what_predict_timeline_gives(client, trained_run, tmp_path, capsys):
    clip = real_root("ravdess") / "Actor_04" / f"{CLIPS[3]}.flac"
    r = client.post("/api/predict", params={"name": clip.name}, content=clip.read_bytes())
    assert r.status_code == 200, r.text
    got = r.json()
    capsys.readouterr()
    assert cli.main(["predict", str(trained_run), str(clip), "--timeline", "--json", "--threads", "1"]) == 0
    want = json.loads(capsys.readouterr().out)
    assert got["timeline"] == want["timeline"]  # the same code on the same samples: equal to the printed digit
    assert (got["label"], got["probabilities"]) == (want["label"], want["probabilities"])


def test_bad_uploads_are_said_and_the_server_goes_on(client, tmp_path):
    clip = (real_root("ravdess") / "Actor_04" / f"{CLIPS[0]}.flac").read_bytes()
    short = io.BytesIO()
    sf.write(short, np.frombuffer(clip[-1600:], "<i2"), audio.SAMPLE_RATE, format="WAV")  # 50 ms
    bad = {
        "empty.wav": (b"", 400, "empty upload"),
        "notes.txt": (b"these are not audio samples\n" * 20, 400, "unreadable"),
        "noise.wav": (np.random.default_rng(0).bytes(50_000), 400, "unreadable"),
        "truncated.flac": (clip[:200], 400, "unreadable"),
        "short.wav": (short.getvalue(), 400, "too short"),
        "huge.wav": (b"\0" * 1_100_000, 413, "over the upload limit of 1 MB"),
    }
    for name, (data, status, words) in bad.items():
        r = client.post("/api/predict", params={"name": f"../x/{name}"}, content=data)
        msg = r.json()["error"]
        assert r.status_code == status and msg.startswith(f"{name}: "), (name, r.status_code, msg)
        assert "\n" not in msg and words in msg, (name, msg)
    assert client.post("/api/predict", params={"name": "ok.flac"}, content=clip).status_code == 200


# ---------------------------------------------------------------- the app: live sessions
def test_live_session_streams_the_offline_timeline(client, model, speech, tmp_path):
    x = wav_at(speech, 48_000, tmp_path / "speech.wav")
    got = []
    with client.websocket_connect("/api/live?rate=48000") as ws:
        ready = ws.receive_json()
        assert ready["type"] == "ready" and ready["classes"] == model.classes
        for a in range(0, len(x), 4_800):
            ws.send_bytes(x[a : a + 4_800].astype("<f4").tobytes())
        ws.send_text("stop")
        while (m := ws.receive_json())["type"] == "window":
            got.append(m)
    assert m == {"type": "done", "seconds": pytest.approx(len(x) / 48_000, abs=1e-3)}
    want = [w.to_dict() for w in model.timeline(x, 48_000, HOP)]
    assert_same_windows([{k: v for k, v in w.items() if k != "type"} for w in got], want)


@pytest.mark.parametrize("path,send,words", [
    ("/api/live", None, "sample rate must be given"),
    ("/api/live?rate=1000", None, "must be an integer in"),
    ("/api/live?rate=16000", b"\0\0\0", "float32"),
    ("/api/live?rate=16000", "hello", "not understood"),
    ("/api/live?rate=16000", np.full(100, np.inf, "<f4").tobytes(), "NaN or inf"),
    ("/api/live?rate=16000", "stop", "before any audio"),  # the microphone closed before it sent anything
    ("/api/live?rate=16000", np.zeros(1_000, "<f4").tobytes() + b"stop", "silent throughout"),
])
def test_bad_streams_are_said_and_close_only_their_session(client, path, send, words):
    with client.websocket_connect(path) as ws:
        m = ws.receive_json()
        if send is not None:
            assert m["type"] == "ready"
            if isinstance(send, bytes) and send.endswith(b"stop"):
                ws.send_bytes(send[:-4])
                ws.send_text("stop")
            elif isinstance(send, bytes):
                ws.send_bytes(send)
            else:
                ws.send_text(send)
            m = ws.receive_json()
        assert m["type"] == "error" and words in m["message"], m
    assert client.get("/api/info").status_code == 200


def test_a_client_leaving_mid_stream_ends_only_its_session(client, model, speech):
    for _ in range(2):  # twice: the first departure left the server able to take the next one
        with client.websocket_connect("/api/live?rate=16000") as ws:
            ws.receive_json()
            ws.send_bytes(speech[: 4 * audio.SAMPLE_RATE].astype("<f4").tobytes())
            assert ws.receive_json()["type"] == "window"
        # leaving the block closed the socket without "stop"
    with client.websocket_connect("/api/live?rate=16000") as ws:
        ws.receive_json()
        ws.send_bytes(speech[: 2 * audio.SAMPLE_RATE].astype("<f4").tobytes())
        ws.send_text("stop")
        assert ws.receive_json()["type"] == "window" and ws.receive_json()["type"] == "done"


# ---------------------------------------------------------------- the command
def _liser(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "liser.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_a_model_that_is_not_a_liser_model_is_one_line(tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"not an onnx graph")
    r = _liser("serve", str(fake), "--port", "0")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith(f"liser: {fake}: "), r.stderr


def test_serve_listens_on_loopback_and_says_where(trained_run, tmp_path):
    import urllib.request

    busy = serve.listen("127.0.0.1", 0)
    busy.listen()
    port = busy.getsockname()[1]
    r = _liser("serve", str(trained_run), "--port", str(port))  # taken: one line, exit 2
    busy.close()
    assert r.returncode == 2 and f"127.0.0.1:{port}: cannot listen" in r.stderr and r.stderr.count("\n") == 1
    p = subprocess.Popen([sys.executable, "-m", "liser.cli", "serve", str(trained_run), "--port", "0", "--threads", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        line = p.stdout.readline()
        assert " on http://127.0.0.1:" in line, line
        url = line.split(" on ")[-1].split()[0]
        for _ in range(100):  # uvicorn starts listening a moment after the line
            try:
                info = json.loads(urllib.request.urlopen(url + "api/info", timeout=5).read())
                break
            except OSError:
                time.sleep(0.2)
        assert info["hop_s"] == HOP and len(info["classes"]) == 8
    finally:
        p.terminate()
        p.wait(30)


def test_help_does_not_import_the_server():
    code = "import sys; from liser import cli; cli.build_parser(); print(sorted(m for m in ('fastapi', 'uvicorn', 'liser.serve') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr
