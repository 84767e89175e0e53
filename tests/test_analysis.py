"""Analyses on tiny trained models: saliency, PGD sweeps, norms, the HTML report (and a real browser)."""

import csv
import re
import shutil
import warnings

import numpy as np
import pytest
import torch

from scs_probe.analysis import RobustnessConfig, SaliencyConfig, entropy, gini
from scs_probe.analysis.robustness import area_under_curve, robust_accuracy
from scs_probe.analysis.saliency import deletion_areas, deletion_curve
from scs_probe.cli import main
from scs_probe.cli.types import EpsList, EpsRange
from scs_probe.errors import OptionError
from scs_probe.rundir import RunDir
from scs_probe.training import TrainOptions, train
from scs_probe.zoo import Variant

pytestmark = pytest.mark.filterwarnings("ignore::scs_probe.data.UnverifiedDataWarning")


@pytest.fixture(scope="session")
def sweep_dir(fake_cifar, tmp_path_factory):
    """Two tiny trained rohrer100k runs (conv/relu/max and scs/none/maxabs) in one directory."""
    root = tmp_path_factory.mktemp("sweep")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, kw in (("conv", dict(layer="conv", activation="relu", pool="max")),
                         ("scs", dict(layer="scs", activation="none", pool="maxabs"))):
            train(TrainOptions(Variant("rohrer100k", **kw), epochs=2, batch_size=64, max_lr=0.01, limit_train=512,
                               limit_test=128, data_dir=str(fake_cifar), out=str(root / name), device="cpu",
                               norms_every_batch=name == "scs"), progress=False, log=lambda *a: None)
    return root


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_gini_and_entropy_know_extremes():
    uniform = torch.ones(1, 8, 8)
    spike = torch.zeros(1, 8, 8)
    spike[0, 3, 3] = 5.0
    assert gini(uniform).item() == pytest.approx(0.0, abs=1e-6)
    assert gini(spike).item() == pytest.approx(1 - 1 / 64, abs=1e-6)
    assert entropy(uniform).item() == pytest.approx(np.log(64), rel=1e-5)
    assert entropy(spike).item() == pytest.approx(0.0, abs=1e-6)
    assert gini(torch.zeros(1, 4, 4)).item() == 0.0  # all-zero map: no NaN


def test_deletion_curve_removes_salient_pixels_first():
    class Bright(torch.nn.Module):  # class 0 logit = brightness of the top-left pixel
        def forward(self, x):
            return torch.stack([x[:, 0, 0, 0] * 20, torch.full((len(x),), 10.0)], 1)
    x = torch.ones(2, 3, 4, 4)
    maps = torch.zeros(2, 4, 4)
    maps[:, 0, 0] = 1.0
    fr, curve, p_target = deletion_curve(Bright(), x, torch.zeros(2, dtype=torch.long), maps, steps=4)
    assert fr.tolist() == [0, 0.25, 0.5, 0.75, 1.0]
    assert curve[0, 0] == 1.0 and curve[1, 0] == 0.0  # the top-left pixel goes in the first step
    # p(class 0) = sigmoid(20 - 10) at the start, sigmoid(-10) once the pixel is gone
    p0, p1 = torch.sigmoid(torch.tensor(10.0)).item(), torch.sigmoid(torch.tensor(-10.0)).item()
    area, start = deletion_areas(fr, p_target)
    want = 0.25 * (p0 + p1) / 2 + 0.75 * p1  # trapezoids over [0, .25] and [.25, 1]
    assert area.tolist() == pytest.approx([want, want], rel=1e-4)
    assert start.tolist() == pytest.approx([p0, p0], rel=1e-6)


def test_normalised_deletion_is_a_ratio_of_sums():
    """Areas 0.5 and 0.01 from starting probabilities 0.9 and 0.01: sum / sum = 0.51 / 0.91; the mean of the
    per-image ratios would be (0.556 + 1.0) / 2 = 0.78, led by the image the model was unsure of."""
    from scs_probe.analysis.saliency import normalised_deletion
    ci = normalised_deletion(torch.tensor([0.5, 0.01]), torch.tensor([0.9, 0.01]))
    assert ci.estimate == pytest.approx(0.51 / 0.91, rel=1e-6) and ci.method.startswith("ratio of means")


