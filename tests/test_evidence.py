"""Evidence: paired comparisons, claims and their verdicts, gradient-masking checks, the saliency
randomisation check, and agreement with Quantus, each against a case whose answer is known."""

import numpy as np
import pytest
import torch

from scs_probe.analysis.claims import evaluate_claims
from scs_probe.analysis.compare import compare, study_pairs
from scs_probe.analysis.metrics import entropy, gini
from scs_probe.analysis.robustness import RobustnessConfig, attack_models, masking_checks
from scs_probe.analysis.saliency import _similarity, randomisation_check
from scs_probe.analysis.sources import LoadedModel
from scs_probe.rundir import RECORDS, RunDir
from scs_probe.zoo import Variant

CONV = Variant("rohrer100k", "conv", "relu", "max")
SCS = Variant("rohrer100k", "scs", "none", "maxabs")
SCS_RELU = Variant("rohrer100k", "scs", "relu", "maxabs")


def fake_run(root, variant, seed, correct, train_s=10.0, eval_s=2.0, max_lr=0.01, status="finished"):
    """A run directory as training leaves it, without training: config, history, predictions."""
    run = RunDir(root / f"{variant.name}-seed{seed}")
    run.path.mkdir(parents=True)
    run.checkpoint_path.write_bytes(b"not loaded by these analyses")
    run.write_config({"variant": variant.to_dict(), "variant_name": variant.name, "status": status,
                      "options": {"seed": seed, "max_lr": max_lr, "batch_size": 64, "epochs": 3},
                      "data": {"n_train": 1000, "n_test": len(correct), "test_split": 10000}, "epochs_done": 3})
    run.start_records()
    acc = float(np.mean(correct))
    run.append("history", [dict.fromkeys(RECORDS["history"], 1.0) | {
        "epoch": 3, "test_acc": acc, "train_seconds": train_s, "eval_seconds": eval_s}])
    labels = np.arange(len(correct)) % 10
    preds = np.where(correct, labels, (labels + 1) % 10)
    run.write_predictions(3, torch.tensor(labels), torch.tensor(preds))
    return run


def test_paired_comparison_by_hand(tmp_path):
    a = np.array([1, 1, 0, 0, 1, 0, 0, 0, 1, 1] * 20, dtype=bool)
    b = a.copy()
    b[[2, 3, 5, 12, 13, 15, 22]] = True   # b gets 7 images right that a got wrong
    b[[0]] = False                         # and one wrong that a got right
    runs = [fake_run(tmp_path, CONV, 0, a), fake_run(tmp_path, SCS, 0, b)]
    assert study_pairs(runs) == [(CONV.name, SCS.name)]
    (row,) = compare(runs, CONV.name, SCS.name, n_boot=500)
    assert row["diff"] == pytest.approx((b.sum() - a.sum()) / 200) and row["n"] == 200
    assert (row["only_a"], row["only_b"]) == (1, 7)
    assert row["mcnemar_p"] == pytest.approx(2 * (1 + 8) / 2**8)  # exact: 2 P(X <= 1), X ~ Bin(8, 1/2)
    assert row["lo"] < row["diff"] < row["hi"]


def test_between_seed_interval_and_claims(tmp_path):
    rng = np.random.default_rng(0)
    runs = []
    for seed in (0, 1, 2):
        base = rng.random(400) < 0.5
        better = base | (rng.random(400) < 0.3)     # SCS right wherever conv is, and on ~30% more
        runs += [fake_run(tmp_path, CONV, seed, base, train_s=10 + seed * 0.1, eval_s=2.0),
                 fake_run(tmp_path, SCS, seed, better, train_s=20 + seed * 0.1, eval_s=1.0),
                 fake_run(tmp_path, SCS_RELU, seed, better, train_s=20.0, eval_s=1.0)]
    rows = compare(runs, CONV.name, SCS.name, n_boot=300)
    assert [r["seed"] for r in rows] == [0, 1, 2, "all"]
    assert rows[-1]["interval"].startswith("95% random effects over 3 seeds") and rows[-1]["lo"] > 0.05
    verdicts = {v.claim[:20]: v for v in evaluate_claims(runs, tmp_path / "none", tmp_path / "none")}
    assert verdicts["SCS is not more accu"].verdict == "contradicted"   # SCS is clearly more accurate here
    assert verdicts["SCS is slower to tra"].verdict == "supported"      # 2x train seconds, 0.5x eval
    assert verdicts["SCS needs no activat"].verdict == "supported"      # identical predictions with a ReLU
    assert all(v.hypothesis for v in verdicts.values())                  # every claim states its test
    assert verdicts["SCS saliency maps ar"].verdict == "not tested"     # no saliency analysis here
    assert verdicts["SCS is more robust t"].verdict == "not tested"


