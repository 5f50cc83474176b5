"""The experiment report: report.md + PNGs that a reviewer can read.

Written by `liser experiment` from the grid's
results: the Table 2 and Table 3 analogues (UAR / WAR mean +- std over folds,
bootstrap 95% intervals of that fold mean (files resampled within each fold), the values chosen on
validation), the label-fraction curve, the pooled confusion matrix of each
configuration, the teachers' own UAR and calibration where their evaluation
files exist, the correspondence the student learned between the video
teacher's classes and the labeled classes, and the exact command, config,
data and code version.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from liser.core.atomic import atomic_write_text
from liser.data.workspace import teacher_dir

TABLE2 = ("no-dstl", "vid-dstl", "sp-dstl", "vid-sp-dstl", "conf-vid-sp-dstl")
TABLE3 = ("distill-ce", "vid-distill-ce", "sp-distill-ce", "two-stage", "vid-two-stage", "sp-two-stage")
PAPER_RAVDESS = {"no-dstl": (0.517, 0.535), "vid-dstl": (0.534, 0.547), "sp-dstl": (0.545, 0.556),
                 "vid-sp-dstl": (0.556, 0.570), "conf-vid-sp-dstl": (0.595, 0.611)}


def _code_version() -> str:
    from liser import __version__

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev, dirty = "", ""
    return f"liser {__version__}" + (f", git {rev}{' (modified)' if dirty else ''}" if rev else "")


def paired_delta(t: dict, base: dict) -> dict | None:
    """UAR of `t` minus `base` on the folds both finished: mean and std in points, folds where t is better."""
    ref = {f["fold"]: f["uar"] for f in base["folds"]}
    d = np.array([f["uar"] - ref[f["fold"]] for f in t["folds"] if f["fold"] in ref]) * 100
    if not len(d):
        return None
    return {"mean": float(d.mean()), "std": float(d.std()), "better": int((d > 0).sum()), "folds": len(d)}


def reference_name(name: str, names) -> str | None:
    """The row a configuration is compared with: `P-no-dstl-S` for the longest prefix P (a recipe family:
    `liser-sp-dstl` -> `liser-no-dstl`) and, among those, the longest suffix S of the name (a schedule:
    `liser-sp-distill-ce-e100` -> `liser-no-dstl-e100`) that the grid has, else `no-dstl`; None for a
    reference itself (a name holding `no-dstl`) or when there is none."""
    if "no-dstl" in name:
        return None
    parts = name.split("-")
    for k in range(len(parts) - 1, 0, -1):
        for j in range(k + 1, len(parts) + 1):  # j = len(parts): no suffix, tried last
            ref = "-".join(parts[:k] + ["no", "dstl"] + parts[j:])
            if ref in names:
                return ref
    return "no-dstl" if "no-dstl" in names else None


def _row(name: str, t: dict, base: dict | None) -> str:
    ci = t.get("ci95", {})
    ci_u = f"[{ci['uar'][0]:.3f}, {ci['uar'][1]:.3f}]" if ci else "-"
    d = paired_delta(t, base) if base and not name.endswith("no-dstl") else None
    delta = f"{d['mean']:+.1f} ± {d['std']:.1f} ({d['better']}/{d['folds']} folds better)" if d else ""
    variants = ", ".join(sorted({f["variant"] for f in t["folds"]}))
    return (f"| {name} | {t['uar_mean']:.3f} ± {t['uar_std']:.3f} | {t['war_mean']:.3f} ± {t['war_std']:.3f} "
            f"| {ci_u} | {delta} | {t['n_folds']} | {variants} |")


def _plot_fractions(configs: dict, path: Path) -> bool:
    from liser.core.util import new_figure, save_figure

    fig, ax = new_figure((5, 3.5))
    drawn = False
    for name, by_frac in configs.items():
        if len(by_frac) < 2:
            continue
        fr = sorted(by_frac, key=float)
        ax.errorbar([float(f) * 100 for f in fr], [by_frac[f]["uar_mean"] for f in fr],
                    yerr=[by_frac[f]["uar_std"] for f in fr], marker="o", capsize=3, label=name)
        drawn = True
    if not drawn:
        return False
    ax.set_xlabel("labeled training files used (%)")
    ax.set_ylabel("test UAR (mean ± std over folds)")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)
    return True


def _store_lines(base) -> list[str]:
    """What the teachers' stores hold: how much unlabeled audio, and how much of it has a face for the video teacher."""
    from liser.teachers.store import SoftLabelStore

    # the per-fold speech stores hold the same items: the base fold's stands for all
    from liser.data.workspace import store_path

    paths = [(e.kind, e.store, store_path(base, e)) for e in base.teacher_entries() if e.store]
    rows = []
    for kind, tmpl, p in paths:
        if not (Path(p) / "meta.json").is_file():
            continue
        s = SoftLabelStore(p)
        hours = sum(e.duration for e in s.index.values()) / 3600
        valid_h = float(np.asarray(s.valid).sum()) * s.piece_s / 3600
        rows.append(f"| {kind} | `{tmpl}` | {s.teacher} | {len(s)} | {hours:.2f} | {valid_h:.2f} |")
    if not rows:
        return []
    return ["## Unlabeled data in the teachers' stores", "",
            "Hours with a target are the valid 0.5 s pieces (for the video teacher: pieces with enough face frames). "
            "The video rows rest on the video store's hours only, far less than the paper's MSP-Face (46.55 h): "
            "read the video-distillation rows with that in mind.", "",
            "| teacher | store | model | items | audio h | h with a target |", "|---|---|---|---|---|---|", *rows, ""]


