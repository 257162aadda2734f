"""A script beside the notebook, shared with it: co-edit it in JupyterLab's editor."""

with open("data.txt") as data:
    print(data.read())
