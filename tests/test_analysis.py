"""Analyses on tiny trained models: saliency, PGD sweeps, norms, the HTML report (and a real browser)."""

import csv
import shutil
import warnings

import numpy as np
import pytest
import torch

from scs_probe.analysis import RobustnessConfig, SaliencyConfig, entropy, gini
from scs_probe.analysis.robustness import area_under_curve, robust_accuracy
from scs_probe.analysis.saliency import deletion_areas, deletion_curve
from scs_probe.cli import main
from scs_probe.cli_types import EpsList, EpsRange
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


def test_pgd_lowers_accuracy_and_eps0_is_clean(sweep_dir):
    from scs_probe.analysis.sources import load_models
    m = load_models([RunDir(sweep_dir / "conv")], "cpu")[0]
    data = torch.rand(64, 3, 32, 32)
    with torch.no_grad():
        y = m.model(data).argmax(1)  # all correct by construction
    assert robust_accuracy(m.model, data, y, 0.0) == 1.0
    assert robust_accuracy(m.model, data, y, 16 / 255, steps=5) < 1.0


def test_saliency_command(sweep_dir, fake_cifar, tmp_path, capsys):
    out = tmp_path / "sal"
    code = main(["saliency", "--sweep", str(sweep_dir), "--n-images", "5", "--data-dir", str(fake_cifar),
                 "--out", str(out), "--device", "cpu", "--deletion-steps", "4"])
    assert code == 0, capsys.readouterr().err
    per_image = rows(out / "saliency.csv")
    assert len(per_image) == 10 and {r["model"] for r in per_image} == {"rohrer100k-conv-relu-max",
                                                                        "rohrer100k-scs-none-maxabs"}
    assert all(0 <= float(r["sparseness"]) <= 1 and float(r["complexity"]) > 0 for r in per_image)
    # the same images for every model
    imgs = [[r["image_index"] for r in per_image if r["model"] == m] for m in {r["model"] for r in per_image}]
    assert imgs[0] == imgs[1]
    assert len(rows(out / "deletion.csv")) == 2 * 5
    maps = np.load(out / "saliency_maps.npz")
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
    assert all(0 <= float(c["large_eps_acc"]) <= 1 and c["pgd_2x_steps_acc"] != "" for c in checks)
    scs_check = next(c for c in checks if "scs" in c["model"])
    assert scs_check["transfer_from"] == "rohrer100k-conv-relu-max"  # the conv twin's examples, tried on SCS
    per_image = np.load(out / "pgd_per_image.npz")
    assert per_image["robust"].shape == (4, 3, 32) and per_image["robust"].dtype == bool
    assert len(result) == 2 * 2 * 3
    pgd_rows = [r for r in result if r["attack"] == "pgd"]
    for model in {r["model"] for r in pgd_rows}:
        accs = [float(r["robust_acc"]) for r in pgd_rows if r["model"] == model]
        assert accs[0] >= accs[-1]
    assert float(pgd_rows[1]["alpha"]) == pytest.approx(2.5 * (4 / 255) / 3, rel=1e-4)
    summary = rows(out / "pgd_summary.csv")
    assert {r["attack"] for r in summary} == {"pgd", "square"} and all(0 <= float(r["auc"]) <= 1 for r in summary)
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
                 ["pgd", "--ckpt", str(tmp_path / "foreign.pt"), "--eps", "0"],
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
    assert "0.8032 (table1)" in html and 'experiment "initial" for every row' in html and "(table6)" not in html
    assert "The study's claims" in html and html.count('<td class="l">SCS ') == 5
    import re
    verdicts = re.findall(r'<td class="l (supported|contradicted|inconclusive|not tested)">', html)
    assert len(verdicts) == 5, verdicts
    assert "Randomisation" in html and "masking" in html
    assert "Fixed-p search (Optuna)" in html and "2 complete, 0 pruned, 0 failed trials" in html
    assert re.search(r"Best: trial [01], p = [0-9.]+", html)
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
