#include "omnirelay/coord/etcd_backend.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include <future>
#include <thread>

#include "third_party/etcd/etcdserverpb/rpc.grpc.pb.h"

namespace omnirelay::coord {
namespace {

using core::MakeStatus;
using core::StatusCode;

std::string StripScheme(std::string endpoint) {
  for (std::string_view scheme : {"http://", "https://"}) {
    if (endpoint.starts_with(scheme)) endpoint.erase(0, scheme.size());
  }
  while (!endpoint.empty() && endpoint.back() == '/') endpoint.pop_back();
  return endpoint;
}

core::Status FromGrpc(const grpc::Status& status, std::string_view endpoint) {
  if (status.ok()) return core::Status();
  const auto code = static_cast<StatusCode>(status.error_code());
  const bool unreachable =
      code == StatusCode::kUnavailable || code == StatusCode::kDeadlineExceeded;
  return MakeStatus(unreachable ? StatusCode::kUnavailable : code,
                    "etcd " + std::string(endpoint) + ": " + status.error_message(),
                    unreachable ? "coord-store-unavailable" : "");
}

void SetDeadline(grpc::ClientContext& context, core::Duration timeout) {
  context.set_deadline(std::chrono::system_clock::now() + timeout);
}

KeyValue FromProto(const mvccpb::KeyValue& kv) {
  return KeyValue{kv.key(),          kv.value(),   kv.create_revision(),
                  kv.mod_revision(), kv.version(), kv.lease()};
}

}  // namespace

struct EtcdBackend::Stubs {
  explicit Stubs(const std::shared_ptr<grpc::Channel>& channel)
      : kv(etcdserverpb::KV::NewStub(channel)),
        watch(etcdserverpb::Watch::NewStub(channel)),
        lease(etcdserverpb::Lease::NewStub(channel)) {}
  std::unique_ptr<etcdserverpb::KV::Stub> kv;
  std::unique_ptr<etcdserverpb::Watch::Stub> watch;
  std::unique_ptr<etcdserverpb::Lease::Stub> lease;
};

// One etcd watch stream and the thread that reads it. Shared between the
// handle and the thread so either may end first.
struct EtcdBackend::WatchStream {
  std::string prefix;
  std::string endpoint;
  etcdserverpb::Watch::Stub* stub = nullptr;
  WatchRegistry registry;  // one entry: the caller's callback
  WatchHandle entry;
  std::mutex mu;
  std::condition_variable cv;
  bool stopping = false;
  grpc::ClientContext* context = nullptr;  // the live stream's, under mu
  std::thread thread;

  void Stop() {
    std::lock_guard lock(mu);
    stopping = true;
    if (context != nullptr) context->TryCancel();
    cv.notify_all();
  }

