"""The Docker pipeline: build the extensions in a devel image, slim, ship a runtime image, verify it."""
