"""The router's request models (the OpenAI subset it accepts, plus the ``tts`` object) and
OpenAI-style error bodies."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from tts_ray.config import MethodName


class APIError(Exception):
    """A client error: becomes ``status`` with an OpenAI-style JSON body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


class TTSOptions(BaseModel):
    """Per-request test-time-scaling options (the ``tts`` object)."""

    model_config = ConfigDict(extra="forbid")

    method: MethodName | Literal["auto"] | None = Field(
        None, description="TTS method; \"auto\" lets the planner choose; default from the router config.")
    branches: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        None, description="Parallel branches; \"auto\" lets the planner choose; default from config.")
    num_speculative_tokens: Annotated[int, Field(ge=0)] | Literal["auto"] | None = Field(
        None, description="Draft length k: run on a pool speculating k tokens (0: none); \"auto\" "
                          "or absent lets the planner choose among the model's pools.")
    early_stop: StrictBool | None = Field(
        None, description="Sample in windows and stop once the vote is settled (sampling methods).")
    latency_budget_s: float | None = Field(None, gt=0, description="Wall-clock budget for the answer.")
    seed: int | None = Field(None, ge=0, lt=2**63,
                             description="Base sampling seed (branch i uses seed + i); below 2**63.")


class _OpenAIRequest(BaseModel):
    # Unknown OpenAI parameters are accepted and ignored, as vLLM's server does with extras.
    model_config = ConfigDict(extra="allow")

    model: StrictStr | None = Field(None, description="Served model id; default: the first pool.")
    max_tokens: int | None = Field(None, ge=1, description="Tokens per branch.")
    temperature: float | None = Field(None, ge=0, le=2, description="Branch sampling temperature.")
    n: int = Field(1, ge=1, le=1, description="Choices returned; tts merges branches into one.")
    stream: StrictBool = Field(False, description="Stream the merged answer as server-sent events.")
    tts: TTSOptions | None = Field(None, description="Test-time-scaling options.")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant"]
    content: StrictStr = Field(..., min_length=1)


class ChatRequest(_OpenAIRequest):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequestBody(_OpenAIRequest):
    """``POST /v1/completions`` (one string prompt)."""

    prompt: StrictStr = Field(..., min_length=1)


def validation_message(exc: Exception) -> tuple[str, str | None]:
    """A short message and the offending parameter from a pydantic ValidationError."""
    errors = getattr(exc, "errors", list)()
    if not errors:
        return str(exc), None
    first = errors[0]
    param = ".".join(str(p) for p in first.get("loc", ()))
    return f"{param}: {first.get('msg', 'invalid value')}", param or None
