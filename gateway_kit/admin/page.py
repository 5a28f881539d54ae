"""The admin page's HTML: plain string templates, every value through html.escape, no script at all.

The page is one document per answer (no JavaScript: a Content-Security-Policy of default-src 'none' forbids any),
so what the browser shows is exactly what the server wrote, and a test reads it as a user does.
"""

from __future__ import annotations

from html import escape
from typing import Any

from gateway_kit.admin.figures import LimitUse, Replica, Usage
from gateway_kit.admin.reloading import Roll
from gateway_kit.cli.costs import usd

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1b1b1b}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.4em 0}td,th{padding:.2em .7em;border-bottom:1px solid #eee;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.bad{color:#a00;font-weight:600}.ok{color:#070}.note{color:#555}
pre{background:#f6f6f6;padding:.5em;white-space:pre-wrap}
.key{font:1.1em monospace;background:#ffe;padding:.5em;border:1px solid #cc9;display:inline-block}
form.inline{display:inline}header form{float:right}
"""


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>{body}</body></html>"
    )


def _csrf(token: str) -> str:
    return f'<input type=hidden name=csrf value="{escape(token)}">'


def login(message: str = "", who: str = "") -> str:
    error = f"<p class=bad id=login-error role=alert>{escape(message)}</p>" if message else ""
    return _page(
        "Gateway admin: log in",
        "<h1>Gateway admin</h1>"
        f"{error}"
        '<form method=post action="/login">'
        f'<p><label>Your name (for the audit log) <input name=who id=who required maxlength=64 pattern="[A-Za-z0-9][A-Za-z0-9._-]{{0,63}}" title="letters, digits, dot, underscore, hyphen" value="{escape(who)}"></label></p>'
        "<p><label>Admin password <input type=password name=password id=password required autocomplete=current-password></label></p>"
        "<p><button type=submit id=login>Log in</button></p></form>",
    )


def _table(headers: list[str], rows: list[list[str]], numeric: set[int], table_id: str) -> str:
    if not rows:
        return f'<p class=note id="{table_id}">none</p>'
    head = "".join(f"<th{' class=n' if i in numeric else ''}>{escape(h)}</th>" for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f"<td{' class=n' if i in numeric else ''}>{c}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _spend(report: dict[str, Any], period: str) -> str:
    cost, tokens, requests = report["cost"], report["tokens"], report["requests"]
    out = [
        f'<p id="{period}-total">{requests["total"]:,} requests ({requests["failed"]:,} failed), '
        f"{tokens['total']:,} tokens, <b>{escape(usd(cost['total_usd']))}</b>"
        + (
            f" <span class=bad>({cost['unpriced_requests']:,} without a known price)</span>"
            if cost["unpriced_requests"]
            else ""
        )
        + "</p>"
    ]
    for by in ("client", "endpoint", "model"):
        rows = [
            [
                escape(r["key"]),
                f"{r['requests']:,}",
                f"{r['failed']:,}",
                f"{r['prompt_tokens']:,}",
                f"{r['completion_tokens']:,}",
                f"{r['total_tokens']:,}",
                escape(usd(r["cost_usd"])),
            ]
            for r in report[f"by_{by}"]
        ]
        out.append(f"<h3>by {by}</h3>")
        out.append(
            _table(
                [by, "requests", "failed", "prompt tokens", "completion tokens", "tokens", "cost"],
                rows,
                {1, 2, 3, 4, 5, 6},
                f"{period}-by-{by}",
            )
        )
    return "".join(out)


def _limit_cell(u: LimitUse) -> list[str]:
    if u.unit == "USD":
        shown = lambda x: usd(x)  # noqa: E731
    else:
        shown = lambda x: f"{x:,.0f}"  # noqa: E731
    used = "unknown (Redis did not answer)" if u.used is None else shown(u.used)
    share = "" if u.used is None else f"{100 * u.used / u.limit:.0f}%"
    resets = "" if u.resets_in is None else f"{u.resets_in:,.0f} s"
    css = ' class="n bad"' if u.used is not None and u.used >= u.limit else ""
    return [
        escape(u.client),
        escape(u.name),
        escape(f"{shown(u.limit)} {u.unit} per {u.period}"),
        f"<span{css}>{escape(used)}</span>",
        share,
        resets,
    ]


def dashboard(
    *,
    who: str,
    csrf: str,
    replicas: list[Replica],
    unresolved: list[str],
    usage: Usage | None,
    usage_problem: str,
    limit_uses: list[LimitUse],
    limits_problem: str,
    redis: str,
    keys: list[dict[str, str]],
    keys_problem: str,
    keys_where: str,
    keys_follow: str,
    last_use: dict[str, str],
    config: str,
    reload_how: str,
    notice: str = "",
) -> str:
    parts = [
        f"<header><form method=post action=/logout>{_csrf(csrf)}<button id=logout>Log out</button></form>"
        f"<h1>Gateway admin</h1><p class=note>logged in as {escape(who)}</p></header>"
    ]
    if notice:
        parts.append(f"<p class=ok id=notice role=status>{escape(notice)}</p>")

    parts.append("<h2 id=replicas-title>Replicas</h2>")
    ready = sum(r.ready for r in replicas)
    parts.append(f"<p id=replicas-summary>{ready} of {len(replicas)} ready</p>")
    parts.append(
        _table(
            ["address", "replica", "ready", "checks", "config"],
            [
                [
                    escape(r.address),
                    escape(r.replica),
                    "<span class=ok>ready</span>" if r.ready else "<span class=bad>not ready</span>",
                    escape(r.detail),
                    escape(r.config),
                ]
                for r in replicas
            ],
            set(),
            "replicas",
        )
    )
    if unresolved:
        parts.append(f"<p class=bad>not found: {escape(', '.join(unresolved))} (GATEWAY_ADMIN_REPLICAS)</p>")
    if reload_how:
        parts.append(f"<p class=note id=reload-how>{escape(reload_how)}</p>")
    else:
        parts.append(
            f"<form method=post action=/reload id=reload>{_csrf(csrf)}<p class=note>Reload checks {escape(config)} "
            "on a replica first (a refused file changes nothing), then rolls it to every replica above, one at a "
            "time, each finishing its requests on the old config.</p>"
            "<button id=reload-config>Reload config</button></form>"
        )

    if usage is None:
        parts.append(f"<h2>Spend</h2><p class=bad id=usage-problem>{escape(usage_problem)}</p>")
    else:
        parts.append("<h2>Spend today (UTC)</h2>" + _spend(usage.today, "today"))
        parts.append("<h2>Spend this month</h2>" + _spend(usage.month, "month"))
        ratio = "no lookups this month" if usage.hit_ratio is None else f"{100 * usage.hit_ratio:.1f}%"
        cache = usage.month["cache"]
        parts.append(
            "<h2>Response cache (this month)</h2>"
            f"<p id=cache>hit ratio {escape(ratio)} ({usage.cache_hits:,} hits, {usage.cache_misses:,} stored misses), "
            f"saved {escape(usd(cache['saved_usd']))}</p>"
        )
        parts.append("<h2>Errors in the last 24 hours, by class</h2>")
        parts.append(
            _table(
                ["class", "requests", "last"],
                [[escape(e["class"]), f"{e['count']:,}", escape(e["last"])] for e in usage.errors],
                {1},
                "errors",
            )
        )

    parts.append(f"<h2>Limits and current use</h2><p class=note>Redis: {escape(redis)}</p>")
    if limits_problem:
        parts.append(f"<p class=bad>{escape(limits_problem)}</p>")
    parts.append(
        _table(
            ["client", "limit", "value", "used now", "share", "resets in"],
            [_limit_cell(u) for u in limit_uses],
            {3, 4, 5},
            "limits",
        )
    )

    parts.append(
        f"<h2>Client keys</h2><p class=note id=keys-where>in {escape(keys_where)}; "
        f"every replica follows a change within {escape(keys_follow)}</p>"
    )
    if keys_problem:
        parts.append(f"<p class=bad>{escape(keys_problem)}</p>")
    rows = []
    for e in keys:
        revoke = (
            f"<form class=inline method=post action=/keys/revoke>{_csrf(csrf)}"
            f'<input type=hidden name=client value="{escape(e["client"])}">'
            f'<input type=hidden name=prefix value="{escape(e["prefix"])}">'
            f'<button class=revoke data-client="{escape(e["client"])}">Revoke</button></form>'
        )
        rows.append(
            [
                escape(e["client"]),
                escape(e["prefix"]) + "...",
                escape(e["created"]),
                escape(last_use.get(e["client"], "none this month")),
                revoke,
            ]
        )
    parts.append(_table(["client", "key", "created", "last use (ledger)", ""], rows, set(), "keys"))
    parts.append(
        f"<form method=post action=/keys id=add-key>{_csrf(csrf)}"
        "<label>New key for client <input name=client id=new-client required maxlength=64 "
        'pattern="[A-Za-z0-9][A-Za-z0-9._-]{0,63}"></label> <button id=add>Add key</button></form>'
    )
    return _page("Gateway admin", "".join(parts))


def key_created(client: str, key: str, follows: str) -> str:
    return _page(
        "Gateway admin: key created",
        "<h1>Key created</h1>"
        f"<p>A new key for client <b id=created-client>{escape(client)}</b>. This is the only time it is shown: "
        "give it to the client now (OpenAI clients: <code>api_key=...</code>, others: "
        f"<code>Authorization: Bearer &lt;key&gt;</code>). Every replica accepts it within {escape(follows)}.</p>"
        f'<p><output class=key id=new-key>{escape(key)}</output></p><p><a href="/" id=back>Back to the admin page</a></p>',
    )


def reloaded(roll: Roll, config: str) -> str:
    """The answer to Reload: the check's refusal, or each replica's outcome."""
    back = '<p><a href="/" id=back>Back to the admin page</a></p>'
    if roll.result == "refused":
        return _page(
            "Gateway admin: config refused",
            f"<h1>Config refused</h1><p class=bad id=reload-result>{escape(config)} was refused: nothing was "
            "reloaded, every replica keeps serving its config.</p>"
            f"<pre id=reload-refused>{escape(roll.problem)}</pre>{back}",
        )
    rows = [
        [escape(r.address), "<span class=ok>ok</span>" if r.ok else "<span class=bad>failed</span>", escape(r.outcome)]
        for r in roll.replicas
    ]
    if roll.result == "reloaded":
        head = f"<h1>Config reloaded</h1><p class=ok id=reload-result>every replica serves config {escape(roll.config_hash or '')}</p>"
    else:
        head = f"<h1>Reload stopped</h1><p class=bad id=reload-result>{escape(roll.problem)}</p>"
    table = _table(["replica", "", "outcome"], rows, set(), "reload-replicas")
    return _page("Gateway admin: reload", head + table + back)


def refused(status: int, message: str) -> str:
    return _page(
        "Gateway admin",
        f'<h1>Refused ({status})</h1><p class=bad id=refused>{escape(message)}</p><p><a href="/">Back</a></p>',
    )
