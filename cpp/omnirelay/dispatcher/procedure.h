#pragma once
// What a procedure is: its identity (service, name, kind) and its handler.
//
// Bodies are opaque bytes (std::string); encodings (raw, json, protobuf) are
// the handler's business, so the same procedure is reachable over gRPC and
// HTTP and a relay never has to parse what it forwards.
//
// Call kinds and their handler shapes:
//   unary / oneway  asynchronous: the handler gets the request and a callback
//                   it must call exactly once, from any thread. Asynchronous
//                   because a forwarding node completes a call when its
//                   outbound answers, without parking a thread per call.
//   server-stream, client-stream, duplex
//                   blocking: the handler runs on a thread of its own and
//                   reads/writes through blocking stream interfaces. Streams
//                   are long-lived and rare next to unary calls; a thread per
//                   stream keeps handlers simple.
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "omnirelay/core/request_meta.h"
#include "omnirelay/core/status.h"

namespace omnirelay::dispatcher {

enum class ProcedureKind { kUnary, kOneway, kServerStream, kClientStream, kDuplex };
std::string_view ProcedureKindName(ProcedureKind kind);  // "unary", "server-stream", ...
std::optional<ProcedureKind> ParseProcedureKind(std::string_view name);

struct Request {
  core::RequestMeta meta;
  std::string body;
};

struct Response {
  core::Headers headers;  // sent as gRPC initial metadata / HTTP headers
  std::string body;
};

// Called exactly once per call, from any thread.
using UnaryCallback = std::function<void(absl::StatusOr<Response>)>;
using UnaryHandler = std::function<void(Request, UnaryCallback)>;

// Blocking writer of a response stream. Write returns false once the peer is
// gone or the call was cancelled (the handler should then return).
class ServerStream {
 public:
  virtual ~ServerStream() = default;
  virtual bool Write(std::string message) = 0;
};

// Blocking reader of a request stream; nullopt at the end of the stream.
class ClientStream {
 public:
  virtual ~ClientStream() = default;
  virtual std::optional<std::string> Read() = 0;
};

using ServerStreamHandler = std::function<absl::Status(const Request&, ServerStream&)>;
using ClientStreamHandler =
    std::function<absl::StatusOr<Response>(const core::RequestMeta&, ClientStream&)>;
using DuplexHandler =
    std::function<absl::Status(const core::RequestMeta&, ClientStream&, ServerStream&)>;

struct Procedure {
  std::string service;
  std::string name;
  ProcedureKind kind = ProcedureKind::kUnary;
  std::vector<std::string> aliases;  // further names (same service) that reach it
  std::string encoding;              // informational: "raw", "json", "proto"
  // Exactly the handler matching `kind` is set (unary and oneway share `unary`;
  // a oneway handler's Response is discarded).
  UnaryHandler unary;
  ServerStreamHandler server_stream;
  ClientStreamHandler client_stream;
  DuplexHandler duplex;
  // Set by the dispatcher for routes: the outbound name this forwards to.
  std::string forward_outbound;
};

}  // namespace omnirelay::dispatcher
