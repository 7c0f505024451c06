"""The evaluation's reports: report.json, report.md (tables) and report.png (quality by dim)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jobs.quality.metrics import METRICS


def write_reports(out: Path, report: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    plot(report, out / "report.png")


def by_dim(scores: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    return sorted(scores.items(), key=lambda item: -int(item[0]))


def markdown(report: dict[str, Any]) -> str:
    rotated = report.get("rotated")
    lines = [
        f"# {report['model']}: retrieval quality by dim",
        "",
        f"Set: {report['set']} ({report['documents']} documents, {report['queries']} queries).",
        "Retention = score at that dim / score at the full dim.",
        "",
    ]
    if rotated:
        lines += [
            "Plain truncation against truncation after a rotation into the documents' "
            "principal axes (`--rotate pca`, fitted on the documents only):",
            "",
            "| dim | nDCG@10 | nDCG ret. | nDCG ret. (pca) | MRR ret. | MRR ret. (pca) | "
            "recall ret. | recall ret. (pca) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for dim, s in by_dim(report["dims"]):
            r = rotated[dim]
            lines.append(
                f"| {dim} | {s['ndcg@10']:.4f} | {s['ndcg@10 retention']:.3f} | "
                f"{r['ndcg@10 retention']:.3f} | {s['mrr@10 retention']:.3f} | "
                f"{r['mrr@10 retention']:.3f} | {s['recall@10 retention']:.3f} | "
                f"{r['recall@10 retention']:.3f} |"
            )
    else:
        lines += [
            "| dim | recall@10 | nDCG@10 | MRR@10 | recall ret. | nDCG ret. | MRR ret. |",
            "|---|---|---|---|---|---|---|",
        ]
        for dim, s in by_dim(report["dims"]):
            lines.append(
                f"| {dim} | {s['recall@10']:.4f} | {s['ndcg@10']:.4f} | {s['mrr@10']:.4f} | "
                f"{s['recall@10 retention']:.3f} | {s['ndcg@10 retention']:.3f} | "
                f"{s['mrr@10 retention']:.3f} |"
            )
    lines += [
        "",
        f"Recommended dim: **{report['recommended_dim']}** with "
        f"{report['recommended_method']} (the smallest keeping at least "
        f"{report['keep']:.2f} of full-dim nDCG@10).",
        "",
    ]
    return "\n".join(lines + tradeoff_lines(report) + backend_cost_lines(report))


def tradeoff_lines(report: dict[str, Any]) -> list[str]:
    table = report["tradeoffs"]
    rotated = "ndcg@10 retention (pca)" in table[0]
    header = (
        "| dim | precision | bytes/vector | storage | search/query | speed-up | nDCG ret. | "
        "recall ret. |"
    )
    rule = "|---|---|---|---|---|---|---|---|"
    if rotated:
        header += " nDCG ret. (pca) | recall ret. (pca) |"
        rule += "---|---|"
    lines = [
        "## Storage, search speed and quality by dim and precision",
        "",
        f"Exact search of one query over the {report['documents']} documents: the median of "
        f"{table[0]['timing_repeats']} timed numpy searches (score all, take the top 10); "
        "numpy has no int8 matrix kernel, so int8 here is slower than a vector store's SIMD "
        "would make it. Storage and speed-up are against full-dim float32; retention against "
        "full-dim float32 quality.",
        "",
        header,
        rule,
    ]
    for row in table:
        line = (
            f"| {row['dim']} | {row['precision']} | {row['bytes_per_vector']} | "
            f"{row['storage_share'] * 100:.1f} % | "
            f"{row['search_seconds_per_query'] * 1e6:.0f} µs | {row['speedup']:.1f}x | "
            f"{row['ndcg@10 retention']:.3f} | {row['recall@10 retention']:.3f} |"
        )
        if rotated:
            line += (
                f" {row['ndcg@10 retention (pca)']:.3f} | {row['recall@10 retention (pca)']:.3f} |"
            )
        lines.append(line)
    return lines + [""]


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    dims = sorted(int(d) for d in report["dims"])
    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    for metric in METRICS:
        line = axis.plot(
            dims, [report["dims"][str(d)][metric] for d in dims], marker="o", label=metric
        )[0]
        if report.get("rotated"):
            axis.plot(
                dims,
                [report["rotated"][str(d)][metric] for d in dims],
                marker="s",
                linestyle="--",
                color=line.get_color(),
                label=f"{metric}, --rotate pca",
            )
    axis.axvline(report["recommended_dim"], color="grey", linestyle=":", label="recommended")
    axis.set_xscale("log", base=2)
    axis.set_xticks(dims, [str(d) for d in dims])
    axis.set_xlabel("dim")
    axis.set_ylabel("score")
    axis.set_title(f"{report['model']} on {report['set']}")
    axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def backend_cost_lines(report: dict[str, Any]) -> list[str]:
    """What the backend or int8 model keeps of torch fp32 (jobs.quality.backends)."""
    cost = report.get("backend_cost")
    if not cost:
        return []
    quantized = "" if cost["quantization"] == "none" else f", {cost['quantization']} model"
    lines = [
        "",
        f"## {cost['backend']} in {cost['precision']}{quantized} against {cost['reference']}",
        "",
        f"Document vectors' cosine to the reference: min {cost['cosine_min']:.5f}, "
        f"mean {cost['cosine_mean']:.5f}.",
        "",
        "| dim | recall@10 kept | nDCG@10 kept | MRR@10 kept |",
        "|---|---|---|---|",
    ]
    for dim in sorted(cost["kept"], key=int, reverse=True):
        k = cost["kept"][dim]
        lines.append(f"| {dim} | {k['recall@10']:.4f} | {k['ndcg@10']:.4f} | {k['mrr@10']:.4f} |")
    return lines
