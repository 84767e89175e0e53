"""What scs-probe's zoo ships, declared without importing it: the study's architectures (names, axes, presets,
parameter counts) and the resolvers of models from elsewhere. Each builder and resolver is an entry point,
"package.module:function", imported when first used, so that listing the architectures and their axis values
(the CLI's choices and its help) imports no torch. A data table: it imports nothing; the registry reads it."""

ROHRER_AXES = {"layer": ("conv", "scs", "sdp"), "activation": ("relu", "none"), "pool": ("max", "maxabs"),
               "norm": ("none",), "image_size": (32,)}
_GALLERY = dict(family="rohrer", axes=ROHRER_AXES, epochs=800, augment="crop")
_RESNET = dict(family="resnet", batch_size=128, max_lr=0.01, epochs=200)

# name -> ArchSpec's fields; the builders live in `rohrer` (the five scs-gallery models) and `resnet`
ARCHITECTURES = {
    "rohrer25k": dict(builder="scs_probe.zoo.rohrer:rohrer25k", paper_name="Rohrer25K", params_scs=24_974,
                      stated_params=25_214, batch_size=64, max_lr=0.05, source="scs-gallery cifar10_80_25214.py",
                      label_smoothing=0.05, **{**_GALLERY, "augment": "affine"}),
    "rohrer47k": dict(builder="scs_probe.zoo.rohrer:rohrer47k", paper_name="Rohrer47K", params_scs=47_653,
                      stated_params=47_643, batch_size=64, max_lr=0.05, source="scs-gallery cifar10_80_47643.py",
                      **_GALLERY),
    "rohrer68k": dict(builder="scs_probe.zoo.rohrer:rohrer68k", paper_name="Rohrer68K", params_scs=68_029,
                      stated_params=68_000, batch_size=128, max_lr=0.01, source="scs-gallery model_cifar10_18_4.py",
                      **_GALLERY),
    "rohrer100k": dict(builder="scs_probe.zoo.rohrer:rohrer100k", paper_name="Rohrer100K", params_scs=113_741,
                       stated_params=100_000, batch_size=128, max_lr=0.05,
                       source="scs-gallery model_cifar10_15_9.py", **_GALLERY),
    "rohrer583k": dict(builder="scs_probe.zoo.rohrer:rohrer583k", paper_name="Rohrer583K", params_scs=629_933,
                       stated_params=583_843, batch_size=128, max_lr=0.05,
                       source="scs-gallery model_cifar10_12_9.py", **_GALLERY),
    "resnet18": dict(builder="scs_probe.zoo.resnet:resnet18", paper_name="ResNet18", params_conv=11_181_642,
                     stated_params=11_181_642, source="torchvision.models.resnet18(num_classes=10)",
                     axes={"layer": ("conv", "scs", "sdp"), "activation": ("relu", "none"),
                           "pool": ("max", "maxabs"), "norm": ("bn", "none"), "image_size": (32, 224)}, **_RESNET),
    "resnet20": dict(builder="scs_probe.zoo.resnet:resnet20", params_conv=269_722, stated_params=270_000,
                     source="He et al. 2016, CIFAR ResNet20 (option A)",
                     axes={"layer": ("conv", "scs", "sdp"), "activation": ("relu", "none"), "pool": ("none",),
                           "norm": ("bn", "none"), "image_size": (32,)},
                     study_grid_extra=({"layer": "conv", "activation": "relu", "norm": "bn"},
                                       {"layer": "scs", "activation": "none", "norm": "bn"},
                                       {"layer": "scs", "activation": "relu", "norm": "bn"}), **_RESNET),
}

ANY_MODULE = "*"  # the resolver prefix of every other spec: package.module:factory

# spec prefix -> (resolver, whether it imports code that the spec names). torchvision and timm look the name up
# in their own model registries (list_models, then get_model / create_model): a spec read from a file may name
# them. A package.module:factory imports that module and calls that function: only for specs the user trusts.
RESOLVERS = {
    "torchvision": ("scs_probe.zoo.external:torchvision_arch", False),
    "timm": ("scs_probe.zoo.external:timm_arch", False),
    ANY_MODULE: ("scs_probe.zoo.external:factory_arch", True),
}
