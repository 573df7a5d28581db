"""OFT rows of the method parity matrix (see gen_methods.py for what each table means)."""

# OFT: Linear (block size or r given, PEFT's adjustment to a divisor), the exact Cayley transform
# (linalg.solve) and Neumann series of several lengths, COFT (projection in and out of the ball), block
# sharing, Conv2d (3x3 with padding, 1x1, grouped: not mergeable in PEFT), Embedding, several adapters,
# layer selection, modules_to_save, biases, a random init.
CASES = [
    dict(name="oft_mlp", method="OFT", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], oft_block_size=5)}),
    dict(
        name="oft_mlp_r_regex",
        method="OFT",
        model="MLP",
        adapters={"default": dict(target_modules=r"lin\d", r=2, oft_block_size=0)},
    ),
    # Default oft_block_size=32 > in_features: adjusted per layer (lin0 -> 10, lin1 -> 20).
    dict(name="oft_default_block_size", method="OFT", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"])}),
    # r=3 divides neither 10 nor 20: adjusted to 2 on both.
    dict(name="oft_r_adjusted", method="OFT", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], r=3, oft_block_size=0)}),
    dict(
        name="oft_cayley_exact",
        method="OFT",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], oft_block_size=5, use_cayley_neumann=False)},
    ),
    dict(
        name="oft_neumann_2",
        method="OFT",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], oft_block_size=5, num_cayley_neumann_terms=2)},
    ),
    dict(
        name="oft_neumann_3",
        method="OFT",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], oft_block_size=10, num_cayley_neumann_terms=3)},
    ),
    dict(
        name="oft_neumann_8",
        method="OFT",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], oft_block_size=4, num_cayley_neumann_terms=8)},
    ),
    # eps=2: lin0's blocks (radius 2/sqrt(2)) lie partly inside the ball, lin1's (radius 1) are projected.
    dict(
        name="oft_coft",
        method="OFT",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], oft_block_size=5, coft=True, eps=2.0)},
    ),
    # atol: COFT rewrites the parameter with its projection at every use, and the projection is not
    # idempotent to the last bit (a projected block's norm rounds to just above eps, so the next use
    # rescales it by an ulp; the second projection is a fixed point). PEFT saves these cases after its
    # forward passes, so the file holds the fixed point while PEFT's first (unmerged) output used the first
    # projection: Rust, loading the file, computes that output from weights an ulp away. Every op is
    # PEFT's, and the cases above whose first projection is already a fixed point are bit-identical.
    dict(
        name="oft_coft_exact",
        method="OFT",
        model="MLP",
        atol=1e-6,
        adapters={
            "default": dict(target_modules=["lin0", "lin1"], r=2, oft_block_size=0, coft=True, eps=1.5, use_cayley_neumann=False)
        },
    ),
    dict(
        name="oft_block_share",
        method="OFT",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], oft_block_size=5, block_share=True)},
    ),
    dict(
        name="oft_block_share_coft",
        method="OFT",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], oft_block_size=5, block_share=True, coft=True, eps=1.0)},
    ),
    dict(
        name="oft_embedding",
        method="OFT",
        model="EmbMLP",
        adapters={"default": dict(target_modules=["emb", "lin0"], oft_block_size=5)},
    ),
    dict(
        name="oft_embedding_exact_share",
        method="OFT",
        model="EmbMLP",
        adapters={"default": dict(target_modules=["emb"], oft_block_size=5, block_share=True, use_cayley_neumann=False)},
    ),
    # conv2d: 2 channels x 3x3 = 18 (block 6, r=3); conv1x1: 8 (block 6 -> 4); lin: 72 (r=12).
    dict(
        name="oft_convnet",
        method="OFT",
        model="ConvNet",
        adapters={"default": dict(target_modules=["conv2d", "conv1x1", "lin"], oft_block_size=6)},
    ),
    dict(
        name="oft_convnet_exact_coft",
        method="OFT",
        model="ConvNet",
        atol=1e-6,  # as oft_coft_exact
        adapters={
            "default": dict(target_modules=["conv2d", "conv1x1"], r=3, oft_block_size=0, use_cayley_neumann=False, coft=True, eps=1.0)
        },
    ),
    # A grouped Conv2d runs, but PEFT cannot merge it (its weight is not (out, in*k*k)). Only this layer is
    # adapted: a refused merge after other layers merged is rolled back by unmerging, which for OFT (an
    # inverse) is not bit-exact.
    dict(
        name="oft_grouped_conv",
        method="OFT",
        model="ConvNet",
        adapters={"default": dict(target_modules=["grouped"], oft_block_size=9)},
        merge=False,
    ),
    dict(
        name="oft_two_active",
        method="OFT",
        model="MLP",
        adapters={
            "alpha": dict(target_modules=["lin0", "lin1"], oft_block_size=5),
            "beta": dict(target_modules=["lin0"], r=2, oft_block_size=0, use_cayley_neumann=False),
        },
        active=["alpha", "beta"],
    ),
    dict(
        name="oft_two_active_conv",
        method="OFT",
        model="ConvNet",
        adapters={
            "alpha": dict(target_modules=["conv2d", "lin"], oft_block_size=6),
            "beta": dict(target_modules=["conv2d"], oft_block_size=9, block_share=True),
        },
        active=["alpha", "beta"],
    ),
    dict(
        name="oft_second_active",
        method="OFT",
        model="MLP",
        adapters={
            "alpha": dict(target_modules=["lin0"], oft_block_size=5),
            "beta": dict(target_modules=["lin0", "lin1"], oft_block_size=10),
        },
        active=["beta"],
    ),
    dict(
        name="oft_deep_layers",
        method="OFT",
        model="DeepMLP",
        adapters={
            "default": dict(
                target_modules=["lin0", "lin1"],
                layers_to_transform=[1, 3],
                layers_pattern="layers",
                oft_block_size=5,
            )
        },
    ),
    dict(
        name="oft_deep_exclude",
        method="OFT",
        model="DeepMLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], exclude_modules=["layers.0.lin0"], oft_block_size=2)},
    ),
    dict(
        name="oft_modules_to_save",
        method="OFT",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0"], oft_block_size=5, modules_to_save=["lin1"])},
    ),
    # fan_in_fan_out=True on nn.Linear: PEFT warns and saves False.
    dict(
        name="oft_bias_fan_in_fan_out",
        method="OFT",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], oft_block_size=5, bias="oft_only", fan_in_fan_out=True)},
    ),
    dict(
        name="oft_random_init",
        method="OFT",
        model="MLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin0", "lin1"], oft_block_size=5, init_weights=False)},
    ),
]