def test_claims_compare_only_matched_and_trained_runs(tmp_path):
    ok = np.ones(100, dtype=bool)
    runs = [fake_run(tmp_path / "a", CONV, 0, ok, max_lr=0.05), fake_run(tmp_path / "a", SCS, 0, ok, max_lr=0.01)]
    verdicts = evaluate_claims(runs, tmp_path, tmp_path)
    assert {v.verdict for v in verdicts} == {"not tested"} and all(v.hypothesis for v in verdicts)
    assert "settings differ (max_lr 0.05 vs 0.01)" in verdicts[0].evidence
    chance = np.arange(100) % 10 == 0
    runs = [fake_run(tmp_path / "b", CONV, 0, chance), fake_run(tmp_path / "b", SCS, 0, ok)]
    assert "every finished run of rohrer100k-conv-relu-max stayed near chance" in \
        evaluate_claims(runs, tmp_path, tmp_path)[0].evidence
    # one seed near chance: left out, the other seeds compared (not the whole pair cancelled)
    rng = np.random.default_rng(0)
    runs = [fake_run(tmp_path / "d", CONV, 0, chance)] + [
        fake_run(tmp_path / "d", v, s, rng.random(2000) < 0.6) for s in (1, 2) for v in (CONV, SCS)] + [
        fake_run(tmp_path / "d", SCS, 0, ok)]
    accuracy = evaluate_claims(runs, tmp_path, tmp_path)[0]
    assert accuracy.verdict != "not tested" and "per seed" in accuracy.evidence
    assert len(accuracy.evidence.split("per seed ")[1].split(";")[0].split(", ")) == 2  # seeds 1 and 2
    one = [fake_run(tmp_path / "c", CONV, 0, ok), fake_run(tmp_path / "c", SCS, 0, ok)]
    speed = evaluate_claims(one, tmp_path, tmp_path)[1]
    assert speed.verdict == "inconclusive" and speed.to_decide.startswith("1 seed cannot separate")


def _set_fingerprint(run, fingerprint):
    config = run.read_config()
    run.write_config(config | {"data": config["data"] | {"fingerprint": fingerprint}})


def test_runs_on_different_copies_of_the_data_are_not_compared(tmp_path):
    """Same labels, other images (another copy of CIFAR-10, say): the label check cannot see it, the recorded data
    fingerprints do. The paired comparison refuses, and every claim of the pair is not tested; one copy (or runs
    from before fingerprints) compares as before."""
    from scs_probe.errors import RecordError
    rng = np.random.default_rng(0)
    runs = [fake_run(tmp_path, v, s, rng.random(300) < 0.6) for s in (0, 1) for v in (CONV, SCS, SCS_RELU)]
    for run in runs:
        _set_fingerprint(run, "sha256:" + "a" * 64)
    assert len(compare(runs, CONV.name, SCS.name, n_boot=100)) == 3
    assert {v.verdict for v in evaluate_claims(runs, tmp_path, tmp_path)[:3]} != {"not tested"}
    _set_fingerprint(runs[3], "sha256:" + "b" * 64)  # seed 1's conv run: another copy
    with pytest.raises(RecordError, match="different copies of the data.*not evaluated on the same test set"):
        compare(runs, CONV.name, SCS.name, n_boot=100)
    verdicts = evaluate_claims(runs, tmp_path, tmp_path)
    for v in verdicts[:2]:
        assert v.verdict == "not tested" and "different copies of the data" in v.evidence, v
        assert "aaaaaaaaaaaa" in v.evidence and "bbbbbbbbbbbb" in v.evidence
    assert verdicts[2].verdict != "not tested"  # the activation claim compares the two SCS variants: one copy
    _set_fingerprint(runs[5], "sha256:" + "b" * 64)  # seed 1's SCS with a ReLU: SCS's seeds span two copies
    assert "different copies" in evaluate_claims(runs, tmp_path, tmp_path)[2].evidence


def test_seeds_on_different_copies_of_the_data_are_not_pooled(tmp_path):
    """Each seed's pair on one copy, the seeds on two: every seed's paired difference stands, but a difference
    pooled over the seeds would mix test sets. The claims say not tested; the comparison's pooled row is refused,
    never a number beside them."""
    from scs_probe.errors import RecordError
    rng = np.random.default_rng(0)
    runs = [fake_run(tmp_path, v, s, rng.random(300) < 0.6) for s in (0, 1) for v in (CONV, SCS)]
    for run, copy in zip(runs, "aabb"):
        _set_fingerprint(run, "sha256:" + copy * 64)
    assert evaluate_claims(runs, tmp_path, tmp_path)[0].verdict == "not tested"
    with pytest.raises(RecordError, match="different copies of the data"):
        compare(runs, CONV.name, SCS.name, n_boot=100)
    assert len(compare(runs[:2], CONV.name, SCS.name, n_boot=100)) == 1  # one seed, one copy: compared


