"""Figure 2's numbers: the label-fraction curve of a finished grid, and the paper's claim checked.

    .venv/bin/python bench/bench_label_fractions.py configs/grid-cremad-cpu.yaml \
        --json bench/results/cremad_distill.json [--distilled sp-distill-ce]

Reads a grid file's finished runs (restored from its ledger, as
`bench_distill.py --collect-only` does: a grid still running, or trained on
another machine, counts), or the grid.json that `liser experiment` wrote
at the end of a whole grid, and adds two keys to `--json` (made if absent; every other key kept):

- `fractions`: {configuration: {fraction: {uar_mean, uar_std, folds,
  uar_per_fold}}} for every configuration run at more than one label
  fraction, and for each one that is not no-dstl, `delta_vs_no-dstl`:
  {fraction: {mean, std, better, folds}}, its paired gain in points over
  no-dstl at the same fraction (folds both have; std over folds, ddof 0);
- `figure2_claim`: the paper's Figure 2 statement, "with half the labels,
  distillation beats no-dstl with all of them", as numbers: the distilled
  configuration's UAR at 0.5, no-dstl's at 1.0, their difference in points,
  and `holds` (true / false; null when a figure is missing).

The report's PNG of the same curve is written by `liser experiment`
(report.md, "label fractions"). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def fractions_of(grid: dict, baseline: str = "no-dstl") -> dict:
    """{configuration: {fraction: {uar_mean, uar_std, folds, uar_per_fold}}} for configurations with several
    fractions; the others also get `delta_vs_<baseline>` (see the module docstring)."""
    out = {}
    for name, by_frac in grid.get("configs", {}).items():
        if len(by_frac) < 2:
            continue
        out[name] = {f: {"uar_mean": round(t["uar_mean"], 4), "uar_std": round(t["uar_std"], 4), "folds": t["n_folds"],
                         "uar_per_fold": {str(r["fold"]): round(r["uar"], 4) for r in t.get("folds", [])}}
                     for f, t in sorted(by_frac.items(), key=lambda kv: float(kv[0]))}
    for name in out:
        if name != baseline and baseline in out:
            out[name][f"delta_vs_{baseline}"] = paired_deltas(out[name], out[baseline])
    return out


def paired_deltas(row: dict, base: dict) -> dict:
    """{fraction: {mean, std, better, folds}}: `row` − `base` in UAR points, paired by fold, per fraction."""
    import numpy as np

    out = {}
    for f, t in row.items():
        both = sorted(set(t["uar_per_fold"]) & set(base.get(f, {}).get("uar_per_fold", {})), key=int)
        if both:
            d = 100 * np.array([t["uar_per_fold"][k] - base[f]["uar_per_fold"][k] for k in both])
            out[f] = {"mean": round(float(d.mean()), 2), "std": round(float(d.std()), 2),
                      "better": int((d > 0).sum()), "folds": len(both)}
    return out


def claim(fractions: dict, distilled: str, baseline: str = "no-dstl") -> dict:
    """Does `distilled` at half the labels beat `baseline` at all of them? (UAR means over folds)."""
    half = fractions.get(distilled, {}).get("0.5", {}).get("uar_mean")
    full = fractions.get(baseline, {}).get("1", {}).get("uar_mean")
    both = half is not None and full is not None
    return {"statement": f"{distilled} with 50 % of the labels beats {baseline} with 100 %",
            "distilled": distilled, "distilled_uar_at_0.5": half, f"{baseline}_uar_at_1": full,
            "difference_points": round(100 * (half - full), 2) if both else None,
            "holds": (half > full) if both else None}


def collected(src: Path) -> dict:
    """A grid's table: from a grid file (its finished runs, the ledger restored first) or a grid.json."""
    if src.suffix not in (".yaml", ".yml"):
        return json.loads(src.read_text())
    from liser.experiments.grid import check_finished, collect_grid, expand_grid, fold_count, load_grid, restore_ledger

    grid = load_grid(src)
    runs = expand_grid(grid, fold_count(grid["base"]))
    restore_ledger(grid, runs)
    check_finished(src, runs)
    return collect_grid(runs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("grid_json", help="a grid file (configs/grid-cremad-cpu.yaml) or the grid.json a whole grid wrote")
    ap.add_argument("--json", required=True, help="results file to add `fractions` and `figure2_claim` to")
    ap.add_argument("--distilled", default="sp-distill-ce", help="the distillation row of the curve (default sp-distill-ce, configs/grid-cremad-cpu.yaml says why)")
    args = ap.parse_args(argv)
    src = Path(args.grid_json)
    if not src.is_file():
        print(f"bench_label_fractions: {src}: no such file (run the grid first)", file=sys.stderr)
        return 2
    fr = fractions_of(collected(src))
    if not fr:
        print(f"bench_label_fractions: {src}: no configuration was run at several label fractions", file=sys.stderr)
        return 2
    out = Path(args.json)
    res = json.loads(out.read_text()) if out.is_file() else {}
    res["fractions"] = fr
    res["figure2_claim"] = claim(fr, args.distilled)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    os.replace(tmp, out)
    fracs = sorted({f for by in fr.values() for f in by if not f.startswith("delta_vs_")}, key=float)
    print("| configuration | " + " | ".join(f"{float(f):.0%} labels" for f in fracs) + " |")
    print("|---|" + "---|" * len(fracs))
    for name, by in fr.items():
        print(f"| {name} | " + " | ".join(f"{by[f]['uar_mean']:.3f} ± {by[f]['uar_std']:.3f}" if f in by else "-"
                                          for f in fracs) + " |")
        for key, deltas in by.items():
            if key.startswith("delta_vs_"):
                print(f"| {name} − {key.removeprefix('delta_vs_')}, points | " + " | ".join(
                    f"{deltas[f]['mean']:+.1f} ± {deltas[f]['std']:.1f} ({deltas[f]['better']} of {deltas[f]['folds']})"
                    if f in deltas else "-" for f in fracs) + " |")
    c = res["figure2_claim"]
    print(f"\n{c['statement']}: {'yes' if c['holds'] else 'no' if c['holds'] is False else 'unknown'} "
          f"({c['difference_points']} points)\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
