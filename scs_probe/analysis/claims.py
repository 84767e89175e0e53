"""The study's five claims, each a stated hypothesis with a margin (`HYPOTHESES`), tested on a directory of runs:
supported when the whole 95 % interval lies on the claim's side of the margin, contradicted when it lies beyond,
inconclusive otherwise (with what would decide it at 80 % power). Intervals pool per-seed paired estimates over
seeds (`stats.pooling`); one seed cannot separate the architecture from the seed, so one seed never decides a
claim. Nothing in a verdict is written by hand; only finished runs trained with matched settings are compared."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import RecordError
from ..rundir import RunDir
from ..stats import (
    CONTRADICTED,
    INCONCLUSIVE,
    LEVEL,
    NOT_TESTED,
    SUPPORTED,
    Hypothesis,
    Interval,
    Pooled,
    paired_mean,
    pool_paired,
    pool_seeds,
    ratio_difference,
    to_decide,
)
from ..storage import read_csv
from .compare import accuracy_pool, pair_data_difference, study_pairs, variant_axes
from .provenance import near_chance, near_chance_threshold, speed_comparability
from .robustness import load_per_image
from .sources import run_labels

CLAIMS = (
    "SCS is not more accurate than convolution",
    "SCS is slower to train but faster to evaluate",
    "SCS needs no activation function (or normalisation)",
    "SCS saliency maps are more interpretable (sparser)",
    "SCS is more robust to adversarial attacks in some settings",
)
HYPOTHESES = {
    "accuracy": Hypothesis("accuracy SCS - conv", "below", 0.01, "points"),
    "train": Hypothesis("train seconds SCS/conv", "above", math.log(1.05), "log ratio"),
    "eval": Hypothesis("eval seconds SCS/conv", "below", math.log(0.95), "log ratio"),
    "activation": Hypothesis("accuracy gain of a ReLU", "below", 0.01, "points"),
    "sparseness": Hypothesis("Gini sparseness SCS - conv", "above", 0.01),
    "robustness": Hypothesis("robust/clean accuracy SCS - conv at some eps", "above", 0.01, "points"),
}
STATED = (HYPOTHESES["accuracy"].describe(),  # each claim's test, in the order of CLAIMS
          f"{HYPOTHESES['train'].describe()} and {HYPOTHESES['eval'].describe()}",
          HYPOTHESES["activation"].describe(), HYPOTHESES["sparseness"].describe(),
          HYPOTHESES["robustness"].describe())
MATCHED = ("epochs", "max_lr", "batch_size", "n_train", "n_val")  # settings two runs must share to be compared


@dataclass
class Verdict:
    claim: str
    pair: str
    evidence: str
    verdict: str             # supported, contradicted, inconclusive, not tested
    to_decide: str = ""      # what would decide an inconclusive verdict (80 % power)
    hypothesis: str = ""     # the test, with its margin

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _labels(runs: list[RunDir], name: str) -> dict:
    """seed -> the label analyses gave the finished run of variant `name` with that seed."""
    return {r.seed: label for r, label in zip(runs, run_labels(runs))
            if r.name == name and r.read_config().get("status") == "finished"}


def _finished(runs: list[RunDir], name: str) -> list[RunDir]:
    return [r for r in runs if r.name == name and r.read_config().get("status") == "finished"]


def _settings(rows: list[dict]) -> set[tuple]:
    return {tuple(str(r[k]) for k in MATCHED) for r in rows}


def _near_chance_runs(runs: list[RunDir]) -> list[RunDir]:
    """Finished runs that stayed near chance (final test accuracy below 1.5 / classes): they did not train, so
    they are left out of every claim (the report names them); their seeds are compared on the others."""
    return [r for r in runs if r.read_config().get("status") == "finished" and near_chance(r.summary())]


def _problems(runs, a: str, b: str, left_out: list[RunDir] = ()) -> str:
    """Why a and b cannot be compared ('' where they can); `left_out`: the near-chance runs already removed."""
    ra, rb = [r.summary() for r in _finished(runs, a)], [r.summary() for r in _finished(runs, b)]
    if not ra or not rb:
        name = a if not ra else b
        low = [r.summary() for r in left_out if r.name == name]
        if low:
            return (f"every finished run of {name} stayed near chance (test accuracy "
                    f"{max(float(r['test_acc']) for r in low):.3f} at best < "
                    f"{near_chance_threshold(low[0]['num_classes']):.3f}, 1.5 / classes)")
        return f"no finished run of {name}"
    if len(_settings(ra) | _settings(rb)) > 1:
        sa, sb = sorted(_settings(ra))[0], sorted(_settings(rb))[0]
        diff = ", ".join(f"{k} {x} vs {y}" for k, x, y in zip(MATCHED, sa, sb) if x != y) or "seeds differ"
        return f"settings differ ({diff})"
    if not {r["seed"] for r in ra} & {r["seed"] for r in rb}:
        return "no seed has a usable run of both"
    return pair_data_difference(runs, a, b)


def _test_split(runs: list[RunDir], used: int) -> int:
    """Test images the data set holds (as the runs recorded it; else the images used: promise no more)."""
    data = [r.read_config().get("data", {}) for r in runs]
    return max([int(d.get("test_split") or d.get("n_test") or 0) for d in data] + [used])


def _seeds_text(pooled: Pooled, fmt: str = "+.3f") -> str:
    per_seed = ", ".join(f"{e:{fmt}}" for e in pooled.effects)
    spread = "" if pooled.one_seed else f"; spread between seeds tau {math.sqrt(max(pooled.tau2, 0)):.3f}"
    return f"per seed {per_seed}{spread}"


def _decide(claim: str, pair: str, hypothesis: Hypothesis, pooled: Pooled, evidence: str,
            images_available: int | None, level: float = LEVEL, images: str = "test images") -> Verdict:
    """The hypothesis's verdict on a pooled interval; one seed is inconclusive whatever its interval says."""
    verdict = INCONCLUSIVE if pooled.one_seed else hypothesis.verdict(pooled.interval)
    decide = to_decide(pooled, hypothesis, images_available, level, images=images) if verdict == INCONCLUSIVE else ""
    return Verdict(claim, pair, evidence, verdict, decide, hypothesis.describe())


