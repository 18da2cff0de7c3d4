#include "omnirelay/replication/event.h"

#include <zlib.h>

#include <charconv>
#include <cstdio>
#include <tuple>

#include "absl/strings/escaping.h"
#include "nlohmann/json.hpp"

namespace omnirelay::replication {

namespace {

using nlohmann::json;

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

namespace {

// Length of the valid UTF-8 sequence at s[i] (lead byte >= 0x80), 0 if invalid.
size_t Utf8Length(std::string_view s, size_t i) {
  const auto at = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = at(i);
  size_t len;
  unsigned char lo = 0x80, hi = 0xBF;  // range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (i + len > s.size()) return 0;
  if (at(i + 1) < lo || at(i + 1) > hi) return 0;
  for (size_t k = 2; k < len; ++k) {
    if (at(i + k) < 0x80 || at(i + k) > 0xBF) return 0;
  }
  return len;
}

// A JSON string exactly as nlohmann's dump(-1, ' ', false, replace) writes it:
// UTF-8 kept, `"` `\` and control characters escaped (\u00xx lower-case),
// each invalid byte replaced by U+FFFD (the log must always parse back).
void AppendString(std::string& out, std::string_view s) {
  out += '"';
  for (size_t i = 0; i < s.size();) {
    // Runs of plain printable ASCII (nearly everything) go in one append.
    size_t run = i;
    while (run < s.size()) {
      const auto r = static_cast<unsigned char>(s[run]);
      if (r < 0x20 || r >= 0x80 || r == '"' || r == '\\') break;
      ++run;
    }
    if (run > i) {
      out.append(s.data() + i, run - i);
      i = run;
      if (i == s.size()) break;
    }
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      const size_t len = Utf8Length(s, i);
      if (len == 0) {
        out += "\xEF\xBF\xBD";
        ++i;
      } else {
        out.append(s.data() + i, len);
        i += len;
      }
      continue;
    }
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
    ++i;
  }
  out += '"';
}

template <typename Int>
void AppendInt(std::string& out, Int v) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, end);
}

// Writes `"key":` with a leading comma after the first member.
void Key(std::string& out, bool& first, std::string_view key) {
  if (!first) out += ',';
  first = false;
  out += '"';
  out += key;
  out += "\":";
}

// Metadata as stored: lease.replay is about one delivery, not the event, and
// is never encoded (a replayed event encodes exactly like the live one).
bool HasStoredMetadata(const std::map<std::string, std::string>& m) {
  return !m.empty() && !(m.size() == 1 && m.begin()->first == kReplayTag);
}

void AppendMap(std::string& out, const std::map<std::string, std::string>& m,
               bool skip_replay = false) {
  out += '{';
  bool first = true;
  for (const auto& [k, v] : m) {
    if (skip_replay && k == kReplayTag) continue;
    if (!first) out += ',';
    first = false;
    AppendString(out, k);
    out += ':';
    AppendString(out, v);
  }
  out += '}';
}

}  // namespace

std::string EncodeJson(const ReplicationEvent& e) {
  // Canonical form, written by hand on the log's hot path (the tree-building
  // JSON library cost several times more): keys in sorted order, compact,
  // optional fields only when set. The same event always gives the same bytes
  // (the checksum covers them); the result is what nlohmann's compact dump of
  // the same object gives (tested), so any JSON tool reads it.
  std::string out;
  out.reserve(256 + (e.payload ? e.payload->body.size() * 4 / 3 : 0));
  bool first = true;
  out += '{';
  if (e.attempt != 0) Key(out, first, "attempt"), AppendInt(out, e.attempt);
  if (e.expires_at_us != 0) Key(out, first, "expiresAtUs"), AppendInt(out, e.expires_at_us);
  if (e.fencing_token != 0) Key(out, first, "fencingToken"), AppendInt(out, e.fencing_token);
  Key(out, first, "itemId"), AppendInt(out, e.item_id);
  if (HasStoredMetadata(e.metadata)) {
    Key(out, first, "metadata"), AppendMap(out, e.metadata, /*skip_replay=*/true);
  }
  Key(out, first, "occurredAtUs"), AppendInt(out, e.occurred_at_us);
  Key(out, first, "op"), AppendString(out, e.op);
  if (!e.owner.empty()) Key(out, first, "owner"), AppendString(out, e.owner);
  if (e.payload) {
    const auto& p = *e.payload;
    Key(out, first, "payload");
    out += '{';
    bool pfirst = true;
    if (!p.attributes.empty()) Key(out, pfirst, "attributes"), AppendMap(out, p.attributes);
    if (!p.body.empty()) Key(out, pfirst, "body"), AppendString(out, absl::Base64Escape(p.body));
    if (!p.partition_key.empty()) {
      Key(out, pfirst, "partitionKey"), AppendString(out, p.partition_key);
    }
    Key(out, pfirst, "priority"), AppendInt(out, p.priority);
    Key(out, pfirst, "requestId"), AppendString(out, p.request_id);
    Key(out, pfirst, "resourceId"), AppendString(out, p.resource_id);
    Key(out, pfirst, "resourceType"), AppendString(out, p.resource_type);
    out += '}';
  }
  if (!e.principal.empty()) Key(out, first, "principal"), AppendString(out, e.principal);
  Key(out, first, "queue"), AppendString(out, e.queue);
  if (!e.reason.empty()) Key(out, first, "reason"), AppendString(out, e.reason);
  if (!e.request_id.empty()) Key(out, first, "requestId"), AppendString(out, e.request_id);
  Key(out, first, "sequence"), AppendInt(out, e.sequence);
  if (!e.shard_id.empty()) Key(out, first, "shardId"), AppendString(out, e.shard_id);
  out += '}';
  return out;
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
