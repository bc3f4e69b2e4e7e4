"""Agent frameworks, unmodified, against the gateway: the OpenAI Agents SDK with its default
(Responses) model runs a tool loop end to end; LangChain's ChatOpenAI with use_responses_api and
ChatAnthropic both get tool calls back. Tiny random model: the calls are valid, the text is noise."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.live import WEATHER

WEATHER_SCHEMA = WEATHER["function"]["parameters"]


async def test_openai_agents_sdk_runs_a_tool_loop(gateway: Any) -> None:
    from agents import Agent, ModelSettings, RunConfig, Runner, function_tool
    from agents.models.openai_provider import OpenAIProvider
    from openai import AsyncOpenAI
    from pydantic import BaseModel

    class Answer(BaseModel):  # structured output: the final text is short JSON, so it ends
        sunny: bool

    seen: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        seen.append(city)
        return f"sunny in {city}"

    # Turn one: `required` makes the call. The SDK then resets tool_choice (to auto), where the
    # no-tool threshold of 1.0 (a callgate extension, sent in the body) settles on text, held to
    # the output type's schema by the grammar: the loop ends with a parsed answer.
    settings = ModelSettings(
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=120,
        extra_body={"seed": 1, "no_tool_threshold": 1.0},
    )
    agent = Agent(
        name="weather",
        instructions="Use tools.",
        model="tiny",
        tools=[get_weather],
        model_settings=settings,
        output_type=Answer,
    )
    client = AsyncOpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)
    config = RunConfig(model_provider=OpenAIProvider(openai_client=client, use_responses=True), tracing_disabled=True)
    result = await Runner.run(agent, "Weather in Paris?", run_config=config, max_turns=4)
    await client.close()
    kinds = [item.type for item in result.new_items]
    assert kinds[:2] == ["tool_call_item", "tool_call_output_item"] and kinds[-1] == "message_output_item"
    assert len(seen) == 1 and isinstance(seen[0], str)
    assert isinstance(result.final_output, Answer)


@pytest.mark.parametrize("streaming", [False, True])
def test_langchain_responses_api_gets_tool_calls(gateway: Any, streaming: bool) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model="tiny",
        base_url=gateway.v1,
        api_key="unused",
        use_responses_api=True,
        max_retries=0,
        max_tokens=80,
        streaming=streaming,
        extra_body={"seed": 1},
    )
    msg = llm.bind_tools([WEATHER], tool_choice="required").invoke("Weather in Paris?")
    assert msg.tool_calls and all(c["name"] == "get_weather" for c in msg.tool_calls)
    for call in msg.tool_calls:
        assert set(call["args"]) <= set(WEATHER_SCHEMA["properties"]) and isinstance(call["args"]["city"], str)


@pytest.mark.parametrize("streaming", [False, True])
def test_langchain_chat_anthropic_gets_tool_calls(gateway: Any, streaming: bool) -> None:
    from langchain_anthropic import ChatAnthropic

    llm = ChatAnthropic(
        model="tiny",
        base_url=gateway.base_url,
        api_key="unused",
        max_retries=0,
        max_tokens=80,
        streaming=streaming,
        model_kwargs={"extra_body": {"seed": 1}},
    )
    msg = llm.bind_tools([WEATHER], tool_choice="get_weather").invoke("Weather in Paris?")
    assert len(msg.tool_calls) == 1 and msg.tool_calls[0]["name"] == "get_weather"
    assert isinstance(msg.tool_calls[0]["args"]["city"], str)
    json.dumps(msg.tool_calls[0]["args"])
