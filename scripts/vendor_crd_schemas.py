#!/usr/bin/env python3
"""Turn CustomResourceDefinitions into the JSON Schemas `nimbuild k8s`'s output is validated with
offline (tests/unit/test_k8s.py), as kubeconform's openapi2jsonschema does: each served version's
openAPIV3Schema, with apiVersion and kind pinned and, strict, `additionalProperties: false` on
every object that lists its properties and does not keep unknown fields (the API server would
prune a misspelled field silently; strict validation names it). Descriptions are dropped (they are
most of the bytes); the files are gzipped (the InferenceService schema is 720 KB of JSON, 1/20 of it
compressed).

    scripts/vendor_crd_schemas.py OUT_DIR CRD.yaml... --source "owner/repo@commit"

Run here on NVIDIA/k8s-nim-operator@f63f74d7 (deployments/helm/k8s-nim-operator/crds/
apps.nvidia.com_{nimcaches,nimservices}.yaml) and kserve/kserve@aaac4e29 (config/crd/full/
serving.kserve.io_{inferenceservices,servingruntimes}.yaml); both Apache-2.0 (tests/schemas/crds/NOTICE).
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import yaml


def strict(schema):
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items() if k != "description"}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def convert(crd: dict, source: str) -> dict[str, dict]:
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    schemas = {}
    for version in crd["spec"]["versions"]:
        if not version.get("served"):
            continue
        schema = strict(version["schema"]["openAPIV3Schema"])
        schema["properties"]["apiVersion"] = {"const": f"{group}/{version['name']}"}
        schema["properties"]["kind"] = {"const": kind}
        schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: checked by kubernetes-validate's rules
        schema["required"] = sorted({"apiVersion", "kind", "metadata", *schema.get("required", [])})
        schema["$comment"] = f"from {source}: {kind} {group}/{version['name']} (scripts/vendor_crd_schemas.py)"
        schemas[f"{kind.lower()}-{group.split('.')[0]}-{version['name']}.json.gz"] = schema
    return schemas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("crds", nargs="+", type=Path)
    parser.add_argument("--source", required=True, help="owner/repo@commit the CRDs come from")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.crds:
        for name, schema in convert(yaml.safe_load(path.read_text()), args.source).items():
            text = json.dumps(schema, separators=(",", ":"), sort_keys=True) + "\n"
            (args.out / name).write_bytes(gzip.compress(text.encode(), mtime=0))  # same input, same bytes
            print(f"{args.out / name}: {(args.out / name).stat().st_size} bytes")


if __name__ == "__main__":
    main()