def test_eps_parsing():
    parse_range, parse_list = EpsRange().parse, EpsList().parse
    assert parse_range("0:8/255:5") == pytest.approx([0, 2 / 255, 4 / 255, 6 / 255, 8 / 255])
    assert parse_range("0.01:0.01:1") == (0.01,)
    assert parse_list("8/255, 0 ,2/255") == pytest.approx([0, 2 / 255, 8 / 255])
    for bad in ("a:b", "0:1", "0:-1:3", "0:1:0", "0:1:x", "1:0:3", "0:1/0:2", "0:inf:2"):
        with pytest.raises(ValueError):
            parse_range(bad)


def test_configs_check_ranges_and_survive_json():
    """Images live in [0, 1]: an eps outside it is an error of the config, whichever way it was written."""
    for eps in ((0, 300 / 255), (-0.1, 0.1), ()):
        with pytest.raises(OptionError) as e:
            RobustnessConfig(eps=eps)
        assert e.value.option == "eps"
    with pytest.raises(OptionError, match="attack"):
        RobustnessConfig(attacks=("fgsm",))
    c = RobustnessConfig(eps=[8 / 255, 0, 8 / 255], attacks=["pgd", "square"])
    assert c.eps == (0, 8 / 255) and RobustnessConfig.from_dict(c.to_dict()) == c
    s = SaliencyConfig(indices=[3, 1], classes=[2])
    assert SaliencyConfig.from_dict(s.to_dict()) == s and s.indices == (3, 1)
    with pytest.raises(OptionError, match="classes"):
        SaliencyConfig(classes=(-1,))  # an index beyond the data set's classes: when images are drawn


def test_paper_experiment_covers_most_variants():
    from scs_probe.analysis.report import paper_experiment
    row = {"arch": "rohrer100k", "layer": "sdp", "activation": "relu", "pool": "max", "norm": "none",
           "image_size": 32}
    assert paper_experiment([row]) == "followup"  # SharpenedSDP only ran in the follow-up tables
    assert paper_experiment([row | {"layer": "conv"}]) == "initial"
    assert paper_experiment([row], "initial") == "initial"
    with pytest.raises(OptionError):
        paper_experiment([row], "table9")


def test_area_under_curve_is_mean_accuracy():
    assert area_under_curve([0, 1, 2], [1.0, 0.5, 0.0]) == pytest.approx(0.5)
    assert area_under_curve([0.1], [0.7]) == 0.7


def test_clean_accuracy_is_the_runs_own_and_attacks_only_lower_it(sweep_dir, fake_cifar):
    """eps 0 gives the accuracy the run recorded on the same test images (another code path: the trainer's
    evaluation), image by image; an attack only turns correct images wrong."""
    from scs_probe.analysis.robustness import robust_mask
    from scs_probe.analysis.sources import load_models, select_test_images
    run = RunDir(sweep_dir / "conv")
    m = load_models([run], "cpu")[0]
    images, labels, _, _ = select_test_images(fake_cifar, 128, random_pick=False)  # the run's limit_test
    preds = run.read_predictions()
    clean = robust_mask(m.model, images, labels, 0.0)
    assert clean.tolist() == (preds["pred"] == preds["label"]).tolist()
    assert robust_accuracy(m.model, images, labels, 0.0) == pytest.approx(float(run.read("history")[-1]["test_acc"]),
                                                                          abs=1e-6)
    adv = robust_mask(m.model, images, labels, 16 / 255, steps=5)
    assert not (adv & ~clean).any() and adv.sum() < clean.sum()


def test_attacks_cannot_move_a_model_that_ignores_its_input():
    """A model whose answer does not depend on the image is robust exactly where it is right: robust accuracy is
    the share of labels equal to its one answer, at every eps and under every attack."""
    class Constant(torch.nn.Module):
        def forward(self, x):
            return x.sum(dim=(1, 2, 3))[:, None] * 0 + torch.tensor([0.0, 2.0, 1.0])
    labels = torch.tensor([1, 1, 0, 2, 1, 1, 2, 0])
    images = torch.rand(8, 3, 32, 32)
    for eps in (0.0, 8 / 255):
        for kind in ("pgd", "square"):
            assert robust_accuracy(Constant(), images, labels, eps, kind, steps=3, n_queries=10) == 0.5


def test_pgd_lowers_accuracy_and_eps0_is_clean(sweep_dir):
    from scs_probe.analysis.sources import load_models
    m = load_models([RunDir(sweep_dir / "conv")], "cpu")[0]
    data = torch.rand(64, 3, 32, 32)
    with torch.no_grad():
        y = m.model(data).argmax(1)
    y[1::2] = (y[1::2] + 1) % 10            # every other label wrong: clean accuracy is exactly one half
    assert robust_accuracy(m.model, data, y, 0.0) == 0.5
    assert robust_accuracy(m.model, data, y, 16 / 255, steps=5) < 0.5


