#!/usr/bin/env python3
"""Markdown tables (medians over repetitions) from the JSON lines written by peers.sh.

usage: summarize.py results.jsonl
MB = 10^6 bytes, GB = 10^9 bytes.
"""
import json
import statistics
import sys
from collections import OrderedDict


def med(rows, key):
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    if not vals:
        return None
    return statistics.median(vals)


def fmt(v, digits=1):
    if v is None:
        return "—"
    if isinstance(v, float) and abs(v) < 10 and digits > 0:
        return f"{v:.{max(digits, 2)}f}"
    return f"{v:,.{digits}f}".replace(",", " ")


def mb(v):
    return "—" if v is None else fmt(v / 1e6, 1)


def main(path):
    lines = [json.loads(l) for l in open(path) if l.strip()]
    machine = next((l for l in lines if l.get("kind") == "machine"), {})
    end = next((l for l in lines if l.get("kind") == "end"), {})
    mutation = next((l for l in lines if l.get("kind") == "mutation"), None)
    out = []
    if machine:
        out.append(
            f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores, {machine.get('ram_gib')} GiB RAM, "
            f"{machine.get('fs')} on {machine.get('disk')}, kernel {machine.get('kernel')}; "
            f"restic {machine.get('restic')}, borg {machine.get('borg')}, rclone {machine.get('rclone')}, "
            f"b3sum {machine.get('b3sum')}; {machine.get('reps')} repetitions."
        )
        out.append(f"Start: {machine.get('date')} — `{machine.get('uptime', '').strip()}`")
        if end:
            out.append(f"End: {end.get('date')} — `{end.get('uptime', '').strip()}`")
        out.append("")

    groups = OrderedDict()
    notes = []
    for l in lines:
        if l.get("kind") in ("machine", "end", "mutation", "limit", "catalog_change"):
            continue
        if not l.get("ok", True) and "wall_s" not in l:
            notes.append(l)
            continue
        groups.setdefault((l.get("tool"), l.get("backend"), l.get("op")), []).append(l)

    out.append(
        "| tool | backend | operation | n | wall s | MB/s | CPU s (user+sys) | CPU s/GB | peak RSS MB "
        "| repo growth MB | tool-reported added MB | server CPU s | server peak RSS MB | files/s | load1 | notes |"
    )
    out.append("|" + "---|" * 16)
    for (tool, backend, op), rows in groups.items():
        ok = [r for r in rows if r.get("ok", True)]
        failed = len(rows) - len(ok)
        rows = ok or rows
        files = med(rows, "files")
        wall = med(rows, "wall_s")
        fps = files / wall if files and wall else None
        extra = []
        if failed:
            extra.append(f"{failed} failed")
        if any("verified" in r for r in rows):
            v = [r.get("verified") for r in rows]
            if any(x == "unverified" for x in v):
                extra.append("restore not verified (b3sum not installed)")
            elif all(x is True for x in v):
                extra.append("restore verified")
            else:
                extra.append(f"VERIFY FAILED {v.count(False)}/{len(v)}")
        if files and med(rows, "cpu_s") is not None:
            extra.append(f"{med(rows, 'cpu_s') / files * 1e6:.0f} µs CPU/file")
        if "changed_bytes" in rows[0]:
            extra.append(f"new data {mb(rows[0]['changed_bytes'])} MB")
        if med(rows, "bytes_sent") is not None:
            extra.append(f"sent {mb(med(rows, 'bytes_sent'))} MB")
        if med(rows, "ttfb_s") is not None:
            extra.append(f"first byte {med(rows, 'ttfb_s'):.3f} s")
        if med(rows, "server_pg_cpu_s") is not None:
            extra.append(
                f"of the server CPU, PostgreSQL {med(rows, 'server_pg_cpu_s'):.2f} s "
                f"(peak RSS of its largest process {fmt(med(rows, 'server_pg_peak_rss_mb'), 0)} MB)"
            )
        if med(rows, "server_cpu_s") is not None and rows[0].get("bytes"):
            extra.append(f"server {med(rows, 'server_cpu_s') / (rows[0]['bytes'] / 1e9):.2f} CPU s/GB")
        if med(rows, "out_bytes") is not None:
            extra.append(f"output {mb(med(rows, 'out_bytes'))} MB")
        loads = [r.get("load1") for r in rows if r.get("load1") is not None]
        out.append(
            "| "
            + " | ".join(
                [
                    str(tool),
                    str(backend),
                    str(op),
                    str(len(rows)),
                    fmt(wall, 2),
                    fmt(med(rows, "mb_s"), 0),
                    fmt(med(rows, "cpu_s"), 2),
                    fmt(med(rows, "cpu_s_per_gb"), 2),
                    fmt(med(rows, "max_rss_mb"), 0),
                    mb(med(rows, "repo_growth_bytes")),
                    mb(med(rows, "reported_added_bytes")),
                    fmt(med(rows, "server_cpu_s"), 2),
                    fmt(med(rows, "server_peak_rss_mb"), 0),
                    fmt(fps, 0),
                    f"{min(loads):.2f}–{max(loads):.2f}" if loads else "—",
                    "; ".join(extra),
                ]
            )
            + " |"
        )

    limits = [l for l in lines if l.get("kind") == "limit"]
    if limits:
        out.append("")
        out.append("| in-memory stage (bench-limits) | sample | threads | MB/s | CPU s/GB | zstd ratio |")
        out.append("|---|---|---|---|---|---|")
        for l in limits:
            ratio = l.get("ratio")
            out.append(
                f"| {l['stage']} | {l['class']} ({l['bytes'] / 1e6:.0f} MB) | {l['threads']} | "
                f"{fmt(l['mb_s'], 0)} | {fmt(l['cpu_s_per_gb'], 2)} | {'—' if ratio is None else f'{ratio:.3f}'} |"
            )
    catalog = next((l for l in lines if l.get("kind") == "catalog_change" and "changed_pages" in l), None)
    if catalog:
        out.append("")
        out.append(
            f"Catalog edit ({catalog['file']}): {catalog['changed_pages']} pages of {catalog['page_size']} B changed "
            f"= {catalog['changed_page_bytes']} B ({catalog['changed_bytes_exact']} bytes differ); "
            f"size {catalog['size_before']} -> {catalog['size_after']} B."
        )
        out.append("")
        out.append("| tool | backend | new bytes for the catalog edit | x changed pages | repo growth |")
        out.append("|---|---|---|---|---|")
        for (tool, backend, op), rows in groups.items():
            if op != "catalog-incremental":
                continue
            added = med(rows, "reported_added_bytes")
            ratio = added / catalog["changed_page_bytes"] if added is not None and catalog["changed_page_bytes"] else None
            out.append(
                f"| {tool} | {backend} | {'—' if added is None else int(added)} | "
                f"{'—' if ratio is None else f'{ratio:.2f}'} | {'—' if med(rows, 'repo_growth_bytes') is None else int(med(rows, 'repo_growth_bytes'))} |"
            )
    if mutation:
        out.append("")
        out.append(
            f"Mutation (day 1): {mutation['new_photos']} new photos ({mb(mutation['new_bytes'])} MB), "
            f"{mutation['xmp_rewritten']} XMP sidecars rewritten, {mutation['catalog_rows_updated']} catalog rows updated."
        )
    if notes:
        out.append("")
        out.append("Not measured:")
        for n in notes:
            out.append(f"- {n.get('tool')} {n.get('backend', '')} {n.get('op', '')}: {n.get('note', 'failed')}")
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