def write_report(out: str | Path, results: dict, base, grid_path, overrides=()) -> Path:
    """Write <out>/report.md (and PNGs beside it) from run_grid's results; returns its path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    configs = results["configs"]
    full = {name: by_frac.get("1") for name, by_frac in configs.items() if by_frac.get("1")}
    lines = [f"# liser experiment report: {', '.join(_corpora(base))}", ""]
    lines += _provenance_lines(results, base, grid_path, overrides)
    lines += _store_lines(base)
    lines += _table_lines(full, base)
    lines += _fraction_lines(configs, out)
    lines += _pool_curve_lines(full, out)
    lines += _confusion_lines(full, out)
    lines += _video_head_lines(full)
    lines += _teacher_lines(base, out)
    lines += ["", "## Per-fold results", "", "| configuration | fold | values | val UAR | test UAR | test WAR |",
              "|---|---|---|---|---|---|"]
    for name, t in full.items():
        for f in t["folds"]:
            lines.append(f"| {name} | {f['fold']} | {f['variant']} | {f['val_uar']:.3f} | {f['uar']:.3f} | {f['war']:.3f} |")
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _corpora(base) -> list[str]:
    """The labeled corpora a grid's base config trains on: each of `labeled`, else its one corpus."""
    from liser.data.workspace import labeled_corpora

    return labeled_corpora(base) if base.labeled else [base.corpus]


def _provenance_lines(results: dict, base, grid_path, overrides) -> list[str]:
    """The command, time, code version, data and the base config."""
    import yaml

    lines = ["## Provenance", "",
             f"- command: `liser experiment {grid_path}{''.join(f' --set {o}' for o in overrides)}`",
             f"- written: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
             f"- code: {_code_version()}, Python {sys.version.split()[0]}",
             (f"- labeled data: {', '.join(base.labeled)}; folds `{base.folds}`" if base.labeled else
              f"- labeled data: {base.corpus} at `{base.root}`; folds `{base.folds or base.corpus}`"),
             f"- unlabeled data: {', '.join(base.unlabeled) or '(per run)'}",
             f"- runs: {results.get('runs_total')} in the grid, {results.get('runs_trained')} trained by this call "
             f"in {results.get('wall_s', 0) / 60:.1f} min "
             + (f"as Ray tasks (`--ray {results['ray']}`)" if results.get("ray") else f"with {results.get('jobs')} parallel jobs"),
             "", "Base config:", "", "```yaml"]
    return lines + [yaml.safe_dump(base.to_dict(), sort_keys=False).rstrip(), "```", ""]


