#include "omnirelay/replication/hub.h"

#include <future>
#include <map>
#include <thread>

#include "omnirelay/core/status.h"

namespace omnirelay::replication {

namespace {

grpc::Status ToGrpc(const absl::Status& s) {
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

absl::Status FromGrpc(const grpc::Status& s, std::string_view what) {
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      std::string(what) + ": " + s.error_message());
}

std::chrono::system_clock::time_point Deadline(core::Duration timeout) {
  return std::chrono::system_clock::now() +
         std::chrono::duration_cast<std::chrono::system_clock::duration>(timeout);
}

}  // namespace

// --- server ---------------------------------------------------------------------------

HubService::HubService(std::shared_ptr<Replicator> log, core::Duration ack_timeout)
    : log_(std::move(log)), ack_timeout_(ack_timeout) {}

grpc::Status HubService::Append(grpc::ServerContext*, const v1::AppendRequest* request,
                                v1::AppendResponse* response) {
  std::map<std::string, std::uint64_t> last;  // queue -> highest sequence of this call
  std::uint64_t appended = 0;
  std::uint64_t duplicates = 0;
  {
    std::lock_guard lock(append_mu_);
    auto status = log_->Status();
    for (int i = 0; i < request->lines_size(); ++i) {
      auto event = DecodeLine(request->lines(i));
      if (!event.ok()) {
        return grpc::Status(grpc::StatusCode::DATA_LOSS, "line " + std::to_string(i) + ": " +
                                                             std::string(event.status().message()));
      }
      auto& pos = status.queues[event->queue];
      if (event->sequence <= pos.published) {
        ++duplicates;  // already held: a resend after a lost answer
        last[event->queue] = std::max(last[event->queue], event->sequence);
        continue;
      }
      if (event->sequence != pos.published + 1) {
        return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                            "queue '" + event->queue + "': the hub expects sequence " +
                                std::to_string(pos.published + 1) + ", got " +
                                std::to_string(event->sequence));
      }
      const std::string queue = event->queue;
      const std::uint64_t seq = event->sequence;
      if (auto s = log_->Publish(std::move(*event)); !s.ok()) return ToGrpc(s);
      pos.published = seq;
      last[queue] = seq;
      ++appended;
    }
  }
  // Answer once the hub's log holds everything this call carried.
  for (const auto& [queue, seq] : last) {
    auto done = std::make_shared<std::promise<absl::Status>>();
    auto fut = done->get_future();
    log_->WhenDurable(queue, seq, [done](absl::Status s) { done->set_value(s); });
    if (fut.wait_for(ack_timeout_) != std::future_status::ready) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the hub's log did not commit in time");
    }
    if (auto s = fut.get(); !s.ok()) return ToGrpc(s);
  }
  for (const auto& [queue, pos] : log_->Status().queues)
    (*response->mutable_durable())[queue] = pos.durable;
  response->set_appended(appended);
  response->set_duplicates(duplicates);
  return grpc::Status::OK;
}

grpc::Status HubService::Position(grpc::ServerContext*, const v1::PositionRequest* request,
                                  v1::PositionResponse* response) {
  auto last = log_->LastSequence(request->queue());
  if (!last.ok()) return ToGrpc(last.status());
  response->set_durable(*last);
  return grpc::Status::OK;
}

