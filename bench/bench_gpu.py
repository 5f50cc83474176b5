"""Benchmark: liser on a CUDA GPU against the CPU of the same machine (issue 14, "The GPU path").

Measures, on a RAVDESS-layout folder (six actors are enough):

1. the student: seconds per epoch of a no-dstl run through `liser.student.train.train`
   with device cuda and cpu (same config and seed), and the logits of one
   model on both devices (parity);
2. LoRA fine-tuning of a HuBERT-base-sized encoder (random weights from
   transformers' default HubertConfig: the hub is unreachable): seconds per
   optimisation step on 8 crops of 8 s, bf16 autocast on CUDA;
3. speech-teacher labeling: audio seconds per second of
   `label_with_speech_teacher` (contextual 0.5 s pieces, a fresh feature
   cache), with the frozen HuBERT-base and, when given, the Whisper-base encoder.

Prints each figure and writes them to --json. Run by bench/gpu_check.sh on a
machine with a GPU; nothing here runs in CI.

    python bench/bench_gpu.py --data DIR [--whisper DIR] --json bench/results/gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

FOLD = {"train": ["Actor_01", "Actor_02", "Actor_03", "Actor_04"], "val": ["Actor_05"], "test": ["Actor_06"]}


def log(msg: str) -> None:
    print(msg, flush=True)


def student(data: Path, work: Path, devices: list[str], epochs: int) -> dict:
    """Seconds per epoch (train + validation) of the no-dstl student on each device, and logits parity."""
    import torch

    from liser.core.config import Config
    from liser.data.corpora import prepare
    from liser.student.model import Student
    from liser.student.train import train

    m = prepare("ravdess", data, progress=False)
    m.save(work / "manifest")
    (work / "folds.json").write_text(json.dumps({"corpus": "ravdess", "k": 1, "seed": 0, "folds": [FOLD]}))
    out = {"items": len(m.items), "epochs": epochs}
    for dev in devices:
        cfg = Config(name=f"gpu-{dev}", manifest=str(work / "manifest"), folds=str(work / "folds.json"),
                     work=str(work), out=str(work / "runs"), epochs=epochs, lr=1e-3, device=dev,
                     val_stride_s=0.5, test_stride_s=0.5)
        t0 = time.time()
        run = train(cfg, progress=False)
        rows = (run / "epochs.csv").read_text().splitlines()[1:]
        epoch_s = [float(r.split(",")[-2]) for r in rows]
        res = json.loads((run / "metrics.json").read_text())
        out[dev] = {"epoch_s_median": round(float(np.median(epoch_s)), 3),
                    "epochs_per_s": round(1 / float(np.median(epoch_s)), 3), "wall_s": round(time.time() - t0, 1),
                    "test_uar": round(res["test"]["uar"], 4), "val_uar": round(res["val"]["uar"], 4)}
        log(f"student {dev}: {out[dev]}")
    if "cuda" in devices and "cpu" in devices:
        torch.manual_seed(0)
        model = Student(8, 7).eval()
        x = torch.randn(64, 64, 94) * 20 - 40
        with torch.no_grad():
            a = model.classify(x)
            b = model.to("cuda").classify(x.cuda()).cpu()
        out["parity_max_abs_logit_diff"] = float((a - b).abs().max())
        out["cuda_over_cpu_speedup"] = round(out["cpu"]["epoch_s_median"] / out["cuda"]["epoch_s_median"], 2)
        log(f"student parity: max |logit cpu - cuda| = {out['parity_max_abs_logit_diff']:.2e}")
    return out


def hubert_base(work: Path) -> str:
    """A HuBERT-base-sized encoder with random weights, saved as a local backbone folder."""
    import torch
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    d = work / "hubert-base-random"
    if not (d / "config.json").is_file():
        HubertModel(HubertConfig()).save_pretrained(d)
    return str(d)


def lora_steps(backbone: str, device: str, steps: int, batch: int = 8, seconds: float = 8.0) -> dict:
    """Seconds per LoRA optimisation step (forward, backward, AdamW) on `batch` crops of `seconds`."""
    import torch

    from liser.teachers.speech.teacher import Backbone, _make_head

    bb = Backbone(backbone, device)
    bb.add_lora(8, 16, 0.1)
    bb.model.train()
    head = _make_head(bb.n_states, bb.dim, 8).to(bb.device)
    params = list(head.parameters()) + [p for p in bb.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(int(seconds * 16000)).astype(np.float32) * 0.1 for _ in range(batch)]
    y = torch.arange(batch, device=bb.device) % 8
    times = []
    warm = 2 if device.startswith("cuda") else 1
    for i in range(steps + warm):  # warm-up steps (CUDA kernels, allocator) are not timed
        if bb.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.time()
        loss = torch.nn.functional.cross_entropy(head(bb.pooled(waves, grad=True)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if bb.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warm:
            times.append(time.time() - t0)
    n_lora = sum(p.numel() for p in bb.model.parameters() if p.requires_grad)
    return {"step_s": round(float(np.median(times)), 4), "steps": steps, "batch": batch, "crop_s": seconds,
            "lora_params": n_lora, "audio_s_per_s": round(batch * seconds / float(np.median(times)), 1)}


def labeling(backbone: str, data: Path, work: Path, device: str, n_items: int, tag: str) -> dict:
    """Audio-s/s of labeling n_items pool files (contextual pieces, fresh cache), after a 1-epoch head fit."""
    from liser.data.corpora import Manifest, prepare
    from liser.teachers.speech.teacher import SpeechTeacherConfig, fit_speech_teacher
    from liser.teachers.speech.label import label_with_speech_teacher

    m = prepare("ravdess", data, progress=False)
    train_ids = [it.id for it in m.items if it.speaker in FOLD["train"]][:96]
    cfg = SpeechTeacherConfig(backbone=backbone, mode="frozen", epochs=1, train_pieces=True, device=device,
                              cache_dir=str(work / f"cache-{tag}-{device}-fit"))
    teacher = fit_speech_teacher(m, train_ids, work / f"teacher-{tag}-{device}", cfg).teacher
    teacher.cfg = SpeechTeacherConfig(**{**teacher.cfg.__dict__, "cache_dir": str(work / f"cache-{tag}-{device}")})
    pool = Manifest(corpus="pool", root=m.root, items=[it for it in m.items if it.speaker in FOLD["test"]][:n_items])
    t0 = time.time()
    label_with_speech_teacher(teacher, pool, work / f"store-{tag}-{device}", progress=False)
    dt = time.time() - t0
    audio_s = sum(it.duration for it in pool.items)
    return {"items": len(pool.items), "audio_s": round(audio_s, 1), "wall_s": round(dt, 2),
            "audio_s_per_s": round(audio_s / dt, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="RAVDESS-layout folder with Actor_01..Actor_06")
    ap.add_argument("--whisper", default="", help="local Whisper-base encoder folder (optional)")
    ap.add_argument("--devices", nargs="*", default=["cuda", "cpu"])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lora-steps", type=int, nargs=2, default=[10, 2], metavar=("CUDA", "CPU"))
    ap.add_argument("--label-items", type=int, nargs=2, default=[60, 20], metavar=("CUDA", "CPU"))
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    import torch

    out = {"date": str(date.today()), "command": "bash bench/gpu_check.sh",
           "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
                      f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}",
           "torch": torch.__version__, "cpu_threads": torch.get_num_threads()}
    log(json.dumps(out))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        out["student"] = student(Path(args.data), work, args.devices, args.epochs)
        hub = hubert_base(work)
        out["lora_hubert_base"] = {}
        for dev, n in zip(("cuda", "cpu"), args.lora_steps):
            if dev in args.devices:
                out["lora_hubert_base"][dev] = lora_steps(hub, dev, n)
                log(f"lora {dev}: {out['lora_hubert_base'][dev]}")
        out["labeling"] = {}
        backbones = {"hubert-base-random": hub, **({"whisper-base": args.whisper} if args.whisper else {})}
        for tag, bb in backbones.items():
            for dev, n in zip(("cuda", "cpu"), args.label_items):
                if dev in args.devices:
                    out["labeling"][f"{tag}-{dev}"] = labeling(bb, Path(args.data), work, dev, n, tag)
                    log(f"labeling {tag} {dev}: {out['labeling'][f'{tag}-{dev}']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    log(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
