"""Sub-commands of the teachers' side: `liser teacher fit|label ...` and `liser faces ...`."""

from __future__ import annotations

import sys


def _shard(text: str | None) -> tuple[int, int]:
    from ..errors import LiserError

    if not text:
        return (0, 1)
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise LiserError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise LiserError(f"--shard {text!r}: need 0 <= I < N")
    return (i, n)


def _cfg(args):
    from ..config import Config

    return Config.load(args.config, args.set or [])


def _folds(args):
    return [int(x) for x in args.folds.split(",")] if getattr(args, "folds", None) else None


def cmd_fit(args) -> int:
    from .pipeline import fit_speech_teachers

    evals = fit_speech_teachers(_cfg(args), _folds(args), args.teacher_set or [], sys.stderr.isatty())
    print("| fold | test UAR | test UAR (0.5 s pieces) | val ECE |\n|---|---|---|---|")
    for e in evals:
        print(f"| {e['fold']} | {e['uar']:.3f} | {e['uar_pieces']:.3f} | {e['calibration']['ece']:.3f} |")
    if evals:
        import numpy as np

        print(f"mean test UAR {np.mean([e['uar'] for e in evals]):.3f} over {len(evals)} folds")
    return 0


def cmd_label(args) -> int:
    from .pipeline import label_speech, label_video

    cfg = _cfg(args)
    if args.teacher == "speech":
        label_speech(cfg, _folds(args), _shard(args.shard), args.teacher_set or [], sys.stderr.isatty())
    else:
        label_video(cfg, _shard(args.shard), sys.stderr.isatty())
    return 0


def cmd_faces(args) -> int:
    from ..corpora import Manifest
    from ..faces import extract_faces_manifest

    s = extract_faces_manifest(Manifest.load(args.manifest), args.out, size=args.size, shard=_shard(args.shard),
                               progress=sys.stderr.isatty())
    print(" ".join(f"{k}={v}" for k, v in s.items() if not isinstance(v, (list, dict))))
    return 0


def add_commands(sub) -> None:
    t = sub.add_parser("teacher", help="fit a speech teacher per fold; label unlabeled data with a teacher")
    tsub = t.add_subparsers(dest="action", required=True)

    def common(sp):
        sp.add_argument("config", help="the student config whose data, folds and stores are meant (configs/*.yaml)")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key of the config")
        sp.add_argument("--teacher-set", action="append", metavar="KEY=VALUE",
                        help="override a key of the speech-teacher config (e.g. mode=lora, epochs=10)")
        sp.add_argument("--folds", help="comma-separated folds (default: all)")

    sp = tsub.add_parser("fit", help="train the speech teacher of each fold on its training speakers")
    sp.add_argument("teacher", choices=["speech"], help="only the speech teacher is trained (the video one is used as is)")
    common(sp)
    sp.set_defaults(func=cmd_fit)

    sp = tsub.add_parser("label", help="label the config's unlabeled pool into its soft-label store(s)")
    sp.add_argument("teacher", choices=["speech", "video"])
    common(sp)
    sp.add_argument("--shard", metavar="I/N", help="label only items I, I+N, ... (run N processes, stores merge)")
    sp.set_defaults(func=cmd_label)

    sp = sub.add_parser("faces", help="detect, align and crop faces of every video of a manifest")
    sp.add_argument("manifest", help="manifest directory of videos (liser prepare videos|mspface ...)")
    sp.add_argument("-o", "--out", required=True, help="face-track directory (one .npz per video)")
    sp.add_argument("--size", type=int, default=112, help="aligned crop size in pixels (S2D wants 224)")
    sp.add_argument("--shard", metavar="I/N", help="only items I, I+N, ...")
    sp.set_defaults(func=cmd_faces)
