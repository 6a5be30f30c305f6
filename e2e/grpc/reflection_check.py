#!/usr/bin/env python3
"""Lists and describes every gRPC service of running idsvc ports through
server reflection, the way stock tools do: with the official grpcio-reflection
client, which speaks grpc.reflection.v1alpha.

    reflection_check.py ADDR=SERVICE[,SERVICE...] [ADDR=...]

Each ADDR (host:port) must list at least the named services, and every service
it lists must resolve to a descriptor whose methods' request and response
types resolve too. Exits non-zero on the first failure (an UNIMPLEMENTED
reflection service included).
"""

import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

# How long to wait for a port that is still starting.
READY_TIMEOUT_SECONDS = 30


def describe_port(addr: str, required: set[str]) -> None:
    with grpc.insecure_channel(addr) as channel:
        grpc.channel_ready_future(channel).result(timeout=READY_TIMEOUT_SECONDS)
        database = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(database.get_services())
        missing = required - set(services)
        if missing:
            raise SystemExit(f"{addr}: lists {services}, missing {sorted(missing)}")
        pool = DescriptorPool(database)
        for name in services:
            service = pool.FindServiceByName(name)
            print(f"{addr} {service.full_name} ({service.file.name})")
            for method in service.methods:
                streaming = (
                    ("stream " if method.client_streaming else "")
                    + "->"
                    + (" stream" if method.server_streaming else "")
                )
                request, response = method.input_type, method.output_type
                print(
                    f"  {method.name}({request.full_name}) {streaming} {response.full_name}"
                    f"  [{len(request.fields)} -> {len(response.fields)} fields]"
                )


def main(args: list[str]) -> None:
    if not args:
        raise SystemExit(__doc__)
    for arg in args:
        addr, _, names = arg.partition("=")
        describe_port(addr, {name for name in names.split(",") if name})


if __name__ == "__main__":
    main(sys.argv[1:])