def test_saliency_command(sweep_dir, fake_cifar, tmp_path, capsys):
    out = tmp_path / "sal"
    code = main(["saliency", "--sweep", str(sweep_dir), "--n-images", "5", "--data-dir", str(fake_cifar),
                 "--out", str(out), "--device", "cpu", "--deletion-steps", "4"])
    assert code == 0, capsys.readouterr().err
    per_image = rows(out / "saliency.csv")
    assert len(per_image) == 10 and {r["model"] for r in per_image} == {"rohrer100k-conv-relu-max",
                                                                        "rohrer100k-scs-none-maxabs"}
    # the per-image metrics are those of the stored maps
    maps = np.load(out / "saliency_maps.npz")
    for k, model in enumerate(maps["models"]):
        mine = [r for r in per_image if r["model"] == model]
        np.testing.assert_allclose([float(r["sparseness"]) for r in mine], gini(torch.from_numpy(maps["maps"][k])),
                                   atol=2e-6)
        np.testing.assert_allclose([float(r["complexity"]) for r in mine], entropy(torch.from_numpy(maps["maps"][k])),
                                   atol=2e-6)
    # the same images for every model
    imgs = [[r["image_index"] for r in per_image if r["model"] == m] for m in {r["model"] for r in per_image}]
    assert imgs[0] == imgs[1]
    assert len(rows(out / "deletion.csv")) == 2 * 5
    assert maps["maps"].shape == (2, 5, 32, 32) and (maps["maps"] >= 0).all()
    for f in ("saliency.png", "saliency.svg", "deletion.png", "per_image/saliency.png"):
        assert (out / f).stat().st_size > 1000
    code = main(["saliency", "--ckpt", str(sweep_dir / "scs"), "--indices", "3,1", "--classes", "cat",
                 "--target", "pred", "--per-image-scale", "--data-dir", str(fake_cifar), "--out", str(tmp_path / "s2")])
    assert code == 0
    assert [r["image_index"] for r in rows(tmp_path / "s2" / "saliency.csv")] == ["3", "1"]


