"""Builders shared by the export tests (no tests here): tiny checkpoints and PEFT adapters.

Adapters are made with PEFT itself, never by hand, so the merge is tested against the
format the fine-tune stage writes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def mini_llama(target: Path, tokenizer_from: Path, *, hidden: int = 32, layers: int = 2, vocab: int = 256,
               shards: bool = True, seed: int = 0) -> Path:
    """A bf16 Llama small enough for unit tests, saved in two shards, with a real tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(target, max_shard_size="40KB" if shards else "10GB")
    for name in TOKENIZER_FILES:
        if (tokenizer_from / name).is_file():
            shutil.copy(tokenizer_from / name, target / name)
    return target


def random_adapter(base_dir: Path, target: Path, *, targets: list[str] | None = None, r: int = 4, alpha: int = 8,
                   std: float | None = None, seed: int = 0, **lora_kwargs) -> Path:
    """A PEFT LoRA adapter with non-zero random A and B (init_lora_weights=False).

    `std` rescales the random LoRA weights (small values keep a real model's behaviour).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets or TARGETS, init_lora_weights=False, **lora_kwargs)
    peft_model = get_peft_model(model, config)
    if std is not None:
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_" in name:
                    param.normal_(0.0, std)
    _save(peft_model, target, targets or TARGETS)
    return target


def _save(peft_model, target: Path, targets: list[str]) -> None:
    # Explicit, as the fine-tune stage would: PEFT then also stores the embedding / LM head
    # it wraps (merged as a replacement) instead of warning that it decided to.
    embeddings = any(t in ("embed_tokens", "lm_head") for t in targets)
    peft_model.save_pretrained(str(target), save_embedding_layers=embeddings)


def train_label_adapter(base_dir: Path, target: Path, rows: list[tuple[str, str]], labels: list[str], *,
                        steps: int = 25, lr: float = 1e-2) -> Path:
    """Teach a random tiny model to answer '<label><eos>' to rendered prompts (plain torch loop).

    Left padding puts every answer at the end, so only the last positions' logits are
    computed (the 128k-wide LM head dominates otherwise).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunegguf.data.example import Example
    from tunegguf.prompts import PromptConfig, PromptRenderer, TemplateTokens

    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    renderer = PromptRenderer(PromptConfig(), TemplateTokens.from_hf_tokenizer(tokenizer), labels)
    encoded = []
    for i, (text, label) in enumerate(rows):
        rendered = renderer.render(Example(id=str(i), text=text, label=label))
        prompt = tokenizer(rendered.prompt, add_special_tokens=False)["input_ids"]
        answer = tokenizer(rendered.target, add_special_tokens=False)["input_ids"]
        encoded.append((prompt, answer))
    k = len(encoded[0][1])
    assert all(len(a) == k for _, a in encoded), "every label word must be one token here"
    width = max(len(p) + len(a) for p, a in encoded)
    ids = torch.full((len(encoded), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (prompt, answer) in enumerate(encoded):
        seq = prompt + answer
        ids[row, width - len(seq):] = torch.tensor(seq)
        mask[row, width - len(seq):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS + ["lm_head"]))
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        logits = peft_model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=k + 1).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, -k:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    _save(peft_model, target, TARGETS + ["lm_head"])
    tokenizer.save_pretrained(str(target))  # the fine-tune stage saves it too
    return target
