"""Entry point for `mitmdump --mode reverse:URL -s addons/apipod.py`.

Kept thin on purpose: the hooks live on `apipod_proxy.addon.Apipod`, and the logic in
the small modules beside it. (This file cannot share the package's name: mitmdump
puts `addons/` first on sys.path, so `apipod` here would shadow a package.)
"""

from apipod_proxy.addon import Apipod

addons = [Apipod()]
