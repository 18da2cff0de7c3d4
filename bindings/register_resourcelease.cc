// Bindings of the ResourceLease queue (omnirelay_resourcelease): the in-memory
// queue itself, for scenarios and tests that drive it with a ManualClock.
// Items cross as dicts with the same camelCase keys as the procedures' JSON
// (`resourceType`, `requestId`, ...; `body` as bytes). The GIL is released
// around every queue call (they take the queue lock and may run waiters).
// Mutation events are kept in a C++ log (`events()`), never called back into
// Python under the queue lock.
#include <pybind11/chrono.h>
#include <pybind11/stl.h>

#include <mutex>

#include "bindings/registrations.h"
#include "bindings/status_conversion.h"
#include "omnirelay/resourcelease/queue.h"

namespace py = pybind11;

namespace omnirelay::bindings {
namespace {

using resourcelease::ItemPayload;
using resourcelease::ItemRecord;
using resourcelease::Lease;
using resourcelease::Queue;

double Epoch(core::TimePoint t) {
  return std::chrono::duration<double>(t.time_since_epoch()).count();
}

py::dict PayloadDict(const ItemPayload& p) {
  py::dict d;
  d["resourceType"] = p.resource_type;
  d["resourceId"] = p.resource_id;
  d["partitionKey"] = p.partition_key;
  d["attributes"] = p.attributes;
  d["body"] = py::bytes(p.body);
  d["requestId"] = p.request_id;
  d["priority"] = p.priority;
  return d;
}

ItemPayload PayloadFrom(const py::dict& d) {
  ItemPayload p;
  auto str = [&](const char* key) {
    return d.contains(key) ? py::cast<std::string>(d[key]) : std::string();
  };
  p.resource_type = str("resourceType");
  p.resource_id = str("resourceId");
  p.partition_key = str("partitionKey");
  if (d.contains("attributes"))
    p.attributes = py::cast<std::map<std::string, std::string>>(d["attributes"]);
  if (d.contains("body")) p.body = py::cast<std::string>(d["body"]);
  p.request_id = str("requestId");
  if (d.contains("priority")) p.priority = py::cast<int>(d["priority"]);
  return p;
}

py::dict RecordDict(const ItemRecord& r) {
  py::dict d;
  d["itemId"] = r.item_id;
  d["item"] = PayloadDict(r.payload);
  d["attempts"] = r.attempts;
  d["lastToken"] = r.last_token;
  d["enqueuedAt"] = Epoch(r.enqueued_at);
  d["lastError"] = r.last_error;
  return d;
}

py::dict LeaseDict(const Lease& l) {
  py::dict d;
  d["itemId"] = l.item_id;
  d["fencingToken"] = l.fencing_token;
  d["owner"] = l.owner;
  d["attempt"] = l.attempt;
  d["expiresAt"] = Epoch(l.expires_at);
  d["item"] = PayloadDict(l.payload);
  return d;
}

// The queue plus an event log the observer appends to (under the queue lock).
struct PyQueue {
  std::shared_ptr<Queue> queue;
  std::shared_ptr<std::mutex> mu = std::make_shared<std::mutex>();
  std::shared_ptr<std::vector<
      std::tuple<std::uint64_t, std::string, std::uint64_t, std::uint64_t, std::string>>>
      events = std::make_shared<std::vector<
          std::tuple<std::uint64_t, std::string, std::uint64_t, std::uint64_t, std::string>>>();
};

}  // namespace

void RegisterResourceLease(py::module_& m) {
  py::class_<PyQueue>(m, "ResourceLeaseQueue")
      .def(py::init([](std::string name, size_t capacity, core::Duration lease_duration,
                       int max_attempts, size_t high_watermark, size_t low_watermark,
                       size_t max_body_bytes, std::shared_ptr<core::Clock> clock,
                       std::shared_ptr<core::MetricsRegistry> metrics) {
             auto queue = Queue::Create({.name = std::move(name),
                                         .capacity = capacity,
                                         .lease_duration = lease_duration,
                                         .max_attempts = max_attempts,
                                         .high_watermark = high_watermark,
                                         .low_watermark = low_watermark,
                                         .max_body_bytes = max_body_bytes},
                                        clock ? clock : core::SystemClock::Shared(), metrics);
             auto py_queue = std::make_unique<PyQueue>();
             py_queue->queue = ValueOrThrow(std::move(queue));
             auto mu = py_queue->mu;
             auto events = py_queue->events;
             py_queue->queue->SetObserver([mu, events](const resourcelease::MutationEvent& e) {
               std::lock_guard lock(*mu);
               events->emplace_back(e.sequence, std::string(resourcelease::OpName(e.op)), e.item_id,
                                    e.fencing_token, std::string(e.owner));
             });
             return py_queue;
           }),
           py::arg("name") = "default", py::arg("capacity") = 100000,
           py::arg("lease_duration") = std::chrono::seconds(30), py::arg("max_attempts") = 5,
           py::arg("high_watermark") = 0, py::arg("low_watermark") = 0,
           py::arg("max_body_bytes") = 1 << 20, py::arg("clock") = nullptr,
           py::arg("metrics") = nullptr)
      .def(
          "enqueue",
          [](PyQueue& q, const py::dict& item) {
            ItemPayload payload = PayloadFrom(item);
            absl::StatusOr<resourcelease::EnqueueResult> r;
            {
              py::gil_scoped_release release;
              r = q.queue->Enqueue(std::move(payload));
            }
            auto v = ValueOrThrow(std::move(r));
            py::dict d;
            d["itemId"] = v.item_id;
            d["duplicate"] = v.duplicate;
            d["requestId"] = v.request_id;
            d["state"] = v.state;
            return d;
          },
          py::arg("item"))
      .def(
          "try_lease",
          [](PyQueue& q, const std::string& owner) -> py::object {
            absl::StatusOr<std::optional<Lease>> r;
            {
              py::gil_scoped_release release;
              r = q.queue->TryLease(owner);
            }
            auto v = ValueOrThrow(std::move(r));
            if (!v) return py::none();
            return LeaseDict(*v);
          },
          py::arg("owner"))
      .def("heartbeat",
           [](PyQueue& q, std::uint64_t item_id, std::uint64_t token, const std::string& owner) {
             absl::StatusOr<core::TimePoint> r;
             {
               py::gil_scoped_release release;
               r = q.queue->Heartbeat(item_id, token, owner);
             }
             return Epoch(ValueOrThrow(std::move(r)));
           })
      .def("complete",
           [](PyQueue& q, std::uint64_t item_id, std::uint64_t token, const std::string& owner) {
             absl::Status s;
             {
               py::gil_scoped_release release;
               s = q.queue->Complete(item_id, token, owner);
             }
             ThrowIfError(s);
           })
      .def(
          "fail",
          [](PyQueue& q, std::uint64_t item_id, std::uint64_t token, const std::string& owner,
             const std::string& error, bool requeue) {
            absl::StatusOr<std::string> r;
            {
              py::gil_scoped_release release;
              r = q.queue->Fail(item_id, token, owner, error, requeue);
            }
            return ValueOrThrow(std::move(r));
          },
          py::arg("item_id"), py::arg("token"), py::arg("owner"), py::arg("error") = "",
          py::arg("requeue") = true)
      .def("drain",
           [](PyQueue& q) {
             std::vector<ItemRecord> records;
             {
               py::gil_scoped_release release;
               records = q.queue->Drain();
             }
             py::list out;
             for (const auto& r : records) out.append(RecordDict(r));
             return out;
           })
      .def("restore",
           [](PyQueue& q, const py::list& items) {
             std::vector<ItemRecord> records;
             for (const auto& handle : items) {
               auto d = py::cast<py::dict>(handle);
               ItemRecord r;
               r.payload = PayloadFrom(py::cast<py::dict>(d["item"]));
               if (d.contains("attempts")) r.attempts = py::cast<int>(d["attempts"]);
               if (d.contains("lastToken")) r.last_token = py::cast<std::uint64_t>(d["lastToken"]);
               if (d.contains("lastError")) r.last_error = py::cast<std::string>(d["lastError"]);
               records.push_back(std::move(r));
             }
             absl::StatusOr<size_t> r;
             {
               py::gil_scoped_release release;
               r = q.queue->Restore(std::move(records));
             }
             return ValueOrThrow(std::move(r));
           })
      .def("dead_letters",
           [](PyQueue& q) {
             py::list out;
             for (const auto& r : q.queue->DeadLetters()) out.append(RecordDict(r));
             return out;
           })
      .def(
          "requeue_dead_letters",
          [](PyQueue& q, const std::vector<std::uint64_t>& ids) {
            py::gil_scoped_release release;
            return q.queue->RequeueDeadLetters(ids);
          },
          py::arg("item_ids") = std::vector<std::uint64_t>{})
      .def("expire_due",
           [](PyQueue& q) {
             py::gil_scoped_release release;
             q.queue->ExpireDue();
           })
      .def("stats",
           [](PyQueue& q) {
             const auto s = q.queue->Stats();
             py::dict d;
             d["pending"] = s.pending;
             d["active"] = s.active;
             d["deadLetter"] = s.dead_letter;
             d["waiters"] = s.waiters;
             d["backpressure"] = s.backpressure;
             d["drained"] = s.drained;
             d["enqueued"] = s.enqueued;
             d["completed"] = s.completed;
             d["failed"] = s.failed;
             d["expired"] = s.expired;
             d["deadLettered"] = s.dead_lettered;
             d["backpressureTransitions"] = s.backpressure_transitions;
             d["sequence"] = s.sequence;
             return d;
           })
      .def(
          "events",
          [](PyQueue& q) {
            std::lock_guard lock(*q.mu);
            py::list out;
            for (const auto& [seq, op, item, token, owner] : *q.events) {
              py::dict d;
              d["sequence"] = seq;
              d["op"] = op;
              d["itemId"] = item;
              d["fencingToken"] = token;
              d["owner"] = owner;
              out.append(d);
            }
            return out;
          },
          "Every mutation so far, in order: sequence, op, itemId, fencingToken, owner.");
}

}  // namespace omnirelay::bindings