@pytest.mark.slow
def test_pgd_command(sweep_dir, fake_cifar, tmp_path, capsys):
    out = tmp_path / "pgd"
    code = main(["pgd", "--sweep", str(sweep_dir), "--eps-range", "0:8/255:3", "--n-images", "32", "--steps", "3",
                 "--attack", "pgd", "--attack", "square", "--n-queries", "20", "--data-dir", str(fake_cifar),
                 "--out", str(out), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    result = rows(out / "pgd.csv")
    assert list(result[0]) == ["model", "attack", "eps", "eps_255", "robust_acc", "acc_lo", "acc_hi", "n", "rel_acc",
                               "steps", "alpha"]
    for r in result:
        assert float(r["acc_lo"]) <= float(r["robust_acc"]) <= float(r["acc_hi"])
        clean = next(float(x["robust_acc"]) for x in result if x["model"] == r["model"] and float(x["eps"]) == 0)
        assert float(r["rel_acc"]) == pytest.approx(float(r["robust_acc"]) / clean, rel=1e-4)
    checks = rows(out / "masking_checks.csv")
    assert {c["model"] for c in checks} == {r["model"] for r in result}
    assert all(c["pgd_2x_steps_acc"] != "" for c in checks)
    scs_check = next(c for c in checks if "scs" in c["model"])
    assert scs_check["transfer_from"] == "rohrer100k-conv-relu-max"  # the conv twin's examples, tried on SCS
    per_image = np.load(out / "pgd_per_image.npz")
    assert per_image["robust"].shape == (4, 3, 32) and per_image["robust"].dtype == bool
    for key, robust in zip(zip(per_image["models"], per_image["attacks"]), per_image["robust"]):  # csv = masks
        accs = [float(r["robust_acc"]) for r in result if (r["model"], r["attack"]) == key]
        assert accs == pytest.approx(robust.mean(axis=1).tolist())
    assert len(result) == 2 * 2 * 3
    pgd_rows = [r for r in result if r["attack"] == "pgd"]
    for model in {r["model"] for r in pgd_rows}:
        accs = [float(r["robust_acc"]) for r in pgd_rows if r["model"] == model]
        assert accs[0] >= accs[-1]
    assert float(pgd_rows[1]["alpha"]) == pytest.approx(2.5 * (4 / 255) / 3, rel=1e-4)
    summary = rows(out / "pgd_summary.csv")
    assert {r["attack"] for r in summary} == {"pgd", "square"}
    for s in summary:  # the area is the mean robust accuracy over the eps range of pgd.csv's curve
        curve = [r for r in result if (r["model"], r["attack"]) == (s["model"], s["attack"])]
        want = area_under_curve([float(r["eps"]) for r in curve], [float(r["robust_acc"]) for r in curve])
        assert float(s["auc"]) == pytest.approx(want, abs=1e-6)
    assert (out / "pgd.png").stat().st_size > 1000


@pytest.mark.parametrize("argv,code", [
    (["pgd", "--eps-range", "a:b"], 2),
    (["pgd", "--eps-range", "0:-1:3"], 2),
    (["pgd", "--eps-range", "0:1:0"], 2),
    (["pgd", "--eps", "0,-1"], 2),
    (["pgd", "--eps-range", "0:1:2", "--eps", "0"], 2),
    (["pgd", "--eps-range", "0:300/255:3"], 2),
    (["pgd", "--eps", "0,2"], 2),
    (["saliency", "--classes", "cat,unicorn"], 2),
    (["saliency"], 2),
    (["saliency", "--indices", "x"], 2),
    (["norms"], 2),
])
def test_analysis_usage_errors(argv, code, capsys, sweep_dir, fake_cifar):
    if "--sweep" not in argv and argv[0] != "norms" and argv != ["saliency"]:
        argv = argv + ["--sweep", str(sweep_dir), "--data-dir", str(fake_cifar)]
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and err.startswith("scs-probe: error:"), err
    if "300/255" in argv or "0,2" in argv:
        assert "--eps-range/--eps: must lie in [0, 1]" in err, err


def test_analysis_file_errors(tmp_path, capsys, sweep_dir):
    torch.save({"x": 1}, tmp_path / "foreign.pt")
    empty = tmp_path / "empty"
    empty.mkdir()
    for argv in (["saliency", "--ckpt", str(tmp_path / "missing.pt")],
                 ["pgd", "--ckpt", str(tmp_path / "foreign.pt")],
                 ["pgd", "--sweep", str(empty), "--eps", "0"],
                 ["report", str(empty)],
                 ["norms", str(empty)]):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    # a checkpoint whose weights do not fit its architecture
    ck = torch.load(sweep_dir / "scs" / "checkpoint.pt", weights_only=True)
    ck["variant"]["arch"] = "rohrer47k"
    torch.save(ck, tmp_path / "mismatch.pt")
    assert main(["saliency", "--ckpt", str(tmp_path / "mismatch.pt")]) == 1
    assert "does not match" in capsys.readouterr().err


def test_norms_command(sweep_dir, tmp_path, capsys):
    out = tmp_path / "norms"
    assert main(["norms", "--sweep", str(sweep_dir), "--out", str(out)]) == 0
    summary = rows(out / "norms_summary.csv")
    assert {r["run"] for r in summary} == {"rohrer100k-conv-relu-max", "rohrer100k-scs-none-maxabs"}
    assert {r["layer"] for r in summary} == {"conv1", "conv2", "conv3", "fc"}
    for f in ("norms.png", "norms_per_batch.png", "exponents.png"):
        assert (out / f).stat().st_size > 1000


@pytest.fixture(scope="module")
def report_html(sweep_dir, fake_cifar, tmp_path_factory):
    d = tmp_path_factory.mktemp("rep") / "sweep"
    shutil.copytree(sweep_dir, d)
    # a run name with markup: it must come out escaped
    evil = d / "scs"
    cfg = (evil / "config.json").read_text().replace('"variant_name": "rohrer100k-scs-none-maxabs"',
                                                     '"variant_name": "<script>alert(1)</script>"')
    (evil / "config.json").write_text(cfg)
    # a fixed-p search kept beside the runs: the report gets a tuning section
    assert main(["tune", "--n-trials", "2", "--epochs", "1", "--limit-train", "64", "--limit-test", "32",
                 "--batch-size", "32", "--pruner", "none", "--data-dir", str(fake_cifar), "--device", "cpu",
                 "--quiet", "--out", str(d / "tune")]) == 0
    assert main(["report", str(d), "--data-dir", str(fake_cifar), "--pgd-images", "16", "--eps-range", "0:4/255:2",
                 "--device", "cpu"]) == 0
    return d / "report.html"


@pytest.mark.slow
def test_report_is_self_contained_and_escaped(report_html):
    html = report_html.read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html
    assert html.count("data:image/png;base64,") >= 6
    # the paper's conv/relu/max accuracy beside ours, from the one experiment covering both variants (tie: the
    # first), never mixed row by row
    assert "0.803 (table1)" in html and 'experiment "initial" for every row' in html and "(table6)" not in html
    # the verdicts claims.py computes for this directory, in order; one seed decides no architecture claim
    from scs_probe.analysis.claims import evaluate_claims
    from scs_probe.rundir import RunsDir
    d = report_html.parent
    want = [v.verdict for v in evaluate_claims(RunsDir(d).runs(), d / "analysis" / "saliency", d / "analysis" / "pgd")]
    verdicts = re.findall(r'<td class="l (supported|contradicted|inconclusive|not tested)">', html)
    assert verdicts == want and "supported" not in want and "contradicted" not in want, verdicts
    assert "1 seed cannot separate the architecture from the seed" in html
    body = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    assert re.findall(r"\d+\.\d{5,}|\d\.\d{3,}e[-+]?\d+", body) == []  # no raw floats
    assert "Randomisation" in html and "masking" in html
    assert "Fixed-p search (Optuna)" in html and "2 complete, 0 pruned, 0 failed trials" in html
    assert re.search(r"Best: trial [01], p = [0-9.]+", html)
    # chosen on validation (tune's default split: 10 % of the fake's 1,500 training images), test reported apart
    assert re.search(r"validation accuracy [0-9.]+ on 150 held-out training images;\s+its test accuracy [0-9.]+ "
                     r"\(not used to choose\)", html)
    # every table says which images its numbers come from
    assert "Images: test accuracy: the test split (128 images per run); no validation split" in html
    assert "Images: the first 16 images of the test split." in html
    assert html.count("Images: ") == 5
    assert (report_html.parent / "analysis" / "pgd" / "pgd.csv").is_file()


@pytest.mark.slow
def test_report_reuses_existing_analyses(report_html, capsys):
    before = (report_html.parent / "analysis" / "pgd" / "pgd.csv").stat().st_mtime_ns
    assert main(["report", str(report_html.parent)]) == 0  # no data needed: nothing is recomputed
    assert (report_html.parent / "analysis" / "pgd" / "pgd.csv").stat().st_mtime_ns == before
    assert "running" not in capsys.readouterr().err
    # the same options asked for explicitly: still nothing to recompute
    assert main(["report", str(report_html.parent), "--pgd-images", "16", "--eps-range", "0:4/255:2"]) == 0
    assert "running" not in capsys.readouterr().err


@pytest.mark.slow
def test_report_reruns_an_analysis_whose_options_differ(report_html, fake_cifar, capsys):
    d = report_html.parent
    before = {name: (d / "analysis" / name / f"{name}.png").stat().st_mtime_ns for name in ("saliency", "pgd")}
    assert main(["report", str(d), "--eps", "0,1/255,3/255", "--data-dir", str(fake_cifar), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "running pgd" in err and "running saliency" not in err, err
    eps = sorted({float(r["eps"]) for r in rows(d / "analysis" / "pgd" / "pgd.csv")})
    assert eps == pytest.approx([0, 1 / 255, 3 / 255])
    assert {int(r["n"]) for r in rows(d / "analysis" / "pgd" / "pgd.csv")} == {16}  # the stored options kept
    assert (d / "analysis" / "saliency" / "saliency.png").stat().st_mtime_ns == before["saliency"]
    assert (d / "analysis" / "pgd" / "pgd.png").stat().st_mtime_ns != before["pgd"]


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed")
def test_report_renders_in_a_real_browser(report_html):
    playwright = pytest.importorskip("playwright.sync_api")
    errors = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(report_html.resolve().as_uri())
        page.wait_for_load_state("load")
        widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
        browser.close()
    assert len(widths) >= 6 and all(w > 0 for w in widths), widths
    assert errors == []


def _report_context(**overrides):
    """Everything report.html.j2 reads, with the raw floats analyses produce (the issue's examples among them)."""
    raw = 0.09049999999999997
    claim = {"claim": "SCS is not more accurate than convolution", "pair": "b vs a", "evidence": "e",
             "verdict": "inconclusive", "to_decide": "add seeds",
             "hypothesis": "accuracy SCS - conv < +0.010 (1.0 points)"}
    row = {"variant": "v", "seed": 0, "layer": "conv", "activation": "relu", "pool": "max", "norm": "none",
           "image_size": 32, "epochs": 3, "max_lr": 0.01, "batch_size": 64, "n_train": 1000, "test_acc": 0.61234567,
           "n_val": 500, "best_epoch": 2, "test_acc_at_best": 0.6234567, "train_seconds_mean": 33.412345,
           "eval_seconds_mean": 2.1234567,
           "params": 113741, "status": "finished", "paper": None}
    variant = {"variant": "v", "runs": 2, "finished": 2, "seeds": "0 1", "test_acc_mean": 0.6123456,
               "test_acc_ci_lo": 0.5123456, "test_acc_ci_hi": 0.7123456, "test_acc_at_best_mean": 0.623456,
               "train_seconds_mean_mean": 33.41234, "eval_seconds_mean_mean": 2.123456, "paper": None}
    comparison = {"a": "a", "b": "b", "seed": 0, "n": 2000, "acc_a": 0.6123456, "acc_b": 0.5218456, "diff": -raw,
                  "lo": -0.1123456, "hi": -0.0712345, "tau": "", "only_a": 300, "only_b": 119,
                  "mcnemar_p": 1.7677346087294403e-60, "within_noise": False}
    metrics = ("sparseness", "complexity", "deletion_auc", "deletion_auc_norm")
    saliency = {"model": "v", "n": 100, **{f"{m}_{k}": raw for m in metrics for k in ("mean", "lo", "hi")},
                "accuracy": 0.61234567, "rand_spearman": 0.123456, "rand_ssim": 0.234567, "rand_flag": ""}
    pgd = {"model": "v", "attack": "pgd", "auc": raw, "auc_lo": raw, "auc_hi": raw, "auc_rel": raw, "clean_acc": raw,
           "eps_max_255": 8.0000001, "acc_at_eps_max": raw, "masking_flags": ""}
    check = {"model": "v", "check_eps_255": 7.9999999, "pgd_acc": raw, "pgd_lo": raw, "large_eps": 0.5,
             "large_eps_acc": raw, "square_acc": raw, "autoattack_acc": raw, "pgd_2x_steps_acc": raw,
             "pgd_restarts_acc": raw, "transfer_from": "a", "transfer_acc": raw, "flags": ""}
    norms = {"run": "v", "layer": "conv1", "weight_l2_first": 12.3456789, "weight_l2_last": 23.456789,
             "grad_l2_mean": 0.000123456789, "p_mean_last": 1.23456789}
    trial = {"number": 0, "p": 1.23456789, "max_lr": 0.0123456789, "val_acc": "0.61234567", "n_val": 500,
             "best_val_acc": "0.623456789", "test_acc": "0.5923456", "epochs": 2, "seconds": "12.3456789"}
    study = {"name": "tune", "counts": {"complete": 1, "pruned": 0, "fail": 0}, "best": trial, "p_lo": 1.2345678,
             "p_hi": 1.2345678, "settings": {}, "rows": [trial], "figure": None}
    context = dict(title="t", directory="d", rows=[row], variants=[variant], several_seeds=True, experiment="initial",
                   warnings=[], claims=[claim], data={}, comparisons=[comparison], saliency=[saliency],
                   randomisation=[], pgd=[pgd], checks=[check], norms=[norms], studies=[study],
                   configs={"saliency": None, "pgd": None}, figures={"training": "", "saliency": "", "deletion": "",
                                                                      "pgd": "", "norms": ""},
                   sources=dict.fromkeys(("runs", "comparisons", "saliency", "pgd", "tune"), "the test split"),
                   version="0", generated="now")
    return context | overrides


def test_report_numbers_are_formatted():
    """No raw float reaches the HTML: at most 4 decimals anywhere (accuracies and intervals read 3), p-values
    2 significant digits; the metrics' arrows come from the metrics themselves."""
    from scs_probe.analysis.metrics import COMPLEXITY, SPARSENESS, arrow
    from scs_probe.analysis.report import render_report
    html = render_report(**_report_context())
    long_numbers = re.findall(r"\d+\.\d{5,}|\d\.\d{3,}e[-+]?\d+", html)
    assert long_numbers == [], long_numbers
    assert "-0.090" in html and "1.8e-60" in html and "-0.09049999999999997" not in html
    assert "0.612 [" not in html and "<td>0.612</td>" in html
    assert f"sparseness {arrow(SPARSENESS)}" in html and f"complexity {arrow(COMPLEXITY)}" in html
    assert arrow(SPARSENESS) == "\u2191" and arrow(COMPLEXITY) == "\u2193"
    assert "<th class=\"l\">hypothesis (margin)</th>" in html and "accuracy SCS - conv &lt; +0.010 (1.0 points)" in html


def test_formatting_filters():
    from scs_probe.analysis.formatting import fixed, pvalue, sig, signed
    assert fixed(0.09049999999999997) == "0.090" and fixed("") == "" and fixed("all") == "all"
    assert signed(0.04) == "+0.040" and pvalue(1.7677346087294403e-60) == "1.8e-60" and pvalue("0.0312") == "0.031"
    assert sig(33.41234) == "33.4" and sig(0.01) == "0.01" and sig(2) == "2" and fixed(float("nan")) == ""


def test_seeds_share_their_variant_colour_and_log_ticks_read_plainly(tmp_path):
    from scs_probe.analysis.figures import plain_log_axis, plt, run_styles
    styles = run_styles(["a-seed0", "a-seed1", "b"], ["a", "a", "b"])
    assert styles["a-seed0"]["color"] == styles["a-seed1"]["color"] != styles["b"]["color"]
    assert styles["a-seed0"]["label"] == "a (2 seeds)" and styles["a-seed1"]["label"] == "_nolegend_"
    assert styles["a-seed0"]["lw"] < styles["b"]["lw"]
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [2.5, 3.5, 4.5])
    plain_log_axis(ax)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels(which="both") if t.get_text()]
    plt.close(fig)
    assert labels and all(re.fullmatch(r"[0-9.]+", t) for t in labels), labels


# ------------------------------------------------------------------------------------------- figure layouts

@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions make, drawn and kept open instead of saved: stem -> Figure."""
    from scs_probe.analysis.figures import plt
    figures = {}

    def keep(fig, out, stem, svg=True):
        fig.canvas.draw()
        figures[stem] = fig
        return out / f"{stem}.png"

    monkeypatch.setattr("scs_probe.analysis.figures.save", keep)
    yield figures
    for fig in figures.values():
        plt.close(fig)


def layout_problems(fig) -> list[str]:
    """What a reader would trip over: text of one axes over another's (a title on the row above's x label),
    tick labels of one axis on each other or in several sizes, a log axis with fewer than two labelled ticks,
    a legend over an axes' data area."""
    renderer = fig.canvas.get_renderer()
    problems, texts = [], []
    for i, ax in enumerate(fig.axes):
        for kind, t in (("title", ax.title), ("xlabel", ax.xaxis.label), ("ylabel", ax.yaxis.label)):
            if t.get_text() and t.get_visible():
                texts.append((i, f"{kind} {t.get_text()!r}", t.get_window_extent(renderer)))
        frame = ax.get_window_extent(renderer)
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            labels, boxes = [], []
            for t in axis.get_ticklabels(which="both"):  # those of ticks in view, where text was drawn
                box = t.get_window_extent(renderer)
                inside = frame.x0 - 1 <= (box.x0 + box.x1) / 2 <= frame.x1 + 1 if name == "x" else \
                    frame.y0 - 1 <= (box.y0 + box.y1) / 2 <= frame.y1 + 1
                if t.get_text() and t.get_visible() and inside:
                    labels.append(t)
                    boxes.append(box)
            if any(a.overlaps(b) for k, a in enumerate(boxes) for b in boxes[k + 1:]):
                problems.append(f"axes {i}: {name} tick labels overlap ({[t.get_text() for t in labels]})")
            if len({t.get_fontsize() for t in labels}) > 1:
                problems.append(f"axes {i}: {name} tick labels in several sizes")
            if axis.get_scale() == "log" and len(labels) < 2:
                problems.append(f"axes {i}: log {name} axis with {len(labels)} labelled tick(s)")
    for k, (i, what, box) in enumerate(texts):
        for j, other, obox in texts[k + 1:]:
            if i != j and box.overlaps(obox):
                problems.append(f"{what} (axes {i}) overlaps {other} (axes {j})")
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    for legend in legends:
        lbox = legend.get_window_extent(renderer)
        for i, ax in enumerate(fig.axes):
            if lbox.overlaps(ax.get_window_extent(renderer)):
                problems.append(f"a legend covers the data of axes {i}")
    return problems


def fake_norms():
    import pandas as pd
    rng = np.random.default_rng(0)
    rows = []
    for variant, grow in (("arch-conv-relu-max", 1.6), ("arch-scs-none-maxabs", 6.0)):
        for seed in (0, 1):
            run = f"{variant}-seed{seed}"
            for layer, start in (("conv1", 5.2), ("conv2", 5.0), ("conv3", 3.6), ("conv4", 3.6), ("fc", 1.8)):
                for epoch in range(3):
                    rows.append((epoch, pd.NA, layer, "weight", start * grow ** min(epoch, 1) * rng.uniform(0.9, 1.3),
                                 run, variant))
                    if epoch:
                        dead = variant.startswith("arch-conv") and seed == 0 and epoch == 2
                        rows.append((epoch, pd.NA, layer, "grad", 0.0 if dead else 10 ** rng.uniform(-4, -0.5), run,
                                     variant))
    d = pd.DataFrame(rows, columns=["epoch", "batch", "layer", "kind", "l2", "run", "variant"])
    d["batch"] = d["batch"].astype("string")
    return d


def test_norms_and_exponents_figures_are_readable(drawn, tmp_path):
    import pandas as pd

    from scs_probe.analysis.norms import plot_exponents, plot_norms
    plot_norms(fake_norms(), tmp_path)
    rng = np.random.default_rng(1)
    exps = pd.DataFrame([(e, layer, c, 2 + rng.normal(0, 0.5) + 0.2 * e, f"arch-scs-none-maxabs-seed{s}")
                         for s in (0, 1) for layer in ("conv1", "conv2", "conv3", "conv4") for c in range(16)
                         for e in range(3)], columns=["epoch", "layer", "channel", "p", "run"])
    plot_exponents(exps, tmp_path)
    for stem in ("norms", "exponents"):
        assert layout_problems(drawn[stem]) == [], stem
    # one colour per variant in the norms, and the run whose gradient died is marked, not a line to the bottom
    colours = {tuple(np.round(line.get_color(), 3)) if not isinstance(line.get_color(), str) else line.get_color()
               for ax in drawn["norms"].axes for line in ax.get_lines()}
    assert len(colours) == 2, colours
    assert "norm of 0" in drawn["norms"].get_suptitle()


def test_deletion_and_pgd_figures_show_variants_and_their_seeds(drawn, tmp_path):
    """Seeds of a variant share its colour (thin lines), their mean is drawn thick with a band over seeds; the
    robustness figure gets that band (it had none once more than 4 curves were drawn)."""
    from matplotlib.colors import to_hex

    from scs_probe.analysis.robustness import plot_curves
    from scs_probe.analysis.saliency import SaliencyResult, plot_deletion
    variants = {f"{v}-seed{s}": v for v in ("conv", "scs") for s in (0, 1, 2)}
    fr = torch.linspace(0, 1, 6)
    results = [SaliencyResult(m, None, None, None, None, None, torch.stack([fr, 1 - fr * k / 10], 1), fr,
                              torch.full((4,), 0.3), torch.full((4,), 0.9)) for k, m in enumerate(variants)]
    plot_deletion(results, tmp_path, variants)
    rows, summary = [], []
    for k, m in enumerate(variants):
        for e in (0.0, 2 / 255, 4 / 255):
            acc = 0.6 - k * 0.02 - e * 30
            rows.append({"model": m, "attack": "pgd", "eps": e, "robust_acc": acc, "acc_lo": acc - 0.05,
                         "acc_hi": acc + 0.05, "rel_acc": acc / 0.6})
        summary.append({"model": m, "attack": "pgd", "auc": 0.5})
    plot_curves(rows, summary, tmp_path, variants)
    for stem in ("deletion", "pgd"):
        fig = drawn[stem]
        assert layout_problems(fig) == [], stem
        ax = fig.axes[0]
        colours = {to_hex(line.get_color()) for line in ax.get_lines()}
        assert len(colours) == 2, (stem, colours)                         # one colour per variant
        widths = sorted({line.get_linewidth() for line in ax.get_lines()})
        assert len(ax.get_lines()) == 8 and widths[0] < widths[-1], stem   # 3 thin seeds + 1 thick mean each
        assert len(ax.collections) >= 2, stem                             # a band per variant
        legend = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
        assert len(legend) == 2 and all("3 seeds" in t for t in legend), legend


def test_log_ticks_are_plain_and_neither_too_few_nor_too_many():
    from scs_probe.analysis.figures import _log_ticks, plain_number
    for lo, hi in ((2.4, 4.6), (3.5, 40), (1e-5, 3), (0.9, 1.1), (1e-12, 1), (5, 6)):
        ticks = _log_ticks(lo, hi)
        assert 2 <= len(ticks) <= 7 and all(lo <= t <= hi for t in ticks), (lo, hi, ticks)
    assert [plain_number(v) for v in (1e-4, 0.001, 2.5, 40, 3e6)] == ["1e-4", "0.001", "2.5", "40", "3e6"]