def test_a_study_pair_on_two_copies_of_the_data_is_left_out_of_the_comparisons(tmp_path, capsys):
    """The report's comparison (the study's pairs) leaves the pair out with a warning instead of failing the whole
    report (its claims say why); a pair asked for is refused; `compare` says why its table is empty."""
    from scs_probe.analysis import ComparisonAnalysis, Context
    from scs_probe.analysis.compare import COLUMNS
    from scs_probe.cli import main
    from scs_probe.errors import RecordError
    from scs_probe.rundir import RunsDir
    from tests.test_untrusted_records import one_line_error
    rng = np.random.default_rng(0)
    runs = [fake_run(tmp_path / "runs", v, s, rng.random(200) < 0.6) for s in (0, 1) for v in (CONV, SCS)]
    for run in runs:
        _set_fingerprint(run, "sha256:" + "a" * 64)
    logged = []
    rows = ComparisonAnalysis(n_boot=100).run(runs, tmp_path / "one", Context(log=logged.append)).summary
    assert rows and all(list(r) == COLUMNS for r in rows)  # the header an empty table is written with
    _set_fingerprint(runs[2], "sha256:" + "b" * 64)  # seed 1's conv run: another copy
    result = ComparisonAnalysis(n_boot=100).run(runs, tmp_path / "two", Context(log=logged.append))
    assert result.summary == [] and len(logged) == 1, logged
    assert ComparisonAnalysis.staleness(tmp_path / "two", runs, {}) == ""  # an empty table is stored as current
    assert f"{SCS.name} vs {CONV.name} not compared: trained on different copies of the data" in logged[0]
    assert "aaaaaaaaaaaa" in logged[0] and "bbbbbbbbbbbb" in logged[0]
    asked = ComparisonAnalysis(n_boot=100, pairs=((CONV.name, SCS.name),))
    with pytest.raises(RecordError, match="different copies of the data.*compare runs trained on one copy"):
        asked.run(runs, tmp_path / "asked", Context(log=logged.append))
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "runs"), "--n-boot", "100"]) == 1
    err = one_line_error(capsys)
    assert "nothing to compare" in err and "different copies of the data" in err, err
    assert RunsDir(tmp_path / "runs").analysis_dir("compare").is_dir()


def test_claims_when_the_scs_run_stayed_near_chance(tmp_path):
    """Every SCS run near chance (left out of the claims): the activation claim says so, no KeyError."""
    ok, chance = np.ones(100, dtype=bool), np.arange(100) % 10 == 0
    runs = [fake_run(tmp_path, CONV, 0, ok), fake_run(tmp_path, SCS, 0, chance)]
    verdicts = evaluate_claims(runs, tmp_path, tmp_path)
    assert {v.verdict for v in verdicts} == {"not tested"}
    assert "needs the same variant with a ReLU" in verdicts[2].evidence
    runs.append(fake_run(tmp_path, SCS_RELU, 0, ok))
    activation = evaluate_claims(runs, tmp_path, tmp_path)[2]
    assert activation.verdict == "not tested" and \
        f"every finished run of {SCS.name} stayed near chance" in activation.evidence


@pytest.mark.parametrize("content", [b"not a zip", "keys"])
def test_a_damaged_per_image_robustness_file_is_a_record_error(tmp_path, content):
    """pgd_per_image.npz, cut or written by another hand: a RecordError naming it (the report's one line), not
    a KeyError or BadZipFile traceback from the robustness claim."""
    from scs_probe.errors import RecordError
    ok = np.ones(100, dtype=bool)
    runs = [fake_run(tmp_path / "runs", CONV, 0, ok), fake_run(tmp_path / "runs", SCS, 0, ok)]
    pgd = tmp_path / "pgd"
    pgd.mkdir()
    if content == "keys":
        np.savez(pgd / "pgd_per_image.npz", x=np.zeros(1))
    else:
        (pgd / "pgd_per_image.npz").write_bytes(content)
    with pytest.raises(RecordError, match="pgd_per_image.npz"):
        evaluate_claims(runs, tmp_path, pgd)


class Quantized(torch.nn.Module):
    """Gradients masked on purpose: the input is rounded to 4 levels, so d logits / d x = 0 everywhere while
    the prediction still moves when a pixel crosses a level."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 8 * 8, 10)

    def forward(self, x):
        return self.fc((torch.round(x * 3) / 3).flatten(1) - 0.5)


class Smooth(Quantized):
    def forward(self, x):
        return self.fc(x.flatten(1) - 0.5)


def _loaded(name, model, layer="conv"):
    return LoadedModel(name, model.eval(), None, {"arch": "toy", "layer": layer, "norm": "none", "image_size": 8})


def test_masked_gradients_are_flagged():
    torch.manual_seed(0)
    images = torch.rand(48, 3, 8, 8)
    masked, smooth = Quantized(), Smooth()
    smooth.fc.load_state_dict(masked.fc.state_dict())
    for p in [*masked.parameters(), *smooth.parameters()]:
        p.requires_grad_(False)
    labels = masked(images).argmax(1)  # every image right at first
    models = [_loaded("smooth", smooth), _loaded("masked", masked, layer="scs")]
    config = RobustnessConfig(eps=(0, 16 / 255, 32 / 255), steps=10, n_queries=300, batch_size=48)
    rows, masks = attack_models(models, images, labels, config, progress=False)
    checks = {c["model"]: c for c in masking_checks(models, images, labels, rows, config)}
    flags = checks["masked"]["flags"]
    assert "square beats pgd" in flags and "transfer from conv twin beats pgd" in flags, checks["masked"]
    assert checks["masked"]["transfer_from"] == "smooth"
    assert "square beats pgd" not in checks["smooth"]["flags"], checks["smooth"]
    assert masks[("masked", "pgd")].shape == (3, 48)


class WeightFree(torch.nn.Module):
    """Logits that depend on the input but not on the (unused) weights: its maps cannot change when the weights
    are re-drawn."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x):
        energy = (x ** 2).flatten(1).sum(1, keepdim=True)
        return energy * torch.arange(1, 11, dtype=x.dtype) + 0 * self.fc.weight.sum()