def _accuracy_pool(runs, a: str, b: str) -> tuple[Pooled | None, str]:
    """The pooled accuracy difference b - a, or why there is none: a claim without per-image predictions (lost,
    cut or short files, runs of an older scs-probe) is marked not tested, never computed on what is left."""
    try:
        pooled = accuracy_pool(runs, a, b)
    except RecordError as e:
        return None, f"not compared: {e}"
    return pooled, "" if pooled is not None else "no per-image predictions (runs from an older scs-probe: retrain them)"


def claim_accuracy(runs, conv: str, scs: str) -> Verdict:
    h = HYPOTHESES["accuracy"]
    pooled, why = _accuracy_pool(runs, conv, scs)
    if pooled is None:
        return Verdict(CLAIMS[0], f"{scs} vs {conv}", why, NOT_TESTED, hypothesis=h.describe())
    text = f"accuracy {scs} - {conv}: {pooled.interval.describe()}; {_seeds_text(pooled)}"
    return _decide(CLAIMS[0], f"{scs} vs {conv}", h, pooled, text, _test_split(runs, pooled.n_images))


def _log_seconds(run: RunDir, key: str) -> tuple[float, float]:
    """log of the mean seconds per epoch and its variance from the epochs' spread (0 for one epoch)."""
    seconds = np.array([float(r[key]) for r in run.read("history")])
    mean, var = paired_mean(seconds)
    return math.log(mean), (var / mean ** 2 if math.isfinite(var) else 0.0)


def _speed_pool(runs, conv: str, scs: str, key: str) -> Pooled:
    """log(SCS / conv seconds per epoch), pooled over seeds; within a seed, the epochs' spread (delta method)."""
    ra, rb = {r.seed: r for r in _finished(runs, conv)}, {r.seed: r for r in _finished(runs, scs)}
    effects, variances = [], []
    for s in sorted(set(ra) & set(rb), key=str):
        (la, va), (lb, vb) = _log_seconds(ra[s], key), _log_seconds(rb[s], key)
        effects.append(lb - la)
        variances.append(va + vb)
    return pool_seeds(effects, variances, min((len(r.read("history")) for r in ra.values()), default=0), unit="epochs")


def _ratio(p: Pooled) -> str:
    i = p.interval
    return f"{math.exp(i.estimate):.2f}x [{math.exp(i.lo):.2f}, {math.exp(i.hi):.2f}]" if i.defined else \
        f"{math.exp(i.estimate):.2f}x (no interval)"


def claim_speed(runs, conv: str, scs: str) -> Verdict:
    pair = f"{scs} vs {conv}"
    differ, measures = speed_comparability(runs, conv, scs)
    if differ:
        return Verdict(CLAIMS[1], pair, f"not compared: the runs did not run alike ({differ})", NOT_TESTED,
                       hypothesis=STATED[1])
    parts = {k: _speed_pool(runs, conv, scs, f"{k}_seconds") for k in ("train", "eval")}
    text = (f"SCS/conv seconds per epoch: train {_ratio(parts['train'])}, eval {_ratio(parts['eval'])} "
            f"({parts['train'].interval.method}; {measures})")
    verdicts = {k: _decide(CLAIMS[1], pair, HYPOTHESES[k], p, text, None) for k, p in parts.items()}
    found = [v.verdict for v in verdicts.values()]
    verdict = CONTRADICTED if CONTRADICTED in found else SUPPORTED if set(found) == {SUPPORTED} else INCONCLUSIVE
    decide = next((v.to_decide for v in verdicts.values() if v.verdict == INCONCLUSIVE), "") \
        if verdict == INCONCLUSIVE else ""
    return Verdict(CLAIMS[1], pair, text, verdict, decide, STATED[1])


