"""TinyLoRA rows of the method parity matrix (see gen_methods.py for what each table means)."""

# TinyLoRA: frozen truncated-SVD factors (tinylora_A / tinylora_B) and seeded projections (tinylora_P, one
# generator per layer seeded with projection_seed + the layer's index) per layer, and the trained vectors
# shared per weight_tying group, saved once as base_model.tinylora_v.<group>. Rows cover nn.Linear, GPT-2's
# Conv1D and nn.Embedding, the rank capped by small layers, every grouping shape (none, half, uneven, full),
# projections saved or drawn again, layer selection, bias and modules_to_save, and several adapters (the
# second on layers the first already wraps: PEFT seeds its projections with the first adapter's layer
# index, and every layer's status lists every adapter's vectors).
TINYLORA = dict(method="TINYLORA")
CASES = [
    dict(TINYLORA, name="tinylora_mlp", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], u=4)}),
    dict(
        TINYLORA,
        name="tinylora_tied_half",
        model="DeepMLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], u=3, weight_tying=0.5, projection_seed=7)},
    ),
    # 9 layers, weight_tying 0.5: round(4.5) = 4 groups of 2, the last one takes 3.
    dict(
        TINYLORA,
        name="tinylora_tied_uneven",
        model="DeepMLP",
        adapters={"default": dict(target_modules=["lin0", "lin1", "out"], u=2, weight_tying=0.5, r=3)},
    ),
    dict(
        TINYLORA,
        name="tinylora_tied_full",
        model="DeepMLP",
        adapters={"default": dict(target_modules="all-linear", u=5, weight_tying=1.0, tinylora_dropout=0.1)},
    ),
    dict(TINYLORA, name="tinylora_conv1d", model="MLPConv1D", adapters={"default": dict(target_modules=["c_fc", "c_proj"], u=3)}),
    dict(
        TINYLORA,
        name="tinylora_embedding",
        model="EmbMLP",
        adapters={"default": dict(target_modules=["emb", "lin0", "lin1"], u=4, r=3, weight_tying=0.4, tinylora_dropout=0.2)},
    ),
    # r larger than lin1's smaller side (2): its factors are rank 2.
    dict(TINYLORA, name="tinylora_rank_cap", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], r=4, u=2)}),
    dict(
        TINYLORA,
        name="tinylora_no_saved_projection",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], u=3, save_projection=False, projection_seed=11)},
    ),
    dict(
        TINYLORA,
        name="tinylora_layers",
        model="DeepMLP",
        adapters={"default": dict(target_modules=["lin0"], u=3, layers_to_transform=[0, 2], layers_pattern="layers")},
    ),
    dict(TINYLORA, name="tinylora_bias", model="MLP", adapters={"default": dict(target_modules=["lin0"], u=3, bias="tinylora_only")}),
    dict(
        TINYLORA,
        name="tinylora_modules_to_save",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0"], u=3, modules_to_save=["lin1"])},
    ),
    dict(
        TINYLORA,
        name="tinylora_uniform_init",
        model="DeepMLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin0", "out"], u=6, init_weights="uniform", init_v_bound=0.5)},
    ),
    dict(
        TINYLORA,
        name="tinylora_two_active",
        model="MLP",
        adapters={
            "first": dict(target_modules=["lin0", "lin1"], u=3),
            "second": dict(target_modules=["lin0", "lin1"], u=2, weight_tying=1.0, projection_seed=3),
        },
        active=["first", "second"],
    ),
    # The second adapter on fewer layers, which the first already wraps.
    dict(
        TINYLORA,
        name="tinylora_two_disjoint",
        model="DeepMLP",
        adapters={
            "alpha": dict(target_modules=["lin0", "out"], u=2),
            "gamma": dict(target_modules=["lin0"], u=3, r=1, weight_tying=0.5),
        },
        active=["gamma", "alpha"],
    ),
    # Projections drawn again on load: the second adapter's layers that the first wraps are seeded with
    # the first adapter's layer index (PEFT's `_layer_idx` stays the wrapping adapter's); `out` is new.
    dict(
        TINYLORA,
        name="tinylora_two_seeded",
        model="DeepMLP",
        adapters={
            "alpha": dict(target_modules=["lin1"], u=2, save_projection=False, projection_seed=5),
            "beta": dict(target_modules=["lin0", "lin1", "out"], u=3, save_projection=False, weight_tying=1.0),
        },
        active=["beta", "alpha"],
    ),
]

# Same-seed initialisation: base model and adapter created under torch.manual_seed(0).
INIT_CASES = [
    dict(TINYLORA, name="tinylora_default", model="MLP", config=dict(target_modules=["lin0", "lin1"])),
    dict(
        TINYLORA,
        name="tinylora_uniform_tied",
        model="DeepMLP",
        config=dict(target_modules="all-linear", u=7, weight_tying=0.5, init_weights="uniform", init_v_bound=0.1, projection_seed=-3),
    ),
    dict(TINYLORA, name="tinylora_conv1d", model="MLPConv1D", config=dict(target_modules=["c_fc", "c_proj"], r=3, u=4)),
    dict(
        TINYLORA,
        name="tinylora_embedding",
        model="EmbMLP",
        config=dict(target_modules=["emb", "lin1"], u=5, init_weights="uniform", save_projection=False),
    ),
    dict(TINYLORA, name="tinylora_bias_all", model="MLP", config=dict(target_modules=["lin0"], u=2, bias="all")),
]

# A few optimizer steps from a saved initial adapter (the test models' dropout active).
TRAIN_CASES = [
    dict(TINYLORA, name="tinylora_sgd", model="MLP", optimizer="sgd", lr=0.1, steps=5, config=dict(target_modules=["lin0", "lin1"], u=4)),
    dict(
        TINYLORA,
        name="tinylora_tied_adamw",
        model="DeepMLP",
        optimizer="adamw",
        lr=0.01,
        steps=4,
        config=dict(target_modules=["lin0", "lin1", "out"], u=3, weight_tying=0.5, tinylora_dropout=0.1),
    ),
    dict(
        TINYLORA,
        name="tinylora_embedding_adamw",
        model="EmbMLP",
        optimizer="adamw",
        lr=0.01,
        steps=3,
        config=dict(target_modules=["emb", "lin0"], u=4, weight_tying=1.0, tinylora_dropout=0.1),
    ),
]

# adapter_config.json files written by PEFT, parsed and written back byte for byte.
CONFIG_CASES = [
    dict(TINYLORA, name="tinylora_defaults", kwargs=dict()),
    dict(
        TINYLORA,
        name="tinylora_full",
        kwargs=dict(
            r=4,
            u=13,
            weight_tying=1,
            projection_seed=0,
            save_projection=False,
            init_v_bound=0.5,
            target_modules=["q_proj", "v_proj"],
            tinylora_dropout=0.05,
            fan_in_fan_out=True,
            bias="tinylora_only",
            modules_to_save=["score"],
            init_weights="uniform",
            layers_to_transform=[0, 1],
            layers_pattern="layers",
            task_type="CAUSAL_LM",
            base_model_name_or_path="org/llama",
            inference_mode=True,
        ),
    ),
    dict(TINYLORA, name="tinylora_regex", kwargs=dict(target_modules=r".*\.(q|v)_proj", init_weights=False, weight_tying=0.25)),
]