def test_randomisation_check_flags_maps_that_ignore_the_weights():
    torch.manual_seed(0)
    images, labels = torch.rand(6, 3, 8, 8), torch.zeros(6, dtype=torch.long)
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 32), torch.nn.ReLU(),
                                 torch.nn.Linear(32, 10))
    rows, cascades = randomisation_check([_loaded("weight-free", WeightFree()), _loaded("linear", linear)],
                                         images, labels)
    final = {r["model"]: r for r in rows if r["stage"] == "all"}
    assert final["weight-free"]["spearman"] == pytest.approx(1.0) and final["weight-free"]["flag"]
    assert final["linear"]["spearman"] < 0.5 and not final["linear"]["flag"]
    assert [s for s, _ in cascades["linear"]] == ["trained", "top 1: 3", "top 2: 1", "all"]


def test_metrics_agree_with_quantus():
    quantus = pytest.importorskip("quantus")
    rng = np.random.default_rng(1)
    a = rng.random((5, 1, 8, 8)).astype(np.float32)
    a[:, :, 0, 0] = 0.0
    x, y = rng.random((5, 3, 8, 8)).astype(np.float32), np.zeros(5, dtype=int)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 10))
    kw = dict(model=model, x_batch=x, y_batch=y, a_batch=a, device="cpu")
    q_sparse = quantus.Sparseness(disable_warnings=True, normalise=False, abs=True)(**kw)
    q_complex = quantus.Complexity(disable_warnings=True, normalise=False, abs=True)(**kw)
    maps = torch.from_numpy(a[:, 0])
    np.testing.assert_allclose(gini(maps).numpy(), q_sparse, atol=1e-5)
    np.testing.assert_allclose(entropy(maps).numpy(), q_complex, atol=1e-5)
    b = torch.from_numpy(rng.random((5, 8, 8)).astype(np.float32))
    b[:, 0, 0] = 0.0
    a1, b1 = maps / maps.amax((1, 2), keepdim=True), b / b.amax((1, 2), keepdim=True)
    rho, ssim = _similarity(a1, b1)
    q_rho = np.mean([quantus.similarity_func.correlation_spearman(u.ravel(), v.ravel())
                     for u, v in zip(a1.numpy(), b1.numpy())])
    q_ssim = np.mean([quantus.similarity_func.ssim(u.astype(np.float64), v.astype(np.float64), win_size=7)
                      for u, v in zip(a1.numpy(), b1.numpy())])
    assert rho == pytest.approx(q_rho, abs=1e-6) and ssim == pytest.approx(q_ssim, abs=1e-6)


def test_compare_command(tmp_path, capsys):
    from scs_probe.cli import main
    from scs_probe.storage import read_csv
    a = np.arange(300) % 3 == 0
    fake_run(tmp_path, CONV, 0, a)
    fake_run(tmp_path, SCS, 0, a | (np.arange(300) % 3 == 1))
    assert main(["compare", str(tmp_path), "--n-boot", "200"]) == 0
    (row,) = read_csv(tmp_path / "analysis" / "compare" / "comparisons.csv")
    assert (row["a"], row["b"]) == (CONV.name, SCS.name) and float(row["diff"]) == pytest.approx(1 / 3, abs=0.01)
    assert row["within_noise"] == "False" and (tmp_path / "analysis" / "compare" / "comparisons.png").is_file()
    capsys.readouterr()
    assert main(["compare", str(tmp_path), "--pair", "only-one"]) == 2
    assert "--pair takes two variant names" in capsys.readouterr().err


def test_transfer_comes_from_the_conv_twin_of_the_same_seed():
    from scs_probe.analysis.robustness import conv_twin
    v = {"arch": "rohrer100k", "norm": "none", "image_size": 32}
    conv0, conv1 = (LoadedModel(f"conv-seed{s}", None, None, v | {"layer": "conv"}, s) for s in (0, 1))
    scs1 = LoadedModel("scs-seed1", None, None, v | {"layer": "scs"}, 1)
    other = LoadedModel("scs-resnet", None, None, v | {"layer": "scs", "arch": "resnet20"}, 1)
    assert conv_twin(scs1, [conv0, conv1, scs1]) is conv1
    assert conv_twin(scs1, [conv0, scs1]) is conv0 and conv_twin(conv0, [conv0, scs1]) is None
    assert conv_twin(other, [conv0, conv1]) is None


def test_over_seeds_interval_keeps_the_image_noise(tmp_path):
    """Two seeds that agree with each other but each differ from conv by a non-significant amount on the same
    few images: the interval over seeds must stay as wide as the images make it (it used to be a t interval
    over 2 nearly equal differences, falsely narrow)."""
    rng = np.random.default_rng(3)
    runs = []
    for seed in (0, 1):
        a = rng.random(120) < 0.5
        b = a.copy()
        b[np.flatnonzero(a)[:5]] = False   # b loses 5 images and gains 3 in each seed: the same difference
        b[np.flatnonzero(~a)[:3]] = True   # in both seeds, which a t interval over seeds calls certain
        runs += [fake_run(tmp_path, CONV, seed, a), fake_run(tmp_path, SCS, seed, b)]
    rows = compare(runs, CONV.name, SCS.name, n_boot=500)
    assert all(r["within_noise"] and r["diff"] == pytest.approx(-2 / 120) for r in rows[:2])  # per seed ...
    assert rows[-1]["within_noise"] and rows[-1]["lo"] < 0 < rows[-1]["hi"]  # ... nor over both


