"""A complete agent loop against callgate with the official openai client: ask, let the model
call tools, run the calls with `server.toolcalls.dispatch`, send the results back, and repeat
until the model answers in text. The last step forbids calls, so the loop always ends.

    python -m server --model models/tiny/model.gguf &
    python examples/agent_loop.py --base-url http://127.0.0.1:8000/v1 --model tiny "Where is order 42?"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from openai import OpenAI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: find `server`
from server.toolcalls.dispatch import dispatch, tool_specs  # noqa: E402


def get_weather(
    city: Annotated[str, "City name, e.g. Paris"], unit: Literal["celsius", "fahrenheit"] = "celsius"
) -> dict[str, Any]:
    """Current weather for a city."""
    return {"city": city, "temperature": 21 if unit == "celsius" else 70, "unit": unit, "sky": "clear"}


def track_order(order_id: Annotated[int, "The order number"]) -> dict[str, Any]:
    """Where an order is."""
    if order_id < 1:
        raise ValueError("order ids start at 1")
    return {"order_id": order_id, "status": "shipped", "eta_days": 2}


TOOLS = [get_weather, track_order]


def run_agent(
    client: OpenAI,
    model: str,
    question: str,
    tools: list[Any] | None = None,
    *,
    max_steps: int = 4,
    first_choice: str = "auto",
    max_tokens: int = 256,
) -> list[dict[str, Any]]:
    """The whole conversation: the question, each assistant turn, each tool result, and the
    final answer last. `first_choice="required"` makes the first turn a call."""
    tools = TOOLS if tools is None else tools
    specs = tool_specs(tools)
    messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
    for step in range(max_steps):
        choice = "none" if step == max_steps - 1 else (first_choice if step == 0 else "auto")
        request: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "tools": specs,
            "tool_choice": choice,
            "max_tokens": max_tokens,
        }
        response = client.chat.completions.create(**request)
        message = response.choices[0].message
        messages.append(_assistant_turn(message))
        if not message.tool_calls:
            break  # a text answer: done
        messages.extend(dispatch(message, tools))  # errors come back as {"error": ...} results
    return messages


def _assistant_turn(message: Any) -> dict[str, Any]:
    """The assistant message to send back: its text and its calls, nothing else."""
    turn: dict[str, Any] = {"role": "assistant", "content": message.content}
    if message.tool_calls:
        turn["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
            for c in message.tool_calls
        ]
    return turn


def main() -> int:
    p = argparse.ArgumentParser(description="an agent loop against a callgate gateway")
    p.add_argument("question", nargs="?", default="What's the weather in Paris, and where is order 42?")
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--model", default="tiny")
    p.add_argument("--api-key", default="unused")
    p.add_argument("--max-steps", type=int, default=4)
    args = p.parse_args()
    with OpenAI(base_url=args.base_url, api_key=args.api_key) as client:
        for message in run_agent(client, args.model, args.question, max_steps=args.max_steps):
            print(json.dumps(message, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
