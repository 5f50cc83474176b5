// node bench.js MODEL.onnx FILE.wav...: one session, each 16 kHz WAV run REPEATS times after a warm-up;
// prints {"files", "ms_median" (per file, the median of each file's median), "per_file"} as JSON.
const ort = require('onnxruntime-node');
const { readWav } = require('./predict.js');
const REPEATS = 5;

async function main([model, ...wavs]) {
  const session = await ort.InferenceSession.create(model, { intraOpNumThreads: 1, interOpNumThreads: 1 });
  const median = (v) => v.slice().sort((a, b) => a - b)[Math.floor(v.length / 2)];
  const perFile = [];
  for (const wav of wavs) {
    const x = readWav(wav), feed = { waveform: new ort.Tensor('float32', x, [x.length]) };
    await session.run(feed);
    const times = [];
    for (let r = 0; r < REPEATS; r++) {
      const t0 = process.hrtime.bigint();
      await session.run(feed);
      times.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
    perFile.push({ file: wav, seconds: x.length / 16000, ms: median(times) });
  }
  console.log(JSON.stringify({ files: perFile.length, ms_median: median(perFile.map((f) => f.ms)), per_file: perFile }));
}

main(process.argv.slice(2)).catch((e) => { console.error(e.message); process.exit(1); });