def _table_lines(full: dict, base) -> list[str]:
    """The Table 2 and Table 3 analogues, with deltas against each row's no-dstl (liser.experiments.report.reference_name)."""

    def ref(name):
        r = reference_name(name, full)
        return full.get(r) if r else None

    lines = ["## Table 2 analogue", "",
             "Test UAR / WAR, mean ± std over folds; the 95% interval is a bootstrap of the mean over folds, each fold's "
             "test files resampled on their own (over the pooled files where a fold's predictions were not kept); "
             "Δ is the test UAR minus its recipe's no-dstl (`liser-…` rows against liser-no-dstl, the others against "
             "no-dstl), in points, fold by fold on the folds both finished (same folds, seed "
             "and budget): mean ± std over those folds, and on how many the row beats no-dstl. `values` lists what "
             "validation chose per fold.",
             "", "| configuration | UAR | WAR | UAR 95% CI | Δ UAR | folds | values |", "|---|---|---|---|---|---|---|"]
    for name in [n for n in TABLE2 if n in full] + [n for n in full if n not in TABLE2 and n not in TABLE3]:
        lines.append(_row(name, full[name], ref(name)))
    if _corpora(base) == ["ravdess"]:
        lines += ["", "The paper's RAVDESS figures (UAR / WAR): " +
                  "; ".join(f"{k} {u:.3f} / {w:.3f}" for k, (u, w) in PAPER_RAVDESS.items()) + "."]
    t3 = [n for n in TABLE3 if n in full]
    if t3:
        lines += ["", "## Table 3 analogue (ablations)", "",
                  "| configuration | UAR | WAR | UAR 95% CI | Δ UAR | folds | values |", "|---|---|---|---|---|---|---|"]
        lines += [_row(n, full[n], ref(n)) for n in t3]
    return lines + _variant_lines(full)


def _variant_lines(full: dict) -> list[str]:
    """Each searched value held fixed on every fold: how much the choice matters (validation and test)."""
    rows = [(n, v, s) for n, t in full.items() for v, s in sorted(t.get("variants", {}).items())
            if len(t.get("variants", {})) > 1]
    if not rows:
        return []
    lines = ["", "## Searched values held fixed", "",
             "The rows above choose a value per fold on validation; here each value is used on every fold.", "",
             "| configuration | value | val UAR | test UAR | folds |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {v} | {s['val_uar_mean']:.3f} | {s['uar_mean']:.3f} ± {s['uar_std']:.3f} | {s['folds']} |"
              for n, v, s in rows]
    return lines


def _fraction_lines(configs: dict, out: Path) -> list[str]:
    """The label-fraction curve and table (Figure 2), when a row swept fractions."""
    if not _plot_fractions(configs, out / "label_fraction.png"):
        return []
    lines = ["", "## Label fraction (Figure 2 analogue)", "", "![label fraction](label_fraction.png)", "",
             "| configuration | fraction | UAR | WAR |", "|---|---|---|---|"]
    for name, by_frac in configs.items():
        if len(by_frac) > 1:
            for f in sorted(by_frac, key=float):
                t = by_frac[f]
                lines.append(f"| {name} | {float(f):.0%} | {t['uar_mean']:.3f} ± {t['uar_std']:.3f} "
                             f"| {t['war_mean']:.3f} ± {t['war_std']:.3f} |")
    return lines


def pool_size(cfg) -> tuple[float, int]:
    """The config's unlabeled pool: (hours, rounded to 0.01; items)."""
    from liser.data.workspace import unlabeled_manifests

    items = [it for m in unlabeled_manifests(cfg) for it in m.items]
    return round(sum(it.duration for it in items) / 3600, 2), len(items)


