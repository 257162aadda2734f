import pytest

pytest_plugins = ["mesh_collab.pytest_plugin"]


# Markers by module, for the fast lane (README, "Tests"): multi-process and long tests are
# `slow`; tests of links between nodes and sites are `federation`.
_SLOW = ("tests/reliability/", "tests/test_benchmarks_smoke.py", "tests/test_demo.py",
         "tests/jupyter/test_failover.py", "tests/jupyter/test_federation.py")
_FEDERATION = ("tests/jupyter/test_federation.py", "tests/jupyter/test_failover.py",
               "tests/reliability/test_federation_handshake.py",
               "tests/reliability/test_exactly_once.py", "tests/reliability/test_lineage.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = item.nodeid.split("::")[0]
        if path.startswith(_SLOW):
            item.add_marker(pytest.mark.slow)
        if path.startswith(_FEDERATION):
            item.add_marker(pytest.mark.federation)

