"""Generates runtime/pb/ from runtime/proto/runtime.proto.

    python -m runtime.codegen           # write the generated modules
    python -m runtime.codegen --check   # exit 1 when the committed ones are stale

The generated code is committed rather than produced at build time: the runtime,
web and worker then import it with only grpcio and protobuf installed (no
compiler in production images), and mypy and reviewers see what is imported. A
test runs --check so the committed code cannot drift from the .proto.
"""

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "pb"
PROTO = "runtime.proto"
GENERATED = ("runtime_pb2.py", "runtime_pb2.pyi", "runtime_pb2_grpc.py")


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc  # type: ignore[import-untyped]  # development only

    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(PROTO_DIR / PROTO),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # protoc writes `import runtime_pb2`; we import it as part of the package.
    grpc_module = out_dir / "runtime_pb2_grpc.py"
    text = grpc_module.read_text()
    grpc_module.write_text(text.replace("import runtime_pb2 as", "from runtime.pb import runtime_pb2 as"))


def stale_files() -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        return [
            name
            for name in GENERATED
            if not (OUT_DIR / name).exists()
            or (OUT_DIR / name).read_bytes() != (Path(tmp) / name).read_bytes()
        ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail when runtime/pb/ is not current")
    options = parser.parse_args()
    if options.check:
        stale = stale_files()
        if stale:
            print(
                f"runtime/pb is stale ({', '.join(stale)}); run: python -m runtime.codegen", file=sys.stderr
            )
            raise SystemExit(1)
        print("runtime/pb is current")
        return
    OUT_DIR.mkdir(exist_ok=True)
    generate(OUT_DIR)
    print(f"wrote {', '.join(GENERATED)} to runtime/pb/")


if __name__ == "__main__":
    main()
