"""PEANuT rows of the method parity matrix (see gen_methods.py for what each table means)."""

# PEANuT on nn.Linear: the update computed from the frozen weight by A, `depth` encoder/decoder pairs and B.
# Depth 0 to 3, every activation of transformers' ACT2FN (one adapter per activation, each on its own layer
# of DeepMLP, all active together), several adapters on one layer (merged one after another from the
# unmerged weight), scaling, layer selection, exclusions, modules_to_save and a random B.
PEANUT = dict(method="PEANUT")

ACTS = [
    "gelu", "gelu_10", "gelu_accurate", "gelu_fast", "gelu_new", "gelu_python", "gelu_python_tanh",
    "gelu_pytorch_tanh", "hardswish", "laplace", "leaky_relu", "linear", "mish", "prelu", "quick_gelu", "relu",
    "relu2", "relu6", "sigmoid", "silu", "sqrtsoftplus", "swish", "tanh", "xielu",
]
DEEP_LAYERS = [f"layers.{i}.lin{j}" for i in range(4) for j in range(2)]


def act_case(k, acts):
    """One adapter per activation, each on its own layer of DeepMLP, with depths 0 to 2."""
    adapters = {
        f"act_{act}": dict(target_modules=[DEEP_LAYERS[i]], r=3, depth=i % 3, act_fn=act) for i, act in enumerate(acts)
    }
    return dict(PEANUT, name=f"peanut_acts_{k}", model="DeepMLP", adapters=adapters, active=list(adapters))


CASES = [
    dict(PEANUT, name="peanut_mlp", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], r=4)}),
    dict(
        PEANUT,
        name="peanut_deep_gelu",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=5, depth=3, act_fn="gelu", scaling=0.5)},
    ),
    act_case(0, ACTS[0:8]),
    act_case(1, ACTS[8:16]),
    act_case(2, ACTS[16:24]),
    dict(
        PEANUT,
        name="peanut_two_active",
        model="DeepMLP",
        adapters={
            "alpha": dict(target_modules=["lin0", "out"], r=3, depth=1, act_fn="tanh"),
            "gamma": dict(target_modules=["lin0"], r=2, depth=2, scaling=2.0),
        },
        active=["gamma", "alpha"],
    ),
    dict(
        PEANUT,
        name="peanut_deep_selection",
        model="DeepMLP",
        adapters={
            "default": dict(
                target_modules=["lin0", "lin1"],
                layers_to_transform=[1, 3],
                layers_pattern="layers",
                exclude_modules=["layers.3.lin1"],
                modules_to_save=["layers.3.lin1"],
                r=2,
                depth=1,
            )
        },
    ),
    dict(
        PEANUT,
        name="peanut_random_init",
        model="MLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=4, depth=1, init_weights=False)},
    ),
]

# Same-seed initialisation: base model and adapter created under torch.manual_seed(0).
INIT_CASES = [
    dict(PEANUT, name="peanut_default", model="MLP", config=dict(target_modules=["lin0", "lin1"], r=2)),
    dict(PEANUT, name="peanut_random", model="DeepMLP", config=dict(target_modules="all-linear", r=3, depth=2, init_weights=False)),
]

# Training: the same optimizer steps in PEFT and in Rust (the test models' dropout active).
TRAIN_CASES = [
    dict(PEANUT, name="peanut_sgd", model="MLP", optimizer="sgd", lr=0.5, steps=5, config=dict(target_modules=["lin0", "lin1"], r=2, depth=1)),
    dict(
        PEANUT,
        name="peanut_adamw",
        model="DeepMLP",
        optimizer="adamw",
        lr=0.01,
        steps=4,
        config=dict(target_modules=["lin0", "out"], r=3, depth=2, act_fn="gelu_new", init_weights=False),
    ),
]

# adapter_config.json files written by PEFT.
CONFIG_CASES = [
    dict(name="peanut_defaults", method="PEANUT", kwargs=dict()),
    dict(
        name="peanut_full",
        method="PEANUT",
        kwargs=dict(
            r=16,
            depth=2,
            act_fn="silu",
            scaling=0.25,
            target_modules=["q_proj", "v_proj"],
            exclude_modules=["lm_head"],
            init_weights=False,
            layers_to_transform=[0, 1],
            layers_pattern="layers",
            modules_to_save=["score"],
            task_type="SEQ_CLS",
            base_model_name_or_path="org/llama",
        ),
    ),
    dict(name="peanut_regex", method="PEANUT", kwargs=dict(target_modules=r".*\.(q|v)_proj", act_fn="xielu")),
]
