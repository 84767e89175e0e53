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
                      "data": {"n_train": 1000}, "epochs_done": 3})
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
    assert rows[-1]["interval"] == "95% bootstrap over 3 seeds and 400 images" and rows[-1]["lo"] > 0
    verdicts = {v.claim[:20]: v for v in evaluate_claims(runs, tmp_path / "none", tmp_path / "none")}
    assert verdicts["SCS is not more accu"].verdict == "contradicted"   # SCS is clearly more accurate here
    assert verdicts["SCS is slower to tra"].verdict == "supported"      # 2x train seconds, 0.5x eval
    assert verdicts["SCS needs no activat"].verdict == "supported"      # identical predictions with a ReLU
    assert verdicts["SCS saliency maps ar"].verdict == "not tested"     # no saliency analysis here
    assert verdicts["SCS is more robust t"].verdict == "not tested"


def test_claims_compare_only_matched_and_trained_runs(tmp_path):
    ok = np.ones(100, dtype=bool)
    runs = [fake_run(tmp_path / "a", CONV, 0, ok, max_lr=0.05), fake_run(tmp_path / "a", SCS, 0, ok, max_lr=0.01)]
    verdicts = evaluate_claims(runs, tmp_path, tmp_path)
    assert {v.verdict for v in verdicts} == {"not tested"}
    assert "settings differ (max_lr 0.05 vs 0.01)" in verdicts[0].evidence
    chance = np.arange(100) % 10 == 0
    runs = [fake_run(tmp_path / "b", CONV, 0, chance), fake_run(tmp_path / "b", SCS, 0, ok)]
    assert "stayed near chance" in evaluate_claims(runs, tmp_path, tmp_path)[0].evidence
    one = [fake_run(tmp_path / "c", CONV, 0, ok), fake_run(tmp_path / "c", SCS, 0, ok)]
    speed = evaluate_claims(one, tmp_path, tmp_path)[1]
    assert speed.verdict == "inconclusive" and "2 seeds" in speed.to_decide  # one seed: no interval


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
    from scs_probe.storage import atomic_write, write_csv
    ok = np.ones(50, dtype=bool)
    runs = [fake_run(tmp_path, CONV, 0, ok), fake_run(tmp_path, SCS, 0, ok)]
    pgd = tmp_path / "pgd"
    robust_conv = np.stack([ok, np.zeros(50, bool)])
    robust_scs = np.stack([ok, ok])           # SCS survives everything: a masking suspect
    keys = [(CONV.name, "pgd"), (CONV.name, "square"), (SCS.name, "pgd"), (SCS.name, "square")]
    atomic_write(pgd / "pgd_per_image.npz", lambda f: np.savez(
        f, models=np.array([k[0] for k in keys]), attacks=np.array([k[1] for k in keys]), eps=np.array([0, 0.03]),
        robust=np.stack([robust_conv, robust_conv, robust_scs, robust_scs])))
    write_csv(pgd / "pgd_summary.csv", [
        {"model": SCS.name, "attack": "pgd", "masking_flags": "large-eps accuracy not ~0"},
        {"model": SCS.name, "attack": "square", "masking_flags": ""}])
    v = claim_robustness(runs, CONV.name, SCS.name, pgd)
    assert v.verdict == "inconclusive" and "gradient masking" in v.evidence, v
