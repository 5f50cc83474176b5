"""The `liser` command: every sub-command is registered here, explicitly, over the package's functions.

    quickstart  the whole LiSER pipeline, small (configs/grid-quickstart.yaml)
    prepare     corpus folder -> manifest           folds       speaker-independent folds / --check
    train       one fold of a configuration          cv          every fold + the summary table
    evaluate    re-evaluate a run / --on a corpus    experiment  a grid of runs + report.md
    teacher     fit a speech teacher per fold; label the unlabeled pool into soft-label stores
    faces       face tracks of a video manifest      predict     labels with a student (default: the packaged one)
    export      a run's student to ONNX (fp32, int8), parity-checked
    adapt       a student adapted to a folder of unlabeled recordings (a teacher labels them)
    serve       a web page: the microphone's emotion timeline, live, or an uploaded file's

Heavy modules are imported inside the handlers, so `liser --help` stays fast
and every command is listed even when an optional dependency is missing.
`pip install liser` is inference only: each command's extra is in
COMMAND_EXTRAS, checked before the command runs (liser.core.extras), and a
command whose extra is missing says which, in one line (`liser: liser train
needs the 'train' extra: pip install 'liser[train]'`), exit 2.
User errors (LiserError) print one line, `liser: <message>`, and exit 2; so
do outputs that cannot be written (read-only, full disk: the path and the
reason) and a full stdout. A closed stdout (`liser predict DIR | head -1`)
stops the command quietly, with status 141 as a process ended by SIGPIPE.
Outputs (`-o`, `--onnx`, `--json`, `out:`) replace only liser's own output
of the same kind (liser.core.outputs).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from liser.core.errors import LiserError


def _progress() -> bool:
    return sys.stderr.isatty()


def _config(args):
    from liser.core.config import Config

    cfg = Config.load(args.config, args.set or [])
    if getattr(args, "fold", None) is not None:
        cfg = cfg.replace(fold=args.fold)
    return cfg


def _folds(args):
    return [int(x) for x in args.folds.split(",")] if getattr(args, "folds", None) else None


# ---------------------------------------------------------------- handlers
def cmd_prepare(args) -> int:
    from liser.data.corpora import prepare
    from liser.core.outputs import MANIFEST, check_out_dir

    inputs = [(args.root, f"{args.corpus} corpus root")] + ([(args.csv, "label CSV")] if args.csv else [])
    check_out_dir(args.out, MANIFEST, inputs)  # now, before every file is read (Manifest.save checks again)
    kw = {"csv": args.csv} if args.csv else {}
    m = prepare(args.corpus, args.root, progress=_progress(), **kw)
    out = m.save(args.out)
    print(f"{out}: {len(m.items)} items, {len(m.speakers)} speakers, classes {m.classes or '(unlabeled)'}, "
          f"{sum(it.duration for it in m.items) / 3600:.2f} h; {len(m.rejected)} rejected")
    for r in m.rejected[:10]:
        print(f"  rejected {r['path']}: {r['reason']}")
    if len(m.rejected) > 10:
        print(f"  ... {len(m.rejected) - 10} more in {out / 'rejected.csv'}")
    return 0


def cmd_folds(args) -> int:
    from liser.data.corpora import Manifest
    from liser.data.folds import check_folds, folds_for_manifest, load_folds

    m = Manifest.load(args.manifest)
    if args.check:
        f = load_folds(args.check)
        check_folds(f, m, source=args.check)
        print(f"{args.check}: {len(f)} folds, no speaker leak, every speaker of {args.manifest} used")
        return 0
    f = folds_for_manifest(m, args.k, args.seed)
    out = Path(args.out or f"{m.corpus}-folds.json")
    f.save(out)
    for fold in f:
        print(f"fold {fold.index}: train {len(fold.train)} val {len(fold.val)} test {len(fold.test)} speakers")
    print(f"wrote {out}")
    return 0


def cmd_train(args) -> int:
    from liser.core.outputs import check_runs_out
    from liser.student.train import train

    cfg = _config(args)
    check_runs_out(cfg)
    run = train(cfg, progress=_progress())
    m = json.loads((run / "metrics.json").read_text())
    print(f"{run}: test UAR {m['test']['uar']:.3f} WAR {m['test']['war']:.3f} (best epoch {m['best_epoch']})")
    return 0


def cmd_cv(args) -> int:
    from liser.experiments.grid import run_folds

    summary = run_folds(_config(args), folds=_folds(args), jobs=args.jobs, progress=_progress(), ray=args.ray)
    print(summary["table"])
    return 0


def cmd_evaluate(args) -> int:
    if args.on:
        return cmd_evaluate_on(args)
    if args.map or args.json:
        raise LiserError("--map and --json go with --on (cross-corpus evaluation)")
    from liser.experiments.grid import evaluate_run

    m = evaluate_run(args.run, stride_s=args.stride, write=args.write)
    print(f"{args.run}: test UAR {m['uar']:.3f} WAR {m['war']:.3f} (n={m['n']}, stride {args.stride} s)")
    w = max(len(c) for c in m["classes"])
    for c, r in m["per_class_recall"].items():
        print(f"  {c:<{w}}  recall {'-' if r is None else f'{r:.3f}'}")
    return 0


def cmd_evaluate_on(args) -> int:
    from liser.experiments.cross import evaluate_on, parse_maps

    if args.write:
        raise LiserError("--write rewrites the run's own test metrics; it does not go with --on")
    maps = parse_maps(args.map)
    r = evaluate_on(args.run, args.on, maps, stride_s=args.stride, work=args.work, out=args.json, progress=_progress())
    print(f"{args.run} ({r['train_corpus']}) on {r['test_corpus']}: UAR {r['uar']:.3f} WAR {r['war']:.3f} over "
          f"{len(r['classes'])} shared classes (n={r['n']} of {r['test_files']}; UAR {r['uar_any_output']:.3f} "
          f"when every student output may be predicted)")
    print("  mapping: " + ", ".join(f"{a}->{b or '(dropped)'}" for a, b in r["mapping"].items()))
    for c, n in r["dropped"].items():
        why = f"--map {c}=" if maps.get(c, None) == "" else f"the student cannot output it; map it with --map {c}=CLASS"
        print(f"  dropped {c}: {n} files ({why})")
    if r["untested"]:
        print(f"  student classes no test file maps to: {', '.join(r['untested'])}")
    w = max(len(c) for c in r["classes"])
    for c, rec in r["per_class_recall"].items():
        print(f"  {c:<{w}}  recall {rec:.3f}")
    print(f"wrote {r['json']}")
    return 0


def cmd_experiment(args) -> int:
    from liser.experiments.grid import run_grid, summary_table

    res = run_grid(args.grid, args.set or [], args.jobs, progress=_progress(), report=not args.no_report, ray=args.ray)
    rows = {name: by_frac.get("1", next(iter(by_frac.values()))) for name, by_frac in res["configs"].items()}
    print(summary_table({n: {**r, "folds": r["n_folds"]} for n, r in rows.items()}))
    return 0


def cmd_teacher_fit(args) -> int:
    import numpy as np

    from liser.teachers.pipeline import fit_speech_teachers, speech_teacher_config

    cfg = _config(args)
    speech_teacher_config(cfg, args.teacher_set or [])  # a bad --teacher-set fails now, before any data is read
    evals = fit_speech_teachers(cfg, _folds(args), args.teacher_set or [], _progress())
    print("| fold | test UAR | test UAR (0.5 s pieces) | val ECE |\n|---|---|---|---|")
    for e in evals:
        print(f"| {e['fold']} | {e['uar']:.3f} | {e['uar_pieces']:.3f} | {e['calibration']['ece']:.3f} |")
    if evals:
        print(f"mean test UAR {np.mean([e['uar'] for e in evals]):.3f} over {len(evals)} folds")
    return 0


def cmd_teacher_label(args) -> int:
    from liser.teachers.pipeline import label_speech, label_video, speech_teacher_config
    from liser.core.util import parse_shard

    cfg = _config(args)
    shard = parse_shard(args.shard)
    if args.ray is not None:  # shards as Ray tasks (liser.experiments.distributed); the same functions as below, per shard
        from liser.experiments.distributed import ray_label

        if args.shard:
            raise LiserError("--shard and --ray do not go together: with --ray, Ray runs every shard")
        ray_label(cfg, args.teacher, _folds(args), args.teacher_set or [], args.ray, progress=_progress())
        return 0
    if args.teacher == "speech":
        speech_teacher_config(cfg, args.teacher_set or [])
        label_speech(cfg, _folds(args), shard, args.teacher_set or [], _progress())
    else:
        label_video(cfg, shard, _progress())
    return 0


def cmd_faces(args) -> int:
    from liser.data.corpora import Manifest
    from liser.data.faces import extract_faces_manifest
    from liser.core.util import parse_shard

    s = extract_faces_manifest(Manifest.load(args.manifest), args.out, size=args.size, shard=parse_shard(args.shard),
                               progress=_progress(), face_select=args.face_select)
    print(" ".join(f"{k}={v}" for k, v in s.items() if not isinstance(v, (list, dict))))
    return 0


def cmd_predict(args) -> int:
    from liser.inference.default_model import model_and_inputs
    from liser.inference.predict import run_predict

    model, inputs = model_and_inputs(args.inputs)  # [MODEL] AUDIO...: no model = the packaged default
    return run_predict(model, inputs, fmt="json" if args.json else "csv" if args.csv else "text",
                       timeline=args.timeline, stream_input=args.stream, stride=args.stride, threads=args.threads,
                       raw=args.raw, window_s=args.window)


def cmd_serve(args) -> int:
    from liser.inference.serve import run_serve

    from liser.inference.serve_limits import ServeLimits

    limits = ServeLimits().replace(**{f: getattr(args, f) for f in SERVE_LIMIT_OPTIONS},
                                   allow_origins=tuple(args.allow_origin or ()) or None,
                                   allow_hosts=tuple(args.allow_host or ()) or None)
    return run_serve(args.model, host=args.host, port=args.port, hop_s=args.hop, threads=args.threads, limits=limits,
                     ort_web=args.ort_web, window_s=args.window)


def cmd_export(args) -> int:
    from liser.inference.export import export_onnx
    from liser.core.outputs import check_onnx_outputs
    from liser.inference.default_model import packaged

    int8 = True if args.int8 == "" else args.int8
    check_onnx_outputs(args.onnx, int8)
    # a packaged model by name: its int8 graph wrapped as it is (--waveform), else its checkpoint re-exported
    run = packaged(args.run, "onnx" if args.waveform else "pt") or args.run
    export_onnx(run, args.onnx, int8=int8, opset=args.opset, check_files=args.check_files, threads=args.threads,
                waveform=args.waveform, dft=args.dft)
    return 0


def cmd_adapt(args) -> int:
    from liser.inference.adapt import adapt
    from liser.student.adapt import AdaptOptions

    report = adapt(args.folder, args.out, args.teacher, model=args.model,
                   options=AdaptOptions(epochs=args.epochs, anchor=args.anchor), threads=args.threads,
                   progress=_progress())
    measured = (f"agreement with the teacher on {report['check_files']} held-out files {report['agreement_before']:.3f}"
                f" -> {report['agreement_after']:.3f}" if args.teacher else
                f"BatchNorm statistics of {report['adapt_files']} files; {report['changed_vs_start']:.0%} of "
                f"{report['check_files']} held-out files changed label")
    print(f"wrote {Path(args.out) / 'liser-adapted-int8.onnx'}: {measured} (card: {Path(args.out) / 'MODEL_CARD.md'})")
    return 0


def cmd_quickstart(args) -> int:
    from liser.cli.quickstart import quickstart

    quickstart(args.grid, args.set or [], progress=_progress())
    return 0


# ---------------------------------------------------------------- parsers
def _with_config(sp, required: bool = False) -> None:
    if required:
        sp.add_argument("config", help="the student config whose data, folds and stores are meant (configs/*.yaml)")
    else:
        sp.add_argument("config", nargs="?", help="YAML config (configs/*.yaml); omitted = defaults")
    sp.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE",
                    help="override config keys: --set a=1 b=2, or --set a=1 --set b=2 (every key, with a comment: "
                         "src/liser/core/config.py; docs/guide.md)")


def _with_ray(sp, what: str) -> None:
    sp.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                    help=f"{what}; ADDRESS: auto (the cluster of `ray start`), HOST:PORT, or none for a local Ray "
                         "(needs the extra liser[ray]; docs/scale.md)")


def add_prepare(sub) -> None:
    sp = sub.add_parser("prepare", help="corpus folder -> manifest directory")
    sp.add_argument("corpus", help="ravdess, cremad, emodb, tess, urdu, generic, unlabeled, videos, mspface")
    sp.add_argument("root", help="corpus root folder")
    sp.add_argument("-o", "--out", required=True, help="manifest directory to write")
    sp.add_argument("--csv", help="generic corpus: CSV with path,speaker,label (default ROOT/labels.csv)")
    sp.set_defaults(func=cmd_prepare, resumes=False)  # redone from the start (nothing half-written is kept)


def add_folds(sub) -> None:
    sp = sub.add_parser("folds", help="speaker-independent folds of a manifest, or --check a fold file")
    sp.add_argument("manifest", help="manifest directory")
    sp.add_argument("-k", type=int, default=5, help="number of folds (default 5)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("-o", "--out", help="fold file to write (default <corpus>-folds.json)")
    sp.add_argument("--check", metavar="FOLDS", help="check a fold file (shipped name or path) against the manifest")
    sp.set_defaults(func=cmd_folds, resumes=False)


def add_train(sub) -> None:
    sp = sub.add_parser("train", help="train one fold of a configuration")
    _with_config(sp)
    sp.add_argument("--fold", type=int, help="fold to train (overrides the config)")
    sp.set_defaults(func=cmd_train)


def add_cv(sub) -> None:
    sp = sub.add_parser("cv", help="train and test every fold of a configuration; print the summary table")
    _with_config(sp)
    sp.add_argument("--folds", help="comma-separated fold indices (default: all)")
    sp.add_argument("--jobs", type=int, default=1, help="folds trained in parallel processes")
    _with_ray(sp, "every fold a Ray task")
    sp.set_defaults(func=cmd_cv)


def add_evaluate(sub) -> None:
    sp = sub.add_parser("evaluate", help="evaluate a run's best checkpoint on its test speakers, or --on another corpus")
    sp.add_argument("run", help="run directory (holds best.pt and config.yaml)")
    sp.add_argument("--stride", type=float, default=0.1, help="sliding-window stride in seconds (default 0.1)")
    sp.add_argument("--write", action="store_true", help="rewrite the run's metrics.json and confusion.png")
    sp.add_argument("--on", metavar="MANIFEST_OR_CORPUS",
                    help="cross-corpus: score on another corpus, a manifest directory or CORPUS:ROOT "
                         "(e.g. emodb:../shared/data/emodb, prepared once under the run's work folder)")
    sp.add_argument("--map", action="extend", nargs="+", metavar="TEST=STUDENT",
                    help="with --on: map a test class onto a student class (calm=neutral) or drop it (surprised=); "
                         "same-name classes map by default, the others are dropped and reported")
    sp.add_argument("--json", metavar="PATH", help="with --on: where the result goes (default <run>/cross/<corpus>.json)")
    sp.add_argument("--work", help="with --on: cache root for the test manifest and features (default: the run's)")
    sp.set_defaults(func=cmd_evaluate, resumes=False)


def add_experiment(sub) -> None:
    sp = sub.add_parser("experiment", help="run a grid (configs x lambdas x fractions x folds) and write report.md")
    sp.add_argument("grid", help="grid YAML (configs/grid-*.yaml)")
    sp.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE",
                    help="override keys of the grid's base config")
    sp.add_argument("--jobs", type=int, help="runs in parallel processes (default: the grid's `jobs`)")
    sp.add_argument("--no-report", action="store_true", help="only train; write no report")
    _with_ray(sp, "every run a Ray task (CPUs = the run's threads, a GPU fraction when there is a GPU)")
    sp.set_defaults(func=cmd_experiment)


def add_teacher(sub) -> None:
    t = sub.add_parser("teacher", help="fit a speech teacher per fold; label unlabeled data with a teacher")
    tsub = t.add_subparsers(dest="action", required=True)

    def common(sp):
        _with_config(sp, required=True)
        sp.add_argument("--teacher-set", action="extend", nargs="+", metavar="KEY=VALUE",
                        help="override keys of the speech-teacher config (e.g. mode=lora epochs=10)")
        sp.add_argument("--folds", help="comma-separated folds (default: all)")

    sp = tsub.add_parser("fit", help="train the speech teacher of each fold on its training speakers")
    sp.add_argument("teacher", choices=["speech"], help="only the speech teacher is trained (the video one is used as is)")
    common(sp)
    sp.set_defaults(func=cmd_teacher_fit)

    sp = tsub.add_parser("label", help="label the config's unlabeled pool into its soft-label store(s)")
    sp.add_argument("teacher", choices=["speech", "video"])
    common(sp)
    sp.add_argument("--shard", metavar="I/N", help="label only items I, I+N, ... (run N processes, stores merge)")
    _with_ray(sp, "shards of the pool as Ray tasks, GPU workers where present; the stores merged")
    sp.set_defaults(func=cmd_teacher_label)


def add_faces(sub) -> None:
    sp = sub.add_parser("faces", help="detect, align and crop faces of every video of a manifest")
    sp.add_argument("manifest", help="manifest directory of videos (liser prepare videos|mspface ...)")
    sp.add_argument("-o", "--out", required=True, help="face-track directory (one .npz per video)")
    sp.add_argument("--size", type=int, default=112, help="aligned crop size in pixels (S2D wants 224)")
    sp.add_argument("--shard", metavar="I/N", help="only items I, I+N, ...")
    sp.add_argument("--face-select", choices=("largest", "active"), default="largest",
                    help="with several faces: the largest, most central one (default), or the one whose mouth moves "
                         "with the audio (falls back to the largest without audio or a second face)")
    sp.set_defaults(func=cmd_faces)


def add_predict(sub) -> None:
    sp = sub.add_parser("predict", help="emotion labels of audio files: the packaged default model, or a trained student or its ONNX export",
                        description="Predict the emotion of audio files, folders (recursive) or stdin (-: the bytes of "
                                    "any file a path accepts, recognised by content; headerless PCM only with --raw). "
                                    "Exit status 0 if all inputs succeeded, 1 if any failed. It does not resume: "
                                    "an interrupted run starts over.")
    sp.add_argument("inputs", nargs="+", metavar="[MODEL] AUDIO",
                    help="a model first (run directory, best.pt or .onnx; `phone` = the packaged model for telephone "
                         "calls; omitted = the default model that ships with liser), then audio/video files, "
                         "folders, or - for stdin")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true",
                   help="one JSON object per line for each file read: its label, or {path, error} when it got none")
    g.add_argument("--csv", action="store_true", help="CSV with a header row")
    sp.add_argument("--timeline", action="store_true", help="also the per-window predictions (--window long, --stride apart)")
    sp.add_argument("--window", type=float, default=3.0, metavar="S",
                    help="--timeline windows, seconds (1-3; default 3): shorter ones follow changes of emotion more "
                         "closely and change label more often (docs/results/timeline.md); speech-windowing models")
    sp.add_argument("--stream", action="store_true",
                    help="read incrementally (stdin raw PCM/WAV or a file in blocks); a prediction every --stride once 3 s are buffered")
    sp.add_argument("--raw", action="store_true",
                    help="stdin (-) is headerless 16 kHz mono 16-bit little-endian PCM (never assumed without this flag)")
    sp.add_argument("--threads", type=int, default=None,
                    help="CPU cores to use in all (default: every core): that many files at a time, one per core, "
                         "written in the order given; fewer files than cores share the rest within each file")
    sp.add_argument("--stride", type=float, default=None,
                    help="seconds between 3 s windows: whole-file scoring (default 0.1, the paper's; 3 = non-overlapping, "
                         "~30x faster), and the --timeline / --stream step (default 0.5)")
    sp.add_argument("--hop", dest="stride", type=float, help=argparse.SUPPRESS)  # deprecated name of --stride
    # glibc thresholds of 1 MB, not training's 1 GB: with a 1 GB trim threshold the blocks of a long file's
    # reads, its log-Mel chunks and window batches were never given back, and peak RSS grew with the file
    # (1.27 GB for 10 minutes); with 1 MB, an hour stays under 300 MB (bench/bench_predict_memory.py)
    sp.set_defaults(func=cmd_predict, resumes=False, malloc_threshold=1 << 20, one_blas_thread=True)


def add_export(sub) -> None:
    sp = sub.add_parser("export", help="export a run's student to ONNX (fp32, optionally int8) with a parity check",
                        description="Export the student's inference graph (log-Mel windows [B,64,94] -> logits [B,K]) "
                                    "to ONNX; the log-Mel front end stays a separate step (liser.data.frontend).")
    sp.add_argument("run", help="run directory (holds best.pt) or a best.pt checkpoint (with --waveform also an "
                                "exported log-Mel .onnx, wrapped as it is), or `phone`/`default`: a packaged model")
    sp.add_argument("--onnx", required=True, metavar="OUT.onnx", help="fp32 model to write")
    sp.add_argument("--waveform", action="store_true",
                    help="write waveform-in graphs: 16 kHz mono samples of any length -> the file's probabilities, "
                         "front end and windowing inside (docs/onnx.md); default: log-Mel windows in, logits out")
    sp.add_argument("--dft", choices=("matmul", "stft"), default="matmul",
                    help="with --waveform: the DFT as two MatMuls (default; every runtime) or the opset-17 STFT op")
    sp.add_argument("--int8", nargs="?", const="", default=None, metavar="PATH",
                    help="also write an int8 model (default <OUT>.int8.onnx); prints its test UAR next to fp32")
    sp.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    sp.add_argument("--check-files", nargs="+", metavar="AUDIO",
                    help="real audio files/folders for the parity check (default: the run's validation fold)")
    sp.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    sp.set_defaults(func=cmd_export, resumes=False)


def add_adapt(sub) -> None:
    from liser.student.adapt import AdaptOptions

    d = AdaptOptions()
    sp = sub.add_parser("adapt", help="adapt a student to a folder of your own unlabeled recordings (int8 ONNX and "
                                      "a card out)",
                        description="Adapt a student (by default the packaged default model) to the recordings under "
                                    "FOLDER, which need no labels. Without --teacher, its BatchNorm statistics are "
                                    "re-estimated on them (AdaBN: no teacher and no training). With --teacher, "
                                    "the teacher labels them, its soft labels are distilled into the student and the "
                                    "epoch that agrees best with it on held-out files is kept. Either way the result "
                                    "is exported as int8 ONNX with a model card (liser.inference.adapt). Resumable: "
                                    "run it again to continue.")
    sp.add_argument("folder", help="folder of audio or video recordings (searched recursively; others are skipped)")
    sp.add_argument("-o", "--out", required=True, help="output folder (new, empty, or an earlier `liser adapt` one)")
    sp.add_argument("--teacher", help="speech teacher folder (teacher.json; `liser teacher fit`), with the student's "
                                      "classes: distil its labels (default: none, BatchNorm statistics only)")
    sp.add_argument("--model", help="student to start from: a run folder, best.pt or `phone` (default: the default model)")
    sp.add_argument("--epochs", type=int, default=d.epochs,
                    help=f"with --teacher: passes over the folder (default {d.epochs})")
    sp.add_argument("--anchor", type=float, default=d.anchor,
                    help=f"with --teacher: weight that keeps the student near its start (default {d.anchor:g}; "
                         "0 = the teacher alone)")
    sp.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    sp.set_defaults(func=cmd_adapt)


SERVE_LIMIT_HELP = [  # (ServeLimits field, type, help)
    ("max_upload_mb", float, "largest upload, MB"),
    ("max_seconds", float, "most decoded audio per upload, seconds"),
    ("min_rate_hz", int, "lowest sample rate of an upload or stream, Hz"),
    ("max_rate_hz", int, "highest sample rate of an upload or stream, Hz"),
    ("max_channels", int, "most channels of an upload"),
    ("max_cpu_s", float, "CPU-seconds per upload"),
    ("max_wall_s", float, "seconds per upload once received, waiting included"),
    ("max_jobs", int, "uploads worked on at once (others wait)"),
    ("max_connections", int, "open connections at once (lowered to fit ulimit -n)"),
    ("max_websockets", int, "live sessions at once"),
    ("idle_timeout_s", float, "seconds without a request head, upload bytes or stream message before closing"),
    ("stream_rate", float, "live audio is read at most this many times real time"),
    ("stream_burst_s", float, "... after this many seconds of audio ahead"),
    ("stream_max_wait_s", float, "a stream held back longer than this in all is refused, seconds"),
    ("max_message_bytes", int, "largest live message, bytes"),
    ("shutdown_timeout_s", float, "seconds Ctrl-C waits for running requests"),
]
SERVE_LIMIT_OPTIONS = [f for f, _, _ in SERVE_LIMIT_HELP]


def _serve_defaults():
    from liser.inference.serve_limits import ServeLimits  # light: numpy and liser's own modules, no server

    return ServeLimits()


def add_serve(sub) -> None:
    sp = sub.add_parser("serve", help="a web page: the emotion timeline of the microphone, live, or of an uploaded file",
                        description="Serve one page that records the browser's microphone and draws the student's "
                                    "timeline live (what `liser predict --timeline` gives on the same audio), or "
                                    "takes a file upload. Needs the extra: pip install 'liser[serve]'.")
    sp.add_argument("model", nargs="?", default=None,
                    help="run directory, best.pt or exported .onnx, or `phone` (the packaged model for telephone "
                         "calls; default: the packaged default model)")
    sp.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 = a free one)")
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    sp.add_argument("--hop", type=float, default=0.5, help="seconds between windows (default 0.5)")
    sp.add_argument("--window", type=float, default=3.0, metavar="S",
                    help="the timeline's window, 1-3 s (default 3); 1.5 follows changes of emotion more closely, "
                         "at more label changes (docs/results/timeline.md); live, a window comes once the 3 s "
                         "around it have arrived; the on-device mode scores 3 s windows only")
    sp.add_argument("--threads", type=int, default=None, help="CPU threads for inference (default: library default)")
    sp.add_argument("--ort-web", metavar="DIR", default=None,
                    help="onnxruntime-web (its package folder or dist/) for the page's 'on this device' mode, where "
                         "the model runs in the browser and no audio leaves it (default: examples/browser's, after "
                         "`npm ci` there; docs/serve.md)")
    # what one client may cost (liser.inference.serve_limits.ServeLimits; docs/serve.md): each default is the dataclass's
    limits = sp.add_argument_group("limits per client (docs/serve.md)")
    for flag, kind, what in SERVE_LIMIT_HELP:
        limits.add_argument("--" + flag.replace("_", "-"), dest=flag, type=kind, default=None,
                            help=f"{what} (default {getattr(_serve_defaults(), flag)})")
    limits.add_argument("--allow-origin", action="append", metavar="ORIGIN",
                        help="also answer POSTs and live sessions from pages of this origin (e.g. "
                             "https://example.org; repeatable; '*' any). Default: the page's own origin only")
    limits.add_argument("--allow-host", action="append", metavar="NAME",
                        help="a Host name the server answers to (repeatable; '*' any). Default on a loopback "
                             "address: localhost, 127.0.0.1, ::1; elsewhere any")
    sp.set_defaults(func=cmd_serve, resumes=False, malloc_threshold=1 << 20)  # predict's memory setting


def add_quickstart(sub) -> None:
    sp = sub.add_parser("quickstart", help="the whole LiSER pipeline, small: teachers, a distilled student, report, ONNX")
    sp.add_argument("grid", nargs="?", default="configs/grid-quickstart.yaml",
                    help="the quickstart grid (default configs/grid-quickstart.yaml)")
    sp.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE", help="override keys of its base config")
    sp.set_defaults(func=cmd_quickstart)


# the extra each command needs beyond the base install (liser.core.extras; pyproject.toml says what each holds):
# predict needs none for an ONNX model (a torch checkpoint needs `train`: said when it imports torch), serve its
# own; every training step and its data preparation `train`. `--ray` also needs `ray` (checked in _run).
COMMAND_EXTRAS = {"quickstart": "train", "prepare": "train", "folds": "train", "train": "train", "cv": "train",
                  "evaluate": "train", "experiment": "train", "teacher": "train", "faces": "train",
                  "predict": None, "export": "train", "adapt": "train", "serve": "serve"}

# every command, in the order `liser --help` lists them
COMMANDS = (add_quickstart, add_prepare, add_folds, add_train, add_cv, add_evaluate, add_experiment,
            add_teacher, add_faces, add_predict, add_export, add_adapt, add_serve)


def build_parser() -> argparse.ArgumentParser:
    from liser import __version__

    p = argparse.ArgumentParser(prog="liser", description="Tiny speech-emotion students distilled from speech and face teachers (LiSER).")
    p.add_argument("--version", action="version", version=f"liser {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return p


def _one_blas_thread_at_load() -> None:
    """numpy's BLAS on one thread in this process, when numpy is not loaded yet (its BLAS reads these once, then).

    Why: OpenBLAS starts a thread per core as numpy is imported (about 25 ms
    of CPU on 2 cores, more with more) and splits the front end's small Mel
    matmul over them, whose spin-waits doubled `liser predict`'s CPU time;
    predict spreads files over the cores instead (--threads is the cores it
    uses in all). When numpy is already loaded (main() called in process),
    liser.inference.predict.one_blas_thread limits it for the command's duration.
    """
    if "numpy" not in sys.modules:
        import os

        os.environ["OPENBLAS_NUM_THREADS"] = "1"
        os.environ["MKL_NUM_THREADS"] = "1"  # numpy built on MKL (conda)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's arguments. `predict`'s inputs may sit on both sides of its options
    (`liser predict MODEL --timeline a.wav b.wav`): argparse takes positionals in one run only, so the ones left
    over join `inputs`; anything else left over is the usual "unrecognized arguments" error (exit 2)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    options = [x for x in extra if x.startswith("-") and x != "-"]  # "-" alone is stdin, an input
    if extra and getattr(args, "func", None) is cmd_predict and not options:
        args.inputs += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(options or extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else list(argv))[:1] == ["predict"]:
        _one_blas_thread_at_load()  # before the parser, whose serve defaults load numpy (and with it BLAS)
    args = parse(argv)
    from liser.core.device import tune_malloc

    # the command owns its process: large training temporaries stay in the heap (see tune_malloc); predict
    # instead gives temporaries over 1 MB straight back (its malloc_threshold default), so that its memory is bounded
    threshold = getattr(args, "malloc_threshold", None)
    tune_malloc(threshold, trim=threshold) if threshold else tune_malloc()
    if getattr(args, "one_blas_thread", False):
        _one_blas_thread_at_load()
    from liser.core.outputs import StdoutGuard

    sys.stdout, real_stdout = StdoutGuard(sys.stdout), sys.stdout
    try:
        with warnings.catch_warnings():  # restores the process's warning display when the command ends
            warnings.showwarning = _say_warning
            return _run(args, own_stdout=real_stdout is sys.__stdout__)
    finally:
        sys.stdout = real_stdout


def _say_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """liser's own warnings ("<file>: what happened") as one stderr line, `liser: warning: ...`, not Python's
    two (the source line under the message); other libraries' warnings keep Python's format."""
    if str(Path(filename).resolve()).startswith(str(Path(__file__).resolve().parents[1])):
        print(f"liser: warning: {message}", file=sys.stderr, flush=True)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _silence_stdout(own_stdout: bool) -> None:
    """Point the process's stdout (not a caller's stand-in) at /dev/null: what is still buffered for a closed
    pipe or a full disk is dropped at exit instead of raising again (Python's own advice for SIGPIPE)."""
    import os

    if not own_stdout:
        return
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.__stdout__.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _run(args, own_stdout: bool = True) -> int:
    """The command, its stdout flushed, every expected failure said in one line (see the module's docstring)."""
    from liser.core import extras
    from liser.core.outputs import PLACE_ERRNOS, StdoutClosed, StdoutError, place_error_line

    try:
        if COMMAND_EXTRAS[args.command]:  # before any work: a missing extra is said now, not after a corpus is read
            extras.require(COMMAND_EXTRAS[args.command], f"liser {args.command}")
        if getattr(args, "ray", None) is not None:
            extras.require("ray", f"liser {args.command} --ray")
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # output still buffered fails here, not at exit with a traceback
        return rc
    except StdoutClosed:  # the reader went away (| head): stop quietly
        _silence_stdout(own_stdout)
        return 141
    except LiserError as e:
        if isinstance(e, StdoutError):
            _silence_stdout(own_stdout)
        print(f"liser: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the place written to or read from (read-only, full, not a folder): one line
        if e.errno not in PLACE_ERRNOS or isinstance(e, BrokenPipeError):
            raise
        print(f"liser: {place_error_line(e)}", file=sys.stderr)
        return 2
    except ImportError as e:  # an optional dependency is missing or broken: say which, in one line
        what = getattr(e, "name", None) or ""
        if what == "liser" or what.startswith("liser."):
            raise  # liser's own modules: a bug, not a missing dependency; keep the traceback
        line = extras.for_import_error(e, f"liser {args.command}")  # a module an extra installs (torch: `train`)
        if line:
            print(f"liser: {line}", file=sys.stderr)
            return 2
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"liser: `liser {args.command}` needs the module {what or why!r}, which cannot be imported "
              f"({why}); install it (see pyproject.toml's dependencies) and retry", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # promise a resume only where the command has one (docs/architecture.md, "What resumes")
        resumes = getattr(args, "resumes", True)
        print("liser: interrupted" + (" (re-run the same command to resume)" if resumes else ""), file=sys.stderr)
        return 130


