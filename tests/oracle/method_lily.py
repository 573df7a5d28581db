"""LiLy rows of the method parity matrix (see gen_methods.py for what each table means)."""

# LiLy on nn.Linear (PEFT refuses Conv1D and every other layer type). PEFT cannot merge LiLy, so no row
# merges. The rows cover the sharing PEFT's _post_injection_hook sets up — lily_A per run of stride_A
# layers of one target and shape, lily_B per target and shape, a regex grouping by shape alone —, the
# router's batch-mean mixture of num_B experts, scaling, layer selection, modules_to_save and two active
# adapters.
LILY = dict(method="LILY", merge=False)
CASES = [
    dict(LILY, name="lily_mlp", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], r=4)}),
    dict(
        LILY,
        name="lily_deep_stride",
        model="DeepMLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=2, stride_A=3, num_B=3)},
    ),
    dict(
        LILY,
        name="lily_regex_by_shape",
        model="DeepMLP",
        adapters={"default": dict(target_modules=r"layers\.\d\.lin\d|out", r=3, stride_A=2, num_B=4, scaling=0.5)},
    ),
    dict(
        LILY,
        name="lily_selection",
        model="DeepMLP",
        adapters={
            "default": dict(
                target_modules=["lin0", "lin1"],
                layers_to_transform=[1, 2, 3],
                layers_pattern="layers",
                exclude_modules=["layers.2.lin1"],
                modules_to_save=["layers.0.lin1"],
                r=2,
                stride_A=2,
            )
        },
    ),
    dict(
        LILY,
        name="lily_two_active",
        model="MLP",
        adapters={
            "alpha": dict(target_modules=["lin0", "lin1"], r=2),
            "beta": dict(target_modules=["lin0"], r=3, num_B=3, scaling=2.0),
        },
        active=["beta", "alpha"],
    ),
    dict(
        LILY,
        name="lily_random_init",
        model="DeepMLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin1", "out"], r=2, stride_A=2, init_weights=False)},
    ),
]

# Same-seed initialisation: base model and adapter created under torch.manual_seed(0) (every layer draws
# its own factors, then the shared ones replace them).
INIT_CASES = [
    dict(method="LILY", name="lily_default", model="MLP", config=dict(target_modules=["lin0", "lin1"], r=4)),
    dict(method="LILY", name="lily_deep_stride", model="DeepMLP", config=dict(target_modules=["lin0", "lin1", "out"], r=2, stride_A=3, num_B=3)),
    dict(method="LILY", name="lily_random_regex", model="DeepMLP", config=dict(target_modules=r".*lin0", r=2, stride_A=2, num_B=2, init_weights=False)),
]

# Training: the same optimizer steps in PEFT and in Rust (shared factors gather every layer's gradient).
TRAIN_CASES = [
    dict(method="LILY", name="lily_sgd", model="MLP", optimizer="sgd", lr=0.1, steps=5, config=dict(target_modules=["lin0", "lin1"], r=2)),
    dict(
        method="LILY",
        name="lily_shared_adamw",
        model="DeepMLP",
        optimizer="adamw",
        lr=0.01,
        steps=4,
        config=dict(target_modules=["lin0", "lin1"], r=2, stride_A=2, num_B=3, scaling=0.5),
    ),
]

# adapter_config.json files written by PEFT.
CONFIG_CASES = [
    dict(name="lily_defaults", method="LILY", kwargs=dict()),
    dict(
        name="lily_full",
        method="LILY",
        kwargs=dict(
            r=16,
            stride_A=4,
            num_B=3,
            scaling=0.1,
            target_modules=["q_proj", "v_proj"],
            exclude_modules=["layers.0.self_attn.q_proj"],
            modules_to_save=["score"],
            layers_to_transform=[0, 1, 2],
            layers_pattern="layers",
            init_weights=False,
            task_type="SEQ_CLS",
            base_model_name_or_path="org/llama",
            inference_mode=True,
        ),
    ),
    dict(name="lily_regex", method="LILY", kwargs=dict(target_modules=r".*\.(q|v)_proj", r=8)),
]
