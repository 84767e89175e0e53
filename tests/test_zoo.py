"""Zoo: true parameter counts (REFERENCE.md section 3), shared initial weights, validation, grids."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import scs_probe.zoo.external  # with every model module: the fully imported zoo
from scs_probe.errors import OptionError
from scs_probe.layers import MaxAbsPool2d, SharpenedCosineSimilarity2d, SharpenedSDP2d
from scs_probe.zoo import (
    AXES,
    Variant,
    axis_choices,
    build_model,
    count_params,
    get_arch,
    list_archs,
    resnet,
    rohrer,
    variant_grid,
)
from scs_probe.zoo.registry import entry_point

SCS_COUNTS = {"rohrer25k": 24_974, "rohrer47k": 47_653, "rohrer68k": 68_029, "rohrer100k": 113_741,
              "rohrer583k": 629_933}


@pytest.mark.parametrize("arch,count", SCS_COUNTS.items())
def test_rohrer_scs_parameter_counts(arch, count):
    model = build_model(arch, layer="scs", activation="none", pool="maxabs")
    assert count_params(model) == count == get_arch(arch).params_scs
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    # conv variants swap each SCS (weights + p + q) for a Conv2d with bias
    n_layers = sum(isinstance(m, SharpenedCosineSimilarity2d) for m in model.modules())
    assert count_params(build_model(arch, layer="conv", activation="relu")) == count - n_layers


def test_stated_counts_are_known():
    assert get_arch("rohrer25k").stated_params == 25_214
    assert get_arch("rohrer583k").stated_params == 583_843


@pytest.mark.parametrize("arch,count", [("resnet18", 11_181_642), ("resnet20", 269_722)])
def test_resnet_conv_parameter_counts(arch, count):
    model = build_model(arch, layer="conv", activation="relu", pool="max", norm="bn")
    assert count_params(model) == count == get_arch(arch).params_conv
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    scs = build_model(arch, layer="scs", activation="none", pool="maxabs", norm="bn")
    # every Conv2d becomes SCS: + one p per output channel + one q per layer
    assert count_params(scs) == count + sum(c.out_channels + 1 for c in convs)
    assert not any(isinstance(m, torch.nn.Conv2d) for m in scs.modules())


def test_resnet18_variants_swap_parts():
    m = build_model("resnet18", layer="sdp", activation="none", pool="maxabs", norm="none")
    mods = list(m.modules())
    assert any(isinstance(x, SharpenedSDP2d) for x in mods)
    assert not any(isinstance(x, (torch.nn.ReLU, torch.nn.BatchNorm2d)) for x in mods)
    assert isinstance(m.net.maxpool, MaxAbsPool2d)
    assert m(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_resnet20_forward_and_no_pooling_axis():
    m = build_model("resnet20", layer="scs", activation="relu", norm="bn")
    assert m.variant.pool == "none"
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("arch", ["rohrer25k", "rohrer100k", "resnet20", "resnet18"])
def test_variants_share_initial_weights(arch):
    spec = get_arch(arch)
    norm = spec.axes["norm"][0]
    a = build_model(arch, layer="conv", activation="relu", pool="max", norm=norm, seed=3).state_dict()
    b = build_model(arch, layer="scs", activation="none", pool="maxabs", norm=norm, seed=3).state_dict()
    c = build_model(arch, layer="sdp", activation="none", pool="max", norm=norm, seed=3).state_dict()
    shared = set(a) & set(b)
    assert any(k.endswith("conv1.weight") for k in shared)
    for k in shared:
        assert torch.equal(a[k], b[k]), k
    for k in set(b) & set(c):  # p is shared by the sharpened variants
        assert torch.equal(b[k], c[k]), k
    other = build_model(arch, layer="conv", activation="relu", pool="max", norm=norm, seed=4).state_dict()
    weights = [k for k in shared if k.endswith("weight") and a[k].dim() > 1]
    assert not torch.equal(a[weights[0]], other[weights[0]])


def test_unknown_values_name_the_allowed_ones():
    with pytest.raises(OptionError, match="allowed: .*rohrer100k"):
        build_model("vgg16")
    with pytest.raises(ValueError, match="allowed: conv, scs, sdp"):
        build_model("rohrer100k", layer="linear")
    with pytest.raises(ValueError, match="allowed: relu, none"):
        build_model("rohrer100k", activation="gelu")
    with pytest.raises(ValueError, match="rohrer100k has no norm 'bn'"):
        build_model("rohrer100k", norm="bn")
    with pytest.raises(OptionError, match="image_size") as e:
        build_model("rohrer100k", image_size=224)
    assert e.value.option == "image_size"
    with pytest.raises(OptionError, match="fixed_p"):
        Variant("rohrer100k", layer="conv", fixed_p=2.0)
    with pytest.raises(TypeError):
        build_model(Variant("rohrer100k"), layer="conv")  # one carrier: a Variant, or a name with axes


def test_choice_lists_come_from_the_registry():
    """Every axis value some architecture (or a model from elsewhere: keep) has, and only those: the CLI's
    choices are these."""
    assert axis_choices("layer") == ("conv", "scs", "sdp")
    assert axis_choices("pool") == ("max", "maxabs", "none", "keep")
    assert axis_choices("activation") == ("relu", "none", "keep")
    assert axis_choices("image_size") == (32, 224)
    assert set(axis_choices("norm")) == {"bn", "none", "keep"}


def test_resnet20_records_no_pooling():
    assert Variant("resnet20", pool="max").pool == "none"
    assert Variant("resnet20") == Variant("resnet20", pool="maxabs")


def test_study_grid_follows_paper_tables():
    names = {v.name for v in variant_grid("rohrer100k", "study")}
    assert "rohrer100k-conv-none-maxabs" in names            # table 1
    assert "rohrer100k-sdp-relu-max" in names                # table 6
    assert "rohrer100k-conv-relu-max" in names
    assert len(names) == 12
    r18 = variant_grid("resnet18", "study")
    assert {v.image_size for v in r18} == {32, 224}
    assert len(variant_grid("rohrer100k", "full")) == 12
    assert len(variant_grid("resnet18", "full")) == 3 * 2 * 2 * 2 * 2
    assert set(list_archs()) == {"rohrer25k", "rohrer47k", "rohrer68k", "rohrer100k", "rohrer583k", "resnet18",
                                 "resnet20"}


def test_variant_names_roundtrip():
    v = Variant("resnet18", "conv", "relu", "max", "bn", 224)
    assert v.name == "resnet18-conv-relu-max-bn-224px"
    assert type(v).from_dict(v.to_dict()) == v


def test_rohrer_pools_before_activation_so_maxabs_differs_from_max():
    """ReLU first would make every value >= 0 and MaxAbsPool2d identical to MaxPool2d (no study effect)."""
    x = torch.rand(4, 3, 32, 32)
    a = build_model("rohrer100k", layer="conv", activation="relu", pool="max")
    b = build_model("rohrer100k", layer="conv", activation="relu", pool="maxabs")
    names = [n for n, _ in a.named_children()]
    assert names.index("pool1") < names.index("act1")
    assert not torch.allclose(a(x), b(x))


@pytest.mark.parametrize("arch", ["resnet18", "resnet20"])
def test_sharpened_resnets_without_batchnorm_train_with_relu(arch):
    """ReLU right after a sharpened layer (no BatchNorm between) must not overwrite what its backward needs."""
    model = build_model(arch, layer="scs", activation="relu", norm="none")
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


# what the command line lists before any model is built: the values and order it had when the zoo imported torch
ARCHS = ["rohrer25k", "rohrer47k", "rohrer68k", "rohrer100k", "rohrer583k", "resnet18", "resnet20"]
CHOICES = {"layer": ["conv", "scs", "sdp"], "activation": ["relu", "none", "keep"],
           "pool": ["max", "maxabs", "none", "keep"], "norm": ["none", "bn", "keep"], "image_size": [32, 224]}
LISTING = """
import json, sys
from scs_probe.zoo import AXES, Variant, axis_choices, get_arch, list_archs
from scs_probe.zoo.registry import axis_choices as choices_of_the_registry, list_archs as archs_of_the_registry
Variant("rohrer100k", layer="conv", activation="relu", pool="max")
assert archs_of_the_registry() == list_archs() and all(choices_of_the_registry(a) == axis_choices(a) for a in AXES)
print(json.dumps({"archs": list_archs(), "choices": {a: axis_choices(a) for a in AXES},
                  "presets": {n: [get_arch(n).epochs, get_arch(n).batch_size, get_arch(n).max_lr]
                              for n in list_archs()},
                  "torch": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "numpy"))}))
