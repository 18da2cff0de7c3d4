#pragma once
// Typed procedures with the JSON encoding: the handler sees parsed JSON and
// returns JSON; a body that is not JSON is InvalidArgument before the handler
// runs. Same procedure over gRPC (bytes are the JSON text) and HTTP
// (Content-Type/Rpc-Encoding application/json). Protobuf procedures need no
// helper: their handlers parse the bytes with the generated type (see echo.cc).
// Thread-safety: the handler is called concurrently.
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "omnirelay/dispatcher/procedure.h"

namespace omnirelay::dispatcher {

using JsonHandler =
    std::function<absl::StatusOr<nlohmann::json>(const nlohmann::json&, const core::RequestMeta&)>;

inline Procedure JsonUnary(std::string service, std::string name, JsonHandler handler) {
  Procedure procedure;
  procedure.service = std::move(service);
  procedure.name = std::move(name);
  procedure.kind = ProcedureKind::kUnary;
  procedure.encoding = "json";
  procedure.unary = [handler = std::move(handler)](Request request, UnaryCallback done) {
    auto parsed = nlohmann::json::parse(request.body, nullptr, /*allow_exceptions=*/false);
    if (parsed.is_discarded()) {
      done(core::MakeStatus(absl::StatusCode::kInvalidArgument, "request body is not valid JSON",
                            "bad-json"));
      return;
    }
    auto result = handler(parsed, request.meta);
    if (!result.ok()) {
      done(result.status());
      return;
    }
    Response response;
    response.headers.Set("rpc-encoding", "json");
    response.body = result->dump();
    done(std::move(response));
  };
  return procedure;
}

}  // namespace omnirelay::dispatcher
