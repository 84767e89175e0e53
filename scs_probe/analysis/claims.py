"""The study's five claims, each with the evidence of a directory of runs and a verdict computed from it:
supported, contradicted, or inconclusive at this sample size. Nothing in a verdict is written by hand; only
finished runs trained with matched settings are compared."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..rundir import RunDir
from ..stats import Interval, items_to_decide, t_interval, two_level_bootstrap
from ..storage import read_csv
from .compare import compare, study_pairs, variant_axes
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
MATCHED = ("epochs", "max_lr", "batch_size", "n_train")  # settings two runs must share to be compared
EQUIVALENCE_MARGIN = 0.01    # "no activation needed": adding one gains less than this, with 95% confidence


@dataclass
class Verdict:
    claim: str
    pair: str
    evidence: str
    verdict: str             # supported, contradicted, inconclusive, not tested
    to_decide: str = ""      # the sample size that would decide an inconclusive verdict, where simple

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _labels(runs: list[RunDir], name: str) -> dict:
    """seed -> the label analyses gave the finished run of variant `name` with that seed."""
    return {r.seed: label for r, label in zip(runs, run_labels(runs))
            if r.name == name and r.read_config().get("status") == "finished"}


def _finished(runs: list[RunDir], name: str) -> list[dict]:
    return [r.summary() for r in runs if r.name == name and r.read_config().get("status") == "finished"]


def _settings(rows: list[dict]) -> set[tuple]:
    return {tuple(str(r[k]) for k in MATCHED) for r in rows}


def _problems(runs, a: str, b: str) -> str:
    """Why a and b cannot be compared ('' where they can)."""
    ra, rb = _finished(runs, a), _finished(runs, b)
    if not ra or not rb:
        return f"no finished run of {a if not ra else b}"
    if len(_settings(ra) | _settings(rb)) > 1:
        sa, sb = sorted(_settings(ra))[0], sorted(_settings(rb))[0]
        diff = ", ".join(f"{k} {x} vs {y}" for k, x, y in zip(MATCHED, sa, sb) if x != y) or "seeds differ"
        return f"settings differ ({diff})"
    low = [r for r in ra + rb if near_chance(r)]  # below 1.5 / classes
    if low:
        return (f"{low[0]['variant']} stayed near chance (test accuracy {float(low[0]['test_acc']):.3f} < "
                f"{near_chance_threshold(low[0]['num_classes']):.3f}, 1.5 / classes)")
    return ""


def _sign_verdict(ci: Interval, positive: str, negative: str, unit: str = "test images") -> tuple[str, str]:
    """`positive` when the interval lies above 0, `negative` when below, else inconclusive with about how many
    `unit` would decide it."""
    if not ci.defined:
        return "inconclusive", "needs at least 2 seeds or images for an interval"
    if ci.lo > 0:
        return positive, ""
    if ci.hi < 0:
        return negative, ""
    n = items_to_decide(ci)
    return "inconclusive", f"about {n:,} {unit} would decide it" if n else ""


def _accuracy_interval(runs, a: str, b: str) -> tuple[Interval | None, str]:
    """b - a on the same test images: over seeds and images where several seeds exist, else the one seed's
    paired bootstrap; None where the runs recorded no per-image predictions."""
    rows = compare(runs, a, b)
    if not rows:
        return None, "no per-image predictions (runs from an older scs-probe: retrain them)"
    row = rows[-1]  # 'all' over seeds where there are several, else the one seed
    ci = Interval(row["diff"], row["lo"], row["hi"], row["interval"], row["n"])
    seeds = [str(r["seed"]) for r in rows if r["seed"] != "all"]
    text = f"accuracy {b} - {a}: {ci.describe()}, seeds {' '.join(seeds)}"
    if row["seed"] != "all":
        text += f"; exact McNemar p = {row['mcnemar_p']:.3g}"
        if row["mcnemar_p"] >= 0.05 and not ci.covers(0):
            # the percentile bootstrap can be narrower than the exact test on few images: trust neither alone
            ci = Interval(ci.estimate, min(ci.lo, 0.0), max(ci.hi, 0.0), ci.method, ci.n)
            text += " (not significant: verdict held back)"
    return ci, text


def claim_accuracy(runs, conv: str, scs: str) -> Verdict:
    ci, text = _accuracy_interval(runs, conv, scs)
    if ci is None:
        return Verdict(CLAIMS[0], f"{scs} vs {conv}", text, "not tested")
    unit = "seeds" if "seeds" in ci.method else "test images"  # what the interval's n counts
    verdict, decide = _sign_verdict(ci, "contradicted", "supported", unit)
    return Verdict(CLAIMS[0], f"{scs} vs {conv}", text, verdict, decide)


def claim_speed(runs, conv: str, scs: str) -> Verdict:
    ra, rb = {r["seed"]: r for r in _finished(runs, conv)}, {r["seed"]: r for r in _finished(runs, scs)}
    seeds = sorted(set(ra) & set(rb), key=str)
    differ, measures = speed_comparability(runs, conv, scs)
    if differ:
        return Verdict(CLAIMS[1], f"{scs} vs {conv}", f"not compared: the runs did not run alike ({differ})",
                       "not tested")

    def ratio(key) -> Interval:  # t interval of the log ratio, back-transformed: ratios stay positive
        t = t_interval([np.log(float(rb[s][key]) / float(ra[s][key])) for s in seeds])
        return Interval(float(np.exp(t.estimate)), float(np.exp(t.lo)), float(np.exp(t.hi)), "t on log ratio", t.n)
    ratios = {k: ratio(k) for k in ("train_seconds_mean", "eval_seconds_mean")}
    train, ev = ratios["train_seconds_mean"], ratios["eval_seconds_mean"]
    text = f"SCS/conv seconds per epoch: train {train.describe('.2f')}, eval {ev.describe('.2f')}"
    if not train.defined or not ev.defined:
        return Verdict(CLAIMS[1], f"{scs} vs {conv}", text, "inconclusive", "needs at least 2 seeds")
    if train.lo > 1 and ev.hi < 1:
        verdict = "supported"
    elif train.hi < 1 or ev.lo > 1:
        verdict = "contradicted"
    else:
        verdict = "inconclusive"
    return Verdict(CLAIMS[1], f"{scs} vs {conv}", f"{text} ({measures})", verdict)


def claim_no_activation(runs, conv: str, scs: str) -> Verdict:
    axes = {r.name: variant_axes(r) for r in runs}
    v = axes[scs]
    relu = [n for n, w in axes.items() if w.get("layer") == "scs" and w.get("activation") == "relu"
            and all(w.get(k) == v.get(k) for k in ("arch", "pool", "norm", "image_size", "fixed_p"))]
    if not relu:
        return Verdict(CLAIMS[2], scs, f"needs the same variant with a ReLU ({scs.replace('-none', '-relu', 1)})",
                       "not tested")
    problem = _problems(runs, scs, relu[0])
    if problem:
        return Verdict(CLAIMS[2], f"{relu[0]} vs {scs}", problem, "not tested")
    ci, text = _accuracy_interval(runs, scs, relu[0])
    if ci is None:
        return Verdict(CLAIMS[2], f"{relu[0]} vs {scs}", text, "not tested")
    if not ci.defined:
        return Verdict(CLAIMS[2], f"{relu[0]} vs {scs}", text, "inconclusive", "needs an interval")
    if ci.lo > 0:
        verdict, decide = "contradicted", ""
    elif ci.hi < EQUIVALENCE_MARGIN:
        verdict, decide = "supported", ""
    else:
        verdict, decide = "inconclusive", ""
    return Verdict(CLAIMS[2], f"{relu[0]} vs {scs}",
                   f"{text} (supported when a ReLU gains less than {EQUIVALENCE_MARGIN:.0%})", verdict, decide)


def claim_saliency(runs, conv: str, scs: str, saliency_dir: Path) -> Verdict:
    path = Path(saliency_dir) / "saliency.csv"
    if not path.is_file():
        return Verdict(CLAIMS[3], f"{scs} vs {conv}", "no saliency analysis", "not tested")
    rows = read_csv(path)
    la, lb = _labels(runs, conv), _labels(runs, scs)
    values = {}
    for label in (*la.values(), *lb.values()):
        values[label] = {r["image_index"]: float(r["sparseness"]) for r in rows if r["model"] == label}
    seeds = sorted(set(la) & set(lb), key=str)
    common = sorted(set.intersection(*(set(values[la[s]]) & set(values[lb[s]]) for s in seeds))) if seeds else []
    if not common:
        return Verdict(CLAIMS[3], f"{scs} vs {conv}", "the saliency analysis does not cover both", "not tested")
    a = np.array([[values[la[s]][i] for i in common] for s in seeds])  # [seed, image]: the same images
    b = np.array([[values[lb[s]][i] for i in common] for s in seeds])
    ci = two_level_bootstrap(lambda x, y: (y - x).mean(), a, b)
    text = (f"Gini sparseness {scs} - {conv}: {ci.describe()} ({len(seeds)} seeds x {len(common)} images, "
            f"resampled together)")
    verdict, decide = _sign_verdict(ci, "supported", "contradicted", "images")
    flags = {r["model"]: r.get("rand_flag", "") for r in read_csv(Path(saliency_dir) / "saliency_summary.csv")}
    failed = [label for label in lb.values() if flags.get(label)]
    if failed:
        text += f"; {failed[0]} fails the randomisation check ({flags[failed[0]]})"
        verdict = "inconclusive" if verdict == "supported" else verdict
    return Verdict(CLAIMS[3], f"{scs} vs {conv}", text, verdict, decide)


def _relative_gain(clean_a, robust_a, clean_b, robust_b) -> float:
    return robust_b.mean() / max(clean_b.mean(), 1e-9) - robust_a.mean() / max(clean_a.mean(), 1e-9)


def claim_robustness(runs, conv: str, scs: str, pgd_dir: Path) -> Verdict:
    per = load_per_image(pgd_dir)
    la, lb = _labels(runs, conv), _labels(runs, scs)
    seeds = [s for s in sorted(set(la) & set(lb), key=str)
             if any((la[s], a) in per and (lb[s], a) in per for a in ("pgd", "square", "autoattack"))]
    if not seeds:
        return Verdict(CLAIMS[4], f"{scs} vs {conv}", "no robustness analysis of both", "not tested")
    attacks = [a for a in ("autoattack", "square", "pgd") if all((la[s], a) in per and (lb[s], a) in per
                                                                 for s in seeds)]
    eps = per[(la[seeds[0]], attacks[0])][0]
    # robust under every attack run on both (the strongest evidence there is): [seed, eps, image]
    ra = np.stack([np.min([per[(la[s], a)][1] for a in attacks], axis=0) for s in seeds]).astype(float)
    rb = np.stack([np.min([per[(lb[s], a)][1] for a in attacks], axis=0) for s in seeds]).astype(float)
    if eps[0] != 0:
        return Verdict(CLAIMS[4], f"{scs} vs {conv}", "needs eps 0 (clean accuracy) in the range", "not tested")
    results = []
    level = 1 - (1 - 0.95) / max(1, len(eps) - 1)  # Bonferroni: one claim tested at every eps
    for k in range(1, len(eps)):
        ci = two_level_bootstrap(_relative_gain, ra[:, 0], ra[:, k], rb[:, 0], rb[:, k], level=level)
        if not (ra[:, k] != rb[:, k]).any():
            ci = Interval(ci.estimate, float("nan"), float("nan"), "identical on every image", ci.n)
        results.append((eps[k], ci))
    text = "; ".join(f"eps {e * 255:.3g}/255: {ci.describe()}" for e, ci in results)
    text = (f"robust/clean accuracy {scs} - {conv} under {'+'.join(attacks)} ({len(seeds)} seeds, "
            f"{level:.1%} intervals: Bonferroni over {len(results)} eps): {text}")
    masking = {r["model"]: r.get("masking_flags", "") for r in read_csv(Path(pgd_dir) / "pgd_summary.csv")
               if r["attack"] == "pgd"}
    masked = [lb[s] for s in seeds if masking.get(lb[s])]
    if any(ci.defined and ci.lo > 0 for _, ci in results):
        verdict = "inconclusive" if masked else "supported"
        if masked:
            text += f"; but {masked[0]} shows gradient masking ({masking[masked[0]]})"
    elif any(ci.defined for _, ci in results) and all(ci.hi < 0 for _, ci in results if ci.defined):
        verdict = "contradicted"  # less robust wherever the two differ at all
    else:
        verdict = "inconclusive"
    n = min((items_to_decide(ci) for _, ci in results if items_to_decide(ci)), default=0)  # the nearest eps
    return Verdict(CLAIMS[4], f"{scs} vs {conv}", text, verdict,
                   f"about {n:,} images would decide it" if verdict == "inconclusive" and n else "")


def evaluate_claims(runs: list[RunDir], saliency_dir, pgd_dir) -> list[Verdict]:
    """Every claim for every conv/SCS pair at the study's settings found among the runs."""
    out = []
    pairs = study_pairs(runs)
    if not pairs:
        return [Verdict(c, "", "needs a conv (ReLU, max pool) and an SCS (no activation, max-abs pool) variant",
                        "not tested") for c in CLAIMS]
    for conv, scs in pairs:
        problem = _problems(runs, conv, scs)
        if problem:
            out += [Verdict(c, f"{scs} vs {conv}", problem, "not tested") for c in CLAIMS]
            continue
        out += [claim_accuracy(runs, conv, scs), claim_speed(runs, conv, scs), claim_no_activation(runs, conv, scs),
                claim_saliency(runs, conv, scs, saliency_dir), claim_robustness(runs, conv, scs, pgd_dir)]
    return out