def test_masking_flags_count_whatever_attacks_ran(tmp_path):
    from scs_probe.analysis.claims import claim_robustness
    from scs_probe.analysis.sources import run_labels
    from scs_probe.storage import atomic_write, write_csv
    ok = np.ones(50, dtype=bool)
    runs = [fake_run(tmp_path, v, s, ok) for s in (0, 1) for v in (CONV, SCS)]
    conv_labels, scs_labels = run_labels(runs)[0::2], run_labels(runs)[1::2]
    pgd = tmp_path / "pgd"
    robust_conv = np.stack([ok, np.zeros(50, bool)])
    robust_scs = np.stack([ok, ok])           # SCS survives everything: a masking suspect
    keys = [(m, a) for m in conv_labels + scs_labels for a in ("pgd", "square")]
    atomic_write(pgd / "pgd_per_image.npz", lambda f: np.savez(
        f, models=np.array([k[0] for k in keys]), attacks=np.array([k[1] for k in keys]), eps=np.array([0, 0.03]),
        robust=np.stack([robust_scs if k[0] in scs_labels else robust_conv for k in keys])))
    write_csv(pgd / "pgd_summary.csv", [{"model": m, "attack": a, "masking_flags": "large-eps accuracy not ~0"
                                         if a == "pgd" and m == scs_labels[1] else ""} for m, a in keys])
    v = claim_robustness(runs, CONV.name, SCS.name, pgd)
    assert v.verdict == "inconclusive" and "gradient masking" in v.evidence, v
    write_csv(pgd / "pgd_summary.csv", [{"model": m, "attack": a, "masking_flags": ""} for m, a in keys])
    assert claim_robustness(runs, CONV.name, SCS.name, pgd).verdict == "supported"  # the flag alone held it back


# ---------------------------------------------------------------------------------------------- verdict paths

def shifted(rng, base, diff, discordant=0.1):
    """Correctness of a model that differs from `base` on about `discordant` of the images and is right on
    exactly diff * n more of them: paired, as two networks sharing their test images are."""
    n = len(base)
    lose = int(discordant * n / 2)
    gain = lose + round(diff * n)
    out = base.copy()
    out[rng.choice(np.flatnonzero(base), lose, replace=False)] = False
    out[rng.choice(np.flatnonzero(~base), gain, replace=False)] = True
    return out


def sweep(root, diffs, n=2000, relu_gains=None, train=None, evals=None, seed=0):
    """conv and SCS runs (and SCS+ReLU where relu_gains is given), one per entry of `diffs` (SCS - conv
    accuracy of that seed); train/eval: per-seed SCS/conv seconds ratios (conv: 10 s and 2 s)."""
    rng = np.random.default_rng(seed)
    runs = []
    for s, d in enumerate(diffs):
        conv = rng.random(n) < 0.6
        scs = shifted(rng, conv, d)
        t = train[s] if train else 2.0
        e = evals[s] if evals else 0.5
        runs += [fake_run(root, CONV, s, conv), fake_run(root, SCS, s, scs, train_s=10 * t, eval_s=2 * e)]
        if relu_gains is not None:
            runs.append(fake_run(root, SCS_RELU, s, shifted(rng, scs, relu_gains[s])))
    return runs


def claim(runs, index, saliency=None, pgd=None):
    from scs_probe.analysis.claims import CLAIMS
    root = runs[0].path.parent
    v = [v for v in evaluate_claims(runs, saliency or root / "none", pgd or root / "none") if v.claim == CLAIMS[index]]
    assert len(v) == 1
    return v[0]


def test_two_seeds_that_disagree_are_inconclusive(tmp_path):
    """The issue's case: +0.02 and +0.06 on 2,000 images read +0.040 [+0.007, +0.073] and 'contradicted'
    through the old bootstrap; the seeds disagree by 4 points, so nothing is decided."""
    runs = sweep(tmp_path, [0.02, 0.06])
    rows = compare(runs, CONV.name, SCS.name)
    assert [r["diff"] for r in rows] == pytest.approx([0.02, 0.06, 0.04], abs=1e-3)
    assert rows[-1]["within_noise"] and rows[-1]["lo"] < -0.15 and rows[-1]["hi"] > 0.2
    assert rows[-1]["interval"].startswith("95% random effects over 2 seeds")
    v = claim(runs, 0)
    assert v.verdict == "inconclusive" and v.hypothesis == "accuracy SCS - conv < +0.010 (1.0 points)"
    assert "add seeds" in v.to_decide and "cannot be decided with this test set" in v.to_decide


def test_five_seeds_that_agree_decide(tmp_path):
    runs = sweep(tmp_path, [0.035, 0.045, 0.04, 0.03, 0.05])
    rows = compare(runs, CONV.name, SCS.name)
    assert rows[-1]["diff"] == pytest.approx(0.04, abs=1e-3) and 0.01 < rows[-1]["lo"] < rows[-1]["hi"] < 0.07
    v = claim(runs, 0)
    assert v.verdict == "contradicted" and v.to_decide == ""


