"""RoAd rows of the method parity matrix (see gen_methods.py for what each table means)."""

# RoAd: the three variants, group sizes (MLP: lin0 has 20 outputs, lin1 2; DeepMLP: 10 each), several
# adapters (their rotations apply in turn), merging into weight and bias, a layer without bias, the
# default targets by all-linear, modules_to_save, a random init. Mixed-adapter batches are checked in
# crates/peft-road/tests/behaviour.rs (the method harness has no mixed-batch section).
CASES = [
    dict(name="road_mlp", method="ROAD", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], group_size=2)}),
    dict(name="road_2_regex", method="ROAD", model="MLP", adapters={"default": dict(target_modules=r"lin0", variant="road_2", group_size=4)}),
    dict(name="road_4", method="ROAD", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], variant="road_4", group_size=2)}),
    dict(name="road_1_group_10", method="ROAD", model="MLP", adapters={"default": dict(target_modules=["lin0"], group_size=10)}),
    dict(name="road_4_group_20", method="ROAD", model="MLP", adapters={"default": dict(target_modules=["lin0"], variant="road_4", group_size=20)}),
    dict(name="road_deep", method="ROAD", model="DeepMLP", adapters={"default": dict(target_modules=["lin0", "lin1"], variant="road_2", group_size=10)}),
    dict(name="road_all_linear", method="ROAD", model="DeepMLP", adapters={"default": dict(target_modules="all-linear", group_size=2)}),
    # The ConvNet's linear head (72 -> 2); its convolutions are not targeted.
    dict(name="road_convnet_head", method="ROAD", model="ConvNet", adapters={"default": dict(target_modules=["lin"], variant="road_4", group_size=2)}),
    dict(name="road_emb_mlp", method="ROAD", model="EmbMLP", adapters={"default": dict(target_modules=["lin0", "lin1"], variant="road_2", group_size=2)}),
    dict(
        name="road_two_active",
        method="ROAD",
        model="MLP",
        adapters={
            "alpha": dict(target_modules=["lin0", "lin1"], group_size=2),
            "beta": dict(target_modules=["lin0"], variant="road_4", group_size=4),
        },
        active=["alpha", "beta"],
    ),
    dict(
        name="road_second_active",
        method="ROAD",
        model="MLP",
        adapters={
            "alpha": dict(target_modules=["lin0"], group_size=2),
            "beta": dict(target_modules=["lin0", "lin1"], variant="road_2", group_size=2),
        },
        active=["beta"],
    ),
    dict(
        name="road_modules_to_save",
        method="ROAD",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0"], variant="road_2", group_size=4, modules_to_save=["lin1"])},
    ),
    dict(
        name="road_random_init",
        method="ROAD",
        model="MLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin0", "lin1"], group_size=2, init_weights=False)},
    ),
]

# Same-seed initialisation: base model and adapter created under torch.manual_seed(0).
INIT_CASES = [
    dict(name="road_default", method="ROAD", model="MLP", config=dict(target_modules=["lin0", "lin1"], group_size=2)),
    dict(name="road_random", method="ROAD", model="MLP", config=dict(target_modules=["lin0", "lin1"], group_size=2, variant="road_4", init_weights=False)),
    dict(name="road_random_deep", method="ROAD", model="DeepMLP", config=dict(target_modules="all-linear", group_size=2, variant="road_2", init_weights=False)),
]

# Training: the same optimizer steps in PEFT and in Rust (dropout of the test models active).
TRAIN_CASES = [
    dict(name="road_sgd", method="ROAD", model="MLP", optimizer="sgd", lr=0.5, steps=5,
         config=dict(target_modules=["lin0", "lin1"], group_size=2)),
    dict(name="road_4_adamw", method="ROAD", model="DeepMLP", optimizer="adamw", lr=0.01, steps=4,
         config=dict(target_modules=["lin0", "out"], variant="road_4", group_size=2)),
]

# adapter_config.json files written by PEFT.
CONFIG_CASES = [
    dict(name="road_defaults", method="ROAD", kwargs=dict()),
    dict(
        name="road_full",
        method="ROAD",
        kwargs=dict(
            variant="road_4",
            group_size=32,
            init_weights=False,
            target_modules=["q_proj", "v_proj"],
            modules_to_save=["score"],
            task_type="SEQ_CLS",
            base_model_name_or_path="org/llama",
        ),
    ),
    dict(name="road_regex", method="ROAD", kwargs=dict(target_modules=r".*\.(q|v)_proj", variant="road_2")),
]
