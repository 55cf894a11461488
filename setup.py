"""Install the top-level folders under one import namespace, ``chorus``.

The repository keeps its layout (``engine/``, ``events/``, ... at the top, where a newcomer
looks for them), but a wheel that put six generic names (``events``, ``runtime``, ...) into
site-packages would collide with other distributions. So ``runtime/`` becomes the
``chorus`` package itself (the CLI and the composition root) and every other folder one of
its subpackages: ``engine/`` installs as ``chorus.engine``, and so on. Subpackages are found
automatically, so a new folder needs no change here.
"""

from setuptools import find_packages, setup

ROOTS = {
    "chorus": "runtime",
    "chorus.contracts": "contracts",
    "chorus.events": "events",
    "chorus.audit": "audit",
    "chorus.store": "store",
    "chorus.engine": "engine",
    "chorus.projections": "projections",
    "chorus.gateway": "gateway",
}

packages = [
    f"{name}.{sub}" if sub else name
    for name, folder in ROOTS.items()
    for sub in ["", *find_packages(folder)]
]
setup(package_dir=ROOTS, packages=packages)
