from slimmer.cli import entrypoint

entrypoint()
