#!/usr/bin/env python3
"""Build the bundled price file for the offline ``sample`` market-data provider.

The data is derived from the BSD-3-Clause licensed CSV datasets shipped inside
the ``skfolio`` wheel (Copyright (c) The skfolio developers).  skfolio itself is
never installed or imported: the wheel is opened as a zip archive.

Inputs (inside the wheel, under ``skfolio/datasets/data/``):

* ``sp500_dataset.csv.gz``   -- Date + 20 S&P 500 stocks, adjusted closes
* ``sp500_index.csv.gz``     -- Date, SP500 (stored here under ``^GSPC``)
* ``factors_dataset.csv.gz`` -- Date, MTUM QUAL SIZE USMV VLUE (iShares ETFs)

Outputs (in ``batch/data/`` unless ``--output-dir`` is given):

* ``sample_prices.csv.gz``            -- wide CSV ``date,<symbols sorted>``,
  gzip with mtime=0 and no embedded file name, so rebuilding is byte-identical
* ``sample_prices.provenance.json``   -- source, license, range, checksums

Usage::

    python scripts/build_sample_data.py --wheel /path/to/skfolio-X.Y.Z-py3-none-any.whl
    python scripts/build_sample_data.py          # downloads the wheel with pip

Only the standard library is used.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import math
import re
import subprocess
import sys
import tempfile
import zipfile
from email.parser import HeaderParser
from pathlib import Path

START_DATE = "2014-01-02"
END_DATE = "2022-12-28"

DATA_DIR_IN_WHEEL = "skfolio/datasets/data/"

# source file -> {source column: symbol stored in the bundled file}
SOURCES: dict[str, dict[str, str]] = {
    "sp500_dataset.csv.gz": {
        s: s
        for s in (
            "AAPL AMD BAC BBY CVX GE HD JNJ JPM KO LLY MRK MSFT "
            "PEP PFE PG RRC UNH WMT XOM"
        ).split()
    },
    "sp500_index.csv.gz": {"SP500": "^GSPC"},
    "factors_dataset.csv.gz": {s: s for s in "MTUM QUAL SIZE USMV VLUE".split()},
}

OUTPUT_CSV = "sample_prices.csv.gz"
OUTPUT_PROVENANCE = "sample_prices.provenance.json"
LICENSE_ID = "BSD-3-Clause"

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT_DIR = REPO_ROOT / "batch" / "data"

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_WHEEL_RE = re.compile(r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[^-]+)-.+\.whl$")


class BuildError(RuntimeError):
    """Raised when the source data fails validation."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


# The release the committed bundle was built from; pinned so a rebuild is byte-identical.
SKFOLIO_VERSION = "1.12.2"


