"""Regenerate the Python stubs beside the .proto files, or check that the committed ones are fresh.

Usage: ``python proto/gen.py`` rewrites ``proto/shardless/v1/*_pb2*.py*``;
``python proto/gen.py --check`` regenerates into a temporary folder and exits 1 if any committed
stub differs (CI runs it, like etcd's ``verify-genproto``). Never edit the output by hand.

``proto/`` is the include root for clients in any language (docs/clients.md), so it also holds
``google/rpc/status.proto`` and ``google/rpc/error_details.proto`` (the rich error details),
copied verbatim from googleapis-common-protos. No Python is generated for them: Python imports
``google.rpc`` from that package, a dependency of grpcio-status, and a second copy of the same
modules would clash with it. Both modes compile every ``.proto`` under ``proto/`` once (into a
throwaway descriptor set), so a file that does not resolve from this root fails here.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
PACKAGE_DIR = PROTO_ROOT / "shardless" / "v1"


def generate(out_dir: Path) -> list[Path]:
    """Compile every .proto under shardless/v1 into out_dir, mirroring the package path."""
    protos = sorted(PACKAGE_DIR.glob("*.proto"))
    include = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p.relative_to(PROTO_ROOT)) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out_dir / "shardless" / "v1").glob("*_pb2*.py*"))


def check_include_root(out_dir: Path) -> None:
    """Compile every .proto under proto/ (generating no code), so the root is complete."""
    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    include = Path(protoc.__file__).resolve().parent / "_proto"  # google/protobuf only
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--descriptor_set_out={out_dir / 'all.pb'}",
        *[str(p.relative_to(PROTO_ROOT)) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed: proto/ is not a complete include root")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed stubs are stale")
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        check_include_root(Path(tmp))
        if ns.check:
            committed = sorted(PACKAGE_DIR.glob("*_pb2*.py*"))
            names = {p.name for p in fresh}
            stale = [p.name for p in fresh if not (PACKAGE_DIR / p.name).exists()
                     or not filecmp.cmp(p, PACKAGE_DIR / p.name, shallow=False)]
            stale += [p.name for p in committed if p.name not in names]
            if stale:
                print("stale generated stubs (run python proto/gen.py):", ", ".join(stale))
                return 1
            print(f"generated stubs are fresh ({len(fresh)} files)")
            return 0
        for p in fresh:
            shutil.copyfile(p, PACKAGE_DIR / p.name)
            print("wrote", (PACKAGE_DIR / p.name).relative_to(PROTO_ROOT.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
