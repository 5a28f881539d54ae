"""Requests from inside the engine's network (run by the container tests as `ip netns exec NS python netclient.py`):
ports that containers publish there are on this namespace's 127.0.0.1. Prints one JSON document.

  python netclient.py get URL                      status, headers and body of one GET
  python netclient.py openai-chats BASE_URL N [KEY] N chats with the official openai client (KEY: a gateway key)
  python netclient.py posts URL N BODY             N concurrent POSTs of the JSON BODY: status and kit headers of each
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

        key = argv[3] if len(argv) > 3 else "not-used-by-the-gateway"  # the demo needs no gateway key
        client = openai.OpenAI(base_url=f"{argv[1]}/v1", api_key=key, max_retries=0)
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
    if argv[0] == "posts":
        from concurrent.futures import ThreadPoolExecutor

        def post(_: int) -> dict:
            r = requests.post(argv[1], data=argv[3], headers={"Content-Type": "application/json"}, timeout=60)
            return {
                "status": r.status_code,
                "limits": r.headers.get("x-gateway-limits"),
                "replica": r.headers.get("x-gateway-replica"),
            }

        with ThreadPoolExecutor(int(argv[2])) as pool:
            print(json.dumps(list(pool.map(post, range(int(argv[2]))))))
        return 0
    print(f"unknown command {argv[0]}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