  // Runs on `thread`; reports the first stream's creation through `created`.
  void Run(std::promise<core::Status> created) {
    bool reported = false;
    Revision next_revision = 0;  // 0 = from now
    while (true) {
      grpc::ClientContext context;
      {
        std::lock_guard lock(mu);
        if (stopping) break;
        this->context = &context;
      }
      auto stream = stub->Watch(&context);
      etcdserverpb::WatchRequest request;
      auto* create = request.mutable_create_request();
      create->set_key(prefix);
      create->set_range_end(PrefixEnd(prefix));
      create->set_start_revision(next_revision);
      grpc::Status failure;
      if (stream->Write(request)) {
        etcdserverpb::WatchResponse response;
        while (stream->Read(&response)) {
          if (response.created()) {
            if (!reported) {
              created.set_value(core::Status());
              reported = true;
            } else {
              // Re-established: anything derived from a missed event is re-read.
              registry.DispatchResync();
            }
            next_revision = response.header().revision() + 1;
            continue;
          }
          if (response.canceled()) break;  // e.g. compacted: restart from now
          std::vector<WatchEvent> events;
          for (const auto& event : response.events()) {
            WatchEvent converted;
            converted.type = event.type() == mvccpb::Event::DELETE ? WatchEvent::Type::kDelete
                                                                   : WatchEvent::Type::kPut;
            converted.kv = FromProto(event.kv());
            next_revision = std::max(next_revision, event.kv().mod_revision() + 1);
            events.push_back(std::move(converted));
          }
          registry.Dispatch(events);
        }
        stream->WritesDone();
      }
      failure = stream->Finish();
      std::unique_lock lock(mu);
      this->context = nullptr;
      if (stopping) break;
      if (!reported) {
        created.set_value(
            core::MakeStatus(StatusCode::kUnavailable,
                             "etcd " + endpoint + ": watch failed: " + failure.error_message(),
                             "coord-store-unavailable"));
        return;
      }
      cv.wait_for(lock, std::chrono::milliseconds(200), [&] { return stopping; });
      if (stopping) break;
    }
    if (!reported) created.set_value(core::MakeStatus(StatusCode::kCancelled, "watch stopped"));
  }
};

core::StatusOr<std::shared_ptr<EtcdBackend>> EtcdBackend::Open(EtcdOptions options) {
  if (options.endpoints.empty()) {
    return MakeStatus(StatusCode::kInvalidArgument,
                      "coordination store: etcd needs at least one endpoint", "coord-store-config");
  }
  std::string tried;
  for (const auto& raw : options.endpoints) {
    const std::string endpoint = StripScheme(raw);
    grpc::ChannelArguments args;
    // Reconnect quickly after an etcd restart (gRPC's default backoff grows to 2 min).
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    auto channel = grpc::CreateCustomChannel(endpoint, grpc::InsecureChannelCredentials(), args);
    const auto deadline = std::chrono::system_clock::now() + options.dial_timeout;
    if (!channel->WaitForConnected(deadline)) {
      tried += (tried.empty() ? "" : ", ") + endpoint + " (no connection)";
      continue;
    }
    // A gRPC server that is not etcd fails here (UNIMPLEMENTED).
    etcdserverpb::RangeRequest request;
    request.set_key("omnirelay-probe");
    request.set_count_only(true);
    etcdserverpb::RangeResponse response;
    grpc::ClientContext context;
    context.set_deadline(deadline + std::chrono::seconds(1));
    const auto status = etcdserverpb::KV::NewStub(channel)->Range(&context, request, &response);
    if (!status.ok()) {
      tried += (tried.empty() ? "" : ", ") + endpoint + " (" + status.error_message() + ")";
      continue;
    }
    return std::shared_ptr<EtcdBackend>(
        new EtcdBackend(std::move(options), endpoint, std::move(channel)));
  }
  return MakeStatus(
      StatusCode::kUnavailable,
      "coordination store: no etcd endpoint answered within " +
          std::to_string(
              std::chrono::duration_cast<std::chrono::milliseconds>(options.dial_timeout).count()) +
          " ms: " + tried,
      "coord-store-unreachable");
}

EtcdBackend::EtcdBackend(EtcdOptions options, std::string endpoint,
                         std::shared_ptr<grpc::Channel> channel)
    : options_(std::move(options)),
      endpoint_(std::move(endpoint)),
      channel_(std::move(channel)),
      stubs_(std::make_unique<Stubs>(channel_)) {}

EtcdBackend::~EtcdBackend() = default;

core::StatusOr<LeaseGrant> EtcdBackend::GrantLease(core::Duration ttl) {
  if (ttl <= core::Duration::zero()) {
    return MakeStatus(StatusCode::kInvalidArgument, "lease TTL must be positive");
  }
  const auto seconds = std::chrono::ceil<std::chrono::seconds>(ttl).count();
  etcdserverpb::LeaseGrantRequest request;
  request.set_ttl(seconds);
  etcdserverpb::LeaseGrantResponse response;
  grpc::ClientContext context;
  SetDeadline(context, options_.request_timeout);
  if (auto status = FromGrpc(stubs_->lease->LeaseGrant(&context, request, &response), endpoint_);
      !status.ok()) {
    return status;
  }
  if (!response.error().empty()) {
    return MakeStatus(StatusCode::kInternal, "etcd " + endpoint_ + ": " + response.error());
  }
  return LeaseGrant{response.id(), std::chrono::seconds(response.ttl())};
}

core::StatusOr<core::Duration> EtcdBackend::KeepAlive(LeaseId lease) {
  grpc::ClientContext context;
  SetDeadline(context, options_.request_timeout);
  auto stream = stubs_->lease->LeaseKeepAlive(&context);
  etcdserverpb::LeaseKeepAliveRequest request;
  request.set_id(lease);
  etcdserverpb::LeaseKeepAliveResponse response;
  const bool exchanged = stream->Write(request) && stream->Read(&response);
  stream->WritesDone();
  const auto status = stream->Finish();
  if (!exchanged || !status.ok()) {
    auto error = FromGrpc(status, endpoint_);
    if (error.ok()) {
      error = MakeStatus(StatusCode::kUnavailable, "etcd " + endpoint_ + ": keep-alive failed",
                         "coord-store-unavailable");
    }
    return error;
  }
  if (response.ttl() <= 0) {
    return MakeStatus(StatusCode::kNotFound, "lease not found (expired or revoked)",
                      "lease-not-found");
  }
  return core::Duration(std::chrono::seconds(response.ttl()));
}

core::Status EtcdBackend::RevokeLease(LeaseId lease) {
  etcdserverpb::LeaseRevokeRequest request;
  request.set_id(lease);
  etcdserverpb::LeaseRevokeResponse response;
  grpc::ClientContext context;
  SetDeadline(context, options_.request_timeout);
  auto status = FromGrpc(stubs_->lease->LeaseRevoke(&context, request, &response), endpoint_);
  if (status.code() == StatusCode::kNotFound) return core::Status();
  return status;
}

core::StatusOr<RangeResult> EtcdBackend::Range(std::string_view key, RangeOptions options) {
  etcdserverpb::RangeRequest request;
  request.set_key(std::string(key));
  if (options.prefix) request.set_range_end(PrefixEnd(key));
  if (options.sort_by_create) {
    request.set_sort_target(etcdserverpb::RangeRequest::CREATE);
    request.set_sort_order(etcdserverpb::RangeRequest::ASCEND);
  } else if (options.prefix) {
    request.set_sort_target(etcdserverpb::RangeRequest::KEY);
    request.set_sort_order(etcdserverpb::RangeRequest::ASCEND);
  }
  request.set_limit(options.limit);
  etcdserverpb::RangeResponse response;
  grpc::ClientContext context;
  SetDeadline(context, options_.request_timeout);
  if (auto status = FromGrpc(stubs_->kv->Range(&context, request, &response), endpoint_);
      !status.ok()) {
    return status;
  }
  RangeResult result;
  result.revision = response.header().revision();
  for (const auto& kv : response.kvs()) result.kvs.push_back(FromProto(kv));
  return result;
}

core::StatusOr<TxnResult> EtcdBackend::Txn(const std::vector<Compare>& compares,
                                           const std::vector<TxnOp>& ops) {
  etcdserverpb::TxnRequest request;
  for (const auto& compare : compares) {
    auto* out = request.add_compare();
    out->set_key(compare.key);
    out->set_result(etcdserverpb::Compare::EQUAL);
    if (compare.target == Compare::Target::kCreateRevision) {
      out->set_target(etcdserverpb::Compare::CREATE);
      out->set_create_revision(compare.value);
    } else {
      out->set_target(etcdserverpb::Compare::MOD);
      out->set_mod_revision(compare.value);
    }
  }
  for (const auto& op : ops) {
    auto* out = request.add_success();
    if (op.kind == TxnOp::Kind::kPut) {
      auto* put = out->mutable_request_put();
      put->set_key(op.key);
      put->set_value(op.value);
      put->set_lease(op.lease);
    } else {
      out->mutable_request_delete_range()->set_key(op.key);
    }
  }
  etcdserverpb::TxnResponse response;
  grpc::ClientContext context;
  SetDeadline(context, options_.request_timeout);
  if (auto status = FromGrpc(stubs_->kv->Txn(&context, request, &response), endpoint_);
      !status.ok()) {
    return status;
  }
  return TxnResult{response.succeeded(), response.header().revision()};
}

core::StatusOr<WatchHandle> EtcdBackend::Watch(std::string_view prefix, WatchCallback callback) {
  auto stream = std::make_shared<WatchStream>();
  stream->prefix = std::string(prefix);
  stream->endpoint = endpoint_;
  stream->stub = stubs_->watch.get();
  stream->entry = stream->registry.Add(stream->prefix, std::move(callback));
  std::promise<core::Status> created;
  auto created_future = created.get_future();
  stream->thread = std::thread(
      [stream, created = std::move(created)]() mutable { stream->Run(std::move(created)); });
  auto stop = [stream] {
    stream->entry.Reset();  // no callback starts after this
    stream->Stop();
    if (stream->thread.get_id() == std::this_thread::get_id()) {
      stream->thread.detach();  // cancelled from its own callback
    } else if (stream->thread.joinable()) {
      stream->thread.join();
    }
  };
  if (created_future.wait_for(options_.request_timeout) != std::future_status::ready) {
    stop();
    return MakeStatus(StatusCode::kUnavailable, "etcd " + endpoint_ + ": watch not created in time",
                      "coord-store-unavailable");
  }
  if (auto status = created_future.get(); !status.ok()) {
    stop();
    return status;
  }
  return WatchHandle(std::move(stop));
}

}  // namespace omnirelay::coord
