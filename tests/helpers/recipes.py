"""Small recipes for tests, and compiles through the CLI."""

from pathlib import Path


def compiled(tmp_path_factory, recipe: Path, *options: str) -> Path:
    """`nimbuild compile RECIPE` into a fresh directory through the CLI (in-process); its output directory."""
    from click.testing import CliRunner

    from nimbuild.cli import main

    out = tmp_path_factory.mktemp(recipe.stem) / "out"
    result = CliRunner().invoke(main, ["-q", "compile", str(recipe), "--out", str(out), *options])
    assert result.exit_code == 0, result.output
    return out



def recipe_text(source: str, task: str = "embedding", *, batch=(1, 2, 4), sequence=(1, 16, 64),
                parity: str = "{}", name: str = "tiny", extra: str = "", profile: str = "latency",
                precisions: dict[str, str] | None = None, targets: tuple[str, ...] | None = None) -> str:
    """A small recipe; precisions map a name to its YAML spec, targets are YAML flow mappings."""
    precisions = precisions or {"fp32": "{}"}
    targets = targets or ("{type: generic, backend: onnxruntime, precisions: [fp32]}",)
    return "\n".join([
        f"name: {name}", "release: 0.1.0", "source:", f"  hf: {source}", f"task: {task}",
        "export:", "  opset: 18", "  inputs:", f"    input_ids: {{batch: {list(batch)}, sequence: {list(sequence)}}}",
        f"  parity: {parity}", "precisions:", *(f"  {k}: {v}" for k, v in precisions.items()),
        "targets:", *(f"  - {t}" for t in targets), f"serving: {{max_batch_size: 4, profile: {profile}}}", "",
    ]) + extra