@pytest.mark.parametrize("diffs,n,verdict", [
    ([-0.03, -0.02, -0.025], 2000, "supported"),
    ([0.004, 0.004, 0.004], 10000, "supported"),    # above 0 but wholly under the +1 point margin
    ([0.05, 0.06, 0.055], 2000, "contradicted"),
    ([0.01, 0.012, 0.008], 2000, "inconclusive"),   # on the margin
])
def test_accuracy_claim_verdicts(tmp_path, diffs, n, verdict):
    v = claim(sweep(tmp_path, diffs, n), 0)
    assert v.verdict == verdict, v
    assert (v.to_decide != "") == (verdict == "inconclusive")


def test_one_seed_decides_no_architecture_claim(tmp_path):
    runs = sweep(tmp_path, [0.1], relu_gains=[0.2])     # far beyond every margin on its images
    rows = compare(runs, CONV.name, SCS.name)
    assert len(rows) == 1 and "1 seed cannot separate the architecture from the seed" in rows[0]["interval"]
    for index in (0, 1, 2):
        v = claim(runs, index)
        assert v.verdict == "inconclusive" and v.to_decide.startswith(
            "1 seed cannot separate the architecture from the seed"), v
    assert "image-level only" in claim(runs, 0).evidence


def test_not_tested_without_predictions_or_relu_variant(tmp_path):
    runs = sweep(tmp_path, [0.0, 0.0])
    for run in runs:
        (run.path / "predictions.csv").unlink()
    assert claim(runs, 0).verdict == "not tested" and "without predictions.csv" in claim(runs, 0).evidence
    v = claim(runs, 2)
    assert v.verdict == "not tested" and "needs the same variant with a ReLU" in v.evidence
    assert v.hypothesis == "accuracy gain of a ReLU < +0.010 (1.0 points)"


@pytest.mark.parametrize("gains,n,verdict", [
    ([0.004, 0.004, 0.004], 10000, "supported"),    # the case: [+0.002, +0.008] read contradicted
    ([0.05, 0.04, 0.045], 2000, "contradicted"),
    ([0.01, 0.012, 0.008], 2000, "inconclusive"),
])
def test_no_activation_claim_verdicts(tmp_path, gains, n, verdict):
    v = claim(sweep(tmp_path, [0.0, 0.0, 0.0], n, relu_gains=gains), 2)
    assert v.verdict == verdict, v
    assert v.pair == f"{SCS_RELU.name} vs {SCS.name}"


@pytest.mark.parametrize("train,evals,verdict", [
    ([2.0, 2.1, 1.9], [0.5, 0.52, 0.48], "supported"),
    ([2.0, 2.1, 1.9], [1.3, 1.35, 1.25], "contradicted"),   # eval slower
    ([0.8, 0.82, 0.78], [0.5, 0.52, 0.48], "contradicted"),  # train faster
    ([0.9, 1.6, 1.2], [0.5, 0.52, 0.48], "inconclusive"),    # seeds disagree on training
])
def test_speed_claim_verdicts(tmp_path, train, evals, verdict):
    v = claim(sweep(tmp_path, [0.0] * 3, 500, train=train, evals=evals), 1)
    assert v.verdict == verdict, v
    assert v.hypothesis == "train seconds SCS/conv > 1.05x and eval seconds SCS/conv < 0.95x"
    assert (v.to_decide.startswith("add seeds")) == (verdict == "inconclusive")


def _saliency_files(root, runs, gain, flag=""):
    from scs_probe.analysis.sources import run_labels
    from scs_probe.storage import write_csv
    rng = np.random.default_rng(5)
    rows, summary = [], []
    for run, label in zip(runs, run_labels(runs)):
        if run.name not in (CONV.name, SCS.name):
            continue
        extra = gain + 0.01 * run.seed if run.name == SCS.name else 0.0
        rows += [{"model": label, "image_index": i, "sparseness": 0.4 + 0.001 * i + extra + rng.normal(0, 0.03)}
                 for i in range(100)]
        summary.append({"model": label, "rand_flag": flag if run.name == SCS.name else ""})
    write_csv(root / "sal" / "saliency.csv", rows)
    write_csv(root / "sal" / "saliency_summary.csv", summary)
    return root / "sal"


@pytest.mark.parametrize("gain,flag,verdict", [
    (0.1, "", "supported"),
    (-0.1, "", "contradicted"),
    (0.1, "maps barely change with random weights", "inconclusive"),
    (0.0, "", "inconclusive"),
])
def test_saliency_claim_verdicts(tmp_path, gain, flag, verdict):
    runs = sweep(tmp_path / "runs", [0.0] * 3, 300)
    v = claim(runs, 3, saliency=_saliency_files(tmp_path, runs, gain, flag))
    assert v.verdict == verdict, v
    assert v.hypothesis == "Gini sparseness SCS - conv > +0.010"
    assert claim(runs, 3, saliency=tmp_path / "nothing").verdict == "not tested"


def _pgd_files(root, runs, conv_keep, scs_keep, flags="", eps=(0.0, 2 / 255, 8 / 255)):
    """Per seed, robust masks [eps, image]: clean correct, then robust on about `keep` of those (less at the larger
    eps), drawn at random."""
    from scs_probe.analysis.sources import run_labels
    from scs_probe.storage import atomic_write, write_csv
    keys, masks = [], []
    rng = np.random.default_rng(6)
    for run, label in zip(runs, run_labels(runs)):
        if run.name not in (CONV.name, SCS.name):
            continue
        keep = scs_keep if run.name == SCS.name else conv_keep
        clean = np.arange(500) % 10 < 8
        robust = [clean] + [clean & (rng.random(500) < keep / (j + 1)) for j in range(len(eps) - 1)]
        keys.append(label)
        masks.append(np.stack(robust))
    atomic_write(root / "pgd" / "pgd_per_image.npz", lambda f: np.savez(
        f, models=np.array(keys), attacks=np.array(["pgd"] * len(keys)), eps=np.array(eps), robust=np.stack(masks)))
    write_csv(root / "pgd" / "pgd_summary.csv", [{"model": k, "attack": "pgd", "masking_flags": flags if SCS.name
                                                   in k else ""} for k in keys])
    return root / "pgd"


