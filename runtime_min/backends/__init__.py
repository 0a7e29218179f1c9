"""Triton Python-backend models, copied into the model repository as `<model>/1/model.py`."""
