"""Requests from inside the engine's network (run by the container tests as `ip netns exec NS python netclient.py`):
ports that containers publish there are on this namespace's 127.0.0.1. Prints one JSON document.

  python netclient.py get URL                      status, headers and body of one GET
  python netclient.py openai-chats BASE_URL N      N chats with the official openai client, one line per answer
"""

from __future__ import annotations

import json
import sys

import requests


def main(argv: list[str]) -> int:
    if argv[0] == "get":
        response = requests.get(argv[1], timeout=30)
        print(json.dumps({"status": response.status_code, "headers": dict(response.headers), "body": response.text}))
        return 0
    if argv[0] == "openai-chats":
        import openai

        client = openai.OpenAI(base_url=f"{argv[1]}/v1", api_key="not-used-by-the-gateway", max_retries=0)
        answers = []
        for i in range(int(argv[2])):
            raw = client.chat.completions.with_raw_response.create(
                model="chat", messages=[{"role": "user", "content": f"hello {i}"}]
            )
            completion = raw.parse()
            answers.append(
                {
                    "replica": raw.headers.get("x-gateway-replica"),
                    "content": completion.choices[0].message.content,
                    "total_tokens": completion.usage.total_tokens if completion.usage else None,
                }
            )
        print(json.dumps(answers))
        return 0
    print(f"unknown command {argv[0]}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
