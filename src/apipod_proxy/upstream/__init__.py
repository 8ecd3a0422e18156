"""What the proxy knows about its upstream: the API it speaks, its models, its quota.

    probe.py   which API the upstream speaks (UPSTREAM_API=auto), model drift, /health's view
    models.py  GET /v1/models: the upstream's list plus the proxy's own names
    quota.py   the upstream's quota answers (structured only), reset times, capped cooldowns
    pool.py    several upstreams: [upstreams] tables, choice by weight, ejection, cooldowns

May import: base modules, policy/, storage/, translate/.

quota.py imports nothing of the package, so translate/ may read quota answers with it.
"""
