"""Small utilities both sides use (build and target machine): files (hashes, atomic writes),
yamlsafe (the one bounded YAML reader), archive (unpacking untrusted tars), progress (stderr
reporting). None imports another part of nimbuild except errors."""
