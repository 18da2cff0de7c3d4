#pragma once
// The interface every outbound (gRPC, HTTP) implements, so the dispatcher,
// routes and the Python API call remote procedures without knowing the
// transport.
//
// Thread-safety: CallUnary and OpenStream are called concurrently from many
// threads. Ownership: outbounds are owned by the node (shared_ptr) and must
// outlive every call they started (Stop() waits for none; the node drains
// inbounds before stopping outbounds).
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "omnirelay/dispatcher/procedure.h"

namespace omnirelay::dispatcher {

// A client-side stream (any streaming kind; unary-shaped kinds just write
// once / read once). Blocking; one reader thread and one writer thread at most.
class OutboundStream {
 public:
  virtual ~OutboundStream() = default;
  virtual bool Write(std::string message) = 0;
  virtual bool WritesDone() = 0;
  virtual std::optional<std::string> Read() = 0;
  // The call's final status; call after Read returned nullopt.
  virtual absl::Status Finish() = 0;
  virtual void Cancel() = 0;
};

class Outbound {
 public:
  virtual ~Outbound() = default;
  virtual std::string_view transport() const = 0;
  virtual absl::Status Start() { return absl::OkStatus(); }
  virtual void Stop() {}
  // `request.meta.procedure`/`service` name the remote procedure (a fixed
  // `procedure` in the outbound's options overrides them).
  virtual void CallUnary(Request request, UnaryCallback done) = 0;
  virtual absl::StatusOr<std::unique_ptr<OutboundStream>> OpenStream(
      const core::RequestMeta& meta) {
    return absl::UnimplementedError("this outbound does not support streams");
  }
  // For /readyz: false when no peer could take a call right now.
  virtual bool HasAvailablePeers() const { return true; }
  virtual nlohmann::json Snapshot() const = 0;
};

}  // namespace omnirelay::dispatcher
