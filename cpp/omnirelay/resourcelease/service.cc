#include "omnirelay/resourcelease/service.h"

#include <google/protobuf/util/json_util.h>

#include "omnirelay/core/retry_after.h"
#include "omnirelay/resourcelease/v1/resourcelease.pb.h"

namespace omnirelay::resourcelease {
namespace {

namespace pb = omnirelay::resourcelease::v1;
using dispatcher::Procedure;
using dispatcher::ProcedureKind;
using dispatcher::Request;
using dispatcher::Response;
using dispatcher::UnaryCallback;

enum class Encoding { kJson, kProto };

Encoding EncodingOf(const core::RequestMeta& meta, const std::string& body) {
  if (meta.encoding == "json") return Encoding::kJson;
  if (meta.encoding == "proto" || meta.encoding == "protobuf") return Encoding::kProto;
  for (char c : body) {
    if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
    return c == '{' ? Encoding::kJson : Encoding::kProto;
  }
  return meta.transport == "http" ? Encoding::kJson : Encoding::kProto;
}

std::int64_t UnixMillis(core::TimePoint t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}
core::TimePoint FromUnixMillis(std::int64_t ms) {
  return core::TimePoint{} + std::chrono::milliseconds(ms);
}

void ToProto(const ItemPayload& in, pb::ItemPayload& out) {
  out.set_resource_type(in.resource_type);
  out.set_resource_id(in.resource_id);
  out.set_partition_key(in.partition_key);
  for (const auto& [k, v] : in.attributes) (*out.mutable_attributes())[k] = v;
  out.set_body(in.body);
  out.set_request_id(in.request_id);
  out.set_priority(in.priority);
}

ItemPayload FromProto(const pb::ItemPayload& in) {
  ItemPayload out{.resource_type = in.resource_type(),
                  .resource_id = in.resource_id(),
                  .partition_key = in.partition_key(),
                  .attributes = {},
                  .body = in.body(),
                  .request_id = in.request_id(),
                  .priority = in.priority()};
  for (const auto& [k, v] : in.attributes()) out.attributes[k] = v;
  return out;
}

void ToProto(const ItemRecord& in, pb::ItemRecord& out) {
  out.set_item_id(in.item_id);
  ToProto(in.payload, *out.mutable_item());
  out.set_attempts(in.attempts);
  out.set_last_token(in.last_token);
  out.set_enqueued_at_ms(UnixMillis(in.enqueued_at));
  out.set_last_error(in.last_error);
}

ItemRecord FromProto(const pb::ItemRecord& in) {
  return ItemRecord{.item_id = in.item_id(),
                    .payload = FromProto(in.item()),
                    .attempts = in.attempts(),
                    .last_token = in.last_token(),
                    .enqueued_at = in.enqueued_at_ms() > 0 ? FromUnixMillis(in.enqueued_at_ms())
                                                           : core::TimePoint{},
                    .last_error = in.last_error()};
}

absl::Status Invalid(std::string_view what) {
  return core::MakeStatus(absl::StatusCode::kInvalidArgument, what, "bad-request");
}

template <typename Message>
absl::Status Decode(const Request& request, Encoding encoding, Message& out) {
  const std::string& type = Message::descriptor()->name();
  if (encoding == Encoding::kProto) {
    if (!out.ParseFromString(request.body)) {
      return Invalid("request body is not a valid protobuf " + type);
    }
    return absl::OkStatus();
  }
  if (request.body.find_first_not_of(" \t\r\n") == std::string::npos) return absl::OkStatus();
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  auto status = google::protobuf::util::JsonStringToMessage(request.body, &out, options);
  if (!status.ok()) {
    return Invalid("request body is not a valid JSON " + type + ": " +
                   std::string(status.message().data(), status.message().size()));
  }
  return absl::OkStatus();
}

template <typename Message>
absl::StatusOr<Response> Encode(const Message& message, Encoding encoding) {
  Response response;
  if (encoding == Encoding::kProto) {
    response.headers.Set("rpc-encoding", "proto");
    response.body = message.SerializeAsString();
    return response;
  }
  google::protobuf::util::JsonPrintOptions options;
  options.always_print_primitive_fields = true;
  auto status = google::protobuf::util::MessageToJsonString(message, &response.body, options);
  if (!status.ok()) return absl::InternalError("encoding the answer as JSON failed");
  response.headers.Set("rpc-encoding", "json");
  return response;
}

// A typed asynchronous handler: Decode -> handler(request, meta, reply).
template <typename Req, typename Resp>
using Handler =
    std::function<void(Req, const core::RequestMeta&, std::function<void(absl::StatusOr<Resp>)>)>;

template <typename Req, typename Resp>
Procedure Make(const std::string& service, const std::string& name, Handler<Req, Resp> handler) {
  Procedure procedure;
  procedure.service = service;
  procedure.name = name;
  procedure.kind = ProcedureKind::kUnary;
  procedure.encoding = "json+proto";
  procedure.unary = [handler = std::move(handler)](Request request, UnaryCallback done) {
    const Encoding encoding = EncodingOf(request.meta, request.body);
    Req parsed;
    if (auto s = Decode(request, encoding, parsed); !s.ok()) {
      done(s);
      return;
    }
    handler(std::move(parsed), request.meta,
            [encoding, done = std::move(done)](absl::StatusOr<Resp> result) {
              if (!result.ok()) {
                done(result.status());
                return;
              }
              done(Encode(*result, encoding));
            });
  };
  return procedure;
}

absl::Status NeedLease(const pb::LeaseRef& ref) {
  if (ref.item_id() == 0 || ref.fencing_token() == 0) {
    return Invalid("lease.itemId and lease.fencingToken are required");
  }
  return absl::OkStatus();
}

// Answers `out` once the queue's mutations so far are durable (durable
// acknowledgements), or at once without a hook. The queue's sequence read
// after the operation covers the operation's own events.
template <typename Resp, typename Reply>
void ReplyDurably(const ServiceOptions& options, const std::shared_ptr<Queue>& queue, Resp out,
                  Reply reply) {
  if (!options.await_durable) return reply(std::move(out));
  options.await_durable(queue->Stats().sequence,
                        [out = std::move(out), reply = std::move(reply)](absl::Status s) mutable {
                          if (!s.ok()) return reply(s);
                          reply(std::move(out));
                        });
}

}  // namespace

std::string ServiceName(std::string_view ns) {
  if (ns.empty() || ns == kDefaultNamespace) return "resourcelease";
  return "resourcelease." + std::string(ns);
}

std::string OwnerOf(const core::RequestMeta& meta) {
  if (auto principal = meta.headers.Get("rpc.principal"); principal && !principal->empty()) {
    return std::string(*principal);
  }
  if (!meta.caller.empty()) return meta.caller;
  return "anonymous";
}

const std::vector<std::string>& ProcedureNames() {
  static const std::vector<std::string> names = {"enqueue",     "lease",  "complete", "heartbeat",
                                                 "fail",        "drain",  "restore",  "stats",
                                                 "deadLetters", "requeue"};
  return names;
}

absl::Status RegisterProcedures(dispatcher::Dispatcher& dispatcher, std::shared_ptr<Queue> queue,
                                ServiceOptions options, std::shared_ptr<core::Clock> clock) {
  const std::string service = ServiceName(queue->options().name);
  std::vector<Procedure> procedures;

  procedures.push_back(Make<pb::EnqueueRequest, pb::EnqueueResponse>(
      service, "enqueue",
      [queue, options](pb::EnqueueRequest req, const core::RequestMeta&, auto reply) {
        if (!req.has_item()) return reply(Invalid("item is required"));
        if (options.admit_enqueue) {
          if (auto admitted = options.admit_enqueue(); !admitted.ok()) return reply(admitted);
        }
        auto result = queue->Enqueue(FromProto(req.item()));
        if (!result.ok()) {
          absl::Status status = result.status();
          if (core::ErrorCode(status) == std::string(kErrBackpressure)) {
            status = core::WithRetryAfter(std::move(status),
                                          std::chrono::duration_cast<std::chrono::milliseconds>(
                                              queue->options().retry_after));
          }
          return reply(status);
        }
        pb::EnqueueResponse out;
        out.set_item_id(result->item_id);
        out.set_duplicate(result->duplicate);
        out.set_request_id(result->request_id);
        out.set_state(result->state);
        ReplyDurably(options, queue, std::move(out), std::move(reply));
      }));

  procedures.push_back(Make<pb::LeaseRequest, pb::LeaseResponse>(
      service, "lease",
      [queue, options, clock](pb::LeaseRequest req, const core::RequestMeta& meta, auto reply) {
        core::Duration wait = std::min<core::Duration>(std::chrono::milliseconds(req.wait_ms()),
                                                       options.max_lease_wait);
        // Answer before the caller's deadline, so a lease is never handed to
        // a call that already timed out.
        if (auto deadline = meta.EffectiveDeadline(clock->Now())) {
          wait = std::min<core::Duration>(wait,
                                          *deadline - clock->Now() - std::chrono::milliseconds(50));
        }
        queue->LeaseAsync(OwnerOf(meta), wait,
                          [queue, options, reply = std::move(reply)](
                              absl::StatusOr<std::optional<Lease>> got) mutable {
                            if (!got.ok()) return reply(got.status());
                            pb::LeaseResponse out;
                            if (got->has_value()) {
                              const Lease& l = **got;
                              out.set_leased(true);
                              out.set_item_id(l.item_id);
                              out.set_fencing_token(l.fencing_token);
                              out.set_owner(l.owner);
                              out.set_attempt(l.attempt);
                              out.set_expires_at_ms(UnixMillis(l.expires_at));
                              ToProto(l.payload, *out.mutable_item());
                              return ReplyDurably(options, queue, std::move(out), std::move(reply));
                            }
                            reply(std::move(out));
                          });
      }));

  procedures.push_back(Make<pb::CompleteRequest, pb::CompleteResponse>(
      service, "complete",
      [queue, options](pb::CompleteRequest req, const core::RequestMeta& meta, auto reply) {
        if (auto s = NeedLease(req.lease()); !s.ok()) return reply(s);
        auto s = queue->Complete(req.lease().item_id(), req.lease().fencing_token(), OwnerOf(meta));
        if (!s.ok()) return reply(s);
        ReplyDurably(options, queue, pb::CompleteResponse{}, std::move(reply));
      }));

  procedures.push_back(Make<pb::HeartbeatRequest, pb::HeartbeatResponse>(
      service, "heartbeat",
      [queue](pb::HeartbeatRequest req, const core::RequestMeta& meta, auto reply) {
        if (auto s = NeedLease(req.lease()); !s.ok()) return reply(s);
        auto r =
            queue->Heartbeat(req.lease().item_id(), req.lease().fencing_token(), OwnerOf(meta));
        if (!r.ok()) return reply(r.status());
        pb::HeartbeatResponse out;
        out.set_expires_at_ms(UnixMillis(*r));
        reply(std::move(out));
      }));

  procedures.push_back(Make<pb::FailRequest, pb::FailResponse>(
      service, "fail",
      [queue, options](pb::FailRequest req, const core::RequestMeta& meta, auto reply) {
        if (auto s = NeedLease(req.lease()); !s.ok()) return reply(s);
        auto r = queue->Fail(req.lease().item_id(), req.lease().fencing_token(), OwnerOf(meta),
                             req.error(), !req.has_requeue() || req.requeue());
        if (!r.ok()) return reply(r.status());
        pb::FailResponse out;
        out.set_state(*r);
        ReplyDurably(options, queue, std::move(out), std::move(reply));
      }));

  procedures.push_back(Make<pb::DrainRequest, pb::DrainResponse>(
      service, "drain", [queue, options](pb::DrainRequest, const core::RequestMeta&, auto reply) {
        pb::DrainResponse out;
        out.set_namespace_(queue->options().name);
        for (const auto& record : queue->Drain()) ToProto(record, *out.add_items());
        ReplyDurably(options, queue, std::move(out), std::move(reply));
      }));

  procedures.push_back(Make<pb::RestoreRequest, pb::RestoreResponse>(
      service, "restore",
      [queue, options](pb::RestoreRequest req, const core::RequestMeta&, auto reply) {
        std::vector<ItemRecord> records;
        records.reserve(static_cast<size_t>(req.items_size()));
        for (const auto& item : req.items()) records.push_back(FromProto(item));
        const size_t total = records.size();
        auto added = queue->Restore(std::move(records));
        if (!added.ok()) return reply(added.status());
        pb::RestoreResponse out;
        out.set_restored(*added);
        out.set_skipped(total - *added);
        ReplyDurably(options, queue, std::move(out), std::move(reply));
      }));

  procedures.push_back(Make<pb::StatsRequest, pb::StatsResponse>(
      service, "stats", [queue](pb::StatsRequest, const core::RequestMeta&, auto reply) {
        const QueueStats s = queue->Stats();
        const QueueOptions& o = queue->options();
        pb::StatsResponse out;
        out.set_namespace_(o.name);
        out.set_pending(s.pending);
        out.set_active(s.active);
        out.set_dead_letter(s.dead_letter);
        out.set_backpressure(s.backpressure);
        out.set_drained(s.drained);
        out.set_enqueued(s.enqueued);
        out.set_completed(s.completed);
        out.set_failed(s.failed);
        out.set_expired(s.expired);
        out.set_dead_lettered(s.dead_lettered);
        out.set_backpressure_transitions(s.backpressure_transitions);
        out.set_sequence(s.sequence);
        out.set_waiters(s.waiters);
        out.set_high_watermark(o.high_watermark);
        out.set_low_watermark(o.low_watermark);
        out.set_capacity(o.capacity);
        reply(std::move(out));
      }));

  procedures.push_back(Make<pb::DeadLettersRequest, pb::DeadLettersResponse>(
      service, "deadLetters",
      [queue](pb::DeadLettersRequest, const core::RequestMeta&, auto reply) {
        pb::DeadLettersResponse out;
        out.set_namespace_(queue->options().name);
        for (const auto& record : queue->DeadLetters()) ToProto(record, *out.add_items());
        reply(std::move(out));
      }));

  procedures.push_back(Make<pb::RequeueRequest, pb::RequeueResponse>(
      service, "requeue",
      [queue, options](pb::RequeueRequest req, const core::RequestMeta&, auto reply) {
        std::vector<std::uint64_t> ids(req.item_ids().begin(), req.item_ids().end());
        pb::RequeueResponse out;
        out.set_requeued(queue->RequeueDeadLetters(ids));
        ReplyDurably(options, queue, std::move(out), std::move(reply));
      }));

  for (auto& procedure : procedures) {
    if (auto s = dispatcher.Register(std::move(procedure)); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace omnirelay::resourcelease
