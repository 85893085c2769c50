"""Print the fault runs in tests/artifacts/faults.jsonl (the newest run of each fault) as a Markdown table."""

import json
import sys
from pathlib import Path


def main(path: str = "tests/artifacts/faults.jsonl") -> None:
    newest: dict[str, dict] = {}
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        newest[row["fault"]] = row
    print("| fault | unit | sent | out | duplicates | lost | recover (s) | notes |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    fixed = {"fault", "unit", "sent", "out", "duplicates", "lost", "recover_s", "at"}
    for row in newest.values():
        notes = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in row.items() if k not in fixed)
        lost = "n/a" if row["lost"] is None else row["lost"]
        print(f"| {row['fault']} | {row['unit']} | {row['sent']} | {row['out']} | {row['duplicates']} | {lost} "
              f"| {row['recover_s']} | {notes} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
