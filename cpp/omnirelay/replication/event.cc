#include "omnirelay/replication/event.h"

#include <zlib.h>

#include <cstdio>
#include <tuple>

#include "absl/strings/escaping.h"
#include "nlohmann/json.hpp"

namespace omnirelay::replication {

namespace {

using nlohmann::json;

// Dumps without throwing: invalid UTF-8 in a string (possible only through
// the C++ API; the RPC surface validates UTF-8) is replaced, not an abort.
std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

absl::Status Malformed(std::string_view what) {
  return absl::DataLossError("malformed replication event: " + std::string(what));
}

// Field readers that never throw (nlohmann's get<> does on a type mismatch).
bool ReadString(const json& j, const char* key, std::string& out) {
  auto it = j.find(key);
  if (it == j.end()) return true;  // optional: absent means empty
  if (!it->is_string()) return false;
  out = it->get_ref<const std::string&>();
  return true;
}

template <typename Int>
bool ReadInt(const json& j, const char* key, Int& out) {
  auto it = j.find(key);
  if (it == j.end()) return true;
  if (!it->is_number_integer()) return false;
  if constexpr (std::is_unsigned_v<Int>) {
    if (it->is_number_unsigned()) {
      out = static_cast<Int>(it->get<std::uint64_t>());
      return true;
    }
    const auto v = it->get<std::int64_t>();
    if (v < 0) return false;
    out = static_cast<Int>(v);
  } else {
    out = static_cast<Int>(it->get<std::int64_t>());
  }
  return true;
}

bool ReadStringMap(const json& j, const char* key, std::map<std::string, std::string>& out) {
  auto it = j.find(key);
  if (it == j.end()) return true;
  if (!it->is_object()) return false;
  for (const auto& [k, v] : it->items()) {
    if (!v.is_string()) return false;
    out[k] = v.get<std::string>();
  }
  return true;
}

constexpr std::string_view kSegmentPrefix = R"({"checksum":"crc32:)";
constexpr std::string_view kSegmentMiddle = R"(","event":)";

std::string Hex8(std::uint32_t v) {
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", v);
  return std::string(buf, 8);
}

bool ParseHex8(std::string_view text, std::uint32_t& out) {
  if (text.size() != 8) return false;
  out = 0;
  for (char c : text) {
    out <<= 4;
    if (c >= '0' && c <= '9') {
      out |= static_cast<std::uint32_t>(c - '0');
    } else if (c >= 'a' && c <= 'f') {
      out |= static_cast<std::uint32_t>(c - 'a' + 10);
    } else {
      return false;
    }
  }
  return true;
}

}  // namespace

bool operator==(const ReplicationEvent& a, const ReplicationEvent& b) {
  auto fields = [](const ReplicationEvent& e) {
    return std::tie(e.queue, e.sequence, e.shard_id, e.op, e.item_id, e.fencing_token, e.owner,
                    e.principal, e.request_id, e.attempt, e.occurred_at_us, e.expires_at_us,
                    e.reason, e.metadata);
  };
  if (fields(a) != fields(b) || a.payload.has_value() != b.payload.has_value()) return false;
  if (!a.payload) return true;
  auto payload = [](const resourcelease::ItemPayload& p) {
    return std::tie(p.resource_type, p.resource_id, p.partition_key, p.attributes, p.body,
                    p.request_id, p.priority);
  };
  return payload(*a.payload) == payload(*b.payload);
}

bool ReplicationEvent::replay() const {
  auto it = metadata.find(kReplayTag);
  return it != metadata.end() && it->second == "true";
}

std::int64_t ToUnixMicros(core::TimePoint t) {
  if (t == core::TimePoint{}) return 0;
  return std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count();
}

core::TimePoint FromUnixMicros(std::int64_t us) {
  if (us == 0) return core::TimePoint{};
  return core::TimePoint(
      std::chrono::duration_cast<core::TimePoint::duration>(std::chrono::microseconds(us)));
}

ReplicationEvent FromMutation(std::string_view queue, const resourcelease::MutationEvent& m) {
  ReplicationEvent e;
  e.queue = std::string(queue);
  e.sequence = m.sequence;
  e.op = std::string(resourcelease::OpName(m.op));
  e.item_id = m.item_id;
  e.fencing_token = m.fencing_token;
  e.owner = std::string(m.owner);
  e.principal = e.owner;
  e.attempt = m.attempt;
  e.occurred_at_us = ToUnixMicros(m.at);
  e.expires_at_us = ToUnixMicros(m.expires_at);
  e.reason = std::string(m.reason);
  if (m.payload) {
    e.payload = *m.payload;
    e.request_id = m.payload->request_id;
  }
  return e;
}

std::string EncodeJson(const ReplicationEvent& e) {
  // nlohmann's object is a std::map: keys come out sorted, so the same event
  // always encodes to the same bytes (the checksum depends on it).
  json j = {{"queue", e.queue},
            {"sequence", e.sequence},
            {"op", e.op},
            {"itemId", e.item_id},
            {"occurredAtUs", e.occurred_at_us}};
  if (!e.shard_id.empty()) j["shardId"] = e.shard_id;
  if (e.fencing_token != 0) j["fencingToken"] = e.fencing_token;
  if (!e.owner.empty()) j["owner"] = e.owner;
  if (!e.principal.empty()) j["principal"] = e.principal;
  if (!e.request_id.empty()) j["requestId"] = e.request_id;
  if (e.attempt != 0) j["attempt"] = e.attempt;
  if (e.expires_at_us != 0) j["expiresAtUs"] = e.expires_at_us;
  if (!e.reason.empty()) j["reason"] = e.reason;
  if (!e.metadata.empty()) j["metadata"] = e.metadata;
  if (e.payload) {
    const auto& p = *e.payload;
    json pj = {{"resourceType", p.resource_type},
               {"resourceId", p.resource_id},
               {"requestId", p.request_id},
               {"priority", p.priority}};
    if (!p.partition_key.empty()) pj["partitionKey"] = p.partition_key;
    if (!p.attributes.empty()) pj["attributes"] = p.attributes;
    if (!p.body.empty()) pj["body"] = absl::Base64Escape(p.body);
    j["payload"] = std::move(pj);
  }
  return Dump(j);
}

