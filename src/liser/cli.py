"""The `liser` command: thin argument parsing over the package's functions.

User errors (LiserError) print one line, `liser: <message>`, and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import LiserError


def _progress() -> bool:
    return sys.stderr.isatty()


def _config(args):
    from .config import Config

    cfg = Config.load(args.config, args.set or [])
    if getattr(args, "fold", None) is not None:
        cfg = cfg.replace(fold=args.fold)
    return cfg


# ---------------------------------------------------------------- commands
def cmd_prepare(args) -> int:
    from .corpora import prepare

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
    from .corpora import Manifest
    from .folds import check_folds, folds_for_manifest, load_folds

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
    from .train import train

    cfg = _config(args)
    run = train(cfg, progress=_progress())
    m = json.loads((run / "metrics.json").read_text())
    print(f"{run}: test UAR {m['test']['uar']:.3f} WAR {m['test']['war']:.3f} (best epoch {m['best_epoch']})")
    return 0


def cmd_cv(args) -> int:
    from .experiment import run_folds

    cfg = _config(args)
    folds = [int(x) for x in args.folds.split(",")] if args.folds else None
    summary = run_folds(cfg, folds=folds, jobs=args.jobs, progress=_progress())
    print(summary["table"])
    return 0


def cmd_evaluate(args) -> int:
    from .experiment import evaluate_run

    m = evaluate_run(args.run, stride_s=args.stride, write=args.write)
    print(f"{args.run}: test UAR {m['uar']:.3f} WAR {m['war']:.3f} (n={m['n']}, stride {args.stride} s)")
    w = max(len(c) for c in m["classes"])
    for c, r in m["per_class_recall"].items():
        print(f"  {c:<{w}}  recall {'-' if r is None else f'{r:.3f}'}")
    return 0


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="liser", description="Tiny speech-emotion students distilled from speech and face teachers (LiSER).")
    from . import __version__

    p.add_argument("--version", action="version", version=f"liser {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp):
        sp.add_argument("config", nargs="?", help="YAML config (configs/*.yaml); omitted = defaults")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")

    sp = sub.add_parser("prepare", help="corpus folder -> manifest directory")
    sp.add_argument("corpus", help="ravdess, cremad, emodb, tess, urdu, generic, unlabeled, videos, mspface")
    sp.add_argument("root", help="corpus root folder")
    sp.add_argument("-o", "--out", required=True, help="manifest directory to write")
    sp.add_argument("--csv", help="generic corpus: CSV with path,speaker,label (default ROOT/labels.csv)")
    sp.set_defaults(func=cmd_prepare)

    sp = sub.add_parser("folds", help="speaker-independent folds of a manifest, or --check a fold file")
    sp.add_argument("manifest", help="manifest directory")
    sp.add_argument("-k", type=int, default=5, help="number of folds (default 5)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("-o", "--out", help="fold file to write (default <corpus>-folds.json)")
    sp.add_argument("--check", metavar="FOLDS", help="check a fold file (shipped name or path) against the manifest")
    sp.set_defaults(func=cmd_folds)

    sp = sub.add_parser("train", help="train one fold of a configuration")
    with_config(sp)
    sp.add_argument("--fold", type=int, help="fold to train (overrides the config)")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("cv", help="train and test every fold of a configuration; print the summary table")
    with_config(sp)
    sp.add_argument("--folds", help="comma-separated fold indices (default: all)")
    sp.add_argument("--jobs", type=int, default=1, help="folds trained in parallel processes")
    sp.set_defaults(func=cmd_cv)

    sp = sub.add_parser("evaluate", help="evaluate a run's best checkpoint on its test speakers")
    sp.add_argument("run", help="run directory (holds best.pt and config.yaml)")
    sp.add_argument("--stride", type=float, default=0.1, help="sliding-window stride in seconds (default 0.1)")
    sp.add_argument("--write", action="store_true", help="rewrite the run's metrics.json and confusion.png")
    sp.set_defaults(func=cmd_evaluate)

    for extra in EXTRA_COMMANDS:
        extra(sub)
    return p


EXTRA_COMMANDS: list = []  # other modules' sub-commands register here (see _register_extras)


def _register_extras() -> None:
    """Sub-commands owned by other modules (teachers, faces, export, predict, experiment)."""
    for name in ("teachers.cli", "predict", "export", "experiment"):
        try:
            mod = __import__(f"liser.{name}", fromlist=["add_commands"])
        except ImportError:
            continue
        if hasattr(mod, "add_commands") and mod.add_commands not in EXTRA_COMMANDS:
            EXTRA_COMMANDS.append(mod.add_commands)


def main(argv: list[str] | None = None) -> int:
    _register_extras()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LiserError as e:
        print(f"liser: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("liser: interrupted (re-run the same command to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
