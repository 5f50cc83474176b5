"""Speaker-independent k-fold splits and the leak check.

Fold i tests on speaker group i, validates on group i+1 (mod k) and trains on
the rest, so every speaker is tested exactly once and no speaker is in two
parts of a fold. Groups are dealt from a seeded shuffle, men first then
women continuing round-robin, so groups are balanced by size and gender.
The RAVDESS, EmoDB and CREMA-D folds ship with the package
(`corpora/folds/*.json`, made by `liser folds MANIFEST -k 5 --seed 0`) so
results are comparable across users and versions.

A config that pools several labeled corpora (`labeled`) is split by corpus
instead (`corpus_folds`): `loco` tests each fold on one whole corpus, so a
figure says how the model does on a corpus it never heard; `pooled` is one
fold with test speakers drawn from every corpus. `loco-adapt` is `loco` for
adaptation (issue 24's adapted protocol): the held-out corpus's speakers are
split in two halves, the first half's audio joins the unlabeled pool (its
labels unused anywhere: `Fold.adapt`), the second half is the test.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from liser.core.errors import LiserError

SHIPPED = Path(__file__).parent / "corpora" / "folds"


@dataclass(frozen=True)
class Fold:
    index: int
    train: tuple[str, ...]  # training speakers
    val: tuple[str, ...]  # validation speakers (best epoch, lambda choice)
    test: tuple[str, ...]  # test speakers
    adapt: tuple[str, ...] = ()  # speakers whose audio joins the unlabeled pool, never their labels (loco-adapt)


@dataclass(frozen=True)
class Folds:
    corpus: str
    k: int
    seed: int
    folds: tuple[Fold, ...]

    def __getitem__(self, i: int) -> Fold:
        if not 0 <= i < self.k:
            raise LiserError(f"fold {i} does not exist ({self.corpus} has folds 0..{self.k - 1})")
        return self.folds[i]

    def __iter__(self):
        return iter(self.folds)

    def __len__(self) -> int:
        return self.k

    def to_dict(self) -> dict:
        return {"corpus": self.corpus, "k": self.k, "seed": self.seed,
                "folds": [{"train": list(f.train), "val": list(f.val), "test": list(f.test),
                           **({"adapt": list(f.adapt)} if f.adapt else {})} for f in self.folds]}

    def save(self, path: str | Path) -> None:
        """Write the fold file `path`; LiserError for a folder or an existing file that is not a fold file."""
        from liser.core.outputs import check_out_file, is_folds_file, writing
        from liser.core.atomic import atomic_write_text

        path = check_out_file(path, "fold file", is_folds_file)
        with writing(path.parent):
            path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")


def make_folds(speakers: dict[str, str], k: int = 5, seed: int = 0, corpus: str = "") -> Folds:
    """Folds from {speaker: gender ("M", "F" or "")}; deterministic for a seed."""
    if len(speakers) < 3:
        raise LiserError(f"{corpus or 'corpus'}: {len(speakers)} speakers; speaker-independent folds need at least 3")
    k = min(k, len(speakers))
    if k < 3:
        raise LiserError("k must be at least 3 (train, validation and test parts)")
    rng = random.Random(seed)
    groups: list[list[str]] = [[] for _ in range(k)]
    slot = 0
    for gender in sorted({g for g in speakers.values()}):
        members = sorted(s for s, g in speakers.items() if g == gender)
        rng.shuffle(members)
        for s in members:
            groups[slot % k].append(s)
            slot += 1
    folds = []
    for i in range(k):
        test, val = groups[i], groups[(i + 1) % k]
        train = [s for j, g in enumerate(groups) if j not in (i, (i + 1) % k) for s in g]
        folds.append(Fold(i, tuple(sorted(train)), tuple(sorted(val)), tuple(sorted(test))))
    f = Folds(corpus, k, seed, tuple(folds))
    check_folds(f)
    return f


def folds_for_manifest(manifest, k: int = 5, seed: int = 0) -> Folds:
    genders = {}
    for it in manifest.items:
        genders.setdefault(it.speaker, it.gender)
    return make_folds(genders, k, seed, manifest.corpus)


POOLED_SCHEMES = ("loco", "pooled", "loco-adapt")  # fold schemes of a config that pools several labeled corpora


def corpus_folds(speakers: dict[str, str], corpora: list[str], scheme: str = "loco",
                 val_fraction: float = 0.15, seed: int = 0) -> Folds:
    """Folds over several pooled corpora, from {speaker: corpus} and the corpora in their config order.

    scheme "loco" (leave one corpus out): fold k tests on every speaker of
    corpora[k] and trains and validates on the other corpora; in-corpus folds
    hide how badly a model transfers, this shows it. scheme "pooled": one
    fold whose test speakers are drawn per corpus, as the validation ones.
    Validation speakers are drawn per corpus (round(val_fraction * n), at
    least 1, from a shuffle seeded by `seed` and the corpus name), so they
    are the same in every fold and every corpus is validated on; a corpus
    with fewer than 3 speakers (TESS has 2) gives none and only trains.
    scheme "loco-adapt": as loco, but the held-out corpus's shuffled speakers
    are halved: the first n // 2 are `adapt` (their audio, unlabeled, joins
    the pool), the rest the test.
    Raises LiserError for an unknown scheme or a corpus without speakers.
    """
    if scheme not in POOLED_SCHEMES:
        raise LiserError(f"folds {scheme!r}: a pooled config's folds are {' or '.join(POOLED_SCHEMES)}")
    drawn: dict[str, list[str]] = {}  # corpus -> its speakers, shuffled; the first ones validate (then test)
    for c in corpora:
        members = sorted(s for s, sc in speakers.items() if sc == c)
        if not members:
            raise LiserError(f"folds {scheme}: corpus {c!r} has no speakers in the pooled manifest")
        random.Random(f"{seed}:{c}").shuffle(members)
        drawn[c] = members
    n_val = {c: 0 if len(m) < 3 else max(1, round(val_fraction * len(m))) for c, m in drawn.items()}
    folds = []
    for k, held in enumerate(corpora if scheme != "pooled" else [None]):
        train, val, test, adapt = [], [], [], []
        for c, members in drawn.items():
            v = n_val[c]
            if c == held and scheme == "loco-adapt":
                half = len(members) // 2
                adapt, test = adapt + members[:half], test + members[half:]
            elif c == held:
                test += members
            elif held is None:  # pooled: validation speakers, then as many test speakers, then training
                val, test, train = val + members[:v], test + members[v : 2 * v], train + members[2 * v :]
            else:
                val, train = val + members[:v], train + members[v:]
        folds.append(Fold(k, tuple(sorted(train)), tuple(sorted(val)), tuple(sorted(test)), tuple(sorted(adapt))))
    out = Folds("+".join(corpora), len(folds), seed, tuple(folds))
    check_folds(out, source=f"folds {scheme}")
    return out


def load_folds(name_or_path: str | Path) -> Folds:
    """A shipped fold file by corpus name (`ravdess`, `emodb`, `cremad`) or a JSON path."""
    p = Path(name_or_path)
    if not p.suffix and not p.exists():
        p = SHIPPED / f"{name_or_path}.json"
    if not p.is_file():
        shipped = ", ".join(sorted(x.stem for x in SHIPPED.glob("*.json")))
        raise LiserError(f"{name_or_path}: no such fold file (shipped: {shipped})")
    try:
        d = json.loads(p.read_text())
        folds = tuple(Fold(i, tuple(f["train"]), tuple(f["val"]), tuple(f["test"]), tuple(f.get("adapt", ())))
                      for i, f in enumerate(d["folds"]))
        out = Folds(d.get("corpus", p.stem), len(folds), int(d.get("seed", 0)), folds)
    except (KeyError, TypeError, ValueError) as e:
        raise LiserError(f"{p}: not a fold file ({e})") from None
    check_folds(out, source=str(p))
    return out


def check_folds(folds: Folds, manifest=None, source: str = "folds") -> None:
    """Fail loudly if a speaker is in two parts of a fold, or (with a manifest) is unknown or unused."""
    for f in folds:
        parts = {"train": set(f.train), "val": set(f.val), "test": set(f.test), "adapt": set(f.adapt)}
        for a, b in (("train", "val"), ("train", "test"), ("val", "test"), ("adapt", "train"), ("adapt", "val"),
                     ("adapt", "test")):
            leak = parts[a] & parts[b]
            if leak:
                raise LiserError(f"{source}: speaker leak in fold {f.index}: {sorted(leak)} in both {a} and {b}")
        if not f.test or not f.val or not f.train:
            raise LiserError(f"{source}: fold {f.index} has an empty part")
    if manifest is not None:
        known = set(manifest.speakers)
        for f in folds:
            used = set(f.train) | set(f.val) | set(f.test) | set(f.adapt)
            unknown = used - known
            if unknown:
                raise LiserError(f"{source}: fold {f.index} names speakers not in the {manifest.corpus} manifest: {sorted(unknown)[:5]}")
            missing = known - used
            if missing:
                raise LiserError(f"{source}: fold {f.index} leaves speakers out: {sorted(missing)[:5]}")
