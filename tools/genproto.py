"""Regenerate the protobuf modules from the wire authority in ``specs/proto/``.

Every ``specs/proto/<name>.proto`` becomes ``p2pshard/core/wire/<name>_pb2.py`` (+ ``.pyi``).
Run with ``nox -s proto`` or ``python tools/genproto.py``; the generated files are committed,
and ``--check`` exits non-zero when they are out of date.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "specs" / "proto"
OUT_DIR = ROOT / "p2pshard" / "core" / "wire"


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc  # dev dependency only

    protos = sorted(PROTO_DIR.glob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--mypy_out={out_dir}",
        *[str(p) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    generated = sorted(out_dir.glob("*_pb2.py*"))
    for path in generated:
        if path.suffix == ".py":
            # protoc emits absolute imports between generated modules; make them package-relative.
            text = path.read_text()
            for proto in protos:
                mod = proto.stem + "_pb2"
                text = text.replace(f"\nimport {mod} as ", f"\nfrom . import {mod} as ")
            path.write_text(text)
    return generated


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed code is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
        stale = [
            f.name
            for f in files
            if not (OUT_DIR / f.name).exists() or not filecmp.cmp(f, OUT_DIR / f.name, shallow=False)
        ]
        if args.check:
            if stale:
                print("stale generated protobuf modules:", ", ".join(stale), file=sys.stderr)
                return 1
            return 0
        for f in files:
            shutil.copy(f, OUT_DIR / f.name)
        print(f"generated {len(files)} files into {OUT_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
