"""Sampling answers for evaluation and RAFT, behind one small seam (`Backend`): in-process with
transformers (+ a PEFT adapter), prompts rendered by the gateway's own chat-template code and
answers parsed by the model's tool-call format; or any OpenAI-compatible endpoint (the gateway
itself) through the official `openai` client, answers taken from `message.tool_calls`.
Knows nothing of scoring; torch, transformers, peft and openai are imported when a backend is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from server import templates
from server.adapters.manifest import read_manifest
from server.errors import GatewayError
from server.toolcalls import Parsed, ParsedCall, ToolFormat, get_format
from server.toolcalls.detect import detect_format
from server.toolcalls.prompting import render_chat
from server.types import Message, Tool
from training.bases import resolve_base

if TYPE_CHECKING:
    import openai
    from transformers import PreTrainedTokenizerBase

NO_ANSWER = Parsed("", ())
# Tokens llama.cpp also ends generation on, whatever the model's eos (llama-vocab.cpp, by
# name), so both engines stop answers at the same place.
END_OF_TURN = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<|return|>")


@dataclass(frozen=True)
class Prompt:
    """One request: the conversation so far and the declared tools."""

    messages: tuple[Message, ...]
    tools: tuple[Tool, ...] = ()


@dataclass(frozen=True)
class SampleSettings:
    n: int = 1  # answers per prompt
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int = 0


@dataclass(frozen=True)
class Sample:
    """One answer: `text` as generated (for an endpoint, the message as JSON), `parsed` into
    content and calls, or `error` when no answer could be had (then `parsed` is empty)."""

    text: str
    parsed: Parsed
    tokens: int = 0
    error: str | None = None
    finish_reason: str | None = None  # "stop", "length", "tool_calls"


class Backend(Protocol):
    """Where answers come from. `describe()` is what a run folder records about it."""

    def sample(self, prompts: Sequence[Prompt], settings: SampleSettings) -> list[list[Sample]]:
        """`settings.n` answers for each prompt, in order."""
        ...

    def describe(self) -> dict[str, Any]: ...


# ---- in-process: transformers (+ PEFT) ---------------------------------------------------------


@dataclass
class TransformersBackend:
    """A causal LM from `model_dir`, with the PEFT adapter in `adapter_dir` applied when given.

    The chat template is the adapter's `chat_template.jinja` when it has one, else the
    tokenizer's; the tool format is `tool_format`, else the adapter manifest's, else detected
    from the template as the gateway does. Generation stops at the model's end-of-turn tokens
    (generation_config / tokenizer eos); special tokens stay in the text, as llama.cpp's do."""

    model_dir: Path
    adapter_dir: Path | None = None
    tool_format: str | None = None
    batch_size: int = 8  # prompts per generate() call
    threads: int | None = None  # torch CPU threads (process-wide); None: torch's default
    model: Any = field(init=False, repr=False)  # a PreTrainedModel, or a PeftModel around one
    tokenizer: PreTrainedTokenizerBase = field(init=False, repr=False)
    template: str = field(init=False, repr=False)
    format: ToolFormat = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_dir = Path(resolve_base(str(self.model_dir)).model)  # a GGUF / catalogue name: its float folder
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)  # on a busy CPU, fewer threads can be far faster
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model: Any = AutoModelForCausalLM.from_pretrained(self.model_dir)
        if self.adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, self.adapter_dir)
        self.model = model.eval()
        self.template = _adapter_file(self.adapter_dir, "chat_template.jinja") or self.tokenizer.chat_template
        if not self.template:
            raise ValueError(f"{self.model_dir} has no chat template (tokenizer_config.json chat_template)")
        self.format = get_format(
            self.tool_format or _manifest_format(self.adapter_dir) or detect_format(self.template).format
        )

    def describe(self) -> dict[str, Any]:
        adapter = str(self.adapter_dir) if self.adapter_dir else None
        return {
            "backend": "transformers",
            "model": str(self.model_dir),
            "adapter": adapter,
            "tool_format": self.format.name,
        }

    def sample(self, prompts: Sequence[Prompt], settings: SampleSettings) -> list[list[Sample]]:
        results: list[list[Sample]] = [[] for _ in prompts]
        ready: list[tuple[int, str]] = []
        for i, prompt in enumerate(prompts):
            try:
                ready.append((i, self.render(prompt)))
            except GatewayError as exc:  # the template refuses this conversation
                results[i] = [Sample("", NO_ANSWER, error=exc.message)] * settings.n
        for start in range(0, len(ready), self.batch_size):
            batch = ready[start : start + self.batch_size]
            rows = self._generate([text for _, text in batch], settings, seed=settings.seed * 1_000_003 + start)
            for k, (i, _) in enumerate(batch):
                results[i] = rows[k * settings.n : (k + 1) * settings.n]
        return results

    def render(self, prompt: Prompt) -> str:
        """The prompt text, exactly as the gateway renders it for this template."""
        bos, eos = self.tokenizer.bos_token or "", self.tokenizer.eos_token or ""
        return render_chat(
            self.template,
            self.format,
            prompt.messages,
            prompt.tools,
            add_generation_prompt=True,
            bos_token=str(bos),
            eos_token=str(eos),
        )

    def _generate(self, texts: list[str], settings: SampleSettings, seed: int) -> list[Sample]:
        """n answers per text, texts batched (left-padded), in order."""
        import torch

        ids = self.tokenizer(texts, return_tensors="pt", add_special_tokens=False, padding=True)
        torch.manual_seed(seed)
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p}
            if settings.temperature > 0
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        )
        with torch.inference_mode():
            out = self.model.generate(
                **ids,
                **sampling,
                max_new_tokens=settings.max_tokens,
                num_return_sequences=settings.n,
                eos_token_id=self._stop_ids(),
                pad_token_id=self.tokenizer.pad_token_id,
            )
        return [self.decode(row.tolist()) for row in out[:, ids["input_ids"].shape[1] :]]

    def decode(self, tokens: Sequence[int]) -> Sample:
        """Generated token ids as an answer: cut at the first end-of-turn token, special tokens
        kept as text (a format's markers may be special tokens), parsed by the tool format."""
        stops = set(self._stop_ids())
        end = next((i for i, t in enumerate(tokens) if t in stops), len(tokens))
        text = str(
            self.tokenizer.decode(list(tokens[:end]), skip_special_tokens=False, clean_up_tokenization_spaces=False)
        )
        finish = "stop" if end < len(tokens) else "length"
        return Sample(text, self.format.parse(text), min(end + 1, len(tokens)), finish_reason=finish)

    def _stop_ids(self) -> list[int]:
        configured = self.model.generation_config.eos_token_id
        ids = configured if isinstance(configured, list) else [configured]
        added = self.tokenizer.get_added_vocab()
        ids = [*ids, self.tokenizer.eos_token_id, *(added[t] for t in END_OF_TURN if t in added)]
        return sorted({i for i in ids if i is not None})