absl::StatusOr<ReplicationEvent> DecodeJson(std::string_view text) {
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Malformed("not valid JSON");
  if (!j.is_object()) return Malformed("not a JSON object");
  ReplicationEvent e;
  if (!j.contains("queue") || !j.contains("sequence") || !j.contains("op")) {
    return Malformed("queue, sequence and op are required");
  }
  if (!ReadString(j, "queue", e.queue) || !ReadInt(j, "sequence", e.sequence) ||
      !ReadString(j, "op", e.op) || !ReadString(j, "shardId", e.shard_id) ||
      !ReadInt(j, "itemId", e.item_id) || !ReadInt(j, "fencingToken", e.fencing_token) ||
      !ReadString(j, "owner", e.owner) || !ReadString(j, "principal", e.principal) ||
      !ReadString(j, "requestId", e.request_id) || !ReadInt(j, "attempt", e.attempt) ||
      !ReadInt(j, "occurredAtUs", e.occurred_at_us) ||
      !ReadInt(j, "expiresAtUs", e.expires_at_us) || !ReadString(j, "reason", e.reason) ||
      !ReadStringMap(j, "metadata", e.metadata)) {
    return Malformed("a field has the wrong type");
  }
  if (auto it = j.find("payload"); it != j.end()) {
    if (!it->is_object()) return Malformed("payload must be an object");
    resourcelease::ItemPayload p;
    std::string body64;
    if (!ReadString(*it, "resourceType", p.resource_type) ||
        !ReadString(*it, "resourceId", p.resource_id) ||
        !ReadString(*it, "requestId", p.request_id) || !ReadInt(*it, "priority", p.priority) ||
        !ReadString(*it, "partitionKey", p.partition_key) ||
        !ReadStringMap(*it, "attributes", p.attributes) || !ReadString(*it, "body", body64)) {
      return Malformed("a payload field has the wrong type");
    }
    if (!body64.empty() && !absl::Base64Unescape(body64, &p.body)) {
      return Malformed("payload.body is not base64");
    }
    e.payload = std::move(p);
  }
  return e;
}

std::uint32_t Checksum(std::string_view bytes) {
  uLong crc = crc32(0L, Z_NULL, 0);
  // zlib takes uInt lengths: feed large inputs in pieces.
  while (!bytes.empty()) {
    const size_t n = std::min<size_t>(bytes.size(), 1u << 30);
    crc = crc32(crc, reinterpret_cast<const Bytef*>(bytes.data()), static_cast<uInt>(n));
    bytes.remove_prefix(n);
  }
  return static_cast<std::uint32_t>(crc);
}

std::string EncodeLine(const ReplicationEvent& event) {
  std::string body = EncodeJson(event);
  std::string out = Hex8(Checksum(body));
  out.reserve(body.size() + 10);
  out += ' ';
  out += body;
  out += '\n';
  return out;
}

absl::StatusOr<ReplicationEvent> DecodeLine(std::string_view line) {
  if (!line.empty() && line.back() == '\n') {
    line.remove_suffix(1);
  } else {
    return absl::DataLossError("truncated replication line (no newline)");
  }
  std::uint32_t want = 0;
  if (line.size() < 10 || line[8] != ' ' || !ParseHex8(line.substr(0, 8), want)) {
    return absl::DataLossError("truncated or malformed replication line (no checksum)");
  }
  const std::string_view body = line.substr(9);
  if (Checksum(body) != want) return absl::DataLossError("replication line checksum mismatch");
  return DecodeJson(body);
}

std::string EncodeSegment(const ReplicationEvent& event) {
  const std::string body = EncodeJson(event);
  std::string out;
  out.reserve(body.size() + 40);
  out += kSegmentPrefix;
  out += Hex8(Checksum(body));
  out += kSegmentMiddle;
  out += body;
  out += "}\n";
  return out;
}

absl::StatusOr<ReplicationEvent> DecodeSegment(std::string_view text) {
  const size_t head = kSegmentPrefix.size() + 8 + kSegmentMiddle.size();
  if (text.size() < head + 3 || text.substr(0, kSegmentPrefix.size()) != kSegmentPrefix ||
      text.substr(kSegmentPrefix.size() + 8, kSegmentMiddle.size()) != kSegmentMiddle ||
      text.substr(text.size() - 2) != "}\n") {
    return absl::DataLossError("truncated or malformed segment (" + std::to_string(text.size()) +
                               " bytes)");
  }
  std::uint32_t want = 0;
  if (!ParseHex8(text.substr(kSegmentPrefix.size(), 8), want)) {
    return absl::DataLossError("segment checksum is not 8 hex digits");
  }
  const std::string_view body = text.substr(head, text.size() - head - 2);
  if (Checksum(body) != want) return absl::DataLossError("segment checksum mismatch");
  return DecodeJson(body);
}

}  // namespace omnirelay::replication
