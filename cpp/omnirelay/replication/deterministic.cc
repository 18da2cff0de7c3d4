#include "omnirelay/replication/deterministic.h"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>

#include "nlohmann/json.hpp"
#include "omnirelay/replication/metrics.h"
#include "omnirelay/resourcelease/metrics.h"

namespace omnirelay::replication {

namespace {

using nlohmann::json;

absl::Status ErrnoStatus(std::string_view what, const std::string& path) {
  return absl::UnavailableError(std::string(what) + " " + path + ": " + std::strerror(errno));
}

}  // namespace

absl::StatusOr<std::vector<bool>> DeterministicStateStore::TryAddMany(
    std::span<const DeterministicRecord> records) {
  std::vector<bool> out;
  out.reserve(records.size());
  for (const auto& r : records) {
    auto added = TryAdd(r);
    if (!added.ok()) return added.status();
    out.push_back(*added);
  }
  return out;
}

// --- memory ---------------------------------------------------------------------------

absl::StatusOr<bool> MemoryDeterministicStore::TryAdd(const DeterministicRecord& record) {
  std::lock_guard lock(mu_);
  return records_.try_emplace(record.effect_id, record).second;
}

absl::StatusOr<std::optional<DeterministicRecord>> MemoryDeterministicStore::Get(
    std::string_view effect_id) {
  std::lock_guard lock(mu_);
  auto it = records_.find(std::string(effect_id));
  if (it == records_.end()) return std::optional<DeterministicRecord>();
  return std::optional<DeterministicRecord>(it->second);
}

absl::StatusOr<std::uint64_t> MemoryDeterministicStore::Count() {
  std::lock_guard lock(mu_);
  return records_.size();
}

absl::StatusOr<std::vector<std::string>> MemoryDeterministicStore::EffectIds() {
  std::lock_guard lock(mu_);
  std::vector<std::string> out;
  out.reserve(records_.size());
  for (const auto& [id, r] : records_) out.push_back(id);
  std::sort(out.begin(), out.end());
  return out;
}

// --- SQLite -------------------------------------------------------------------------------

absl::StatusOr<std::shared_ptr<SqliteDeterministicStore>> SqliteDeterministicStore::Open(
    SqliteDeterministicStoreOptions options) {
  if (!sqlite::ValidIdentifier(options.table)) {
    return absl::InvalidArgumentError("deterministic table name '" + options.table +
                                      "' must be letters, digits and '_'");
  }
  if (options.path.empty()) return absl::InvalidArgumentError("deterministic path is required");
  std::shared_ptr<SqliteDeterministicStore> store(new SqliteDeterministicStore(std::move(options)));
  auto db = sqlite::Open(store->options_.path, store->options_.full_sync);
  if (!db.ok()) return db.status();
  store->db_ = std::move(*db);
  const std::string& t = store->options_.table;
  if (auto s =
          sqlite::Exec(store->db_.get(), "CREATE TABLE IF NOT EXISTS " + t +
                                             " (effect_id TEXT PRIMARY KEY, kind TEXT NOT NULL,"
                                             " version INTEGER NOT NULL, payload TEXT NOT NULL,"
                                             " recorded_at_us INTEGER NOT NULL) WITHOUT ROWID");
      !s.ok()) {
    return s;
  }
  store->insert_ = std::make_unique<sqlite::Stmt>(
      store->db_.get(), "INSERT INTO " + t +
                            " (effect_id, kind, version, payload, recorded_at_us)"
                            " VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(effect_id) DO NOTHING");
  if (!store->insert_->ok()) {
    return sqlite::Error(store->db_.get(), store->insert_->rc(), "preparing try-add");
  }
  return store;
}

absl::StatusOr<bool> SqliteDeterministicStore::TryAdd(const DeterministicRecord& record) {
  auto many = TryAddMany(std::span<const DeterministicRecord>(&record, 1));
  if (!many.ok()) return many.status();
  return (*many)[0];
}

absl::StatusOr<std::vector<bool>> SqliteDeterministicStore::TryAddMany(
    std::span<const DeterministicRecord> records) {
  std::lock_guard lock(mu_);
  sqlite3* db = db_.get();
  const bool batch = records.size() > 1;
  if (batch) {
    if (auto s = sqlite::Exec(db, "BEGIN IMMEDIATE"); !s.ok()) return s;
  }
  std::vector<bool> out;
  out.reserve(records.size());
  for (const auto& r : records) {
    insert_->Reset();
    insert_->Bind(1, r.effect_id);
    insert_->Bind(2, r.kind);
    insert_->Bind(3, r.version);
    insert_->Bind(4, r.payload);
    insert_->Bind(5, r.recorded_at_us);
    const int rc = insert_->Step();
    if (rc != SQLITE_DONE) {
      absl::Status s = sqlite::Error(db, rc, "try-add " + r.effect_id + " in " + options_.path);
      insert_->Reset();
      if (batch) sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
      return s;
    }
    // ON CONFLICT DO NOTHING changes no row when the id exists: the insert
    // and the existence check are one atomic statement.
    out.push_back(sqlite3_changes(db) == 1);
  }
  insert_->Reset();
  if (batch) {
    if (auto s = sqlite::Exec(db, "COMMIT"); !s.ok()) {
      sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
      return s;
    }
  }
  return out;
}

absl::StatusOr<std::optional<DeterministicRecord>> SqliteDeterministicStore::Get(
    std::string_view effect_id) {
  std::lock_guard lock(mu_);
  sqlite::Stmt get(db_.get(), "SELECT kind, version, payload, recorded_at_us FROM " +
                                  options_.table + " WHERE effect_id = ?1");
  get.Bind(1, effect_id);
  const int rc = get.Step();
  if (rc == SQLITE_DONE) return std::optional<DeterministicRecord>();
  if (rc != SQLITE_ROW) return sqlite::Error(db_.get(), rc, "reading " + options_.path);
  DeterministicRecord r;
  r.effect_id = std::string(effect_id);
  r.kind = std::string(get.Text(0));
  r.version = get.Int(1);
  r.payload = std::string(get.Text(2));
  r.recorded_at_us = get.Int(3);
  return std::optional<DeterministicRecord>(std::move(r));
}

absl::StatusOr<std::uint64_t> SqliteDeterministicStore::Count() {
  std::lock_guard lock(mu_);
  sqlite::Stmt count(db_.get(), "SELECT COUNT(*) FROM " + options_.table);
  const int rc = count.Step();
  if (rc != SQLITE_ROW) return sqlite::Error(db_.get(), rc, "counting " + options_.path);
  return static_cast<std::uint64_t>(count.Int(0));
}

absl::StatusOr<std::vector<std::string>> SqliteDeterministicStore::EffectIds() {
  std::lock_guard lock(mu_);
  sqlite::Stmt list(db_.get(), "SELECT effect_id FROM " + options_.table + " ORDER BY effect_id");
  std::vector<std::string> out;
  int rc;
  while ((rc = list.Step()) == SQLITE_ROW) out.emplace_back(list.Text(0));
  if (rc != SQLITE_DONE) return sqlite::Error(db_.get(), rc, "listing " + options_.path);
  return out;
}

// --- file system -----------------------------------------------------------------------------

std::string FileSystemDeterministicStore::FileName(std::string_view effect_id) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(effect_id.size() + 8);
  for (unsigned char c : effect_id) {
    if (std::isalnum(c) || c == '.' || c == '-' || c == '_') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  out += ".json";
  return out;
}

absl::StatusOr<std::shared_ptr<FileSystemDeterministicStore>> FileSystemDeterministicStore::Open(
    FileSystemDeterministicStoreOptions options) {
  if (options.root.empty()) return absl::InvalidArgumentError("deterministic path is required");
  std::error_code ec;
  std::filesystem::create_directories(options.root, ec);
  if (ec) return absl::UnavailableError("creating " + options.root + ": " + ec.message());
  return std::shared_ptr<FileSystemDeterministicStore>(
      new FileSystemDeterministicStore(std::move(options)));
}

absl::StatusOr<bool> FileSystemDeterministicStore::TryAdd(const DeterministicRecord& record) {
  const std::string name = FileName(record.effect_id);
  if (name.size() > 250 || name.front() == '.') {
    return absl::InvalidArgumentError("effect id '" + record.effect_id +
                                      "' is too long (or starts with '.') for a file name");
  }
  json payload = json::parse(record.payload, nullptr, false);
  json doc = {{"effectId", record.effect_id},
              {"kind", record.kind},
              {"version", record.version},
              {"recordedAtUs", record.recorded_at_us}};
  if (payload.is_discarded()) {
    doc["payloadText"] = record.payload;
  } else {
    doc["payload"] = std::move(payload);
  }
  const std::string text = doc.dump(1, ' ', false, json::error_handler_t::replace) + "\n";
  const std::string final_path = options_.root + "/" + name;
  const std::string tmp_path = options_.root + "/.tmp." + std::to_string(::getpid()) + "." +
                               std::to_string(tmp_counter_.fetch_add(1));
  int fd = ::open(tmp_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus("creating", tmp_path);
  std::string_view rest = text;
  while (!rest.empty()) {
    const ssize_t n = ::write(fd, rest.data(), rest.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      auto s = ErrnoStatus("writing", tmp_path);
      ::close(fd);
      ::unlink(tmp_path.c_str());
      return s;
    }
    rest.remove_prefix(static_cast<size_t>(n));
  }
  if (options_.full_sync && ::fsync(fd) != 0) {
    auto s = ErrnoStatus("syncing", tmp_path);
    ::close(fd);
    ::unlink(tmp_path.c_str());
    return s;
  }
  ::close(fd);
  // link(2) creates the final name only if it does not exist: the atomic
  // "add if absent" (readers never see a half-written record under it).
  const int rc = ::link(tmp_path.c_str(), final_path.c_str());
  const int err = errno;
  ::unlink(tmp_path.c_str());
  if (rc == 0) {
    if (options_.full_sync) {
      int dfd = ::open(options_.root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (dfd >= 0) {
        ::fsync(dfd);
        ::close(dfd);
      }
    }
    return true;
  }
  if (err == EEXIST) return false;
  errno = err;
  return ErrnoStatus("linking", final_path);
}

absl::StatusOr<std::optional<DeterministicRecord>> FileSystemDeterministicStore::Get(
    std::string_view effect_id) {
  const std::string path = options_.root + "/" + FileName(effect_id);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return std::optional<DeterministicRecord>();
    return ErrnoStatus("opening", path);
  }
  std::string text;
  char buf[8192];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) text.append(buf, static_cast<size_t>(n));
  ::close(fd);
  json doc = json::parse(text, nullptr, false);
  if (doc.is_discarded() || !doc.is_object() || !doc.contains("effectId") ||
      !doc["effectId"].is_string() || !doc.contains("kind") || !doc["kind"].is_string() ||
      !doc.contains("version") || !doc["version"].is_number_integer()) {
    return absl::DataLossError("deterministic record " + path + " is corrupt (" +
                               std::to_string(text.size()) + " bytes)");
  }
  DeterministicRecord r;
  r.effect_id = doc["effectId"].get<std::string>();
  r.kind = doc["kind"].get<std::string>();
  r.version = doc["version"].get<std::int64_t>();
  if (auto it = doc.find("recordedAtUs"); it != doc.end() && it->is_number_integer()) {
    r.recorded_at_us = it->get<std::int64_t>();
  }
  if (auto it = doc.find("payload"); it != doc.end()) {
    r.payload = it->dump(-1, ' ', false, json::error_handler_t::replace);
  } else if (auto t = doc.find("payloadText"); t != doc.end() && t->is_string()) {
    r.payload = t->get<std::string>();
  }
  return std::optional<DeterministicRecord>(std::move(r));
}

absl::StatusOr<std::vector<std::string>> FileSystemDeterministicStore::EffectIds() {
  std::vector<std::string> out;
  DIR* d = ::opendir(options_.root.c_str());
  if (!d) return ErrnoStatus("listing", options_.root);
  while (struct dirent* entry = ::readdir(d)) {
    std::string_view name = entry->d_name;
    if (name.empty() || name.front() == '.' || name.size() < 6 ||
        name.substr(name.size() - 5) != ".json") {
      continue;
    }
    name.remove_suffix(5);
    std::string id;
    id.reserve(name.size());
    auto hex = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    for (size_t i = 0; i < name.size(); ++i) {
      if (name[i] == '%' && i + 2 < name.size() && hex(name[i + 1]) >= 0 && hex(name[i + 2]) >= 0) {
        id += static_cast<char>(hex(name[i + 1]) * 16 + hex(name[i + 2]));
        i += 2;
      } else {
        id += name[i];
      }
    }
    out.push_back(std::move(id));
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

absl::StatusOr<std::uint64_t> FileSystemDeterministicStore::Count() {
  auto ids = EffectIds();
  if (!ids.ok()) return ids.status();
  return ids->size();
}

// --- coordinator -----------------------------------------------------------------------------

namespace {

constexpr std::string_view kPlaceholders[] = {
    "changeId", "queue", "n", "seq", "op", "requestId", "resourceType", "resourceId", "shard"};

// Expands {name} placeholders with `value(name)`.
template <typename Fn>
std::string Expand(std::string_view format, Fn value) {
  std::string out;
  out.reserve(format.size() + 16);
  for (size_t i = 0; i < format.size(); ++i) {
    if (format[i] == '{') {
      const size_t end = format.find('}', i);
      if (end != std::string_view::npos) {
        out += value(format.substr(i + 1, end - i - 1));
        i = end;
        continue;
      }
    }
    out += format[i];
  }
  return out;
}

}  // namespace

absl::Status ValidateDeterministicOptions(const DeterministicOptions& options) {
  bool distinguishes = false;
  for (const std::string* format : {&options.change_id, &options.effect_id_format}) {
    for (size_t i = 0; i < format->size(); ++i) {
      if ((*format)[i] != '{') continue;
      const size_t end = format->find('}', i);
      if (end == std::string::npos) {
        return absl::InvalidArgumentError("unclosed '{' in '" + *format + "'");
      }
      const std::string_view name = std::string_view(*format).substr(i + 1, end - i - 1);
      if (std::find(std::begin(kPlaceholders), std::end(kPlaceholders), name) ==
          std::end(kPlaceholders)) {
        return absl::InvalidArgumentError("unknown placeholder {" + std::string(name) + "} in '" +
                                          *format + "'");
      }
      if (format == &options.change_id && name == "changeId") {
        return absl::InvalidArgumentError("changeId cannot contain {changeId}");
      }
      if (format == &options.effect_id_format && (name == "n" || name == "seq")) {
        distinguishes = true;
      }
    }
  }
  if (!distinguishes) {
    return absl::InvalidArgumentError("effectIdFormat '" + options.effect_id_format +
                                      "' must contain {n} or {seq}: effect ids must tell events "
                                      "apart");
  }
  return absl::OkStatus();
}

DeterministicCoordinator::DeterministicCoordinator(std::shared_ptr<DeterministicStateStore> store,
                                                   DeterministicOptions options,
                                                   std::shared_ptr<core::Clock> clock,
                                                   std::shared_ptr<core::MetricsRegistry> metrics)
    : store_(std::move(store)),
      options_(std::move(options)),
      clock_(std::move(clock)),
      metrics_(std::move(metrics)) {}

std::string DeterministicCoordinator::EffectId(const ReplicationEvent& e) const {
  auto value = [&](std::string_view name) -> std::string {
    if (name == "queue") return e.queue;
    if (name == "n" || name == "seq") return std::to_string(e.sequence);
    if (name == "op") return e.op;
    if (name == "requestId") return e.request_id;
    if (name == "resourceType") return e.payload ? e.payload->resource_type : "";
    if (name == "resourceId") return e.payload ? e.payload->resource_id : "";
    if (name == "shard") return e.shard_id;
    // Unknown names were refused by ValidateDeterministicOptions; keep them
    // visible if a caller skipped it.
    std::string unknown;
    unknown.reserve(name.size() + 2);
    unknown.push_back('{');
    unknown.append(name);
    unknown.push_back('}');
    return unknown;
  };
  const std::string change_id = Expand(options_.change_id, value);
  return Expand(options_.effect_id_format, [&](std::string_view name) -> std::string {
    if (name == "changeId") return change_id;
    return value(name);
  });
}

DeterministicRecord DeterministicCoordinator::RecordOf(const ReplicationEvent& event) const {
  DeterministicRecord r;
  r.effect_id = EffectId(event);
  r.kind = event.op;
  r.version = options_.version;
  // EncodeJson leaves out the replay flag (delivery, not effect): records of
  // a live event and of its replay are identical.
  r.payload = EncodeJson(event);
  r.recorded_at_us = ToUnixMicros(clock_->Now());
  return r;
}

void DeterministicCoordinator::Count(const ReplicationEvent& event, bool added) {
  (added ? misses_ : hits_).fetch_add(1, std::memory_order_relaxed);
  if (metrics_) {
    metrics_
        ->GetCounter(added ? metric::kTryAddMisses : metric::kTryAddHits,
                     {{std::string(resourcelease::kNamespaceTag), event.queue},
                      {"deterministic.store", store_->kind()}})
        .Add();
  }
}

void DeterministicCoordinator::Observe(std::string_view operation, core::Duration took) {
  if (!metrics_) return;
  metrics_
      ->GetHistogram(metric::kStoreLatency, {{"deterministic.store", store_->kind()},
                                             {"deterministic.operation", std::string(operation)}})
      .Record(std::chrono::duration<double, std::milli>(took).count());
}

absl::StatusOr<bool> DeterministicCoordinator::Record(const ReplicationEvent& event) {
  const DeterministicRecord record = RecordOf(event);
  const auto start = std::chrono::steady_clock::now();
  auto added = store_->TryAdd(record);
  Observe("try_add", std::chrono::steady_clock::now() - start);
  if (!added.ok()) {
    if (metrics_)
      metrics_->GetCounter(metric::kStoreErrors, {{"deterministic.store", store_->kind()}}).Add();
    return added.status();
  }
  Count(event, *added);
  return *added;
}

absl::Status DeterministicCoordinator::ApplyBatch(std::span<const ReplicationEvent> events) {
  std::vector<DeterministicRecord> records;
  records.reserve(events.size());
  for (const auto& e : events) records.push_back(RecordOf(e));
  const auto start = std::chrono::steady_clock::now();
  auto added = store_->TryAddMany(records);
  Observe("try_add_batch", std::chrono::steady_clock::now() - start);
  if (!added.ok()) {
    if (metrics_)
      metrics_->GetCounter(metric::kStoreErrors, {{"deterministic.store", store_->kind()}}).Add();
    return added.status();
  }
  for (size_t i = 0; i < events.size(); ++i) Count(events[i], (*added)[i]);
  return absl::OkStatus();
}

}  // namespace omnirelay::replication
