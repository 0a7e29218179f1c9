"""Output comparison between a reference and a candidate, with the figures a user needs to judge it.

Used for export parity (ONNX vs the source framework) and, later, precision gates
(a variant vs the fp32 reference). A comparison that fails raises; it never only warns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Figures:
    """Worst-case agreement of one output over all compared shapes."""

    max_abs: float = 0.0
    # |a-b| / |b| over elements with |b| above min(atol, 1e-4)
    max_rel: float = 0.0
    # the lowest per-sample cosine similarity (each batch row flattened)
    cosine_min: float = 1.0
    # elements violating |a-b| <= atol + rtol*|b|
    mismatched: int = 0
    elements: int = 0
    nonfinite: bool = False

    def update(self, reference: np.ndarray, candidate: np.ndarray, atol: float, rtol: float) -> None:
        ref = np.asarray(reference, dtype=np.float64)
        cand = np.asarray(candidate, dtype=np.float64)
        if ref.shape != cand.shape:
            raise ValueError(f"shape {cand.shape} differs from the reference's {ref.shape}")
        if not (np.isfinite(ref).all() and np.isfinite(cand).all()):
            self.nonfinite = True
            return
        diff = np.abs(ref - cand)
        self.elements += diff.size
        self.mismatched += int((diff > atol + rtol * np.abs(ref)).sum())
        self.max_abs = max(self.max_abs, float(diff.max(initial=0.0)))
        significant = np.abs(ref) > max(min(atol, 1e-4), 1e-12)  # near-zero references make ratios meaningless
        if significant.any():
            self.max_rel = max(self.max_rel, float((diff[significant] / np.abs(ref[significant])).max()))
        rows_ref = ref.reshape(ref.shape[0], -1) if ref.ndim > 1 else ref.reshape(1, -1)
        rows_cand = cand.reshape(rows_ref.shape)
        norms = np.linalg.norm(rows_ref, axis=1) * np.linalg.norm(rows_cand, axis=1)
        cos = np.where(norms > 0, (rows_ref * rows_cand).sum(axis=1) / np.maximum(norms, 1e-300), 1.0)
        self.cosine_min = min(self.cosine_min, float(cos.min(initial=1.0)))

    def passed(self, cosine_min: float) -> bool:
        return not self.nonfinite and self.mismatched == 0 and self.cosine_min >= cosine_min

    def summary(self) -> dict[str, str]:
        """Rounded to 3 significant digits so manifests stay byte-stable across machines' last bits."""
        return {
            "max_abs": f"{self.max_abs:.3g}",
            "max_rel": f"{self.max_rel:.3g}",
            "cosine_min": f"{self.cosine_min:.6f}",
        }


@dataclass
class Comparison:
    atol: float
    rtol: float
    cosine_min: float
    outputs: dict[str, Figures] = field(default_factory=dict)
    shapes: list[str] = field(default_factory=list)
    notes: dict = field(default_factory=dict)  # what else was checked (e.g. greedy tokens compared)

    def add(self, shape_label: str, reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> None:
        self.shapes.append(shape_label)
        for name, ref in reference.items():
            self.outputs.setdefault(name, Figures()).update(ref, candidate[name], self.atol, self.rtol)

    @property
    def passed(self) -> bool:
        return all(f.passed(self.cosine_min) for f in self.outputs.values())

    def describe(self) -> str:
        """One line per output: the figures and the limits they were held to."""
        lines = []
        for name, f in self.outputs.items():
            if f.nonfinite:
                lines.append(f"  {name}: NaN or Inf in the outputs")
                continue
            verdict = "ok" if f.passed(self.cosine_min) else "FAILED"
            lines.append(
                f"  {name}: max abs err {f.max_abs:.3g}, max rel err {f.max_rel:.3g}, min cosine {f.cosine_min:.6f}; "
                f"{f.mismatched}/{f.elements} elements outside atol={self.atol:g} + rtol={self.rtol:g}·|ref|, "
                f"cosine limit {self.cosine_min:g}: {verdict}"
            )
        return "\n".join(lines)

    def summary(self) -> dict:
        return {
            "atol": f"{self.atol:g}", "rtol": f"{self.rtol:g}", "cosine_min": f"{self.cosine_min:g}",
            "shapes": list(self.shapes),
            "outputs": {name: f.summary() for name, f in self.outputs.items()},
            **self.notes,
        }
