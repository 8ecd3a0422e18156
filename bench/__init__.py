"""The benchmark and the soak, run as modules from the repository: `python -m bench.run`.

    run.py       apipod against bare mitmdump and the upstream, in one run (`make bench`)
    replicas.py  1 vs 2 apipod replicas behind HAProxy (`make bench-replicas`)
    soak.py      streams and requests while keys churn: nothing lost or mixed (`make soak`)
    load.py      the load each target gets (wrk, concurrent SSE streams), the samples taken
    services.py  the processes measured, started with tests.support.harness; CPU, RSS
    upstream.py  a fast stand-in upstream, in its own process
    report.py    statistics over rounds, the summary, the table, the JSON file (pure)

May import: apipod_proxy, tests/support/.
"""
