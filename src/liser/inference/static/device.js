// liser serve's "on this device" mode: the timeline of the microphone computed in the page with
// onnxruntime-web (WASM, one thread); no audio leaves the browser. Each piece mirrors the server's
// (liser.inference.serve.LiveTimeline), so the page's windows are the server's (docs/serve.md: the measured bound):
//   Resampler       the microphone's rate to 16 kHz (a Kaiser-windowed sinc, soxr HQ's pass and stop bands)
//   DeviceTimeline  3 s windows every hop on the frame grid, each from the same segment of samples the
//                   server would cut, scored by the timeline-window graph (liser.inference.waveform_onnx.build_window)
"use strict";

const SR = 16000, HOP = 512, CONTEXT = 1024, CLIP_FRAMES = 94, CLIP_SAMPLES = 48000, FRAME_S = 0.032;
const SILENCE_RMS = 1e-5, MIN_SPEECH_S = 0.5;

// ---- resampling: y[j] = sum_i x[i] h(j M / L - i), h a Kaiser-windowed sinc tabulated for each of the L phases
function besselI0(x) {  // the modified Bessel function of order 0 (numpy.i0), by its power series
  let sum = 1, term = 1;
  for (let k = 1; k < 500 && term > 1e-17 * sum; k++) { term *= (x / (2 * k)) ** 2; sum += term; }
  return sum;
}

function gcd(a, b) { while (b) [a, b] = [b, a % b]; return a; }

class Resampler {
  // pass band to 91.3 % of the lower Nyquist frequency, stop band (-120 dB) from it: soxr HQ's, so the
  // 16 kHz samples differ from the server's by about -75 dB (bench/bench_device_timeline.py)
  constructor(rate) {
    const g = gcd(rate, SR);
    this.L = SR / g; this.M = rate / g;
    if (this.L > 4096) throw new Error(`a microphone at ${rate} Hz: its ratio to 16 kHz needs too many filter phases`);
    const nyq = Math.min(rate, SR) / 2, fc = (1 + 0.913) / 2 * nyq, dw = (1 - 0.913) * nyq, A = 120;
    const beta = 0.1102 * (A - 8.7), half = this.half = Math.ceil((A - 7.95) / (2.285 * 2 * Math.PI * dw / rate) / 2);
    const taps = 2 * half + 1, f = 2 * fc / rate, i0b = besselI0(beta);
    this.table = new Float64Array(this.L * taps);
    for (let ph = 0; ph < this.L; ph++) {
      for (let k = -half; k <= half; k++) {
        const tau = ph / this.L - k, u = tau / half;
        const w = Math.abs(tau) < half ? besselI0(beta * Math.sqrt(Math.max(0, 1 - u * u))) / i0b : 0;
        const sinc = tau === 0 ? 1 : Math.sin(Math.PI * f * tau) / (Math.PI * f * tau);
        this.table[ph * taps + k + half] = f * sinc * w;
      }
    }
    this.x = new Float64Array(half); this.x0 = -half;  // input samples from index x0 on: zeros before 0
    this.n = 0; this.j = 0;  // inputs received, next output
  }

  push(samples) { return this.run(samples, false); }
  finish() { return this.run(new Float32Array(0), true); }  // the tail, as if zeros followed

  run(samples, last) {
    const x = new Float64Array(this.x.length + samples.length + (last ? this.half + 2 : 0));
    x.set(this.x); x.set(samples, this.x.length);
    this.n += samples.length; this.x = x;
    const taps = 2 * this.half + 1, out = [];
    const end = last ? Math.floor(this.n * this.L / this.M + 0.5) : Infinity;
    for (;;) {
      const q = Math.floor(this.j * this.M / this.L), ph = this.j * this.M - q * this.L;
      if (this.j >= end || (!last && q + this.half >= this.n)) break;
      let acc = 0;
      const at = q - this.half - this.x0, row = ph * taps;
      for (let k = 0; k < taps; k++) acc += x[at + k] * this.table[row + k];
      out.push(acc); this.j++;
    }
    const keep = Math.floor(this.j * this.M / this.L) - this.half;  // the next output's first input
    if (keep > this.x0) { this.x = this.x.slice(keep - this.x0); this.x0 = keep; }
    return Float32Array.from(out);
  }
}

// ---- the timeline: liser.inference.serve.LiveTimeline's windows, each scored by the window graph
function roundHalfEven(v) { const r = Math.round(v); return Math.abs(v % 1) === 0.5 ? 2 * Math.round(v / 2) : r; }

function windowStarts(totalFrames, hopS) {  // liser.data.audio.window_starts
  const last = totalFrames - CLIP_FRAMES, step = hopS / FRAME_S;
  if (last <= 0) return [0];
  const starts = [];
  for (let i = 0; i * step < last + 1e-9; i++) {
    const s = roundHalfEven(i * step);
    if (s <= last && s !== starts[starts.length - 1]) starts.push(s);
  }
  if (starts[starts.length - 1] !== last) starts.push(last);
  return starts;
}

