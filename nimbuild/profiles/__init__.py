"""Profiles: the manifest, tags, selection and system description.

Nothing in this package imports build code, heavy ML libraries or the CLI: target machines
run it to list and select profiles, and it must start fast.
"""
