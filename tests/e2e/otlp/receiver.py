"""An OTLP/HTTP trace receiver for the end-to-end tests: it accepts what an OpenTelemetry
collector accepts on POST /v1/traces (an ExportTraceServiceRequest in protobuf, the encoding
the engine's exporter sends), decodes it with the OpenTelemetry project's own protobuf definitions (the opentelemetry-proto
package from PyPI), and prints one JSON line per span:

  {"service": "onboard-gateway", "name": "request", "trace_id": "<32 hex>",
   "span_id": "<16 hex>", "parent_span_id": "<16 hex or empty>", "kind": 2,
   "attributes": {"request_id": "sam-4711", ...}}

A request that does not decode is answered 400 and printed as "REFUSED <reason>", so a test
sees an exporter that sends something else. Usage: receiver.py LISTEN_PORT
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


# The server answers each export on its own thread: one lock and one write per export keep
# two exports' lines from interleaving in the output a test reads.
OUTPUT = threading.Lock()


def value_of(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def attributes(key_values):
    return {kv.key: value_of(kv.value) for kv in key_values}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        content_type = self.headers.get("Content-Type", "")
        request = ExportTraceServiceRequest()
        try:
            if self.path != "/v1/traces":
                raise ValueError(f"unknown path {self.path}")
            if content_type.startswith("application/x-protobuf"):
                request.ParseFromString(body)
            else:
                raise ValueError(f"unsupported content type {content_type!r}")
        except Exception as e:  # noqa: BLE001 - any decoding failure is the sender's
            with OUTPUT:
                print(f"REFUSED {e}", flush=True)
            self.send_response(400)
            self.end_headers()
            return
        lines = []
        for resource_spans in request.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    lines.append(
                        json.dumps(
                            {
                                "service": resource.get("service.name"),
                                "name": span.name,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent_span_id": span.parent_span_id.hex(),
                                "kind": span.kind,
                                "attributes": attributes(span.attributes),
                            }
                        )
                        + "\n"
                    )
        with OUTPUT:
            sys.stdout.write("".join(lines))
            sys.stdout.flush()
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def main():
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    print("LISTENING", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
