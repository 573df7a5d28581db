"""WaveFT rows of the method parity matrix (see gen_methods.py for what each table means)."""

# WaveFT: coefficient cells drawn from random_loc_seed (not saved, a negative seed included), the one-level
# inverse 2-D wavelet transform for every family PEFT lists (PEFT's own filters for db1-db10, sym2-sym10 and
# coif1-coif4; PyWavelets' for the rest, see below; the longest filters are longer than the layers), the
# direct sparse update (use_idwt=False), scaling (an int is saved as an int), per-module n_frequency, the
# proportional allocation, GPT-2 Conv1D, several active adapters, exclusion, layer selection, bias and
# modules_to_save.
WAVEFT = dict(method="WAVEFT")

# The families PEFT 0.21.2 lists but ships no usable filter for (db11-db38, sym11-sym20 and coif5-coif17;
# its coif5 has 48 taps for a padding of 30) fail at PEFT's first forward pass; peft-rs takes their
# filters from PyWavelets. To have an oracle for them, PEFT's table is completed in place with PyWavelets'
# filters in the form PEFT keeps its own (coiflets divided by sqrt(2)); PEFT's own entries stay as they are
# (its coif4 differs from PyWavelets' and is what PEFT's adapters use).
import math as _math

import pywt as _pywt
from peft.tuners.waveft.constants import WAVELET_REDUCTIONS as _REDUCTIONS
from peft.tuners.waveft.wavelet import _WAVELET_COEFFS

for _name, (_pad, _) in _REDUCTIONS.items():
    if len(_WAVELET_COEFFS.get(_name, ())) != _pad + 2:
        _scale = _math.sqrt(2) if _name.startswith("coif") else 1.0
        _WAVELET_COEFFS[_name] = [c / _scale for c in _pywt.Wavelet(_name).rec_lo]


def families(prefix, numbers):
    return [f"{prefix}{i}" for i in numbers]


def family_sweep(name, model, targets, names, n_frequency):
    """One adapter per wavelet family, all active (so every family is in the forward and the merges); added
    in name order, the order PEFT's status lists them in."""
    adapters = {
        fam: dict(target_modules=targets, n_frequency=n_frequency, wavelet_family=fam, random_loc_seed=i)
        for i, fam in sorted(enumerate(names), key=lambda p: p[1])
    }
    return dict(WAVEFT, name=name, model=model, adapters=adapters, active=list(adapters), perturb=0.05)


CASES = [
    dict(WAVEFT, name="waveft_mlp", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], n_frequency=30)}),
    dict(
        WAVEFT,
        name="waveft_db2_seed_scaling",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0"], n_frequency=50, wavelet_family="db2", random_loc_seed=3, scaling=10.0)},
    ),
    dict(
        WAVEFT,
        name="waveft_negative_seed",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], n_frequency=12, wavelet_family="sym2", random_loc_seed=-5)},
    ),
    dict(
        WAVEFT,
        name="waveft_conv1d",
        model="MLPConv1D",
        adapters={"default": dict(target_modules=["c_fc", "c_proj"], n_frequency=25, wavelet_family="db3", fan_in_fan_out=True)},
    ),
    dict(
        WAVEFT,
        name="waveft_conv1d_corrected",
        model="MLPConv1D",
        adapters={"default": dict(target_modules=["c_fc"], n_frequency=9, wavelet_family="coif1")},
    ),
    dict(
        WAVEFT,
        name="waveft_deep_pattern",
        model="DeepMLP",
        adapters={
            "default": dict(
                target_modules=["lin0", "lin1", "out"],
                exclude_modules=["layers.3.lin1"],
                n_frequency=20,
                wavelet_family="sym3",
                n_frequency_pattern={"lin1": 7, r"layers\.[02]\.lin0": 11, "out": 5},
            )
        },
    ),
    dict(
        WAVEFT,
        name="waveft_layers_to_transform",
        model="DeepMLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], layers_to_transform=[1, 2], layers_pattern="layers", n_frequency=15, wavelet_family="db4")},
    ),
    dict(
        WAVEFT,
        name="waveft_proportional",
        model="DeepMLP",
        adapters={"default": dict(target_modules=["lin0", "lin1", "out"], n_frequency=12, proportional_parameters=True, n_frequency_pattern={"out": 1})},
    ),
    dict(
        WAVEFT,
        name="waveft_proportional_mlp",
        model="MLP",
        adapters={"default": dict(target_modules=r"lin\d", n_frequency=7, proportional_parameters=True, wavelet_family="db2")},
    ),
    dict(
        WAVEFT,
        name="waveft_direct",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], n_frequency=20, use_idwt=False, scaling=2)},
    ),
    dict(
        WAVEFT,
        name="waveft_direct_unshipped_family",
        model="MLP",
        adapters={
            "a_db20": dict(target_modules=["lin0"], n_frequency=20, use_idwt=False, wavelet_family="db20"),
            "b_coif5": dict(target_modules=["lin0", "lin1"], n_frequency=5, use_idwt=False, wavelet_family="coif5"),
        },
        active=["b_coif5", "a_db20"],
    ),
    dict(
        WAVEFT,
        name="waveft_two_active",
        model="MLP",
        adapters={
            "first": dict(target_modules=["lin0", "lin1"], n_frequency=10),
            "second": dict(target_modules=["lin0"], n_frequency=40, random_loc_seed=1, wavelet_family="coif1", use_idwt=True),
            "third": dict(target_modules=["lin1"], n_frequency=8, use_idwt=False),
        },
        active=["second", "first", "third"],
    ),
    dict(WAVEFT, name="waveft_bias", model="MLP", adapters={"default": dict(target_modules=["lin0"], n_frequency=10, bias="waveft_only")}),
    dict(
        WAVEFT,
        name="waveft_modules_to_save",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0"], n_frequency=10, modules_to_save=["lin1"], wavelet_family="db5")},
    ),
    dict(
        WAVEFT,
        name="waveft_random_init",
        model="MLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin0", "lin1"], n_frequency=16, wavelet_family="coif2", init_weights=False, scaling=100.0)},
    ),
    family_sweep("waveft_daubechies", "MLP", ["lin0", "lin1"], families("db", range(1, 11)), 9),
    family_sweep("waveft_symlets", "MLP", ["lin0", "lin1"], families("sym", range(2, 11)), 9),
    family_sweep("waveft_coiflets", "MLP", ["lin0", "lin1"], families("coif", range(1, 5)), 9),
    # PyWavelets' filters (see the top of this file): the shortest and longest of each family PEFT lacks.
    family_sweep("waveft_beyond_peft", "MLP", ["lin0", "lin1"], ["db11", "db20", "db38", "sym11", "sym15", "sym20", "coif5", "coif6", "coif10", "coif17"], 9),
    dict(
        WAVEFT,
        name="waveft_beyond_peft_conv1d",
        model="MLPConv1D",
        adapters={"default": dict(target_modules=["c_fc", "c_proj"], n_frequency=25, wavelet_family="sym13", fan_in_fan_out=True)},
    ),
]