def claim_no_activation(runs, conv: str, scs: str, left_out: list[RunDir] = ()) -> Verdict:
    h = HYPOTHESES["activation"]
    axes = {r.name: variant_axes(r) for r in [*left_out, *runs]}  # near-chance runs too: _problems names them
    v = axes[scs]
    relu = [n for n, w in axes.items() if w.get("layer") == "scs" and w.get("activation") == "relu"
            and all(w.get(k) == v.get(k) for k in ("arch", "pool", "norm", "image_size", "fixed_p", "dataset"))]
    if not relu:
        return Verdict(CLAIMS[2], scs, f"needs the same variant with a ReLU ({scs.replace('-none', '-relu', 1)})",
                       NOT_TESTED, hypothesis=h.describe())
    pair = f"{relu[0]} vs {scs}"
    problem = _problems(runs, scs, relu[0], left_out)
    pooled, why = (None, problem) if problem else _accuracy_pool(runs, scs, relu[0])
    if pooled is None:
        return Verdict(CLAIMS[2], pair, why, NOT_TESTED, hypothesis=h.describe())
    text = f"accuracy {relu[0]} - {scs}: {pooled.interval.describe()}; {_seeds_text(pooled)}"
    return _decide(CLAIMS[2], pair, h, pooled, text, _test_split(runs, pooled.n_images))


def claim_saliency(runs, conv: str, scs: str, saliency_dir: Path) -> Verdict:
    h = HYPOTHESES["sparseness"]
    path = Path(saliency_dir) / "saliency.csv"
    pair = f"{scs} vs {conv}"
    if not path.is_file():
        return Verdict(CLAIMS[3], pair, "no saliency analysis", NOT_TESTED, hypothesis=h.describe())
    rows = read_csv(path)
    la, lb = _labels(runs, conv), _labels(runs, scs)
    values: dict[str, dict] = {}
    for r in rows:
        values.setdefault(r["model"], {})[r["image_index"]] = float(r["sparseness"])
    diffs = []
    for s in sorted(set(la) & set(lb), key=str):
        a, b = values.get(la[s], {}), values.get(lb[s], {})
        common = sorted(set(a) & set(b))
        if common:
            diffs.append(np.array([b[i] - a[i] for i in common]))
    if not diffs:
        return Verdict(CLAIMS[3], pair, "the saliency analysis does not cover both", NOT_TESTED,
                       hypothesis=h.describe())
    pooled = pool_paired(diffs)
    pooled = replace(pooled, interval=pooled.interval.clipped(-1.0, 1.0))  # Gini indices lie in [0, 1]
    text = f"Gini sparseness {scs} - {conv}: {pooled.interval.describe()}; {_seeds_text(pooled)}"
    verdict = _decide(CLAIMS[3], pair, h, pooled, text, _test_split(runs, pooled.n_images), images="saliency images")
    flags = {r["model"]: r.get("rand_flag", "") for r in read_csv(Path(saliency_dir) / "saliency_summary.csv")}
    failed = [label for label in lb.values() if flags.get(label)]
    if failed:
        verdict.evidence += f"; {failed[0]} fails the randomisation check ({flags[failed[0]]})"
        if verdict.verdict == SUPPORTED:
            verdict.verdict, verdict.to_decide = INCONCLUSIVE, "maps that pass the randomisation check"
    return verdict


def _robust_by_seed(runs, conv, scs, pgd_dir):
    """(eps, attacks, {seed: (conv robust [eps, image], SCS robust [eps, image])}): robust under every attack
    run on both (the strongest evidence there is)."""
    per = load_per_image(pgd_dir)
    la, lb = _labels(runs, conv), _labels(runs, scs)
    seeds = [s for s in sorted(set(la) & set(lb), key=str)
             if any((la[s], a) in per and (lb[s], a) in per for a in ("pgd", "square", "autoattack"))]
    if not seeds:
        return None, [], {}, lb
    attacks = [a for a in ("autoattack", "square", "pgd") if all((la[s], a) in per and (lb[s], a) in per
                                                                 for s in seeds)]
    eps = per[(la[seeds[0]], attacks[0])][0]
    robust = {s: tuple(np.min([per[(label[s], a)][1] for a in attacks], axis=0).astype(float) for label in (la, lb))
              for s in seeds}
    return eps, attacks, robust, {s: lb[s] for s in seeds}


