"""bench/bench_timeline_changes.py: the sequence builder on real EmoDB clips, the change metrics on
hand-made label tracks, the pooled test speakers, and the library's timelines as the bench runs them.

Real files come from ../shared/data/emodb (skipped with a message when absent).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import load_bench, real_root

bench = load_bench("bench_timeline_changes")

SR = 16_000
# speaker 03 (a test speaker of the pooled split), text a01, three emotions
CLIPS = {"03a01Fa": "happy", "03a01Wa": "angry", "03a01Nc": "neutral"}


@pytest.fixture(scope="module")
def pieces():
    """The three clips cut to their speech (silero), as bench Pieces."""
    from liser.data.audio import load_audio

    root = real_root("emodb") / "wav"
    return [bench.Piece(bench.cut_to_speech(load_audio(root / f"{name}.flac")), label, f"emodb/03/{name}")
            for name, label in CLIPS.items()]


# ---------------------------------------------------------------- the builder
def test_cut_clips_are_speech_only_and_faded(pieces):
    from liser.data.audio import load_audio

    for p in pieces:
        full = load_audio(real_root("emodb") / "wav" / f"{p.id.split('/')[-1]}.flac")
        assert 0.8 * SR < len(p.wave) < len(full)  # EmoDB clips hold silence around the speech
        assert p.wave[0] == pytest.approx(0.0, abs=1e-3) and p.wave[-1] == pytest.approx(0.0, abs=1e-3)


def test_direct_join_puts_the_change_at_the_next_clips_first_sample(pieces):
    a, b = pieces[:2]
    seq = bench.join([a, b], 0.0, np.random.default_rng(0))
    n = len(a.wave)
    assert len(seq.wave) == n + len(b.wave)
    assert seq.changes == [n / SR]
    assert seq.segments == [(0.0, n / SR, "happy"), (n / SR, (n + len(b.wave)) / SR, "angry")]
    assert np.array_equal(seq.wave[:n], a.wave) and np.array_equal(seq.wave[n:], b.wave)


def test_pause_join_puts_room_tone_between_and_the_change_in_its_middle(pieces):
    seq = bench.join(pieces, bench.PAUSE_S, np.random.default_rng(0))
    gap = int(round(bench.PAUSE_S * SR))
    n0, n1, n2 = (len(p.wave) for p in pieces)
    assert len(seq.wave) == n0 + n1 + n2 + 2 * gap
    assert [s[2] for s in seq.segments] == ["happy", "angry", "neutral"]
    assert seq.segments[1][0] == (n0 + gap) / SR and seq.segments[2][0] == (n0 + gap + n1 + gap) / SR
    assert seq.changes == pytest.approx([(n0 + gap / 2) / SR, (n0 + gap + n1 + gap / 2) / SR])
    assert np.array_equal(seq.wave[n0 + gap : n0 + gap + n1], pieces[1].wave)
    tone = seq.wave[n0 : n0 + gap]
    assert 20 * np.log10(np.sqrt(np.mean(tone.astype(np.float64) ** 2))) == pytest.approx(bench.ROOM_TONE_DBFS, abs=0.1)


def test_pooled_test_speakers_are_the_shipped_runs():
    """EmoDB's test speakers of the shipped model's pooled split (MODEL_CARD.md: 83 test files)."""
    from liser.data.corpora import prepare

    m = prepare("emodb", real_root("emodb"), progress=False)
    speakers = bench.test_speakers({"emodb": m})["emodb"]
    assert speakers == ["03", "09"]
    assert sum(it.speaker in speakers and it.label != "boredom" for it in m.items) == 83


def test_plans_use_one_speaker_and_different_emotions():
    by_speaker = {"x": {"s1": {c: [f"x/s1/{c}{k}" for k in range(3)] for c in "abcd"},
                        "s2": {c: [f"x/s2/{c}"] for c in "ab"}}}
    plans = bench.draw_plans(by_speaker, 6, seed=1, corpora=("x",), sizes=(2, 3))
    assert [len(p["candidates"]) for p in plans] == [2, 3, 2, 3, 2, 3]
    for p in plans:
        labels = [c for c, _ in p["candidates"]]
        assert len(set(labels)) == len(labels)
        assert all(i.startswith(f"x/{p['speaker']}/{c}") for c, ids in p["candidates"] for i in ids)
    assert all(p["speaker"] == "s1" for p in plans if len(p["candidates"]) == 3)
    assert plans == bench.draw_plans(by_speaker, 6, seed=1, corpora=("x",), sizes=(2, 3))  # seeded


# ---------------------------------------------------------------- the metrics
def windows(centres_labels, half=1.5):
    return [(c - half, c + half, lab) for c, lab in centres_labels]


def test_a_change_half_a_second_late_gives_boundary_error_half_a_second():
    wins = windows([(1.0, "angry"), (2.0, "angry"), (3.0, "sad"), (4.0, "sad")])
    assert bench.predicted_changes(wins) == [2.5]
    assert bench.boundary_errors([2.0], bench.predicted_changes(wins)) == [0.5]
    assert bench.false_changes([2.0], [2.5]) == 0
    assert bench.boundary_errors([2.0], []) == [math.inf]


def test_per_second_accuracy_follows_the_label_covering_most_of_each_second():
    segments = [(0.0, 2.0, "angry"), (2.0, 5.0, "sad")]
    times = bench.grid(5.0)
    true = bench.segment_track(segments, times)
    late = bench.window_track(windows([(1.5, "angry"), (2.0, "angry"), (2.5, "angry"), (3.0, "sad"), (3.5, "sad")]),
                              times)  # change at 2.75: second 2 is mostly "angry" in the prediction
    assert bench.per_second(true, late, times) == (5, 4)
    assert bench.per_second(true, true, times) == (5, 5)
    assert bench.per_second(true, ["happy"] * len(times), times) == (5, 0)
    gap = [(0.0, 1.0, "angry"), (2.0, 3.0, "sad")]  # second 1 holds no speech and is not scored
    assert bench.per_second(bench.segment_track(gap, times), late, times) == (2, 1)  # second 2: "angry" (late)


def test_summary_counts_detections_misses_and_false_changes():
    seq = bench.Sequence(np.zeros(6 * SR, np.float32), [(0.0, 2.0, "angry"), (2.0, 6.0, "sad")], [2.0])
    wins = windows([(1.5, "angry"), (2.0, "angry"), (2.5, "angry"), (3.0, "sad"), (3.5, "sad"), (4.0, "sad"),
                    (4.5, "happy")])  # changes at 2.75 (late by 0.75) and 4.25 (false)
    times = bench.grid(seq.duration)
    r = bench.score_track(seq, bench.window_track(wins, times), bench.predicted_changes(wins))
    assert r["errors"] == [pytest.approx(0.75)] and r["false"] == 1 and r["predicted"] == 2
    missed = bench.score_track(seq, ["angry"] * len(times), [])
    s = bench.summarize([r, missed])
    assert s["true_changes"] == 2 and s["boundary_error_s"]["none_predicted"] == 1
    assert s["detected_within_0.5s"] == 0.0 and s["detected_within_1s"] == 0.5
    assert s["false_changes_per_min"] == pytest.approx(1 / (12 / 60), abs=1e-3)
    assert s["boundary_error_s"]["mean_of_found"] == 0.75


def test_false_changes_count_a_second_change_near_one_true_change():
    assert bench.false_changes([2.0], [1.8, 2.3]) == 1  # a flicker around one boundary: one of the two is false
    assert bench.false_changes([2.0, 4.0], [1.8, 4.5]) == 0
    assert bench.false_changes([2.0], [3.5]) == 1  # farther than FALSE_TOL_S


def test_bootstrap_intervals_hold_the_estimate_and_pair_the_rows():
    rng = np.random.default_rng(3)
    rows = [{"seconds": 5, "right": int(k), "errors": [0.2, 2.0], "false": 1, "duration": 5.0}
            for k in rng.integers(0, 6, 40)]
    better = [{**r, "right": min(5, r["right"] + 1)} for r in rows]
    ci = bench.bootstrap({"a": rows, "b": better}, "a", draws=500)
    acc = sum(r["right"] for r in rows) / sum(r["seconds"] for r in rows)
    assert ci["a"]["per_second_accuracy"][0] < acc < ci["a"]["per_second_accuracy"][1]
    assert ci["a"]["per_second_accuracy_minus_a"] == [0.0, 0.0]
    assert ci["b"]["per_second_accuracy_minus_a"][0] > 0  # paired: no sequence loses, most gain
    assert ci["a"]["detected_within_1s"] == [0.5, 0.5] and ci["a"]["false_changes_per_min"] == [12.0, 12.0]


# ---------------------------------------------------------------- the timelines
def test_resolutions_name_the_librarys_windows():
    res = bench.resolutions()
    assert res[:3] == [("3s_hop0.25", 3.0, 0.25), ("3s_hop0.5", 3.0, 0.5), ("3s_hop1", 3.0, 1.0)]
    assert ("1.5s_hop0.5", 1.5, 0.5) in res and ("1s_hop0.25", 1.0, 0.25) in res
    assert len({n for n, _, _ in res}) == len(res) == 3 + 3 * 2


def test_short_windows_come_from_the_library_and_label_joined_speech(pieces):
    """1 s windows over back-to-back clips: as long as asked, more than the 3 s ones, flush with the recording's
    end, and every one labeled (the detector reads the 3 s around each; alone, 1 s windows of continuous speech
    were often refused)."""
    import liser

    model = liser.load(threads=1)
    seq = bench.join(pieces, 0.0, np.random.default_rng(0))
    long, short = (bench.api_timeline(model, seq.wave, w, 0.5) for w in (3.0, 1.0))
    assert short == [(w.start, w.end, w.label) for w in model.timeline(seq.wave, SR, 0.5, window_s=1.0)]
    assert len(short) > len(long) > 3
    assert all(1.0 - 0.05 < b - a < 1.0 + 0.05 for a, b, _ in short)
    assert short[-1][1] == pytest.approx(seq.duration) and short[-1][0] == pytest.approx(seq.duration - 1.0, abs=0.04)
    assert all(lab in model.classes for _, _, lab in short)
    assert bench.detector_misses(seq.wave, short) == 0


def test_detector_misses_count_unlabeled_windows_over_speech_only(pieces):
    from liser.data.augment_audio import room_tone

    tone = room_tone(2 * SR, bench.ROOM_TONE_DBFS, np.random.default_rng(0))
    wave = np.concatenate([pieces[0].wave, tone])
    end = len(pieces[0].wave) / SR
    assert bench.detector_misses(wave, [(0.2, 1.2, "happy")]) == 0  # labeled windows are no miss
    assert bench.detector_misses(wave, [(0.2, 1.2, None)]) == 1  # speech there: a miss
    assert bench.detector_misses(wave, [(end + 0.5, end + 1.5, None)]) == 0  # room tone only: rightly unlabeled