def pool_curves(full: dict) -> dict[str, list[dict]]:
    """How the gain grows with unlabeled hours (issue 13 §2): rows (or searched values held fixed) whose
    configs differ only in `unlabeled` form one curve, a point per pool, sorted by hours.

    full: {configuration: collect_grid's fraction-1 table}. Returns {label: [{row, variant, pool_hours,
    pool_items, uar_mean, uar_std, gain_mean, gain_std, better, folds}]}, the gain in UAR points paired by
    fold against the row's no-dstl (reference_name); only groups with at least two pool sizes.
    """
    from liser.core.config import Config

    groups: dict[str, list[dict]] = {}
    hours: dict[tuple, tuple[float, int]] = {}
    for name, t in full.items():
        ref = full.get(reference_name(name, full) or "")
        for variant, st in (t.get("variants") or {}).items():
            cfg_path = Path(st.get("run_dir", "")) / "config.yaml"
            if not ref or not cfg_path.is_file():
                continue
            cfg = Config.load(cfg_path)
            if not cfg.distils():
                continue
            pool = tuple(cfg.unlabeled)
            if pool not in hours:
                hours[pool] = pool_size(cfg)
            rest = {k: v for k, v in cfg.to_dict().items() if k not in ("unlabeled", "name", "fold", "label_fraction")}
            base_uar = {f["fold"]: f["uar"] for f in ref["folds"]}
            d = np.array([u - base_uar[k] for k, u in zip(st["fold_ids"], st["uar_per_fold"]) if k in base_uar]) * 100
            groups.setdefault(json.dumps(rest, sort_keys=True, default=str), []).append(
                {"row": name, "variant": variant, "pool_hours": hours[pool][0], "pool_items": hours[pool][1],
                 "uar_mean": st["uar_mean"], "uar_std": st["uar_std"], "gain_mean": float(d.mean()) if len(d) else None,
                 "gain_std": float(d.std()) if len(d) else None, "better": int((d > 0).sum()), "folds": len(d)})
    curves = {}
    for points in groups.values():
        if len({p["pool_hours"] for p in points}) < 2:
            continue
        points.sort(key=lambda p: p["pool_hours"])
        top = points[-1]  # named after the row on the largest pool
        curves[top["row"] + ("" if top["variant"] == "default" else f" ({top['variant']})")] = points
    return curves


