"""The prompt that asks a general model to speak as a persona (prompted, hf, openai).

It is context distillation's "context": the profile's description, traits, markers and
the guidance for the requested intensity as a system prompt, then a few of the
profile's example pairs (same language, the requested intensity first) as earlier
turns, then the input in the same form the student adapter is trained on.
"""

from __future__ import annotations

from kizuna.model.prompts import TRANSFORM_INSTRUCTION, Message
from kizuna.personas.schema import Example
from kizuna.teacher.base import StyleRequest

DEFAULT_SHOTS = 4


def persona_system_prompt(request: StyleRequest) -> str:
    """Who to be and how strongly, in the input's language."""
    persona, language = request.persona, request.language
    name = getattr(persona.name, language)
    description = getattr(persona.description, language)
    traits = "、".join(getattr(persona.traits, language))
    markers = "、".join(getattr(persona.markers, language))
    guidance = getattr(persona.intensity[request.intensity], language)
    if language == "zh":
        return (
            f"你是{name}：{description}性格：{traits}。常用语：{markers}。"
            f"语气强度：{guidance}改写用户给的句子，保留原意，只输出改写后的句子。"
        )
    return (
        f"You are {name}: {description} Traits: {traits}. Phrases you use: {markers}. "
        f"Intensity: {guidance} Rewrite the user's text in your voice, keep its meaning, "
        "and reply with the rewrite only."
    )


def persona_messages(
    request: StyleRequest, *, shots: int = DEFAULT_SHOTS, examples: list[Example] | None = None
) -> list[Message]:
    """System prompt, ``shots`` example turns, then the request.

    The examples are the profile's own (the requested intensity first) unless given.
    """
    if examples is None:
        examples = request.persona.example_pairs(request.language)
        examples.sort(key=lambda example: example.intensity != request.intensity)  # stable
    messages: list[Message] = [{"role": "system", "content": persona_system_prompt(request)}]
    for example in examples[:shots]:
        messages.append({"role": "user", "content": f"{TRANSFORM_INSTRUCTION}\n{example.input}"})
        messages.append({"role": "assistant", "content": example.target})
    messages.append({"role": "user", "content": f"{TRANSFORM_INSTRUCTION}\n{request.text}"})
    return messages
