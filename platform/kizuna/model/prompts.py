"""The chat messages every adapter is trained and served with.

Training and inference must build the prompt the same way, so both call these
functions. The instruction names no persona: the adapter, not the prompt, carries the
personality (that is what lets strength scale it and mixing blend it).
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

Message = dict[str, str]

# Short on purpose: every prompt token is paid for in every training step, and chat
# templates such as SmolLM2's insert a ~20-token default system prompt when none is given.
SYSTEM_PROMPT = "You are a companion character."
TRANSFORM_INSTRUCTION = "Rewrite in your own voice:"


def with_system(messages: list[Message]) -> list[Message]:
    """``messages`` behind Kizuna's system prompt (the base template's default is dropped)."""
    return [{"role": "system", "content": SYSTEM_PROMPT}, *messages]


def transform_messages(text: str) -> list[Message]:
    """The messages that ask for a style transfer of ``text``."""
    return with_system([{"role": "user", "content": f"{TRANSFORM_INSTRUCTION}\n{text}"}])


def prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: list[Message]) -> list[int]:
    """Token ids of ``messages`` through the base model's chat template, ready for a reply."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # The template already wrote every special token the model expects.
    ids: list[int] = tokenizer(str(text), add_special_tokens=False)["input_ids"]
    return ids


def reply_ids(tokenizer: PreTrainedTokenizerBase, reply: str) -> list[int]:
    """Token ids of an assistant reply as it is trained: its text, then end-of-turn."""
    ids: list[int] = tokenizer(reply, add_special_tokens=False)["input_ids"]
    return [*ids, tokenizer.eos_token_id]