def _pool_curve_lines(full: dict, out: Path) -> list[str]:
    """The pool-size curve (gain over no-dstl against unlabeled hours) as a PNG and a table."""
    curves = pool_curves(full)
    if not curves:
        return []
    from liser.core.util import new_figure, save_figure

    fig, ax = new_figure((5, 3.5))
    for label, pts in curves.items():
        ax.errorbar([p["pool_hours"] for p in pts], [p["gain_mean"] for p in pts], yerr=[p["gain_std"] for p in pts],
                    marker="o", capsize=3, label=label)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("unlabeled pool (hours)")
    ax.set_ylabel("Δ test UAR vs no-dstl (points)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, out / "pool_size.png")
    lines = ["", "## Pool size: how the gain grows with unlabeled hours", "",
             "Rows whose configs differ only in the unlabeled pool, each point a pool; Δ is paired by fold against "
             "no-dstl (mean ± std). Every point draws the same number of pool crops (same epochs and batches), "
             "so a small pool is seen more often, not more in total.", "", "![pool size](pool_size.png)", "",
             "| curve | row | pool h | items | UAR | Δ UAR | folds better |", "|---|---|---|---|---|---|---|"]
    for label, pts in curves.items():
        lines += [f"| {label} | {p['row']}" + ("" if p["variant"] == "default" else f" ({p['variant']})") +
                  f" | {p['pool_hours']:.2f} | {p['pool_items']} | {p['uar_mean']:.3f} ± {p['uar_std']:.3f} "
                  f"| {p['gain_mean']:+.1f} ± {p['gain_std']:.1f} | {p['better']}/{p['folds']} |" for p in pts]
    return lines


def _confusion_lines(full: dict, out: Path) -> list[str]:
    """A pooled confusion matrix PNG per configuration."""
    from liser.student.evaluate import plot_confusion

    lines = ["", "## Confusion matrices (pooled test files of every fold)", ""]
    for name, t in full.items():
        if "pooled" in t:
            png = f"confusion_{name}.png"
            plot_confusion(t["pooled"]["confusion"], t["classes"], out / png, f"{name}: pooled UAR {t['pooled']['uar']:.3f}")
            lines.append(f"![{name}]({png})")
    return lines


def _video_head_lines(full: dict) -> list[str]:
    """What g_vd learned: mean video-head softmax per labeled class, averaged over folds."""
    corr = [(n, t) for n, t in full.items() if any(f.get("video_head_by_class") for f in t["folds"])]
    if not corr:
        return []
    lines = ["", "## What g_vd learned: video-teacher classes per labeled class", "",
             "Mean softmax of the student's video-distillation head on the test files of each labeled class "
             "(averaged over folds): the correspondence between the two taxonomies that distillation taught."]
    for name, t in corr:
        mats = [np.array(f["video_head_by_class"], dtype=object) for f in t["folds"] if f.get("video_head_by_class")]
        vcls = next(f["video_classes"] for f in t["folds"] if f.get("video_classes"))
        lines += ["", f"**{name}**", "", "| labeled class | " + " | ".join(vcls) + " |",
                  "|---|" + "---|" * len(vcls)]
        for k, c in enumerate(t["classes"]):
            rows = [np.array(m[k], float) for m in mats if len(m[k])]
            if rows:
                mean = np.mean(rows, axis=0)
                cells = [f"**{v:.2f}**" if v == mean.max() else f"{v:.2f}" for v in mean]
                lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return lines


def teacher_evals(base) -> list[dict]:
    """The speech teachers' eval.json of the base config's teacher folder, one dict per fold (sorted by
    folder): test UAR whole and in 0.5 s pieces, and `calibration` on the fold's validation speakers
    (ece, temperature, ece_tempered; liser.teachers.calibration). Empty when none was fitted."""
    return [{"dir": p.parent.name, **json.loads(p.read_text())}
            for p in sorted(teacher_dir(base, 0).parent.glob("*/eval.json"))]


def teacher_summary(base) -> dict | None:
    """Per-fold and mean test UAR and validation ECE (raw and after the fitted temperature) of the
    speech teachers (teacher_evals), for a grid's JSON: what the paper's open question 1 (does
    confidence weighting fail where the teacher is miscalibrated?) is answered from. None if none."""
    evals = teacher_evals(base)
    if not evals:
        return None
    cols = {"uar": lambda e: e.get("uar"), "uar_pieces": lambda e: e.get("uar_pieces"),
            "val_ece": lambda e: e.get("calibration", {}).get("ece"),
            "temperature": lambda e: e.get("calibration", {}).get("temperature"),
            "val_ece_tempered": lambda e: e.get("calibration", {}).get("ece_tempered")}
    out = {}
    for k, get in cols.items():
        vals = [get(e) for e in evals]
        out[f"{k}_per_fold"] = [None if v is None else round(v, 4) for v in vals]
        known = [v for v in vals if v is not None]
        out[f"{k}_mean"] = round(float(np.mean(known)), 4) if known else None
    return out


def _teacher_lines(base, out: Path) -> list[str]:
    """The speech teachers' eval.json per fold, and their reliability diagrams copied beside the report."""
    teach = teacher_evals(base)
    if not teach:
        return []
    lines = ["", "## Teachers", "",
             "The speech teacher is trained per fold on that fold's training speakers only; its test UAR on the "
             "same test speakers as the student, whole utterances and 0.5 s pieces averaged per file (what the "
             "student is taught from), and its calibration on the fold's validation speakers.", "",
             "| teacher | fold | test UAR | test UAR (0.5 s pieces) | val ECE | fitted T | val ECE at T |",
             "|---|---|---|---|---|---|---|"]

    def f(x):
        return "-" if x is None else f"{x:.3f}"

    for e in teach:
        cal = e.get("calibration", {})
        lines.append(f"| {e.get('teacher', e['dir'])} | {e.get('fold', '-')} | {f(e.get('uar'))} "
                     f"| {f(e.get('uar_pieces'))} | {f(cal.get('ece'))} | {f(cal.get('temperature'))} "
                     f"| {f(cal.get('ece_tempered'))} |")
    for r in sorted(teacher_dir(base, 0).parent.glob("*/reliability.png"))[:5]:
        dst = out / f"reliability_{r.parent.name}.png"
        dst.write_bytes(r.read_bytes())
        lines.append(f"![reliability {r.parent.name}]({dst.name})")
    return lines