@pytest.mark.parametrize("conv_keep,scs_keep,flags,verdict", [
    (0.3, 0.6, "", "supported"),
    (0.6, 0.3, "", "contradicted"),
    (0.3, 0.6, "large-eps accuracy not ~0", "inconclusive"),
    (0.3, 0.31, "", "inconclusive"),
])
def test_robustness_claim_verdicts(tmp_path, conv_keep, scs_keep, flags, verdict):
    runs = sweep(tmp_path / "runs", [0.0] * 3, 500)
    v = claim(runs, 4, pgd=_pgd_files(tmp_path, runs, conv_keep, scs_keep, flags))
    assert v.verdict == verdict, v
    assert v.hypothesis == "robust/clean accuracy SCS - conv at some eps > +0.010 (1.0 points)"
    assert ("gradient masking" in v.evidence) == bool(flags)
    assert claim(runs, 4, pgd=tmp_path / "nothing").verdict == "not tested"
    no_clean = _pgd_files(tmp_path / "b", runs, conv_keep, scs_keep, eps=(2 / 255, 8 / 255))
    assert "needs eps 0" in claim(runs, 4, pgd=no_clean).evidence


# ------------------------------------------------------------------------------------ feasible ranges, columns

def test_pooled_accuracy_difference_is_clipped_to_the_feasible_range_and_says_so(tmp_path, capsys):
    """Two seeds that disagree wildly (SCS right on every image in one, wrong on every one in the other): the
    t interval with 1 df reaches far beyond [-1, 1], where no difference of accuracies lies; it is cut to it,
    and the table says so. `n` counts images in every row, `seeds` the seeds, tau is printed."""
    from scs_probe.cli import main
    ok, wrong = np.ones(200, dtype=bool), np.zeros(200, dtype=bool)
    runs = [fake_run(tmp_path, CONV, 0, wrong), fake_run(tmp_path, SCS, 0, ok),
            fake_run(tmp_path, CONV, 1, ok | (np.arange(200) < 100)), fake_run(tmp_path, SCS, 1, wrong)]
    rows = compare(runs, CONV.name, SCS.name, n_boot=200)
    pooled = rows[-1]
    assert pooled["seed"] == "all" and pooled["seeds"] == 2 and pooled["n"] == 200, pooled
    assert [r["seeds"] for r in rows[:2]] == [1, 1] and [r["n"] for r in rows[:2]] == [200, 200]
    assert -1 <= pooled["lo"] and pooled["hi"] <= 1 and "clipped to the feasible [-1, 1]" in pooled["interval"]
    assert "clipped" not in rows[0]["interval"]
    assert main(["compare", str(tmp_path), "--n-boot", "200"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header[:5] == ["a", "b", "seed", "seeds", "n"] and "tau" in header, header
    all_row = next(line.split() for line in out.splitlines() if line.split()[2:3] == ["all"])
    assert all_row[3] == "2" and all_row[4] == "200", all_row        # seeds, then images: never the seeds as n
    assert float(all_row[header.index("tau")]) > 0.5
    assert "interval clipped to the feasible [-1, 1]" in out


def test_robustness_intervals_stay_within_minus_one_and_one(tmp_path):
    """Robust/clean accuracy of SCS minus conv: +1 at one seed, -1 at the other. The pooled interval used to read
    [-12.7, +12.7]; it is cut to [-1, 1] and the evidence says it was."""
    import re

    from scs_probe.analysis.claims import claim_robustness
    from scs_probe.analysis.sources import run_labels
    from scs_probe.storage import atomic_write, write_csv
    ok, none = np.ones(50, dtype=bool), np.zeros(50, dtype=bool)
    runs = [fake_run(tmp_path, v, s, ok) for s in (0, 1) for v in (CONV, SCS)]
    labels = run_labels(runs)
    robust = {labels[0]: [ok, none], labels[1]: [ok, ok], labels[2]: [ok, ok], labels[3]: [ok, none]}
    pgd = tmp_path / "pgd"
    atomic_write(pgd / "pgd_per_image.npz", lambda f: np.savez(
        f, models=np.array(labels), attacks=np.array(["pgd"] * 4), eps=np.array([0, 0.03]),
        robust=np.stack([np.stack(robust[m]) for m in labels])))
    write_csv(pgd / "pgd_summary.csv", [{"model": m, "attack": "pgd", "masking_flags": ""} for m in labels])
    v = claim_robustness(runs, CONV.name, SCS.name, pgd)
    bounds = [float(x) for x in re.search(r"\[([-+0-9.]+), ([-+0-9.]+)\]", v.evidence).groups()]
    assert bounds == [-1.0, 1.0] and "clipped to the feasible [-1, 1]" in v.evidence, v.evidence
    assert v.verdict == "inconclusive"


def test_interval_clipping_is_never_silent():
    from scs_probe.stats import Interval
    inside = Interval(0.5, 0.2, 0.8, "t", 3)
    assert inside.clipped(0, 1) is inside and "clipped" not in inside.describe()
    cut = Interval(0.05, -0.3, 0.4, "t", 2).clipped(0, 1)
    assert (cut.lo, cut.hi, cut.estimate) == (0, 0.4, 0.05) and "clipped to the feasible [0, 1]" in cut.describe()
    nan = Interval(0.1, float("nan"), float("nan"), "t", 1)
    assert nan.clipped(0, 1) is nan


def test_compare_warns_about_runs_near_chance(capsys):
    from types import SimpleNamespace

    from scs_probe.cli.analyses import _warn_near_chance

    def run(variant, seed, acc):
        return SimpleNamespace(summary=lambda: {"variant": variant, "seed": seed, "test_acc": acc, "num_classes": 10})
    runs = [run("conv", 0, 0.45), run("scs", 0, 0.10), run("other", 0, 0.05)]
    _warn_near_chance(runs, [{"a": "conv", "b": "scs", "seed": 0}])
    out = capsys.readouterr().out
    assert "near chance" in out and "scs seed 0 (0.100)" in out and "other" not in out and "conv" not in out
    _warn_near_chance(runs[:1], [{"a": "conv", "b": "scs", "seed": 0}])
    assert capsys.readouterr().out == ""


def test_escape_sequences_read_from_run_files_never_reach_the_terminal(tmp_path, capsys):
    """A crafted config.json's fingerprint holds an escape sequence (it could retitle the terminal or hide text):
    the error line and the warning show it escaped, and say the rest as before."""
    from scs_probe.cli import main
    rng = np.random.default_rng(0)
    runs = [fake_run(tmp_path / "runs", v, 0, rng.random(100) < 0.6) for v in (CONV, SCS)]
    _set_fingerprint(runs[0], "sha256:\x1b]0;x\x07" + "a" * 60)
    _set_fingerprint(runs[1], "sha256:" + "b" * 64)
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "runs"), "--pair", f"{CONV.name},{SCS.name}", "--n-boot", "100"]) == 1
    out = capsys.readouterr()
    assert "\x1b" not in out.err and "\x07" not in out.err and "\\x1b]0;x\\x07" in out.err, out.err
    assert "different copies of the data" in out.err and len(out.err.strip().splitlines()) == 1
    assert main(["compare", str(tmp_path / "runs"), "--n-boot", "100"]) == 1  # the study pair: left out, warned
    out = capsys.readouterr()
    assert "\x1b" not in out.out + out.err and "\\x1b]0;x\\x07" in out.out + out.err, out
    from scs_probe.progress import write_line
    lines = []
    write_line("run: failed: \x1b[2Jcleared\nnext", lines.append)  # a sweep's or tune's outcome quoting an error
    assert lines == ["run: failed: \\x1b[2Jcleared\nnext"]


