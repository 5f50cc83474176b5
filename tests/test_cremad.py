"""CREMA-D on the real release (a few actors) and on its quirks; the shipped CREMA-D folds.

The real files are read from `../shared/data/cremad` (Ogg Opus, see its
README); the tests link a few actors' files into `tmp_path` so that each
test prepares a small tree, and skip when the data is absent.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from liser.data.corpora import base
from liser.core.errors import LiserError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LFS_TEXT = ("version https://git-lfs.github.com/spec/v1\n"
            "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n")


def write_noise(path: Path, seconds: float = 0.5, sr: int = 16_000) -> Path:
    x = 0.1 * np.random.default_rng(len(path.name)).standard_normal(int(seconds * sr))
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".opus": ("OGG", "OPUS"), ".ogg": ("OGG", "VORBIS")}.get(path.suffix.lower(), (None, None))
    sf.write(str(path), x.astype(np.float32), sr, format=fmt[0], subtype=fmt[1])
    return path


def test_lfs_pointer_is_rejected_by_every_adapter_with_the_reason(tmp_path):
    # The check lives in corpora.base.probe, so every adapter gets it.
    f = tmp_path / "03a01Fa.wav"
    f.write_text(LFS_TEXT)
    with pytest.raises(LiserError, match="^" + re.escape(str(f)) + r": a Git LFS pointer, not audio .*git lfs pull"):
        base.probe(f)
    write_noise(tmp_path / "03a01Wa.wav")
    from liser.data.corpora.emodb import prepare_emodb

    m = prepare_emodb(tmp_path, progress=False)
    assert [it.path for it in m.items] == ["03a01Wa.wav"]
    assert m.rejected == [{"path": "03a01Fa.wav", "reason": "a Git LFS pointer, not audio (fetch the file itself, e.g. `git lfs pull`)"}]


# ---------------------------------------------------------------- the adapter on real files

REAL_ACTORS = ("1001", "1002", "1040", "1076")  # 1040: the misnamed file's actor; 1076: the silent clip's


def real_cremad() -> Path:
    root = DATA / "cremad"
    if not (root / "AudioWAV").is_dir():
        pytest.skip(f"real CREMA-D not found at {root} (the tests read ../shared/data next to the repository)")
    return root


def link_actors(dst: Path, actors=REAL_ACTORS, per_actor: int = 6, extra=("1076_MTI_SAD_XX", "1040_ITH_SAD_XX")) -> Path:
    """A CREMA-D tree in dst: `per_actor` real clips of each actor (and the named clips) linked, and the demographics."""
    src = real_cremad()
    (dst / "AudioWAV").mkdir(parents=True)
    for actor in actors:
        for f in sorted((src / "AudioWAV").glob(f"{actor}_*"))[:per_actor]:
            (dst / "AudioWAV" / f.name).symlink_to(f)
    for stem in extra:
        for f in (src / "AudioWAV").glob(stem + ".*"):
            if not (dst / "AudioWAV" / f.name).exists():
                (dst / "AudioWAV" / f.name).symlink_to(f)
    (dst / "VideoDemographics.csv").symlink_to(src / "VideoDemographics.csv")
    return dst


def test_cremad_real_actors(tmp_path):
    from liser.data.corpora.cremad import prepare_cremad

    root = link_actors(tmp_path / "CREMA-D")
    m = prepare_cremad(root, progress=False)
    assert m.speakers == list(REAL_ACTORS)
    genders = {it.speaker: it.gender for it in m.items}
    assert genders == {"1001": "M", "1002": "F", "1040": "M", "1076": "F"}  # as in VideoDemographics.csv
    assert all(it.sample_rate == 16_000 and it.channels == 1 and 1 < it.duration < 6 for it in m.items)
    assert all(it.path.startswith("AudioWAV/") and it.path.endswith(".opus") for it in m.items)
    assert set(m.classes) <= {"neutral", "happy", "sad", "angry", "fearful", "disgust"}
    # the all-zero clip (~1e-34 once decoded from Opus) is rejected as silent, with the reason
    assert [r["path"] for r in m.rejected] == ["AudioWAV/1076_MTI_SAD_XX.opus"]
    assert m.rejected[0]["reason"].startswith("silent (RMS")
    assert len(m.items) == 4 * 6 + 1  # 6 per actor, plus 1040_ITH_SAD_XX; 1076_MTI_SAD_XX rejected


def test_cremad_old_misnamed_file_is_accepted(tmp_path):
    # An older release names one file 1040_ITH_SAD_X (one-letter level): the same clip, accepted.
    from liser.data.corpora.cremad import prepare_cremad

    src = real_cremad() / "AudioWAV" / "1040_ITH_SAD_XX.opus"
    root = tmp_path / "c"
    (root / "AudioWAV").mkdir(parents=True)
    (root / "AudioWAV" / "1040_ITH_SAD_X.opus").symlink_to(src)
    (root / "AudioWAV" / "1040_ITH_ANG_XX.opus").symlink_to(src.with_name("1040_ITH_ANG_XX.opus"))
    m = prepare_cremad(root, progress=False)
    assert [(it.id, it.label) for it in m.items] == [("cremad/1040/1040_ITH_ANG_XX", "angry"),
                                                      ("cremad/1040/1040_ITH_SAD_X", "sad")]
    assert not m.rejected


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg", ".opus", ".WAV"])
def test_cremad_any_audio_extension(tmp_path, suffix):
    from liser.data.corpora.cremad import prepare_cremad

    write_noise(tmp_path / "AudioWAV" / f"1001_DFA_ANG_XX{suffix}")
    m = prepare_cremad(tmp_path, progress=False)
    assert [it.path for it in m.items] == [f"AudioWAV/1001_DFA_ANG_XX{suffix}"]


# ---------------------------------------------------------------- bad input: one line per problem, the rest prepared


def test_cremad_bad_files_are_rejected_one_row_each_and_the_rest_prepared(tmp_path):
    from liser.data.corpora.cremad import prepare_cremad

    a = tmp_path / "AudioWAV"
    for name in ("1001_DFA_ANG_XX", "1001_DFA_HAP_LO", "1002_DFA_NEU_XX"):
        write_noise(a / f"{name}.wav")
    sf.write(str(a / "1076_MTI_SAD_XX.wav"), np.zeros(16_000, np.float32), 16_000)  # all-zero clip
    (a / "1003_DFA_SAD_XX.wav").write_text(LFS_TEXT)  # an LFS pointer instead of audio
    write_noise(a / "1004_DFA_XYZ_XX.wav")  # unknown emotion code
    (tmp_path / "VideoDemographics.csv").write_text('"ActorID","Age","Sex","Race","Ethnicity"\n'
                                                    '1001,51,"Male","Caucasian","Not Hispanic"\n')
    m = prepare_cremad(tmp_path, progress=False)
    assert [it.id for it in m.items] == ["cremad/1001/1001_DFA_ANG_XX", "cremad/1001/1001_DFA_HAP_LO",
                                         "cremad/1002/1002_DFA_NEU_XX"]
    assert [it.gender for it in m.items] == ["M", "M", ""]  # 1002 is not in this demographics file
    reasons = {r["path"]: r["reason"] for r in m.rejected}
    assert list(reasons) == ["AudioWAV/1003_DFA_SAD_XX.wav", "AudioWAV/1004_DFA_XYZ_XX.wav", "AudioWAV/1076_MTI_SAD_XX.wav"]
    assert reasons["AudioWAV/1003_DFA_SAD_XX.wav"].startswith("a Git LFS pointer, not audio")
    assert reasons["AudioWAV/1004_DFA_XYZ_XX.wav"].startswith("unknown CREMA-D emotion code 'XYZ'")
    assert reasons["AudioWAV/1076_MTI_SAD_XX.wav"].startswith("silent")
    # saved: one rejected.csv row per problem, nothing half-written
    out = m.save(tmp_path / "manifests" / "cremad")
    lines = (out / "rejected.csv").read_text().splitlines()
    assert lines[0] == "path,reason" and len(lines) == 4
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv", "meta.json", "rejected.csv"]
    assert [p.name for p in out.parent.iterdir()] == ["cremad"]


def test_cremad_missing_audiowav_is_one_clear_error(tmp_path):
    from liser.data.corpora.cremad import prepare_cremad

    (tmp_path / "VideoDemographics.csv").write_text("ActorID,Age,Sex,Race,Ethnicity\n1001,51,Male,Caucasian,Not Hispanic\n")
    with pytest.raises(LiserError, match="^" + re.escape(str(tmp_path)) +
                       r": not a CREMA-D tree \(it holds VideoDemographics.csv but no AudioWAV/ folder\)$"):
        prepare_cremad(tmp_path, progress=False)
    (tmp_path / "VideoDemographics.csv").unlink()
    with pytest.raises(LiserError, match="^" + re.escape(str(tmp_path)) + r": not a CREMA-D tree \(no AudioWAV/ folder"):
        prepare_cremad(tmp_path, progress=False)


def test_cremad_only_unknown_codes_is_an_error_that_says_so(tmp_path):
    from liser.data.corpora.cremad import prepare_cremad

    write_noise(tmp_path / "AudioWAV" / "1001_DFA_XYZ_XX.wav")
    with pytest.raises(LiserError, match=r"not a CREMA-D tree \(no usable .* 1 with an unknown emotion code\)"):
        prepare_cremad(tmp_path, progress=False)


def test_cli_prepare_cremad_bad_tree_exits_2_with_one_line(tmp_path, capsys):
    from liser.cli import main

    (tmp_path / "VideoDemographics.csv").write_text("ActorID,Sex\n1001,Male\n")
    assert main(["prepare", "cremad", str(tmp_path), "-o", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no AudioWAV/ folder" in err[0]
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------- the shipped folds


def test_shipped_cremad_folds_have_no_leak_and_balance_gender():
    from liser.data.corpora.cremad import read_genders
    from liser.data.folds import SHIPPED, check_folds, load_folds

    f = load_folds("cremad")  # load_folds runs the leak check
    check_folds(f)
    assert (f.corpus, f.k, f.seed) == ("cremad", 5, 0)
    actors = [f"{a}" for a in range(1001, 1092)]
    assert sorted(s for fold in f for s in fold.test) == actors  # every actor tested exactly once
    for fold in f:
        assert sorted(fold.train + fold.val + fold.test) == actors
        assert 18 <= len(fold.test) <= 19 and 18 <= len(fold.val) <= 19
    assert (SHIPPED / "cremad.json").is_file()
    demo = DATA / "cremad" / "VideoDemographics.csv"
    if demo.is_file():  # 48 men and 43 women: each test group holds 9 or 10 men
        genders = read_genders(demo)
        assert all(sum(genders[s] == "M" for s in fold.test) in (9, 10) for fold in f)


def test_shipped_cremad_folds_match_the_real_file_names():
    # Fast: the speakers are the actor ids in the real file names (no audio decoded).
    from types import SimpleNamespace

    from liser.data.corpora.cremad import NAME
    from liser.data.folds import check_folds, load_folds

    names = sorted((real_cremad() / "AudioWAV").iterdir())
    assert len(names) == 7442
    speakers = sorted({NAME.match(p.stem).group(1) for p in names})
    check_folds(load_folds("cremad"), SimpleNamespace(speakers=speakers, corpus="cremad"), source="cremad")


@pytest.mark.slow
def test_shipped_cremad_folds_against_the_real_manifest(tmp_path):
    # The whole release (7,442 clips, ~40 s to probe): one clip rejected, the folds resolve for a config.
    from liser.core.config import Config
    from liser.data.corpora.cremad import prepare_cremad
    from liser.data.workspace import fold_items, resolve_folds

    m = prepare_cremad(real_cremad(), progress=False)
    assert len(m.items) == 7441 and [r["path"] for r in m.rejected] == ["AudioWAV/1076_MTI_SAD_XX.opus"]
    assert len(m.speakers) == 91 and {it.gender for it in m.items} == {"M", "F"}
    cfg = Config(corpus="cremad", root=str(real_cremad()), work=str(tmp_path))
    folds = resolve_folds(cfg, m)  # the shipped file, checked against the manifest
    assert folds.corpus == "cremad" and len(folds) == 5
    train, val, test, classes = fold_items(cfg, m)
    assert classes == ["neutral", "happy", "sad", "angry", "fearful", "disgust"]
    assert not {it.speaker for it in train} & {it.speaker for it in test}


# ---------------------------------------------------------------- the CREMA-D experiment configs


def test_cremad_grid_is_table2_with_calibration_rows_and_figure2(monkeypatch):
    from collections import Counter

    from liser.core.config import Config
    from liser.experiments.grid import expand_grid, load_grid

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)  # grids name their base and teacher configs relative to the repository
    g = load_grid("configs/grid-cremad-cpu.yaml")
    runs = expand_grid(g, 5)
    counts = Counter((r["config"], r["fraction"]) for r in runs)
    assert {c for c, _ in counts} == {"no-dstl", "vid-dstl", "sp-dstl", "vid-sp-dstl", "conf-vid-sp-dstl",
                                      "conf-T-vid-sp-dstl", "entropy-vid-sp-dstl", "sp-distill-ce",
                                      "vid-sp-distill-ce"}
    for name in ("no-dstl", "sp-distill-ce"):  # Figure 2: every fraction on every fold
        assert {f for c, f in counts if c == name} == {0.25, 0.5, 0.75, 1.0}
    assert len(runs) == 75 and set(counts.values()) == {5}
    by = {r["config"]: r["cfg"] for r in runs if r["fraction"] == 1.0 and r["fold"] == 0}
    assert (by["conf-vid-sp-dstl"].weighting, by["conf-vid-sp-dstl"].temperature_sd) == ("confidence", 1.0)
    assert (by["conf-T-vid-sp-dstl"].weighting, by["conf-T-vid-sp-dstl"].temperature_sd) == ("confidence", 0.0)
    assert by["entropy-vid-sp-dstl"].weighting == "entropy"
    assert by["sp-distill-ce"].distill_loss == by["vid-sp-distill-ce"].distill_loss == "ce"
    assert by["no-dstl"].lambda_sd == by["no-dstl"].lambda_vd == 0 and by["vid-dstl"].lambda_sd == 0
    for cfg in by.values():
        assert cfg.corpus == "cremad" and cfg.speech_store == "work/stores/cremad/speech-fold{fold}"
        assert cfg.speech_teacher == "configs/teacher-speech-whisper.yaml"
        # the pool is everything that is not CREMA-D
        assert sorted(u.split(":")[0] for u in cfg.unlabeled) == ["emodb", "ravdess", "tess", "urdu", "videos"]
        assert not any("cremad" in u for u in cfg.unlabeled)
        assert cfg.level_norm and cfg.aug_noise_p > 0  # the liser recipe
    teacher = Config.load("configs/cremad-vid-sp-dstl.yaml")  # what the teacher commands read
    assert (teacher.corpus, teacher.speech_store, teacher.unlabeled) == ("cremad", by["sp-dstl"].speech_store,
                                                                         by["sp-dstl"].unlabeled)
    assert Config.load("configs/cremad-no-dstl.yaml").corpus == "cremad"


def test_bench_label_fractions_adds_the_curve_and_the_figure2_claim(tmp_path, capsys):
    import importlib.util
    import json

    path = Path(__file__).resolve().parents[1] / "bench" / "bench_label_fractions.py"
    spec = importlib.util.spec_from_file_location("bench_label_fractions", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def cell(u, step=0.01):  # five folds at u - 2 step .. u + 2 step
        per = [round(u + (k - 2) * step, 4) for k in range(5)]
        return {"uar_mean": u, "uar_std": 0.01, "n_folds": 5, "folds": [{"fold": k, "uar": x} for k, x in enumerate(per)]}

    grid = {"configs": {"no-dstl": {"0.25": cell(0.40), "0.5": cell(0.45), "1": cell(0.50)},
                        "sp-distill-ce": {"0.25": cell(0.44), "0.5": cell(0.52, step=0.02), "1": cell(0.56)},
                        "sp-dstl": {"1": cell(0.55)}}}
    (tmp_path / "grid.json").write_text(json.dumps(grid))
    out = tmp_path / "cremad_distill.json"
    out.write_text(json.dumps({"configs": {"kept": 1}}))
    assert bench.main([str(tmp_path / "grid.json"), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["configs"] == {"kept": 1}  # the other keys are kept
    assert list(res["fractions"]) == ["no-dstl", "sp-distill-ce"]  # sp-dstl ran at one fraction only
    assert res["fractions"]["no-dstl"]["0.5"] == {"uar_mean": 0.45, "uar_std": 0.01, "folds": 5, "uar_per_fold":
                                                  {"0": 0.43, "1": 0.44, "2": 0.45, "3": 0.46, "4": 0.47}}
    # the distilled row's gain over no-dstl, paired by fold: at 0.5 it is 7 + (k - 2) points on fold k
    delta = res["fractions"]["sp-distill-ce"]["delta_vs_no-dstl"]
    assert delta["1"] == {"mean": 6.0, "std": 0.0, "better": 5, "folds": 5}
    assert delta["0.5"] == {"mean": 7.0, "std": 1.41, "better": 5, "folds": 5}  # std of 5..9 points, ddof 0
    assert "delta_vs_no-dstl" not in res["fractions"]["no-dstl"]
    c = res["figure2_claim"]
    assert c["holds"] is True and c["difference_points"] == pytest.approx(2.0)
    assert "yes (2.0 points)" in capsys.readouterr().out
    assert bench.main([str(tmp_path / "none.json"), "--json", str(out)]) == 2
