// node predict.js MODEL.onnx FILE.wav: a liser waveform-in model (`liser export --waveform`) on one WAV file.
// The WAV must be 16 kHz (the model's input contract); 16-bit PCM or 32-bit float, channels averaged to mono.
// Prints {"label", "probabilities", "speech_s"} as JSON; exits 2 when a "speech" model finds under 0.5 s of speech.
const fs = require('fs');
const ort = require('onnxruntime-node');

function readWav(path) {
  const b = fs.readFileSync(path);
  if (b.toString('ascii', 0, 4) !== 'RIFF' || b.toString('ascii', 8, 12) !== 'WAVE') throw new Error(`${path}: not a WAV file`);
  let fmt = null, data = null;
  for (let at = 12; at + 8 <= b.length; at += 8 + b.readUInt32LE(at + 4) + (b.readUInt32LE(at + 4) % 2)) {
    const id = b.toString('ascii', at, at + 4), size = b.readUInt32LE(at + 4);
    if (id === 'fmt ') fmt = { tag: b.readUInt16LE(at + 8), channels: b.readUInt16LE(at + 10), rate: b.readUInt32LE(at + 12), bits: b.readUInt16LE(at + 22) };
    if (id === 'fmt ' && fmt.tag === 0xfffe) fmt.tag = b.readUInt16LE(at + 32); // WAVE_FORMAT_EXTENSIBLE: its sub-format
    if (id === 'data') data = b.subarray(at + 8, at + 8 + Math.min(size, b.length - at - 8));
  }
  if (!fmt || !data) throw new Error(`${path}: no fmt or data chunk`);
  if (fmt.rate !== 16000) throw new Error(`${path}: ${fmt.rate} Hz; the model takes 16 kHz (resample first)`);
  const pcm16 = fmt.tag === 1 && fmt.bits === 16, float32 = fmt.tag === 3 && fmt.bits === 32;
  if (!pcm16 && !float32) throw new Error(`${path}: only 16-bit PCM or 32-bit float WAV (format ${fmt.tag}, ${fmt.bits} bits)`);
  const step = fmt.bits / 8, n = Math.floor(data.length / step / fmt.channels), x = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let sum = 0;
    for (let c = 0; c < fmt.channels; c++) {
      const at = (i * fmt.channels + c) * step;
      sum += pcm16 ? data.readInt16LE(at) / 32768 : data.readFloatLE(at);
    }
    x[i] = sum / fmt.channels;
  }
  return x;
}

async function main([model, wav]) {
  const session = await ort.InferenceSession.create(model, { intraOpNumThreads: 1 });
  const x = readWav(wav);
  const out = await session.run({ waveform: new ort.Tensor('float32', x, [x.length]) });
  const classes = out.classes.data, p = out.probabilities.data;
  const speech = out.speech_s ? out.speech_s.data[0] : null;
  if (speech !== null && speech < 0.5) {
    console.error(`${wav}: no speech found (a speech span of ${speech.toFixed(2)} s; at least 0.5 s needed)`);
    process.exit(2);
  }
  const best = p.indexOf(Math.max(...p));
  const probabilities = Object.fromEntries(classes.map((c, i) => [c, p[i]]));
  console.log(JSON.stringify({ label: classes[best], probabilities, speech_s: speech }));
}

module.exports = { readWav };
if (require.main === module) main(process.argv.slice(2)).catch((e) => { console.error(e.message); process.exit(1); });