def claim_robustness(runs, conv: str, scs: str, pgd_dir: Path) -> Verdict:
    h = HYPOTHESES["robustness"]
    pair = f"{scs} vs {conv}"
    eps, attacks, robust, scs_labels = _robust_by_seed(runs, conv, scs, pgd_dir)
    if not robust:
        return Verdict(CLAIMS[4], pair, "no robustness analysis of both", NOT_TESTED, hypothesis=h.describe())
    if eps[0] != 0:
        return Verdict(CLAIMS[4], pair, "needs eps 0 (clean accuracy) in the range", NOT_TESTED,
                       hypothesis=h.describe())
    level = 1 - (1 - LEVEL) / max(1, len(eps) - 1)  # Bonferroni: one claim tested at every eps
    results, n_images = [], min(ra.shape[1] for ra, _ in robust.values())
    for k in range(1, len(eps)):
        stats = [ratio_difference(rb[k], rb[0], ra[k], ra[0]) for ra, rb in robust.values()]
        pooled = pool_seeds([m for m, _ in stats], [v for _, v in stats], n_images, level=level)
        # robust/clean accuracies lie in [0, 1], their difference in [-1, 1]: an interval reaching beyond (a few
        # seeds that disagree, t with 1 or 2 df) is cut to it, and says so in its evidence
        pooled = replace(pooled, interval=pooled.interval.clipped(-1.0, 1.0))
        if not any((ra[k] != rb[k]).any() for ra, rb in robust.values()):  # nothing to tell them apart
            pooled = replace(pooled, interval=Interval(pooled.interval.estimate, math.nan, math.nan,
                                                       "identical on every image", pooled.interval.n))
        results.append((eps[k], pooled))
    text = "; ".join(f"eps {e * 255:.3g}/255: {p.interval.describe()}" for e, p in results)
    text = (f"robust/clean accuracy {scs} - {conv} under {'+'.join(attacks)} ({len(robust)} seeds, "
            f"{level:.1%} intervals: Bonferroni over {len(results)} eps): {text}")
    decided = [(e, p, h.verdict(p.interval)) for e, p in results if p.interval.defined]
    one_seed = len(robust) < 2
    masking = {r["model"]: r.get("masking_flags", "") for r in read_csv(Path(pgd_dir) / "pgd_summary.csv")
               if r["attack"] == "pgd"}
    masked = [label for label in scs_labels.values() if masking.get(label)]
    if not one_seed and any(v == SUPPORTED for _, _, v in decided):
        verdict = INCONCLUSIVE if masked else SUPPORTED
    elif not one_seed and decided and all(v == CONTRADICTED for _, _, v in decided):
        verdict = CONTRADICTED  # no eps where SCS gains the margin
    else:
        verdict = INCONCLUSIVE
    if masked and any(v == SUPPORTED for _, _, v in decided):
        text += f"; but {masked[0]} shows gradient masking ({masking[masked[0]]})"
    decide = ""
    if verdict == INCONCLUSIVE and decided:
        _, nearest = max(((e, p) for e, p, _ in decided), key=lambda ep: ep[1].interval.estimate)
        decide = to_decide(nearest, h, _test_split(runs, nearest.n_images), level, images="attacked images")
    return Verdict(CLAIMS[4], pair, text, verdict, decide, h.describe())


def evaluate_claims(runs: list[RunDir], saliency_dir, pgd_dir) -> list[Verdict]:
    """Every claim for every conv/SCS pair at the study's settings found among the runs."""
    out = []
    pairs = study_pairs(runs)
    if not pairs:
        return [Verdict(c, "", "needs a conv (ReLU, max pool) and an SCS (no activation, max-abs pool) variant",
                        NOT_TESTED, hypothesis=h) for c, h in zip(CLAIMS, STATED)]
    left_out = _near_chance_runs(runs)
    runs = [r for r in runs if r not in left_out]
    for conv, scs in pairs:
        problem = _problems(runs, conv, scs, left_out)
        if problem:  # the activation claim compares two SCS variants: conv's problem is not its own
            out += [claim_no_activation(runs, conv, scs, left_out) if i == 2 else
                    Verdict(c, f"{scs} vs {conv}", problem, NOT_TESTED, hypothesis=h)
                    for i, (c, h) in enumerate(zip(CLAIMS, STATED))]
            continue
        out += [claim_accuracy(runs, conv, scs), claim_speed(runs, conv, scs),
                claim_no_activation(runs, conv, scs, left_out), claim_saliency(runs, conv, scs, saliency_dir),
                claim_robustness(runs, conv, scs, pgd_dir)]
    return out
