"""Benchmark --face-select: how often `active` keeps the speaker when two people talk side by side.

Each input is built from two interview clips of ../shared/data/av (as
tests/test_face_select.py does): the speaker's face with its own audio and
another talking face whose audio is dropped. Arrangement `speaker-small`: the
silent face is the larger one (`largest` is wrong by construction);
`speaker-large`: the speaker's face is the larger one (`active` should not
lose it). For every ordered pair of clips and both arrangements it runs
`extract_faces` with `largest` and with `active` and reports the share of
pairs where the track keeps the speaker in most of its frames, the
fallbacks, and the time of each. Prints a table and a markdown row; writes
bench/results/face_select.json.

    OMP_NUM_THREADS=1 python bench/bench_face_select.py --clips 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from itertools import permutations
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # compose_pair: the test's input builder, one copy


def clips(n: int) -> list[Path]:
    """One interview clip from each of the first n identities that have one of 8 s or more: the middle one of
    those, in name order (the features were chosen on the first and the last of each identity, not these)."""
    from liser.data.video import video_info
    from test_video import AV

    out = []
    for person in sorted((AV / "interviews").glob("id*"))[:n]:
        long = [p for p in sorted(person.glob("*.mp4")) if video_info(p).duration >= 8.0]
        if long:
            out.append(long[len(long) // 2])
    return out


def run_pair(det, speaker: Path, silent: Path, speaker_small: bool, tmp: Path) -> dict:
    from liser.data.faces import extract_faces
    from test_face_select import compose_pair, side

    video = compose_pair(speaker, silent, tmp / "pair.mp4", speaker_small=speaker_small)
    row = {"speaker": f"{speaker.parent.name}/{speaker.name}", "silent": f"{silent.parent.name}/{silent.name}",
           "arrangement": "speaker-small" if speaker_small else "speaker-large"}
    for sel in ("largest", "active"):
        t0 = time.perf_counter()
        tr = extract_faces(video, None, detector=det, progress=False, face_select=sel)
        right = side(tr)
        on_speaker = right if speaker_small else 1.0 - right
        row[sel] = {"speaker_share": round(on_speaker, 3), "seconds": round(time.perf_counter() - t0, 2),
                    "frames": len(tr), "selection": tr.selection, "note": tr.selection_note}
    return row


def summarise(runs: list[dict], sel: str) -> dict:
    """Pairs, share of pairs whose track keeps the speaker in most frames, fallbacks, seconds per frame."""
    frames = max(sum(r["frames"] for r in runs), 1)
    return {"pairs": len(runs), "speaker_kept": round(sum(r["speaker_share"] > 0.5 for r in runs) / max(len(runs), 1), 3),
            "fallbacks": sum(r["selection"] != sel for r in runs),
            "seconds_per_frame": round(sum(r["seconds"] for r in runs) / frames, 4)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=8, help="identities to take a clip of (those with one of 8 s or more)")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "face_select.json")
    args = ap.parse_args(argv)
    import cv2

    from liser.data.faces import FaceDetector

    cv2.setNumThreads(1)
    det = FaceDetector(backend="yunet")
    rows, used = [], clips(args.clips)
    with tempfile.TemporaryDirectory() as tmp:
        for a, b in permutations(used, 2):
            for small in (True, False):
                r = run_pair(det, a, b, small, Path(tmp))
                rows.append(r)
                print(f"{r['arrangement']:13s} {r['speaker']:12s} vs {r['silent']:12s} "
                      f"largest {r['largest']['speaker_share']:.2f}  active {r['active']['speaker_share']:.2f}  "
                      f"{r['active']['note'][:90]}", flush=True)
    summary = {arr: {sel: summarise([r[sel] for r in rows if r["arrangement"] == arr], sel)
                     for sel in ("largest", "active")} for arr in ("speaker-small", "speaker-large")}
    print(json.dumps(summary, indent=1))
    s, big = summary["speaker-small"], summary["speaker-large"]
    ms = {sel: s[sel]["seconds_per_frame"] * 1000 for sel in ("largest", "active")}
    print(f"| {len(used)} clips, {len(rows)} pairs | largest keeps the speaker {s['largest']['speaker_kept']:.2f} / "
          f"{big['largest']['speaker_kept']:.2f} | active {s['active']['speaker_kept']:.2f} / "
          f"{big['active']['speaker_kept']:.2f} (speaker small / large) | {ms['active']:.1f} vs {ms['largest']:.1f} ms/frame |")
    out = {"command": f"OMP_NUM_THREADS=1 python bench/bench_face_select.py --clips {args.clips}",
           "machine": f"{platform.machine()} {os.cpu_count()} cores, shared with a background experiment grid",
           "clips": [f"{p.parent.name}/{p.name}" for p in used], "summary": summary, "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
