"""Benchmark: what each abuse of issue 26 (items 9-10) costs `liser serve`, in memory and CPU.

Starts `liser serve` (the packaged default model, default limits, one
inference thread) in a child process and runs each case against it, from
real RAVDESS speech made into the hostile file at run time. For each case:
the answer (status and message), its wall time, the server's CPU-seconds
(user + system, /proc) and its peak RSS during the case (VmHWM after
resetting it through /proc/PID/clear_refs; the process's whole image:
Python, onnxruntime and the model included, so the idle figure is the
floor). The issue's figures before the fix: the 1 Hz WAV 123 s, 89
CPU-s, 700 MB; the 8-channel FLAC 1.6 GB; the 20-minute Opus 938 MB.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_serve_abuse.py

Prints one line per case; writes bench/results/serve_abuse.json (with the
command, nproc, the CPU model and the load average at start and end).
"""

from __future__ import annotations

import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RAVDESS = REPO.parent / "shared" / "data" / "ravdess"
OUT = REPO / "bench" / "results" / "serve_abuse.json"
RATE = 16_000


# ---------------------------------------------------------------- the server and its costs
class Server:
    """`liser serve` in a child process on a free port; its CPU time and peak RSS read from /proc."""

    def __init__(self, *args: str):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
        self.log = tempfile.TemporaryFile("w+")
        self.p = subprocess.Popen([sys.executable, "-m", "liser.cli", "serve", "--port", "0", "--threads", "1", *args],
                                  stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        line = self.p.stdout.readline()
        self.url = line.split(" on ")[-1].split()[0]
        self.port = int(self.url.rsplit(":", 1)[1].strip("/"))
        for _ in range(200):
            try:
                urllib.request.urlopen(self.url + "api/info", timeout=5).read()
                break
            except OSError:
                time.sleep(0.05)

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.p.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime (all threads)

    def reset_peak(self) -> None:
        Path(f"/proc/{self.p.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS

    def status_kb(self, key: str) -> int:
        for line in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def stop(self) -> str:
        self.p.terminate()
        self.p.wait(30)
        self.log.seek(0)
        return self.log.read()


def measure(server: Server, name: str, case) -> dict:
    """Run case() -> (status, message); the server's CPU-seconds and peak RSS meanwhile (settled 0.5 s after)."""
    server.reset_peak()
    cpu0, t0 = server.cpu_s(), time.monotonic()
    status, message = case()
    wall = time.monotonic() - t0
    time.sleep(0.5)  # work the server still does after the answer (a cancelled job's last batch) is counted
    row = {"case": name, "status": status, "message": str(message)[:300], "wall_s": round(wall, 2),
           "server_cpu_s": round(server.cpu_s() - cpu0, 2), "server_peak_rss_mb": round(server.status_kb("VmHWM") / 1024, 1),
           "server_rss_after_mb": round(server.status_kb("VmRSS") / 1024, 1)}
    print(f"{name:44s} {status!s:>5} {row['wall_s']:7.2f} s wall {row['server_cpu_s']:6.2f} CPU-s "
          f"{row['server_peak_rss_mb']:7.1f} MB peak  {row['message'][:70]}", flush=True)
    return row


def post(server: Server, name: str, data: bytes, timeout: float = 300) -> tuple[int, str]:
    req = urllib.request.Request(f"{server.url}api/predict?name={name}", data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = json.loads(r.read())
            return r.status, f"{body['label']} over {body['duration']} s, {len(body['timeline'])} windows"
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())["error"]


# ---------------------------------------------------------------- the hostile files, from real speech
def speech(seconds: float) -> np.ndarray:
    """Real RAVDESS speech (Actor_01..04, 16 kHz mono) end to end, cut or repeated to `seconds`."""
    sys.path.insert(0, str(REPO / "src"))
    from liser.data import audio

    files = sorted(RAVDESS.glob("Actor_0[1-4]/*.flac"))[:40]
    x = np.concatenate([audio.load_audio(f) for f in files])
    return np.resize(x, int(seconds * RATE)).astype(np.float32)


def wav(x: np.ndarray, rate: int = RATE, subtype: str = "PCM_16", channels: int = 1, fmt: str = "WAV") -> bytes:
    import soundfile as sf

    b = io.BytesIO()
    sf.write(b, np.tile(x[:, None], (1, channels)) if channels > 1 else x, rate, format=fmt,
             subtype=subtype if fmt == "WAV" else None)
    return b.getvalue()


def claims_1_hz(x: np.ndarray) -> bytes:
    w = bytearray(wav(x[: 4_000]))  # 8 KB
    w[24:28], w[28:32] = (1).to_bytes(4, "little"), (2).to_bytes(4, "little")
    return bytes(w)


def opus(x: np.ndarray) -> bytes:
    import av

    sys.path.insert(0, str(REPO / "src"))
    from liser.data import audio

    b = io.BytesIO()
    with av.open(b, "w", format="ogg") as out:
        s = out.add_stream("libopus", rate=48_000, layout="mono")
        s.bit_rate = 6_000
        for a in range(0, len(x), 10 * RATE):
            y = audio.resample(x[a : a + 10 * RATE], RATE, 48_000)
            fr = av.AudioFrame.from_ndarray(y[None].astype(np.float32), format="flt", layout="mono")
            fr.sample_rate = 48_000
            for p in s.encode(fr):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    return b.getvalue()


# ---------------------------------------------------------------- connection cases
def idle_websockets(server: Server, n: int = 54) -> tuple[int, str]:
    import websockets.sync.client as wsc

    held, refused = [], 0
    for _ in range(n):
        try:
            held.append(wsc.connect(server.url.replace("http", "ws") + "api/live?rate=16000", open_timeout=5,
                                    legacy=True))
        except Exception:
            refused += 1
    t0 = time.monotonic()
    with urllib.request.urlopen(server.url, timeout=10) as r:
        status = r.status
    page_ms = (time.monotonic() - t0) * 1000
    for w in held:
        w.close()
    return status, f"{len(held)} held, {refused} refused (503); the page answered in {page_ms:.0f} ms meanwhile"


def fast_stream(server: Server, x: np.ndarray) -> tuple[int, str]:
    import websockets.sync.client as wsc

    t0 = time.monotonic()
    with wsc.connect(server.url.replace("http", "ws") + "api/live?rate=16000") as w:
        w.recv(10)
        for a in range(0, len(x), RATE // 10):
            w.send(x[a : a + RATE // 10].astype("<f4").tobytes())
        w.send("stop")
        n = 0
        while (m := json.loads(w.recv(600)))["type"] == "window":
            n += 1
    took = time.monotonic() - t0
    end = m.get("message", m["type"])
    return 200, f"{len(x) / RATE:.0f} s pushed at once: {n} windows ({n * 0.5:.1f} s of audio) in {took:.1f} s, then: {end}"


def leave_mid_work(server: Server, data: bytes) -> tuple[int, str]:
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(b"POST /api/predict?name=long.wav HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n"
              % len(data) + data)
    time.sleep(0.5)
    s.close()
    time.sleep(1.0)
    return 0, "sent a 10-minute WAV, left 0.5 s later (the CPU column shows the work stopped)"


def slowloris(server: Server, n: int = 40) -> tuple[int, str]:
    socks = []
    for _ in range(n):
        try:
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-a: ")
            socks.append(s)
        except OSError:
            break
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(server.url + "api/info", timeout=10) as r:
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    took = time.monotonic() - t0
    time.sleep(3.5)  # the idle timeout in this run is 3 s
    closed = 0
    for s in socks:
        s.settimeout(0.1)
        try:
            closed += s.recv(1) == b""
        except socket.timeout:
            pass
        except OSError:
            closed += 1
        s.close()
    return status, (f"{len(socks)} unfinished request heads: /api/info answered {status} in {took * 1000:.0f} ms; "
                    f"{closed} of them closed by the server after the idle timeout")


def main() -> int:
    start = {"loadavg": os.getloadavg()}
    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
    print("making the files from real speech ...", flush=True)
    x20 = speech(20 * 60)
    files = {
        "normal upload (RAVDESS FLAC, 3.8 s)": ("clip.flac", (RAVDESS / "Actor_04" / "03-01-05-02-01-01-04.flac").read_bytes()),
        "8 KB WAV whose header says 1 Hz": ("tiny.wav", claims_1_hz(x20)),
        "8-channel FLAC of speech (60 s)": ("eight.flac", wav(x20[: 60 * RATE], channels=8, fmt="FLAC")),
        "20-minute Opus named .mp4": ("talk.mp4", opus(x20)),
        "10-minute WAV (the duration limit, accepted)": ("ten.wav", wav(x20[: 600 * RATE])),
        "samples x1e30 (float WAV, 10 s)": ("loud.wav", wav(x20[: 10 * RATE] * 1e30, subtype="FLOAT")),
        "random bytes named .mp4 (100 KB)": ("noise.mp4", np.random.default_rng(0).bytes(100_000)),
    }
    for label, (name, data) in files.items():
        print(f"  {label}: {len(data) / 1000:.0f} KB", flush=True)
    rows = []
    server = Server("--idle-timeout-s", "3")
    idle = {"server_idle_rss_mb": round(server.status_kb("VmRSS") / 1024, 1)}
    try:
        for label, (name, data) in files.items():
            rows.append(measure(server, label, lambda: post(server, name, data)) | {"bytes": len(data)})
        rows.append(measure(server, "54 idle WebSockets (cap 16)", lambda: idle_websockets(server)))
        time.sleep(4)  # the held ones time out
        rows.append(measure(server, "a stream pushing 60 s of audio at once", lambda: fast_stream(server, x20[: 60 * RATE])))
        rows.append(measure(server, "client leaves during a 10-minute upload's work",
                            lambda: leave_mid_work(server, files["10-minute WAV (the duration limit, accepted)"][1])))
        rows.append(measure(server, "40 slowloris connections", lambda: slowloris(server)))
    finally:
        log = server.stop()
    end = {"loadavg": os.getloadavg()}
    result = {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python bench/bench_serve_abuse.py",
        "server": "liser serve --port 0 --threads 1 --idle-timeout-s 3 (the packaged default model; other limits at "
                  "their defaults)",
        "machine": {"nproc": os.cpu_count(), "cpu_model": cpu_model, "loadavg_start": start["loadavg"],
                    "loadavg_end": end["loadavg"], "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d"),
        **idle,
        "cases": rows,
        "server_log_bytes": len(log),
        "server_log_tracebacks": log.count("Traceback"),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"server idle RSS {idle['server_idle_rss_mb']} MB; log {len(log)} bytes, {log.count('Traceback')} "
          f"tracebacks; wrote {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
