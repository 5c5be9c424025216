"""The sandbox runtime: a gRPC service that runs workspaces' sandboxes.

It is a separate process from the web and worker (`python -m runtime`), one per
sandbox host, and imports nothing from Django: the platform reaches it only
through `runtime.client`."""