"""


def test_architectures_and_axis_values_are_listed_without_importing_torch():
    root = str(Path(scs_probe.zoo.__file__).parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", LISTING], capture_output=True, text=True, env=env, check=True)
    listed = json.loads(out.stdout)
    assert listed["torch"] == []
    assert listed["archs"] == list_archs() == ARCHS
    assert listed["choices"] == {a: list(axis_choices(a)) for a in AXES} == CHOICES
    assert listed["presets"] == {n: [get_arch(n).epochs, get_arch(n).batch_size, get_arch(n).max_lr] for n in ARCHS}


def test_builtin_builders_are_the_models_functions():
    """The torch-free table names each builder as "module:function": every one exists, in the module that builds
    its family."""
    for name in list_archs():
        spec = get_arch(name)
        assert spec.builder == f"scs_probe.zoo.{spec.family}:{name}"
        assert entry_point(spec.builder) is getattr({"rohrer": rohrer, "resnet": resnet}[spec.family], name)


def test_the_zoo_imports_in_one_direction_and_never_inside_a_function():
    """No import circle among the zoo's modules, and no import inside a function but optional timm's."""
    root = Path(scs_probe.zoo.__file__).parent
    edges, local = {}, []
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        edges[path.stem] = {alias.name if node.module is None else node.module.split(".")[0]
                            for node in tree.body if isinstance(node, ast.ImportFrom) and node.level == 1
                            for alias in (node.names if node.module is None else [None])}
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                local += [(path.stem, n.names[0].name if isinstance(n, ast.Import) else n.module)
                          for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert local == [("external", "timm")]
    order, seen = [], set()

    def visit(module, stack):
        assert module not in stack, f"import circle: {' -> '.join([*stack, module])}"
        if module not in seen:
            for target in sorted(edges.get(module, ())):
                visit(target, (*stack, module))
            seen.add(module)
            order.append(module)
    for module in sorted(edges):
        visit(module, ())
    assert order.index("axes") < order.index("registry") < min(order.index(m) for m in ("variants", "external"))
    assert not edges["registry"] - {"axes", "builtin"} and not edges["builtin"] and not edges["axes"]
