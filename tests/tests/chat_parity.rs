//! Chat templates against transformers' `apply_chat_template` (tests/oracle/gen_chat.py): real models'
//! templates (tests/oracle/chat_templates/) over several conversations, rendered text byte for byte
//! (with and without the generation prompt, with tools, raised errors), the assistant token masks of
//! `{% generation %}` templates, and the chat dataset's assistant-only labels.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_models::tokenizer::Tokenizer;
use peft_parity::oracle;
use peft_train::chat::{assistant_mask, ChatInputs, ChatTemplate, Value};
use peft_train::{data, DataOptions, Format, Target};
use std::collections::BTreeMap;

fn value(v: &serde_json::Value) -> Value {
    serde_json::from_str(&v.to_string()).unwrap()
}

#[test]
fn templates_render_as_transformers() {
    let dir = oracle::fixtures("gen_chat.py");
    let m = oracle::read_json(&dir.join("manifest.json"));
    // The conversations and tools again as template values straight from the text, so that maps keep
    // their order (serde_json::Value's maps are sorted; a tool schema prints through tojson in order).
    let ordered: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let field = |k: &str| ordered.get_attr(k).unwrap();
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let mut compiled = BTreeMap::new();
    for (name, source) in m["templates"].as_object().unwrap() {
        let file = oracle::oracle_dir().join("chat_templates").join(format!("{name}.jinja"));
        let on_disk = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            on_disk,
            source.as_str().unwrap(),
            "{name}: the cached fixtures rendered another version of this template; delete target/oracle-cache/gen_chat-*"
        );
        compiled.insert(name.clone(), ChatTemplate::new(&on_disk).unwrap_or_else(|e| panic!("{name}: {e}")));
    }
    let specials: BTreeMap<String, Value> = m["special_tokens"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(v.as_str().unwrap())))
        .collect();
    let today = oracle_today_now();
    let (mut texts, mut errors, mut masks) = (0, 0, 0);
    for case in m["cases"].as_array().unwrap() {
        let name = case["template"].as_str().unwrap();
        let conv = case["conversation"].as_str().unwrap();
        let gen = case["add_generation_prompt"].as_bool().unwrap();
        let label = format!("{name} / {conv} / add_generation_prompt={gen}");
        let mut variables = specials.clone();
        for (k, v) in case["kwargs"].as_object().unwrap() {
            variables.insert(k.clone(), value(v));
        }
        let inputs = ChatInputs {
            messages: field("conversations").get_attr(conv).unwrap(),
            tools: case["tools"].as_bool().unwrap().then(|| field("tools")),
            documents: None,
            add_generation_prompt: gen,
            variables,
        };
        let t = &compiled[name];
        let got = t.render(&inputs);
        if let Some(err) = case.get("error") {
            let e = got.expect_err(&label).to_string();
            // Messages of raise_exception must match; jinja2's own errors (an undefined attribute) only
            // have to be errors.
            if t_raises(&m["templates"][name], err.as_str().unwrap()) {
                assert!(e.contains(err.as_str().unwrap()), "{label}: {e} vs {err}");
            }
            errors += 1;
            continue;
        }
        let mut want = case["text"].as_str().unwrap().to_string();
        let uses_today = m["templates"][name].as_str().unwrap().contains("strftime_now");
        if uses_today && !case["kwargs"].as_object().unwrap().contains_key("date_string") {
            // Rendered with strftime_now: the date the fixtures were made on, today's here.
            want = want.replace(m["today"].as_str().unwrap(), &today);
        }
        let got = got.unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(got, want, "{label}");
        texts += 1;
        if let Some(ids) = case.get("input_ids") {
            let (text, spans) = t.render_with_generation_spans(&inputs).unwrap();
            assert_eq!(text, want, "{label}: the tracked render differs");
            let (got_ids, offsets) = tok.encode_with_offsets(&text, false).unwrap();
            let want_ids: Vec<i64> = ids.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
            assert_eq!(got_ids, want_ids, "{label}: token ids");
            let want_mask: Vec<bool> =
                case["assistant_masks"].as_array().unwrap().iter().map(|x| x.as_i64() == Some(1)).collect();
            assert!(want_mask.iter().any(|&b| b), "{label}: an assistant mask with no assistant token");
            assert_eq!(assistant_mask(&offsets, &spans), want_mask, "{label}: assistant mask");
            masks += 1;
        }
        oracle::record("transformers->rs", &label);
    }
    assert!(texts >= 50 && errors >= 10 && masks >= 20, "{texts} texts, {errors} errors, {masks} masks");
}

/// Whether `err` is one of the template's own `raise_exception` messages.
fn t_raises(source: &serde_json::Value, err: &str) -> bool {
    source.as_str().unwrap().contains(&format!("raise_exception('{err}')"))
        || source.as_str().unwrap().contains(&format!("raise_exception(\"{err}\")"))
}

/// Today's date as the Llama template formats it, through the template engine itself.
fn oracle_today_now() -> String {
    let t = ChatTemplate::new("{{ strftime_now('%d %b %Y') }}").unwrap();
    t.render(&ChatInputs { messages: Value::from(Vec::<Value>::new()), ..ChatInputs::default() }).unwrap()
}

#[test]
fn chat_dataset_masks_the_loss_to_assistant_turns() {
    let dir = oracle::fixtures("gen_chat.py").join("data");
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let expected = oracle::read_json(&dir.join("expected.json"));
    let opts =
        DataOptions { assistant_only_loss: true, ..DataOptions::default() }.with_tokenizer_config(&dir);
    assert_eq!(opts.special_tokens["bos_token"], "<s>");
    let ds = data::load_jsonl(&dir.join("chat.jsonl"), Format::Chat, &tok, &opts).unwrap();
    let all = data::load_jsonl(
        &dir.join("chat.jsonl"),
        Format::Chat,
        &tok,
        &DataOptions { assistant_only_loss: false, ..opts.clone() },
    )
    .unwrap();
    assert_eq!(ds.examples.len(), 3);
    for ((ex, full), want) in ds.examples.iter().zip(&all.examples).zip(expected.as_array().unwrap()) {
        let ids: Vec<i64> =
            want["input_ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
        let labels: Vec<i64> =
            want["labels"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
        assert_eq!(ex.input_ids, ids);
        assert_eq!(ex.target, Target::Tokens(labels));
        assert!(labels_have_both(&ex.target));
        assert_eq!(full.input_ids, ids, "the same text without the mask");
        assert_eq!(
            full.target,
            Target::Tokens(ids.clone()),
            "loss on every token without assistant_only_loss"
        );
    }
    // A template without generation blocks cannot give assistant-only labels.
    let plain = DataOptions {
        chat_template: Some("{% for m in messages %}{{ m.content }}{% endfor %}".into()),
        ..opts
    };
    let err = data::load_jsonl(&dir.join("chat.jsonl"), Format::Chat, &tok, &plain).unwrap_err().to_string();
    assert!(err.contains("{% generation %}") && err.contains("chat.jsonl:1"), "{err}");
}

fn labels_have_both(t: &Target) -> bool {
    let Target::Tokens(l) = t else { return false };
    l.contains(&-100) && l.iter().any(|&x| x != -100)
}
