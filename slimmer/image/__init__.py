"""`slimmer image slim`: slim an image that is already built, layer by layer, with no engine needed.

- `archive`: read a `docker save` archive (manifest, config, layer tars) and write one.
- `merged`: the merged file system of the layers (whiteouts, opaque folders), the Python
  environments in it, and their materialisation into a work folder.
- `relayer`: new layer tars: drop what the plan removed and every copy a later layer hides,
  put stripped files in place; a layer that loses nothing is copied byte for byte.
- `incontainer`: run slimmer's checks inside a container, with the environment's own interpreter.
- `slim`: the whole job (save, extract, plan, apply, rewrite, load, verify) and its result.
"""
