"""bench/bench_phone_parts.py: the telephone line's gain per Mel band, its parts, and one end-to-end run of the
shipped default model on real validation files (../shared/data; skipped with a message when absent)."""

from __future__ import annotations

import json

import numpy as np

from conftest import load_bench
from test_bench_robustness import _tiny_config

bench = load_bench("bench_phone_parts")


def test_line_gain_is_the_phone_band_and_the_parts_split_it():
    """The measured line passes 0.5-3 kHz within 3 dB, cuts the bands above 4.2 kHz by more than 60 dB and the
    lowest band by more than 10; the three parts cover every band once and add up to the whole curve."""
    from liser.data.audio import mel_centres

    gain = bench.line_gain()
    c = mel_centres(len(gain))
    assert np.abs(gain[(c > 500) & (c < 3000)]).max() < 3.0
    assert gain[c > 4200].max() < -60.0 and gain[0] < -10.0
    parts = bench.part_gains(gain)
    whole = parts.pop("all_bands")
    np.testing.assert_allclose(whole, gain)
    np.testing.assert_allclose(sum(parts.values()), gain)
    assert all(((p != 0).sum() > 0) for p in parts.values())


def test_end_to_end_on_real_files(tmp_path):
    """The shipped default model on 2 real RAVDESS files a class: clean labels never change against themselves,
    every part and the real telephone line are scored, and the JSON records the gain."""
    cfg = _tiny_config(tmp_path)  # skips when the real data are absent
    out = tmp_path / "parts.json"
    assert bench.main(["--config", str(cfg), "--split", "test", "--max-per-class", "2", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    r = res["results"]["default"]
    assert r["clean"]["changed_vs_full"] == 0.0 and r["clean"]["n"] == res["files"] >= 10
    assert set(r) == {"clean", *bench.PARTS, "telephone"} and len(res["gain_db"]) == 64
    assert 0.0 <= r["telephone"]["changed_vs_full"] <= 1.0
