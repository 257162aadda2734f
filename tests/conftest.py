pytest_plugins = ["mesh_collab.pytest_plugin"]
