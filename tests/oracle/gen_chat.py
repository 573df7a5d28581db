"""Fixture generator for peft-train's chat templates: transformers' own `apply_chat_template` output.

Usage: python gen_chat.py OUT_DIR

Every template in chat_templates/ (real models' templates; chat_templates/README.md says where each came
from) renders every conversation below, with and without `add_generation_prompt`, through a
`PreTrainedTokenizerFast` (tokenize=False). Templates with `{% generation %}` blocks are also tokenized
with `return_assistant_tokens_mask=True`. A template that refuses a conversation (`raise_exception`)
records the error message instead.

OUT_DIR/manifest.json   {"templates": {name: source}, "special_tokens": {...}, "today": strftime_now's
                        "%d %b %Y" while generating, "cases": [{template, conversation, add_generation_prompt,
                        kwargs, text | error, input_ids?, assistant_masks?}]}
OUT_DIR/tokenizer.json  a byte-level BPE tokenizer with the templates' control tokens as special tokens
OUT_DIR/data/           a model directory (tokenizer.json, tokenizer_config.json with a generation template)
                        and chat.jsonl, with expected.json: each record's ids and its labels with the loss
                        on assistant tokens only (TRL's assistant_only_loss: -100 where the mask is 0).
"""

import copy
import json
import os
import sys
from datetime import datetime

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATE_DIR = os.path.join(HERE, "chat_templates")

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
CONTROL = [
    "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eot_id|>", "<|header_start|>", "<|header_end|>", "<|eot|>", "<start_of_turn>", "<end_of_turn>",
    "[INST]", "[/INST]", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<|START_OF_TURN_TOKEN|>",
    "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>", "<|SYSTEM_TOKEN|>", "<|python_tag|>",
    "<|eom_id|>", "<|turn>", "<turn|>",
]

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city, in °C <metric>.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "The city's name"},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7.5},
                },
                "required": ["city"],
            },
        },
    }
]

CONVERSATIONS = {
    "two_turns": [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi there"},
        {"role": "user", "content": "Who are you"},
        {"role": "assistant", "content": "   I am an assistant   "},
    ],
    "system_multi_turn": [
        {"role": "system", "content": "You are a helpful assistant.\n"},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ],
    "unicode": [
        {"role": "user", "content": "Grüße, 日本語 😀 \"quoted\" 'single' \\back\\ \t tab"},
        {"role": "assistant", "content": "\n  Ça va ? ✓\n"},
    ],
    "tool_calls": [
        {"role": "system", "content": "Use tools when needed."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}
            ],
        },
        {"role": "tool", "name": "get_weather", "content": "{\"temp\": 21.5}"},
        {"role": "assistant", "content": "It is 21.5 °C in Paris."},
    ],
    # Tool calls with ids (Mistral's templates refuse calls without a 9-character id).
    "tool_calls_ids": [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call0A1b2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Oslo"}},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call0A1b2", "content": "{\"temp\": -3}"},
        {"role": "assistant", "content": "It is -3 °C in Oslo."},
    ],
    "assistant_first": [
        {"role": "assistant", "content": "I speak first."},
        {"role": "user", "content": "ok"},
    ],
}

# Extra template arguments per template (transformers passes them through **kwargs).
# Llama 3.2 takes date_string or calls strftime_now; Llama 3.1's builtin tools go through `reject` and `join`.
KWARGS = {
    "llama-3.2-3b-instruct": {"date_string": "26 Jul 2024"},
    "llama-3.1-8b-instruct": {"builtin_tools": ["brave_search", "code_interpreter", "wolfram_alpha"]},
}


def tokenizer(sources):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=list(SPECIAL.values()) + CONTROL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = list(sources) + [json.dumps(CONVERSATIONS, ensure_ascii=False), json.dumps(TOOLS)]
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)


def render(tok, source, conversation, gen_prompt, kwargs, tools):
    try:
        text = tok.apply_chat_template(
            copy.deepcopy(conversation), tools=tools, chat_template=source, tokenize=False,
            add_generation_prompt=gen_prompt, **kwargs,
        )
        return {"text": text}
    except Exception as e:  # the template's raise_exception
        return {"error": str(e)}


def main(root):
    os.makedirs(root, exist_ok=True)
    names = sorted(f[: -len(".jinja")] for f in os.listdir(TEMPLATE_DIR) if f.endswith(".jinja"))
    templates = {}
    for n in names:
        with open(os.path.join(TEMPLATE_DIR, n + ".jinja"), encoding="utf-8") as f:
            templates[n] = f.read()
    tok = tokenizer(templates.values())
    tok.backend_tokenizer.save(os.path.join(root, "tokenizer.json"))
    cases = []
    for name, source in templates.items():
        for conv_name, conv in CONVERSATIONS.items():
            tools = TOOLS if conv_name.startswith("tool_calls") else None
            for gen_prompt in (False, True):
                kwargs = KWARGS.get(name, {})
                case = {"template": name, "conversation": conv_name, "add_generation_prompt": gen_prompt,
                        "kwargs": kwargs, "tools": tools is not None}
                case.update(render(tok, source, conv, gen_prompt, kwargs, tools))
                if "text" in case and "{% generation %}" in source:
                    out = tok.apply_chat_template(
                        copy.deepcopy(conv), tools=tools, chat_template=source, tokenize=True, return_dict=True,
                        return_assistant_tokens_mask=True, add_generation_prompt=gen_prompt, **kwargs,
                    )
                    case["input_ids"] = list(out["input_ids"])
                    case["assistant_masks"] = list(out["assistant_masks"])
                cases.append(case)
        if "strftime_now" in source:
            # Without date_string the template calls strftime_now: today's date, recorded below.
            case = {"template": name, "conversation": "two_turns", "add_generation_prompt": True, "kwargs": {},
                    "tools": False}
            case.update(render(tok, source, CONVERSATIONS["two_turns"], True, {}, None))
            cases.append(case)
    manifest = {"templates": templates, "special_tokens": SPECIAL, "today": datetime.now().strftime("%d %b %Y"),
                "conversations": CONVERSATIONS, "tools": TOOLS, "cases": cases}
    with open(os.path.join(root, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, ensure_ascii=False, indent=1)
    gen_data(os.path.join(root, "data"), tok, templates["torchrl-qwen2.5-generation"])


def gen_data(d, tok, template):
    """A model directory whose tokenizer_config.json carries a generation template, and a chat JSONL."""
    os.makedirs(d)
    tok.backend_tokenizer.save(os.path.join(d, "tokenizer.json"))
    config = {"chat_template": template, **SPECIAL, "tokenizer_class": "PreTrainedTokenizerFast"}
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=2)
    records = [
        {"messages": CONVERSATIONS["two_turns"]},
        {"messages": CONVERSATIONS["unicode"]},
        {"messages": CONVERSATIONS["tool_calls"], "tools": TOOLS},
    ]
    expected = []
    with open(os.path.join(d, "chat.jsonl"), "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            out = tok.apply_chat_template(
                copy.deepcopy(r["messages"]), tools=r.get("tools"), tokenize=True, return_dict=True,
                return_assistant_tokens_mask=True, chat_template=template,
            )
            ids = list(out["input_ids"])
            labels = [i if m else -100 for i, m in zip(ids, out["assistant_masks"])]
            expected.append({"input_ids": ids, "labels": labels})
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(expected, f)
    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump({"records": len(records)}, f)


if __name__ == "__main__":
    main(sys.argv[1])
