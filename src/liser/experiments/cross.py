"""Cross-corpus evaluation: a trained student scored on another corpus through an explicit class mapping.

Corpora name their emotions from one vocabulary (liser.data.corpora.EMOTIONS),
but they do not hold the same set: EmoDB has `boredom`, RAVDESS `calm`
and `surprised`, URDU only four classes. A student can only be scored on
the test files whose class it can output, so every test class is mapped
onto one of the student's classes, or dropped:

- by default a test class maps to the student class of the same name, and
  a test class the student lacks is dropped;
- `--map calm=neutral` maps a test class onto another student class (many
  test classes may share one); `--map surprised=` drops one explicitly;
- every dropped class is REPORTED with its file count (`dropped`), and so
  are the student's classes no test file maps to (`untested`).

Scores: the student's mean logits over sliding 3 s windows (the same
`liser.student.evaluate.file_logits` as in-corpus testing), then

- `uar` / `war` / `confusion`: the arg-max over the *tested* classes only
  (the student's classes some test file maps to): the task is "which of
  the shared classes", the usual cross-corpus protocol;
- `uar_any_output`: the arg-max over all the student's outputs, so
  predicting a class the test corpus does not have counts as wrong.

UAR is the mean recall over the tested classes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from liser.core.errors import LiserError


def parse_maps(pairs) -> dict[str, str]:
    """["calm=neutral", "surprised="] -> {"calm": "neutral", "surprised": ""} ("" = drop).

    Raises LiserError for an item without `=` or with an empty source.
    """
    out = {}
    for p in pairs or ():
        src, eq, dst = str(p).partition("=")
        if not eq or not src.strip():
            raise LiserError(f"--map {p!r}: expected TEST_CLASS=STUDENT_CLASS (or TEST_CLASS= to drop it)")
        out[src.strip()] = dst.strip()
    return out


def class_mapping(test_classes, student_classes, maps: dict[str, str] | None = None,
                  strict: bool = True) -> dict[str, str]:
    """{test class: student class, or "" for dropped} for every class of the test corpus.

    Same-name classes map onto each other unless `maps` says otherwise.
    With `strict`, a map whose source is not a test class or whose target is
    not a student class is a LiserError (a typo must not silently change the
    score); without it (one mapping applied to many corpus pairs, as in
    bench/bench_cross_corpus.py) such maps are skipped, but a target that
    is no student class still is an error when its source is present.
    """
    maps = dict(maps or {})
    test_classes, student = list(test_classes), list(student_classes)
    for src, dst in maps.items():
        if src not in test_classes:
            if strict:
                raise LiserError(f"--map {src}={dst}: {src!r} is not a class of the test corpus {test_classes}")
            continue
        if dst and dst not in student:
            raise LiserError(f"--map {src}={dst}: {dst!r} is not a class of the student {student}")
    return {c: (maps[c] if c in maps else c if c in student else "") for c in test_classes}


def check_map_sources(maps: dict[str, str], classes) -> None:
    """For a mapping applied to many corpora (class_mapping with strict=False): LiserError for a map
    whose source is a class of none of them (a typo such as `--map clam=neutral` must not be skipped)."""
    classes = set(classes)
    for src, dst in maps.items():
        if src not in classes:
            raise LiserError(f"--map {src}={dst}: {src!r} is a class of none of the corpora scored ({sorted(classes)})")


def score(logits: np.ndarray, labels: list[str], student_classes, mapping: dict[str, str]) -> dict:
    """The cross-corpus figures from per-file logits.

    logits: [files, K] the student's mean logits (K = len(student_classes));
    the rows of dropped files are not read (NaN is fine). labels: each
    file's test-corpus class. Returns the JSON-able dict
    described in the module docstring (mapping, dropped, untested, tested
    classes, uar, war, n, per_class_recall, confusion [tested x tested],
    uar_any_output, confusion_any_output [tested x K]).
    Raises LiserError when no test file maps onto a student class.
    """
    from liser.core.metrics import confusion, metrics

    student = list(student_classes)
    dropped: dict[str, int] = {}
    keep, y_student = [], []
    for i, lab in enumerate(labels):
        target = mapping.get(lab, "")
        if not target:
            dropped[lab] = dropped.get(lab, 0) + 1
            continue
        keep.append(i)
        y_student.append(student.index(target))
    if not keep:
        raise LiserError(f"no test file maps onto the student's classes {student} (test classes {sorted(set(labels))}; "
                         "use --map TEST_CLASS=STUDENT_CLASS)")
    tested = [c for c in student if c in {student[k] for k in y_student}]  # student order
    cols = [student.index(c) for c in tested]
    z = np.asarray(logits, np.float64)[keep]
    y_true = np.array([tested.index(student[k]) for k in y_student])
    m = metrics(y_true, z[:, cols].argmax(1), tested)
    cm_any = confusion(np.array(y_student), z.argmax(1), len(student))[cols]  # rows: tested classes only
    return {
        "mapping": {c: (t or None) for c, t in mapping.items()},
        "dropped": dict(sorted(dropped.items())),
        "untested": [c for c in student if c not in tested],
        "student_classes": student,
        "classes": tested,
        "uar": m["uar"], "war": m["war"], "n": m["n"],
        "per_class_recall": m["per_class_recall"],
        "confusion": m["confusion"],
        "uar_any_output": float(np.mean(any_output_recalls(cm_any, cols))),
        "confusion_any_output": cm_any.tolist(),
    }


def any_output_recalls(cm_any: np.ndarray, cols: list[int]) -> np.ndarray:
    """Per-tested-class recall when every student output may be predicted.

    cm_any: [tested, K] counts (rows: tested classes, columns: all student
    outputs); cols[i]: the student column of tested class i. Every tested
    class has at least one file, so no row is empty.
    """
    support = cm_any.sum(1)
    hits = cm_any[np.arange(len(cols)), cols]
    return hits / np.maximum(support, 1)


# ---------------------------------------------------------------- a run on another corpus
def scored_manifest(spec: str, work: str | Path = "work", progress: bool = False):
    """The labeled manifest of `spec`: a manifest directory (used as is) or "corpus:root" (prepared once).

    "corpus:root" reuses <work>/manifests/<corpus> when it was prepared from
    the same root (a config's labeled manifest), else prepares into
    <work>/manifests/cross-<corpus>-<hash of the root>. Raises LiserError for
    anything else, or for a manifest without labels.
    """
    from liser.data.corpora import Manifest, prepare

    if Path(spec, "meta.json").is_file():
        m = Manifest.load(spec)
    elif ":" in spec:
        corpus, root = spec.split(":", 1)
        absroot = Path(root).resolve()
        own = Path(work) / "manifests" / corpus
        key = hashlib.sha256(str(absroot).encode()).hexdigest()[:8]
        cross = Path(work) / "manifests" / f"cross-{corpus}-{key}"
        for d in (own, cross):
            if (d / "meta.json").is_file() and json.loads((d / "meta.json").read_text()).get("root") == str(absroot):
                m = Manifest.load(d)
                break
        else:
            m = prepare(corpus, root, progress=progress)
            m.save(cross)
    else:
        raise LiserError(f"--on {spec!r}: neither a manifest directory nor CORPUS:ROOT (e.g. emodb:../shared/data/emodb)")
    if not any(it.label for it in m.items):
        raise LiserError(f"--on {spec}: the {m.corpus} manifest has no labels to score against")
    return m


def evaluate_on(run: str | Path, on: str, maps: dict[str, str] | None = None, stride_s: float = 0.1,
                work: str | Path | None = None, out: str | Path | None = None, strict: bool = True,
                threads: int = 2, progress: bool = False) -> dict:
    """Score a run's best.pt on the corpus `on` (see scored_manifest) through the class mapping.

    work: cache root for the test manifest and its log-Mel features (default:
    the run config's `work`). Writes the result as JSON to `out` (default
    <run>/cross/<test corpus>.json) and returns it. Raises LiserError for a
    directory that is not a run, a test corpus that is the student's own
    (its training speakers are in it: use `liser evaluate RUN`), a bad map,
    or no test file the student can be scored on.
    """
    from liser.core.config import Config
    from liser.student.evaluate import file_logits
    from liser.data.features import build_features
    from liser.core.outputs import check_out_file, is_cross_json, writing
    from liser.student.checkpoint import read_checkpoint, student_from_checkpoint
    from liser.core.atomic import atomic_write_text
    from liser.data.workspace import labeled_corpora

    run = Path(run)
    if not (run / "best.pt").is_file() or not (run / "config.yaml").is_file():
        raise LiserError(f"{run}: not a run directory (no best.pt / config.yaml)")
    if out:  # before any work: a folder, or a file that is not a result of this command, is refused
        check_out_file(out, "cross-corpus result (--json)", is_cross_json)
    cfg = Config.load(run / "config.yaml")
    ck = read_checkpoint(run / "best.pt")
    student_classes = list(ck["classes"])
    work = Path(work or cfg.work)
    manifest = scored_manifest(on, work, progress)
    if manifest.corpus in labeled_corpora(cfg):
        raise LiserError(f"--on {on}: the student was trained on {manifest.corpus}, so its training speakers may be "
                         f"in it; `liser evaluate {run}` scores its fold's test speakers")
    items = [it for it in manifest.items if it.label]
    mapping = class_mapping(manifest.classes, student_classes, maps, strict)
    model = student_from_checkpoint(ck, str(run / "best.pt"))
    cache = build_features(manifest, work, threads=threads, progress=progress)
    scored = [i for i, it in enumerate(items) if mapping.get(it.label)]  # dropped files are counted, never scored
    logits = np.full((len(items), len(student_classes)), np.nan, np.float32)
    if scored:
        windowing = (ck.get("front_end") or {}).get("windowing", "pad")
        logits[scored] = file_logits(model, [cache.frames(items[i].id) for i in scored], stride_s, windowing=windowing)
    res = score(logits, [it.label for it in items], student_classes, mapping)
    res = {"run": str(run), "train_corpus": cfg.corpus, "config": cfg.name, "fold": cfg.fold,
           "test_corpus": manifest.corpus, "test_manifest_root": str(manifest.root),
           "test_files": len(items), "stride_s": stride_s, **res}
    out = Path(out) if out else run / "cross" / f"{manifest.corpus}.json"
    with writing(out.parent):
        out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(res, indent=1) + "\n")
    res["json"] = str(out)
    return res