def download_wheel(dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps",
        "--only-binary=:all:", f"skfolio=={SKFOLIO_VERSION}", "-d", str(dest),
    ]
    print("Downloading skfolio wheel:", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    wheels = sorted(dest.glob("skfolio-*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"expected exactly one skfolio wheel in {dest}, found {wheels}")
    return wheels[0]


def package_identity(wheel: Path, zf: zipfile.ZipFile) -> tuple[str, str]:
    """Return (name, version) from METADATA, cross-checked with the filename."""
    meta_names = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
    if len(meta_names) != 1:
        raise BuildError(f"{wheel.name}: expected one dist-info/METADATA, found {meta_names}")
    meta = HeaderParser().parsestr(zf.read(meta_names[0]).decode("utf-8"))
    name, version = meta["Name"], meta["Version"]
    if not name or not version:
        raise BuildError(f"{wheel.name}: METADATA lacks Name/Version")
    m = _WHEEL_RE.match(wheel.name)
    if m and (m["version"] != version or m["name"].lower().replace("_", "-") != name.lower()):
        raise BuildError(
            f"wheel filename {wheel.name!r} disagrees with METADATA ({name} {version})"
        )
    if name.lower() != "skfolio":
        raise BuildError(f"{wheel.name}: not an skfolio wheel (Name: {name})")
    return name, version


def read_source(zf: zipfile.ZipFile, filename: str, columns: dict[str, str]):
    """Read one source CSV; return {date: {symbol: value-string}} within range.

    Values are kept as the exact strings found in the source (no re-rounding).
    Empty cells are omitted from the inner dict (reported later as gaps).
    """
    member = DATA_DIR_IN_WHEEL + filename
    try:
        raw = zf.read(member)
    except KeyError:
        raise BuildError(f"{member} not found in wheel") from None
    text = gzip.decompress(raw).decode("utf-8")
    reader = csv.reader(io.StringIO(text))
    header = next(reader)
    if not header or header[0].strip().lower() != "date":
        raise BuildError(f"{filename}: first column must be Date, got {header[:1]}")
    header = [h.strip() for h in header]
    missing_cols = sorted(set(columns) - set(header[1:]))
    if missing_cols:
        raise BuildError(f"{filename}: missing columns {missing_cols}")
    col_idx = {header.index(c): sym for c, sym in columns.items()}

    out: dict[str, dict[str, str]] = {}
    prev_date = None
    for lineno, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise BuildError(f"{filename}:{lineno}: {len(row)} fields, expected {len(header)}")
        date = row[0].strip()
        if not _DATE_RE.match(date):
            raise BuildError(f"{filename}:{lineno}: bad date {date!r}")
        if prev_date is not None and date <= prev_date:
            raise BuildError(
                f"{filename}:{lineno}: dates not strictly increasing ({prev_date} -> {date})"
            )
        prev_date = date
        if not (START_DATE <= date <= END_DATE):
            continue
        values: dict[str, str] = {}
        for idx, sym in col_idx.items():
            cell = row[idx].strip()
            if cell == "":
                continue
            try:
                value = float(cell)
            except ValueError:
                raise BuildError(f"{filename}:{lineno}: {sym} not numeric: {cell!r}") from None
            if not math.isfinite(value) or value <= 0:
                raise BuildError(f"{filename}:{lineno}: {sym} not positive/finite: {cell!r}")
            values[sym] = cell
        out[date] = values
    if not out:
        raise BuildError(f"{filename}: no rows in {START_DATE}..{END_DATE}")
    return out


def write_gzip_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    payload = buf.getvalue().encode("utf-8")
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as raw:
        # filename="" keeps the temp file's name out of the gzip header.
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
            gz.write(payload)
    tmp.replace(path)


def build(wheel: Path, output_dir: Path) -> dict:
    with zipfile.ZipFile(wheel) as zf:
        pkg_name, pkg_version = package_identity(wheel, zf)
        per_source = {fn: read_source(zf, fn, cols) for fn, cols in SOURCES.items()}

    symbols = sorted(sym for cols in SOURCES.values() for sym in cols.values())
    if len(symbols) != len(set(symbols)):
        raise BuildError("duplicate symbols across sources")

    # One row per date present in any source within the range.
    dates = sorted(set().union(*(d.keys() for d in per_source.values())))
    if any(a >= b for a, b in zip(dates, dates[1:])):  # pragma: no cover - sorted set
        raise BuildError("dates not strictly increasing")

    merged: dict[str, dict[str, str]] = {d: {} for d in dates}
    for data in per_source.values():
        for date, values in data.items():
            merged[date].update(values)

    rows: list[list[str]] = []
    gaps: list[dict[str, str]] = []
    for date in dates:
        values = merged[date]
        row = [date]
        for sym in symbols:
            cell = values.get(sym, "")
            if cell == "":
                gaps.append({"date": date, "symbol": sym})
            row.append(cell)
        rows.append(row)

    output_dir.mkdir(parents=True, exist_ok=True)
    csv_path = output_dir / OUTPUT_CSV
    write_gzip_csv(csv_path, ["date", *symbols], rows)
    csv_sha = sha256_file(csv_path)

    provenance = {
        "source": {
            "package": pkg_name,
            "version": pkg_version,
            "wheel": wheel.name,
            "wheel_sha256": sha256_file(wheel),
            "license": LICENSE_ID,
            "copyright": "Copyright (c) The skfolio developers",
            "files": [
                {
                    "path": DATA_DIR_IN_WHEEL + fn,
                    "columns": {src: sym for src, sym in cols.items()},
                }
                for fn, cols in SOURCES.items()
            ],
        },
        "content": "adjusted close prices only (no open/high/low/volume in the source)",
        "output": OUTPUT_CSV,
        "start_date": dates[0],
        "end_date": dates[-1],
        "symbols": symbols,
        "row_count": len(rows),
        "missing_cells": gaps,
        "sha256": csv_sha,
        "build_command": (
            "python scripts/build_sample_data.py --wheel "
            f"{wheel.name}"
        ),
    }
    prov_path = output_dir / OUTPUT_PROVENANCE
    prov_path.write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")

    return {
        "csv_path": csv_path,
        "prov_path": prov_path,
        "package": f"{pkg_name} {pkg_version}",
        "rows": len(rows),
        "symbols": symbols,
        "start": dates[0],
        "end": dates[-1],
        "gaps": gaps,
        "sha256": csv_sha,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--wheel", type=Path,
        help="path to an skfolio wheel; if omitted it is fetched with "
             "'python -m pip download --no-deps skfolio==1.12.2'",
    )
    parser.add_argument(
        "--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR,
        help=f"where to write the outputs (default: {DEFAULT_OUTPUT_DIR})",
    )
    args = parser.parse_args(argv)

    try:
        if args.wheel is not None:
            if not args.wheel.is_file():
                parser.error(f"wheel not found: {args.wheel}")
            result = build(args.wheel, args.output_dir)
        else:
            with tempfile.TemporaryDirectory(prefix="skfolio-wheel-") as tmp:
                result = build(download_wheel(Path(tmp)), args.output_dir)
    except (BuildError, zipfile.BadZipFile, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    print(f"source:   {result['package']} ({LICENSE_ID})")
    print(f"range:    {result['start']} .. {result['end']}, {result['rows']} rows")
    print(f"symbols:  {len(result['symbols'])}: {' '.join(result['symbols'])}")
    if result["gaps"]:
        print(f"WARNING:  {len(result['gaps'])} missing cells (left empty, listed in provenance)")
        for gap in result["gaps"][:10]:
            print(f"          {gap['date']} {gap['symbol']}")
    else:
        print("gaps:     none")
    size = result["csv_path"].stat().st_size
    print(f"wrote:    {result['csv_path']} ({size} bytes)")
    print(f"wrote:    {result['prov_path']}")
    print(f"sha256:   {result['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