# Same-seed initialisation: base model and adapter created under torch.manual_seed(0).
INIT_CASES = [
    dict(name="oft_default", method="OFT", model="MLP", config=dict(target_modules=["lin0", "lin1"], oft_block_size=5)),
    dict(name="oft_random", method="OFT", model="MLP", config=dict(target_modules=["lin0", "lin1"], r=2, oft_block_size=0, init_weights=False)),
    dict(
        name="oft_random_conv",
        method="OFT",
        model="ConvNet",
        config=dict(target_modules=["conv2d", "conv1x1", "grouped", "lin"], oft_block_size=6, init_weights=False),
    ),
    dict(
        name="oft_random_emb_share",
        method="OFT",
        model="EmbMLP",
        config=dict(target_modules=["emb", "lin1"], oft_block_size=5, block_share=True, init_weights=False),
    ),
    dict(name="oft_all_linear", method="OFT", model="DeepMLP", config=dict(target_modules="all-linear", oft_block_size=5, bias="all")),
]

# Training: the same optimizer steps in PEFT and in Rust (dropout of the test models active). PEFT 0.21.2
# never applies module_dropout (no random draws), so its row must match the plain run's RNG use.
TRAIN_CASES = [
    dict(name="oft_sgd", method="OFT", model="MLP", optimizer="sgd", lr=0.5, steps=5, config=dict(target_modules=["lin0", "lin1"], oft_block_size=5)),
    dict(
        name="oft_module_dropout_sgd",
        method="OFT",
        model="MLP",
        optimizer="sgd",
        lr=0.5,
        steps=4,
        config=dict(target_modules=["lin0", "lin1"], oft_block_size=5, module_dropout=0.5),
    ),
    dict(
        name="oft_exact_coft_adamw",
        method="OFT",
        model="MLP",
        optimizer="adamw",
        lr=0.01,
        steps=4,
        config=dict(target_modules=["lin0", "lin1"], oft_block_size=5, use_cayley_neumann=False, coft=True, eps=1.0),
    ),
    dict(
        name="oft_conv_adamw",
        method="OFT",
        model="ConvNet",
        optimizer="adamw",
        lr=0.01,
        steps=4,
        config=dict(target_modules=["conv2d", "conv1x1", "grouped", "lin"], oft_block_size=6),
    ),
    dict(
        name="oft_emb_share_sgd",
        method="OFT",
        model="EmbMLP",
        optimizer="sgd",
        lr=0.5,
        steps=4,
        config=dict(target_modules=["emb", "lin0"], oft_block_size=5, block_share=True),
    ),
]

# adapter_config.json files written by PEFT.
CONFIG_CASES = [
    dict(name="oft_defaults", method="OFT", kwargs=dict()),
    dict(
        name="oft_full",
        method="OFT",
        kwargs=dict(
            r=4,
            oft_block_size=0,
            module_dropout=0.1,
            target_modules=["q", "v", "wo"],
            exclude_modules=r".*\.0\..*",
            fan_in_fan_out=True,
            bias="oft_only",
            init_weights=False,
            layers_to_transform=[0, 1],
            layers_pattern="block",
            modules_to_save=["head"],
            coft=True,
            eps=1e-4,
            block_share=True,
            use_cayley_neumann=False,
            num_cayley_neumann_terms=7,
            task_type="SEQ_2_SEQ_LM",
            base_model_name_or_path="org/t5",
        ),
    ),
]
