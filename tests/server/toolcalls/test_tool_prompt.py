"""Tools reach the prompt for every template (server/toolcalls/prompting.py): a template with a
tool section renders them itself; for one without (SmolLM2's ChatML), the gateway writes them into
a system message, and history with calls and tool results is rewritten so the template can show it."""

from __future__ import annotations

from server.toolcalls import get_format
from server.toolcalls.detect import renders_tools
from server.toolcalls.prompting import prompt_sha256, render_chat
from server.types import Message, Tool, ToolCall

# SmolLM2-135M-Instruct's own template (from its GGUF): no tool section at all.
SMOL = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
WITH_TOOLS = (
    "{% if tools %}TOOLS {{ tools | tojson }}\n{% endif %}"
    "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
)
WEATHER = Tool(
    "get_weather",
    "Current weather in a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
ASK = Message("user", "Weather in Paris?")


def test_a_template_without_a_tool_section_gets_the_tools_in_a_system_message() -> None:
    assert not renders_tools(SMOL) and renders_tools(WITH_TOOLS)
    fmt = get_format("json_envelope")
    prompt = render_chat(SMOL, fmt, [ASK], [WEATHER])
    assert "get_weather" in prompt and "Current weather in a city" in prompt and '"city"' in prompt
    assert '{"tool_calls": [{"name": "TOOL_NAME"' in prompt  # the answer shape, in the model's format
    assert '{"response": "..."}' in prompt
    assert prompt.startswith("<|im_start|>system\nYou have access to these tools")  # replaces the default system turn
    assert render_chat(SMOL, fmt, [ASK]) == render_chat(SMOL, fmt, [ASK], [])  # no tools: nothing added


def test_an_operators_system_message_is_kept_ahead_of_the_tools() -> None:
    prompt = render_chat(SMOL, get_format("json_envelope"), [Message("system", "Be brief."), ASK], [WEATHER])
    assert prompt.startswith("<|im_start|>system\nBe brief.\n\nYou have access to these tools")


def test_history_with_calls_and_results_renders_in_the_format() -> None:
    call = ToolCall("get_weather", '{"city": "Paris"}', id="c1")
    history = [ASK, Message("assistant", None, (call,)), Message("tool", "18 C", tool_call_id="c1", name="get_weather")]
    prompt = render_chat(SMOL, get_format("json_envelope"), history, [WEATHER])
    assert '<|im_start|>assistant\n{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}' in prompt
    assert "<|im_start|>user\nResult of get_weather: 18 C<|im_end|>" in prompt


def test_text_answers_in_the_history_take_the_formats_text_shape() -> None:
    # What the tool prompt asks for and what `auto`'s grammar holds text answers to; training
    # renders through the same function, so a fine-tuned model learns to write it.
    call = ToolCall("get_weather", '{"city": "Paris"}', id="c1")
    history = [ASK, Message("assistant", None, (call,)), Message("tool", "18 C", tool_call_id="c1", name="get_weather"),
               Message("assistant", 'It is 18 C, "mild".'), Message("user", "Thanks")]  # fmt: skip
    prompt = render_chat(SMOL, get_format("json_envelope"), history, [WEATHER])
    assert '<|im_start|>assistant\n{"response": "It is 18 C, \\"mild\\"."}<|im_end|>' in prompt
    plain = render_chat(SMOL, get_format("hermes"), history, [WEATHER])
    assert '<|im_start|>assistant\nIt is 18 C, "mild".<|im_end|>' in plain


def test_a_template_with_a_tool_section_is_left_to_render_them() -> None:
    prompt = render_chat(WITH_TOOLS, get_format("hermes"), [ASK], [WEATHER])
    assert prompt.startswith('TOOLS [{"type": "function"') and "You have access" not in prompt


def test_the_prompt_wording_digest_is_stable_and_tells_the_formats_apart() -> None:
    # An adapter's manifest records it; a reworded prompt changes it (tests/server/adapters).
    envelope = prompt_sha256(SMOL, get_format("json_envelope"))
    assert envelope is not None and envelope == prompt_sha256(SMOL, get_format("json_envelope"))
    assert len(envelope) == 64
    others = {prompt_sha256(SMOL, get_format("hermes")), prompt_sha256(SMOL, get_format("pythonic"))}
    assert len({envelope, *others}) == 3
    # a template that renders the tools itself never sees the gateway's wording
    assert prompt_sha256(WITH_TOOLS, get_format("hermes")) is None
