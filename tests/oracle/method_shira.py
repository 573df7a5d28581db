"""SHiRA rows of the method parity matrix (see gen_methods.py for what each table means)."""

# SHiRA: a random sparse mask from random_seed (or a fresh generator's default seed), saved as int32 indices;
# several active adapters summed into one weight; modules_to_save; a random init.
CASES = [
    dict(name="shira_mlp", method="SHIRA", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], r=1, random_seed=3)}),
    dict(name="shira_default_seed", method="SHIRA", model="DeepMLP", adapters={"default": dict(target_modules=["lin0", "out"], r=1)}),
    dict(
        name="shira_two_active",
        method="SHIRA",
        model="MLP",
        adapters={
            "first": dict(target_modules=["lin0", "lin1"], r=1, random_seed=1),
            "second": dict(target_modules=["lin0"], r=2, random_seed=2),
        },
        active=["first", "second"],
    ),
    dict(
        name="shira_modules_to_save",
        method="SHIRA",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0"], r=1, random_seed=5, modules_to_save=["lin1"])},
    ),
    dict(
        name="shira_random_init",
        method="SHIRA",
        model="MLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin0"], r=3, random_seed=4, init_weights=False)},
    ),
]

INIT_CASES = [
    dict(name="shira_default", method="SHIRA", model="MLP", config=dict(target_modules=["lin0", "lin1"], r=1, random_seed=9)),
    dict(name="shira_random", method="SHIRA", model="DeepMLP", config=dict(target_modules="all-linear", r=1, init_weights=False)),
]

TRAIN_CASES = [
    dict(name="shira_sgd", method="SHIRA", model="MLP", optimizer="sgd", lr=0.5, steps=5,
         config=dict(target_modules=["lin0", "lin1"], r=1, random_seed=3)),
    dict(name="shira_adamw", method="SHIRA", model="DeepMLP", optimizer="adamw", lr=0.01, steps=4,
         config=dict(target_modules=["lin0", "lin1"], r=2, random_seed=7)),
]

CONFIG_CASES = [
    dict(name="shira_defaults", method="SHIRA", kwargs=dict()),
    dict(name="shira_full", method="SHIRA", kwargs=dict(r=8, random_seed=42, target_modules=["q_proj"], init_weights=False,
                                                         modules_to_save=["score"], task_type="SEQ_CLS")),
]
