"""The request path, stage by stage, as the addon's hooks hand each flow on.

    admission.py   from the headers alone: request id, ClientApi, what is not forwarded,
                   the key, its rate limit
    rewrite.py     credentials swapped, body checked, model routed and priced, translated
    answers.py     the upstream timeout, SSE streamed through a watcher, whole answers in
                   the client's API, quota answers cooling models down
    accounting.py  budget holds, then usage, spend, metrics, the request log and the
                   access line once per request; the usage flush; ChargeBeforeRelease
    usage.py       token usage read from answers and streams, counted per key

May import: base modules, clientapi, flowstate, gateway, endpoints/, policy/, storage/,
translate/, upstream/, mitmproxy.http (types only).

mitmproxy only through mitm_compat or the flow a stage is handed: `from mitmproxy import
http` under `if TYPE_CHECKING:`, for annotations. Never the addon or lifecycle.
"""