grpc::Status HubService::Subscribe(grpc::ServerContext* context,
                                   const v1::SubscribeRequest* request,
                                   grpc::ServerWriter<v1::EventLine>* writer) {
  std::uint64_t cursor = request->after();
  auto send_from = [&](std::uint64_t after) -> absl::Status {
    return log_->Read(request->queue(), after, [&](const ReplicationEvent& e) -> absl::Status {
      v1::EventLine line;
      line.set_line(EncodeLine(e));
      if (!writer->Write(line)) return absl::CancelledError("subscriber went away");
      cursor = e.sequence;
      return absl::OkStatus();
    });
  };
  if (auto s = send_from(cursor); !s.ok()) {
    return s.code() == absl::StatusCode::kCancelled ? grpc::Status::OK : ToGrpc(s);
  }
  if (!request->follow()) return grpc::Status::OK;
  // Tail the log until the subscriber cancels (or its deadline passes).
  while (!context->IsCancelled()) {
    auto last = log_->LastSequence(request->queue());
    if (!last.ok()) return ToGrpc(last.status());
    if (*last > cursor) {
      if (auto s = send_from(cursor); !s.ok()) {
        return s.code() == absl::StatusCode::kCancelled ? grpc::Status::OK : ToGrpc(s);
      }
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  return grpc::Status::OK;
}

// --- client -----------------------------------------------------------------------------

GrpcHubReplicator::GrpcHubReplicator(GrpcHubReplicatorOptions options, std::string name)
    : BatchingReplicator(std::move(name), "grpc", options.batch), options_(std::move(options)) {}

absl::StatusOr<std::shared_ptr<GrpcHubReplicator>> GrpcHubReplicator::Open(
    GrpcHubReplicatorOptions options, std::string name) {
  if (options.address.empty()) return absl::InvalidArgumentError("hub address is required");
  std::shared_ptr<GrpcHubReplicator> r(new GrpcHubReplicator(std::move(options), std::move(name)));
  grpc::ChannelArguments args;
  // Reconnect quickly after a partition heals (the default backoff grows to 2 min).
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  r->channel_ = grpc::CreateCustomChannel(
      r->options_.address,
      r->options_.credentials ? r->options_.credentials : grpc::InsecureChannelCredentials(), args);
  r->stub_ = v1::Hub::NewStub(r->channel_);
  r->StartWriter();
  return r;
}

GrpcHubReplicator::~GrpcHubReplicator() { StopWriter(); }

absl::Status GrpcHubReplicator::WriteBatch(std::span<const ReplicationEvent> batch) {
  v1::AppendRequest request;
  for (const auto& e : batch) request.add_lines(EncodeLine(e));
  v1::AppendResponse response;
  grpc::ClientContext context;
  context.set_deadline(Deadline(options_.call_timeout));
  grpc::Status s = stub_->Append(&context, request, &response);
  if (!s.ok()) {
    // Any failure is retried (the hub skips what it already has).
    return absl::UnavailableError("hub " + options_.address + ": " + s.error_message());
  }
  return absl::OkStatus();
}

absl::StatusOr<std::uint64_t> GrpcHubReplicator::LastSequence(std::string_view queue) {
  v1::PositionRequest request;
  request.set_queue(std::string(queue));
  v1::PositionResponse response;
  grpc::ClientContext context;
  context.set_deadline(Deadline(options_.call_timeout));
  context.set_wait_for_ready(true);
  if (auto s = stub_->Position(&context, request, &response); !s.ok()) {
    return FromGrpc(s, "hub " + options_.address);
  }
  std::lock_guard lock(mu_);
  SeedLocked(std::string(queue), response.durable());
  return response.durable();
}

absl::Status GrpcHubReplicator::Read(std::string_view queue, std::uint64_t after,
                                     const EventVisitor& visit) {
  v1::SubscribeRequest request;
  request.set_queue(std::string(queue));
  request.set_after(after);
  grpc::ClientContext context;
  // Waits for a hub that is still starting, but not forever: a node replaying
  // at start fails with DEADLINE_EXCEEDED instead of hanging.
  context.set_wait_for_ready(true);
  context.set_deadline(
      Deadline(std::max<core::Duration>(options_.call_timeout * 12, std::chrono::minutes(10))));
  auto reader = stub_->Subscribe(&context, request);
  v1::EventLine line;
  std::uint64_t expect = after + 1;
  absl::Status result;
  while (reader->Read(&line)) {
    auto event = DecodeLine(line.line());
    if (!event.ok()) {
      result = core::MakeStatus(absl::StatusCode::kDataLoss,
                                "hub " + options_.address + ", queue '" + std::string(queue) +
                                    "' sequence " + std::to_string(expect) + ": " +
                                    std::string(event.status().message()),
                                kErrCorrupt);
      break;
    }
    if (event->sequence != expect) {
      result = core::MakeStatus(absl::StatusCode::kDataLoss,
                                "hub " + options_.address + ", queue '" + std::string(queue) +
                                    "': sequence " + std::to_string(expect) + " is missing",
                                kErrCorrupt);
      break;
    }
    if (result = visit(*event); !result.ok()) break;
    ++expect;
  }
  if (!result.ok()) {
    context.TryCancel();
    reader->Finish();
    return result;
  }
  if (auto s = reader->Finish(); !s.ok()) return FromGrpc(s, "hub " + options_.address);
  std::lock_guard lock(mu_);
  SeedLocked(std::string(queue), expect - 1);
  return absl::OkStatus();
}

}  // namespace omnirelay::replication
