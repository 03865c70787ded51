"""``python -m sglang.launch_server --model-path ...``: start the HTTP server and its engine."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from sglang.srt.entrypoints.http_server import launch_server
    from sglang.srt.server_args import prepare_server_args

    try:
        server_args = prepare_server_args(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    try:
        code = launch_server(server_args)
    except (RuntimeError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    if code and server_args.node_rank > 0:
        sys.exit(f"error: a tensor-parallel rank of node {server_args.node_rank} failed; the "
                 "node exits so that it can be restarted")
    if code:
        sys.exit("error: the engine process died; the server exits so that it can be restarted")


if __name__ == "__main__":
    main()
