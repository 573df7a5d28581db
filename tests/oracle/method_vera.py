"""VeRA rows of the method parity matrix (see gen_methods.py for what each table means)."""

# VeRA: shared projections sized by the largest targeted layer (saved as base_model.vera_A / vera_B, or drawn
# again from projection_prng_key), GPT-2 Conv1D, layer selection, several adapters, bias and modules_to_save.
# (Several adapters target the same layers: PEFT's layer status lists every adapter's projections on every
# VeRA layer, even where the adapter is absent.)
CASES = [
    dict(name="vera_mlp", method="VERA", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], r=4)}),
    dict(
        name="vera_dropout_seed",
        method="VERA",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=6, vera_dropout=0.1, projection_prng_key=5, d_initial=0.5)},
    ),
    dict(
        name="vera_conv1d",
        method="VERA",
        model="MLPConv1D",
        adapters={"default": dict(target_modules=["c_fc", "c_proj"], r=4, fan_in_fan_out=True)},
    ),
    dict(
        name="vera_deep_layers",
        method="VERA",
        model="DeepMLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=4, layers_to_transform=[0, 2], layers_pattern="layers")},
    ),
    dict(
        name="vera_two_active",
        method="VERA",
        model="MLP",
        adapters={
            "first": dict(target_modules=["lin0", "lin1"], r=4),
            "second": dict(target_modules=["lin0", "lin1"], r=4, d_initial=0.3),
        },
        active=["first", "second"],
    ),
    # The second adapter on fewer layers: PEFT's shared projection BufferDict gives every layer's status a
    # device entry for both adapters.
    dict(
        name="vera_two_active_disjoint",
        method="VERA",
        model="DeepMLP",
        adapters={
            "alpha": dict(target_modules=["lin0", "out"], r=2),
            "gamma": dict(target_modules=["lin0"], r=2, d_initial=0.4),
        },
        active=["gamma", "alpha"],
    ),
    dict(
        name="vera_no_saved_projection",
        method="VERA",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=4, save_projection=False, projection_prng_key=11)},
    ),
    dict(name="vera_bias", method="VERA", model="MLP", adapters={"default": dict(target_modules=["lin0"], r=4, bias="vera_only")}),
    dict(
        name="vera_modules_to_save",
        method="VERA",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0"], r=4, modules_to_save=["lin1"])},
    ),
    dict(
        name="vera_random_init",
        method="VERA",
        model="DeepMLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin0", "out"], r=5, init_weights=False)},
    ),
]

INIT_CASES = [
    dict(name="vera_default", method="VERA", model="MLP", config=dict(target_modules=["lin0", "lin1"], r=4)),
    dict(name="vera_random", method="VERA", model="DeepMLP", config=dict(target_modules="all-linear", r=3, init_weights=False, projection_prng_key=3)),
    dict(name="vera_conv1d", method="VERA", model="MLPConv1D", config=dict(target_modules=["c_fc", "c_proj"], r=4)),
]

TRAIN_CASES = [
    dict(name="vera_sgd_dropout", method="VERA", model="MLP", optimizer="sgd", lr=0.5, steps=5,
         config=dict(target_modules=["lin0", "lin1"], r=4, vera_dropout=0.2)),
    dict(name="vera_conv1d_adamw", method="VERA", model="MLPConv1D", optimizer="adamw", lr=0.01, steps=4,
         config=dict(target_modules=["c_fc", "c_proj"], r=4, fan_in_fan_out=True)),
]

CONFIG_CASES = [
    dict(name="vera_defaults", method="VERA", kwargs=dict()),
    dict(
        name="vera_full",
        method="VERA",
        kwargs=dict(
            r=64,
            target_modules=["q_proj", "v_proj"],
            projection_prng_key=42,
            save_projection=False,
            vera_dropout=0.05,
            d_initial=0.2,
            bias="all",
            modules_to_save=["score"],
            init_weights=False,
            layers_to_transform=[0, 1],
            layers_pattern="layers",
            task_type="CAUSAL_LM",
        ),
    ),
]
