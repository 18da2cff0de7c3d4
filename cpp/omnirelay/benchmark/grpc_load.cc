// gRPC load loop: `threads` completion queues, each driving its share of the
// slots. A slot is one outstanding call at a time; its tag on the queue is
// the slot itself, tagged in the low bit with what completed (call or alarm).
// Calls are byte-level generic calls: the body is sent as-is as the message.
#include <grpcpp/alarm.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <thread>

#include "omnirelay/benchmark/load_state.h"

namespace omnirelay::benchmark {
namespace {

struct Slot {
  LoadState::Ticket ticket;
  std::unique_ptr<grpc::ClientContext> context;
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> reader;
  grpc::ByteBuffer response;
  grpc::Status status;
  grpc::Alarm alarm;
  grpc::GenericStub* stub = nullptr;
  bool active = true;
};

constexpr uintptr_t kCallDone = 0;
constexpr uintptr_t kAlarmDone = 1;

void* Tag(Slot* slot, uintptr_t kind) {
  return reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(slot) | kind);
}

class GrpcWorker {
 public:
  GrpcWorker(const LoadOptions& options, LoadState& state, std::vector<grpc::GenericStub*> stubs,
             int slots, const grpc::ByteBuffer& body)
      : options_(options), state_(state), body_(body), method_(options.MethodPath()) {
    for (int i = 0; i < slots; ++i) {
      auto slot = std::make_unique<Slot>();
      slot->stub = stubs[static_cast<size_t>(i) % stubs.size()];
      slots_.push_back(std::move(slot));
    }
  }

  void Run() {
    int active = 0;
    for (auto& slot : slots_) {
      if (Schedule(slot.get())) ++active;
    }
    bool cancelled = false;
    while (active > 0) {
      void* tag = nullptr;
      bool ok = false;
      const auto wake = std::chrono::system_clock::now() + std::chrono::milliseconds(100);
      const auto result = queue_.AsyncNext(&tag, &ok, wake);
      if (result == grpc::CompletionQueue::SHUTDOWN) break;
      if (result == grpc::CompletionQueue::TIMEOUT) {
        // Past the end plus a grace period: abandon what is still in flight.
        if (!cancelled && SteadyClock::now() > state_.end() + kDrainGrace) {
          for (auto& slot : slots_) {
            if (slot->active && slot->context) slot->context->TryCancel();
          }
          cancelled = true;
        }
        continue;
      }
      auto* slot = reinterpret_cast<Slot*>(reinterpret_cast<uintptr_t>(tag) & ~uintptr_t{1});
      const uintptr_t kind = reinterpret_cast<uintptr_t>(tag) & 1;
      if (kind == kAlarmDone) {
        Send(slot);
        continue;
      }
      if (!cancelled || slot->status.error_code() != grpc::StatusCode::CANCELLED) {
        state_.Record(slot->ticket, static_cast<absl::StatusCode>(slot->status.error_code()),
                      slot->status.error_message());
      }
      slot->context.reset();
      slot->reader.reset();
      if (cancelled || !Schedule(slot)) {
        slot->active = false;
        --active;
      }
    }
    queue_.Shutdown();
    void* tag;
    bool ok;
    while (queue_.Next(&tag, &ok)) {
    }
  }

 private:
  static constexpr auto kDrainGrace = std::chrono::seconds(5);

  // Takes the slot's next ticket; sends now or arms an alarm for its due time.
  bool Schedule(Slot* slot) {
    slot->ticket = state_.Next();
    if (slot->ticket.stop) return false;
    if (slot->ticket.due > SteadyClock::now()) {
      const auto wait = slot->ticket.due - SteadyClock::now();
      slot->alarm.Set(&queue_,
                      std::chrono::system_clock::now() +
                          std::chrono::duration_cast<std::chrono::system_clock::duration>(wait),
                      Tag(slot, kAlarmDone));
    } else {
      Send(slot);
    }
    return true;
  }

  void Send(Slot* slot) {
    slot->context = std::make_unique<grpc::ClientContext>();
    grpc::ClientContext& context = *slot->context;
    if (auto deadline = state_.RequestDeadline()) context.set_deadline(*deadline);
    context.AddMetadata("rpc-caller", options_.caller);
    if (!options_.service.empty()) context.AddMetadata("rpc-service", options_.service);
    if (!options_.encoding.empty()) context.AddMetadata("rpc-encoding", options_.encoding);
    if (!options_.shard_key.empty()) context.AddMetadata("rpc-shard-key", options_.shard_key);
    if (!options_.routing_key.empty()) context.AddMetadata("rpc-routing-key", options_.routing_key);
    for (const auto& [name, value] : options_.headers) context.AddMetadata(name, value);
    slot->reader = slot->stub->PrepareUnaryCall(&context, method_, body_, &queue_);
    slot->reader->StartCall();
    slot->reader->Finish(&slot->response, &slot->status, Tag(slot, kCallDone));
  }

  const LoadOptions& options_;
  LoadState& state_;
  const grpc::ByteBuffer& body_;
  const std::string method_;
  grpc::CompletionQueue queue_;
  std::vector<std::unique_ptr<Slot>> slots_;
};

}  // namespace

absl::StatusOr<LoadReport> RunGrpcLoad(const LoadOptions& options, LoadState& state) {
  // One channel per (address, connection); a local subchannel pool stops
  // gRPC from folding identical channels onto one TCP connection.
  std::vector<std::unique_ptr<grpc::GenericStub>> stubs;
  for (const std::string& address : options.addresses) {
    std::string target = address;
    for (const char* scheme : {"http://", "https://", "grpc://"}) {
      if (target.rfind(scheme, 0) == 0) target = target.substr(std::string_view(scheme).size());
    }
    for (int c = 0; c < options.connections; ++c) {
      grpc::ChannelArguments args;
      args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
      args.SetInt("omnirelay.benchmark.connection", c);
      auto channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
      if (!channel) return absl::InvalidArgumentError("cannot create a channel to " + address);
      stubs.push_back(std::make_unique<grpc::GenericStub>(channel));
    }
  }
  grpc::Slice slice(options.body);
  grpc::ByteBuffer body(&slice, 1);

  int threads =
      options.threads > 0
          ? options.threads
          : static_cast<int>(std::min(2u, std::max(1u, std::thread::hardware_concurrency())));
  threads = std::min(threads, options.concurrency);
  std::vector<std::unique_ptr<GrpcWorker>> workers;
  for (int t = 0; t < threads; ++t) {
    const int slots = options.concurrency / threads + (t < options.concurrency % threads ? 1 : 0);
    std::vector<grpc::GenericStub*> mine;
    for (size_t s = 0; s < stubs.size(); ++s) {
      if (stubs.size() < static_cast<size_t>(threads) || s % threads == static_cast<size_t>(t)) {
        mine.push_back(stubs[s].get());
      }
    }
    workers.push_back(std::make_unique<GrpcWorker>(options, state, mine, slots, body));
  }
  state.StartClock();
  std::atomic<bool> done{false};
  std::thread progress([&] { state.ReportProgressUntil(done); });
  std::vector<std::thread> running;
  for (auto& worker : workers) running.emplace_back([&worker] { worker->Run(); });
  for (auto& thread : running) thread.join();
  done = true;
  progress.join();
  return state.BuildReport();
}

}  // namespace omnirelay::benchmark
