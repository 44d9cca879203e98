"""Real OpenAI client libraries, written elsewhere, against ``kizuna serve``'s API over
HTTP: OpenAI's own Python SDK and LangChain's ``ChatOpenAI``. Each sends the requests it
sends by default (stream usage, ``n``, penalties, …): none may be refused."""

from collections.abc import Iterator

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_openai import ChatOpenAI
from openai import BadRequestError, OpenAI

from support import API_TOKEN, served_over_http

pytestmark = pytest.mark.integration
QUESTION = "Could you look at my essay before Friday?"


@pytest.fixture
def base_url(make_replica) -> Iterator[str]:
    replica, _ = make_replica()
    with served_over_http(replica.app) as url:
        yield f"{url}/v1"


@pytest.fixture
def openai_client(base_url: str) -> OpenAI:
    return OpenAI(base_url=base_url, api_key=API_TOKEN, max_retries=0, timeout=60)


def _chat(client: OpenAI, **fields):
    return client.chat.completions.create(
        model="tsundere",
        messages=[{"role": "user", "content": QUESTION}],
        max_completion_tokens=16,
        temperature=0,
        **fields,
    )


def test_openai_sdk_plain_chat(openai_client: OpenAI) -> None:
    answer = _chat(openai_client, n=1, presence_penalty=0.0, frequency_penalty=0.0)
    [choice] = answer.choices
    assert choice.message.role == "assistant" and choice.finish_reason in {"stop", "length"}
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    assert answer.model == "tsundere" and answer.id


def test_openai_sdk_stream_with_usage_adds_up_to_the_whole_reply(openai_client: OpenAI) -> None:
    whole = _chat(openai_client).choices[0].message.content
    chunks = list(_chat(openai_client, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


def test_openai_sdk_stop_and_logprobs(openai_client: OpenAI) -> None:
    whole = _chat(openai_client).choices[0].message.content or ""
    stop = whole[len(whole) // 2 : len(whole) // 2 + 2]
    assert stop.strip(), whole
    stopped = _chat(openai_client, stop=[stop], logprobs=True, top_logprobs=2).choices[0]
    assert stopped.message.content == whole[: whole.find(stop)].strip()
    assert stopped.finish_reason == "stop"
    assert stopped.logprobs is not None and stopped.logprobs.content
    for entry in stopped.logprobs.content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 2


def test_openai_sdk_legacy_completions_and_models(openai_client: OpenAI) -> None:
    completion = openai_client.completions.create(
        model="cool", prompt="The meeting moved to", max_tokens=8, logprobs=1, temperature=0
    )
    [choice] = completion.choices
    assert choice.logprobs is not None
    assert len(choice.logprobs.tokens or []) == completion.usage.completion_tokens  # type: ignore[union-attr]
    streamed = openai_client.completions.create(
        model="cool", prompt="The meeting moved to", max_tokens=8, temperature=0, stream=True
    )
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == choice.text
    assert {"tsundere", "cool", "base"} <= {model.id for model in openai_client.models.list()}


def test_openai_sdk_sees_a_clear_error_for_what_is_unsupported(openai_client: OpenAI) -> None:
    with pytest.raises(BadRequestError, match="response_format"):
        _chat(openai_client, response_format={"type": "json_object"})


def _langchain(base_url: str, **fields) -> ChatOpenAI:
    return ChatOpenAI(
        model="tsundere",
        base_url=base_url,
        api_key=API_TOKEN,  # type: ignore[arg-type]
        temperature=0,
        max_completion_tokens=16,
        max_retries=0,
        **fields,
    )


def test_langchain_invoke_stream_stop_and_logprobs(base_url: str) -> None:
    chat = _langchain(base_url)
    whole = chat.invoke([HumanMessage(QUESTION)])
    assert isinstance(whole, AIMessage) and isinstance(whole.content, str)
    assert whole.usage_metadata is not None and whole.usage_metadata["output_tokens"] > 0

    streaming = _langchain(base_url, stream_usage=True)
    chunks = list(streaming.stream([HumanMessage(QUESTION)]))
    assert all(isinstance(chunk, AIMessageChunk) for chunk in chunks)
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk  # type: ignore[assignment]
    assert merged.content == whole.content
    assert merged.usage_metadata is not None  # the stream's final usage chunk
    assert merged.usage_metadata["output_tokens"] == whole.usage_metadata["output_tokens"]

    text = whole.content
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip(), text
    stopped = chat.invoke([HumanMessage(QUESTION)], stop=[stop])
    assert stopped.content == text[: text.find(stop)].strip()

    with_logprobs = _langchain(base_url, logprobs=True, top_logprobs=2).invoke(QUESTION)
    content = with_logprobs.response_metadata["logprobs"]["content"]
    assert content and all(len(entry["top_logprobs"]) == 2 for entry in content)
