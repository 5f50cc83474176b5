"""Cross-corpus evaluation (liser.experiments.cross, `liser evaluate RUN --on ...`) and bench/bench_cross_corpus.py.

The class mapping and the scores are tested on hand-made logits; the whole
path on the session's 2-epoch RAVDESS student (`trained_run`) and a few
real EmoDB, TESS and CREMA-D files linked into `tmp_path`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from liser.experiments.cross import class_mapping, parse_maps, score
from liser.core.errors import LiserError
from conftest import load_bench

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RAVDESS_CLASSES = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
EMODB_CLASSES = ["neutral", "happy", "sad", "angry", "fearful", "disgust", "boredom"]


# ---------------------------------------------------------------- the mapping


def test_mapping_shared_classes_by_default_and_the_rest_dropped():
    m = class_mapping(EMODB_CLASSES, RAVDESS_CLASSES)
    assert m == {c: c for c in EMODB_CLASSES[:6]} | {"boredom": ""}


def test_mapping_options_many_to_one_and_explicit_drop():
    # RAVDESS's calm onto a 6-class student's neutral; surprised dropped explicitly
    student = ["neutral", "happy", "sad", "angry", "fearful", "disgust"]
    m = class_mapping(RAVDESS_CLASSES, student, parse_maps(["calm=neutral", "happy="]))
    assert m["calm"] == "neutral" and m["neutral"] == "neutral"
    assert m["happy"] == "" and m["surprised"] == ""


def test_mapping_errors_name_the_bad_class():
    with pytest.raises(LiserError, match=r"--map calm=neutral: 'calm' is not a class of the test corpus"):
        class_mapping(EMODB_CLASSES, RAVDESS_CLASSES, {"calm": "neutral"})
    with pytest.raises(LiserError, match=r"--map boredom=bored: 'bored' is not a class of the student"):
        class_mapping(EMODB_CLASSES, RAVDESS_CLASSES, {"boredom": "bored"})
    # not strict (one mapping over many corpus pairs): a source the test corpus lacks is skipped
    assert class_mapping(EMODB_CLASSES, RAVDESS_CLASSES, {"calm": "neutral"}, strict=False)["neutral"] == "neutral"
    with pytest.raises(LiserError, match="expected TEST_CLASS=STUDENT_CLASS"):
        parse_maps(["calm"])


def test_score_reports_dropped_files_and_uar_over_the_tested_classes():
    student = ["neutral", "happy", "sad", "surprised"]
    labels = ["neutral", "neutral", "happy", "sad", "boredom", "boredom", "boredom"]
    mapping = class_mapping(["neutral", "happy", "sad", "boredom"], student)
    # file 1 (neutral) has its arg-max on `surprised`, a class the test corpus does not have:
    # over the tested classes it is `happy`; over every output it is wrong
    z = np.array([[5, 0, 0, 0], [0, 2, 0, 9], [0, 3, 0, 0], [0, 0, 4, 0]] + [[np.nan] * 4] * 3, np.float32)
    r = score(z, labels, student, mapping)
    assert r["dropped"] == {"boredom": 3}  # reported, never silently dropped
    assert r["untested"] == ["surprised"] and r["classes"] == ["neutral", "happy", "sad"]
    assert r["mapping"] == {"neutral": "neutral", "happy": "happy", "sad": "sad", "boredom": None}
    assert r["n"] == 4
    assert r["per_class_recall"] == {"neutral": 0.5, "happy": 1.0, "sad": 1.0}
    assert r["uar"] == pytest.approx(2.5 / 3) and r["war"] == pytest.approx(0.75)
    assert r["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert r["uar_any_output"] == pytest.approx(2.5 / 3)  # neutral: 1 of 2 either way
    assert r["confusion_any_output"] == [[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0]]
    json.dumps(r)  # JSON-able


def test_score_with_nothing_shared_is_an_error():
    with pytest.raises(LiserError, match="no test file maps onto the student's classes"):
        score(np.zeros((2, 2)), ["boredom", "calm"], ["happy", "sad"], {"boredom": "", "calm": ""})


# ---------------------------------------------------------------- a trained student on real files


def real(name: str) -> Path:
    root = DATA / name
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (the tests read ../shared/data next to the repository)")
    return root


def link(files, dst_dir: Path) -> None:
    dst_dir.mkdir(parents=True, exist_ok=True)
    for f in files:
        (dst_dir / f.name).symlink_to(f)


def small_emodb(dst: Path) -> Path:
    """The first two real EmoDB files of each emotion: 14 files, boredom among them."""
    files = sorted((real("emodb") / "wav").glob("*.flac"))
    picked = []
    for letter in "WLEAFTN":
        picked += [f for f in files if f.stem[5] == letter][:2]
    link(picked, dst / "wav")
    return dst


def small_cremad(dst: Path) -> Path:
    src = real("cremad")
    link([f for f in sorted((src / "AudioWAV").glob("1001_DFA_*"))], dst / "AudioWAV")
    return dst


def small_tess(dst: Path) -> Path:
    src = real("tess")
    for d in ("OAF_angry", "OAF_Pleasant_surprise", "YAF_neutral"):
        link(sorted((src / d).glob("*.opus"))[:2], dst / d)
    return dst


def test_evaluate_on_emodb_reports_boredom_and_writes_json(trained_run, tmp_path):
    from liser.experiments.cross import evaluate_on

    root = small_emodb(tmp_path / "emodb")
    out = tmp_path / "emodb.json"
    r = evaluate_on(trained_run, f"emodb:{root}", stride_s=1.0, work=tmp_path / "work", out=out)
    assert json.loads(out.read_text()) == {k: v for k, v in r.items() if k != "json"}
    assert r["train_corpus"] == "ravdess" and r["test_corpus"] == "emodb"
    assert r["dropped"] == {"boredom": 2}
    assert r["mapping"]["boredom"] is None and r["mapping"]["angry"] == "angry"
    assert r["classes"] == ["neutral", "happy", "sad", "angry", "fearful", "disgust"]
    assert r["untested"] == ["calm", "surprised"]
    assert r["n"] == 12 and r["test_files"] == 14
    assert 0 <= r["uar"] <= 1 and np.array(r["confusion"]).sum() == 12
    assert (tmp_path / "work" / "manifests").is_dir()  # prepared once, reused on the next call
    again = evaluate_on(trained_run, f"emodb:{root}", {"boredom": "neutral"}, stride_s=1.0, work=tmp_path / "work",
                        out=tmp_path / "emodb2.json")
    assert again["dropped"] == {} and again["n"] == 14 and again["mapping"]["boredom"] == "neutral"
    assert len(list((tmp_path / "work" / "manifests").iterdir())) == 1


def test_evaluate_on_a_manifest_dir_and_on_tess(trained_run, tmp_path):
    from liser.data.corpora import prepare
    from liser.experiments.cross import evaluate_on

    m = prepare("tess", small_tess(tmp_path / "tess"), progress=False)
    mdir = m.save(tmp_path / "tess-manifest")
    r = evaluate_on(trained_run, str(mdir), stride_s=1.0, work=tmp_path / "work", out=tmp_path / "t.json")
    assert r["classes"] == ["neutral", "angry", "surprised"] and r["dropped"] == {} and r["n"] == 6


def test_cli_evaluate_on_cremad(trained_run, tmp_path, capsys):
    from liser.cli import main

    root = small_cremad(tmp_path / "cremad")
    out = tmp_path / "c.json"
    assert main(["evaluate", str(trained_run), "--on", f"cremad:{root}", "--stride", "1", "--work",
                 str(tmp_path / "work"), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"\(ravdess\) on cremad: UAR \d\.\d{3} WAR \d\.\d{3} over 6 shared classes", text)
    assert "student classes no test file maps to: calm, surprised" in text
    assert json.loads(out.read_text())["n"] == 6


def test_cli_evaluate_on_says_why_a_class_was_dropped(trained_run, tmp_path, capsys):
    from liser.cli import main

    root = small_emodb(tmp_path / "emodb")
    argv = ["evaluate", str(trained_run), "--on", f"emodb:{root}", "--stride", "1", "--work", str(tmp_path / "work")]
    assert main(argv) == 0  # boredom: the student cannot output it
    assert "dropped boredom: 2 files (the student cannot output it; map it with --map boredom=CLASS)" in capsys.readouterr().out
    assert main(argv + ["--map", "boredom=", "angry="]) == 0  # dropped on request: said so, no advice to map it
    text = capsys.readouterr().out
    assert "dropped boredom: 2 files (--map boredom=)" in text and "dropped angry: 2 files (--map angry=)" in text


def test_cli_evaluate_on_errors_are_one_line(trained_run, tmp_path, capsys):
    from liser.cli import main

    root = small_emodb(tmp_path / "emodb")
    for argv, msg in [
        (["--on", "emodb"], "neither a manifest directory nor CORPUS:ROOT"),
        (["--on", f"emodb:{root}", "--map", "calm=neutral"], "'calm' is not a class of the test corpus"),
        (["--on", f"ravdess:{real('ravdess')}"], "the student was trained on ravdess"),
        (["--map", "calm=neutral"], "--map and --json go with --on"),
    ]:
        assert main(["evaluate", str(trained_run), "--work", str(tmp_path / "work"), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], (argv, err)


# ---------------------------------------------------------------- bench/bench_cross_corpus.py


def test_bench_cross_corpus_matrix_shape_and_details(trained_run, tmp_path, capsys):
    bench = load_bench("bench_cross_corpus")
    folds = tmp_path / "grid" / "no-dstl" / "default"  # a grid configuration's folder of fold<k>/ runs
    folds.mkdir(parents=True)
    (folds / "fold0").symlink_to(trained_run)
    emodb, tess = small_emodb(tmp_path / "emodb"), small_tess(tmp_path / "tess")
    out = tmp_path / "results" / "cross_corpus.json"
    argv = ["--student", f"ravdess/no-dstl={folds}", "--student", f"ravdess/same={trained_run}",
            "--test", f"ravdess:{real('ravdess')}", "--test", f"emodb:{emodb}", "--test", f"tess:{tess}",
            "--map", "boredom=neutral", "calm=neutral", "--stride", "1", "--work", str(tmp_path / "work"), "--json", str(out)]
    assert bench.main(argv) == 0
    mat = json.loads(out.read_text())
    assert list(mat) == ["ravdess"] and list(mat["ravdess"]) == ["no-dstl", "same"]
    row = mat["ravdess"]["no-dstl"]
    assert list(row) == ["ravdess", "emodb", "tess"] and all(0 <= v <= 1 for v in row.values())
    assert mat["ravdess"]["same"] == row  # one fold: the folder and the run itself agree
    # the diagonal is the run's own test speakers (metrics.json), not the whole corpus
    assert row["ravdess"] == json.loads((trained_run / "metrics.json").read_text())["test"]["uar"]
    det = json.loads((out.parent / "cross_corpus_details.json").read_text())
    emodb_fold = det["matrix"]["ravdess"]["no-dstl"]["emodb"]["folds"]["fold0"]
    assert emodb_fold["mapping"]["boredom"] == "neutral" and emodb_fold["dropped"] == {} and emodb_fold["n"] == 14
    assert det["matrix"]["ravdess"]["no-dstl"]["ravdess"]["folds"]["fold0"]["in_corpus"] is True
    assert det["map"] == ["boredom=neutral", "calm=neutral"]  # calm: no test corpus here has it, skipped
    assert "| ravdess / no-dstl |" in capsys.readouterr().out


def test_bench_cross_corpus_bad_student_is_one_line(tmp_path, capsys):
    bench = load_bench("bench_cross_corpus")
    assert bench.main(["--student", f"ravdess={tmp_path}", "--json", str(tmp_path / "x.json")]) == 2
    assert "expected TRAIN_CORPUS/CONFIGURATION=RUN_OR_FOLDS_DIR" in capsys.readouterr().err
    assert bench.main(["--student", f"ravdess/x={tmp_path}", "--json", str(tmp_path / "x.json")]) == 2
    assert "neither a run directory" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_bench_cross_corpus_resumes_from_kept_results_and_rescores_a_changed_mapping(trained_run, tmp_path,
                                                                                     monkeypatch, capsys):
    import liser.experiments.cross

    bench = load_bench("bench_cross_corpus")
    emodb = small_emodb(tmp_path / "emodb")
    out = tmp_path / "cross_corpus.json"
    argv = ["--student", f"ravdess/no-dstl={trained_run}", "--test", f"emodb:{emodb}", "--stride", "1",
            "--work", str(tmp_path / "work"), "--json", str(out)]
    assert bench.main(argv + ["--map", "boredom=neutral"]) == 0
    first = json.loads(out.read_text())
    scored = []
    real_evaluate_on = liser.experiments.cross.evaluate_on
    monkeypatch.setattr(liser.experiments.cross, "evaluate_on", lambda *a, **k: scored.append(a) or real_evaluate_on(*a, **k))
    assert bench.main(argv + ["--map", "boredom=neutral"]) == 0  # a stopped matrix resumes: nothing scored again
    assert scored == [] and json.loads(out.read_text()) == first
    assert bench.main(argv) == 0  # boredom now dropped: another mapping, so scored again
    assert len(scored) == 1
    det = json.loads((tmp_path / "cross_corpus_details.json").read_text())
    assert det["matrix"]["ravdess"]["no-dstl"]["emodb"]["folds"][trained_run.name]["dropped"] == {"boredom": 2}
    import os

    # a student retrained after its result was kept is scored again (the kept result made older, rather
    # than touching the shared trained_run)
    kept = tmp_path / "work" / "cross" / f"ravdess-no-dstl-{trained_run.name}" / "emodb.json"
    t = (trained_run / "best.pt").stat().st_mtime - 10
    os.utime(kept, (t, t))
    assert bench.main(argv) == 0 and len(scored) == 2
    other = small_emodb(tmp_path / "other" / "emodb")  # same corpus name, another root: scored, never reused
    assert bench.main([a.replace(str(emodb), str(other)) for a in argv]) == 0 and len(scored) == 3
    assert bench.main(argv + ["--map", "boredm=neutral"]) == 2  # a typo: refused before anything is scored
    assert "'boredm' is a class of none" in capsys.readouterr().err and len(scored) == 3


def test_bench_cross_corpus_refuses_an_unfinished_run(trained_run, tmp_path, capsys):
    bench = load_bench("bench_cross_corpus")
    folds = tmp_path / "grid" / "no-dstl" / "default"
    (folds / "fold0").mkdir(parents=True)
    (folds / "fold0" / "best.pt").symlink_to(trained_run / "best.pt")  # still training: no metrics.json yet
    argv = ["--student", f"ravdess/no-dstl={folds}", "--test", f"emodb:{small_emodb(tmp_path / 'emodb')}",
            "--work", str(tmp_path / "work"), "--json", str(tmp_path / "x.json")]
    assert bench.main(argv) == 2
    assert "an unfinished run" in capsys.readouterr().err and not (tmp_path / "x.json").exists()