def test_escape_sequences_in_run_names_never_reach_tables_or_training_logs(tmp_path, capsys, monkeypatch):
    """A run's config.json names its variant with an escape sequence (click strips only colour codes, not a
    title-setting OSC): compare's table and near-chance warning, and the default log of train, sweep and tune
    (which quotes checkpoint statuses and errors), show it escaped; a name in another script passes as it is."""
    import inspect
    from types import SimpleNamespace

    from scs_probe import progress
    from scs_probe.cli import main
    from scs_probe.cli.analyses import _warn_near_chance
    from scs_probe.training.sweep import sweep
    from scs_probe.training.trainer import Trainer
    from scs_probe.training.tune import tune
    evil = "\x1b]0;pwned\x07"
    rng = np.random.default_rng(0)
    runs = [fake_run(tmp_path / "runs", v, 0, rng.random(100) < 0.6) for v in (CONV, SCS)]
    for run, suffix in zip(runs, (evil, "-é猫")):
        run.write_config(run.read_config() | {"variant_name": run.read_config()["variant_name"] + suffix})
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "runs"), "--pair", f"{CONV.name}{evil},{SCS.name}-é猫",
                 "--n-boot", "100"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and f"{CONV.name}\\x1b]0;pwned\\x07" in out, out
    assert f"{SCS.name}-é猫" in out
    low = [SimpleNamespace(summary=lambda: {"variant": "scs" + evil, "seed": 0, "test_acc": 0.1, "num_classes": 10})]
    _warn_near_chance(low, [{"a": "conv", "b": "scs" + evil, "seed": 0}])
    assert "scs\\x1b]0;pwned\\x07 seed 0" in capsys.readouterr().out
    for fn in (Trainer.__init__, sweep, tune):
        inspect.signature(fn).parameters["log"].default(f"status {evil}\nnext é")
        assert capsys.readouterr().out == "status \\x1b]0;pwned\\x07\nnext é\n", fn
    written = []  # on a terminal, the default log still writes above the progress bar
    monkeypatch.setattr(progress, "interactive", lambda: True)
    monkeypatch.setattr(progress.tqdm, "write", written.append)
    progress.write_line(f"done {evil}", inspect.signature(sweep).parameters["log"].default)
    assert written == ["done \\x1b]0;pwned\\x07"]