class DeviceTimeline {
  // score(segment, firstRow) -> {logits: Float32Array, speech_s: number | null}; windows are
  // {start, end, label, p, probabilities, logits[, no_speech]} as the server sends them
  constructor(score, classes, hopS) {
    this.score = score; this.classes = classes; this.hopS = hopS; this.step = hopS / FRAME_S;
    this.buf = new Float32Array(0); this.bufStart = 0; this.total = 0; this.k = 0; this.last = -1; this.sumsq = 0;
  }

  get seconds() { return this.total / SR; }
  start(k) { return roundHalfEven(k * this.step); }
  segmentStart(frame) { return Math.max(0, frame * HOP - CONTEXT); }

  async push(x) {  // 16 kHz samples -> the windows they completed
    this.append(x);
    const out = [];
    for (;;) {
      const f = this.start(this.k), stop = (f + CLIP_FRAMES - 1) * HOP + CONTEXT;
      if (this.total < stop) return out;
      const a = this.segmentStart(f);
      out.push(await this.window(f, this.slice(a, stop), f - a / HOP));
      this.last = f; this.k++;
      const flush = 1 + Math.floor(this.total / HOP) - CLIP_FRAMES;
      this.dropBefore(this.segmentStart(Math.min(this.start(this.k), flush)));
    }
  }

  async finish() {  // the remaining windows once the stream has ended
    if (this.total === 0) throw new Error("the stream ended before any audio arrived");
    if (Math.sqrt(this.sumsq / this.total) < SILENCE_RMS)
      throw new Error(`the stream was silent throughout (${this.seconds.toFixed(1)} s below -100 dBFS): is the microphone muted?`);
    if (this.total < CLIP_SAMPLES) return [await this.window(0, this.slice(0, this.total), 0)];  // one padded window
    const starts = windowStarts(1 + Math.floor(this.total / HOP), this.hopS).filter((f) => f > this.last);
    if (!starts.length) return [];
    const a = this.segmentStart(starts[0]), seg = this.slice(a, this.total), out = [];
    for (const f of starts) out.push(await this.window(f, seg, f - a / HOP));
    return out;
  }

  append(x) {
    const b = new Float32Array(this.buf.length + x.length);
    b.set(this.buf); b.set(x, this.buf.length); this.buf = b; this.total += x.length;
    for (let i = 0; i < x.length; i++) this.sumsq += x[i] * x[i];
  }

  slice(a, b) { return this.buf.slice(a - this.bufStart, b - this.bufStart); }

  dropBefore(sample) {
    if (sample > this.bufStart) { this.buf = this.buf.slice(sample - this.bufStart); this.bufStart = sample; }
  }

  async window(f, segment, row) {
    const { logits, speech_s } = await this.score(segment, row);
    const t0 = f * FRAME_S, w = { start: round(t0, 3), end: round(Math.min(t0 + 3, this.seconds), 3) };
    if (speech_s !== null && speech_s < MIN_SPEECH_S)
      return { ...w, label: null, p: null, probabilities: {}, logits: [], no_speech: true };
    const z = Array.from(logits), top = Math.max(...z), e = z.map((v) => Math.exp(v - top));
    const sum = e.reduce((s, v) => s + v, 0), p = e.map((v) => v / sum), best = z.indexOf(top);
    return { ...w, label: this.classes[best], p: round(p[best], 6),
             probabilities: Object.fromEntries(this.classes.map((c, i) => [c, round(p[i], 6)])),
             logits: z.map((v) => round(v, 6)) };
  }
}

function round(v, digits) { const m = 10 ** digits; return Math.round(v * m) / m; }

// ---- onnxruntime-web, from the server's /ort/ (npm's build), and the window graph from /api/device/model.onnx
function loadScript(src) {
  return new Promise((ok, fail) => {
    const s = document.createElement("script");
    s.src = src; s.onload = ok; s.onerror = () => fail(new Error(`${src} did not load`));
    document.head.appendChild(s);
  });
}

async function openDeviceModel(device) {  // -> score(segment, row), as DeviceTimeline takes it
  if (!window.ort) await loadScript(device.script);
  ort.env.wasm.numThreads = 1;  // no SharedArrayBuffer: the page needs no cross-origin isolation
  ort.env.wasm.wasmPaths = device.script.slice(0, device.script.lastIndexOf("/") + 1);
  const session = await ort.InferenceSession.create(device.model, { executionProviders: ["wasm"] });
  return async (segment, row) => {
    const out = await session.run({ waveform: new ort.Tensor("float32", segment, [segment.length]),
                                    first_frame: new ort.Tensor("int64", BigInt64Array.of(BigInt(row)), []) });
    return { logits: out.logits.data, speech_s: out.speech_s ? out.speech_s.data[0] : null };
  };
}

window.LiserDevice = { Resampler, DeviceTimeline, openDeviceModel, windowStarts };
