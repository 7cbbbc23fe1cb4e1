"""Scripts that `slimmer.verify` runs with the checked environment's own interpreter.

Each one is self-contained (it runs with `python -I`, so it cannot import its neighbours or
slimmer), works on Python 3.8 and later, and reports on stdout as lines `@@slimmer {json}`.
"""
