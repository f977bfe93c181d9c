"""Write the data slices under tests/data/ from the full copies (see SOURCE.md).

    python tests/data/make_slices.py            # GLUE_DIR, TREC_DIR default to ../shared/data/{glue,trec}
    python tests/data/make_slices.py --out DIR  # write somewhere else, e.g. to compare with the committed slices

Deterministic: every written line is a byte-exact line of its source file (BOM and quotes kept),
in the source's order. The sources are checked against the md5 sums their READMEs give first,
so a slice is never cut from another version of the data (or from a slice).
"""

import argparse
import hashlib
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[2] / "shared" / "data"

# GLUE: the header and the first rows of each file. The tests read at most 64 train and 48 dev rows.
GLUE_ROWS = {"train.tsv": 200, "dev.tsv": 100}
GLUE_MD5 = {
    "SST-2/train.tsv": "da409a0a939379ed32a470bc0f7fe99a",
    "SST-2/dev.tsv": "268856b487b2a31a28c0a93daaff7288",
    "MRPC/train.tsv": "dc2dac669a113866a6480a0b10cd50bf",
    "MRPC/dev.tsv": "185958e46ba556b38c6a7cc63f3a2135",
}
# TREC: source file -> (slice file, first lines taken); then the first TREC_MIN_PER_CLASS lines of
# any coarse class that has fewer among them (TREC_10's first ABBR question is on line 278).
TREC_FILES = {"train_5500.label": ("train.label", 200), "TREC_10.label": ("test.label", 100)}
TREC_MD5 = {"train_5500.label": "fb6331cf383298d9ebf141856af1b976",
            "TREC_10.label": "b6c5511c468a700f0ac8ca4b5524dfb3"}
TREC_CLASSES = (b"ABBR", b"DESC", b"ENTY", b"HUM", b"LOC", b"NUM")
TREC_MIN_PER_CLASS = 3


def source_lines(path: Path, md5: str) -> list[bytes]:
    data = path.read_bytes()
    if hashlib.md5(data).hexdigest() != md5:
        sys.exit(f"{path}: md5 {hashlib.md5(data).hexdigest()}, expected {md5} (another version of the data?)")
    return data.splitlines(keepends=True)


def glue_slice(lines: list[bytes], rows: int) -> list[bytes]:
    return lines[: rows + 1]  # the header, then the first rows


def trec_slice(lines: list[bytes], first: int) -> list[bytes]:
    keep = set(range(first))
    for label in TREC_CLASSES:
        have = [i for i, line in enumerate(lines) if line.split(b":", 1)[0] == label]
        keep.update(have[:TREC_MIN_PER_CLASS])
    return [lines[i] for i in sorted(keep)]


def write(path: Path, lines: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(lines))
    print(f"{path}: {len(lines)} lines, {path.stat().st_size:,} bytes")


def make_slices(glue_dir: Path, trec_dir: Path, out: Path) -> None:
    for name, md5 in GLUE_MD5.items():
        write(out / "glue" / name, glue_slice(source_lines(glue_dir / name, md5), GLUE_ROWS[Path(name).name]))
    for name, (target, first) in TREC_FILES.items():
        write(out / "trec" / target, trec_slice(source_lines(trec_dir / name, TREC_MD5[name]), first))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--glue-dir", type=Path, default=Path(os.environ.get("GLUE_DIR", SHARED / "glue")))
    p.add_argument("--trec-dir", type=Path, default=Path(os.environ.get("TREC_DIR", SHARED / "trec")))
    p.add_argument("--out", type=Path, default=HERE)
    args = p.parse_args(argv)
    make_slices(args.glue_dir, args.trec_dir, args.out)


if __name__ == "__main__":
    main()
