"""The request path, stage by stage, as the addon's hooks hand each flow on.

    auth.py   who is calling: the client's key, the refusal reasons, the credential swap
    usage.py  token usage read from answers and streams, counted per key, written in batches

May import: base modules, clientapi, flowstate, gateway, endpoints/, policy/, storage/,
translate/, upstream/, mitmproxy.http (types only).

mitmproxy only through mitm_compat or the flow a stage is handed: `from mitmproxy import
http` under `if TYPE_CHECKING:`, for annotations. Never the addon or lifecycle.
"""
