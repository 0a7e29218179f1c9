"""CI build matrices (docs/design.md §9): one recipe fanned out over the kinds of builder host it needs.

- `cpu`: generic, TensorRT-RTX and RMIR targets (they build anywhere, no GPU needed);
- `gpu-smXY`: one cell per datacenter TensorRT compute capability (TensorRT cannot cross-build).

Each cell compiles with `nimbuild compile RECIPE --cell ID --out DIR` into a partial manifest with a
`cell.json` beside it; `nimbuild profiles merge` combines them, refusing conflicts and naming cells
that are missing or built nothing. The CI system (GitHub Actions, GitLab CI, Kubernetes Jobs
rendered from the same cells) is the distributed engine; nimbuild never schedules machines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from nimbuild.errors import NimbuildError, first_line
from nimbuild.util.files import atomic_write_text, sha256_bytes

CELL_FILE = "cell.json"


@dataclass
class Cell:
    id: str
    kind: str  # cpu | gpu
    profiles: list[str] = field(default_factory=list)  # descriptions of the profiles it builds
    compute_capability: str | None = None

    def runs_on(self) -> list[str]:
        """GitHub runner labels: a hosted runner for CPU cells, a self-hosted GPU runner per capability."""
        if self.kind == "cpu":
            return ["ubuntu-latest"]
        return ["self-hosted", "linux", "gpu", f"sm{self.compute_capability.replace('.', '')}"]

    def node_selector(self) -> dict[str, str]:
        """Kubernetes: GPU Feature Discovery's product label of a GPU with this compute capability."""
        if self.kind == "cpu":
            return {}
        from nimbuild.profiles.gpus import CATALOGUE

        model = next((m for m in CATALOGUE if m.compute_capability == self.compute_capability), None)
        if model is None:
            return {"nvidia.com/gpu.compute.major": self.compute_capability.split(".")[0],
                    "nvidia.com/gpu.compute.minor": self.compute_capability.split(".")[1]}
        return {"nvidia.com/gpu.product": model.name.replace(" ", "-")}


def cell_of(variant) -> str:
    tags = dict(variant.tags)
    # datacenter TensorRT and TensorRT-LLM build on a GPU of the target's compute capability
    if tags.get("backend") == "tensorrt" or tags.get("llm_engine") == "tensorrt_llm":
        return "gpu-sm" + tags["compute_capability"].replace(".", "")
    return "cpu"


def expand(variants) -> list[Cell]:
    cells: dict[str, Cell] = {}
    for v in variants:
        cid = cell_of(v)
        cc = dict(v.tags).get("compute_capability") if cid != "cpu" else None
        cells.setdefault(cid, Cell(cid, "gpu" if cc else "cpu", compute_capability=cc)).profiles.append(v.description)
    order = sorted(cells.values(), key=lambda c: (c.kind != "cpu", tuple(int(x) for x in (c.compute_capability or "0.0").split("."))))
    return order


def plan_digest(variants) -> str:
    return "sha256:" + sha256_bytes("\n".join(sorted(v.description for v in variants)).encode())


def select_cell(variants, cell_id: str):
    cells = [c.id for c in expand(variants)]
    if cell_id not in cells:
        raise NimbuildError(f"no cell {cell_id!r} in this recipe's matrix; its cells are {', '.join(cells)}")
    return [v for v in variants if cell_of(v) == cell_id]


def write_cell_record(out: Path, recipe, variants, cell_id: str, skipped: list[tuple[str, str]]) -> None:
    record = {"recipe": recipe.name, "release": recipe.release, "plan": plan_digest(variants), "cell": cell_id,
              "cells": [c.id for c in expand(variants)],
              "skipped": [{"profile": d, "reason": r} for d, r in skipped]}
    atomic_write_text(out / CELL_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_cell_record(path: Path) -> dict:
    """A cell's record as write_cell_record wrote it; anything else (not JSON, a field missing or of
    another type) is one line naming the file."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise NimbuildError(f"{path}: not a readable cell record ({first_line(e)}); recompile the cell") from None
    strings = ("recipe", "release", "plan", "cell")
    skipped = record.get("skipped") if isinstance(record, dict) else None
    if not (isinstance(record, dict) and all(isinstance(record.get(k), str) for k in strings)
            and isinstance(record.get("cells"), list) and all(isinstance(c, str) for c in record["cells"])
            and isinstance(skipped, list)
            and all(isinstance(x, dict) and isinstance(x.get("profile"), str) and isinstance(x.get("reason"), str)
                    for x in skipped)):
        raise NimbuildError(f"{path}: not a cell record (expected {', '.join(strings)}, cells and skipped); "
                            "recompile the cell")
    return record


def check_cells(records: list[tuple[str, dict]]) -> list[str]:
    """Problems with a set of partial outputs: different plans, missing cells, cells that built nothing."""
    if not records:
        return []
    problems = []
    plans = {r["plan"] for _, r in records}
    if len(plans) > 1:
        problems.append("the partial manifests come from different recipes or matrix plans")
    expected = records[0][1]["cells"]
    present = {r["cell"] for _, r in records}
    missing = [c for c in expected if c not in present]
    if missing:
        problems.append(f"missing cells: {', '.join(missing)}")
    for origin, r in records:
        for s in r.get("skipped", []):
            problems.append(f"cell {r['cell']} ({origin}) did not build {s['profile']}: {s['reason']}")
    return problems


def render(cells: list[Cell], recipe_path: str, fmt: str) -> str:
    rows = [{"cell": c.id, "kind": c.kind, "compute_capability": c.compute_capability, "runs_on": c.runs_on(),
             "node_selector": c.node_selector(), "profiles": c.profiles,
             "command": f"nimbuild compile {recipe_path} --cell {c.id} --out out/{c.id}"} for c in cells]
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "github":  # what strategy.matrix takes through fromJSON
        return json.dumps({"include": [{"cell": r["cell"], "runs_on": r["runs_on"], "command": r["command"]}
                                       for r in rows]}, separators=(",", ":"))
    if fmt == "gitlab":
        import yaml

        return yaml.safe_dump({"parallel": {"matrix": [{"CELL": [r["cell"] for r in rows]}]}}, sort_keys=False)
    if fmt == "k8s":
        return _k8s_jobs(rows, recipe_path)
    raise NimbuildError(f"unknown matrix format {fmt!r}")


def _k8s_jobs(rows: list[dict], recipe_path: str) -> str:
    import yaml

    docs = []
    for r in rows:
        container = {"name": "compile", "image": "${NIMBUILD_IMAGE}", "command": ["sh", "-c", r["command"]]}
        if r["kind"] == "gpu":
            container["resources"] = {"limits": {"nvidia.com/gpu": 1}}
        spec = {"restartPolicy": "Never", "containers": [container]}
        if r["node_selector"]:
            spec["nodeSelector"] = r["node_selector"]
        docs.append({"apiVersion": "batch/v1", "kind": "Job",
                     "metadata": {"name": f"nimbuild-{r['cell']}", "labels": {"app.kubernetes.io/name": "nimbuild",
                                                                            "nimbuild/cell": r["cell"]}},
                     "spec": {"backoffLimit": 1, "template": {"spec": spec}}})
    return yaml.safe_dump_all(docs, sort_keys=False)
