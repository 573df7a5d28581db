"""FourierFT rows of the method parity matrix (see gen_methods.py for what each table means)."""

# FourierFT: coefficient positions drawn from random_loc_seed (not saved), the inverse 2-D FFT, scaling,
# per-module n_frequency (a dotted suffix, or the exact name), GPT-2 Conv1D,
# several adapters, exclusion, bias and modules_to_save.
CASES = [
    dict(name="fourierft_mlp", method="FOURIERFT", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], n_frequency=30)}),
    dict(
        name="fourierft_seed_scaling",
        method="FOURIERFT",
        model="MLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin0"], n_frequency=50, random_loc_seed=3, scaling=20.0)},
    ),
    dict(
        name="fourierft_conv1d",
        method="FOURIERFT",
        model="MLPConv1D",
        adapters={"default": dict(target_modules=["c_fc", "c_proj"], n_frequency=25, fan_in_fan_out=True)},
    ),
    dict(
        name="fourierft_deep_pattern",
        method="FOURIERFT",
        model="DeepMLP",
        adapters={
            "default": dict(
                target_modules=["lin0", "lin1", "out"],
                exclude_modules=["layers.3.lin1"],
                n_frequency=20,
                n_frequency_pattern={"lin1": 7, "out": 5},
            )
        },
    ),
    dict(
        name="fourierft_two_active",
        method="FOURIERFT",
        model="MLP",
        adapters={
            "first": dict(target_modules=["lin0", "lin1"], n_frequency=10),
            "second": dict(target_modules=["lin0"], n_frequency=40, random_loc_seed=1),
        },
        active=["first", "second"],
    ),
    dict(name="fourierft_bias", method="FOURIERFT", model="MLP", adapters={"default": dict(target_modules=["lin0"], n_frequency=10, bias="fourier_only")}),
    dict(
        name="fourierft_modules_to_save",
        method="FOURIERFT",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0"], n_frequency=10, modules_to_save=["lin1"], init_weights=True)},
    ),
]

INIT_CASES = [
    dict(name="fourierft_default", method="FOURIERFT", model="MLP", config=dict(target_modules=["lin0", "lin1"], n_frequency=12)),
    dict(name="fourierft_zero", method="FOURIERFT", model="DeepMLP", config=dict(target_modules="all-linear", n_frequency=9, init_weights=True)),
]

TRAIN_CASES = [
    dict(name="fourierft_sgd", method="FOURIERFT", model="MLP", optimizer="sgd", lr=0.01, steps=5,
         config=dict(target_modules=["lin0", "lin1"], n_frequency=15, scaling=10.0)),
    dict(name="fourierft_conv1d_adamw", method="FOURIERFT", model="MLPConv1D", optimizer="adamw", lr=0.01, steps=4,
         config=dict(target_modules=["c_fc"], n_frequency=15, scaling=10.0)),
]

CONFIG_CASES = [
    dict(name="fourierft_defaults", method="FOURIERFT", kwargs=dict()),
    dict(
        name="fourierft_full",
        method="FOURIERFT",
        kwargs=dict(
            n_frequency=2000,
            scaling=300.0,
            random_loc_seed=12,
            target_modules=["q_proj", "v_proj"],
            exclude_modules=["lm_head"],
            bias="fourier_only",
            modules_to_save=["classifier"],
            layers_to_transform=[1],
            layers_pattern="layers",
            n_frequency_pattern={"q_proj": 100, "layers.1.v_proj": 50},
            init_weights=True,
            task_type="SEQ_CLS",
        ),
    ),
]