def _adapter_file(adapter_dir: Path | None, name: str) -> str | None:
    path = adapter_dir / name if adapter_dir is not None else None
    return path.read_text(encoding="utf-8") if path is not None and path.is_file() else None


def _manifest_format(adapter_dir: Path | None) -> str | None:
    if adapter_dir is None or not (adapter_dir / "manifest.json").is_file():
        return None
    return read_manifest(adapter_dir).tool_format


# ---- an OpenAI-compatible endpoint -------------------------------------------------------------


@dataclass
class EndpointBackend:
    """Chat completions from `base_url` (".../v1") for `model`; one request per answer (the
    gateway serves n=1), seeded. `tool_choice` None leaves it unsent (the server's default).
    The answer is the message: its `tool_calls`, plus the gateway's `invalid_tool_calls`
    (calls it refused after validation) as calls with an error. Refused requests (4xx) and
    transport failures become samples with `error`, never exceptions."""

    base_url: str
    model: str
    tool_choice: str | dict[str, Any] | None = None  # "auto" | "required" | "none" | {"type": "function", ...}
    api_key: str = "unused"
    timeout: float = 120.0
    extra_body: dict[str, Any] = field(default_factory=dict)
    concurrency: int = 1  # requests in flight at once (a batching server answers them together)
    client: openai.OpenAI = field(init=False, repr=False)

    def __post_init__(self) -> None:
        import openai

        self.client = openai.OpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout, max_retries=0)

    def describe(self) -> dict[str, Any]:
        return {"backend": "endpoint", "base_url": self.base_url, "model": self.model, "tool_choice": self.tool_choice}

    def sample(self, prompts: Sequence[Prompt], settings: SampleSettings) -> list[list[Sample]]:
        jobs = [(p, settings.seed + k) for p in prompts for k in range(settings.n)]
        with ThreadPoolExecutor(max(1, self.concurrency)) as pool:
            answers = list(pool.map(lambda job: self._ask(job[0], settings, job[1]), jobs))
        return [answers[i : i + settings.n] for i in range(0, len(answers), settings.n)]

    def close(self) -> None:
        self.client.close()

    def _ask(self, prompt: Prompt, settings: SampleSettings, seed: int) -> Sample:
        import openai

        request: dict[str, Any] = {
            "model": self.model,
            "messages": [wire_message(m) for m in prompt.messages],
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "max_tokens": settings.max_tokens,
            "seed": seed,
            "extra_body": self.extra_body or None,
        }
        if prompt.tools:
            request["tools"] = [templates.tool_dict(t) for t in prompt.tools]
            if self.tool_choice is not None:
                request["tool_choice"] = self.tool_choice
        try:
            response = self.client.chat.completions.create(**request)
        except openai.APIStatusError as exc:
            return Sample("", NO_ANSWER, error=f"HTTP {exc.status_code}: {_error_message(exc)}")
        except openai.APIError as exc:
            return Sample("", NO_ANSWER, error=f"{type(exc).__name__}: {exc}")
        choice = response.choices[0]
        tokens = response.usage.completion_tokens if response.usage else 0
        return Sample(
            choice.message.model_dump_json(exclude_none=True),
            parsed_message(choice.message),
            tokens,
            finish_reason=choice.finish_reason,
        )


