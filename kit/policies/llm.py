"""The source's "greedy LLM" baseline: any OpenAI-compatible chat endpoint proposes edits; no learning, the loop
keeps an edit if it is better.

Owns: the chat-completions request (`complete`, which the CMA-ES + LLM hybrid uses too: a local vLLM, llama.cpp
or Ollama server, or a hosted one, by URL, model name and an API key read from the environment), timeouts, retries
with backoff, 429 rate limits (Retry-After honoured), and turning the reply into a candidate train.py. A failed
or malformed reply becomes a Proposal with an error (a `rejected` record), never an exception.
Does not own: the prompt (kit/prompt.py), deciding what to keep (kit/loop.py).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from kit.edits import EditError
from kit.policies.base import Policy, Proposal, Setup, State
from kit.prompt import PROGRAM, parse_completion, render_prompt

RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class LLMConfig:
    url: str
    """Base URL of the API, e.g. http://127.0.0.1:8000/v1 (…/chat/completions is appended)."""
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key; unset is fine for a local server."""
    timeout: float = 120.0
    retries: int = 4
    backoff: float = 2.0
    """Seconds before the first retry, doubled each time (a Retry-After header takes precedence)."""
    max_backoff: float = 60.0
    temperature: float = 0.7
    max_tokens: int = 2048
    context_tokens: int = 16_000
    """Prompt budget, counted as characters / 4."""

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {self.url=}")
        if self.timeout <= 0 or self.retries < 0:
            raise ValueError(f"timeout must be positive and retries >= 0, got {self.timeout=}, {self.retries=}")


class LLMProposer(Policy):
    name = "llm"

    def __init__(self, config: LLMConfig, program: str | None = None, sleep: Callable[[float], None] = time.sleep):
        self.config, self.sleep = config, sleep
        self.program = program if program is not None else PROGRAM.read_text()

    @classmethod
    def build(cls, setup: Setup) -> LLMProposer:
        if not (setup.llm_url and setup.llm_model):
            raise ValueError("the llm proposer needs an endpoint: give --llm-url URL and --llm-model NAME")
        return cls(LLMConfig(url=setup.llm_url, model=setup.llm_model))

    def propose(self, state: State) -> Proposal:
        try:
            rendered = render_prompt(state.source, state.memory, lambda text: len(text) // 4,
                                     self.config.context_tokens, self.program)
            reply = complete(self.config, SYSTEM, rendered.text, self.sleep)
            candidate, description = parse_completion(reply, state.source)
            error = None
        except (LLMError, EditError, ValueError) as failure:
            candidate, description, error = None, "no usable reply", str(failure)
        return Proposal(edit=None, values=None, action=None, logprob=0.0, value=0.0,
                        description=f"llm: {description}", candidate=candidate, error=error)


SYSTEM = "You improve train.py. Answer with IDEA: and one unified diff, as the agenda says."


def complete(c: LLMConfig, system: str, prompt: str, sleep: Callable[[float], None] = time.sleep) -> str:
    """The endpoint's reply to one system and one user message; LLMError (one line) when there is none."""
    body = json.dumps({"model": c.model, "temperature": c.temperature, "max_tokens": c.max_tokens,
                       "messages": [{"role": "system", "content": system},
                                    {"role": "user", "content": prompt}]}).encode()
    headers = {"Content-Type": "application/json"}
    if key := os.environ.get(c.api_key_env):
        headers["Authorization"] = f"Bearer {key}"
    url = c.url.rstrip("/") + "/chat/completions"
    last = "no attempt"
    for attempt in range(c.retries + 1):
        wait = min(c.backoff * 2 ** attempt, c.max_backoff)
        try:
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            with urllib.request.urlopen(request, timeout=c.timeout) as response:
                return _content(response.read())
        except urllib.error.HTTPError as error:
            last = f"HTTP {error.code} {error.reason}"
            if error.code not in RETRYABLE:
                raise LLMError(f"{url}: {last}; check the URL, model name and ${c.api_key_env}") from None
            wait = _retry_after(error.headers.get("Retry-After"), wait, c.max_backoff)
        except (TimeoutError, urllib.error.URLError, ConnectionError) as error:
            last = f"{type(error).__name__}: {getattr(error, 'reason', error)}"
        if attempt < c.retries:
            sleep(wait)
    raise LLMError(f"{url}: no reply after {c.retries + 1} attempts (last: {last})")


class LLMError(RuntimeError):
    """The endpoint gave no usable reply; the message says why in one line."""


def _retry_after(header: str | None, default: float, cap: float) -> float:
    try:
        return min(max(float(header), 0.0), cap) if header is not None else default
    except ValueError:
        return default


def _content(raw: bytes) -> str:
    try:
        reply = json.loads(raw)
        content = reply["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise LLMError(f"malformed chat-completions reply: {raw[:120]!r}") from None
    if not isinstance(content, str):
        raise LLMError(f"the reply's message content is not text: {content!r:.120}")
    return content
