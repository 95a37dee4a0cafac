"""Decodes the golden MessagePack examples with Python's msgpack (no Rust involved),
compares each with its JSON twin, and re-encodes it for the Rust side to decode.

Usage: python3 roundtrip.py EXAMPLES_DIR OUT_DIR
Prints a JSON object {example: decoded_equals_json}.
"""
import json
import pathlib
import sys

import msgpack


def main() -> None:
    examples, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    report = {}
    for golden in sorted(examples.glob("*.msgpack")):
        decoded = msgpack.unpackb(golden.read_bytes(), raw=False)
        expected = json.loads(golden.with_suffix(".json").read_text())
        report[golden.stem] = decoded == expected
        (out / golden.name).write_bytes(msgpack.packb(decoded, use_bin_type=True))
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