# Same-seed initialisation: base model and adapter created under torch.manual_seed(0).
INIT_CASES = [
    dict(WAVEFT, name="waveft_default", model="MLP", config=dict(target_modules=["lin0", "lin1"], n_frequency=12)),
    dict(WAVEFT, name="waveft_random", model="DeepMLP", config=dict(target_modules="all-linear", n_frequency=9, init_weights=False, wavelet_family="sym4")),
    dict(WAVEFT, name="waveft_random_coif17", model="MLP", config=dict(target_modules=["lin0", "lin1"], n_frequency=9, init_weights=False, wavelet_family="coif17")),
    dict(WAVEFT, name="waveft_random_proportional", model="MLP", config=dict(target_modules=["lin0", "lin1"], n_frequency=5, init_weights=False, proportional_parameters=True)),
    dict(WAVEFT, name="waveft_bias_all", model="MLP", config=dict(target_modules=["lin1"], n_frequency=4, bias="all")),
]

# A few optimizer steps from a saved initial adapter.
TRAIN_CASES = [
    dict(WAVEFT, name="waveft_sgd", model="MLP", optimizer="sgd", lr=0.1, steps=5, config=dict(target_modules=["lin0", "lin1"], n_frequency=15, wavelet_family="db2", scaling=5.0)),
    dict(
        WAVEFT,
        name="waveft_conv1d_adamw",
        model="MLPConv1D",
        optimizer="adamw",
        lr=0.01,
        steps=4,
        config=dict(target_modules=["c_fc", "c_proj"], n_frequency=15, wavelet_family="coif3", init_weights=False),
    ),
    dict(WAVEFT, name="waveft_direct_adamw", model="DeepMLP", optimizer="adamw", lr=0.01, steps=4, config=dict(target_modules=["lin1", "out"], n_frequency=6, use_idwt=False)),
    dict(WAVEFT, name="waveft_db38_adamw", model="MLP", optimizer="adamw", lr=0.01, steps=4, config=dict(target_modules=["lin0", "lin1"], n_frequency=12, wavelet_family="db38", init_weights=False)),
]

# adapter_config.json files written by PEFT, parsed and written back byte for byte.
CONFIG_CASES = [
    dict(name="waveft_defaults", method="WAVEFT", kwargs=dict()),
    dict(
        name="waveft_full",
        method="WAVEFT",
        kwargs=dict(
            n_frequency=1000,
            scaling=12.5,
            wavelet_family="sym7",
            use_idwt=False,
            random_loc_seed=12,
            fan_in_fan_out=True,
            target_modules=["q_proj", "v_proj"],
            exclude_modules=["lm_head"],
            bias="waveft_only",
            modules_to_save=["classifier"],
            layers_to_transform=[1],
            layers_pattern="layers",
            n_frequency_pattern={"q_proj": 100, "layers.1.v_proj": 50},
            proportional_parameters=True,
            init_weights=False,
            task_type="SEQ_CLS",
            base_model_name_or_path="org/llama",
            inference_mode=True,
        ),
    ),
    dict(name="waveft_regex_int_scaling", method="WAVEFT", kwargs=dict(target_modules=r".*\.(q|v)_proj", scaling=30, wavelet_family="coif17", use_idwt=False)),
]
