"""FROD rows of the method parity matrix (see gen_methods.py for what each table means)."""

# FRoD on nn.Linear and GPT-2's Conv1D: the joint decomposition of each module category (the SVD branch
# when a category stacks fewer rows than columns — MLP's lin1, 2 x 20 — and the QR / eigh branch
# otherwise), the shared sparse positions at several sparse_rate values (zero: no S at all), categories
# spanning blocks (DeepMLP's lin0 / lin1 over four blocks, `out` by its position), layer selection,
# projections decomposed again on load (save_projection=False), several adapters (active together: the
# base runs and each adapter adds its adapted output minus the base's), dropout, a random init, bias
# and modules_to_save.
FROD = dict(method="FROD")
CASES = [
    dict(FROD, name="frod_mlp", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"])}),
    dict(
        FROD,
        name="frod_dense_sparse",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], sparse_rate=0.3, projection_prng_key=7)},
    ),
    dict(FROD, name="frod_no_sparse", model="MLP", adapters={"default": dict(target_modules=["lin0"], sparse_rate=0.0)}),
    dict(
        FROD,
        name="frod_deep",
        model="DeepMLP",
        adapters={"default": dict(target_modules=["lin0", "lin1", "out"], sparse_rate=0.2, regularization_alpha=0.05)},
    ),
    dict(
        FROD,
        name="frod_deep_layers",
        model="DeepMLP",
        adapters={"default": dict(target_modules=["lin0"], sparse_rate=0.1, layers_to_transform=[1, 3], layers_pattern="layers")},
    ),
    dict(
        FROD,
        name="frod_conv1d",
        model="MLPConv1D",
        adapters={"default": dict(target_modules=["c_fc", "c_proj"], sparse_rate=0.1, fan_in_fan_out=True)},
    ),
    dict(
        FROD,
        name="frod_no_saved_projection",
        model="DeepMLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], sparse_rate=0.1, save_projection=False, projection_prng_key=3)},
    ),
    dict(
        FROD,
        name="frod_two_active",
        model="MLP",
        adapters={
            "first": dict(target_modules=["lin0", "lin1"], sparse_rate=0.1),
            "second": dict(target_modules=["lin0"], sparse_rate=0.05),
        },
        active=["second", "first"],
    ),
    dict(
        FROD,
        name="frod_second_inactive",
        model="DeepMLP",
        adapters={
            "alpha": dict(target_modules=["lin0", "out"], sparse_rate=0.1),
            "gamma": dict(target_modules=["lin1"], sparse_rate=0.2),
        },
    ),
    # The second adapter meets `lin0` (shared with the first: PEFT copies the first adapter's tensors under
    # the new name) before `lin1`, which no adapter has: PEFT then decomposes every category of the second
    # config under its name, replacing the copied `lin0` entry.
    dict(
        FROD,
        name="frod_second_adds_category",
        model="DeepMLP",
        adapters={
            "a": dict(target_modules=["lin0"], sparse_rate=0.1),
            "b": dict(target_modules=["lin0", "lin1"], sparse_rate=0.1),
        },
        active=["a", "b"],
    ),
    dict(
        FROD,
        name="frod_two_dropout",
        model="MLP",
        adapters={
            "a": dict(target_modules=["lin0"], sparse_rate=0.1, frod_dropout=0.3),
            "b": dict(target_modules=["lin0"], sparse_rate=0.1),
        },
        active=["a", "b"],
    ),
    dict(FROD, name="frod_dropout", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], frod_dropout=0.2)}),
    dict(
        FROD,
        name="frod_random_init",
        model="MLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin0", "lin1"], sparse_rate=0.2, init_weights=False)},
    ),
    dict(FROD, name="frod_bias", model="MLP", adapters={"default": dict(target_modules=["lin0"], bias="frod_only")}),
    dict(
        FROD,
        name="frod_modules_to_save",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0"], sparse_rate=0.1, modules_to_save=["lin1"])},
    ),
]

# Same-seed initialisation: base model and adapter created under torch.manual_seed(0).
INIT_CASES = [
    dict(FROD, name="frod_default", model="MLP", config=dict(target_modules=["lin0", "lin1"])),
    dict(FROD, name="frod_init_deep", model="DeepMLP", config=dict(target_modules=["lin0", "lin1", "out"], sparse_rate=0.2)),
    dict(FROD, name="frod_init_random", model="MLP", config=dict(target_modules=["lin0", "lin1"], init_weights=False, sparse_rate=0.1)),
    dict(FROD, name="frod_init_conv1d", model="MLPConv1D", config=dict(target_modules=["c_fc", "c_proj"], sparse_rate=0.1)),
    dict(FROD, name="frod_init_bias_all", model="MLP", config=dict(target_modules=["lin0"], bias="all")),
]

# A few optimizer steps from a saved initial adapter.
TRAIN_CASES = [
    dict(FROD, name="frod_train", model="MLP", optimizer="sgd", lr=0.5, steps=5, config=dict(target_modules=["lin0", "lin1"], sparse_rate=0.2)),
    dict(FROD, name="frod_train_deep", model="DeepMLP", optimizer="adamw", lr=0.01, steps=4, config=dict(target_modules=["lin0", "out"], sparse_rate=0.1)),
    dict(FROD, name="frod_train_conv1d", model="MLPConv1D", optimizer="adamw", lr=0.01, steps=3, config=dict(target_modules=["c_fc", "c_proj"], sparse_rate=0.1)),
    dict(FROD, name="frod_train_dropout", model="MLP", optimizer="sgd", lr=0.3, steps=4, config=dict(target_modules=["lin0", "lin1"], sparse_rate=0.1, frod_dropout=0.1)),
]

# adapter_config.json files written by PEFT, parsed and written back byte for byte.
CONFIG_CASES = [
    dict(FROD, name="frod_config_default", kwargs=dict(target_modules=["q_proj", "v_proj"])),
    dict(
        FROD,
        name="frod_config_full",
        kwargs=dict(
            target_modules=["lin0"],
            projection_prng_key=42,
            save_projection=False,
            frod_dropout=0.1,
            bias="frod_only",
            modules_to_save=["lin1"],
            init_weights=False,
            layers_to_transform=[0, 1],
            layers_pattern="layers",
            sparse_rate=0.5,
            regularization_alpha=0.01,
            progressbar=False,
            runtime_offload_base_weight=True,
        ),
    ),
]
