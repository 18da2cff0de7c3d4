// omnirelay-lean-echo: the leanest gRPC echo backend grpc++ allows, for
// measuring load generators (benchmarks/benchmark_vs_h2load.py) with a
// backend that is not the bottleneck. One completion queue drained by one
// thread, generic (byte-level) calls, no middleware, no metrics: every call
// is answered with the request's bytes and OK. Not a product verb.
//
//   omnirelay-lean-echo [--address 127.0.0.1:0] [--calls 256]
//
// Prints "listening <host:port>" on stdout once serving; runs until killed
// (SIGTERM's default action: there is no state worth a graceful shutdown).
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

// One call: request -> read -> write+finish; then it arms its successor and
// deletes itself (grpc++ server contexts are single-use).
class Call {
 public:
  Call(grpc::AsyncGenericService* service, grpc::ServerCompletionQueue* queue)
      : service_(service), queue_(queue) {
    service_->RequestCall(&context_, &stream_, queue_, queue_, this);
  }

  void Proceed(bool ok) {
    switch (state_) {
      case State::kRequested:
        if (!ok) {  // shutting down
          delete this;
          return;
        }
        state_ = State::kRead;
        stream_.Read(&message_, this);
        return;
      case State::kRead:
        state_ = State::kFinished;
        if (!ok) {
          stream_.Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no request"), this);
          return;
        }
        stream_.WriteAndFinish(message_, grpc::WriteOptions(), grpc::Status::OK, this);
        return;
      case State::kFinished:
        new Call(service_, queue_);
        delete this;
        return;
    }
  }

 private:
  enum class State { kRequested, kRead, kFinished };

  grpc::AsyncGenericService* service_;
  grpc::ServerCompletionQueue* queue_;
  grpc::GenericServerContext context_;
  grpc::GenericServerAsyncReaderWriter stream_{&context_};
  grpc::ByteBuffer message_;
  State state_ = State::kRequested;
};

}  // namespace

int main(int argc, char** argv) {
  std::string address = "127.0.0.1:0";
  int calls = 256;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--address") == 0 && i + 1 < argc) {
      address = argv[++i];
    } else if (std::strcmp(argv[i], "--calls") == 0 && i + 1 < argc) {
      calls = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: %s [--address host:port] [--calls N]\n", argv[0]);
      return 2;
    }
  }
  grpc::AsyncGenericService service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port);
  builder.RegisterAsyncGenericService(&service);
  // One polling thread of our own; keep grpc's own pools minimal.
  builder.SetSyncServerOption(grpc::ServerBuilder::NUM_CQS, 1);
  auto queue = builder.AddCompletionQueue();
  auto server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::fprintf(stderr, "omnirelay-lean-echo: cannot listen on %s\n", address.c_str());
    return 1;
  }
  for (int i = 0; i < calls; ++i) new Call(&service, queue.get());  // each owns itself
  const std::string host = address.substr(0, address.rfind(':'));
  std::printf("listening %s:%d\n", host.c_str(), port);
  std::fflush(stdout);

  void* tag = nullptr;
  bool ok = false;
  while (queue->Next(&tag, &ok)) static_cast<Call*>(tag)->Proceed(ok);
  return 0;
}
