"""runtime_min: select, fetch and serve a nimbuild profile through a real Triton Inference Server.

It reuses nimbuild's profile, selection and registry code and never its build code.
"""