def parsed_message(message: Any) -> Parsed:
    """An OpenAI response message as content and calls (refused calls carry their error)."""
    calls = [ParsedCall(c.function.name, c.function.arguments) for c in message.tool_calls or ()]
    extra = message.model_extra or {}
    for bad in extra.get("invalid_tool_calls") or ():
        calls.append(ParsedCall(bad.get("name", ""), bad.get("arguments", ""), error=bad.get("error") or "invalid"))
    return Parsed(message.content or "", tuple(calls))


def wire_message(message: Message) -> dict[str, Any]:
    """A Message in OpenAI's wire shape (arguments as JSON text)."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id or f"call_{i}", "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for i, c in enumerate(message.tool_calls)
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _error_message(exc: Any) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body) if isinstance(body, dict) else {}
    return str(error.get("message") if isinstance(error, dict) and error.get("message") else exc.message)


def dump_sample(sample: Sample) -> dict[str, Any]:
    """A sample as JSON for per-record results."""
    calls = [{"name": c.name, "arguments": c.arguments, "error": c.error} for c in sample.parsed.calls]
    out: dict[str, Any] = {
        "text": sample.text,
        "content": sample.parsed.content,
        "calls": calls,
        "tokens": sample.tokens,
        "finish_reason": sample.finish_reason,
    }
    if sample.error:
        out["error"] = sample.error
    return out
