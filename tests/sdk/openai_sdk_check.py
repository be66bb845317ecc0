"""Drive a running voxgate with the official `openai` Python SDK, as a user would.

Usage: python3 openai_sdk_check.py BASE_URL API_KEY
Exits non-zero with a message on the first failed check. The server is expected to run with
tests/sdk/voxgate.toml (fake providers, so no network and deterministic answers).
"""
import json
import sys

import openai


def check(cond, message):
    if not cond:
        print(f"FAILED: {message}", file=sys.stderr)
        sys.exit(1)


def main():
    base_url, api_key = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hello sdk"},
    ]

    # Non-streaming, through a route that falls back past a failing model.
    raw = client.chat.completions.with_raw_response.create(model="voice", messages=messages, max_tokens=50)
    r = raw.parse()
    check(r.choices[0].message.content == "You said: hello sdk", f"non-streaming content: {r}")
    check(r.model == "echo", f"model that served: {r.model}")
    check(raw.headers.get("x-voxgate-model") == "echo", "x-voxgate-model header")
    check("broken=server_error" in raw.headers.get("x-voxgate-attempts", ""), "x-voxgate-attempts header")
    check(r.usage is not None and r.usage.completion_tokens > 0, f"usage: {r.usage}")
    check(r.choices[0].finish_reason == "stop", "finish reason")

    # Streaming with usage.
    stream = client.chat.completions.create(
        model="echo", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    check(text == "You said: hello sdk", f"streamed text: {text!r}")
    check(usage is not None and usage.prompt_tokens > 0, f"stream usage: {usage}")
    check(finish == "stop", f"stream finish: {finish}")

    # Tools, streamed, with the SDK's own accumulation helper.
    tools = [{
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"text": {"type": "string"}}}},
    }]
    with client.chat.completions.stream(model="tooler", messages=messages, tools=tools) as s:
        final = s.get_final_completion()
    calls = final.choices[0].message.tool_calls
    check(calls and calls[0].function.name == "get_weather", f"tool call: {final}")
    check(json.loads(calls[0].function.arguments) == {"text": "hello sdk"}, f"tool args: {calls[0].function.arguments}")
    check(final.choices[0].finish_reason == "tool_calls", "tool finish reason")

    # Tool result in a later turn.
    r = client.chat.completions.create(
        model="echo",
        messages=messages
        + [
            {"role": "assistant", "content": None, "tool_calls": [c.model_dump() for c in calls]},
            {"role": "tool", "tool_call_id": calls[0].id, "content": "18 C"},
            {"role": "user", "content": "thanks"},
        ],
    )
    check(r.choices[0].message.content == "You said: thanks", f"after tool result: {r}")

    # JSON mode.
    r = client.chat.completions.create(model="jsoner", messages=messages, response_format={"type": "json_object"})
    check(json.loads(r.choices[0].message.content) == {"answer": "hello sdk"}, f"json mode: {r}")

    # models.list
    ids = [m.id for m in client.models.list()]
    check("voice" in ids and "echo" in ids, f"models.list: {ids}")

    # Errors arrive as the SDK's typed exceptions with OpenAI error bodies.
    try:
        client.chat.completions.create(model="no-such-model", messages=messages)
        check(False, "unknown model accepted")
    except openai.NotFoundError as e:
        check(e.body.get("code") == "model_not_found", f"error body: {e.body}")
    try:
        client.chat.completions.create(model="echo", messages=[])
        check(False, "empty messages accepted")
    except openai.BadRequestError as e:
        check(e.body.get("param") == "messages", f"error body: {e.body}")
    bad = openai.OpenAI(base_url=base_url, api_key="wrong-key", max_retries=0)
    try:
        bad.models.list()
        check(False, "wrong key accepted")
    except openai.AuthenticationError:
        pass

    print("openai SDK checks passed")


if __name__ == "__main__":
    main()
