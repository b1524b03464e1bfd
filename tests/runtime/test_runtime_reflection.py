"""Server reflection over grpc.reflection.v1 (what grpcurl and Postman ask first) and v1alpha."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2
from tiergen.generator.v1 import generator_pb2

from services.runtime.server import ServiceRegistration, create_server
from tests.tls import session_pki

V1 = "grpc.reflection.v1.ServerReflection"
V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
GENERATOR = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"].full_name

#: grpc.reflection.v1.ServerReflectionRequest's fields in grpc-proto's
#: grpc/reflection/v1/reflection.proto, which v1 clients are generated from.
V1_REQUEST_FIELDS = {
    "host": 1,
    "file_by_filename": 3,
    "file_containing_symbol": 4,
    "file_containing_extension": 5,
    "all_extension_numbers_of_type": 6,
    "list_services": 7,
}


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    # Listed only, not served: reflection describes it from the generated descriptors.
    generator = ServiceRegistration(GENERATOR, lambda server: None)
    server, port = await create_server(session_pki().server("reflected"), [generator])
    await server.start()
    try:
        async with session_pki().channel(f"127.0.0.1:{port}") as opened:
            yield opened
    finally:
        await server.stop(0)


async def _ask(
    channel: grpc.aio.Channel, service: str, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    # The messages of v1 and v1alpha are the same on the wire (checked against grpc-proto's
    # field numbers below), so v1alpha's classes encode and decode both.
    info = channel.stream_stream(
        f"/{service}/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    async for reply in info(iter([request])):
        return reply
    raise AssertionError(f"{service} sent no answer")


async def _files(
    channel: grpc.aio.Channel, service: str, symbol: str
) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    reply = await _ask(
        channel, service, reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
    )
    assert reply.WhichOneof("message_response") == "file_descriptor_response", reply
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(data)
        for data in reply.file_descriptor_response.file_descriptor_proto
    ]
    return {file.name: file for file in files}


@pytest.mark.parametrize("service", [V1, V1ALPHA])
async def test_each_reflection_version_lists_the_services(channel, service):
    reply = await _ask(channel, service, reflection_pb2.ServerReflectionRequest(list_services=""))

    names = {listed.name for listed in reply.list_services_response.service}
    assert names == {GENERATOR, "grpc.health.v1.Health", V1, V1ALPHA}


@pytest.mark.parametrize("service", [V1, V1ALPHA])
async def test_every_listed_service_can_be_described(channel, service):
    # What `grpcurl describe` does with no argument: it fails if any listed name is unknown.
    reply = await _ask(channel, service, reflection_pb2.ServerReflectionRequest(list_services=""))

    for listed in reply.list_services_response.service:
        files = await _files(channel, service, listed.name)
        package, _, name = listed.name.rpartition(".")
        assert any(
            file.package == package and name in {s.name for s in file.service}
            for file in files.values()
        ), listed.name


async def test_v1_reflection_describes_itself_as_grpc_proto_defines_it(channel):
    files = await _files(channel, V1, V1)

    v1 = files["grpc/reflection/v1/reflection.proto"]
    assert v1.package == "grpc.reflection.v1"
    assert not v1.options.deprecated
    (method,) = v1.service[0].method
    assert (method.input_type, method.output_type) == (
        ".grpc.reflection.v1.ServerReflectionRequest",
        ".grpc.reflection.v1.ServerReflectionResponse",
    )
    assert method.client_streaming and method.server_streaming
    request = next(m for m in v1.message_type if m.name == "ServerReflectionRequest")
    assert {field.name: field.number for field in request.field} == V1_REQUEST_FIELDS
    referenced = {
        field.type_name for message in v1.message_type for field in message.field if field.type_name
    }
    assert referenced and all(name.startswith(".grpc.reflection.v1.") for name in referenced)
