"""Shared builders and helpers of the test suite (fixtures stay in tests/conftest.py).

- ``builders``: test credentials, profiles pointed at the dev IdP, secret-file swaps;
- ``virtual_time``: driving refresh loops on the FakeClock (``idle``, ``run_for``);
- ``e2e``: TOML profiles and HTTP helpers for ``serve`` subprocesses;
- ``clientstack``: a protected API and a client stack for client-library tests;
- ``redis``: namespaces on the shared Redis, and private Redis servers;
- ``metrics``: the exported metric names and sample reads.
- ``oidc``: npm's oidc-provider on loopback, and its token-exchange grant (``ExchangeIdP``).
"""
