"""The paths the proxy answers itself, never forwarded: health, metrics, admin, account.

    admin.py      /health, /metrics and /admin/*: keys, usage, the request log
    dashboard.py  /admin/stats, /admin/routes, /admin/usage/series for the dashboard
    account.py    GET /account and the billing endpoints a customer calls with their key
    pages.py      the dashboard and portal pages (static/), with their security headers
    static/       the pages' HTML, CSS and JavaScript, served as they are (no build step)

May import: base modules, clientapi, flowstate, policy/, storage/, translate/, upstream/,
mitmproxy.

An endpoint takes what it needs (the store, the router, the metrics) when it is built,
never the addon or the Gateway, and never reaches into the request path (pipeline/).
"""
