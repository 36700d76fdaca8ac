"""The paper's orderings between configurations of recipes/fashion-dit/, checked on an evaluation's
rows (tools/evaluate.py writes OUT/claims.md with them): for each pair "A better than B" and each
metric (PSNR, SSIM and class accuracy higher, Frechet distance lower), whether it holds here.
A pair whose configurations were not both evaluated is left out, and so is a metric the evaluation
did not compute (a text-to-image pipeline has no class accuracy)."""

# (table, better, worse): what the paper reports or argues.
CLAIMS = [
    ("1", "rtn-sint4-w4a16", "rtn-sint4-w4a4"),
    ("1", "svdquant-sint4-w4a4", "rtn-sint4-w4a4"),
    ("1", "loraq-sint4-r128-w4a4", "svdquant-sint4-w4a4"),
    ("1", "loraq-sint4-r128-w4a4", "rtn-sint4-w4a4"),
    ("2", "loraq-mxint4-r128-w4a4", "svdquant-mxint4-w4a4"),
    # Table 3: sub-16-bit branches at the fp16 rank-32 budget do at least as well as the fp16 branch;
    # with integers, mxint8 at rank 64 beats mxint4 at rank 128.
    ("3", "loraq-mxfp4-mxfp8_e4m3-r64-a8", "loraq-mxfp4-fp16-r32-a8"),
    ("3", "loraq-mxfp4-mxfp6_e2m3-r86-a8", "loraq-mxfp4-fp16-r32-a8"),
    ("3", "loraq-mxfp4-mxfp4-r128-a8", "loraq-mxfp4-fp16-r32-a8"),
    ("3", "loraq-mxint4-mxint8-r64-a8", "loraq-mxint4-mxint4-r128-a8"),
    # Table 4: similarity improves with rank (quality metrics not always).
    ("4", "loraq-mxfp4-mxfp8_e4m3-r64-a8", "loraq-mxfp4-mxfp8_e4m3-r32-a8"),
    ("4", "loraq-mxfp4-mxfp8_e4m3-r96-a8", "loraq-mxfp4-mxfp8_e4m3-r64-a8"),
    ("4", "loraq-mxfp4-mxfp8_e4m3-r128-a8", "loraq-mxfp4-mxfp8_e4m3-r96-a8"),
    # Table 5: the learned rotation lowers the error.
    ("5", "loraq-mxfp4-mxfp8_e4m3-r64-a8", "loraq-mxfp4-mxfp8_e4m3-r64-a8-norotation"),
    ("5", "loraq-mxfp4-mxfp4-r128-a8", "loraq-mxfp4-mxfp4-r128-a8-norotation"),
]
METRICS = [("psnr_db", "PSNR", 1), ("ssim", "SSIM", 1), ("frechet_distance", "Frechet", -1),
           ("class_accuracy", "class acc.", 1)]


def claims_markdown(rows: list[dict]) -> str:
    by_name = {r["configuration"]: r for r in rows}
    lines = ["| table | better | than | " + " | ".join(m[1] for m in METRICS) + " |",
             "|---|---|---|" + "---|" * len(METRICS)]
    held = total = 0
    for table, better, worse in CLAIMS:
        if better not in by_name or worse not in by_name:
            continue
        cells = []
        for key, _, sign in METRICS:
            a, b = by_name[better].get(key), by_name[worse].get(key)
            if a is None or b is None:
                cells.append("-")
                continue
            ok = sign * (a - b) > 0
            held, total = held + ok, total + 1
            cells.append(f"{'holds' if ok else 'fails'} ({a:.4g} vs {b:.4g})")
        lines.append(f"| {table} | {better} | {worse} | " + " | ".join(cells) + " |")
    return (f"# The paper's orderings on this evaluation\n\n{held} of {total} (claim, metric) pairs hold. "
            "Higher is better for PSNR, SSIM and class accuracy, lower for the Frechet distance; a tie counts "
            "as failing.\n\n" + "\n".join(lines) + "\n")
